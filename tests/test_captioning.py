"""The captioning task: what a batch carries, the teacher-forced loss, frames spread over a whole video, and every
bad input stopped at start-up with a message naming its flag or file, before anything is compiled or written.
(That configs/captioning_charades.py:runlocal learns is tests/test_recipe_videomae_finetune_learns.py's.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from vidjax import config_lib, tasks, train
from vidjax.config_lib import ConfigError
from vidjax.data import decode, pipeline, synthetic
from vidjax.models import captioner
from vidjax.tasks import captioning
from vidjax.tokenizer import CaptionTokenizer


def tiny_config(**data):
    """The runlocal captioning recipe shrunk: 1-block encoder and decoder 32 wide, 4 x 32 x 32 clips, batch 8."""
    config = load_config("captioning_charades", "runlocal")
    config.needs_init_from = ""
    config.model.encoder.update(width=32, depth=1, num_heads=2, num_frames=4)
    config.model.decoder.update(width=32, depth=1, num_heads=2)
    config.data = config_lib.synthetic_data(num_frames=4, image_size=32, num_train=64, num_eval=16)
    config.data.update(synthetic_task="captions", **data)
    config.batch_size, config.total_steps = 8, 2
    return config


def write_list(tmp_path, rows, header="path,caption"):
    """A CSV list of (dummy) video files: start-up reads lists and checks files exist, but decodes nothing."""
    for row in rows:
        (tmp_path / row.split(",")[0]).write_bytes(b"not decoded at start-up")
    path = tmp_path / "list.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def csv_config(tmp_path, rows, header="path,caption", caption_column="caption"):
    config = tiny_config()
    listed = write_list(tmp_path, rows, header)
    config.data.update(source="csv", train_csv=listed, eval_csv=listed, root=str(tmp_path),
                       caption_column=caption_column)
    return config


BAD_INPUTS = {
    "missing tokenizer directory": (
        lambda tmp: tiny_config(tokenizer=str(tmp / "no_such_tokenizer")), "config.data.tokenizer="),
    "empty tokenizer directory": (
        lambda tmp: (tmp / "empty").mkdir() or tiny_config(tokenizer=str(tmp / "empty")), "config.data.tokenizer="),
    "caption column not in the list": (
        lambda tmp: csv_config(tmp, [f"v{i}.mp4,3" for i in range(8)], header="path,label"),
        r"(?s)list.csv.*caption column 'caption' is not in the header.*config.data.train_csv"),
    "empty caption": (
        lambda tmp: csv_config(tmp, [f"v{i}.mp4,a cat sits" for i in range(7)] + ["v7.mp4, ;  "]),
        r"list.csv:9: empty caption in column 'caption'"),
    "no caption column set": (
        lambda tmp: csv_config(tmp, [f"v{i}.mp4,a cat sits" for i in range(8)], caption_column=""),
        r"--config.data.caption_column"),
    "width mismatch without a projection": (
        lambda tmp: _mismatched(), r"projection='none'.*width 32.*width 48"),
    "decoder vocabulary smaller than the tokenizer": (
        lambda tmp: _small_vocabulary(), r"vocab_size=10 is smaller than the tokenizer's \d+ tokens"),
    "a model that is not a captioner": (
        lambda tmp: _not_a_captioner(), r"--config.model_name=captioner"),
}


def _mismatched():
    config = tiny_config()
    config.model.projection = "none"
    config.model.decoder.width = 48
    return config


def _small_vocabulary():
    config = tiny_config()
    config.model.decoder.vocab_size = 10
    return config


def _not_a_captioner():
    config = load_config("videomae_finetune_k400", "runlocal")
    config.task, config.data.synthetic_task, config.needs_init_from = "captioning", "captions", ""
    return config


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_config_error_before_anything_is_built(tmp_path, case, monkeypatch):
    make, message = BAD_INPUTS[case]
    config = make(tmp_path)
    compiled = []
    monkeypatch.setattr(train, "build", lambda *a, **k: compiled.append(1))
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "work"), devices=jax.devices()[:1])
    assert not compiled and not (tmp_path / "work").exists()


def test_decoder_follows_the_tokenizer():
    config, source, _, _ = train.prepare(tiny_config(), devices=jax.devices()[:1])
    tok = captioning.tokenizer_for(config, source)
    assert tok.vocab_size == len(synthetic.caption_vocabulary()) + 4  # the words and <pad> <bos> <eos> <unk>
    decoder = config.model.decoder
    assert (decoder.vocab_size, decoder.pad_token_id, decoder.bos_token_id, decoder.eos_token_id) == (
        tok.vocab_size, 0, 1, 2)
    # A special id the command line sets is kept.
    chosen, _, _, _ = train.prepare(tiny_config(), {"model.decoder.eos_token_id"}, devices=jax.devices()[:1])
    assert chosen.model.decoder.eos_token_id == 50256


def test_caption_fields_pick_a_reference_per_visit_and_flag_truncation():
    tok = CaptionTokenizer.build_word_level(["a red disc moves up", "the disc is red", "short"])
    fields = captioning.CaptionFields(tok, max_length=8)
    element = {"captions": ("a red disc moves up", "the disc is red", "short")}
    rng = np.random.default_rng(0)
    seen = {tok.decode(fields(element, rng)["caption_ids"]) for _ in range(40)}
    assert seen == set(element["captions"])
    first = fields(element, None)  # evaluation: always the first reference
    assert first["caption_ids"].tolist() == [1, *tok.encode("a red disc moves up"), 2, 0]
    assert first["caption_mask"].tolist() == [True] * 7 + [False] and not first["caption_truncated"]
    cut = captioning.CaptionFields(tok, max_length=4)(element, None)
    assert cut["caption_truncated"] and cut["caption_mask"].all() and 2 not in cut["caption_ids"].tolist()


def test_training_batches_carry_token_ids_and_no_strings():
    config, source, _, _ = train.prepare(tiny_config(), devices=jax.devices()[:1])
    spec = tasks.training_of(config.task).input_spec(config)
    batch = next(iter(pipeline.make_dataset(config, "train", source, spec)))
    assert set(batch) == {"video", "label", "index", "caption_ids", "caption_mask", "caption_truncated",
                          "decode_failures"}
    assert batch["caption_ids"].shape == (8, config.caption.max_length) and batch["caption_ids"].dtype == np.int32
    assert (batch["caption_ids"][:, 0] == 1).all() and not batch["caption_truncated"].any()
    tok = captioning.tokenizer_for(config, source)
    for row, ids in zip(batch["index"], batch["caption_ids"], strict=True):
        assert tok.decode(ids) in source[int(row)]["captions"]


def test_loss_is_the_mean_over_real_next_tokens():
    config, source, _, _ = train.prepare(tiny_config(), devices=jax.devices()[:1])
    with nnx.use_eager_sharding(False):
        model = captioner.Model(config.model, rngs=nnx.Rngs(0))
    spec = tasks.training_of(config.task).input_spec(config)
    batch = next(iter(pipeline.make_dataset(config, "train", source, spec)))
    batch = dict(batch, video=jnp.asarray(batch["video"], jnp.float32) / 255.0)
    loss, aux = tasks.training_of("captioning").loss_fn(config)(model, batch, None)

    ids, mask = batch["caption_ids"], batch["caption_mask"]
    logits = model(batch["video"], jnp.asarray(ids[:, :-1]), attention_mask=jnp.asarray(mask[:, :-1]))["logits"]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
    picked = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:]  # every real next token, the end token included; no padding
    np.testing.assert_allclose(loss, -(picked * weights).sum() / weights.sum(), rtol=1e-5)
    predicted = logp.argmax(-1) == ids[:, 1:]
    np.testing.assert_allclose(aux["token_accuracy"], (predicted * weights).sum() / weights.sum(), rtol=1e-6)

    # Whatever sits at padded positions changes nothing.
    noisy = np.where(mask, ids, 7).astype(np.int32)
    again, _ = tasks.training_of("captioning").loss_fn(config)(model, dict(batch, caption_ids=noisy), None)
    np.testing.assert_allclose(again, loss, rtol=1e-6)


def test_sampling_rate_zero_spreads_frames_over_the_video():
    middle = decode.sample_indices(100, 4, 0, None)
    assert middle.tolist() == [12, 37, 62, 87]  # the middle of each quarter
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = decode.sample_indices(100, 4, 0, rng)
        assert all(25 * i <= f < 25 * (i + 1) for i, f in enumerate(drawn))
    assert decode.sample_indices(3, 4, 0, None).tolist() == [0, 1, 1, 2]  # short videos repeat frames
    with pytest.raises(ValueError, match="sampling_rate >= 0"):
        decode.sample_indices(100, 4, -1, None)
