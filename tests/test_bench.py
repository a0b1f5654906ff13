"""The benchmark harness reports what it promises (timings are not asserted: this machine is noisy)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from absl import app, flags
from absl.testing import flagsaver
from helpers import COMMAND_XLA_FLAGS

from vidjax import platform
from vidjax.bench import op_profile, step
from vidjax.data import pipeline


@pytest.mark.slow
def test_time_vidjax_reports_step_time_and_flops():
    results = {}
    for mode in ("pretrain", "finetune", "infer"):
        config = step.bench_config("videomae", "Mu/8", 4, 32, 8, mode, "float32", 10)
        # One encoder and one decoder block: every category of a ViT step still runs, and compiling the three steps
        # is the test's time (11 CPU s, 30 with Mu's 4 + 4 blocks).
        config.model.update(depth=1, decoder_depth=1)
        results[mode] = result = step.time_vidjax(config, mode, steps=2, warmup=1, profile=mode == "finetune")
        assert result["seconds_per_step"] > 0 and len(result["step_times"]) == 2
        assert result["clips_per_s"] == 8 / result["seconds_per_step"]
        assert result["compile_s"] > 0 and math.isfinite(result["flops_per_step"]) and result["flops_per_step"] > 0
    # backward costs about twice the forward
    assert results["finetune"]["flops_per_step"] > 2 * results["infer"]["flops_per_step"]
    # --profile: a fine-tune step's op time lands in every category a ViT step has, and nothing is lost
    profile = results["finetune"]["profile"]
    assert set(profile["seconds"]) == set(op_profile.CATEGORIES)
    for category in ("GEMM forward", "GEMM dX", "GEMM dW", "attention", "softmax", "norms", "elementwise",
                     "optimizer update"):
        assert profile["seconds"][category] > 0, (category, profile)
    assert profile["total_s"] == pytest.approx(sum(profile["seconds"].values()))
    assert profile["seconds"]["other"] < 0.05 * profile["total_s"], profile
    table = op_profile.markdown(profile, profile, 0.1, 0.1)
    dw = profile["seconds"]["GEMM dW"]
    assert f"| GEMM dW | {dw * 1e3:.1f} | {100 * dw / profile['total_s']:.1f} | {dw * 1e3:.1f} |" in table
    assert table.splitlines()[-1] == "| step time (timed) | 100.0 |  | 100.0 |  | 1.00 |"


def test_profile_tells_forward_dx_and_dw_products_and_norms_apart():
    import jax
    import jax.numpy as jnp

    def LayerNorm(x):  # noqa: N802  (classified by the emitting function's name, as flax's LayerNorm.__call__)
        mean = jnp.mean(x, -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jnp.var(x, -1, keepdims=True) + 1e-6)

    def loss(w, x):
        return jnp.sum(LayerNorm(x @ w) ** 2)

    w, x = jnp.ones((24, 40)), jnp.ones((96, 24))
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()
    module, instrs, computations = op_profile.parse_hlo(text)
    entry = [i for i in instrs.values() if i.name in _entry_names(text)]
    categories = [op_profile.classify_hlo(i, computations, {24 * 40}) for i in entry]
    assert module.startswith("jit_") and sorted(c for c in categories if c and c.startswith("GEMM")) == [
        "GEMM dW", "GEMM dX", "GEMM forward"]
    assert "norms" in categories


def _entry_names(text):
    body = text[text.index("\nENTRY"):]
    body = body[:body.index("\n}")]
    return {line.split("=")[0].strip().removeprefix("ROOT ").lstrip("%") for line in body.splitlines()[1:]}


@pytest.mark.parametrize("names, shapes, category", [
    (["aten::addmm", "aten::linear"], [[[784, 384], [384, 1536]], []], "GEMM forward"),
    (["aten::mm", "AddmmBackward0", "autograd::engine::evaluate_function: AddmmBackward0"],
     [[[1536, 784], [784, 384]], [], []], "GEMM dW"),  # 1536 x 384 elements: the weight's
    (["aten::mm", "AddmmBackward0", "autograd::engine::evaluate_function: AddmmBackward0"],
     [[[784, 1536], [1536, 384]], [], []], "GEMM dX"),
    (["aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention"], [[], []],
     "attention"),
    (["aten::empty", "aten::native_layer_norm_backward", "autograd::engine::evaluate_function: X"], [[], [], []],
     "norms"),  # an allocation is its caller's
    (["aten::add_", "aten::_foreach_add_", "Optimizer.step#AdamW.step"], [[], [], []], "optimizer update"),
    (["aten::copy_", "aten::contiguous"], [[], []], "copies / transposes"),
    (["aten::_log_softmax", "aten::cross_entropy_loss"], [[], []], "loss"),
])
def test_profile_classifies_torch_ops_by_their_callers(names, shapes, category):
    assert op_profile._torch_category(names, shapes, {1536 * 384}) == category


def run_main(*args):
    """`python -m vidjax.bench ARGS` in this process (flag values restored afterwards)."""
    with flagsaver.flagsaver():
        flags.FLAGS(["bench", *args])
        step.main(["bench"])


@pytest.mark.slow
def test_option_lists_run_every_combination_and_print_a_table(capsys):
    """--dtype/--scan_layers (and --remat/--grad_accum) take comma lists: one row each, a table, {"rows": [...]}.
    Inference, the cheapest program to compile: the train steps' timing is test_time_vidjax's."""
    run_main("--variant=Mu/8", "--frames=4", "--size=32", "--batch=8", "--steps=1", "--warmup=0", "--mode=infer",
             "--dtype=float32,bfloat16", "--scan_layers=true", "--remat=full")
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["rows"]
    assert [(r["dtype"], r["scan_layers"], r["remat"], r["grad_accum"]) for r in rows] == [
        ("float32", True, "full", 1), ("bfloat16", True, "full", 1)]
    assert all(r["seconds_per_step"] > 0 and r["temp_bytes"] > 0 and r["compile_s"] > 0 for r in rows)
    table = [line for line in out if line.startswith("| ")]
    assert table[0].startswith("| dtype | remat | grad_accum | scan_layers | s/step")
    assert table[2].startswith("| float32 | full | 1 | true |")
    assert table[3].startswith("| bfloat16 | full | 1 | true |")
    assert table[2].endswith("| 1.00 | 1.00 |")  # ratios against the first row


def test_encode_compiled_only_reports_the_backbone_memory_and_its_compiler(capsys):
    """--mode=encode --compile_only: the backbone's forward alone (V-JEPA 2 without its predictor), compiled and not
    run, with XLA's per-device figures and whose compiler made them; --topology needs --compile_only."""
    run_main("--model=vjepa2", "--variant=Mu/16", "--frames=4", "--size=32", "--batch=8", "--mode=encode",
             "--compile_only")
    out = capsys.readouterr().out.strip().splitlines()
    row = json.loads(out[-1])["rows"][0]
    assert row["mode"] == "encode" and row["compile_only"] and "seconds_per_step" not in row
    assert (row["backend"], row["device_kind"]) == ("cpu", "cpu")
    assert row["total_bytes"] == (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
                                  + row["temp_bytes"] + row["code_bytes"]) > 0
    assert out[-2].startswith("vidjax (compiled only, by XLA:CPU for cpu)")
    with pytest.raises(app.UsageError, match="--topology=v5litepod-1 compiles for a TPU slice .* add --compile_only"):
        run_main("--model=vjepa2", "--mode=encode", "--topology=v5litepod-1")


