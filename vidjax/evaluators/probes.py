"""Probes trained on frozen features, in jax/optax: a linear layer, an MLP, and V-JEPA 2's attentive probe. What
`python -m vidjax.probe` fits on extracted features and the `attentive` evaluator fits on a run's tokens.

The attentive probe is the evaluation of V-JEPA 2 (Assran et al. 2025; facebookresearch/vjepa2
`src/models/attentive_pooler.py` `AttentiveClassifier`, trained by `evals/video_classification_frozen/eval.py`):
a cross-attention pooler over the frozen encoder's tokens (B, N, D), one learned query token whose attention reads
keys and values from the LayerNorm'ed tokens, multi-head, then a residual MLP (4 x D), optionally after
self-attention blocks over the tokens, and a linear layer on the pooled vector. It is
`vidjax.models.vjepa2.AttentivePooler`, the pooler of the V-JEPA 2 classifier, with a `layers.Dense` head.

Published settings (facebookresearch/vjepa2: `configs/eval/vitl/*.yaml` and `configs/eval/vitg-384/*.yaml`, read by
`evals/video_classification_frozen/eval.py`):
  classifier    `AttentiveClassifier(num_heads=16, depth=num_probe_blocks=4)`: three self-attention blocks, then the
                cross-attention block (the reference's `AttentivePooler(depth=)` counts them all; eval.py's default
                when a config leaves it out is 1), one query token, mlp_ratio 4, q / kv biases
  optimizer     AdamW, no warm-up, the learning rate cosine-decayed to 0 over the run (eval.py's
                `WarmupCosineLRSchedule`); 20 classifiers trained side by side over lr {5e-3, 3e-3, 1e-3, 3e-4, 1e-4}
                x weight decay {0.01, 0.1, 0.4, 0.8}, the best one reported
  schedule      20 epochs (100 for Diving-48 and Jester); batch 4 clips per GPU on 8 x 8 GPUs (256) for ViT-L on
                Kinetics-400 and SSv2
Here (`DEFAULTS`, chosen on a few hundred clips of tiny encoders' tokens): `heads` 0 picks 16 where it divides D,
else the largest divisor of D below 16; `depth` 1, the cross-attention block alone (a deeper pooler needs more data
than a small probe set has); one learning rate, 1e-2, with the same cosine decay, and weight decay 0.01, AdamW's on
every parameter as the reference's; 30 epochs of batches of 16.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vidjax import platform
from vidjax.models import ParamKeys, layers, vjepa2

PROBES = ("linear", "mlp", "attentive")  # the probes `train_probe` fits
# Training settings: the linear and MLP probes', and the attentive probe's, chosen on small sets of tiny encoders'
# tokens (a few hundred clips; the module docstring has V-JEPA 2's for full data sets).
DEFAULTS = {"linear": dict(epochs=100, lr=1e-3, weight_decay=1e-4, batch_size=256),
            "attentive": dict(epochs=30, lr=1e-2, weight_decay=1e-2, batch_size=16)}
PUBLISHED_HEADS = 16  # V-JEPA 2's evals: 16 heads
LN_EPS = 1e-6  # the reference pooler's LayerNorm (vjepa2.default_config().ln_eps)
SCORE_ROWS = 256  # rows a trained probe scores at a time


class ProbeError(ValueError):
    """Features or targets that cannot train the requested probe; the message says which flag or file."""


class ClassLabels:
    """How a probe fits one class per clip (integer labels): softmax cross-entropy on its outputs, read as class
    probabilities. It answers `fit_probe` as a task's readout does (`vidjax.tasks.readout.Readout`'s probe members);
    the attentive evaluator's probe fits it whatever the run's task, a classifier of the `label` column as V-JEPA 2's
    evaluation is."""

    probe_standardises_targets = False

    def probe_targets(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, np.int32)

    def probe_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))

    def scores(self, logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, axis=-1)


CLASS_LABELS = ClassLabels()


def moments(x: np.ndarray, axes: tuple[int, ...] = (0,)) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation over `axes` that standardise features or targets with training statistics;
    a deviation under 1e-6 counts as 1, so a constant column becomes 0 rather than a division by zero."""
    std = x.std(axis=axes)
    return x.mean(axis=axes), np.where(std > 1e-6, std, 1.0)


