"""scripts/bench_accelerator.sh --quick: the whole benchmark matrix end to end at toy sizes, on the CPU, without torch
(vidjax/bench/matrix.py), with the input bench it runs first on this host for the host cores / chip column."""

import json
import os
import pathlib
import subprocess

import pytest
from helpers import COMMAND_XLA_FLAGS, script_env

from vidjax.bench import matrix

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick` run of the script, shared: (the process, the matrix JSON's path)."""
    tmp_path = tmp_path_factory.mktemp("quick")
    out = tmp_path / "bench" / "quick.json"
    # TMPDIR: the input bench's generated videos stay in this test's folder.
    env = script_env(XLA_FLAGS=COMMAND_XLA_FLAGS, JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path))
    env.pop("INPUT_BENCH_FLAGS", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_accelerator.sh"), "--quick", f"--out={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, out


def _table(stdout: str) -> list[dict[str, str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


@pytest.mark.slow
def test_quick_matrix_has_every_row(quick_run):
    proc, out = quick_run
    result = json.loads(out.read_text())
    expected = [(f.model, mode, dtype) for f in matrix.families() for mode in f.modes
                for dtype in matrix.DTYPES]
    assert [(r["model"], r["mode"], r["dtype"]) for r in result["rows"]] == expected
    # VideoMAE pre-train (V1 and V2 masking) + fine-tune; the three others infer + fine-tune; two dtypes
    assert len(expected) == 18 and ("videomae", "pretrain_v2", "bfloat16") in expected
    assert result["peak_bf16_flops"] is None  # a CPU: no peak, so no MFU
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["seconds_per_step"] > 0 and row["clips_per_s"] > 0 and row["flops_per_step"] > 0, row
        assert row["mfu"] is None, row
        if row["model"] != "videomamba":  # the attention models say which attention ran
            assert row["attention"] == "heads_major", row
        if not matrix.torch_available():
            assert row["torch_note"].startswith("torch not installed") and "torch" not in row, row
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(expected) and table == result["table"].splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    for line, (model, mode, dtype) in zip(table[2:], expected, strict=True):
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        assert (cells["model"], cells["mode"], cells["dtype"]) == (model, mode, dtype)
        assert float(cells["s/step"]) > 0 and cells["MFU"] == "", line


@pytest.mark.slow
def test_quick_matrix_prints_host_cores_per_chip_from_this_hosts_input_bench(quick_run):
    """The column is each row's clips/s per device over the clips/s per core of the data-bench JSON the script
    wrote next to --out, measured on this host, for one and four clips per decoded video."""
    proc, out = quick_run
    result = json.loads(out.read_text())
    input_file = out.parent / "quick.input.json"
    measured = json.loads(input_file.read_text())
    assert measured["cpus"] == len(os.sched_getaffinity(0)) and measured["recipe"]["masks"] is True
    per_core = {str(r["num_samples"]): r["clips_per_s_per_core"] for r in measured["rows"] if r["loader"] == "vidjax"}
    assert sorted(per_core) == ["1", "4"] and all(v > 0 for v in per_core.values()), measured
    summary = result["input_bench"]
    assert summary["files"] == [str(input_file)]
    assert summary["hosts"] == [{"file": str(input_file), "cpus": measured["cpus"], "platform": "cpu",
                                 "devices": measured["devices"]}]
    assert {k: b["clips_per_s_per_core"] for k, b in summary["per_core"].items()} == per_core
    assert summary["note"] in proc.stdout and "a check of the arithmetic" in summary["note"]  # 4x32 rows, 16x224 input
    for row, cells in zip(result["rows"], _table(proc.stdout), strict=True):
        expected = {k: row["clips_per_s"] / row["devices"] / v for k, v in per_core.items()}
        assert row["input_cores_per_chip"] == pytest.approx(expected, rel=1e-12), row
        printed = dict(part.rstrip(")").split(" (k=")[::-1] for part in cells["host cores / chip"].split(" / "))
        assert {k: float(v) for k, v in printed.items()} == pytest.approx(expected, rel=5e-3), cells


@pytest.mark.slow
def test_host_cores_per_chip_takes_the_best_worker_count_and_prints_a_dash_without_one(quick_run, tmp_path):
    _, out = quick_run
    measured = json.loads((out.parent / "quick.input.json").read_text())
    more_workers = json.loads(json.dumps(measured))
    for r in more_workers["rows"]:  # the same figures at another worker count, k=1's doubled: k=1 takes it
        r["workers"] += 2
        r["clips_per_s_per_core"] *= 2 if r["num_samples"] == 1 else 0.5
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, data in zip(files, (measured, more_workers), strict=True):
        path.write_text(json.dumps(data))
    summary = matrix.load_input_bench([str(p) for p in files])
    base = {r["num_samples"]: r for r in measured["rows"] if r["loader"] == "vidjax"}
    best = {k: (b["workers"], b["file"], b["clips_per_s_per_core"]) for k, b in summary["per_core"].items()}
    assert best == {"1": (base[1]["workers"] + 2, str(files[1]), 2 * base[1]["clips_per_s_per_core"]),
                    "4": (base[4]["workers"], str(files[0]), base[4]["clips_per_s_per_core"])}
    row = json.loads(out.read_text())["rows"][0]
    assert matrix.input_cores_per_chip(row, None) is None
    assert matrix.markdown_table([dict(row, input_cores_per_chip=None)]).splitlines()[2].count("| - |") == 1


def test_an_input_bench_file_that_is_not_the_data_benchs_json_is_refused(tmp_path, capsys):
    """Before jax starts, as a bad command line (status 2), naming the file, what it is and the command to run."""
    files = {"text.json": ("not json", "is not JSON"),
             "decoders.json": (json.dumps({"clips_per_s": {"seek": {"2": 1.0}}, "cpus": 2}), "decoder comparison"),
             "other.json": (json.dumps({"rows": [{"model": "videomae"}]}), "not the data bench's JSON"),
             "decord.json": (json.dumps({"rows": [{"loader": "decord", "num_samples": 1, "workers": 2}], "recipe": {},
                                         "cpus": 2, "platform": "cpu"}), "no rows of the vidjax loader")}
    for name, (text, why) in dict(files, **{"missing.json": (None, "cannot be read")}).items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            matrix.main(["--quick", f"--input_bench={tmp_path / name}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"--input_bench={tmp_path / name}" in err and why in err and "python -m vidjax.data.bench" in err, err


def test_head_dims_of_the_matrix_models():
    """The head size that decides cuDNN against XLA attention on GPU (ops.attention.resolve); None without
    attention."""
    from vidjax.bench import step

    config = step.bench_config("videomae", "B/16", 16, 224, 8, "finetune", "bfloat16", num_classes=400)
    assert matrix.head_dim(config.model) == 64
    vivit = step.bench_config("vivit", "B/16x2", 16, 224, 8, "infer", "bfloat16", num_classes=400)
    assert matrix.head_dim(vivit.model) == 64
    mamba = step.bench_config("videomamba", "S/16", 16, 224, 8, "infer", "bfloat16", num_classes=400)
    assert matrix.head_dim(mamba.model) is None  # no attention


def test_bad_families_modes_and_dtypes_are_refused_with_the_choices(capsys):
    for flag, choices in [("--families=videomae,vit", "videomae, timesformer"), ("--modes=train", "pretrain, finetune"),
                          ("--dtypes=float16", "float32, bfloat16")]:
        with pytest.raises(SystemExit) as exit_info:
            matrix.main([flag, "--quick"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and choices in err, err