@pytest.mark.slow
def test_pixels_host_and_device_compile_the_step_from_clips_and_from_planes():
    """--pixels=host,device: the same training step fed RGB clips and fed a device-pixel batch (the planes in the
    canvas the recipe's short side gives, each video's crop), the model's FLOPs the same (the pixel products are not
    the model's); the planes are what the arguments grow by. Only for a training step."""
    rows = []
    for pixels in ("host", "device"):
        config = step.bench_config("videomae", "Mu/8", 4, 32, 8, "pretrain", "float32", 400, pixels=pixels)
        config.model.update(depth=1, decoder_depth=1)  # compiling is the test's time
        rows.append(step.time_vidjax(config, "pretrain", steps=1, warmup=0, compile_only=True))
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] > 0
    rows_, cols = pipeline.pixel_canvas(config.data)
    assert (config.data.short_side, rows_, cols) == (37, 72, 72)  # 256/224 of 32; 1.5 x 37 + 16, rounded up even
    planes = 8 * 4 * (rows_ * cols + 2 * (rows_ // 2) * (cols // 2))
    crops = 8 * (4 * 4 + 1 + 2 * 4 + 2 * 4)  # a box, a flip, the region's size and colour a video
    per_device = rows[0]["devices"]  # XLA's figures are a device's: the batch is split over the 8 of the suite
    grown = (planes + crops - 8 * 4 * 32 * 32 * 3) // per_device
    assert rows[1]["argument_bytes"] - rows[0]["argument_bytes"] == grown
    with pytest.raises(app.UsageError, match="--pixels=host,device applies to the training step"):
        run_main("--mode=infer", "--pixels=host,device")
    with flagsaver.flagsaver():  # the command: a row each, its config's pixels
        flags.FLAGS(["bench", "--mode=finetune", "--pixels=host,device", "--dtype=bfloat16"])
        options = step.option_rows()
        assert [(o["pixels"], o["dtype"]) for o in options] == [("host", "bfloat16"), ("device", "bfloat16")]
        assert [step._row_config(o).data.pixels for o in options] == ["host", "device"]


def test_a_batch_in_host_memory_leaves_the_chips_arguments():
    """config.batch_memory="host" compiled by libtpu for a v5e chip: the step takes its batch folded into 4
    micro-batches in host memory, and a chip's arguments shrink by at least the batch's bytes (their tiled layout
    pads the uint8 clips); the model's FLOPs are the same."""
    rows = []
    for memory in ("device", "host"):
        config = step.bench_config("videomae", "Mu/8", 4, 32, 64, "pretrain", "float32", 400, grad_accum=4)
        config.model.update(depth=1, decoder_depth=1)  # compiling is the test's time
        config.batch_memory = memory
        rows.append(step.time_vidjax(config, "pretrain", steps=1, warmup=0, compile_only=True,
                                     topology="v5litepod-1"))
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] > 0
    tokens = 4 // 2 * (32 // 8) ** 2
    batch = 64 * (4 * 32 * 32 * 3 + 4 + 4 + tokens)  # clips, labels, decode failures, masks
    assert rows[0]["argument_bytes"] - rows[1]["argument_bytes"] >= batch


@pytest.mark.parametrize("flag, value, message", [
    ("dtype", "float16", "--dtype=float16: each value must be one of float32, bfloat16"),
    ("scan_layers", "yes", "--scan_layers=yes: each value must be one of false, true"),
    ("grad_accum", "1,0", "--grad_accum=1,0: give positive integers"),
])
def test_bad_option_lists_are_usage_errors(flag, value, message):
    with pytest.raises(app.UsageError, match=message):
        run_main(f"--{flag}={value}")


def test_command_prints_json_last_line():
    root = pathlib.Path(__file__).parent.parent
    # The forward pass: the command's output is what is checked, and the command took 10 CPU s (mostly compiling)
    # with a pre-training step, 3 with the forward.
    env = {name: value for name, value in os.environ.items() if name != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = COMMAND_XLA_FLAGS
    proc = subprocess.run(
        [sys.executable, "-m", "vidjax.bench", "--variant=Mu/8", "--frames=4", "--size=32", "--batch=2",
         "--mode=infer", "--steps=2", "--warmup=1"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"seconds_per_step", "clips_per_s", "compile_s", "flops_per_step"} <= set(result)
    assert result["mode"] == "infer" and result["devices"] == 1
    # The command set the host allocator before jax started (vidjax/host_malloc.py; tests/test_host_malloc.py): on
    # this machine jax runs on the CPU, with JAX_PLATFORMS unset as on a user's, and the test extra's libtpu
    # installed beside it is no TPU.
    if not platform.tpu_chips() and not any(os.path.exists(path) for path in platform.NVIDIA_DEVICE_FILES):
        assert result["backend"] == "cpu"
        assert result["host_malloc"] == ("reuse" if sys.platform == "linux" else "system (not glibc Linux)")


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("cpu", None), ("TPU v7x", None),
    ("NVIDIA H1000", None),
])
def test_peak_flops_reads_jax_device_kinds(kind, peak):
    assert step.peak_flops(kind) == peak


def test_mfu_is_per_device_flops_per_second_over_the_peak():
    assert step.mfu(275e12, 2.0, "TPU v4") == pytest.approx(0.5)
    assert step.mfu(4 * 275e12, 2.0, "TPU v4", devices=4) == pytest.approx(0.5)  # the step's FLOPs, all devices
    assert step.mfu(1e9, 1.0, "cpu") is None


def test_matmul_flops_counts_products_through_calls_loops_branches_and_gradients():
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    one = 2 * 3 * 4 * 5
    assert step.matmul_flops(jax.make_jaxpr(lambda a, b: a @ b)(a, b)) == one
    assert step.matmul_flops(jax.make_jaxpr(jax.jit(lambda a, b: jnp.tanh(a @ b) + 1))(a, b)) == one  # no elementwise

    def looped(a, b):
        return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]

    assert step.matmul_flops(jax.make_jaxpr(looped)(a, b)) == 7 * one
    branches = jax.make_jaxpr(lambda p, a, b: jax.lax.cond(p, lambda: (a @ b) @ b.T, lambda: a))(True, a, b)
    assert step.matmul_flops(branches) == one + 2 * 3 * 5 * 4  # the costlier branch
    batched = jax.make_jaxpr(lambda x, y: jnp.einsum("bik,bkj->bij", x, y))(jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5)))
    assert step.matmul_flops(batched) == 6 * one
    # Forward and backward of a product: the forward, dA and dB, three times the forward.
    grad = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(jax.checkpoint(lambda a: a @ b)(a)), argnums=(0, 1)))(a, b)
    assert step.matmul_flops(grad) >= 3 * one
    # A convolution: 2 x outputs x (input features x kernel size); the patch embedding's form.
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((4, 4, 3, 16))
    conv = jax.make_jaxpr(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w)
    assert step.matmul_flops(conv) == 2 * (2 * 2 * 2 * 16) * (3 * 4 * 4)