def attentive_heads(dim: int, heads: int = 0, *, where: str = "--heads") -> int:
    """The attention heads of an attentive probe on D=`dim` features: `heads`, which must divide `dim`; 0: the
    published 16 where it divides `dim`, else the largest divisor of `dim` below 16. `where` names the setting in
    the error."""
    if heads < 0:
        raise ProbeError(f"{where}={heads} must be 0 (16 as V-JEPA 2, or the largest divisor of the feature "
                         f"dimension below it) or a number of heads.")
    if heads == 0:
        return max(h for h in range(1, PUBLISHED_HEADS + 1) if dim % h == 0)
    if dim % heads:
        divisors = [h for h in range(1, min(dim, 64) + 1) if dim % h == 0]
        raise ProbeError(f"{where}={heads} does not divide the feature dimension {dim} (each head takes an equal "
                         f"share of it): choose one of {divisors}, or 0 for the default.")
    return heads


class AttentiveProbe(nnx.Module):
    """V-JEPA 2's `AttentiveClassifier`: tokens (B, N, D) -> `vjepa2.AttentivePooler` (depth - 1 self-attention
    blocks, then a learned query cross-attending to the LayerNorm'ed tokens, and a residual MLP) -> a linear layer
    (B, num_outputs), float32."""

    def __init__(self, dim: int, num_outputs: int, *, heads: int, depth: int, rngs):
        choices = platform.Choices.for_backend()
        self.pooler = vjepa2.AttentivePooler(dim, heads, 4 * dim, depth - 1, eps=LN_EPS, dtype=jnp.float32,
                                             choices=choices, rngs=rngs)
        self.head = layers.Dense(dim, num_outputs, ("embed", "classes"),
                                 kernel_init=nnx.initializers.truncated_normal(0.02), choices=choices, rngs=rngs)

    def __call__(self, x_BND: jax.Array) -> jax.Array:
        return self.head(self.pooler(x_BND.astype(jnp.float32)))


def _linear(params: dict, x: jax.Array) -> jax.Array:
    return x @ params["w"] + params["b"]


def _mlp(params: dict, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


@dataclasses.dataclass(frozen=True)
class _Merged:
    """(params, x) -> the nnx module `graphdef` describes, with `params`, on x. Equal for modules of one structure,
    so that their probes share one compiled step."""

    graphdef: nnx.GraphDef

    def __call__(self, params, x: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, params)(x)


def _init(rng: np.random.Generator, seed: int, probe: str, dim: int, out: int, *, hidden: int, heads: int,
          depth: int) -> tuple[Callable, object]:
    """(apply(params, x) -> outputs, initial params) of `probe` on `dim` features with `out` outputs: the MLP's
    drawn from `rng`, the attentive probe's from the keys of `seed`."""
    if probe == "linear":  # a zero layer: the first steps follow the data, not a random draw
        return _linear, {"w": np.zeros((dim, out), np.float32), "b": np.zeros(out, np.float32)}
    if probe == "attentive":
        with nnx.use_eager_sharding(False):  # one device: no mesh to lay the parameters' logical axes on
            graphdef, params = nnx.split(AttentiveProbe(dim, out, heads=heads, depth=depth, rngs=ParamKeys(seed)))
        return _Merged(graphdef), params
    return _mlp, {"w1": (rng.standard_normal((dim, hidden)) * np.sqrt(2.0 / dim)).astype(np.float32),
                  "b1": np.zeros(hidden, np.float32),
                  "w2": (rng.standard_normal((hidden, out)) * np.sqrt(1.0 / hidden)).astype(np.float32),
                  "b2": np.zeros(out, np.float32)}


def _check_layout(probe: str, *features: np.ndarray) -> None:
    """A ProbeError unless `probe` is one of `PROBES` and every array of `features` has its layout."""
    if probe not in PROBES:
        raise ProbeError(f"probe={probe!r}; the trained probes are {', '.join(PROBES)}.")
    ndim, shape = (3, "(N, tokens, D)") if probe == "attentive" else (2, "(N, D)")
    if any(x.ndim != ndim for x in features):
        raise ProbeError(f"--probe={probe} takes features shaped {shape}, not "
                         f"{' and '.join(str(x.shape) for x in features)}.")


# AdamW with its learning rate and weight decay in its state (set before each step), so that probes of one structure
# share one compiled `_step` whatever their settings (a grid search, an evaluator's runs).
_ADAMW = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)


@functools.partial(jax.jit, static_argnames=("apply", "loss"))
def _step(params, opt_state, xb: jax.Array, yb: jax.Array, *, apply: Callable, loss: Callable):
    """One AdamW step of the probe `apply` on the batch (xb, yb) under `loss(outputs, targets)`."""
    grads = jax.grad(lambda p: loss(apply(p, xb), yb))(params)
    updates, opt_state = _ADAMW.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnames="apply")
def _outputs(apply: Callable, params, x: jax.Array) -> jax.Array:
    return apply(params, x)


