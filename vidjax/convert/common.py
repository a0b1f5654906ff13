"""Pieces shared by the checkpoint converters: reading tensors without torch, checking and writing the result.

A converter reads named tensors from a published checkpoint (`TensorSource`), maps each to a vidjax parameter in
vidjax's layout, and returns a `Converted`. `write_converted` checks the parameters against the model its config
builds (names and shapes) and writes an orbax checkpoint plus `vidjax.json` atomically: on any failure nothing is
left at the destination.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import ml_dtypes
import numpy as np

from vidjax.models import ParamKeys, get_model

logger = logging.getLogger(__name__)

FORMAT = "vidjax-pretrained/1"
META_FILE = "vidjax.json"
PARAMS_DIR = "params"


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: unsupported, incomplete or inconsistent. The message says which."""


_REFETCH = "download or copy it again"  # what to do about a file that is damaged, cut short or empty


# ----------------------------------------------------------------------------------------------- reading tensors

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file (the format is an 8-byte header length, a JSON header, then the data)."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise ConversionError(f"{path} is empty (0 bytes); {_REFETCH}.")
    if len(raw) < 8:
        raise ConversionError(f"{path} is cut short: only {len(raw)} bytes, not even a safetensors header; "
                              f"{_REFETCH}.")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if raw[8:9] == b"{" and 8 + header_len > len(raw):
        raise ConversionError(f"{path} is cut short: its header alone is {header_len} bytes long, the file "
                              f"{len(raw)}; {_REFETCH}.")
    try:
        header = json.loads(raw[8:8 + header_len])
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not a readable safetensors file: bad header ({e}).") from e
    data = memoryview(raw)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which vidjax cannot read.")
        start, end = info["data_offsets"]
        if end > len(data):
            raise ConversionError(f"{path} is cut short (truncated): tensor {name!r} ends at byte {end} of "
                                  f"{len(data)}; {_REFETCH}.")
        values = np.frombuffer(data[start:end], dtype=dtype)
        if values.size != int(np.prod(info["shape"])):
            raise ConversionError(f"{path} is damaged: tensor {name!r} has {values.size} values for shape "
                                  f"{tuple(info['shape'])}.")
        tensors[name] = values.reshape(info["shape"])
    return tensors


_TORCH_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Opaque:
    """Stands in for any non-tensor object in a torch checkpoint (argparse args, optimizer classes, ...)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()


class _OrderedDict(dict):
    """OrderedDict stand-in that accepts the attributes torch pickles onto state dicts (`_metadata`)."""


def _rebuild_tensor(storage, offset, size, stride, *args):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *args):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch zip checkpoint into numpy without importing torch, and without running its code."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module.startswith("torch"):
            if name in _TORCH_STORAGES:
                return _TORCH_STORAGES[name]
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_tensor_v3"):
                return _rebuild_tensor
            if name == "_rebuild_parameter":
                return _rebuild_parameter
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict", "slice"):
            return getattr(builtins, name)
        return _Opaque

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise ConversionError(f"Unexpected persistent id {kind!r} in torch checkpoint.")
        dtype = storage_type if isinstance(storage_type, type) and storage_type in _TORCH_STORAGES.values() else None
        if dtype is None:
            raise ConversionError(f"Torch storage of type {storage_type!r} is not supported.")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=dtype)
        return self.storages[key]


def _materialise(obj):
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, size, stride = obj
        if any(n < 0 for n in size) or any(st < 0 for st in stride) or offset < 0 or (
                all(size) and offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) >= len(storage)):
            raise ConversionError(f"A tensor of shape {tuple(size)} lies outside its storage of {len(storage)} "
                                  f"elements: the checkpoint is damaged.")
        if not size:
            return np.array(storage[offset])
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                               strides=[s * storage.itemsize for s in stride])
        return np.array(view)
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


_ZIP_MAGIC = b"PK\x03\x04"


def _not_a_zip(path: str | os.PathLike, error: Exception) -> ConversionError:
    """Why a checkpoint that zipfile cannot open is unreadable, from its size and first bytes: empty, cut short (a
    zip whose directory at the end is missing), torch's legacy pickle format, or something else."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        return ConversionError(f"{path} is empty (0 bytes); {_REFETCH}.")
    if head.startswith(_ZIP_MAGIC):
        return ConversionError(f"{path} is cut short (truncated at {size} bytes): it starts as a torch zip "
                               f"checkpoint but its end, the zip directory, is missing; {_REFETCH}.")
    if head[:1] == b"\x80":  # a pickle's PROTO opcode: what torch.save wrote before 1.6
        return ConversionError(f"{path} is in torch's legacy (pre-1.6) format, which vidjax reads only as zip: "
                               f"`torch.save(torch.load(FILE), FILE)` once with torch converts it.")
    if head.startswith(b"version "):  # a Git LFS pointer: the weights were never fetched
        return ConversionError(f"{path} is a Git LFS pointer ({size} bytes), not the checkpoint: fetch the file "
                               f"itself (git lfs pull).")
    return ConversionError(f"{path} is not a torch checkpoint: it is no zip archive ({error}; first bytes "
                           f"{head!r}).")


