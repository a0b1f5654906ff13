"""Video captioner: Hugging Face VisionEncoderDecoder parity, visual tokens of every encoder family, chunking,
projection, a frozen encoder, decoding and bad inputs.

The fixtures (tests/fixtures/parity/captioner_*, "kind": "captioner", written by scripts/make_parity_fixtures.py)
hold tiny random-weight `VisionEncoderDecoderModel`s: VideoMAE + GPT-2 of equal widths, and a TimeSformer wider than
its GPT-2 (enc_to_dec_proj), with their logits and what `generate` returned greedily and with 3 beams. Each is
converted by `python -m vidjax.convert` and must agree: logits to 1e-4, tokens exactly.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax import pretrained
from vidjax.commands.convert import convert, main
from vidjax.convert.common import ConversionError, flatten_params
from vidjax.models import captioner, decoding

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(p.name for p in FIXTURES.iterdir()
               if (p / "case.json").is_file() and json.loads((p / "case.json").read_text()).get("kind") == "captioner")
# Tokens per chunk of the tiny encoders below: VideoMAE 2 x 2 x 2 tubelets; the others a CLS token + 2 x 2 x 2.
TOKENS = {"videomae": 8, "timesformer": 9, "vivit": 9, "videomamba": 9}
FRAMES = {"videomae": 4, "timesformer": 2, "vivit": 4, "videomamba": 2}


def tiny(encoder_name: str, **overrides):
    """A captioner config small enough to build and run in a second: 8 px clips, a 16-wide 1-block GPT-2."""
    cfg = captioner.default_config(encoder_name)
    sizes = dict(width=24, depth=1, num_frames=FRAMES[encoder_name], image_size=8)
    if encoder_name == "videomamba":
        cfg.encoder.update(dict(variant="Mu/4", **sizes))
    else:
        cfg.encoder.update(dict(variant="Ti/4x2" if encoder_name == "vivit" else "Ti/4", num_heads=2, mlp_dim=32,
                                **sizes))
    cfg.decoder.update(dict(vocab_size=40, n_positions=16, width=16, depth=1, num_heads=2))
    cfg.update(overrides)
    return cfg


def build(cfg) -> captioner.Model:
    with nnx.use_eager_sharding(False):
        return captioner.Model(cfg, rngs=nnx.Rngs(0))


def abstract(cfg) -> captioner.Model:
    """The model `cfg` builds, with shapes for arrays: its checks run, nothing is computed or compiled."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: captioner.Model(cfg, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case -> (loaded captioner, io arrays, case.json), converted once through the command line."""
    out = {}
    for case in CASES:
        dst = tmp_path_factory.mktemp("captioner") / case
        assert main(["--from_hf", str(FIXTURES / case / "source"), "--out", str(dst)]) == 0
        out[case] = (pretrained.load(dst), dict(np.load(FIXTURES / case / "io.npz")),
                     json.loads((FIXTURES / case / "case.json").read_text()))
    return out


def _assert_same_tokens(got, want, pad):
    """vidjax returns every column up to max_new_tokens; Hugging Face stops once every row has ended."""
    np.testing.assert_array_equal(got[:, : want.shape[1]], want)
    assert (got[:, want.shape[1]:] == pad).all(), got


def test_fixtures_cover_both_layouts():
    assert CASES == ["captioner_videomae_gpt2", "captioner_wide_encoder"]


@pytest.mark.parametrize("case", CASES)
def test_converted_captioner_matches_hf(converted, case):
    model, io, meta = converted[case]
    assert isinstance(model, pretrained.PretrainedCaptioner) and model.task == "captioning"
    cfg = model.config
    assert (cfg.visual_tokens, cfg.num_chunks) == ("all", 1)
    assert (cfg.decoder.bos_token_id, cfg.decoder.eos_token_id, cfg.decoder.pad_token_id) == (
        meta["decoder_start_token_id"], meta["eos_token_id"], meta["pad_token_id"])
    assert ("enc_to_dec_proj" in model.params) == (meta["encoder_width"] != meta["decoder_width"])
    logits = np.asarray(model(io["video"], io["decoder_input_ids"], io["decoder_attention_mask"]))
    assert logits.shape == io["logits"].shape
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=1e-4, err_msg=case)
    steps = meta["max_new_tokens"]
    greedy = model.generate(io["video"], max_new_tokens=steps)
    assert greedy.shape == (io["video"].shape[0], 1 + steps)
    _assert_same_tokens(greedy, io["greedy_tokens"], meta["pad_token_id"])
    beams = model.generate(io["video"], max_new_tokens=steps, num_beams=meta["num_beams"],
                           length_penalty=meta["length_penalty"])
    _assert_same_tokens(beams, io["beam_tokens"], meta["pad_token_id"])


