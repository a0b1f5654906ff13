"""scripts/bench_accelerator.sh --quick: the whole benchmark matrix end to end at toy sizes, on the CPU, without torch
(vidjax/bench_matrix.py)."""

import json
import os
import pathlib
import subprocess

from helpers import COMMAND_XLA_FLAGS

from vidjax import bench_matrix

ROOT = pathlib.Path(__file__).parent.parent


def test_quick_matrix_has_every_row(tmp_path):
    out = tmp_path / "bench" / "quick.json"
    env = dict(os.environ, XLA_FLAGS=COMMAND_XLA_FLAGS, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_accelerator.sh"), "--quick", f"--out={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    expected = [(f.model, mode, dtype) for f in bench_matrix.FAMILIES for mode in f.modes
                for dtype in bench_matrix.DTYPES]
    assert [(r["model"], r["mode"], r["dtype"]) for r in result["rows"]] == expected
    assert len(expected) == 16  # VideoMAE pre-train + fine-tune; the three others infer + fine-tune; two dtypes
    assert result["peak_bf16_flops"] is None  # a CPU: no peak, so no MFU
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["seconds_per_step"] > 0 and row["clips_per_s"] > 0 and row["flops_per_step"] > 0, row
        assert row["mfu"] is None, row
        if row["model"] != "videomamba":  # the attention models say which attention ran
            assert row["attention"] == "heads_major", row
        if not bench_matrix.torch_available():
            assert row["torch_note"].startswith("torch not installed") and "torch" not in row, row
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(expected) and table == result["table"].splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    for line, (model, mode, dtype) in zip(table[2:], expected, strict=True):
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        assert (cells["model"], cells["mode"], cells["dtype"]) == (model, mode, dtype)
        assert float(cells["s/step"]) > 0 and cells["MFU"] == "", line


def test_head_dims_of_the_matrix_models():
    """The head size that decides cuDNN against XLA attention on GPU (ops.attention.resolve); None without
    attention."""
    from vidjax import bench

    config = bench.bench_config("videomae", "B/16", 16, 224, 8, "finetune", "bfloat16", num_classes=400)
    assert bench_matrix.head_dim(config.model) == 64
    vivit = bench.bench_config("vivit", "B/16x2", 16, 224, 8, "infer", "bfloat16", num_classes=400)
    assert bench_matrix.head_dim(vivit.model) == 64
    mamba = bench.bench_config("videomamba", "S/16", 16, 224, 8, "infer", "bfloat16", num_classes=400)
    assert bench_matrix.head_dim(mamba.model) is None  # no attention


def test_bad_families_modes_and_dtypes_are_refused_with_the_choices(capsys):
    import pytest

    for flag, choices in [("--families=videomae,vit", "videomae, timesformer"), ("--modes=train", "pretrain, finetune"),
                          ("--dtypes=float16", "float32, bfloat16")]:
        with pytest.raises(SystemExit) as exit_info:
            bench_matrix.main([flag, "--quick"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and choices in err, err
