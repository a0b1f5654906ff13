"""GPT-2: Hugging Face parity (logits, greedy and beam-search tokens), KV-cache decoding, batching and bad inputs.

The fixtures (tests/fixtures/parity/gpt2_*, written by scripts/make_parity_fixtures.py) hold tiny random-weight
`GPT2LMHeadModel`s, with and without cross-attention, their fp32 logits and what `generate` returned for greedy and
3-beam search. Each is converted with vidjax and must agree: logits to 1e-4, tokens exactly.
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
from vidjax.convert import hf_gpt2
from vidjax.convert.common import ConversionError
from vidjax.models import available, decoding, gpt2

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CASES = ("gpt2_lm", "gpt2_cross")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """case -> (converted model, io arrays, case.json), converted once for the module through the generic
    `python -m vidjax.convert` path and loaded with `vidjax.pretrained.load`."""
    out = {}
    for case in CASES:
        dst = tmp_path_factory.mktemp("gpt2") / case
        convert(from_hf=str(FIXTURES / case / "source"), out=str(dst))
        meta = json.loads((FIXTURES / case / "case.json").read_text())
        loaded = pretrained.load(dst)
        assert isinstance(loaded, pretrained.PretrainedText) and loaded.model_name == "gpt2"
        out[case] = (loaded.model, dict(np.load(FIXTURES / case / "io.npz")), meta)
    return out


def _encoder(io):
    return io.get("encoder_hidden_states")


def _assert_same_tokens(got, want, pad):
    """vidjax returns every column up to max_new_tokens; Hugging Face stops once every row has ended."""
    got = np.asarray(got)
    np.testing.assert_array_equal(got[:, : want.shape[1]], want)
    assert (got[:, want.shape[1]:] == pad).all(), got


def test_gpt2_is_a_model_and_decoding_is_not():
    assert "gpt2" in available() and "decoding" not in available()
    from vidjax.bench import step as bench  # it times video models only

    assert "videomae" in bench.video_models() and not {"gpt2", "captioner"} & set(bench.video_models())


@pytest.mark.parametrize("case", CASES)
def test_converted_logits_match_hf(converted, case):
    model, io, meta = converted[case]
    assert (model.eos_token_id, model.pad_token_id) == (meta["eos_token_id"], meta["pad_token_id"])
    assert model.add_cross_attention == (case == "gpt2_cross")
    out = model(jnp.asarray(io["input_ids"]), attention_mask=io["attention_mask"],
                encoder_hidden_states=_encoder(io))
    assert out["logits"].shape == io["logits"].shape
    np.testing.assert_allclose(np.asarray(out["logits"]), io["logits"], rtol=0, atol=1e-4, err_msg=case)


@pytest.mark.parametrize("case", CASES)
def test_greedy_and_beam_search_match_hf_generate(converted, case):
    model, io, meta = converted[case]
    kwargs = dict(prompt_ids=io["prompt_ids"], encoder_hidden_states=_encoder(io),
                  max_new_tokens=meta["max_new_tokens"])
    _assert_same_tokens(decoding.greedy(model, **kwargs), io["greedy_tokens"], meta["pad_token_id"])
    tokens, scores = decoding.beam_search(model, num_beams=meta["num_beams"], length_penalty=meta["length_penalty"],
                                          **kwargs)
    _assert_same_tokens(tokens, io["beam_tokens"], meta["pad_token_id"])
    np.testing.assert_allclose(np.asarray(scores), io["beam_scores"], rtol=0, atol=1e-4)


def test_cached_decoding_equals_the_uncached_forward(converted):
    """Prefill 3 tokens, then one token at a time: every step's logits are the full forward pass's, with some
    encoder tokens masked."""
    model, io, _ = converted["gpt2_cross"]
    ids, enc = jnp.asarray(io["input_ids"]), jnp.asarray(io["encoder_hidden_states"])
    enc_mask = np.ones(enc.shape[:2], bool)
    enc_mask[0, -2:] = False
    full = np.asarray(model(ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask)["logits"])
    cache = model.init_cache(ids.shape[0], ids.shape[1], enc, enc_mask)
    logits, cache = model.prefill(ids[:, :3], cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, :3], rtol=0, atol=1e-5)
    step = jax.jit(model.decode_step)
    for t in range(3, ids.shape[1]):
        logits, cache = step(ids[:, t], cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=0, atol=1e-5, err_msg=f"position {t}")
    assert int(cache.index) == ids.shape[1] == cache.max_length


def test_beam_search_with_one_beam_is_greedy(converted):
    for case in CASES:
        model, io, meta = converted[case]
        kwargs = dict(prompt_ids=io["prompt_ids"], encoder_hidden_states=_encoder(io),
                      max_new_tokens=meta["max_new_tokens"])
        tokens, _ = decoding.beam_search(model, num_beams=1, length_penalty=meta["length_penalty"], **kwargs)
        np.testing.assert_array_equal(np.asarray(tokens), np.asarray(decoding.greedy(model, **kwargs)), err_msg=case)


def test_batched_decoding_equals_one_row_at_a_time(converted):
    """Rows with different encoder states decode in one batch exactly as alone (one row finishes early)."""
    model, io, meta = converted["gpt2_cross"]
    enc, steps = io["encoder_hidden_states"], meta["max_new_tokens"]
    greedy = np.asarray(decoding.greedy(model, encoder_hidden_states=enc, max_new_tokens=steps))
    search = dict(max_new_tokens=steps, num_beams=3, length_penalty=meta["length_penalty"])
    beams, scores = decoding.beam_search(model, encoder_hidden_states=enc, **search)
    assert (greedy[:, 0] == model.bos_token_id).all()
    for row in range(enc.shape[0]):
        alone = decoding.greedy(model, encoder_hidden_states=enc[row:row + 1], max_new_tokens=steps)
        np.testing.assert_array_equal(np.asarray(alone)[0], greedy[row])
        alone, score = decoding.beam_search(model, encoder_hidden_states=enc[row:row + 1], **search)
        np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(beams)[row])
        np.testing.assert_allclose(float(score[0]), float(scores[row]), rtol=0, atol=1e-5)


def test_encoder_states_of_another_width_are_refused(converted):
    model, io, meta = converted["gpt2_cross"]
    wide = np.zeros((2, 6, 48), np.float32)
    with pytest.raises(ValueError, match=r"width 32.*got \(2, 6, 48\), width 48"):
        model(jnp.asarray(io["input_ids"]), encoder_hidden_states=wide)
    with pytest.raises(ValueError, match="width 32"):
        decoding.greedy(model, encoder_hidden_states=wide, max_new_tokens=3)
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        model(jnp.asarray(io["input_ids"]))
    lm, lm_io, _ = converted["gpt2_lm"]
    with pytest.raises(ValueError, match="no cross-attention"):
        lm(jnp.asarray(lm_io["input_ids"]), encoder_hidden_states=io["encoder_hidden_states"])
    with pytest.raises(ValueError, match="exceeds this GPT-2's 32 positions"):
        decoding.greedy(lm, prompt_ids=lm_io["prompt_ids"], max_new_tokens=31)


def test_command_line_and_loader_treat_gpt2_as_a_text_model(tmp_path, capsys):
    """The command prints a text model's summary, refuses frames/size adaptation, and the loaded wrapper's forward
    and generate agree with the NNX model."""
    src = str(FIXTURES / "gpt2_lm" / "source")
    assert main(["--from_hf", src, "--out", str(tmp_path / "lm")]) == 0
    printed = capsys.readouterr().out
    assert "gpt2 (" in printed and "vocabulary 96" in printed and "without cross-attention" in printed
    assert main(["--from_hf", src, "--out", str(tmp_path / "resized"), "--num_frames", "8"]) == 2
    assert "no frame count or image size" in capsys.readouterr().err and not (tmp_path / "resized").exists()
    loaded = pretrained.load(tmp_path / "lm")
    io = dict(np.load(FIXTURES / "gpt2_lm" / "io.npz"))
    np.testing.assert_allclose(np.asarray(loaded(io["input_ids"], io["attention_mask"])), io["logits"], rtol=0,
                               atol=1e-4)
    tokens = loaded.generate(io["prompt_ids"], max_new_tokens=4)
    np.testing.assert_array_equal(tokens, np.asarray(decoding.greedy(loaded.model, prompt_ids=io["prompt_ids"],
                                                                     max_new_tokens=4)))
    assert pretrained.load_for_command(str(tmp_path / "lm")) is None
    assert "text model" in capsys.readouterr().err


def test_conversion_refuses_what_vidjax_does_not_compute():
    with pytest.raises(ConversionError, match="activation_function='relu'"):
        hf_gpt2.model_config({"activation_function": "relu"})
    with pytest.raises(ConversionError, match="tie_word_embeddings"):
        hf_gpt2.model_config({"tie_word_embeddings": False})
    with pytest.raises(ConversionError, match="scale"):
        hf_gpt2.model_config({"scale_attn_by_inverse_layer_idx": True})


@pytest.mark.slow
def test_scanned_rematerialised_blocks_and_dropout():
    """scan_layers + remat compute the unrolled blocks' logits and pass gradients to the encoder states; dropout
    runs only with a key."""
    cfg = gpt2.default_config()
    cfg.update(dict(vocab_size=64, n_positions=16, width=16, depth=2, num_heads=2, add_cross_attention=True,
                    cross_attention_width=24))
    with nnx.use_eager_sharding(False):
        plain = gpt2.Model(cfg, rngs=nnx.Rngs(0))
        cfg.update(dict(scan_layers=True, remat="full"))
        scanned = gpt2.Model(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 5)))
    enc = jax.random.normal(jax.random.key(0), (2, 3, 24))

    @nnx.jit
    def run(plain, scanned, enc):
        loss = lambda e: jnp.sum(scanned(ids, encoder_hidden_states=e)["logits"] ** 2)  # noqa: E731
        dropped = plain(ids, encoder_hidden_states=enc, rng=jax.random.key(1))["logits"]
        return (plain(ids, encoder_hidden_states=enc)["logits"], scanned(ids, encoder_hidden_states=enc)["logits"],
                jax.grad(loss)(enc), dropped)

    want, got, grad, dropped = map(np.asarray, run(plain, scanned, enc))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    assert not np.allclose(dropped, want)