def read_torch_zip(path: str | os.PathLike) -> Any:
    """The object saved by `torch.save` (zip format, torch >= 1.6), with tensors as numpy arrays. No torch needed.
    A file that is empty, cut short or damaged (a failed CRC check) is a ConversionError saying which."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise _not_a_zip(path, e) from e
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise ConversionError(f"{path} is a zip file without data.pkl; it is not a torch checkpoint.")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            with archive.open(pkl[0]) as f:
                obj = _TorchUnpickler(f, archive, prefix).load()
        except ConversionError:
            raise
        except zipfile.BadZipFile as e:  # "Bad CRC-32 for file ...", a bad local header, ...: bytes overwritten
            raise ConversionError(f"{path} is damaged: {e} (its bytes differ from what was saved); "
                                  f"{_REFETCH}.") from e
        except (EOFError, zlib.error, OSError) as e:  # an entry whose data stops early
            raise ConversionError(f"{path} is cut short or damaged: reading it stopped ({e}); {_REFETCH}.") from e
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, IndexError) as e:
            raise ConversionError(f"{path} is damaged: cannot unpickle its data ({e}); {_REFETCH}.") from e
    return _materialise(obj)


def _flatten_tensors(obj, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten_tensors(v, f"{prefix}{k}."))
    elif isinstance(obj, np.ndarray):
        out[prefix[:-1]] = obj
    return out


def checkpoint_file(path: str | os.PathLike, flag: str = "") -> pathlib.Path:
    """`path` as a checkpoint file to read (`flag`, e.g. "--from_videomae", names what takes it), or a
    ConversionError saying that it does not exist or is a folder, and what to pass instead."""
    path = pathlib.Path(path).expanduser()
    if path.is_file():
        return path
    takes = f"{flag} takes" if flag else "give"
    if not path.exists():
        raise ConversionError(f"Checkpoint file {path} does not exist; {takes} one checkpoint file (.pth, "
                              f".safetensors).")
    if not path.is_dir():
        raise ConversionError(f"{path} is not a regular file; {takes} one checkpoint file (.pth, .safetensors).")
    if (path / META_FILE).is_file():
        instead = ("it is a converted vidjax checkpoint already: pass it to --checkpoint or "
                   "vidjax.pretrained.load, there is nothing to convert")
    elif (path / "config.json").is_file():
        instead = f"it holds a Hugging Face save_pretrained model: convert the folder with --from_hf {path}"
    else:
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".bin", ".safetensors"))
        shown = f"{', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}"
        instead = (f"give one of the checkpoint files in it: {shown}" if inside
                   else "it holds no .pth, .pt, .bin or .safetensors file")
    raise ConversionError(f"{path} is a folder, not a checkpoint file; {takes} one file: {instead}.")


# The families of checkpoint files vidjax converts: (what the file is, in words, and the flag that converts it).
FAMILIES = {"videomae": ("a VideoMAE", "--from_videomae"), "svt": ("an SVT (TimeSformer)", "--from_svt"),
            "videomamba": ("a VideoMamba", "--from_videomamba"), "vjepa2": ("a V-JEPA 2", "--from_vjepa2"),
            "videoprism": ("a VideoPrism", "--from_videoprism"), "hf": ("a Hugging Face transformers", "--from_hf")}


def family(obj: Any) -> str | None:
    """The family (a key of FAMILIES) whose layout a checkpoint's tensors have, told by their names and shapes
    (nested dicts are searched): a Mamba mixer's A_log (VideoMamba), TimeSformer's temporal attention or time table
    (SVT), a V-JEPA predictor's `predictor_embed`, or a Conv3d tubelet embedding `patch_embed.proj` beside one qkv
    Linear with a bias (official V-JEPA 2; VideoMAE's qkv has none: its q and v biases are tensors of their own), a
    Conv3d `patch_embed.proj` otherwise (official VideoMAE), transformers' `embeddings.patch_embeddings` or GPT-2's
    `wte` (a `save_pretrained` weights file), or the official VideoPrism's Flax `patch_projection/linear/kernel` (a
    '/'-named .npz); None for none of these."""
    tensors = _flatten_tensors(obj) if isinstance(obj, dict) else {}
    names = list(tensors)
    if any(n.endswith("patch_projection/linear/kernel") for n in names):
        return "videoprism"
    if any(n.endswith("A_log") for n in names):
        return "videomamba"
    if any("temporal_attn." in n or n.endswith("time_embed") for n in names):
        return "svt"
    tubelets = any(n.endswith("patch_embed.proj.weight") and tensors[n].ndim == 5 for n in names)
    if any(n.endswith("predictor_embed.weight") for n in names) or (
            tubelets and any(n.endswith(".attn.qkv.bias") for n in names)):
        return "vjepa2"
    if tubelets:
        return "videomae"
    if any("embeddings.patch_embeddings." in n or n.endswith("wte.weight") for n in names):
        return "hf"
    return None


def check_family(obj: Any, kind: str, path: str | os.PathLike) -> None:
    """A ConversionError when the checkpoint `obj` (read from `path`) is of a family other than `kind`, naming the
    family and the flag that converts it: one check for every `--from_*` converter."""
    found = family(obj)
    if found is None or found == kind:
        return
    what, flag = FAMILIES[found]
    folder = pathlib.Path(path).parent
    if found != "hf":
        fix = f"convert it with {flag}"
    elif (folder / "config.json").is_file():
        fix = f"convert its folder with {flag} {folder}"
    else:
        fix = f"convert the folder `save_pretrained` wrote (config.json beside the weights) with {flag}"
    raise ConversionError(f"{path} is {what} checkpoint, not {FAMILIES[kind][0]} one; {fix}.")


def _is_float(value: np.ndarray) -> bool:
    return value.dtype.kind in "fc" or value.dtype.name.startswith(("bfloat16", "float8"))


def nonfinite(arrays: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point arrays in `arrays` that hold a NaN or an infinity (one np.isfinite pass)."""
    bad = []
    for name, value in arrays.items():
        value = np.asarray(value)
        if _is_float(value) and not np.isfinite(value).all():
            bad.append(name)
    return bad


