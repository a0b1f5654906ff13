"""`python -m vidjax.aot` and `vidjax.train.aot`: the trainer's steps compiled ahead of time for TPU slices by libtpu on
this CPU-only machine, what the command reports of them, and a saved step loaded by the trainer.

Tiny configs (the VideoMAE runlocal recipe at one block) keep each compile to seconds; nothing here is timed."""

import json
import math
import os
import pickle
import re
import subprocess
import sys
import types
import zlib

import jax
import numpy as np
import pytest
from helpers import load_config, script_env

from vidjax import compile_cache, platform, tpu, train
from vidjax.commands import aot as aot_command
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline
from vidjax.train import aot

pytest.importorskip("libtpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(depth: int = 1, **overrides):
    config = load_config("videomae_k400", "runlocal")
    config.model.depth = depth
    config.total_steps = 4
    config.data.num_eval = 32
    config.update_from_flattened_dict(overrides)  # dotted keys: "mesh.fsdp"
    return config


def run_aot(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vidjax.aot", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)


# ---- slices ----

@pytest.mark.parametrize("name, topology, chips, devices", [
    ("v5p-128", "v5p:4x4x4", 64, 64), ("v5p-8", "v5p:2x2x1", 4, 4), ("v4-32", "v4:2x2x4", 16, 16),
    ("v5litepod-256", "v5e:16x16", 256, 256), ("v5e-8", "v5e:2x4", 8, 8), ("v6e-64", "v6e:8x8", 64, 64),
    ("v6e-1", "v6e:1x1", 1, 1), ("v3-8", "v3:2x2", 4, 8), ("v5p:2x2x1", "v5p:2x2x1", 4, 4)])
def test_cloud_names_and_topologies_give_the_slices_cloud_makes(name, topology, chips, devices):
    s = tpu.slice_of(name)
    assert (s.topology, s.chips, s.num_devices) == (topology, chips, devices)


def test_libtpu_gives_the_devices_of_a_named_slice_and_of_slices_over_dcn():
    one = tpu.topology_devices(tpu.slice_of("v6e-1"))
    assert [d.device_kind for d in one] == ["TPU v6 lite"]
    two = tpu.topology_devices(tpu.slice_of("v5p-8", num_slices=2))
    assert len(two) == 8 and [d.slice_index for d in two] == [0] * 4 + [1] * 4
    from vidjax import sharding

    mesh = sharding.create_mesh({"data": -1, "fsdp": 2, "tensor": 1}, two)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    # The data axis crosses the slices; the fsdp pairs stay inside one.
    assert all(len({d.slice_index for d in row}) == 1 for row in mesh.devices.reshape(4, 2))
    with pytest.raises(ConfigError, match="multiple of 2"):
        sharding.create_mesh({"data": 1, "fsdp": -1, "tensor": 1}, two)


@pytest.mark.parametrize("name", ["v9-8", "v5p-12", "v5p:2x2", "tpu"])
def test_an_unknown_slice_lists_the_valid_names(name):
    with pytest.raises(ConfigError, match="(?s)Unknown TPU slice.*v5p-128.*v5litepod-256.*v5p:4x4x4"):
        tpu.slice_of(name)


def test_the_command_refuses_an_unknown_slice_in_one_line_listing_valid_names():
    result = run_aot("--config=configs/videomae_k400.py:runlocal", "--topology=v9-8")
    assert result.returncode == aot_command.BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "v9-8" in errors[0] and "v5p-128" in errors[0] and "v6e-64" in errors[0], errors


# ---- what the compiled step says ----

HLO = """HloModule jit_step

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
}

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %all-gather-start.1 = (bf16[64]{0}, bf16[256]{0}) all-gather-start(bf16[64]{0} %x), dimensions={0}
  %all-gather-done.1 = bf16[256]{0} all-gather-done((bf16[64]{0}, bf16[256]{0}) %all-gather-start.1)
  %reduce-scatter.2 = f32[64]{0} reduce-scatter(f32[256]{0} %g), dimensions={0}, to_apply=%add
}

%all-reduce-scatter.7 (input: f32[128]) -> f32[32] {
  %input = f32[128]{0} parameter(0)
  %all-reduce.9 = f32[128]{0} all-reduce(%input), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %dynamic-slice.1 = f32[32]{0} dynamic-slice(%all-reduce.9, %offset), dynamic_slice_sizes={32}
}

%cond (p: (s32[], f32[256])) -> pred[] {
  %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (x: f32[256]) -> f32[256] {
  %w = (s32[], f32[256]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %all-reduce.3 = (f32[10]{0}, f32[6]{0}) all-reduce(f32[10]{0} %a1, f32[6]{0} %a2), to_apply=%add
  %fusion.4 = f32[32]{0} fusion(f32[128]{0} %g2), kind=kOutput, calls=%all-reduce-scatter.7
}
"""


def test_collectives_count_loop_bodies_by_their_trip_count_and_async_pairs_once():
    found = aot.collectives(HLO)
    assert found["all-gather"] == {"count": 1, "executions": 12.0, "bytes": 12 * 256 * 2}  # the gathered output
    # The scattered input: a reduce-scatter, and libtpu's all-reduce fused with a slice.
    assert found["reduce-scatter"] == {"count": 2, "executions": 13.0, "bytes": 12 * 256 * 4 + 128 * 4}
    assert found["all-reduce"] == {"count": 1, "executions": 1.0, "bytes": 16 * 4}  # a combined all-reduce: both
    assert set(found) == {"all-gather", "reduce-scatter", "all-reduce"}


SCANNED = """HloModule scanned

%fused (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %f = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"100"}
  %c = f32[8]{0} convolution(%a, %b), metadata={op_name="jvp()/dot_general"}, backend_config={"estimated_cycles":"300"}
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %constant.1 = s32[]{:T(128)} constant(12)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %constant.1), direction=LT
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body
  %copy.1 = f32[8]{0} copy(%y), backend_config={"estimated_cycles":"50"}
}
"""


def test_the_estimates_count_a_loop_by_the_bound_its_condition_compares_with():
    profile = aot.estimated_profile(SCANNED)
    assert profile["cycles"] == 12 * (100 + 300) + 50 and profile["cycles_once"] == 450
    assert profile["by_category"] == pytest.approx({"matrix products (convolution fusions)": 3600 / 4850,
                                                    "elementwise (loop fusions)": 1200 / 4850,
                                                    "copies and slices": 50 / 4850})
    assert profile["top"][0] == {"share": pytest.approx(3600 / 4850), "op": "jvp()/dot_general",
                                 "category": "matrix products (convolution fusions)"}


_MOSAIC = 'custom_call_target="tpu_custom_call", operand_layout_constraints='
KERNELS = "\n".join([
    "HloModule kernels",
    "",
    "%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
    f"  %scan.3 = f32[4,1024,256]{{2,1,0:T(8,128)}} custom-call(%u), {_MOSAIC}{{f32[4,1024,256]{{2,1,0}}, "
    'bf16[4,1024,16]{2,1,0}}, backend_config={"custom_call_config":{"cost_estimate":{"flops":"2000000000",'
    '"transcendentals":"0","bytes_accessed":"1"}},"bundle_analysis_data":{"estimated_cycles":"175000","flops":"0"}}',
    '  %f = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused, backend_config={"estimated_cycles":"100"}',
    "}",
    "",
    "%cond (p: (s32[], f32[8])) -> pred[] {",
    "  %constant.1 = s32[]{:T(128)} constant(12)",
    "  %i = s32[]{:T(128)} get-tuple-element(%p), index=0",
    "  ROOT %lt = pred[]{:T(512)} compare(%i, %constant.1), direction=LT",
    "}",
    "",
    "ENTRY %main (x: f32[8]) -> f32[8] {",
    "  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body",
    f"  %too_fast.1 = f32[4,1024,256]{{2,1,0}} custom-call(%y), {_MOSAIC}{{f32[4,1024,256]{{2,1,0}}}}, "
    'backend_config={"bundle_analysis_data":{"estimated_cycles":"10"}}',
    f"  %unprofiled.2 = f32[8]{{0}} custom-call(%y), {_MOSAIC}{{f32[8]{{0}}}}, "
    'backend_config={"estimated_cycles":"7"}',
    '  %copy.1 = f32[8]{0} copy(%y), backend_config={"estimated_cycles":"50"}',
    "}",
    ""])


def test_mosaic_kernels_are_estimated_statically_and_an_impossible_estimate_is_unknown_with_its_floor():
    """The cost model leaves kernels out: each is counted by libtpu's static estimate (its loop's trip count times),
    held to its floors (HBM bytes over the bandwidth, declared FLOPs over the peak), else unknown with the reason."""
    chip = tpu.CHIPS["v5p"]
    found = aot.kernel_estimates(KERNELS, chip)
    rows = {row["name"]: row for row in found["kernels"]}
    assert set(rows) == {"scan", "too_fast", "unprofiled"} and found["calls"] == 14
    scan = rows["scan"]
    moved = 4 * 1024 * 256 * 4 * 2 + 4 * 1024 * 16 * 2  # its result and operands, once a call
    assert scan["calls"] == 12 and scan["bytes"] == 12 * moved and scan["flops"] == 12 * 2e9
    assert scan["seconds"] == pytest.approx(12 * 175000 / chip.clock_hz)
    assert scan["hbm_floor_s"] == pytest.approx(12 * moved / chip.hbm_bytes_per_s)
    assert scan["arithmetic_floor_s"] == pytest.approx(12 * 2e9 / chip.peak_bf16_flops)
    assert max(scan["hbm_floor_s"], scan["arithmetic_floor_s"]) < scan["seconds"]
    fast = rows["too_fast"]  # 10 cycles for 8 MiB of HBM: faster than the chip's bandwidth allows
    assert fast["seconds"] is None and "below its HBM bytes over the chip's bandwidth" in fast["reason"]
    assert rows["unprofiled"]["seconds"] is None and "no static estimate" in rows["unprofiled"]["reason"]
    assert found["unknown"] == 2 and found["seconds"] == pytest.approx(scan["seconds"])
    assert found["unknown_floor_s"] == pytest.approx(fast["hbm_floor_s"] + rows["unprofiled"]["hbm_floor_s"])
    # A kernel the program has no estimate of takes the profiled one's cycles a byte, found by its name or, where its
    # instruction is named after something else (a jit around it), by its shapes but the batch.
    (signature,) = rows["unprofiled"]["signatures"]
    assert signature == "f32[];f32[]"  # an (8,) result and operand: only the leading dimension, dropped
    profiled = {"names": {}, "signatures": {signature: {"cycles": 1000.0, "bytes": 16.0}}}
    again = {row["name"]: row for row in aot.kernel_estimates(KERNELS, chip, profiled)["kernels"]}
    assert again["unprofiled"]["cycles"] == pytest.approx(1000 / 16 * 64)  # 64 bytes here: 8 floats in and out
    assert again["unprofiled"]["seconds"] == pytest.approx(again["unprofiled"]["cycles"] / chip.clock_hz)
    # A profile of the same name but other operands is another kernel (code edited under the child): not used.
    other = {"names": {"unprofiled": {"cycles": 1000.0, "bytes": 16.0}}, "signatures": {"f32[4];f32[4]": {}}}
    stale = {row["name"]: row for row in aot.kernel_estimates(KERNELS, chip, other)["kernels"]}["unprofiled"]
    assert stale["seconds"] is None and "other operands" in stale["reason"]
    same = dict(other, signatures={signature: {}})
    assert {row["name"]: row for row in aot.kernel_estimates(KERNELS, chip, same)["kernels"]}["unprofiled"][
        "cycles"] == pytest.approx(1000 / 16 * 64)
    # A kernel whose profiling child failed says why, also where its jaxpr name is not its instruction's (jax's
    # flash attention: "flash_attention_dkv_kernel" traced, "flash_mha_bwd_dkv_block_..." compiled).
    killed = "profiling the kernel failed (exit -9, killed: most likely this machine's memory ran out)"
    failed = dict(profiled, errors={"unprofiled_kernel": killed}, errors_by_signature={signature: killed})
    assert {row["name"]: row for row in aot.kernel_estimates(KERNELS, chip, failed)["kernels"]}["unprofiled"][
        "reason"] == killed
    # The profile shares count the kernels by their static estimates; the cost model's loop scale leaves them out.
    profile = aot.estimated_profile(KERNELS)
    assert profile["kernel_cycles"] == 12 * 175000 + 10 and profile["cycles_once"] == 100 + 50
    assert profile["cycles"] == 12 * (175000 + 100) + 10 + 50


@pytest.mark.slow
def test_a_step_with_mosaic_kernels_counts_each_by_its_scaled_static_estimate():
    """VideoMamba's runlocal on v5p:2x2x1 runs the fused selective-scan kernels (scan "auto" on TPU): the table
    names each kernel with its static estimate (from a child process's profile at two clips a chip, scaled by
    its bytes here) above its floors, and the step time is the cost model's plus theirs."""
    config = load_config("videomamba_k400", "runlocal")
    out = aot_command.figures(config, tpu.slice_of("v5p:2x2x1"), "train")
    kernels = out["kernels"]
    names = {row["name"] for row in kernels["kernels"]}
    assert names == {"selective_scan", "selective_scan_reverse", "selective_scan_backward",
                     "selective_scan_reverse_backward"}
    assert kernels["unknown"] == 0 and kernels["calls"] == 4 * config.model.depth
    for row in kernels["kernels"]:
        assert row["seconds"] >= max(row["hbm_floor_s"], row["arithmetic_floor_s"]) > 0
        assert row["profiled_bytes"] < row["bytes"]  # profiled at two clips a chip (a v5p core each), 8 here
    assert out["step_s"] == pytest.approx(out["xla_step_s"] + kernels["seconds"])
    assert "step_s_is_floor" not in out
    line = aot_command.kernel_line(out)
    assert "4 kernels" in line and "all 4 unseen by the cost model" in line and "selective_scan_backward x" in line


@pytest.mark.slow
def test_kernels_with_a_partial_last_tile_are_profiled_on_their_whole_tile_twins_each_in_a_process_of_its_own():
    """libtpu's v5e profiler lacks an instruction of the selective scan's partial last time tile (it stops its
    process: "Unsupported llo instruction: kScalarMultiplyHighU32"). Each distinct kernel is profiled in a child of
    its own, one whose last tile is partial on its whole-tile twin (`scan_kernel.whole_tiles`), and counted for the
    step's own bytes and shapes: on v5e the four scan kernels of a step whose 129 tokens end in a partial tile are
    all estimated, each saying what was profiled."""
    config = load_config("videomamba_k400", "runlocal")
    # VideoMamba-Ti's width (384-channel tiles), bf16, 129 tokens: two time tiles of 128, the last one partial.
    config.model.update(variant="Ti/16", depth=1, tubelet_size=1, image_size=64, dtype="bfloat16")
    config.data.image_size = 64
    out = aot_command.figures(config, tpu.slice_of("v5litepod-1"), "train")
    kernels = out["kernels"]
    assert {row["name"] for row in kernels["kernels"]} == {
        "selective_scan", "selective_scan_reverse", "selective_scan_backward", "selective_scan_reverse_backward"}
    assert kernels["unknown"] == 0 and "step_s_is_floor" not in out
    for row in kernels["kernels"]:
        assert row["seconds"] >= max(row["hbm_floor_s"], row["arithmetic_floor_s"]) > 0
        assert row["profiled_on"].startswith("its whole-tile twin") and row["signatures"][0].startswith(
            ("f32[129,384]", "(f32[129,384]"))


@pytest.mark.slow
def test_a_long_clip_s_kernels_are_profiled_on_shorter_twins_and_counted_for_their_own_grid():
    """libtpu's profile walks every step of a kernel's grid and its memory grows with them (VideoMamba-S's backward
    scan at 64 frames: killed at 21.6 GB), so a kernel with more sequential grid steps than `most_steps` is profiled
    on two twins at fewer frames and counted for its own grid by the line through their cycles: within 2% of its
    own profile, each kernel saying what it was profiled on."""
    config = load_config("videomamba_k400", "runlocal")
    # VideoMamba-Ti's width, 80 frames of 16 tokens: 1,281 steps, 11 time tiles, the last partial.
    config.model.update(variant="Ti/16", depth=1, tubelet_size=1, image_size=64, dtype="bfloat16", num_frames=80)
    config.data.update(image_size=64, num_frames=80)
    lowered = aot.lower(config, tpu.slice_of("v5litepod-1"), "train")
    twins, own = aot.profile_kernels(lowered, most_steps=6), aot.profile_kernels(lowered, most_steps=100)
    assert not twins["errors"] and not own["errors"]
    assert set(twins["names"]) == set(own["names"]) == {
        "selective_scan", "selective_scan_reverse", "selective_scan_backward", "selective_scan_reverse_backward"}
    for name, row in twins["names"].items():
        assert row["bytes"] == pytest.approx(own["names"][name]["bytes"], rel=1e-6)  # the kernel's own bytes
        assert row["cycles"] == pytest.approx(own["names"][name]["cycles"], rel=0.02)
        assert row["shorter"].startswith("its twins at 40 and 20 frames of the clip's 80 (6 and 3 of its 11 ")
        assert "shorter" not in own["names"][name]
    compiled, refused = aot.compile_or_refuse(lowered)
    assert refused is None
    rows = aot.kernel_estimates(compiled.as_text(), lowered.slice.chip, profiled=twins)["kernels"]
    assert len(rows) == 4
    for row in rows:
        assert row["seconds"] >= max(row["hbm_floor_s"], row["arithmetic_floor_s"]) > 0
        assert row["profiled_on"].startswith(twins["names"][row["name"]]["shorter"] + "; its whole-tile twin")


def test_a_failed_profiling_child_says_libtpus_own_line_or_that_memory_ran_out():
    """Why a kernel's profiling child failed: libtpu's fatal line, not the abort after it; a silent kill is named
    as the machine's memory running out."""
    def done(code, stderr):
        return subprocess.CompletedProcess([], code, "", stderr)

    fatal = ("W1129 12:00:00.1 1 x.cc:1] a warning\nF1129 12:00:00.2 1 llo_evaluator.cc:86] Static LLO profiling "
             "of _bind.1 failed: UNIMPLEMENTED: Unsupported llo instruction\n*** SIGABRT received ***\n")
    assert aot._child_failure(done(-6, fatal)) == ("profiling the kernel failed (exit -6): Static LLO profiling of "
                                                  "_bind.1 failed: UNIMPLEMENTED: Unsupported llo instruction")
    assert "most likely this machine's memory ran out" in aot._child_failure(done(-9, ""))
    assert aot._child_failure(done(1, "Traceback\nValueError: bad\n")).endswith("(exit 1): ValueError: bad")


@pytest.mark.slow
def test_on_v4_the_kernels_compile_and_are_counted_at_their_floors_with_why():
    """libtpu's static profile does not cover v4 (it stops the process there): a v4 step's kernels compile (the
    selective scan's backward kernel once needed a sublane gather, which v4's Mosaic lacks) and are counted at their
    floors, each saying why, with no profiling child started."""
    config = load_config("videomamba_k400", "runlocal")
    out = aot_command.figures(config, tpu.slice_of("v4:2x2x1"), "train")
    kernels = out["kernels"]
    assert kernels["unknown"] == len(kernels["kernels"]) == 4
    for row in kernels["kernels"]:
        assert row["seconds"] is None and row["reason"].startswith("libtpu's static profile does not cover v4")
    assert out["step_s_is_floor"]


def test_the_local_slice_is_this_process_s_devices():
    here = tpu.local_slice()
    assert here.topology == f"cpu:{jax.device_count()}" and tpu.topology_devices(here) == jax.devices()


def test_a_script_that_imports_vidjax_hears_nothing_from_libtpu_on_a_machine_without_chips():
    # jax loads libtpu when it starts its backends, and libtpu, finding no chips, prints a dozen lines about TPU
    # worker host names; `import vidjax` gives it those values first, as the commands do. With chips (a TPU VM),
    # it leaves the environment to the VM.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("TPU_", "ALLOW_MULTIPLE_LIBTPU", "JAX_PLATFORMS"))}
    script = "import jax, os, vidjax; jax.devices(); print(os.environ.get('TPU_WORKER_HOSTNAMES', 'unset'))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    if platform.tpu_chips():
        assert run.stdout.split() == ["unset"]
    else:
        assert run.stdout.split() == ["localhost"] and run.stderr == ""


@pytest.fixture(scope="module")
def v5e_step():
    """The tiny pre-training step compiled for a v5e 2x2 (4 chips), data parallel."""
    lowered = aot.lower(tiny(), tpu.slice_of("v5e:2x2"))
    return lowered, lowered.lowered.compile()


@pytest.mark.slow
def test_the_printed_memory_is_xlas_memory_analysis_of_the_tpu_step(v5e_step):
    lowered, compiled = v5e_step
    analysis = compiled.memory_analysis()
    out = aot_command.report(lowered, compiled, 1.0)
    assert out["memory"]["argument_bytes"] == analysis.argument_size_in_bytes
    assert out["memory"]["temp_bytes"] == analysis.temp_size_in_bytes
    assert out["memory"]["code_bytes"] == analysis.generated_code_size_in_bytes
    assert out["memory"]["total_bytes"] == (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                            - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes
                                            + analysis.generated_code_size_in_bytes)
    assert out["hbm_bytes"] == 16 * 2**30 and out["fits"] is True
    assert out["devices"] == 4 and out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    text = aot_command.table(out)
    assert f"temporaries {aot_command._gib(analysis.temp_size_in_bytes)}" in text
    assert f"total {aot_command._gib(out['memory']['total_bytes'])} of 16.00 GiB: fits" in text
    # The TPU cost model's step time, and MFU from the model's FLOPs over the chips' peak.
    assert out["cost"]["optimal_seconds"] > 0 and out["step_s"] == out["cost"]["optimal_seconds"]
    assert out["mfu"] == pytest.approx(out["model_flops"] / 4 / out["step_s"] / tpu.CHIPS["v5e"].peak_bf16_flops)
    assert out["clips_per_s"] == pytest.approx(32 / out["step_s"])
    # Data parallel: the gradients are all-reduced, nothing else.
    assert set(out["collectives"]) == {"all-reduce"}
    assert out["collectives"]["all-reduce"]["bytes"] >= out["parameter_bytes"]
    # Generated clips: no decoding rate applies, so no host-cores figure (issue 72: 2,902 cores for the runlocal).
    assert "host_cores_needed" not in out and "host cores" not in text
    json.dumps(out)  # --json prints it


def test_host_cores_are_k400s_decoding_rate_said_so_and_none_for_generated_clips(tmp_path):
    config = load_config("videomae_k400")
    cores = aot_command.host_cores(config, 1980.0)
    assert cores["host_cores_needed"] == pytest.approx(1980.0 / aot_command.PER_CORE_CLIPS[1])
    assert cores["host_core_rate"]["from"].startswith("K400 videos decoded to 16 x 224 clips, num_samples 1")
    config.data.num_samples = 4
    assert aot_command.host_cores(config, 478.0)["host_cores_needed"] == pytest.approx(10.0)
    runlocal = load_config("videomae_k400", "runlocal")
    assert aot_command.host_cores(runlocal, 50_000.0) == {}
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"loader": "vidjax", "num_samples": 1, "clips_per_s_per_core": 100.0}]}))
    assert aot_command.host_cores(runlocal, 500.0, str(bench))["host_cores_needed"] == pytest.approx(5.0)


