"""Parity fixtures for official VideoPrism files: the official Flax model code (google-deepmind/videoprism) with random
weights, saved in the released .npz layout and read back by the official loader.

The reference is the official `videoprism/encoders.py` (`FactorizedEncoder`, the video encoder of
videoprism_public_v1_*; `FactorizedVideoCLIP`, the LvT video-text model) on `videoprism/layers.py`, imported from a
checkout of the repository named by $VIDEOPRISM_REPO (`git clone https://github.com/google-deepmind/videoprism`), built
with scan=True as every official config is (the "repeated" files). It needs flax (linen), einops and einshape (`pip
install einshape`); `videoprism/utils.py` imports TensorFlow for `gfile`, which it uses for remote paths only, so a
stand-in serves while it is imported. Each model's variables are drawn by its own `init`, then every array is
replaced by random values (LayerNorm scales, stored as gamma - 1, and biases around 0, at 0.2 N(0, 1); the attention
query and key projections at 1.5 N(0, 1), so that the logits reach the official cap of 50 and the tanh bites: the
maker checks that the capped and uncapped outputs differ). They are saved as the released files are: one array per
leaf, named by the official `utils.tree_flatten_with_names` ('/'-joined, from "params/"), `np.savez`; the outputs are
those of `model.apply` on the variables the official `utils.load_checkpoint` reads back from that file, so the file
is what `vpp.load_pretrained_weights` loads.

`videoprism_official_encoder`: a 16-wide encoder (2 heads of 8, MLP 64), 2 spatial and 1 temporal layers over 3
frames x 8 px in patches of 4 (pos_emb_shape (3, 2, 2)). io.npz: the clips (pixels in [0, 1], channels-last),
`last_hidden_state` (B, T * N, D), and `last_hidden_state_resized`: the official model on clips of 6 frames x 12 px,
its position tables interpolated on the fly (`jax.image.resize`, bilinear), as vidjax's `--num_frames 6
--image_size 12` conversion resizes them.
`videoprism_official_lvt`: the LvT model of that encoder plus 1 auxiliary layer, the attention pooler (MLP-wide
heads), L2-normalised embeddings, and a causal text tower of 2 layers over a vocabulary of 40 with a class token.
io.npz: 2 clips, 3 texts (`input_ids`, `attention_mask` = 1 - the official paddings; two rows right-padded),
`video_embeds` (2, D) and `text_embeds` (3, D).

Run through scripts/make_parity_fixtures.py with VIDEOPRISM_REPO set; tests/test_videoprism_convert.py checks the
cases.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np

BATCH, FRAMES, SIZE, PATCH = 2, 3, 8, 4
WIDTH, HEADS, MLP, SPATIAL, TEMPORAL, AUXILIARY, TEXT_LAYERS, VOCAB = 16, 2, 64, 2, 1, 1, 2, 40
CAP = 50.0  # every official config's atten_logit_cap (and what the converter assumes: the files do not store it)
ENCODER = dict(patch_size=PATCH, pos_emb_shape=(FRAMES, SIZE // PATCH, SIZE // PATCH), model_dim=WIDTH,
               num_spatial_layers=SPATIAL, num_temporal_layers=TEMPORAL, num_heads=HEADS, mlp_dim=MLP, scan=True)
LVT = dict(patch_size=PATCH, pos_emb_shape=(FRAMES, SIZE // PATCH, SIZE // PATCH), num_spatial_layers=SPATIAL,
           num_temporal_layers=TEMPORAL, mlp_dim=MLP, num_auxiliary_layers=AUXILIARY, vocabulary_size=VOCAB,
           enable_causal_atten=True, num_unimodal_layers=TEXT_LAYERS, norm_policy="pre", model_dim=WIDTH,
           num_heads=HEADS, scan=True)


def _official_code() -> tuple[types.ModuleType, types.ModuleType, str]:
    """The official modules (encoders, utils) and the checkout's commit."""
    repo = os.environ.get("VIDEOPRISM_REPO")
    if not repo or not (pathlib.Path(repo) / "videoprism" / "encoders.py").is_file():
        raise SystemExit("set VIDEOPRISM_REPO to a checkout of https://github.com/google-deepmind/videoprism (its "
                         "videoprism/encoders.py is the reference)")
    sys.path.insert(0, str(repo))
    from videoprism import encoders

    # utils.py binds tensorflow.io.gfile at import, for remote paths only; the stand-in is removed again at once, as
    # einops takes any "tensorflow" module it finds for a backend.
    tensorflow, tf_io = types.ModuleType("tensorflow"), types.ModuleType("tensorflow.io")
    tf_io.gfile = None
    tensorflow.io = tf_io
    sys.modules.update({"tensorflow": tensorflow, "tensorflow.io": tf_io})
    try:
        from videoprism import utils
    finally:
        del sys.modules["tensorflow"], sys.modules["tensorflow.io"]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown commit"
    return encoders, utils, commit


