"""The image teachers (`vidjax.models.image_encoder`): CLIP and SigLIP vision towers converted from transformers equal
it (scripts/parity/clip.py's fixtures: last hidden state, pooled output, the summary's attention over the patches,
CLIP's projected embeddings, to 1e-4), and at another resolution their position tables resized as transformers'
`interpolate_pos_encoding` resizes them; run frame by frame over a clip they give each frame's image outputs; the
targets a distillation reads come from the last blocks; the conversion's text tower is left out in one line.
Default tier."""

import json
import logging
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vidjax import pretrained
from vidjax.commands.convert import convert
from vidjax.convert import hf
from vidjax.convert.common import read_safetensors
from vidjax.models import image_encoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(p.name for p in FIXTURES.iterdir()
               if (p / "case.json").is_file() and json.loads((p / "case.json").read_text()).get("kind") == "image")


def converted(case: str, tmp_path: pathlib.Path):
    convert(from_hf=str(FIXTURES / case / "source"), out=str(tmp_path / "converted"))
    return pretrained.load(tmp_path / "converted")


def test_every_teacher_has_fixtures():
    assert CASES == ["clip_model", "clip_siglip_vision", "clip_vision"]


@pytest.mark.parametrize("case", CASES)
def test_converted_towers_equal_transformers(case, tmp_path):
    loaded = converted(case, tmp_path)
    io = dict(np.load(FIXTURES / case / "io.npz"))
    outputs = jax.jit(lambda p, x: nnx.merge(loaded.graphdef, p).images(x))(loaded.params, io["images"])
    expected = {k: v for k, v in io.items() if k != "images" and not k.endswith(RESIZED)}
    assert {"last_hidden_state", "pooler_output", "attention"} <= set(expected)
    for name, want in expected.items():
        got = np.asarray(outputs[name])
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"{case}: {name}")
    # SigLIP's probe attends over the patches alone; CLIP's class token over [class, patches], the class dropped.
    total = np.asarray(outputs["attention"]).sum(-1)
    assert np.allclose(total, 1.0, atol=1e-5) if "siglip" in case else np.all(total < 1.0)


RESIZED = "_48"  # scripts/parity/clip.py: outputs for 48 px images, the 32 px towers' tables interpolated


@pytest.mark.parametrize("case", [c for c in CASES if f"images{RESIZED}" in np.load(FIXTURES / c / "io.npz")])
def test_a_tower_converted_for_another_resolution_equals_transformers_interpolated_tables(case, tmp_path):
    """`convert --image_size=48` (and a teacher's config.model.teacher.image_size, through the same resize) gives
    what transformers computes with interpolate_pos_encoding=True: the table's patch rows resized bicubically."""
    convert(from_hf=str(FIXTURES / case / "source"), out=str(tmp_path / "converted"), image_size=48)
    loaded = pretrained.load(tmp_path / "converted")
    assert loaded.config.image_size == 48
    io = dict(np.load(FIXTURES / case / "io.npz"))
    outputs = jax.jit(lambda p, x: nnx.merge(loaded.graphdef, p).images(x))(loaded.params, io[f"images{RESIZED}"])
    for name in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(np.asarray(outputs[name]), io[name + RESIZED], rtol=0, atol=1e-4,
                                   err_msg=f"{case}: {name} at 48 px")
    with pytest.raises(Exception, match="not a multiple of the patch 8"):
        convert(from_hf=str(FIXTURES / case / "source"), out=str(tmp_path / "odd"), image_size=44)
    assert not (tmp_path / "odd").exists()


