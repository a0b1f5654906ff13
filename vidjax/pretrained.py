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
        tokens = self.model_tokens()
        counts = mask.sum(axis=1) if mask.ndim == 2 else np.array([-1])
        if mask.shape != (video.shape[0], tokens) or counts.min() != counts.max() or not 0 < counts[0] < tokens:
            raise ValueError(f"The mask must be bool (batch, {tokens}) with the same number of masked (True) "
                             f"tokens in every row, some masked and some visible; got shape {mask.shape} with "
                             f"{sorted(set(counts.tolist()))} masked per row.")
        return self._forward(self.params, video, jnp.asarray(mask), int(counts[0]))

    def model_tokens(self) -> int:
        """Tokens per clip (the mask's second dimension)."""
        c = self.config
        patch = int(str(c.variant).split("/")[1])
        return (c.num_frames // c.tubelet_size) * (c.image_size // patch) ** 2

    def __call__(self, video, mask=None):
        out = self.forward(video, mask)
        if self.config.head == "pretrain":
            return {"reconstruction": out["pred"], "loss": out["loss"]}
        if self.config.head == "classification":
            return out["logits"]
        return out["last_hidden_state"]


def _restore_params(directory: pathlib.Path, abstract: Any) -> Any:
    import orbax.checkpoint as ocp

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, target)


def load(path: str | pathlib.Path, *, num_frames: int | None = None, image_size: int | None = None,
         dtype: str | None = None) -> Pretrained:
    """Loads a `python -m vidjax.convert` output; optionally adapted to another clip length or resolution.

    `dtype="bfloat16"` computes in bf16 (parameters stay float32).
    """
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
    abstract = common.abstract_params(meta["model_name"], config)
    params = _restore_params(path / common.PARAMS_DIR, abstract)
    converted = common.Converted(meta["model_name"], config, common.flatten_params(params),
                                 meta["preprocessing"], meta.get("class_names"), meta.get("source", {}))
    if num_frames or image_size:
        converted = common.resize(converted, num_frames, image_size)
        config = converted.model_config
        params = common.unflatten_params(common.abstract_params(meta["model_name"], config), converted.params)
    if dtype:
        config.dtype = dtype
    with nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(lambda: module.Model(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model)
    return Pretrained(meta["model_name"], config, dict(converted.preprocessing), converted.class_names, graphdef,
                      params)
