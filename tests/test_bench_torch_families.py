"""`python -m vidjax.bench --compare=torch` for every family: the PyTorch references are sized from vidjax's own
tables, and unsupported requests are refused before anything compiles or imports torch.

torch is not a test dependency: everything here runs without it, except the one test that builds the references
(skipped where torch and transformers are not installed, as in the test environment).
"""

import math
import sys

import pytest
from absl import app, flags
from absl.testing import flagsaver

from vidjax.bench import reference, step
from vidjax.models import layers, videomae, videomamba


def model_config(model, variant, frames=8, size=112, mode="finetune", num_classes=400, **fields):
    """The config.model block the benchmark times for this workload (with --compare=torch)."""
    config = step.bench_config(model, variant, frames, size, 2, mode, "float32", num_classes, compare="torch")
    config.model.update(fields)
    return config.model


def run_main(*args):
    """`python -m vidjax.bench ARGS` in this process (flag values restored afterwards)."""
    with flagsaver.flagsaver():
        flags.FLAGS(["bench", *args])
        step.main(["bench"])


@pytest.mark.parametrize("variant", ["Ti/16", "S/16", "B/8"])
def test_timesformer_reference_is_sized_like_the_variant(variant):
    size, patch = layers.parse_variant(variant)
    width, depth, heads = layers.VIT_SIZES[size]
    kwargs = reference.torch_config_kwargs("timesformer", "finetune", model_config("timesformer", variant))
    assert kwargs == dict(
        image_size=112, num_channels=3, num_frames=8, patch_size=patch, hidden_size=width, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=4 * width, layer_norm_eps=1e-6, qkv_bias=True,
        attention_type="divided_space_time", hidden_act="gelu", drop_path_rate=0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=400)


def test_timesformer_reference_follows_config_fields():
    cfg = model_config("timesformer", "S/16", frames=4, size=64, num_classes=7, mlp_dim=1000, ln_eps=1e-5,
                       qkv_bias=False, approximate_gelu=True, attention_type="joint_space_time")
    kwargs = reference.torch_config_kwargs("timesformer", "infer", cfg)
    assert (kwargs["num_frames"], kwargs["image_size"], kwargs["num_labels"]) == (4, 64, 7)
    assert (kwargs["intermediate_size"], kwargs["layer_norm_eps"], kwargs["qkv_bias"]) == (1000, 1e-5, False)
    assert (kwargs["hidden_act"], kwargs["attention_type"]) == ("gelu_fast", "joint_space_time")
    with pytest.raises(ValueError, match="space_only classifies frames"):
        reference.torch_config_kwargs("timesformer", "infer", model_config("timesformer", "S/16",
                                                                           attention_type="space_only"))


@pytest.mark.parametrize("variant, frames", [("S/16x2", 16), ("B/16x2", 32), ("Ti/8x4", 8)])
def test_vivit_reference_is_model_1_sized_like_the_variant(variant, frames):
    size, rest = variant.split("/")
    patch, tubelet = (int(v) for v in rest.split("x"))
    width, depth, heads = layers.VIT_SIZES[size]
    cfg = model_config("vivit", variant, frames=frames)
    # The benchmark times the vidjax model Hugging Face ports: model 1 with a CLS token.
    assert (cfg.model_type, cfg.classifier) == ("joint", "token")
    assert reference.torch_config_kwargs("vivit", "finetune", cfg) == dict(
        image_size=112, num_channels=3, num_frames=frames, tubelet_size=[tubelet, patch, patch], hidden_size=width,
        num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * width, layer_norm_eps=1e-6,
        qkv_bias=True, hidden_act="gelu_fast", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=400)