def check_finite(arrays: Mapping[str, Any], origin: str, what: str = "tensors") -> None:
    """A ConversionError naming the arrays of `arrays` (the first five, and how many) that hold NaN or infinity:
    weights a model cannot compute with, from a damaged file or a diverged run."""
    bad = nonfinite(arrays)
    if not bad:
        return
    shown = []
    for name in bad[:5]:
        value = np.asarray(arrays[name])
        shown.append(f"{name} ({int(value.size - np.isfinite(value).sum())} of {value.size} values)")
    raise ConversionError(f"{origin} has non-finite weights (NaN or infinity) in {len(bad)} of {len(arrays)} "
                          f"{what}: {', '.join(shown)}{', ...' if len(bad) > 5 else ''}; it is damaged, or was saved "
                          f"by a training run that diverged: use another copy or an earlier checkpoint.")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a NumPy .npz archive (`np.savez`: the official VideoPrism checkpoints' format), by name; pickled
    objects are refused, not run. A file that is empty, cut short or damaged is a ConversionError saying which."""
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path} is empty (0 bytes); {_REFETCH}.")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ConversionError(f"{path} holds one .npy array, not an .npz archive of named arrays.")
        with archive:
            return {name: archive[name] for name in archive.files}
    except ConversionError:
        raise
    except zipfile.BadZipFile as e:
        raise ConversionError(f"{path} is cut short or damaged: it is no readable .npz (zip) archive ({e}); "
                              f"{_REFETCH}.") from e
    except (ValueError, OSError, EOFError, KeyError, zlib.error) as e:
        raise ConversionError(f"{path} is no readable .npz archive (numpy: {e}); {_REFETCH}.") from e


def read_checkpoint(path: pathlib.Path) -> Any:
    """The object a checkpoint file holds: a .safetensors file's tensors, an .npz archive's arrays, or what
    `torch.save` saved."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_npz(path) if path.suffix == ".npz" else read_torch_zip(path)


class TensorSource:
    """Named tensors of one checkpoint, and a record of which were used, for complete and checked conversions."""

    def __init__(self, tensors: Mapping[str, np.ndarray], origin: str):
        self.tensors = dict(tensors)
        self.origin = origin
        self.used: set[str] = set()
        self._parent: tuple[TensorSource, str] | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TensorSource:
        """A .safetensors file, or a torch file (.bin/.pth/.pt, nested state dicts flattened with '.')."""
        path = checkpoint_file(path)
        return cls(_flatten_tensors(read_checkpoint(path)), str(path))

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike) -> TensorSource:
        """The weights of a Hugging Face `save_pretrained` directory (safetensors preferred, sharded or not)."""
        directory = pathlib.Path(directory)
        for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                                   ("pytorch_model.bin.index.json", lambda p: _flatten_tensors(read_torch_zip(p)))):
            index = directory / index_name
            if index.is_file():
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                tensors = {}
                for name in files:
                    if not (directory / name).is_file():
                        raise ConversionError(f"{index} lists shard {name}, which is missing from {directory}.")
                    tensors.update(reader(directory / name))
                return cls(tensors, str(directory))
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (directory / name).is_file():
                source = cls.from_file(directory / name)
                return source
        raise ConversionError(f"{directory} has no model.safetensors or pytorch_model.bin (or sharded index); "
                              f"point --from_hf at the directory written by `save_pretrained`.")

    def subset(self, prefix: str) -> TensorSource:
        """The tensors whose names start with `prefix`, named without it (one part of a composite checkpoint, e.g.
        a VisionEncoderDecoder's "encoder."). Tensors taken from the subset count as used here too."""
        sub = TensorSource({n[len(prefix):]: v for n, v in self.tensors.items() if n.startswith(prefix)},
                           f"{self.origin} ({prefix}*)")
        sub._parent = (self, prefix)
        return sub

    def mark_used(self, name: str) -> None:
        """Records tensor `name` as converted (or deliberately skipped), so `unused` does not report it."""
        self.used.add(name)
        if self._parent is not None:
            parent, prefix = self._parent
            parent.mark_used(prefix + name)

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def stack_depth(self, prefix: str, stack: str, marker: str) -> int:
        """How many numbered blocks `{prefix}{stack}.i.` hold, each recognised by its tensor `marker` (e.g.
        "norm1.weight"); a ConversionError unless they are exactly 0 .. N-1, N >= 1."""
        pattern = re.compile(re.escape(f"{prefix}{stack}.") + r"(\d+)\." + re.escape(marker))
        ids = {int(m.group(1)) for n in self.tensors if (m := pattern.fullmatch(n))}
        if not ids or ids != set(range(len(ids))):
            raise ConversionError(f"{self.origin}: expected {stack}.0 .. {stack}.N-1, each with {marker}; found "
                                  f"{stack} indices {sorted(ids)}.")
        return len(ids)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def prefix_of(self, suffix: str) -> str:
        """The key prefix ("", "videomae.", "model.", ...) under which `suffix` is stored in this checkpoint."""
        matches = sorted((n[: -len(suffix)] for n in self.tensors if n.endswith(suffix)
                          and (n == suffix or n[-len(suffix) - 1] == ".")), key=len)
        if not matches:
            raise ConversionError(f"{self.origin} has no tensor named '...{suffix}'; is this a checkpoint of the "
                                  f"architecture it claims to be?")
        return matches[0]

    def take(self, name: str, shape: Sequence[int]) -> np.ndarray:
        """Tensor `name` as float32, checked to have `shape`; the error names the tensor and both shapes."""
        shape = tuple(int(s) for s in shape)
        if name not in self.tensors:
            raise ConversionError(f"{self.origin} is missing tensor {name!r} (expected shape {shape}).")
        value = self.tensors[name]
        if tuple(value.shape) != shape:
            raise ConversionError(f"Tensor {name!r} in {self.origin} has shape {tuple(value.shape)}, but the "
                                  f"model described by its config expects {shape}.")
        self.mark_used(name)
        return np.asarray(value, dtype=np.float32)

    def unused(self, ignore: Iterable[str] = ()) -> list[str]:
        ignore = tuple(ignore)
        return [n for n in self.names() if n not in self.used and not any(s in n for s in ignore)]


