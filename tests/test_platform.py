"""vidjax.platform: the backend-dependent choices are config values, "auto" resolved once at set-up into the
documented value for a backend; explicit values are kept; models hold the values and never ask the backend while
they are traced; a bad value names the field and its choices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_family_config

from vidjax import host_malloc, platform, train
from vidjax.config_lib import ConfigError
from vidjax.models import captioner, get_model, gpt2, layers, svt

# What "auto" becomes, per backend (the platform module's docstring).
DOCUMENTED = {
    "cpu": dict(attention_impl="auto_cpu", backward="hand_written", projection_form="flat",
                block_gradients="written_out", scan="recurrent"),
    "gpu": dict(attention_impl="auto_gpu", backward="autodiff", projection_form="multi_axis", block_gradients="fused",
                scan="chunked"),
    "tpu": dict(attention_impl="auto_tpu", backward="autodiff", projection_form="multi_axis", block_gradients="fused",
                scan="pallas"),
}
FIELDS_OF = {"videomae": platform.TRANSFORMER_FIELDS, "timesformer": platform.TRANSFORMER_FIELDS,
             "vivit": platform.TRANSFORMER_FIELDS, "videomamba": platform.MAMBA_FIELDS, "gpt2": platform.TEXT_FIELDS}
VIDEO = np.random.default_rng(0).random((2, 4, 32, 32, 3), np.float32)


@pytest.mark.parametrize("model_name", sorted(FIELDS_OF))
def test_every_model_config_has_its_platform_fields_at_auto(model_name):
    config = get_model(model_name).default_config()
    assert {name: config[name] for name in FIELDS_OF[model_name]} == dict.fromkeys(FIELDS_OF[model_name], "auto")
    assert not set(platform.FIELDS) - set(FIELDS_OF[model_name]) & set(config)  # no field it does not use


@pytest.mark.parametrize("backend", sorted(DOCUMENTED))
@pytest.mark.parametrize("model_name", sorted(FIELDS_OF))
def test_resolve_gives_the_documented_values(model_name, backend):
    config = get_model(model_name).default_config()
    resolved = platform.resolve(config, backend)
    assert {name: resolved[name] for name in FIELDS_OF[model_name]} == {
        name: DOCUMENTED[backend][name] for name in FIELDS_OF[model_name]}
    assert platform.choices(config, FIELDS_OF[model_name], backend) == platform.Choices(
        **{name: DOCUMENTED[backend][name] for name in FIELDS_OF[model_name]})
    assert all(config[name] == "auto" for name in FIELDS_OF[model_name])  # a copy: the config itself keeps "auto"
    assert platform.Choices.for_backend(backend) == platform.Choices(**DOCUMENTED[backend])


def test_cuda_is_gpu_and_other_backends_take_the_plain_values():
    config = get_model("videomae").default_config()
    assert platform.resolve(config, "cuda").to_dict() == platform.resolve(config, "gpu").to_dict()
    other = platform.resolve(config, "metal")
    assert (other.attention_impl, other.backward, other.projection_form, other.block_gradients) == (
        "xla", "autodiff", "multi_axis", "fused")


def test_a_whole_config_and_the_nested_model_blocks_are_resolved():
    config = tiny_family_config("videomae")
    resolved = platform.resolve(config, "gpu")
    assert resolved.model.attention_impl == "auto_gpu" and config.model.attention_impl == "auto"
    assert resolved.batch_size == config.batch_size and resolved.model.width == config.model.width
    caption = platform.resolve(captioner.default_config("videomamba"), "cpu")
    assert (caption.encoder.scan, caption.encoder.block_gradients) == ("recurrent", "written_out")
    assert (caption.decoder.backward, caption.decoder.projection_form) == ("hand_written", "flat")
    assert caption.projection == "auto"  # the captioner's own "auto" (a linear map or none) is not a platform field
    assert platform.resolve(svt.default_config(), "tpu").backbone.attention_impl == "auto_tpu"


def test_explicit_values_are_kept():
    config = get_model("videomae").default_config()
    config.update(attention_impl="xla", backward="autodiff", projection_form="multi_axis", block_gradients="fused")
    for backend in DOCUMENTED:
        resolved = platform.resolve(config, backend)
        assert (resolved.attention_impl, resolved.backward, resolved.projection_form, resolved.block_gradients) == (
            "xla", "autodiff", "multi_axis", "fused")
    rule = get_model("vivit").default_config()
    rule.attention_impl = "auto_gpu"  # a backend's rule, run on any backend
    assert platform.resolve(rule, "cpu").attention_impl == "auto_gpu"
    mamba = get_model("videomamba").default_config()
    mamba.scan = "sequential"
    assert platform.resolve(mamba, "cpu").scan == platform.resolve(mamba, "gpu").scan == "sequential"
    legacy = get_model("timesformer").default_config()
    legacy.attention_impl = ""  # what configs and checkpoints of earlier versions say: "auto"
    assert platform.resolve(legacy, "cpu").attention_impl == "auto_cpu"


def test_fixed_choices_win_over_explicit_and_auto_values_in_every_block():
    caption = captioner.default_config("videomamba")
    caption.encoder.scan = "chunked"  # explicit: what a GPU run's checkpoint may say
    fixed = {"scan": "recurrent", "attention_impl": "xla"}
    resolved = platform.resolve(caption, "gpu", fixed=fixed)
    assert (resolved.encoder.scan, resolved.encoder.block_gradients) == ("recurrent", "fused")  # the rest: gpu's
    assert caption.encoder.scan == "chunked"  # the config itself is untouched
    blockwise = get_model("timesformer").default_config()
    blockwise.attention_impl = "blockwise"
    assert platform.resolve(blockwise, "tpu", fixed=fixed).attention_impl == "xla"
    with pytest.raises(ConfigError, match="scan"):
        platform.resolve(caption, "cpu", fixed={"scan": "fastest"})  # a fixed value is checked as any other


def test_resolve_asks_the_backend_once_and_not_for_explicit_values(monkeypatch):
    asked = []
    monkeypatch.setattr(jax, "default_backend", lambda: asked.append(1) or "cpu")
    assert platform.resolve(captioner.default_config(), None).encoder.attention_impl == "auto_cpu"
    assert len(asked) == 1
    assert platform.resolve(platform.resolve(captioner.default_config(), "gpu")).decoder.backward == "autodiff"
    assert len(asked) == 1  # nothing left at "auto": nothing to ask


@pytest.mark.parametrize(("field", "value", "choices"), [
    ("backward", "manual", "'auto', 'hand_written', 'autodiff'"),
    ("attention_impl", "flash", "'auto', 'auto_cpu', 'auto_gpu', 'auto_tpu', 'xla', 'cudnn', 'heads_major'"),
    ("block_gradients", True, "'auto', 'written_out', 'fused'"),
])
def test_a_bad_value_names_the_field_and_the_choices(field, value, choices):
    config = tiny_family_config("timesformer")
    with config.model.ignore_type():
        config.model[field] = value
    message = f"config.model.{field}={value!r}; choose one of {choices}"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        platform.resolve(config, "cpu")
    with pytest.raises(ConfigError, match=f"config.model.{field}="):  # a model built from it says the same
        get_model("timesformer").Model(config.model, rngs=nnx.Rngs(0))
    nested = captioner.default_config("timesformer")
    with nested.encoder.ignore_type():
        nested.encoder[field] = value
    with pytest.raises(ConfigError, match=f"config.model.encoder.{field}={value!r}"):
        platform.resolve(nested, "gpu")
    with pytest.raises(ConfigError, match="concrete values"):  # a model is built with values, never "auto"
        platform.Choices(backward="auto")


def _built(model_name, backend, **overrides):
    config = platform.resolve(tiny_family_config(model_name, **overrides), backend)
    with nnx.use_eager_sharding(False):
        return get_model(model_name).Model(config.model, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("model_name", ["videomae", "vivit", "videomamba"])
def test_a_model_built_from_resolved_values_never_asks_the_backend(model_name, backend, monkeypatch):
    """Set-up resolves (here for `backend`, whatever runs the test); after it, building the model, tracing its
    forward and backward and running them ask nothing: the values decide, not the machine."""
    def refuse():
        raise AssertionError("jax.default_backend() asked after set-up")

    config = platform.resolve(tiny_family_config(model_name), backend)
    monkeypatch.setattr(jax, "default_backend", refuse)
    with nnx.use_eager_sharding(False):
        model = get_model(model_name).Model(config.model, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    mask = np.zeros((2, 32), bool)
    mask[:, :28] = True  # VideoMAE's pre-training masks 28 of its 32 tokens (ratio 0.9)

    def loss(state):
        out = nnx.merge(graphdef, state)(jnp.asarray(VIDEO), jnp.asarray(mask) if model_name == "videomae" else None)
        return out["loss"] if "loss" in out else jnp.mean(jnp.square(out["logits"]))

    value, grads = jax.jit(jax.value_and_grad(loss))(state)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_the_layers_hold_the_values_and_run_them():
    cpu, gpu = _built("timesformer", "cpu"), _built("timesformer", "gpu")
    block = cpu.blocks[0]
    assert (block.attn.implementation, block.norm1.backward, block.mlp.backward, block.attn.projection_form,
            cpu.patch_embed.projection_form, cpu.block_gradients) == (
        "auto_cpu", "hand_written", "hand_written", "flat", "flat", "written_out")
    assert (gpu.blocks[0].attn.implementation, gpu.blocks[0].norm1.backward, gpu.block_gradients) == (
        "auto_gpu", "autodiff", "fused")
    mamba = _built("videomamba", "gpu")
    assert (mamba.layers[0].mixer.scan, mamba.layers[0].mixer.in_proj.projection_form) == ("chunked", "multi_axis")
    text = gpt2.default_config()
    text.update(width=32, depth=1, num_heads=2, vocab_size=50, n_positions=8, backward="autodiff")
    with nnx.use_eager_sharding(False):
        model = gpt2.Model(platform.resolve(text, "cpu"), rngs=nnx.Rngs(0))
    assert (model.blocks[0].mlp.backward, model.blocks[0].ln_1.backward, model.blocks[0].attn.projection_form,
            model.block_gradients) == ("autodiff", "autodiff", "flat", "written_out")

    def gradient_jaxpr(model):
        graphdef, state = nnx.split(model)
        grad = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(jnp.asarray(VIDEO))["logits"] ** 2))
        return str(jax.make_jaxpr(grad)(state))

    # The CPU's block boundaries are conditionals in the backward pass; GPU's plain graph has none.
    assert "cond" in gradient_jaxpr(cpu) and "cond" not in gradient_jaxpr(gpu)


def _captioner():
    config = captioner.default_config("timesformer")
    config.encoder.update(variant="Mu/8", width=32, depth=1, num_heads=2, num_frames=4, image_size=32)
    config.decoder.update(width=32, depth=1, num_heads=2, vocab_size=50, n_positions=8)
    config.update(visual_tokens="pooled", pool="scorer", projection="linear")  # its own Dense layers too
    return config


def _svt():
    config = svt.default_config()
    config.backbone.update(variant="Mu/8", width=32, depth=1, num_heads=2, num_frames=4, image_size=32)
    config.update(head_hidden_dim=16, head_bottleneck_dim=8, out_dim=10)
    return config


MODELS = [(name, lambda name=name, o=o: tiny_family_config(name, **o).model) for name, o in (
    ("videomae", {}), ("videomae", {"head": "classification"}), ("timesformer", {}), ("vivit", {}),
    ("vivit", {"model_type": "factorised_encoder"}), ("vivit", {"model_type": "factorised_self_attention"}),
    ("vivit", {"model_type": "factorised_dot_product"}), ("videomamba", {}))] + [
    ("captioner", _captioner), ("svt", _svt)]


@pytest.mark.parametrize(("model_name", "config"), MODELS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(MODELS)])
def test_every_layer_of_every_model_holds_the_resolved_values(model_name, config):
    """Built from a config resolved for GPU on this CPU machine, no layer holds a CPU value: every layer got its
    model's values (a layer left to itself would take this machine's)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: get_model(model_name).Model(platform.resolve(config(), "gpu"),
                                                                  rngs=nnx.Rngs(0)))
    held = {(attr, getattr(node, attr)) for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)
            for attr in ("implementation", "backward", "projection_form", "block_gradients", "scan")
            if isinstance(getattr(node, attr, None), str)}
    gpu = DOCUMENTED["gpu"]
    assert held and held <= {("implementation", gpu["attention_impl"]), *((k, v) for k, v in gpu.items())}, held