@pytest.mark.slow
def test_an_unusable_aggregate_gives_the_sum_of_the_per_instruction_estimates(v5e_step, monkeypatch):
    """libtpu's aggregate comes out negative for some programs (TimeSformer's steps; VideoMAE-B's accumulated over
    64 micro-batches on v6e): the step time is then the per-instruction estimates' sum over the clock, said so."""
    lowered, compiled = v5e_step
    real = aot.cost_figures
    monkeypatch.setattr(aot, "cost_figures", lambda c: {**real(c), "optimal_seconds": -264.0})
    out = aot_command.report(lowered, compiled, 1.0)
    profile = out["profile"]
    assert out["step_s"] == pytest.approx((profile["cycles"] - profile["kernel_cycles"]) / tpu.CHIPS["v5e"].clock_hz)
    assert out["step_s_from"] == "per-instruction estimates" and "-264 s" in out["cost_problem"]
    assert "the sum of libtpu's per-instruction estimates" in aot_command.table(out)
    assert "summed per instruction" in aot_command.brief(out)


@pytest.mark.slow
def test_fsdp_gathers_parameters_and_scatters_gradients_within_three_times_their_bytes():
    # Two blocks in one layer scan: the loop's collectives and cycles count twice.
    config = tiny(depth=2, **{"mesh.data": 1, "mesh.fsdp": -1, "model.dtype": "bfloat16", "model.scan_layers": True})
    lowered = aot.lower(config, tpu.slice_of("v5p:2x2x1"))
    found = aot_command.report(lowered, lowered.lowered.compile(), 1.0)
    assert found["profile"]["cycles"] > 1.2 * found["profile"]["cycles_once"]
    assert found["step_s"] == pytest.approx(found["cost"]["optimal_seconds"] * found["profile"]["cycles"]
                                            / found["profile"]["cycles_once"])
    kinds = found["collectives"]
    assert kinds.get("all-gather", {}).get("bytes", 0) > 0, kinds  # parameters gathered for the forward
    assert kinds.get("reduce-scatter", {}).get("bytes", 0) > 0, kinds  # gradients scattered to their shards
    moved = sum(row["bytes"] for row in kinds.values())
    assert moved <= 3 * found["parameter_bytes"], (moved, found["parameter_bytes"], kinds)


