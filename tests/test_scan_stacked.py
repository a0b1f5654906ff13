"""config.model.scan_layers builds the blocks stacked (layers.BlockStack: one module whose parameters have a leading
"layers" axis) and scans them in place; layers.to_layout converts parameter trees between that layout and the
per-block one (blocks/0/..., blocks/1/...) of loop mode, checkpoints and converted weights."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import tiny_family_config

from vidjax.models import get_model, layers

VIDEO = np.random.default_rng(0).random((1, 4, 32, 32, 3), np.float32)


def tiny_model(model_name, **overrides):
    config = tiny_family_config(model_name, **overrides)
    with nnx.use_eager_sharding(False):
        return get_model(model_name).Model(config.model, rngs=nnx.Rngs(0))


def block_bytes(state):
    flat = nnx.to_pure_dict(state)
    return sum(x.nbytes for x in jax.tree.leaves(flat["blocks"]))


def scanned_gradient(model):
    graphdef, state = nnx.split(model)

    def loss(state):
        return jnp.mean(jnp.square(nnx.merge(graphdef, state)(jnp.asarray(VIDEO))["logits"]))

    return jax.jit(jax.grad(loss)).lower(state).compile(), block_bytes(state)


@pytest.mark.slow
def test_the_scanned_step_makes_no_copy_of_the_block_parameters():
    """A TimeSformer whose blocks' parameters dwarf its activations: the compiled gradient of the stacked blocks'
    scan needs less scratch memory, by more than one copy of those parameters, than scanning the per-block layout
    (stacking its parameters at each call, as scan_layers did before and a list of blocks still does), and no
    concatenate builds a (depth, ...) parameter buffer."""
    sizes = dict(width=128, num_heads=2, mlp_dim=1024, depth=6, attention_type="space_only")
    stacked, params_bytes = scanned_gradient(tiny_model("timesformer", scan_layers=True, **sizes))
    per_block = tiny_model("timesformer", **sizes)
    per_block.scan_layers = True  # run_blocks stacks the list's parameters per call
    stacking, params_bytes_per_block = scanned_gradient(per_block)
    assert params_bytes == params_bytes_per_block > 6 * 1_000_000
    saved = stacking.memory_analysis().temp_size_in_bytes - stacked.memory_analysis().temp_size_in_bytes
    assert saved > params_bytes, (saved, params_bytes)
    concatenate = r"= f32\[6,[0-9,]*\]\{[^}]*\} concatenate\("
    assert re.search(concatenate, stacking.as_text())  # the check sees the copy where there is one
    assert not re.search(concatenate, stacked.as_text())


def forward_scan_buffers(hlo: str) -> list[tuple[str, str]]:
    """(type, operand) of each element of the forward scan's loop state in a compiled gradient's HLO: the `while`
    of jvp() (not of its transpose) and the tuple it starts from. Its (depth, ...) elements are the scan's inputs
    (the stacked parameters, entry parameters passed in place) and the residuals it stacks for the backward."""
    entry = hlo[hlo.index("\nENTRY"):]
    loop = re.search(r"%\S+ = \(.*\) while\((%[\w.-]+)\).*op_name=\"jit\(loss\)/jvp\(\)/while\"", entry)
    assert loop, "no forward scan in the compiled gradient"
    start = re.search(re.escape(loop.group(1)) + r" = \((.*)\) tuple\((.*)\)", entry)
    types, operands = (re.sub(r"/\*index=\d+\*/", "", text) for text in start.groups())
    types = re.findall(r"[a-z]+\d*\[[0-9,]*\]", types)
    operands = [name.strip() for name in operands.split(",")]
    assert len(types) == len(operands), (types, operands)
    return list(zip(types, operands, strict=True))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_scan_keeps_no_copy_of_the_block_kernels_for_the_backward(dtype):
    """What the forward scan stacks for the backward holds no array the size of a block's kernel: the products
    (layers.project) keep the kernel as stored, which the backward reads from the scan's input in place, not the
    kernel cast to the compute dtype or reshaped to 2-D, which the scan would stack into a (depth, ...) copy of the
    blocks' parameters. The check reads the compiled program's loop state; fed the old products (the cast and
    reshaped kernels kept), it finds bf16[6,128,1024] and f32[6,128,384] buffers there."""
    sizes = dict(width=128, num_heads=2, mlp_dim=1024, depth=6, attention_type="space_only")
    model = tiny_model("timesformer", scan_layers=True, dtype=dtype, **sizes)
    compiled, _ = scanned_gradient(model)
    hlo = compiled.as_text()
    entry_parameters = set(re.findall(r"(%[\w.-]+) = \S+ parameter\(", hlo[hlo.index("\nENTRY"):]))
    kernels = {x.size // 6 for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model))["blocks"])
               if x.size // 6 >= 128 * 128}  # the kernels, not the biases and norms
    assert kernels == {128 * 384, 128 * 128, 128 * 1024}
    buffers = forward_scan_buffers(hlo)
    inputs = [t for t, operand in buffers if operand in entry_parameters]
    assert len(inputs) >= 4  # the stacked qkv, proj, fc1 and fc2 kernels go in as they are
    copies = [(t, operand) for t, operand in buffers if operand not in entry_parameters
              and re.fullmatch(r"[a-z]+\d*\[6,[0-9,]*\]", t)
              and math.prod(int(n) for n in t[t.index("[") + 1:-1].split(",")[1:]) in kernels]
    assert not copies, copies


def to_pure(model):
    return nnx.to_pure_dict(nnx.state(model))


def assert_trees_equal(got, want, **tolerance):
    """Same structure; leaves equal (exactly unless a tolerance is given)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path),
                                   **(tolerance or dict(rtol=0, atol=0)))