def test_a_layer_built_on_its_own_takes_this_machines_values():
    with nnx.use_eager_sharding(False):
        here = layers.Block(16, 2, 32, eps=1e-6, rngs=nnx.Rngs(0))
        there = layers.Block(16, 2, 32, eps=1e-6, choices=platform.Choices.for_backend("tpu"), rngs=nnx.Rngs(0))
    assert (here.attn.implementation, here.norm1.backward) == ("auto_cpu", "hand_written")  # the suite runs on CPU
    assert (there.attn.implementation, there.norm1.backward, there.mlp.fc1.projection_form) == (
        "auto_tpu", "autodiff", "multi_axis")
    unchosen = platform.Choices(projection_form="flat")  # a model without attention chose none
    with pytest.raises(ValueError, match="no attention_impl"), nnx.use_eager_sharding(False):
        layers.Attention(16, 2, choices=unchosen, rngs=nnx.Rngs(0))
    assert dataclasses.replace(unchosen, backward="autodiff").backward == "autodiff"


def test_the_trainer_builds_from_resolved_values_and_keeps_auto_in_the_config():
    config = tiny_family_config("vivit")
    config.model.backward = "autodiff"  # an explicit value beside the "auto" ones
    setup = train.build(config, train_source_len=64)
    block = setup.abstract_model.transformer.blocks[0]
    assert (block.attn.implementation, block.norm1.backward, block.attn.projection_form) == (
        "auto_cpu", "autodiff", "flat")
    assert (config.model.attention_impl, config.model.backward) == ("auto", "autodiff")  # what a checkpoint records