# ------------------------------------------------------------------------------------- tensor tables (both ways)

@dataclasses.dataclass(frozen=True)
class Tensor:
    """One vidjax parameter and the published tensor(s) it is stored as: one row of a converter's table, read in
    one direction by `read_tensors` and written in the other by `write_tensors`, so the two cannot drift.

    Reading, each tensor named in `hf` (of shape `shape`) is transposed by `perm` and reshaped to `part`; several
    tensors (q, k, v) are then stacked along `axis` into one vidjax array. Writing undoes each step exactly.
    """

    vj: str  # '/'-joined vidjax parameter name
    hf: tuple[str, ...]  # the published tensor name(s)
    shape: tuple[int, ...]  # the shape of each published tensor
    perm: tuple[int, ...] = ()  # () = no transpose
    part: tuple[int, ...] = ()  # () = the transposed shape
    axis: int = 0  # where the parts of several tensors are stacked

    def to_vidjax(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        parts = [np.asarray(a).transpose(self.perm) if self.perm else np.asarray(a) for a in arrays]
        parts = [p.reshape(self.part) if self.part else p for p in parts]
        return parts[0] if len(parts) == 1 else np.stack(parts, axis=self.axis)

    def to_hf(self, value: np.ndarray) -> dict[str, np.ndarray]:
        value = np.asarray(value)
        parts = [value] if len(self.hf) == 1 else list(np.moveaxis(value, self.axis, 0))
        transposed = tuple(self.shape[i] for i in self.perm) if self.perm else self.shape
        out = {}
        for name, part in zip(self.hf, parts, strict=True):
            part = part.reshape(transposed)
            out[name] = np.ascontiguousarray(part.transpose(np.argsort(self.perm)) if self.perm else part)
        return out


def linear(vj: str, hf: str, d_in: int, d_out: int, *, bias: bool = True) -> list[Tensor]:
    """An `nn.Linear` `hf` (weight (out, in), bias) <-> a vidjax Dense `vj` (kernel (in, out), bias)."""
    rows = [Tensor(f"{vj}/kernel", (f"{hf}.weight",), (d_out, d_in), perm=(1, 0))]
    return rows + [Tensor(f"{vj}/bias", (f"{hf}.bias",), (d_out,))] if bias else rows


def fused_attention(vj: str, name: str, dim: int, heads: int, *, bias: bool = True) -> list[Tensor]:
    """An official (timm-style) attention `name`: one qkv `nn.Linear` whose rows are (q|k|v, head, head_dim), with a
    bias unless `bias` is off, and proj <-> a vidjax `layers.Attention` `vj` (qkv (dim, 3, heads, head_dim), qkv_b,
    proj, proj_bias)."""
    hd = dim // heads
    rows = [Tensor(f"{vj}/qkv", (f"{name}.qkv.weight",), (3 * dim, dim), perm=(1, 0), part=(dim, 3, heads, hd))]
    if bias:
        rows.append(Tensor(f"{vj}/qkv_b", (f"{name}.qkv.bias",), (3 * dim,), part=(3, heads, hd)))
    return rows + [Tensor(f"{vj}/proj", (f"{name}.proj.weight",), (dim, dim), perm=(1, 0), part=(heads, hd, dim)),
                   Tensor(f"{vj}/proj_bias", (f"{name}.proj.bias",), (dim,))]


def qkv_linears(prefix: str, names: tuple[str, str, str], dim: int, heads: int, bias: bool,
                vj: str = "attn") -> list[Tensor]:
    """Three `nn.Linear`s q, k, v (named `names` under `prefix`, out x in) <-> a vidjax `layers.Attention` `vj`'s
    fused qkv (dim, 3, heads, head_dim), and its qkv_b when `bias`."""
    hd = dim // heads
    rows = [Tensor(f"{vj}/qkv", tuple(f"{prefix}{n}.weight" for n in names), (dim, dim), perm=(1, 0),
                   part=(dim, heads, hd), axis=1)]
    if bias:
        rows.append(Tensor(f"{vj}/qkv_b", tuple(f"{prefix}{n}.bias" for n in names), (dim,), part=(heads, hd)))
    return rows


# preprocessor_config.json's entry for the clip spec transformers has no key for (`vidjax.convert.hf`'s docstring).
CLIP_KEY = "vidjax_clip"


def processor_clip(processor: Mapping[str, Any] | None) -> dict:
    """The clip spec vidjax wrote into a processor config (`CLIP_KEY`: num_frames, sampling_rate, short_side,
    image_size), or {} where it has none."""
    clip = (processor or {}).get(CLIP_KEY)
    return dict(clip) if isinstance(clip, Mapping) else {}


def processor_statistics(processor: Mapping[str, Any] | None, mean: Sequence[float], std: Sequence[float],
                         family: str) -> tuple[list[float], list[float]]:
    """The mean and std of input = (pixels/255 - mean) / std that a checkpoint's processor config (image_ or
    video_preprocessor_config.json) normalises with; `mean` and `std` (the family's own) when it has none or does not
    normalise. A ConversionError for a rescale other than 1/255, which vidjax's input does not take."""
    processor = processor or {}
    if processor.get("do_normalize", True) and "image_mean" in processor:
        scale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        if abs(scale * 255 - 1) > 1e-6:
            raise ConversionError(f"the processor config rescales by {scale}; vidjax's {family} input is "
                                  f"(pixels/255 - mean)/std.")
        return [float(v) for v in processor["image_mean"]], [float(v) for v in processor["image_std"]]
    return [float(v) for v in mean], [float(v) for v in std]


def layer_norm(vj: str, hf: str, dim: int) -> list[Tensor]:
    """An `nn.LayerNorm` `hf` (weight, bias) <-> a vidjax LayerNorm `vj` (scale, bias)."""
    return [Tensor(f"{vj}/scale", (f"{hf}.weight",), (dim,)), Tensor(f"{vj}/bias", (f"{hf}.bias",), (dim,))]


def prefixed(rows: Iterable[Tensor], vj: str = "", hf: str = "") -> list[Tensor]:
    """`rows` with `vj` before every vidjax name and `hf` before every published name (a part of a larger model)."""
    return [dataclasses.replace(r, vj=vj + r.vj, hf=tuple(hf + n for n in r.hf)) for r in rows]


def size_tensor(src: TensorSource, name: str, ndim: int, expected: str, model: str, hint: str = "") -> tuple[int, ...]:
    """The shape of tensor `name` of an official file, which sets a model size; a ConversionError when it is missing
    or not of rank `ndim`, naming `expected` (the shape `model`, e.g. "the official VideoMAE", has there) and `hint`
    (what a file of that family holds)."""
    if not src.has(name):
        raise ConversionError(f"{src.origin} is missing tensor {name!r} (expected shape {expected})"
                              f"{f'; expected {hint}' if hint else ''}.")
    shape = tuple(int(s) for s in src.tensors[name].shape)
    if len(shape) != ndim:
        raise ConversionError(f"Tensor {name!r} in {src.origin} has shape {shape}; {model} has shape {expected} "
                              f"there.")
    return shape


def head_count(width: int, given: int | None, table: Mapping[int, int], origin: str, *, flag: str = "num_heads",
               part: str = "") -> int:
    """The attention heads of a stack `width` wide, which no tensor of an official file stores: `given`, checked to
    divide the width, else the official builders' for that width (`table`); otherwise a ConversionError naming the
    flag that gives it. `part` names the stack ("decoder", "predictor"; "" for the encoder)."""
    of = f"{part} " if part else ""
    if given:
        if width % given:
            raise ConversionError(f"{flag}={given} does not divide the {of}width {width} of {origin}.")
        return given
    if width not in table:
        known = ", ".join(f"{w} -> {h} heads" for w, h in sorted(table.items()))
        what = f"a {part} of width {width}, which no official builder uses" if part else \
            f"width {width}, which is no ViT size"
        raise ConversionError(f"{origin} has {what} ({known}), and the number of {of or 'attention '}heads is stored "
                              f"in no tensor: pass --{flag} ({flag}= in Python).")
    return table[width]


def check_video_input(hf: Mapping[str, Any], family: str, *, gelu: Iterable[str] = ("gelu",),
                      default_act: str = "gelu", channels_key: str = "num_channels") -> None:
    """A transformers config the vidjax model computes as written: its activation one of the GELU forms `gelu` the
    model implements, and 3 input channels (RGB video). ConversionError naming the value otherwise."""
    gelu = tuple(gelu)
    act = hf.get("hidden_act", default_act)
    if act not in gelu:
        forms = f"the exact {gelu[0]!r} the published models use" if len(gelu) == 1 else \
            f"the GELU forms {', '.join(gelu)}"
        raise ConversionError(f"{family} checkpoint uses hidden_act={act!r}; vidjax's {family} implements {forms}.")
    if hf.get(channels_key, 3) != 3:
        raise ConversionError(f"{family} checkpoint has {channels_key}={hf[channels_key]}; vidjax takes RGB video.")


def read_tensors(src: TensorSource, rows: Iterable[Tensor]) -> dict[str, np.ndarray]:
    """The vidjax parameters of a table, each read from `src` (shapes checked, tensors marked used)."""
    return {r.vj: r.to_vidjax([src.take(name, r.shape) for name in r.hf]) for r in rows}


def write_tensors(params: Mapping[str, np.ndarray], rows: Iterable[Tensor], what: str) -> dict[str, np.ndarray]:
    """The published tensors of a table, from vidjax parameters; every parameter must have its row (`what` names
    the model in the error), so nothing is silently left out."""
    rows = list(rows)
    missing = [r.vj for r in rows if r.vj not in params]
    extra = sorted(set(params) - {r.vj for r in rows})
    if missing or extra:
        raise ConversionError(f"The {what} mapping does not fit these parameters: missing {missing[:5]}, no place "
                              f"for {extra[:5]}{' ...' if len(extra) > 5 else ''}.")
    out = {}
    for r in rows:
        out.update(r.to_hf(params[r.vj]))
    return out


_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """A .safetensors file of `tensors` (in name order, little-endian, C order), as `safetensors.numpy.save_file`
    writes it: no torch or safetensors package needed."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _SAFETENSORS_NAMES[value.dtype.newbyteorder("=")], "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        chunks.append(value.tobytes())
        offset += value.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer pads it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for chunk in chunks:
            f.write(chunk)


# ------------------------------------------------------------------------------------------- converted models

@dataclasses.dataclass
class Converted:
    """A checkpoint in vidjax terms: the model (name and config), its flat parameters, and how to feed it."""

    model_name: str
    model_config: ml_collections.ConfigDict
    params: dict[str, np.ndarray]  # '/'-joined nnx pure-dict paths -> arrays in vidjax's layout
    preprocessing: dict[str, Any]  # mean, std (input = (pixels/255 - mean)/std), num_frames, image_size
    class_names: list[str] | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Files written beside the parameters: path relative to the output directory -> file to copy (a tokenizer).
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    # What a training run's checkpoint knows beyond its head (`vidjax.pretrained.as_converted`): its task
    # (multilabel and regression share the classification head) and the names of its regression outputs.
    task: str | None = None
    target_names: list[str] | None = None


@dataclasses.dataclass
class HfCheckpoint:
    """A vidjax model in Hugging Face transformers' terms: what its `save_pretrained` writes (`hf.to_hf`)."""

    architecture: str  # the transformers class, e.g. "VideoMAEForVideoClassification"
    config: dict[str, Any]  # config.json's model fields (`hf.to_hf` adds architectures, labels, dtype)
    tensors: dict[str, np.ndarray]  # model.safetensors
    processor: str = "VideoMAEImageProcessor"  # preprocessor_config.json's image_/video_processor_type; "": none (text)
    generation: dict[str, Any] | None = None  # generation_config.json, when `generate` needs token ids
    notes: list[str] = dataclasses.field(default_factory=list)  # what transformers computes slightly differently


def is_video_config(model_config: ml_collections.ConfigDict) -> bool:
    """Whether a model block is a video model's own (frames, image size and normalisation at its top level), as
    opposed to a text model's (GPT-2) or a composite one's (the captioner, whose encoder block is the video model)."""
    return "num_frames" in model_config and "image_size" in model_config


def path_key(path) -> str:
    """'/'-joined string of a jax tree path of a pure dict (nnx.List indices become digits)."""
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        else:
            parts.append(str(getattr(p, "name", p)))
    return "/".join(parts)


def flatten_params(pure: Any) -> dict[str, Any]:
    """Nested pure-dict parameters -> {'a/b/0/c': leaf}."""
    return {path_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]}