@dataclasses.dataclass
class FittedProbe:
    """A trained probe and the training statistics it standardises with: `scores(x)` of new features."""

    readout: Any  # what its outputs mean (`scores`): the readout `fit_probe` was given
    apply: Callable  # (params, standardised features) -> outputs
    params: object
    mean: np.ndarray
    std: np.ndarray
    target_moments: tuple[np.ndarray, np.ndarray] | None  # regression targets' (mean, std); None: not standardised

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The probe's raw outputs (logits, or standardised values) on features `x`, `SCORE_ROWS` rows at a time."""
        x = (x - self.mean) / self.std
        return np.concatenate([np.asarray(_outputs(self.apply, self.params, x[i:i + SCORE_ROWS]))
                               for i in range(0, max(len(x), 1), SCORE_ROWS)])

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (classification), per-class sigmoid scores (multilabel) or values in the targets'
        units (regression) of features `x`."""
        scores = np.asarray(self.readout.scores(self.outputs(x)))
        if self.target_moments is None:
            return scores
        y_mean, y_std = self.target_moments
        return scores * y_std + y_mean


def training_settings(probe: str, **given: float | None) -> dict:
    """epochs, lr, weight_decay and batch_size for `probe`: those `given` (None: unset), else its `DEFAULTS`."""
    defaults = DEFAULTS["attentive" if probe == "attentive" else "linear"]
    return {key: default if given.get(key) is None else given[key] for key, default in defaults.items()}


def fit_probe(readout: Any, x_train: np.ndarray, y_train: np.ndarray, *, num_outputs: int, probe: str = "linear",
              hidden: int = 256, heads: int = 0, depth: int = 1, epochs: int | None = None, lr: float | None = None,
              weight_decay: float | None = None, batch_size: int | None = None, seed: int = 0) -> FittedProbe:
    """Trains `probe` on (x_train, y_train) with AdamW on minibatches drawn by `seed` (whole batches only; the
    attentive probe's learning rate cosine-decays to 0 over the run, as V-JEPA 2's evals). epochs, lr, weight_decay
    and batch_size left None are the probe's `DEFAULTS`. `readout` says how it fits and reads the targets: a task's
    readout (`vidjax.tasks.readout_of(task)`: `probe_targets`, `probe_loss`, `probe_standardises_targets`, `scores`),
    or `CLASS_LABELS`.

    Features (and regression targets) are standardised with training statistics: per dimension over the rows, or for
    probe="attentive", which takes (N, tokens, D) features, over all training tokens. `hidden`: the MLP's units;
    `heads` and `depth`: the attentive pooler's (`attentive_heads`; its blocks, the last the cross-attention one).
    The same arguments and seed give the same probe.
    """
    _check_layout(probe, x_train)
    settings = training_settings(probe, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size)
    epochs, lr, weight_decay, batch_size = (settings[k] for k in ("epochs", "lr", "weight_decay", "batch_size"))
    if probe == "attentive":
        if depth < 1:
            raise ProbeError(f"--depth={depth}: the attentive pooler has at least its cross-attention block (1).")
        heads = attentive_heads(x_train.shape[-1], heads)
    mean, std = moments(x_train, axes=tuple(range(x_train.ndim - 1)))
    x_train = (x_train - mean) / std
    y = readout.probe_targets(y_train)
    target_moments = None
    if readout.probe_standardises_targets:
        target_moments = moments(y)
        y = (y - target_moments[0]) / target_moments[1]
    rng = np.random.default_rng(seed)
    apply, params = _init(rng, seed, probe, x_train.shape[-1], num_outputs, hidden=hidden, heads=heads, depth=depth)
    params = jax.tree.map(jnp.asarray, params)
    n = len(x_train)
    batch = min(batch_size, n)
    schedule = optax.cosine_decay_schedule(lr, max(epochs * (n // batch), 1)) if probe == "attentive" else None
    opt_state = _ADAMW.init(params)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        # Whole batches only (one compiled shape); the permutation changes which rows sit out each epoch.
        for start in range(0, n - batch + 1, batch):
            rows = order[start:start + batch]
            opt_state.hyperparams["learning_rate"] = jnp.asarray(schedule(step) if schedule else lr, jnp.float32)
            params, opt_state = _step(params, opt_state, x_train[rows], y[rows], apply=apply,
                                      loss=readout.probe_loss)
            step += 1
    return FittedProbe(readout, apply, params, mean, std, target_moments)


def train_probe(readout: Any, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, *, num_outputs: int,
                probe: str = "linear", **settings) -> np.ndarray:
    """The scores on x_eval (`FittedProbe.scores`) of the probe `fit_probe(readout, x_train, y_train, ...)` trains
    with `settings` (hidden, heads, depth, epochs, lr, weight_decay, batch_size, seed)."""
    _check_layout(probe, x_train, x_eval)
    return fit_probe(readout, x_train, y_train, num_outputs=num_outputs, probe=probe, **settings).scores(x_eval)