def test_the_host_allocator_rule_is_the_platform_modules():
    for platforms, plugin in (("", None), ("cpu", "xla_cuda12"), ("", "xla_cuda12"), ("cuda,cpu", None),
                              ("", "libtpu")):
        accelerator = platform.accelerator_on_host(plugin)  # the plugin where its chips are on this host
        assert host_malloc.runs_on_cpu_only(platforms, plugin) is platform.host_allocator_applies(platforms,
                                                                                                 accelerator)


def test_remat_without_a_layer_scan_gets_a_note_on_the_cpu_only():
    """Per-block remat saves memory on XLA:CPU only under a layer scan (tests/test_bench_sweep.py measures it): set-up
    says so for an unrolled model on the CPU, and nothing where remat holds."""
    import ml_collections

    def block(remat, scan_layers):
        return ml_collections.ConfigDict(dict(remat=remat, scan_layers=scan_layers))

    (note,) = platform.notes(block("full", False), backend="cpu")
    assert "config.model.remat='full' saves no memory on the CPU backend" in note
    assert "--config.model.scan_layers=true" in note
    assert platform.notes(block("full", True), backend="cpu") == []
    assert platform.notes(block("none", False), backend="cpu") == []
    assert platform.notes(block("dots_saveable", False), backend="gpu") == []


def test_the_tpu_scan_kernel_asked_for_on_the_cpu_gets_a_note_saying_how_it_runs_there():
    import ml_collections

    block = ml_collections.ConfigDict(dict(scan="pallas", remat="none", scan_layers=False))
    (note,) = platform.notes(block, backend="cpu")
    assert "runs only under Pallas's TPU interpreter" in note and "config.model.scan='auto'" in note
    assert platform.notes(block, backend="tpu") == platform.notes(block, backend="gpu") == []