def test_a_whole_clip_model_gives_its_vision_tower_and_says_the_text_tower_is_left_out(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vidjax.convert.hf_clip"):
        result = hf.convert_hf_dir(FIXTURES / "clip_model" / "source")
    assert result.model_name == "image_encoder" and result.model_config.projection_dim == 24
    assert any("text tower" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    assert not any("were not used" in r.getMessage() for r in caplog.records)
    assert result.preprocessing["mean"] == list(image_encoder.CLIP_MEAN)


def tiny(kind: str, **overrides) -> ml_collections.ConfigDict:
    cfg = image_encoder.default_config()
    cfg.update(dict(kind=kind, variant="Mu/8", width=16, depth=2, num_heads=2, mlp_dim=24, image_size=16,
                    num_frames=3, ln_eps=1e-5 if kind == "clip" else 1e-6, **overrides))
    return cfg


@pytest.mark.parametrize("kind", image_encoder.KINDS)
def test_a_clip_is_encoded_frame_by_frame(kind):
    """The clip's tokens are each frame's patch tokens after the final LayerNorm; the classifier's logits come from the
    frames' mean pooled output; the distillation targets of the last block are those tokens (projected, where the
    tower projects), and its attention is each frame's own."""
    with nnx.use_eager_sharding(False):
        model = image_encoder.Model(tiny(kind, head="classification", num_classes=5,
                                         projection_dim=12 if kind == "clip" else 0), rngs=nnx.Rngs(0))
    video = jax.random.normal(jax.random.key(1), (2, 3, 16, 16, 3))
    out = model(video)
    frames = model.images(video.reshape(6, 16, 16, 3))
    start = 1 if kind == "clip" else 0
    tokens = frames["last_hidden_state"][:, start:]
    if kind == "clip":
        tokens = model.post_norm(tokens)
    np.testing.assert_allclose(out["last_hidden_state"], tokens.reshape(2, 12, 16), atol=1e-5)
    head = model.head(frames["pooler_output"].reshape(2, 3, 16).mean(axis=1))
    np.testing.assert_allclose(out["logits"], head, atol=1e-5)
    targets, attention = model.layer_targets(video, 2)
    assert targets.shape == (2, 2, 12, 12 if kind == "clip" else 16) and attention.shape == (2, 3, 4)
    last = tokens if model.projection is None else model.projection(tokens)
    np.testing.assert_allclose(targets[-1], last.reshape(2, 12, -1), atol=1e-5)
    np.testing.assert_allclose(attention, frames["attention"].reshape(2, 3, 4), atol=1e-6)
    with pytest.raises(ValueError, match="num_layers=3 must be between 1 and the encoder's 2 blocks"):
        model.layer_targets(video, 3)


@pytest.mark.parametrize("case", CASES)
def test_the_way_back_to_transformers_gives_the_same_tensors(case, tmp_path):
    """`export --to_hf`'s table (the same as the conversion's): every tensor of the vision tower back under
    transformers' names (the layout the Hub's checkpoints have, `vision_model.`, which transformers 4 and 5 load),
    and its config.json sizes."""
    first = hf.convert_hf_dir(FIXTURES / case / "source")
    checkpoint = hf.to_hf(first)
    hf.write_hf_dir(checkpoint, first.preprocessing, tmp_path / "hf")
    source = read_safetensors(FIXTURES / case / "source" / "model.safetensors")
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    vision = {("" if name.startswith("vision_model.") or name == "visual_projection.weight" else "vision_model.")
              + name: value for name, value in source.items()
              if not name.startswith(("text_model.", "text_projection", "logit_scale"))}
    assert sorted(exported) == sorted(vision)
    for name, value in vision.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = hf.convert_hf_dir(tmp_path / "hf")
    assert again.model_config.to_dict() == first.model_config.to_dict()
    np.testing.assert_allclose(again.preprocessing["std"], first.preprocessing["std"])


def test_a_siglip_without_its_pooling_head_is_refused(tmp_path):
    source = FIXTURES / "clip_siglip_vision" / "source"
    folder = tmp_path / "headless"
    folder.mkdir()
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, vision_use_head=False)))
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    with pytest.raises(hf.ConversionError, match="no pooling head"):
        hf.convert_hf_dir(folder)


def test_extract_reads_a_converted_tower_as_a_frame_wise_video_encoder(tmp_path, capsys):
    """`python -m vidjax.extract` on a converted CLIP: each video's feature is the mean of its frames' patch tokens
    after the final LayerNorm, the frames read at the converted clip's spec."""
    from test_predict import make_clip

    from vidjax.commands import extract

    convert(from_hf=str(FIXTURES / "clip_vision" / "source"), out=str(tmp_path / "clip"))
    (tmp_path / "videos" / "walk").mkdir(parents=True)
    video = make_clip(tmp_path / "videos" / "walk" / "a.mp4", seed=3, num_frames=40)
    out = tmp_path / "features.npz"
    assert extract.main([f"--checkpoint={tmp_path / 'clip'}", f"--out={out}", "--batch_size=1",
                         f"--folder={tmp_path / 'videos'}"]) == 0
    with np.load(out) as data:
        features = data["features"]
    model = pretrained.load(tmp_path / "clip")
    clip = model.preprocess(model.read_views(video))
    tokens = np.asarray(model.model(clip)["last_hidden_state"])
    assert features.shape == (1, 32) and tokens.shape == (1, 8 * 16, 32)  # 8 frames x (32 px / patch 8)^2
    np.testing.assert_allclose(features[0], tokens.mean(axis=1)[0], atol=1e-5)