def abstract_model(model_name: str, model_config: ml_collections.ConfigDict) -> Any:
    """The NNX module `model_config` builds, with `jax.ShapeDtypeStruct`s for arrays (nothing allocated)."""
    from flax import nnx

    module = get_model(model_name)
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: module.Model(model_config, rngs=ParamKeys(0)))


def abstract_params(model_name: str, model_config: ml_collections.ConfigDict) -> Any:
    """The nested pure dict of `jax.ShapeDtypeStruct`s of the model `model_config` builds (nothing allocated)."""
    from flax import nnx

    # The trainer's `params` tree has the same structure.
    return nnx.to_pure_dict(nnx.state(abstract_model(model_name, model_config)))


def per_block_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`model_config` (a copy) with config.model.scan_layers off in it and in the model blocks nested in it: the
    model whose parameters have the per-block layout (blocks/0/...) that converted checkpoints keep on disk, whatever
    layout the run that wrote them used (`vidjax.models.layers.to_layout`)."""
    config = model_config.copy_and_resolve_references()
    blocks = [config]
    while blocks:
        block = blocks.pop()
        if "scan_layers" in block:
            block.scan_layers = False
        blocks += [value for value in block.values() if isinstance(value, ml_collections.ConfigDict)]
    return config


def unflatten_params(abstract: Any, flat: Mapping[str, np.ndarray], origin: str = "the converter") -> Any:
    """Flat params -> the nested structure of `abstract`, checking that names and shapes match exactly."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    expected = {path_key(p): leaf for p, leaf in leaves}
    missing = [k for k in expected if k not in flat]
    extra = [k for k in flat if k not in expected]
    if missing or extra:
        raise ConversionError(f"Parameters from {origin} do not match the vidjax model: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}.")
    out = []
    for key, leaf in expected.items():
        value = np.asarray(flat[key])
        if tuple(value.shape) != tuple(leaf.shape):
            raise ConversionError(f"Parameter {key} from {origin} has shape {tuple(value.shape)}; the vidjax model "
                                  f"expects {tuple(leaf.shape)}.")
        out.append(value.astype(np.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


def video_preprocessing(converted: Converted) -> Converted:
    """A video model's preprocessing completed from its config (frames, image size), and its config's
    normalisation set to the checkpoint's."""
    cfg = converted.model_config
    converted.preprocessing = dict(converted.preprocessing)
    converted.preprocessing.setdefault("num_frames", int(cfg.num_frames))
    converted.preprocessing.setdefault("image_size", int(cfg.image_size))
    if cfg.get("head") != "pretrain" and "mean" in converted.preprocessing:
        # The model config's normalisation is what fine-tuning from this checkpoint uses (the VideoMAE pre-training
        # loss is the exception: it un-normalises with ImageNet statistics, as the reference does).
        cfg.pixel_mean = tuple(float(v) for v in converted.preprocessing["mean"])
        cfg.pixel_std = tuple(float(v) for v in converted.preprocessing["std"])
    return converted


def finalize(converted: Converted, src: TensorSource, **source_info: Any) -> Converted:
    """Fills in what every converter shares: preprocessing sizes (video models), provenance, a ConversionError for
    tensors it read that hold NaN or infinity (`check_finite`), and a warning for unread tensors."""
    if is_video_config(converted.model_config):
        video_preprocessing(converted)
    converted.source = dict(path=src.origin, **source_info)
    check_finite({name: src.tensors[name] for name in sorted(src.used) if name in src.tensors}, src.origin)
    unused = src.unused(ignore=("position_ids", "num_batches_tracked"))
    if unused:
        logger.warning("%d tensor(s) of %s were not used by the conversion (e.g. %s); they have no counterpart "
                       "in vidjax's %s.", len(unused), src.origin, ", ".join(unused[:5]), converted.model_name)
    return converted


def resize(converted: Converted, num_frames: int | None = None, image_size: int | None = None) -> Converted:
    """The same checkpoint for another frame count and/or resolution: learned position tables interpolated (each
    model's `resize_positions`, through `vidjax.models.positions`)."""
    src_cfg = converted.model_config
    if not is_video_config(src_cfg):
        if num_frames or image_size:
            raise ValueError(f"a {converted.model_name} checkpoint has no frame count or image size of its own to "
                             f"adapt; convert it without --num_frames / --image_size.")
        return converted
    dst_cfg = ml_collections.ConfigDict(src_cfg.to_dict())
    dst_cfg.num_frames = int(num_frames or src_cfg.num_frames)
    dst_cfg.image_size = int(image_size or src_cfg.image_size)
    if (dst_cfg.num_frames, dst_cfg.image_size) == (src_cfg.num_frames, src_cfg.image_size):
        return converted
    module = get_model(converted.model_name)
    params = converted.params
    if hasattr(module, "resize_positions"):
        params = module.resize_positions(dict(params), src_cfg, dst_cfg)
    preprocessing = dict(converted.preprocessing, num_frames=dst_cfg.num_frames, image_size=dst_cfg.image_size)
    logger.info("Resized %s from %d frames x %d px to %d x %d.", converted.model_name, src_cfg.num_frames,
                src_cfg.image_size, dst_cfg.num_frames, dst_cfg.image_size)
    return dataclasses.replace(converted, model_config=dst_cfg, params=params, preprocessing=preprocessing)


# ---------------------------------------------------------------------------------------------------- writing

def _config_to_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def write_converted(converted: Converted, dst: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Checks `converted` against its model and writes DST/{vidjax.json, params/} atomically."""
    import orbax.checkpoint as ocp

    dst = pathlib.Path(dst).expanduser().absolute()
    if dst.is_file() or (dst.is_dir() and any(dst.iterdir())):
        if not overwrite:
            raise ConversionError(f"{dst} already exists; choose another --out or pass --overwrite.")
        if not (dst / META_FILE).is_file():
            raise ConversionError(f"{dst} exists and is not a converted checkpoint (no {META_FILE}); --overwrite "
                                  f"only replaces an earlier conversion. Choose another --out.")
    for stale in dst.parent.glob(f".{dst.name}.tmp-*") if dst.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # left by a conversion that was killed mid-write
    abstract = abstract_params(converted.model_name, per_block_config(converted.model_config))
    params = unflatten_params(abstract, converted.params, converted.source.get("path", "the checkpoint"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, params)
        checkpointer.wait_until_finished()
        for name, path in converted.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp / name)
        meta = dict(format=FORMAT, model_name=converted.model_name,
                    model=_config_to_json(converted.model_config), preprocessing=converted.preprocessing,
                    class_names=converted.class_names, source=converted.source)
        meta.update({k: v for k, v in (("task", converted.task), ("target_names", converted.target_names)) if v})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            dst.rename(old)
            try:
                tmp.rename(dst)
            except OSError:
                old.rename(dst)  # put the previous conversion back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst
