"""Ready-to-call models from converted checkpoints: `vidjax.pretrained.load(DST)`.

    model = vidjax.pretrained.load("/ckpt/videomae-base-finetuned-kinetics")
    video = model.preprocess(frames_uint8)          # (B, T, H, W, 3) uint8 -> normalised float32
    logits = model(video)                           # classification checkpoints: (B, num_classes)
    out = model(video, mask)                        # VideoMAE pre-training: {"reconstruction", "loss"}

`model.preprocessing` says what the checkpoint expects (mean/std, frames, image size) so callers need not guess;
`model.class_names` holds the label names when the checkpoint has them. `model.forward(video, mask)` returns every
output of the vidjax model (including "last_hidden_state"). The forward pass is jitted once per input shape.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax.config_lib import ConfigError
from vidjax.convert import common
from vidjax.convert.common import ConversionError
from vidjax.models import get_model


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: call it on normalised float32 video (B, T, H, W, 3)."""

    model_name: str
    config: ml_collections.ConfigDict
    preprocessing: dict[str, Any]
    class_names: list[str] | None
    graphdef: Any
    params: Any
    num_tokens: int | None = None  # tokens per clip of a masked model (the mask's second dimension)

    def __post_init__(self):
        graphdef = self.graphdef

        def forward(params, video, mask, num_masked):
            model = nnx.merge(graphdef, params)
            if mask is None:
                return model(video)
            return model(video, mask, num_masked=num_masked)

        self._forward = jax.jit(forward, static_argnums=3)

    @property
    def model(self) -> nnx.Module:
        """The vidjax NNX module holding these weights (for fine-tuning or inspection)."""
        return nnx.merge(self.graphdef, self.params)

    def preprocess(self, frames: np.ndarray) -> jax.Array:
        """uint8 RGB frames (..., H, W, 3) -> float32 normalised as this checkpoint expects."""
        mean = jnp.asarray(self.preprocessing["mean"], jnp.float32)
        std = jnp.asarray(self.preprocessing["std"], jnp.float32)
        return (jnp.asarray(frames, jnp.float32) / 255.0 - mean) / std

    def _check(self, video) -> None:
        t, s = self.config.num_frames, self.config.image_size
        if tuple(np.shape(video)[1:]) != (t, s, s, 3):
            raise ValueError(f"This {self.model_name} checkpoint takes video shaped (batch, {t}, {s}, {s}, 3) "
                             f"channels-last, normalised with mean {self.preprocessing['mean']} and std "
                             f"{self.preprocessing['std']}; got {tuple(np.shape(video))}. Use "
                             f"pretrained.load(..., num_frames=, image_size=) to adapt it to other sizes.")

    def forward(self, video, mask=None) -> dict[str, jax.Array]:
        """Every output of the model: logits / loss / pred / last_hidden_state, as the head provides."""
        self._check(video)
        if self.config.head == "pretrain" and mask is None:
            raise ValueError("This is a VideoMAE pre-training checkpoint: call it as model(video, mask) with a bool "
                             "mask (batch, tokens), True = masked, the same count in every row.")
        video = jnp.asarray(video, jnp.float32)
        if mask is None:
            return self._forward(self.params, video, None, None)
        mask = np.asarray(mask, bool)
        tokens = self.num_tokens
        counts = mask.sum(axis=1) if mask.ndim == 2 else np.array([-1])
        if mask.shape != (video.shape[0], tokens) or counts.min() != counts.max() or not 0 < counts[0] < tokens:
            raise ValueError(f"The mask must be bool (batch, {tokens}) with the same number of masked (True) "
                             f"tokens in every row, some masked and some visible; got shape {mask.shape} with "
                             f"{sorted(set(counts.tolist()))} masked per row.")
        return self._forward(self.params, video, jnp.asarray(mask), int(counts[0]))

    def __call__(self, video, mask=None):
        out = self.forward(video, mask)
        if self.config.head == "pretrain":
            return {"reconstruction": out["pred"], "loss": out["loss"]}
        if self.config.head == "classification":
            return out["logits"]
        return out["last_hidden_state"]


