"""VideoPrism against transformers' VideoPrismClipModel (tests/fixtures/parity/videoprism_clip, made by
scripts/parity/videoprism.py with torch): converted, the video-text model gives transformers' video and text
embeddings and both logits to 1e-4, ranks texts for each video and videos for each text as transformers' logits do,
and carries its tokenizer. The vision, video and classifier cases are checked by tests/test_parity.py, every case's
way back by tests/test_to_hf.py."""

import pathlib

import jax
import numpy as np
import pytest

from vidjax import pretrained
from vidjax.commands.convert import convert
from vidjax.convert.hf import TOKENIZER_DIR
from vidjax.models import videoprism
from vidjax.ops import attention

CASE = pathlib.Path(__file__).parent / "fixtures" / "parity" / "videoprism_clip"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("videoprism") / "clip"
    convert(from_hf=str(CASE / "source"), out=str(out))
    return out, pretrained.load(out), dict(np.load(CASE / "io.npz"))


def test_the_video_text_model_matches_transformers(clip):
    _, model, io = clip
    assert isinstance(model, pretrained.PretrainedVideoText)
    out = model.forward(io["video"], io["input_ids"], io["attention_mask"])
    for name in ("video_embeds", "text_embeds", "logits_per_video", "logits_per_text"):
        assert out[name].shape == io[name].shape, name
        np.testing.assert_allclose(np.asarray(out[name]), io[name], rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["video_embeds"]), axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(io["video"], io["input_ids"], io["attention_mask"])),
                               io["logits_per_video"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model.text_embeddings(io["input_ids"], io["attention_mask"])),
                               io["text_embeds"], rtol=0, atol=1e-4)


def test_zero_shot_ranking_equals_transformers_logits_ranking(clip):
    """Scoring each video against every text by the cosine similarity ranks the texts as transformers'
    logits_per_text (softmax over the texts, per video) does, and the videos for each text as logits_per_video."""
    _, model, io = clip
    similarity = np.asarray(model.forward(io["video"], io["input_ids"], io["attention_mask"])["similarity"])
    for v in range(similarity.shape[0]):
        assert np.argsort(-similarity[v]).tolist() == np.argsort(-io["logits_per_text"][:, v]).tolist()
    for t in range(similarity.shape[1]):
        assert np.argsort(-similarity[:, t]).tolist() == np.argsort(-io["logits_per_video"][:, t]).tolist()


def test_the_tokenizer_travels_with_the_checkpoint(clip):
    out, model, _ = clip
    assert model.tokenizer_dir == out / TOKENIZER_DIR
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / TOKENIZER_DIR / name).read_bytes() == (CASE / "source" / name).read_bytes(), name


def test_text_longer_than_the_tower_and_a_malformed_mask_are_refused(clip):
    _, model, io = clip
    limit = int(model.config.max_text_length)
    with pytest.raises(ValueError, match=f"at most {limit} tokens"):
        model.text_embeddings(np.zeros((1, limit + 1), np.int64))
    with pytest.raises(ValueError, match="attention_mask must be shaped like input_ids"):
        model.forward(io["video"], io["input_ids"], io["attention_mask"][:, :2])


def test_training_keeps_the_text_position_table_fixed(clip):
    _, model, _ = clip
    assert videoprism.frozen_prefixes(model.config) == ("text/position_table",)
    table = np.asarray(model.params["text"]["position_table"])
    np.testing.assert_allclose(table, videoprism.sinusoid_table(*table.shape), atol=1e-5)


@pytest.mark.slow
def test_scanned_blocks_compute_what_unrolled_blocks_do(clip):
    """config.model.scan_layers stacks every stack's blocks (spatial, temporal, auxiliary, text) and scans them: the
    same outputs from the same weights."""
    _, model, io = clip
    from flax import nnx

    from vidjax import platform
    from vidjax.models import ParamKeys, layers

    cfg = model.config.copy_and_resolve_references()
    cfg.scan_layers = True
    with nnx.use_eager_sharding(False):
        scanned = videoprism.Model(platform.resolve(cfg), rngs=ParamKeys(0))
    graphdef, state = nnx.split(scanned)
    params = layers.to_layout(model.params, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    out = nnx.merge(graphdef, state)(io["video"], io["input_ids"], io["attention_mask"])
    np.testing.assert_allclose(np.asarray(out["video_embeds"]), io["video_embeds"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["text_embeds"]), io["text_embeds"], rtol=0, atol=1e-4)


def test_capped_attention_without_a_cap_is_plain_attention_and_the_cap_bounds_the_logits():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 4)) for i in range(3))
    np.testing.assert_allclose(np.asarray(attention.capped_attention(q, k, v)),
                               np.asarray(attention.dot_product_attention(q, k, v, "xla")), atol=1e-5)
    capped = np.asarray(attention.capped_attention(q, k, v, 1e-3))  # logits ~ 0: every key weighs the same
    np.testing.assert_allclose(capped, np.broadcast_to(np.asarray(v).mean(axis=1, keepdims=True), capped.shape),
                               atol=1e-3)
