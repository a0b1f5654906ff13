"""Bad checkpoints, one `error:` line each (issue 48): damaged, cut short, empty and NaN-holding files for every
`python -m vidjax.convert --from_*` converter (exit status 2, nothing written); a file of another family named with
the flag that converts it; non-finite weights refused at load, so `predict` never prints NaN; and the loaders'
messages for a missing path, a file where a folder is expected and a folder where a file is expected.

The official-format files are the parity fixtures' (tiny, random weights); damaged copies are written here, without
torch (`test_svt_convert.write_torch_zip`).
"""

import pathlib
import re
import shutil
import zipfile

import numpy as np
import pytest
from test_svt_convert import write_torch_zip

from vidjax import pretrained
from vidjax.commands import convert as convert_command
from vidjax.commands import predict
from vidjax.convert import common, read
from vidjax.convert.common import ConversionError
from vidjax.pretrained import hub

PARITY = pathlib.Path(__file__).parent / "fixtures" / "parity"
FILES = {  # flag -> (an official file of its family, the arguments it needs to convert)
    "videomae": (PARITY / "videomae_v2_distilled" / "source" / "checkpoint.pth", ["--num_heads", "4"]),
    "videomamba": (PARITY / "videomamba_cls" / "source" / "checkpoint.pth", []),
    "svt": (PARITY / "svt_backbone" / "source" / "release.pth", ["--num_heads", "2"]),
    "hf": (PARITY / "videomae_model" / "source", []),  # a save_pretrained folder: config.json, model.safetensors
}
NAMES = {"videomae": "a VideoMAE", "videomamba": "a VideoMamba", "svt": "an SVT (TimeSformer)",
         "hf": "a Hugging Face transformers"}