@pytest.mark.parametrize("model_name, overrides", [
    pytest.param("videomae", {}, marks=pytest.mark.slow), ("videomae", dict(head="classification")),
    pytest.param("timesformer", {}, marks=pytest.mark.slow), ("vivit", {}),
    pytest.param("vivit", dict(model_type="factorised_encoder", temporal_depth=2), marks=pytest.mark.slow),
    ("vivit", dict(model_type="factorised_dot_product")), pytest.param("videomamba", {}, marks=pytest.mark.slow),
])
def test_stacked_blocks_hold_the_loop_parameters_and_compute_the_same(model_name, overrides):
    """Built stacked (blocks/stacked/..., leading axis the blocks, logical name "layers"), a seed gives the loop
    mode's parameters; the loss and gradients are the same, the gradients stacked like the parameters."""
    overrides = dict(depth=3, drop_path=0.2, **overrides)
    loop, scan = tiny_model(model_name, **overrides), tiny_model(model_name, scan_layers=True, **overrides)
    loop_params, scan_params = to_pure(loop), to_pure(scan)
    stacked = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(scan_params)
               if "'stacked'" in jax.tree_util.keystr(p)]
    assert stacked and not any("'stacked'" in jax.tree_util.keystr(p)
                               for p, _ in jax.tree_util.tree_leaves_with_path(loop_params))
    specs = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(scan))),
                                                is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert all(spec[0] == "layers" for path, spec in specs if "'stacked'" in jax.tree_util.keystr(path))
    assert_trees_equal(layers.to_layout(loop_params, scan_params), scan_params)
    assert_trees_equal(layers.to_layout(scan_params, loop_params), loop_params)
    mask = np.zeros((2, 32), bool)
    mask[:, ::3] = True  # VideoMAE's 2 x 4 x 4 token grid, a third masked

    def value_and_grad(model):
        graphdef, state = nnx.split(model)

        pretrain = getattr(model, "head_kind", "") == "pretrain"
        video = jnp.asarray(np.concatenate([VIDEO, VIDEO[:, ::-1]]))

        def loss(state):
            out = nnx.merge(graphdef, state)(video, jnp.asarray(mask) if pretrain else None, rng=jax.random.key(3))
            return out["loss"] if "loss" in out else jnp.mean(jnp.square(out["logits"]))

        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        return value, nnx.to_pure_dict(grads)

    (loss_loop, grads_loop), (loss_scan, grads_scan) = value_and_grad(loop), value_and_grad(scan)
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-6)
    assert jax.tree.structure(grads_scan) == jax.tree.structure(scan_params)
    assert_trees_equal(layers.to_layout(grads_scan, loop_params), grads_loop, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_gpt2_stacked_trains_and_decodes_as_per_block():
    """GPT-2 with stacked blocks: the same logits and gradients for whole sequences, and the same greedy decoding
    (which unrolls the blocks, each sliced out of the stack) with cross-attention."""
    from vidjax.models import gpt2

    cfg = gpt2.default_config()
    cfg.update(dict(vocab_size=64, n_positions=16, width=16, depth=3, num_heads=2, add_cross_attention=True,
                    cross_attention_width=24, bos_token_id=1, eos_token_id=-1, pad_token_id=0))
    with nnx.use_eager_sharding(False):
        plain = gpt2.Model(cfg, rngs=nnx.Rngs(0))
        cfg.scan_layers = True
        scanned = gpt2.Model(cfg, rngs=nnx.Rngs(0))
    assert isinstance(scanned.blocks, layers.BlockStack) and len(scanned.blocks) == 3
    assert_trees_equal(layers.to_layout(to_pure(plain), to_pure(scanned)), to_pure(scanned))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 5)))
    enc = jax.random.normal(jax.random.key(0), (2, 3, 24))

    def grads(model):
        graphdef, state = nnx.split(model)
        def loss(s):
            return jnp.sum(nnx.merge(graphdef, s)(ids, encoder_hidden_states=enc)["logits"] ** 2)

        return jax.jit(jax.value_and_grad(loss))(state)

    (want, want_grads), (got, got_grads) = grads(plain), grads(scanned)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert_trees_equal(layers.to_layout(nnx.to_pure_dict(got_grads), to_pure(plain)),
                       nnx.to_pure_dict(want_grads), rtol=1e-5, atol=1e-6)
    cache_plain, cache_scan = plain.init_cache(2, 8, enc), scanned.init_cache(2, 8, enc)
    logits_plain, cache_plain = plain.prefill(ids[:, :3], cache_plain)
    logits_scan, cache_scan = scanned.prefill(ids[:, :3], cache_scan)
    np.testing.assert_allclose(logits_scan, logits_plain, rtol=1e-5, atol=1e-6)
    for _ in range(3):
        token = jnp.argmax(logits_plain[:, -1], -1)
        logits_plain, cache_plain = plain.prefill(token[:, None], cache_plain)
        logits_scan, cache_scan = scanned.prefill(token[:, None], cache_scan)
        np.testing.assert_allclose(logits_scan, logits_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name, optimizer", [
    ("videomae", dict(name="adamw", grad_clip=0.0)),
    ("vivit", dict(name="adamw", grad_clip=0.01, grad_clip_mode="per_tensor")),
    ("timesformer", dict(name="sgd", momentum=0.9, nesterov=True, grad_clip=1.0, grad_clip_mode="global")),
    pytest.param("videomamba", dict(name="adamw", grad_clip=0.0), marks=pytest.mark.slow),
])
def test_layer_decay_of_stacked_blocks_is_the_per_block_one(model_name, optimizer):
    """Layer decay (and per-tensor clipping) scales a stacked parameter's blocks along its leading axis: two
    optimizer steps give the per-block updates, stacked."""
    from vidjax.train import optim

    overrides = dict(depth=3, head="classification") if model_name == "videomae" else dict(depth=3)
    if model_name == "vivit":
        overrides.update(model_type="factorised_encoder", temporal_depth=2)
    config = tiny_family_config(model_name, **overrides)
    config.optimizer.update(dict(layer_decay=0.6, weight_decay=0.05, **optimizer))
    loop_params = to_pure(tiny_model(model_name, **overrides))
    scan_params = to_pure(tiny_model(model_name, scan_layers=True, **overrides))
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), loop_params) for _ in range(2)]
    tx = optim.make_optimizer(config, optax.constant_schedule(1e-2))
    ids, num_blocks = optim.layer_ids(scan_params)
    assert num_blocks == 3 + overrides.get("temporal_depth", 0)

    def updates(params, grads):
        state, out = tx.init(params), []
        for g in grads:
            update, state = jax.jit(tx.update)(g, state, params)
            params = optax.apply_updates(params, update)
            out.append(update)
        return out, state

    want, _ = updates(loop_params, grads)
    got, state = updates(scan_params, [layers.to_layout(g, scan_params) for g in grads])
    for g, w in zip(got, want, strict=True):
        assert_trees_equal(layers.to_layout(g, loop_params), w, rtol=1e-5, atol=1e-8)  # norms summed per slice
    # The optimizer's moments are stacked like the parameters.
    assert any("'stacked'" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state))