def randomized(variables, seed: int, utils) -> dict[str, np.ndarray]:
    """Every array of `variables` drawn anew, by the official flat name (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in utils.tree_flatten_with_names(variables):
        scale = 1.5 if name.endswith(("self_attention/query/w", "self_attention/key/w")) else 0.2
        out[name] = (scale * rng.standard_normal(np.shape(value))).astype(np.float32)
    return out


def save_and_load(arrays: dict[str, np.ndarray], path: pathlib.Path, utils):
    """`arrays` saved as the released .npz files are, and the variables read back from it as
    `models.load_pretrained_weights` reads them: `utils.load_checkpoint`, then jax arrays (the official LayerNorm adds
    1 to its scale in place, which would change numpy variables at every call)."""
    import jax
    import jax.numpy as jnp

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return jax.tree_util.tree_map(jnp.asarray, utils.load_checkpoint(str(path)))


def _check_cap_bites(capped, uncapped, what: str) -> None:
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(capped, uncapped, strict=True))
    if diff < 1e-3:
        raise SystemExit(f"{what}: the logit cap changes the outputs by {diff:.1e} only; draw larger q/k weights")
    print(f"{what}: the logit cap moves the outputs by up to {diff:.3f}")


def _write_case(case: pathlib.Path, arrays: dict, reference: str) -> None:
    np.savez(case / "io.npz", **arrays)
    # "kind": checked by tests/test_videoprism_convert.py, not by tests/test_parity.py
    (case / "case.json").write_text(json.dumps(dict(kind="videoprism_official", convert="videoprism",
                                                    reference=reference), indent=1) + "\n")


def make(out: pathlib.Path) -> None:
    import jax
    import jax.numpy as jnp

    encoders, utils, commit = _official_code()
    reference = f"google-deepmind/videoprism {commit[:12]} videoprism/encoders.py {{}} (scan=True), jax " \
                f"{jax.__version__}, random weights; saved as the released .npz, read by utils.load_checkpoint"
    rng = np.random.default_rng(0)
    video = rng.random((BATCH, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    resized = rng.random((BATCH, 2 * FRAMES, SIZE + PATCH, SIZE + PATCH, 3)).astype(np.float32)

    model = encoders.FactorizedEncoder(**ENCODER, atten_logit_cap=CAP)
    arrays = randomized(model.init(jax.random.PRNGKey(0), jnp.asarray(video), train=False), 1, utils)
    case = out / "videoprism_official_encoder"
    variables = save_and_load(arrays, case / "source" / "flax_mu_f3r8_repeated.npz", utils)
    hidden, _ = model.apply(variables, jnp.asarray(video), train=False)
    hidden_resized, _ = model.apply(variables, jnp.asarray(resized), train=False)
    uncapped, _ = encoders.FactorizedEncoder(**ENCODER).apply(variables, jnp.asarray(video), train=False)
    _check_cap_bites([hidden], [uncapped], "encoder")
    _write_case(case, dict(video=video, last_hidden_state=np.asarray(hidden), video_resized=resized,
                           last_hidden_state_resized=np.asarray(hidden_resized)), reference.format("FactorizedEncoder"))

    input_ids = rng.integers(1, VOCAB, (3, 6)).astype(np.int32)
    paddings = np.zeros((3, 6), np.float32)
    paddings[1, 4:] = 1.0
    paddings[2, 2:] = 1.0
    input_ids[paddings == 1] = 0  # the official tokenize_texts pads with 0
    model = encoders.FactorizedVideoCLIP(**LVT, atten_logit_cap=CAP)
    init = model.init(jax.random.PRNGKey(0), jnp.asarray(video), jnp.asarray(input_ids), jnp.asarray(paddings),
                      train=False)
    case = out / "videoprism_official_lvt"
    variables = save_and_load(randomized(init, 2, utils), case / "source" / "flax_lvt_mu_f3r8_repeated.npz", utils)
    inputs = (jnp.asarray(video), jnp.asarray(input_ids), jnp.asarray(paddings))
    video_embeds, text_embeds, _ = model.apply(variables, *inputs, train=False)
    uncapped = encoders.FactorizedVideoCLIP(**LVT).apply(variables, *inputs, train=False)[:2]
    _check_cap_bites([video_embeds, text_embeds], uncapped, "LvT")
    _write_case(case, dict(video=video, input_ids=input_ids, attention_mask=(1 - paddings).astype(np.int32),
                           video_embeds=np.asarray(video_embeds), text_embeds=np.asarray(text_embeds)),
                reference.format("FactorizedVideoCLIP"))