def test_vivit_reference_refuses_factorised_models_and_follows_qkv_bias():
    kwargs = reference.torch_config_kwargs("vivit", "infer", model_config("vivit", "S/16x2", qkv_bias="none",
                                                                          approximate_gelu=False))
    assert (kwargs["qkv_bias"], kwargs["hidden_act"]) == (False, "gelu")
    with pytest.raises(ValueError, match="model_type='factorised_encoder'"):
        reference.torch_config_kwargs("vivit", "infer", model_config("vivit", "S/16x2",
                                                                     model_type="factorised_encoder"))
    # Without --compare=torch the benchmark leaves the config as the model's default.
    assert reference.vidjax_overrides("vivit") == {"model_type": "joint", "classifier": "token"}
    assert reference.vidjax_overrides("timesformer") == {}


@pytest.mark.parametrize("variant", ["Ti/16", "S/16", "M/8"])
def test_videomamba_reference_is_sized_like_the_variant(variant):
    size, patch = layers.parse_variant(variant, videomamba.VIDEOMAMBA_SIZES)
    width, depth = videomamba.VIDEOMAMBA_SIZES[size]
    kwargs = reference.torch_config_kwargs("videomamba", "finetune", model_config("videomamba", variant))
    assert kwargs == dict(img_size=112, patch_size=patch, depth=depth, embed_dim=width, num_classes=400,
                          kernel_size=1, num_frames=8, norm_epsilon=1e-5, d_state=16, d_conv=4, expand=2,
                          dt_rank=math.ceil(width / 16))
    cfg = model_config("videomamba", variant, tubelet_size=2, d_state=8, dt_rank=5, expand=3)
    kwargs = reference.torch_config_kwargs("videomamba", "infer", cfg)
    assert (kwargs["kernel_size"], kwargs["d_state"], kwargs["dt_rank"], kwargs["expand"]) == (2, 8, 5, 3)


def test_videomae_reference_keeps_its_decoder_for_pretraining():
    width, depth, heads = layers.VIT_SIZES["S"]
    dec_width, dec_heads = videomae.DECODER_SIZES["S"]
    cfg = model_config("videomae", "S/16", frames=16, mode="pretrain")
    kwargs = reference.torch_config_kwargs("videomae", "pretrain", cfg)
    assert (kwargs["hidden_size"], kwargs["num_hidden_layers"], kwargs["num_attention_heads"]) == (width, depth, heads)
    assert (kwargs["decoder_hidden_size"], kwargs["decoder_num_attention_heads"]) == (dec_width, dec_heads)
    assert (kwargs["decoder_num_hidden_layers"], kwargs["decoder_intermediate_size"]) == (4, 4 * dec_width)
    assert (kwargs["tubelet_size"], kwargs["use_mean_pooling"], kwargs["qkv_bias"]) == (2, False, True)
    kwargs = reference.torch_config_kwargs("videomae", "finetune", model_config("videomae", "S/16", frames=16))
    assert "decoder_hidden_size" not in kwargs and (kwargs["num_labels"], kwargs["use_mean_pooling"]) == (400, True)


@pytest.mark.parametrize("model, mode", [("timesformer", "pretrain"), ("vivit", "pretrain"),
                                         ("videomamba", "pretrain"), ("captioner", "infer")])
def test_unsupported_model_and_mode_name_what_is_supported(model, mode):
    with pytest.raises(ValueError, match=f"--model={model} --mode={mode}; it supports --model=videomae "
                                         r"\(--mode=pretrain\|finetune\|infer\); --model=timesformer "
                                         r"\(--mode=finetune\|infer\); --model=vivit"):
        reference.check_supported(model, mode)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="timesformer", mode="pretrain"), "no PyTorch reference for --model=timesformer --mode=pretrain"),
    (dict(batch=0), "need batch >= 1"),
    (dict(steps=0), "need batch >= 1, steps >= 1"),
    (dict(warmup=-1), "warmup >= 0"),
    (dict(threads=0), "threads=0 must be >= 1"),
])
def test_time_torch_checks_its_arguments_before_importing_torch(kwargs, message):
    # Where torch is absent, a check made after importing it would raise ImportError instead.
    args = dict(model="vivit", mode="finetune", model_config=model_config("vivit", "Mu/8x2", frames=4, size=32),
                batch=1, steps=1, warmup=0) | kwargs
    with pytest.raises(ValueError, match=message):
        reference.time_torch(**args)