@pytest.mark.parametrize("slice_args", [
    # XLA:CPU compiles it; its memory analysis exceeds the limit standing in for the chips' HBM.
    pytest.param(("--topology=cpu:8", "--config.memory_limit_gb=0.001"), marks=pytest.mark.slow),
    # libtpu itself stops the compilation when the temporaries exceed a v5e chip's HBM.
    ("--topology=v5litepod-1", "--config.batch_size=262144", "--train_examples=100000000")])
def test_a_step_that_cannot_fit_exits_with_its_code_and_one_line_naming_what_to_change(slice_args):
    result = run_aot("--config=configs/videomae_k400.py:runlocal", "--config.model.depth=1", *slice_args,
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert result.returncode == aot_command.DOES_NOT_FIT, result.stderr
    assert "DOES NOT FIT" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--config.batch_size" in errors[0] and "--find_batch" in errors[0], result.stderr


# ---- the trainer's own step ----

def test_the_trainer_and_aot_lower_the_same_step_for_cpu_devices(tmp_path):
    config = tiny()
    run = train._set_up(config, str(tmp_path / "run"), None, None)
    try:
        batch = train.sharding.global_batch(next(run.train_iter), train.sharding.batch_sharding(run.setup.mesh))
        ours = train.make_train_step(run.config, run.setup, run.class_weights, run.pos_weight)
        trainer_text = ours.trace(run.abstract_state, batch).lower().as_text()
    finally:
        run.train_iter = None
    lowered = aot.lower(config, tpu.slice_of(f"cpu:{jax.device_count()}"))
    assert lowered.lowered.as_text() == trainer_text


def test_the_trainer_and_aot_lower_the_same_device_pixel_step(tmp_path):
    """With config.data.pixels="device" and video files, `vidjax.aot` describes the batch the input path sends (the
    planes, one row a video, in `pipeline.pixel_canvas`; each video's crops) and lowers the trainer's step."""
    from test_decode import make_video

    lines = []
    for i in range(4):
        frames = np.random.default_rng(i).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
        lines.append(f"{make_video(tmp_path / f'v{i}.mp4', frames=frames)} {i % 2}\n")
    (tmp_path / "list.txt").write_text("".join(lines * 2))
    config = tiny(**{"batch_size": 8, "data.source": "csv", "data.train_csv": str(tmp_path / "list.txt"),
                     "data.eval_csv": str(tmp_path / "list.txt"), "data.num_classes": 2, "data.pixels": "device"})
    run = train._set_up(config, str(tmp_path / "run"), None, None)
    try:
        local = next(run.train_iter)
        batch = train.sharding.global_batch(local, train.sharding.batch_sharding(run.setup.mesh))
        ours = train.make_train_step(run.config, run.setup, run.class_weights, run.pos_weight)
        trainer_text = ours.trace(run.abstract_state, batch).lower().as_text()
    finally:
        run.train_iter = None
    assert "video" not in local and local["planes_y"].shape == (8, 8, 64, 64)  # 8 videos of 8 frames, 64 x 64
    shapes = pipeline.device_pixel_shapes(config)
    assert {key: (value.shape, value.dtype) for key, value in local.items() if key in shapes} == shapes
    lowered = aot.lower(config, tpu.slice_of(f"cpu:{jax.device_count()}"))
    assert lowered.lowered.as_text() == trainer_text


@pytest.mark.slow
def test_a_saved_step_is_what_the_trainer_runs_and_a_mismatch_is_refused_in_one_line(tmp_path):
    config = tiny()
    path = str(tmp_path / "step.aot")
    lowered = aot.lower(config, tpu.slice_of(f"cpu:{jax.device_count()}"))
    compiled = lowered.lowered.compile()
    compile_cache.save_step(path, lowered.lowered, compiled, lowered.setup.mesh,
                            config.to_json_best_effort(sort_keys=True), "cpu")
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]

    loaded = config.copy_and_resolve_references()
    loaded.aot_step = path
    result = train.train_and_evaluate(loaded, str(tmp_path / "with"))
    plain = train.train_and_evaluate(config, str(tmp_path / "without"))
    assert result["step"] == plain["step"] == 4
    assert result["eval_loss"] == plain["eval_loss"]  # the loaded program computes what a compiled one does

    other = loaded.copy_and_resolve_references()
    other.optimizer.base_lr *= 2
    with pytest.raises(ConfigError, match=r"holds another step than this run's \(config: optimizer.base_lr"):
        train.train_and_evaluate(other, str(tmp_path / "other"))

    # The file's other checks, on the step as the trainer lowers it.
    def load():
        return compile_cache.load_step(path, lowered.jitted, lowered.args, lowered.setup.mesh,
                                       config.to_json_best_effort(sort_keys=True))

    with open(path, "rb") as f:
        header, payload = pickle.loads(zlib.decompress(f.read()))
    with open(path, "wb") as f:
        f.write(zlib.compress(pickle.dumps((dict(header, jax="0.0.1"), payload))))
    with pytest.raises(ConfigError, match=r"compiled with jax 0\.0\.1, this run has " + jax.__version__):
        load()
    with open(path, "wb") as f:
        f.write(zlib.compress(pickle.dumps((dict(header, num_devices=64, device_kind="TPU v5", where="v5p-128"),
                                            payload))))
    with pytest.raises(ConfigError, match="compiled for v5p-128: 64 TPU v5 devices"):
        load()
    with open(path, "wb") as f:
        f.write(b"not a step")
    with pytest.raises(ConfigError, match="not a step saved by"):
        load()