def _restore_params(directory: pathlib.Path, abstract: Any) -> Any:
    """Host numpy arrays: every process can read them, and no device holds a second copy of the model."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, target)


def _read(path: str | pathlib.Path) -> tuple[dict, common.Converted]:
    """vidjax.json and the flat numpy parameters of a converted checkpoint."""
    path = pathlib.Path(path)
    meta_path = path / common.META_FILE
    if not meta_path.is_file():
        raise ConversionError(f"{path} has no {common.META_FILE}; it is not a converted checkpoint. Convert one "
                              f"with `python -m vidjax.convert --from-hf SRC --out {path}`.")
    meta = json.loads(meta_path.read_text())
    module = get_model(meta["model_name"])
    config = module.default_config()
    unknown = set(meta["model"]) - set(config)
    if unknown:
        raise ConversionError(f"{meta_path} has model keys {sorted(unknown)} that this vidjax version does not "
                              f"know; it was written by a newer vidjax.")
    config.update(meta["model"])
    params = _restore_params(path / common.PARAMS_DIR, common.abstract_params(meta["model_name"], config))
    flat = {k: np.asarray(v) for k, v in common.flatten_params(params).items()}
    return meta, common.Converted(meta["model_name"], config, flat, meta["preprocessing"], meta.get("class_names"),
                                  meta.get("source", {}))


def load(path: str | pathlib.Path, *, num_frames: int | None = None, image_size: int | None = None,
         dtype: str | None = None) -> Pretrained:
    """Loads a `python -m vidjax.convert` output; optionally adapted to another clip length or resolution.

    `dtype="bfloat16"` computes in bf16 (parameters stay float32).
    """
    meta, converted = _read(path)
    if num_frames or image_size:
        converted = common.resize(converted, num_frames, image_size)
    config = converted.model_config
    if dtype:
        config.dtype = dtype
    model = common.abstract_model(meta["model_name"], config)
    num_tokens = getattr(getattr(model, "encoder", None), "num_tokens", None)
    graphdef, abstract = nnx.split(model)
    params = common.unflatten_params(nnx.to_pure_dict(abstract), converted.params)
    params = jax.device_put(params, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return Pretrained(meta["model_name"], config, dict(converted.preprocessing), converted.class_names, graphdef,
                      params, num_tokens)


def init_from(path: str | pathlib.Path, model_name: str, model_config: ml_collections.ConfigDict, params: Any
              ) -> tuple[Any, dict[str, list[str]]]:
    """Fine-tuning start: `params` (a fresh, sharded model state) with every tensor the checkpoint has copied in.

    The checkpoint is first adapted to `model_config`'s frames and resolution (position tables interpolated).
    Tensors the checkpoint lacks (e.g. fc_norm after pre-training) and a head whose class count differs keep
    their fresh initialisation; any other shape mismatch is an error naming the tensor. Returns the new params
    and a report {"loaded": [...], "fresh": [...], "unused": [...]} (unused: checkpoint tensors the configured
    model has no place for, e.g. a pre-training decoder).
    """
    meta, converted = _read(path)
    if meta["model_name"] != model_name:
        raise ConfigError(f"config.init_from={str(path)!r} holds a {meta['model_name']} checkpoint, but "
                          f"config.model_name is {model_name!r}.")
    try:
        converted = common.resize(converted, model_config.num_frames, model_config.image_size)
    except ValueError as e:
        raise ConfigError(f"config.init_from={str(path)!r} cannot be adapted to {model_config.num_frames} frames "
                          f"x {model_config.image_size} px: {e}") from e
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, report = [], {"loaded": [], "fresh": [], "unused": []}
    for key_path, fresh in leaves:
        key = common.path_key(key_path)
        value = converted.params.get(key)
        is_head = key.split("/")[0] == "head"
        if value is None or (is_head and value.shape != fresh.shape):
            report["fresh"].append(key)
            out.append(fresh)
            continue
        if value.shape != fresh.shape:
            raise ConfigError(f"config.init_from={str(path)!r}: parameter {key} has shape {value.shape} in the "
                              f"checkpoint but {fresh.shape} in the model config.model describes; use the same "
                              f"variant/width/depth as the checkpoint.")
        value = value.astype(fresh.dtype)
        out.append(jax.make_array_from_callback(fresh.shape, fresh.sharding, lambda index, v=value: v[index]))
        report["loaded"].append(key)
    report["unused"] = sorted(set(converted.params) - set(report["loaded"]) - set(report["fresh"]))
    if not report["loaded"]:
        raise ConfigError(f"config.init_from={str(path)!r} shares no parameter with the configured model.")
    return jax.tree_util.tree_unflatten(treedef, out), report