def test_time_torch_checks_the_pretraining_mask():
    cfg = model_config("videomae", "Mu/8", frames=4, size=32, mode="pretrain", mask_ratio=0.0)
    with pytest.raises(ValueError, match="mask_ratio=0.0 masks 0 of 16 patches"):
        reference.time_torch("videomae", "pretrain", cfg, batch=1, steps=1, warmup=0)


def test_missing_torch_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as without the extra
    for model, variant in [("vivit", "Mu/8x2"), ("videomamba", "Mu/8")]:
        with pytest.raises(ImportError, match=r"pip install 'vidjax\[torch\]'"):
            reference.build_torch_model(model, "infer", model_config(model, variant, frames=4, size=32))


@pytest.mark.parametrize("args, message", [
    (["--model=timesformer", "--mode=pretrain"], r"--model=timesformer --mode=pretrain; it supports"),
    (["--model=videomamba", "--mode=mamba_block"], r"--model=videomamba --mode=mamba_block; it supports"),
    (["--model=vivit", "--variant=Mu/8x2", "--mode=infer", "--torch_threads=0"], "--torch_threads=0 must be"),
])
def test_bench_refuses_unsupported_comparisons_before_compiling(args, message):
    torch_before = "torch" in sys.modules
    with pytest.raises(app.UsageError, match=message):
        run_main(*args, "--compare=torch", "--frames=4", "--size=32", "--batch=1")
    assert ("torch" in sys.modules) == torch_before


@pytest.mark.parametrize("model, variant, frames, attention", [
    ("videomae", "Mu/8", 4, "sdpa"), ("timesformer", "Mu/8", 4, "eager"), ("vivit", "Mu/8x2", 4, "sdpa"),
    ("videomamba", "Mu/8", 4, None)])
def test_references_have_the_vidjax_model_parameters_and_time(model, variant, frames, attention):
    """The one test that needs torch and transformers: each reference, built from the vidjax config, holds as many
    parameters as the vidjax model, and times a fine-tune step."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import jax
    from flax import nnx

    from vidjax.models import get_model

    cfg = model_config(model, variant, frames=frames, size=32, num_classes=5)
    with nnx.use_eager_sharding(False):
        vidjax_model = get_model(model).Model(cfg, rngs=nnx.Rngs(0))
    vidjax_params = sum(x.size for x in jax.tree.leaves(nnx.state(vidjax_model, nnx.Param)))
    result = reference.time_torch(model, "finetune", cfg, batch=2, steps=1, warmup=0, threads=1)
    assert result["num_params"] == vidjax_params
    assert result["attn_implementation"] == attention
    assert result["seconds_per_step"] > 0 and result["clips_per_s"] == 2 / result["seconds_per_step"]
    assert (result["model"], result["mode"], result["frames"], result["size"], result["threads"]) == (
        model, "finetune", frames, 32, 1)


def test_the_reference_runs_where_vidjax_runs_in_its_precision():
    assert reference.placement("cpu", "float32") == {"device": "cpu", "autocast": None}
    assert reference.placement("gpu", "bfloat16") == {"device": "cuda", "autocast": "bfloat16"}
    assert reference.placement("tpu", "float32")["device"] == "cpu"


@pytest.mark.parametrize("kwargs", [{"device": "mps"}, {"autocast": "float8"}])
def test_time_torch_refuses_a_device_or_precision_it_has_no_path_for(kwargs):
    with pytest.raises(ValueError, match="the reference runs on 'cpu' or 'cuda'"):
        reference.time_torch("videomae", "infer", model_config("videomae", "Mu/8", frames=4, size=32), 1, 1, 0,
                             **kwargs)


def test_bench_refuses_zero_rounds():
    with pytest.raises(app.UsageError, match="--rounds=0 must be at least 1"):
        run_main("--model=videomae", "--variant=Mu/8", "--mode=infer", "--compare=torch", "--rounds=0")