# ---- the entry points that meet a TPU ----

GCLOUD = """#!/bin/sh
echo "$@" >> "$GCLOUD_CALLS"
"""


@pytest.mark.parametrize("limit_gb, fits", [(0.001, False), (64.0, True)])
@pytest.mark.slow
def test_the_pod_launch_compiles_the_step_for_the_slice_before_starting_any_host(tmp_path, limit_gb, fits):
    """scripts/launch_tpu_pod.sh runs `vidjax.aot` for the slice first (here this machine's 8 CPU devices, with a
    memory limit standing in for the chips' HBM): a step that does not fit stops it before gcloud starts the hosts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(GCLOUD)  # records what the script asks of gcloud; starts nothing
    (bin_dir / "gcloud").chmod(0o755)
    calls = tmp_path / "calls"
    env = script_env(GCLOUD_CALLS=str(calls), TPU="my-tpu", ZONE="us-east5-a", WORKDIR="gs://bucket/run",
                     ACCELERATOR_TYPE="cpu:8", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"  # the fake gcloud first
    result = subprocess.run(["bash", "scripts/launch_tpu_pod.sh", "--config=configs/videomae_k400.py:runlocal",
                             "--config.model.depth=1", f"--config.memory_limit_gb={limit_gb}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    started = calls.read_text() if calls.exists() else ""
    if fits:
        assert result.returncode == 0, result.stderr
        assert "tpu-vm ssh my-tpu" in started and "python -m vidjax.main --workdir=gs://bucket/run" in started
    else:
        assert result.returncode == aot_command.DOES_NOT_FIT, result.stderr
        assert "Not starting the hosts" in result.stderr and "--find_batch" in result.stderr
        assert started == ""  # no host was started


def test_the_example_batch_carries_the_targets_the_task_trains_on():
    """The embedded dataset stands in for the recipe's data: a captioner's full recipe (Charades, class labels in its
    data block) is compiled with captions, as it trains (its cell failed on a batch without them)."""
    config = load_config("captioning_charades")
    assert config.data.synthetic_task != "captions"
    small, source = aot._embedded(config, "train")
    assert small.data.synthetic_task == "captions" and "captions" in source[0]
    assert aot._embedded(load_config("videomae_finetune_k400"), "train")[0].data.synthetic_task == "label"


def test_a_captioner_is_compiled_with_the_vocabulary_its_tokenizer_settles(capsys):
    """The trainer's start-up settles a captioner's vocabulary from its tokenizer (config.model.decoder.vocab_size 0:
    the tokenizer's); `vidjax.aot` does the same before building the step (its cell had compiled an empty embedding
    table), says what it settled, and refuses a tokenizer directory it cannot read in the task's words."""
    from vidjax.tasks import captioning

    config = load_config("captioning_charades", "runlocal")
    assert config.model.decoder.vocab_size == 0
    lowered = aot.lower(config, tpu.slice_of(f"cpu:{jax.device_count()}"))
    vocab = captioning.tokenizer_for(lowered.config).vocab_size
    assert lowered.config.model.decoder.vocab_size == vocab > 8
    assert config.model.decoder.vocab_size == 0  # the caller's config is left alone
    assert lowered.setup.abstract_state["params"]["decoder"]["wte"].shape[0] == vocab  # the token embedding table
    assert f"model.decoder.vocab_size 0 -> {vocab}" in capsys.readouterr().err

    published = load_config("captioning_charades")
    published.data.tokenizer = "/nonexistent/gpt2/tokenizer"
    with pytest.raises(ConfigError, match="config.data.tokenizer='/nonexistent/gpt2/tokenizer'.*Point it at"):
        aot.lower(published, tpu.slice_of("v5litepod-1"))

    # The published recipe, whose word-level tokenizer would be built from Charades' training captions (not here),
    # at GPT-2 small's vocabulary: its step's batch is built on the embedded captions (the matrix's cell had failed
    # reading /data/charades for the batch's input spec).
    published = load_config("captioning_charades")
    published.model.decoder.vocab_size = 50257
    lowered = aot.lower(published, tpu.slice_of("v5litepod-1"))
    assert lowered.setup.abstract_state["params"]["decoder"]["wte"].shape[0] == 50257
    assert lowered.args[1]["caption_ids"].shape[0] == published.batch_size


def test_a_model_with_its_video_model_nested_is_described_by_that_model_s_dtype_and_variant():
    """SVT keeps its dtype and variant in its TimeSformer's block (config.model.backbone): the figures say the
    precision the step computes in (its matrix cells had read "float32" for a bfloat16 step)."""
    config = load_config("svt_k400", "runlocal")
    config.model.backbone.dtype = "bfloat16"
    assert "dtype" not in config.model and "variant" not in config.model
    described = aot_command._describe(aot.lower(config, tpu.slice_of(f"cpu:{jax.device_count()}")), 0.0)
    assert described["dtype"] == "bfloat16"
    assert described["variant"] == config.model.backbone.variant != ""


@pytest.mark.parametrize("message, needs, hbm", [
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. 17.50G of 15.75G "
     "hbm required for HLO temporaries (13.25G) exceeds available HBM (12.50G).", 13.25, 12.5),
    ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory in memory "
     "space hbm. Used 15.91G of 15.75G hbm. Exceeded hbm capacity by 164.20M.\n\nTotal hbm usage >= 16.16G:", 15.91,
     15.75)], ids=["temporaries", "used"])
def test_both_of_libtpus_refusals_for_size_are_read_as_does_not_fit(monkeypatch, message, needs, hbm):
    """libtpu refuses a program too large for the chip in two forms; each is a measure of `find_batch`'s line (the
    second, unread, ended VideoMAE-L fine-tune's first settings on v5litepod-8 as errors). Other errors are raised."""
    def refuse(_):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(aot, "_compiled_in_thread", refuse)
    compiled, refused = aot.compile_or_refuse(types.SimpleNamespace(lowered=None))
    assert compiled is None
    assert refused["temp_bytes"] == int(needs * 2**30) and refused["hbm_bytes"] == int(hbm * 2**30)
    message = message.replace("RESOURCE_EXHAUSTED", "INTERNAL")
    with pytest.raises(jax.errors.JaxRuntimeError):
        aot.compile_or_refuse(types.SimpleNamespace(lowered=None))


@pytest.mark.parametrize("allowed", [None, [1, 2, 4, 8, 16, 32, 64, 128, 256]], ids=["any", "divisors"])
def test_the_largest_fitting_batch_from_an_affine_fit_in_four_measures(allowed):
    """`--find_batch`'s search (`largest_fitting`): two measures fit memory as a line in the batch, the third is the
    line's largest fit, the fourth confirms the next does not fit; refusals count as points."""
    measured = []

    def measure(multiple, fixed=1000, per=100, hbm=20_000):
        measured.append(multiple)
        needs = fixed + per * multiple
        return needs, needs <= hbm

    found = aot_command.largest_fitting(measure, 20_000, allowed)
    expected = max(m for m in (allowed or range(1, 1000)) if 1000 + 100 * m <= 20_000)
    assert found == expected and len(measured) <= 4, measured
    assert measured[-1] > found  # the last one showed the next multiple does not fit
    # Memory that jumps past the line (a refusal far above it): a batch that fits, within the most measures.
    measured.clear()
    def jumps(multiple):
        return measure(multiple, per=10) if multiple < 64 else (measured.append(multiple), (10**6, False))[1]

    found = aot_command.largest_fitting(jumps, 20_000, allowed)
    assert 0 < found < 64 and len(measured) <= 8, measured
    if allowed:
        assert found == 32 and 64 in measured  # and with few multiples, the largest, shown by the next
    assert aot_command.largest_fitting(lambda m: (10**6, False), 20_000, allowed) == 0  # not even the first


GIB_ = 2**30
# Per-chip GiB a micro-batch of the matrix's searches measured (docs/tpu_matrix.json), with the multiples they did not
# reach filled in as the curve goes. VideoMAE V2-L/16 on v5litepod-1 with the batch in host memory: libtpu's memory
# flattens near the limit, so each line through the last two measures stops short of the largest that fits (the
# search stopped at 16 with 32 and 64 unmeasured). V2-g/14 on v6e-1: flat up to 4, then a refusal at 1,024 and one
# just over at 128; the search stopped at 4 with 8 to 64 unmeasured.
FLATTENING = {1: 6.31, 2: 7.4, 4: 8.42, 8: 9.68, 16: 10.17, 32: 11.2, 64: 13.0, 128: 15.5, 256: 21.0, 512: 33.0,
              1024: 60.0, 2048: 110.0, 4096: 210.0}
GAP = {1: 23.46, 2: 23.47, 4: 23.48, 8: 23.75, 16: 24.3, 32: 25.4, 64: 27.6, 128: 32.02, 256: 40.0, 512: 58.0,
       1024: 78.9, 2048: 150.0}


@pytest.mark.parametrize("table, hbm, expected", [(FLATTENING, 16, 128), (GAP, 32, 64)], ids=["flattening", "gap"])
def test_the_search_goes_on_until_the_multiple_after_the_largest_fit_does_not_fit(table, hbm, expected):
    """Where memory is not affine near the limit, the line's guesses fall short: the search measures on until the
    multiple after the largest that fits is shown not to (the matrix had cells at a quarter of the micro-batch that
    fits). A search taken up from the measures of an earlier one measures only the rest, to the same answer."""
    measured = []

    def measure(multiple):
        measured.append(multiple)
        return int(table[multiple] * GIB_), table[multiple] <= hbm

    allowed = sorted(table)
    found = aot_command.largest_fitting(measure, hbm * GIB_, allowed)
    assert found == expected and len(measured) <= 8, measured
    after = allowed[allowed.index(expected) + 1]
    assert after in measured and table[after] > hbm  # the boundary shown, not assumed
    earlier = {m: (int(table[m] * GIB_), table[m] <= hbm) for m in measured[:4]}
    again = []
    assert aot_command.largest_fitting(lambda m: again.append(m) or measure(m), hbm * GIB_, allowed,
                                       known=earlier) == expected
    assert again and not set(again) & set(earlier), again