def test_conversion_keeps_preprocessing_and_tokenizer(converted):
    model, _, meta = converted["captioner_videomae_gpt2"]
    assert model.preprocessing["mean"] == [0.5] * 3 and (model.preprocessing["num_frames"],
                                                          model.preprocessing["image_size"]) == (4, 16)
    assert sorted(p.name for p in model.tokenizer_dir.iterdir()) == [
        "merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    stored = pretrained.read_config(model.tokenizer_dir.parent)
    assert (stored.model_name, stored.task, stored.model.encoder_name) == ("captioner", "captioning", "videomae")
    wide, io, _ = converted["captioner_wide_encoder"]
    assert wide.config.encoder_name == "timesformer" and wide.tokenizer_dir is None
    with pytest.raises(ValueError, match="has no tokenizer"):
        wide.caption(io["video"])


def test_caption_text_matches_hf_tokenizer(converted):
    pytest.importorskip("tokenizers")  # vidjax.tokenizer's optional dependency
    model, io, meta = converted["captioner_videomae_gpt2"]
    assert model.caption(io["video"], max_new_tokens=meta["max_new_tokens"]) == meta["captions"]


@pytest.mark.slow
def test_generate_with_one_beam_is_greedy(converted):
    model, io, meta = converted["captioner_wide_encoder"]
    net = model.model
    tokens, mask = net.encode(jnp.asarray(io["video"]))
    beam, _ = decoding.beam_search(net.decoder, num_beams=1, max_new_tokens=meta["max_new_tokens"],
                                   encoder_hidden_states=tokens, encoder_attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(beam), model.generate(io["video"], max_new_tokens=meta["max_new_tokens"]))


def test_bad_inputs_are_named(converted, tmp_path):
    model, io, _ = converted["captioner_wide_encoder"]
    with pytest.raises(ValueError, match=r"\(batch, 4, 16, 16, 3\) channels-last"):
        model(io["video"][:, :2], io["decoder_input_ids"])
    with pytest.raises(ValueError, match="one row per video"):
        model(io["video"], io["decoder_input_ids"][:1])
    with pytest.raises(ConversionError, match="no frame count or image size"):
        convert(from_hf=str(FIXTURES / "captioner_wide_encoder" / "source"), out=str(tmp_path / "x"), num_frames=8)
    assert not (tmp_path / "x").exists()


def test_unsupported_encoder_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    config = json.loads((FIXTURES / "captioner_wide_encoder" / "source" / "config.json").read_text())
    config["encoder"]["model_type"] = "vivit"
    (src / "config.json").write_text(json.dumps(config))
    (src / "model.safetensors").symlink_to(FIXTURES / "captioner_wide_encoder" / "source" / "model.safetensors")
    with pytest.raises(ConversionError, match="'vivit' encoder.*videomae or timesformer"):
        convert(from_hf=str(src), out=str(tmp_path / "out"))


@pytest.mark.parametrize("encoder_name", captioner.ENCODERS)
def test_visual_token_shapes_of_every_encoder(encoder_name):
    """Two chunks of each family's tiny clip: "all" gives every token of both chunks, "cls" and "pooled" one per
    chunk; all projected to the decoder's 16 wide cross-attention (traced only, nothing compiled)."""
    video = jax.ShapeDtypeStruct((2, 2 * FRAMES[encoder_name], 8, 8, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((2, 5), jnp.int32)
    modes = [("all", "weights"), ("pooled", "weights"), ("pooled", "scorer")]
    modes += [("cls", "weights")] if encoder_name != "videomae" else []
    for visual_tokens, pool in modes:
        cfg = tiny(encoder_name, visual_tokens=visual_tokens, pool=pool, num_chunks=2)
        graphdef, state = nnx.split(abstract(cfg))
        out = jax.eval_shape(lambda s, v, i, g=graphdef: nnx.merge(g, s)(v, i), state, video, ids)
        per_chunk = TOKENS[encoder_name] if visual_tokens == "all" else 1
        assert out["visual_tokens"].shape == (2, 2 * per_chunk, 16), (visual_tokens, pool)
        assert out["logits"].shape == (2, 5, 40)
        keys = flatten_params(nnx.to_pure_dict(state))
        assert ("pool_weights" in keys) == (visual_tokens == "pooled" and pool == "weights")
        assert any(k.startswith("pool_scorer/") for k in keys) == (visual_tokens == "pooled" and pool == "scorer")
        if pool == "weights" and visual_tokens == "pooled":
            assert keys["pool_weights"].shape == (TOKENS[encoder_name],)


def test_videomae_has_no_cls_token_and_other_bad_configs():
    with pytest.raises(ValueError, match="config.model.visual_tokens='cls'.*videomae encoder has no CLS token"):
        abstract(tiny("videomae", visual_tokens="cls"))
    with pytest.raises(ValueError, match="config.model.encoder.head='classification'"):
        cfg = tiny("timesformer")
        cfg.encoder.head = "classification"
        abstract(cfg)
    with pytest.raises(ValueError, match="config.model.num_chunks=0"):
        abstract(tiny("timesformer", num_chunks=0))
    with pytest.raises(ValueError, match="config.model.encoder_name='gpt2'"):
        captioner.default_config("gpt2")


def test_projection_settings():
    """A width mismatch without a projection is an error at construction (nothing compiled) naming the flag and
    both widths; 'auto' projects only when the widths differ, 'linear' always."""
    with pytest.raises(ValueError, match=r"config.model.projection='none'.*width 24.*width 16"):
        abstract(tiny("videomae", projection="none"))
    same = tiny("videomae", projection="none")
    same.decoder.cross_attention_width = 24  # the decoder reads the encoder's width directly
    model = abstract(same)
    assert model.enc_to_dec_proj is None and model.decoder.blocks[0].crossattention.kv.shape[0] == 24
    assert abstract(tiny("videomae")).enc_to_dec_proj.kernel.shape == (24, 16)
    equal = tiny("videomae")
    equal.decoder.update(dict(width=24, num_heads=2))
    assert abstract(equal).enc_to_dec_proj is None
    equal.projection = "linear"
    assert abstract(equal).enc_to_dec_proj.kernel.shape == (24, 24)


@pytest.mark.parametrize("encoder_name,visual_tokens", [("videomae", "all"), ("timesformer", "cls"),
                                                        ("timesformer", "pooled")])
def test_chunks_are_encoded_separately_and_concatenated(encoder_name, visual_tokens):
    cfg = tiny(encoder_name, visual_tokens=visual_tokens, pool="scorer", num_chunks=3)
    chunked = build(cfg)
    cfg.num_chunks = 1
    single = build(cfg)
    nnx.update(single, nnx.state(chunked))  # same parameters (num_chunks changes no shape)
    t = FRAMES[encoder_name]
    video = jax.random.normal(jax.random.key(1), (2, 3 * t, 8, 8, 3))
    encode = nnx.jit(lambda model, video: model.encode(video))
    tokens, mask = encode(chunked, video)
    parts = [encode(single, video[:, i * t:(i + 1) * t])[0] for i in range(3)]
    np.testing.assert_allclose(np.asarray(tokens), np.asarray(jnp.concatenate(parts, axis=1)), rtol=0, atol=1e-5)
    assert tokens.shape == (2, chunked.tokens_per_clip, chunked.token_width) and chunked.encoder_width == 24
    assert mask.shape == tokens.shape[:2] and bool(mask.all())
    assert not np.allclose(np.asarray(parts[0]), np.asarray(parts[1]))  # the chunks do differ
    with pytest.raises(ValueError, match=r"3 chunk\(s\) \(config.model.num_chunks\)"):
        chunked.encode(video[:, :t])


def test_frozen_encoder_gets_zero_gradient():
    video = jax.random.normal(jax.random.key(2), (2, 4, 8, 8, 3))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 5)))

    def loss(model):
        return jnp.mean(jax.nn.log_softmax(model(video, ids, rng=jax.random.key(3))["logits"])[..., 0])

    def grads(freeze: bool) -> dict[str, np.ndarray]:
        model = build(tiny("videomae", visual_tokens="pooled", freeze_encoder=freeze))
        grad = nnx.jit(nnx.grad(loss))(model)
        return {k: np.asarray(v) for k, v in flatten_params(nnx.to_pure_dict(grad)).items()}

    assert captioner.frozen_prefixes(tiny("videomae", freeze_encoder=True)) == ("encoder",)
    assert captioner.frozen_prefixes(tiny("videomae")) == ()
    frozen, trained = grads(True), grads(False)
    encoder = [k for k in frozen if k.startswith(captioner.ENCODER + "/")]
    assert encoder and all(not frozen[k].any() for k in encoder)
    assert any(trained[k].any() for k in encoder)
    for part in ("pool_weights", "enc_to_dec_proj/kernel", "decoder/wte"):
        assert frozen[part].any(), part


def test_decoder_starts_from_a_converted_gpt2(tmp_path):
    """`pretrained.init_from` fills the captioner's decoder subtree from a converted GPT-2 with cross-attention."""
    convert(from_hf=str(FIXTURES / "gpt2_cross" / "source"), out=str(tmp_path / "gpt2"))
    cfg = tiny("videomae")
    cfg.decoder = pretrained.read_config(tmp_path / "gpt2").model
    model = build(cfg)
    params = nnx.to_pure_dict(nnx.state(model))
    decoder, report = pretrained.init_from(tmp_path / "gpt2", "gpt2", cfg.decoder, params["decoder"])
    assert report["loaded"] and not report["fresh"] and not report["unused"]
    reference = pretrained.load(tmp_path / "gpt2").params
    np.testing.assert_array_equal(np.asarray(decoder["wte"]), np.asarray(reference["wte"]))