def run_convert(capsys, flag: str, source, out: pathlib.Path, extra=()) -> str:
    """`python -m vidjax.convert --from_FLAG SOURCE --out OUT`, in this process: its one error line (checked: exit
    status 2, one line, no traceback, nothing at OUT)."""
    capsys.readouterr()
    status = convert_command.main([f"--from_{flag}", str(source), "--out", str(out), *extra])
    captured = capsys.readouterr()
    err = captured.err
    assert status == 2, (captured.out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err.strip()


def _plain(obj):
    """What read_torch_zip gave, with its OrderedDict stand-ins as dicts (`write_torch_zip` pickles plain values)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _first_weight(tensors: dict) -> tuple:
    """The keys leading to the first float tensor with more than one value of a (nested) state dict."""
    for key, value in tensors.items():
        if isinstance(value, dict):
            found = _first_weight(value)
            if found:
                return (key, *found)
        elif isinstance(value, np.ndarray) and value.dtype == np.float32 and value.size > 1:
            return (key,)
    return ()


def _set_nan(tensors: dict, keys: tuple) -> None:
    """NaN and infinity written into two values of the tensor that `keys` lead to."""
    *parents, leaf = keys
    for key in parents:
        tensors = tensors[key]
    tensors[leaf] = tensors[leaf].copy()
    tensors[leaf].flat[[0, 3]] = [np.nan, np.inf]


# --------------------------------------------------------------------------------------------- damaged files

def _damage_pth(src: pathlib.Path, dst: pathlib.Path, kind: str) -> str:
    """A copy of torch zip `src` at `dst` damaged as `kind` says; returns what the error must say."""
    raw = bytearray(src.read_bytes())
    if kind == "bad CRC":  # bytes overwritten inside the first tensor's storage: the zip's CRC-32 no longer matches
        with zipfile.ZipFile(src) as archive:
            entry = next(n for n in archive.namelist() if "/data/" in n)
            data = archive.read(entry)
        start = raw.find(data)
        raw[start:start + 8] = b"\xff" * 8
        dst.write_bytes(raw)
        return rf"{dst} is damaged: Bad CRC-32 for file '.*/data/\d+' .*download or copy it again"
    if kind == "damaged pickle":
        with zipfile.ZipFile(src) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        start = raw.find(data) + len(data) // 2
        raw[start:start + 8] = b"\x00" * 8
        dst.write_bytes(raw)
        return rf"{dst} is damaged: Bad CRC-32 for file '.*data.pkl'"
    if kind == "truncated":
        dst.write_bytes(raw[: len(raw) // 2])
        return rf"{dst} is cut short \(truncated at {len(raw) // 2} bytes\): .*zip directory, is missing"
    if kind == "empty":
        dst.write_bytes(b"")
        return rf"{dst} is empty \(0 bytes\); download or copy it again"
    if kind == "legacy format":
        dst.write_bytes(b"\x80\x02\x8a\x0alegacy torch pickle")
        return rf"{dst} is in torch's legacy \(pre-1.6\) format.*torch.save\(torch.load\(FILE\), FILE\)"
    assert kind == "non-finite", kind
    state = _plain(common.read_torch_zip(src))
    keys = _first_weight(state)
    _set_nan(state, keys)
    write_torch_zip(dst, state)
    # Named as in the file; the VideoMAE and SVT readers drop a "model." / "module." nesting first.
    shown = r"(model\.|module\.)?" + re.escape(".".join(keys[1:] if keys[0] in ("model", "module") else keys))
    return rf"{dst} has non-finite weights \(NaN or infinity\) in 1 of \d+ tensors: {shown} \(2 of \d+ values\)"


def _damage_safetensors(src_dir: pathlib.Path, dst_dir: pathlib.Path, kind: str) -> str:
    shutil.copytree(src_dir, dst_dir)
    weights = dst_dir / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    if kind == "truncated":
        weights.write_bytes(raw[: len(raw) // 2])
        return rf"{weights} is cut short \(truncated\): tensor '.*' ends at byte \d+ of \d+"
    if kind == "empty":
        weights.write_bytes(b"")
        return rf"{weights} is empty \(0 bytes\)"
    if kind == "header cut":
        weights.write_bytes(raw[:20])
        return rf"{weights} is cut short: its header alone is \d+ bytes long, the file 20"
    assert kind == "non-finite", kind
    # NaN bytes written over the data of the last tensors (what a bad disk or a broken copy leaves): no checksum.
    raw[-4 * 40:] = np.full(40, np.nan, np.float32).tobytes()
    weights.write_bytes(raw)
    return rf"{weights} has non-finite weights \(NaN or infinity\) in \d+ of \d+ tensors: .*values\)"


PTH_DAMAGE = ("bad CRC", "damaged pickle", "truncated", "empty", "legacy format", "non-finite")
CASES = [(flag, kind) for flag in ("videomae", "videomamba", "svt") for kind in PTH_DAMAGE]
CASES += [("hf", kind) for kind in ("truncated", "empty", "header cut", "non-finite")]


@pytest.mark.parametrize("flag,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_damage(flag, kind, tmp_path, capsys):
    source, extra = FILES[flag]
    if flag == "hf":
        bad = tmp_path / "bad"
        expected = _damage_safetensors(source, bad, kind)
    else:
        bad = tmp_path / "bad.pth"
        expected = _damage_pth(source, bad, kind)
    err = run_convert(capsys, flag, bad, tmp_path / "out", extra)
    assert re.search(expected, err), err


def test_an_undamaged_copy_converts(tmp_path, capsys):
    """The damage above is what fails: the same files, rewritten without it, convert."""
    state = _plain(common.read_torch_zip(FILES["videomamba"][0]))
    write_torch_zip(tmp_path / "same.pth", state)
    assert convert_command.main(["--from_videomamba", str(tmp_path / "same.pth"), "--out", str(tmp_path / "ok")]) == 0
    assert "Wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- a file of another family

FAMILY_CASES = [(given, flag) for given in FILES for flag in FILES if given != flag]


@pytest.mark.parametrize("given,flag", FAMILY_CASES, ids=[f"{g}-to-from_{f}" for g, f in FAMILY_CASES])
def test_a_file_of_another_family_names_its_flag(given, flag, tmp_path, capsys):
    source = FILES[given][0]
    if given == "hf":
        source = source / "model.safetensors"
    err = run_convert(capsys, flag, source, tmp_path / "out")
    if flag == "hf":  # a file where a folder is expected
        expected = f"error: {source} is {NAMES[given]} checkpoint file; convert it with --from_{given} {source}."
    elif given == "hf":
        expected = (f"error: {source} is a Hugging Face transformers checkpoint, not {NAMES[flag]} one; convert its "
                    f"folder with --from_hf {source.parent}.")
    else:
        expected = (f"error: {source} is {NAMES[given]} checkpoint, not {NAMES[flag]} one; convert it with "
                    f"--from_{given}.")
    assert err == expected


def test_a_weights_file_given_to_from_hf_names_its_folder(tmp_path, capsys):
    weights = FILES["hf"][0] / "model.safetensors"
    err = run_convert(capsys, "hf", weights, tmp_path / "out")
    assert err == (f"error: {weights} is a file; --from_hf takes the folder `save_pretrained` wrote: convert it "
                   f"with --from_hf {weights.parent}.")


def test_file_kind_is_the_shared_rule():
    from vidjax.convert import file_kind

    assert [file_kind(FILES[k][0]) for k in ("videomae", "videomamba", "svt")] == ["videomae", "videomamba", "svt"]
    assert file_kind(FILES["hf"][0] / "model.safetensors") is None  # a save_pretrained folder's: --from_hf


# ------------------------------------------------------------------------------ paths: missing, file, folder

@pytest.mark.parametrize("flag", ["videomae", "videomamba", "svt"])
def test_a_folder_where_a_file_is_expected_is_called_a_folder(flag, tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(FILES[flag][0], folder / "model.pth")
    err = run_convert(capsys, flag, folder, tmp_path / "out")
    assert err == (f"error: {folder} is a folder, not a checkpoint file; --from_{flag} takes one file: give one of "
                   f"the checkpoint files in it: model.pth."), err
    err = run_convert(capsys, flag, FILES["hf"][0], tmp_path / "out")
    assert f"{FILES['hf'][0]} is a folder, not a checkpoint file; --from_{flag} takes one file: it holds a Hugging " \
           f"Face save_pretrained model: convert the folder with --from_hf {FILES['hf'][0]}." in err, err
    err = run_convert(capsys, flag, tmp_path / "nowhere.pth", tmp_path / "out")
    assert err.startswith(f"error: Checkpoint file {tmp_path / 'nowhere.pth'} does not exist"), err


def test_checkpoint_paths_say_what_they_are(tmp_path, capsys):
    video = str(tmp_path / "clip.mp4")  # never read: the checkpoint fails first
    cases = {
        tmp_path / "nowhere": f"{tmp_path / 'nowhere'} does not exist. A checkpoint is a folder: one `python -m "
                              f"vidjax.convert` wrote (vidjax.json + params/), a training workdir",
        FILES["svt"][0]: f"{FILES['svt'][0]} is a file, not a checkpoint folder; convert it once with `python -m "
                         f"vidjax.convert --from_svt {FILES['svt'][0]} --out NEW_DIR` and load NEW_DIR.",
        FILES["hf"][0] / "model.safetensors": f"is a file, not a checkpoint folder; convert it once with `python -m "
                                              f"vidjax.convert --from_hf {FILES['hf'][0]} --out NEW_DIR`",
        tmp_path: f"{tmp_path} is not a converted checkpoint (no vidjax.json)",  # a folder of something else
    }
    for path, expected in cases.items():
        assert predict.main([f"--checkpoint={path}", video]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --checkpoint={path}: ") and err.count("\n") == 1, err
        assert expected in err, err


def test_a_hub_repository_without_checkpoints_says_so(tmp_path):
    name = hub.parse("me/notes")
    with pytest.raises(hub.HubError) as error:
        hub._download(None, name, "0" * 40, ["README.md", ".gitattributes"])
    message = str(error.value)
    assert message.startswith("me/notes holds nothing vidjax loads at revision main: no save_pretrained model "
                              "(config.json) and no checkpoint file (.pth, .pt, .bin, .safetensors, .ckpt); its "
                              "files: README.md, .gitattributes."), message
    assert "load one as" not in message
    with pytest.raises(hub.HubError, match=r"its checkpoint files: k400/m.pth: load one as me/notes/k400/m.pth\."):
        hub._download(None, name, "0" * 40, ["README.md", "k400/m.pth"])


# ------------------------------------------------------------------------- non-finite weights at load time

@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """A converted VideoMamba checkpoint whose parameters hold NaN (as a diverged run or a bad disk leaves them)."""
    converted = read("videomamba", FILES["videomamba"][0])
    name = sorted(converted.params)[0]
    converted.params[name] = converted.params[name].copy()
    converted.params[name].flat[0] = np.nan
    out = tmp_path_factory.mktemp("nan") / "ckpt"
    common.write_converted(converted, out)
    return out, name


def test_load_refuses_non_finite_parameters(nan_checkpoint):
    out, name = nan_checkpoint
    with pytest.raises(ConversionError, match=rf"{out} has non-finite weights \(NaN or infinity\) in 1 of \d+ "
                                              rf"parameters: {name} \(1 of \d+ values\)"):
        pretrained.load(out)


def test_predict_exits_2_instead_of_printing_nan(nan_checkpoint, tmp_path, capsys):
    out, name = nan_checkpoint
    assert predict.main([f"--checkpoint={out}", str(tmp_path / "clip.mp4")]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower(), captured.out
    assert captured.err.startswith(f"error: --checkpoint={out}: {out} has non-finite weights") and name in captured.err
    assert captured.err.count("\n") == 1, captured.err


def test_the_finiteness_check_is_one_cheap_pass():
    """np.isfinite over every float array, once per load: ViT-B's 87M parameters take about 40 ms (measured on 2
    cores); a quarter of that here, with a loose bound for a busy machine."""
    import time

    params = {f"blocks/{i}": np.ones((250_000,), np.float32) for i in range(87)}
    start = time.perf_counter()
    assert common.nonfinite(params) == []
    assert time.perf_counter() - start < 1.0
    params["blocks/40"] = params["blocks/40"].copy()
    params["blocks/40"][-1] = np.inf
    assert common.nonfinite(params) == ["blocks/40"]
    assert common.nonfinite({"index": np.arange(3), "mask": np.array([True])}) == []  # only floats are checked