def test_the_kernel_profile_step_takes_a_clip_a_core_without_repeated_sampling():
    """The kernels' profile traces the step at a clip per TensorCore of each batch shard (two on a v5p chip, one on
    v6e) and without repeated sampling: with VideoMAE V2's 4 clips a video a shard would take a whole video's clips
    (the per-video arrays split over the shards), and the profile's time and memory grow with the clips."""
    from vidjax import sharding

    for name, per_shard in (("v5p-128", 2), ("v6e-8", 1)):
        slice_ = tpu.slice_of(name)
        mesh = sharding.create_mesh(tiny().mesh, tpu.topology_devices(slice_))
        shards = slice_.chips
        for samples in (1, 4):
            config = tiny(**{"data.num_samples": samples, "batch_size": shards * 16, "grad_accum_steps": 2})
            small = aot._few_clips_a_shard(config, mesh, slice_.chip)
            assert small.batch_size == shards * per_shard and small.grad_accum_steps == 1
            assert small.data.num_samples == 1


def test_the_docs_model_flops_are_what_vidjax_counts_today():
    """docs/tpu.md's first command and what it printed (issue 72 fault 6: figures left from older code): the command
    line read from the doc, its model FLOPs a chip counted again by `vidjax.flops` (the step traced for the slice, no
    compile) equal the doc's line to the 3 digits it prints, and the doc names the commit it printed at."""
    import re

    text = open(os.path.join(ROOT, "docs", "tpu.md")).read()
    command = re.search(r"```bash\n.*?\n(python -m vidjax\.aot .*?)\n```", text, re.S)[1].replace("\\\n", " ")
    printed = text[text.index("```\nvideomae/"):]
    assert re.search(r"printed, at commit [0-9a-f]{7}", text)
    args = dict(arg.lstrip("-").split("=", 1) for arg in command.split()[3:])
    file, _, arg = args.pop("config").partition(":")
    config = load_config(os.path.basename(file).removesuffix(".py"), arg or None)
    slice_ = tpu.slice_of(args.pop("topology"))
    config.update_from_flattened_dict({key.removeprefix("config."): value for key, value in args.items()})
    per_chip, whole = re.search(r"model FLOPs +([\d.]+) TFLOP per chip a step \(([\d.]+) TFLOP for the slice\)",
                                printed).groups()
    flops = aot.model_flops(config, aot.lower(config, slice_))
    assert f"{flops / slice_.chips / 1e12:.3g}" == per_chip and f"{flops / 1e12:.3g}" == whole


def test_a_cell_whose_kernels_have_no_estimate_says_why_its_time_is_a_floor():
    """A v4 cell: libtpu's static profile does not cover v4, so its kernels are counted at their floors, and the
    cell's "at least" says so."""
    why = "libtpu's static profile does not cover v4 (its DMA latency model is for v5e, v5p, v6e and later)"
    out = {"fits": True, "memory": {"total_bytes": 26 * 2**30}, "global_batch": 2048, "chips": 16,
           "settings": {"grad_accum_steps": 1}, "step_s": 0.387, "step_s_is_floor": True, "mfu": 0.25,
           "clips_per_s": 5298.0, "kernels": {"unknown": 2, "kernels": [
               {"name": "a", "seconds": None, "reason": why}, {"name": "b", "seconds": None, "reason": why}]}}
    assert aot_command.brief(out) == (
        "fits: 26.00 GiB a chip; at least 387 ms a step, MFU at most 25%, at most 5,298 clips/s; 2 kernel(s) counted "
        "at their floors: libtpu's static profile does not cover v4")


def test_a_cell_refused_within_the_chip_s_hbm_says_libtpu_refuses_it_and_in_which_setting():
    """libtpu gives a program less than the chip's HBM (15.75 GiB of a v5e chip's 16), so a refusal's figure can read
    as within it: the cell says libtpu refused it, and the setting (the most frugal) it was refused in."""
    out = {"fits": False, "chips": 1, "global_batch": 1024, "hbm_bytes": 16 * 2**30,
           "smallest": {"micro_batch": 1, "total_bytes": 17182128640, "input_bytes": 0,
                        "settings": {"batch_memory": "host", "data.pixels": "host", "model.remat": "full"}}}
    assert aot_command.brief(out) == (
        "does not fit: 1 clip a chip needs 16.00 GiB of 16.00 GiB with batch_memory=host, pixels=host, remat=full, "
        "which libtpu refuses: it keeps part of the chip's HBM for itself")
    out["smallest"].update(total_bytes=int(21.39 * 2**30), settings={})
    assert aot_command.brief(out) == "does not fit: 1 clip a chip needs 21.39 GiB of 16.00 GiB"