def write_training_checkpoint(workdir, config, params):
    from vidjax.train import checkpoint

    ckpt = checkpoint.Checkpointer(str(workdir))
    ckpt.save(1, {"params": params, "step": jnp.ones((), jnp.int32)}, None, config)
    ckpt.close()


@pytest.mark.parametrize("written_scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_a_checkpoint_of_either_layout_loads_in_the_other(tmp_path, written_scan):
    """A training checkpoint written with the blocks stacked loads per block and the other way round: as init_from
    of a fine-tune and through pretrained.load (its own layout), with the same values and outputs; converting it
    writes per-block weights, which load stacked."""
    from vidjax import pretrained
    from vidjax.convert import common

    overrides = dict(depth=3)
    written = tiny_model("timesformer", scan_layers=written_scan, **overrides)
    config = tiny_family_config("timesformer", scan_layers=written_scan, **overrides)
    write_training_checkpoint(tmp_path / "run", config, to_pure(written))
    other = tiny_family_config("timesformer", scan_layers=not written_scan, **overrides)
    with nnx.use_eager_sharding(False):
        fresh = to_pure(get_model("timesformer").Model(other.model, rngs=nnx.Rngs(7)))
    params, report = pretrained.init_from(tmp_path / "run", "timesformer", other.model, fresh)
    assert not report["fresh"] and not report["unused"]
    assert_trees_equal(params, layers.to_layout(to_pure(written), fresh))

    want = written(jnp.asarray(VIDEO))["logits"]
    loaded = pretrained.load(tmp_path / "run")
    assert loaded.config.scan_layers == written_scan
    assert_trees_equal(loaded.params, to_pure(written))
    np.testing.assert_allclose(loaded.model(jnp.asarray(VIDEO))["logits"], want, rtol=1e-5, atol=1e-6)

    converted = pretrained._read(tmp_path / "run").converted
    assert not any("/stacked/" in key for key in converted.params)  # read per block, as converted weights are
    common.write_converted(converted, tmp_path / "converted")
    loaded = pretrained.load(tmp_path / "converted")
    assert loaded.config.scan_layers == written_scan
    np.testing.assert_allclose(loaded.model(jnp.asarray(VIDEO))["logits"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("written_scan", [False, True])
def test_a_train_state_resumes_in_the_other_layout(tmp_path, written_scan):
    """The trainer's whole state (parameters, AdamW moments under layer decay, EMA) saved in one block layout
    restores in the other, sharded over a mesh (FSDP x tensor), with the same values."""
    from vidjax import sharding, train
    from vidjax.train import checkpoint

    def setup_of(scan):
        config = tiny_family_config("videomae", scan_layers=scan, depth=3, head="classification")
        config.task = "classification"
        config.optimizer.update(dict(ema_decay=0.9, layer_decay=0.75))
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
        return config, train.build(config, 64, sharding.create_mesh(config.mesh, jax.devices()))

    config, written = setup_of(written_scan)
    state = written.init_state()
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(x.dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)  # moments and EMA not zero
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, state, None, config)
    ckpt.wait()
    _, other = setup_of(not written_scan)
    abstract = checkpoint.abstract_with_shardings(other.abstract_state, other.state_shardings)
    restored = ckpt.restore(1, abstract)
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(other.abstract_state)
    for (path, got), want, spec in zip(jax.tree_util.tree_leaves_with_path(restored),
                                       jax.tree.leaves(layers.to_layout(state, other.abstract_state)),
                                       jax.tree.leaves(other.state_shardings), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
        assert got.sharding == spec, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_the_trainer_resumes_a_stacked_run_per_block_with_the_same_losses(tmp_path):
    """A pre-training run with its blocks stacked, stopped after its step-4 checkpoint and resumed with
    scan_layers off, logs the losses the uninterrupted stacked run logs (to float rounding: the same maths,
    compiled as a scan or unrolled)."""
    import shutil

    from helpers import train_losses

    from vidjax import train

    def config_of(scan):
        config = tiny_family_config("videomae", scan_layers=scan, depth=2, decoder_depth=2)
        config.total_steps, config.checkpoint_every, config.log_every = 8, 4, 1
        config.eval_every, config.figure = 0, False
        return config

    full, cut = tmp_path / "full", tmp_path / "cut"
    train.train_and_evaluate(config_of(True), str(full), devices=jax.devices()[:1])
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "8")
    result = train.train_and_evaluate(config_of(False), str(cut), devices=jax.devices()[:1])
    assert result["resumed"] and result["trained"]
    a, b = train_losses(full), train_losses(cut)
    for step in range(5, 9):
        np.testing.assert_allclose(b[step], a[step], rtol=1e-4, err_msg=str(step))