def test_a_cell_where_no_micro_batch_fits_names_the_global_batch_it_holds():
    """With accumulation the step takes the whole global batch and cuts its micro-batches inside: a chip holds all of
    it (`aot.input_bytes`, its shard of each batch array), which a cell where not even one clip fits names."""
    config = load_config("videomae_k400", "runlocal")
    config.data.pixels = "host"
    config.grad_accum_steps = 4
    lowered = aot.lower(config, tpu.slice_of("cpu:2"))
    batch = lowered.args[-1]
    video = batch["video"]
    assert video.shape[0] == config.batch_size  # the global batch, not a micro-batch
    per_chip = sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(batch)) // 2
    assert aot.input_bytes(lowered) == per_chip
    out = {"fits": False, "chips": 1, "global_batch": 4096, "hbm_bytes": 16 * 2**30,
           "smallest": {"micro_batch": 1, "total_bytes": int(21.44 * 2**30), "input_bytes": int(9.19 * 2**30)}}
    assert aot_command.brief(out) == (
        "does not fit: 1 clip a chip needs 21.44 GiB of 16.00 GiB, 9.19 GiB of it the step's input: the whole global "
        "batch of 4,096 clips, which the step holds while it runs its micro-batches (--config.batch_memory=host "
        "keeps it in host memory)")
    # Kept in host memory (config.batch_memory="host"), the batch is folded into its micro-batches there, and a chip
    # holds none of it as an argument: it copies one micro-batch at a time.
    config.batch_memory = "host"
    lowered = aot.lower(config, tpu.slice_of("cpu:2"))
    batch = lowered.args[-1]
    # Each clip's bytes packed 4 to a word in whole TPU tiles (8 x 128 words): libtpu slices a micro-batch of them
    # out of host memory in place.
    assert batch["video"].rows.shape == (4, config.batch_size // 4, -(-math.prod(video.shape[1:]) // 4096) * 8, 128)
    assert (batch["video"].row_shape, batch["video"].dtype) == (video.shape[1:], "uint8")
    assert {leaf.sharding.memory_kind for leaf in jax.tree.leaves(batch)} == {"pinned_host"}
    assert aot.input_bytes(lowered) == 0


def test_a_micro_batch_search_taken_up_compiles_only_the_micro_batches_it_had_not_measured(monkeypatch):
    """`find_batch(known=)` (the matrix's `--confirm`): the micro-batches an earlier search measured are points of
    the line as they were, keyed as `measured` is (the micro-batch over the slice's batch shards); only the rest are
    compiled. Where the largest that fits is a known one, no step is returned: its figures are the earlier search's."""
    config = tiny(**{"batch_size": 8, "data.pixels": "host", "memory_limit_gb": 64.0})
    slice_ = tpu.slice_of("cpu:2")
    lowered = []
    real_lower = aot.lower

    def lower(trial, *args):
        lowered.append(trial.batch_size // trial.grad_accum_steps)
        return real_lower(trial, *args)

    monkeypatch.setattr(aot, "lower", lower)
    measured: dict = {}
    micro, found = aot_command.find_batch(config, slice_, "train", 0, log=lambda line: None, accumulate=True,
                                          known={2: (2**30, True)}, measured=measured)
    assert micro == 8 and found is not None and config.batch_size % micro == 0  # the whole batch fits 64 GiB
    assert lowered == [8] and set(measured) == {8}  # 2 (a clip a shard) known; then the whole batch, the last
    lowered.clear()
    micro, found = aot_command.find_batch(config, slice_, "train", 0, log=lambda line: None, accumulate=True,
                                          known={2: (2**30, True), 4: (2**31, True), 8: (2**40, False)})
    assert (micro, found, lowered) == (4, None, [])  # shown before: 4 fits and 8 does not


def test_a_loss_that_couples_its_batch_is_refused_accumulation_by_aot_as_by_the_trainer():
    """A contrastive loss contrasts each video with every caption of its batch: micro-batches would be another
    recipe, so the trainer refuses config.grad_accum_steps for it, and `vidjax.aot` refuses to compile such a step
    (in the same words) or to search for a micro-batch: a compiled step the trainer would not run is no answer."""
    config = load_config("videoprism", "recipe=contrastive,runlocal,variant=Mu/8")
    config.grad_accum_steps = 2
    said = "config.grad_accum_steps=2: config.task='contrastive' does not accumulate (it contrasts each video"
    assert any(problem.startswith(said) for problem in train.config_problems(config))
    with pytest.raises(ConfigError, match=r"^" + re.escape(said)):
        aot.lower(config, tpu.slice_of("cpu:2"))
    config.grad_accum_steps = 1
    with pytest.raises(ConfigError, match="--accumulate: config.task='contrastive' does not accumulate .*"
                                          "--find_batch alone gives the largest batch that fits at once"):
        aot_command.find_batch(config, tpu.slice_of("v5litepod-1"), "train", 0, accumulate=True)
    # Tasks whose gradients are the mean of their examples' accumulate.
    config = tiny(grad_accum_steps=2)
    assert not any("does not accumulate" in problem for problem in train.config_problems(config))


def test_the_matrix_gives_a_contrastive_recipe_its_batch_at_once_or_the_largest_that_fits(monkeypatch):
    """A matrix cell on a chip for a recipe that does not accumulate: the most frugal setting searched first, up to
    the recipe's batch (never compiling a batch far beyond the chip); where the recipe's batch does not fit, the cell
    says why no accumulation, with the largest batch that fits at once and what the batch after it needed; where it
    fits, the ladder's first setting that fits at the recipe's batch."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    import tpu_matrix

    def flatten(tree, prefix=""):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    def rematerialised(config) -> bool:
        return any(key.endswith("remat") and value == "full" for key, value in flatten(config.to_dict()))

    base = load_config("videoprism", "recipe=contrastive,runlocal,variant=Mu/8")
    base.data.pixels, base.batch_size = "host", 512
    largest = {"found": 64}
    at_recipe, searched = [], []

    def figures(config, slice_, step, compiled=None):
        if config is None:  # the search's step
            return {"fits": True, "memory": {"total_bytes": 15 * 2**30}, "global_batch": compiled, "chips": 1,
                    "settings": {}, "step_s": 2.0, "mfu": 0.2, "clips_per_s": 32.0, "train_hours": 9.0}
        at_recipe.append((config.batch_size, rematerialised(config)))
        return {"fits": True, "memory": {"total_bytes": 12 * 2**30}, "global_batch": config.batch_size}

    def find_batch(config, slice_, step, examples, log=print, accumulate=False, measured=None, up_to=0, **_):
        assert not accumulate and up_to == base.batch_size
        searched.append(rematerialised(config))
        measured.update({1: 2**30, 4: 2 * 2**30, largest["found"]: 15 * 2**30})
        if largest["found"] < up_to:
            measured[largest["found"] + 8] = 17 * 2**30
        return largest["found"], largest["found"]

    monkeypatch.setattr(aot_command, "figures", figures)
    monkeypatch.setattr(aot_command, "find_batch", find_batch)
    slice_ = tpu.slice_of("v5litepod-1")
    coupled = "it contrasts each video with every caption of its batch"
    cell = tpu_matrix.whole_batch_cell(base, slice_, "train", {}, coupled)
    assert searched == [True] and at_recipe == []  # the most frugal setting (remat) searched; nothing else compiled
    assert not cell["fits"] and cell["largest"]["global_batch"] == 64 and "train_hours" not in cell["largest"]
    assert aot_command.brief(cell) == (
        f"does not fit: the recipe's {base.batch_size} clips at once do not (72 clips already need 17.00 GiB of "
        f"16.00 GiB a chip), and its loss does not accumulate ({coupled}); the largest batch that fits at once, 64 "
        f"clips (another recipe): 15.00 GiB a chip; 2,000 ms a step, MFU 20%, 32 clips/s")
    assert "does not accumulate" in tpu_matrix.table({"videoprism_b_clip@v5litepod-1": cell})
    cell["refused"]["total_bytes"] = int(15.99 * 2**30)  # refused within the chip's HBM: libtpu keeps some
    assert "(72 clips already need 15.99 GiB of 16.00 GiB a chip, which libtpu refuses: it keeps part of the HBM " \
           "for itself)" in aot_command.brief(cell)
    # Where the recipe's batch fits the most frugal setting, the ladder's first setting that fits it is the cell's.
    largest["found"] = base.batch_size
    searched.clear()
    cell = tpu_matrix.whole_batch_cell(base, slice_, "train", {}, coupled)
    assert searched == [True] and at_recipe == [(base.batch_size, False)]
    assert cell["fits"] and cell["settings"] == {} and cell["global_batch"] == base.batch_size


def test_a_search_up_to_the_recipe_s_batch_never_compiles_a_larger_one():
    """`find_batch(up_to=)` (the matrix's cells for a recipe that does not accumulate): the largest global batch that
    fits, at most the recipe's; where the recipe's fits, that is the answer, and nothing above it is compiled."""
    config = tiny(**{"batch_size": 8, "data.pixels": "host", "memory_limit_gb": 64.0})
    measured: dict = {}
    batch, found = aot_command.find_batch(config, tpu.slice_of("cpu:2"), "train", 0, log=lambda line: None,
                                          measured=measured, up_to=8)
    assert batch == 8 and found is not None and max(measured) == 8
