"""Tests for the caption data: the embedded dataset's captioning variant, vidjax.tokenizer, and caption columns of the
CSV and Charades sources."""

import hashlib
import json
import os
import pickle
import re
import sys

import grain
import numpy as np
import pytest
import tokenizers

from vidjax.data import synthetic
from vidjax.data.sources import CharadesSource, CsvVideoSource
from vidjax.data.synthetic import (
    CAPTION_TEMPLATES,
    CaptionFacts,
    SyntheticVideoSource,
    caption_corpus,
    caption_texts,
    caption_vocabulary,
    direction_name,
)
from vidjax.tokenizer import GPT2_END_OF_TEXT, CaptionTokenizer, TokenizerError

# ---------------------------------------------------------------------------------------------------------------
# The embedded dataset's captioning variant.


def _captioning(num_examples=48, **kwargs):
    kwargs = dict(num_frames=6, height=32, width=32) | kwargs
    return SyntheticVideoSource(num_examples, variant="captions", **kwargs)


def test_captioning_elements():
    source = _captioning(num_classes=8)
    assert repr(source) == ("SyntheticVideoSource(num_examples=48, num_frames=6, height=32, width=32, num_classes=8, "
                            "seed=0, split='train', variant='captions')")
    assert source.class_names == synthetic.class_names(8) and source.target_names is None
    for index in (0, 13, 47):
        element = source[index]
        assert list(element) == ["video", "label", "captions", "index"]
        assert element["video"].shape == (6, 32, 32, 3) and element["video"].dtype == np.uint8
        assert element["label"].dtype == np.int32 and element["label"] == index % 8
        assert element["index"].dtype == np.int64 and element["index"] == index
        captions = element["captions"]
        assert isinstance(captions, tuple) and len(captions) == len(CAPTION_TEMPLATES)
        assert all(isinstance(c, str) and c == " ".join(c.split()) for c in captions)
        assert len(set(captions)) == len(captions)


def test_captioning_is_deterministic():
    a, b = _captioning(seed=3), _captioning(seed=3)
    first = a[7]
    a[2], a[30]  # other elements in between change nothing
    for element in (a[7], b[7], pickle.loads(pickle.dumps(a))[7], grain.MapDataset.source(b)[7]):
        np.testing.assert_array_equal(element["video"], first["video"])
        assert element["captions"] == first["captions"] and element["label"] == first["label"]
    others = [_captioning(seed=4)[7], _captioning(seed=3, split="validation")[7]]
    assert all(not np.array_equal(o["video"], first["video"]) for o in others)
    # Pinned, so that a change to the variant's clips or words is deliberate.
    assert first["captions"][0] == "a large green diamond moves down and to the right slowly over diagonal stripes"
    assert _digest(first["video"]) == "a058302a4580fb09"


def _stripes_from_pixels(frame: np.ndarray) -> str:
    """The background grating's orientation from how the frame changes across (x) and down (y) the image."""
    grey = frame.astype(np.float32).sum(axis=-1)
    across = np.median(np.abs(np.diff(grey, axis=1)))
    down = np.median(np.abs(np.diff(grey, axis=0)))
    ratio = np.log((across + 1) / (down + 1))
    return "vertical" if ratio > 0.9 else "horizontal" if ratio < -0.9 else "diagonal"


# Independent of the module's tables: the name of each RGB-cube corner, and the distance whose ball is each shape.
_CORNER_NAMES = {(0, 0, 0): "black", (1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
                 (1, 0, 1): "magenta", (0, 1, 1): "cyan", (1, 1, 1): "white"}
_SHAPE_NORMS = {"disc": lambda dy, dx: np.hypot(dy, dx), "square": np.maximum,
                "diamond": lambda dy, dx: (dy + dx) / np.sqrt(np.pi / 2)}  # a diamond with the disc's area


def _shape_and_area_from_pixels(frame: np.ndarray, obj) -> tuple[str, int]:
    """The shape whose ideal mask best overlaps the pixels of the object's colour around its centre, and their count."""
    side = frame.shape[0]
    k = int(np.ceil(1.5 * obj.radius + 2))
    rows = int(np.floor(obj.start_y)) + np.arange(-k, k + 1)
    cols = int(np.floor(obj.start_x)) + np.arange(-k, k + 1)
    dy = np.abs(rows + 0.5 - obj.start_y)[:, None]
    dx = np.abs(cols + 0.5 - obj.start_x)[None, :]
    patch = frame[np.ix_(rows % side, cols % side)].astype(np.float32)
    observed = (np.abs(patch - obj.colour) < 60).all(axis=-1)
    overlap = {}
    for name, norm in _SHAPE_NORMS.items():
        ideal = norm(dy, dx) <= obj.radius
        overlap[name] = (ideal & observed).sum() / (ideal | observed).sum()
    return max(overlap, key=overlap.get), int(observed.sum())


@pytest.mark.parametrize("num_classes", [8, 4])
def test_captions_are_true_of_the_clip(monkeypatch, num_classes):
    """Every word of the captions is checked against what the generator drew and what the pixels show."""
    drawn = []
    draw = SyntheticVideoSource._draw_object

    def recording_draw(self, video, obj):
        drawn.append(obj)
        draw(self, video, obj)

    monkeypatch.setattr(SyntheticVideoSource, "_draw_object", recording_draw)
    side, frames = 64, np.arange(4)
    source = _captioning(64, num_frames=len(frames), height=side, width=side, num_classes=num_classes, seed=1)
    seen = {key: set() for key in CaptionFacts._fields}
    for index in range(len(source)):
        drawn.clear()
        element = source[index]
        (obj,) = drawn
        video, label = element["video"], int(element["label"])
        assert label == index % num_classes

        # Direction: the drawn velocity points exactly at the label's angle, which direction_name names.
        angle = np.degrees(np.arctan2(obj.velocity_y, obj.velocity_x)) % 360
        np.testing.assert_allclose(angle, 360 * label / num_classes, atol=1e-6)
        # Speed, in bands with a gap: 0.05-0.085 or 0.10-0.135 of the side per frame.
        speed = np.hypot(obj.velocity_x, obj.velocity_y) / side
        assert 0.05 <= speed <= 0.085 or 0.10 <= speed <= 0.135, speed
        # Size: radius 0.07-0.09 or 0.12-0.14 of the side; on the pixels, under 150 or over 180 pixels of its colour.
        size = obj.radius / side
        shape, area = _shape_and_area_from_pixels(video[0], obj)
        assert (0.07 <= size <= 0.09 and area < 150) or (0.12 <= size <= 0.14 and area > 180), (size, area)
        # Colour: the pixel under the object's centre, in every frame, is near one corner of the RGB cube (the
        # centre moves with the drawn velocity, so this also checks the object is where the motion says).
        rows = np.floor(obj.start_y - obj.velocity_y * frames).astype(int) % side
        cols = np.floor(obj.start_x + obj.velocity_x * frames).astype(int) % side
        centre = video[frames, rows, cols].astype(int)
        corner = (centre > 127).all(axis=0)
        assert ((centre > 200) | (centre < 30)).all() and (corner == (centre > 127)).all(), centre

        facts = CaptionFacts(direction=direction_name(label, num_classes),
                             speed="slowly" if speed < 0.09 else "quickly", size="small" if size < 0.1 else "large",
                             colour=_CORNER_NAMES[tuple(corner.astype(int).tolist())], shape=shape,
                             stripes=_stripes_from_pixels(video[0]))
        assert element["captions"] == caption_texts(facts), index
        for key, value in facts._asdict().items():
            seen[key].add(value)
    # The clips show every direction, both speeds and sizes, all shapes and stripe orientations, most colours.
    assert len(seen["direction"]) == num_classes
    assert len(seen["speed"]) == len(seen["size"]) == 2
    assert len(seen["shape"]) == 3 and len(seen["stripes"]) == 3 and len(seen["colour"]) >= 6


def test_caption_text_and_direction_names():
    facts = CaptionFacts("up and to the left", "quickly", "small", "red", "disc", "diagonal")
    captions = caption_texts(facts)
    assert captions[0] == "a small red disc moves up and to the left quickly over diagonal stripes"
    assert "a fast small red disc moving up and to the left" in captions[1]
    for caption in captions:
        for word in ("small", "red", "disc", "up and to the left", "diagonal stripes"):
            assert word in caption
        assert "quickly" in caption or "fast" in caption
    assert [direction_name(k, 8) for k in range(8)] == [
        "right", "up and to the right", "up", "up and to the left", "left", "down and to the left", "down",
        "down and to the right"]
    assert [direction_name(k, 4) for k in range(4)] == ["right", "up", "left", "down"]
    assert [direction_name(k, 2) for k in range(2)] == ["right", "left"] and direction_name(0, 1) == "right"
    # The captions' directions follow the classification scheme's class names.
    assert synthetic.class_names(8)[3] == "move_up_left"
    with pytest.raises(ValueError, match=r"label must be in \[0, 7\], got 8"):
        direction_name(8, 8)
    with pytest.raises(ValueError, match=r"num_classes in \(1, 2, 4, 8\).*got 16"):
        direction_name(0, 16)


def test_caption_corpus_and_vocabulary():
    corpus = caption_corpus()
    # 8 directions x 2 speeds x 2 sizes x 8 colours x 3 shapes x 3 stripe names, one sentence per template.
    assert len(corpus) == len(set(corpus)) == 8 * 2 * 2 * 8 * 3 * 3 * len(CAPTION_TEMPLATES)
    assert set(caption_corpus(4)) < set(corpus)
    source = _captioning(24, seed=9)
    assert all(set(source[i]["captions"]) <= set(corpus) for i in range(len(source)))
    vocabulary = caption_vocabulary()
    assert vocabulary == sorted({word for caption in corpus for word in caption.split()})
    assert len(vocabulary) < 50 and {"red", "diagonal", "quickly", "diamond", "left"} <= set(vocabulary)
    with pytest.raises(ValueError, match="num_classes in"):
        caption_corpus(3)


@pytest.mark.parametrize("num_classes", [3, 16, 32])
def test_captioning_needs_nameable_directions(num_classes):
    with pytest.raises(ValueError, match=rf"needs num_classes in \(1, 2, 4, 8\).*got {num_classes}"):
        SyntheticVideoSource(4, variant="captions", num_classes=num_classes)


# The other variants are pinned to their bytes as they were before the captioning variant existed (classification's
# pins are in tests/test_synthetic.py): (variant, kwargs, index, video digest, video sum, target digest).
_VARIANT_PINS = [
    ("labels", dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 0,
     "2b077ccb9a5d8299", 1287461, "d341569bfd40cfec"),
    ("labels", dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 9,
     "4bd088084f76115d", 1500775, "e9f23c2166fe683f"),
    ("labels", dict(num_examples=40, num_frames=3, height=17, width=23, num_classes=32, seed=5,
                        split="validation"), 38, "89bace53b85fc828", 402863, "595959f9d853f474"),
    ("targets", dict(num_examples=10, num_frames=4, height=32, width=32), 5,
     "bcc061f4985d6fef", 1675957, "6f3e8b1f97950594"),
    ("targets", dict(num_examples=5, num_frames=16, height=112, width=112, seed=2, split="test"), 4,
     "80a9080e39b91fc9", 78394053, "4028aabae9732858"),
    ("label", dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 3,
     "2a5c033f472bc24e", 1708640, "9d9f290527a6be62"),
]


def _digest(array) -> str:
    return hashlib.sha256(np.asarray(array).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("variant, kwargs, index, video_digest, total, target_digest", _VARIANT_PINS)
def test_other_variants_are_unchanged(variant, kwargs, index, video_digest, total, target_digest):
    source = SyntheticVideoSource(**kwargs, variant=variant)
    element = source[index]
    target = variant  # a variant is named by the target it carries
    assert list(element) == ["video", target, "index"]
    assert _digest(element["video"]) == video_digest and int(element["video"].sum(dtype=np.int64)) == total
    assert _digest(element[target]) == target_digest
    suffix = "" if variant == "label" else f", variant={variant!r}"
    assert repr(source).endswith(f"split={kwargs.get('split', 'train')!r}{suffix})")


# ---------------------------------------------------------------------------------------------------------------
# vidjax.tokenizer.

SENTENCES = [
    "A man rides a horse on the beach.",
    "Two dogs run in a park!",
    "A woman is slicing an onion in the kitchen.",
    "the cat sits on the mat, then it sleeps",
]


@pytest.fixture(scope="module")
def word_level():
    return CaptionTokenizer.build_word_level(caption_corpus())


def test_word_level_ids_and_round_trip(word_level):
    tok = word_level
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + len(caption_vocabulary())
    assert [tok.tokenizer.id_to_token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    for caption in caption_corpus()[::997]:
        ids = tok.encode(caption)
        assert len(ids) == len(caption.split()) and min(ids) >= 4
        assert tok.decode(ids) == caption
    # Lower-cased, split at punctuation; unknown words become <unk>, which decode leaves out unless asked.
    ids = tok.encode("A Small RED disc, moving zebra-like")
    assert tok.decode(ids) == "a small red disc moving"
    assert tok.decode(ids, skip_special_tokens=False) == "a small red disc <unk> moving <unk> <unk> <unk>"
    assert tok.decode(np.asarray([tok.bos_id, *tok.encode("red disc"), tok.eos_id, tok.pad_id])) == "red disc"
    assert tok.encode("") == []


def test_word_level_is_deterministic_and_bounded():
    forward = CaptionTokenizer.build_word_level(SENTENCES)
    backward = CaptionTokenizer.build_word_level([s.upper() for s in reversed(SENTENCES)])
    assert forward.tokenizer.get_vocab() == backward.tokenizer.get_vocab()
    vocab = forward.tokenizer.get_vocab()
    # Most frequent first ("a" and "the" 4 times, then ".", "in", "on" twice), ties alphabetically.
    assert [vocab[w] for w in ("a", "the", ".", "in", "on")] == [4, 5, 6, 7, 8]
    assert vocab[","] < forward.vocab_size and vocab["!"] < forward.vocab_size
    small = CaptionTokenizer.build_word_level(SENTENCES, max_vocab_size=8)
    assert small.vocab_size == 8 and small.encode("a zebra") == [4, small.unk_id]
    assert CaptionTokenizer.build_word_level(SENTENCES, min_frequency=2).vocab_size == 4 + 5
    with pytest.raises(ValueError, match="max_vocab_size must leave room"):
        CaptionTokenizer.build_word_level(SENTENCES, max_vocab_size=4)
    with pytest.raises(ValueError, match="no words"):
        CaptionTokenizer.build_word_level(["", "  "])
    with pytest.raises(TypeError, match="captions must be strings"):
        CaptionTokenizer.build_word_level([b"bytes"])


def test_encode_batch_padded(word_level):
    tok = word_level
    texts = ["a red disc", "a small red disc moves up", "a small red disc moves up and to the left quickly", ""]
    ids, mask, truncated = tok.encode_batch_padded(texts, max_length=8)
    assert ids.shape == mask.shape == (4, 8) and truncated.shape == (4,)
    assert ids.dtype == np.int32 and mask.dtype == bool and truncated.dtype == bool
    red_disc = tok.encode("a red disc")
    assert ids[0].tolist() == [tok.bos_id, *red_disc, tok.eos_id] + [tok.pad_id] * 3
    assert mask[0].tolist() == [True] * 5 + [False] * 3
    # Exactly filling max_length (1 + 6 + 1) is not a truncation; a longer caption is cut and loses its eos.
    assert mask[1].all() and ids[1, -1] == tok.eos_id and not truncated[1]
    assert mask[2].all() and tok.eos_id not in ids[2].tolist() and truncated[2]
    assert ids[2].tolist() == [tok.bos_id, *tok.encode(texts[2])[:7]]
    assert ids[3].tolist()[:3] == [tok.bos_id, tok.eos_id, tok.pad_id] and mask[3].sum() == 2
    assert truncated.tolist() == [False, False, True, False] and int(truncated.sum()) == 1
    empty = tok.encode_batch_padded([], max_length=5)
    assert empty[0].shape == (0, 5)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tok.encode_batch_padded(["a"], max_length=1)
    with pytest.raises(TypeError, match="sequence of strings"):
        tok.encode_batch_padded("a red disc", max_length=8)


def test_save_and_load_round_trip(tmp_path, word_level):
    target = tmp_path / "tok"
    word_level.save(target)
    assert sorted(os.listdir(target)) == ["special_tokens.json", "tokenizer.json"]
    saved = json.loads((target / "special_tokens.json").read_text())
    assert saved["bos"] == {"token": "<bos>", "id": 1} and saved["pad"] == {"token": "<pad>", "id": 0}
    loaded = CaptionTokenizer.from_directory(target)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.unk_id) == (0, 1, 2, 3)
    assert loaded.tokenizer.get_vocab() == word_level.tokenizer.get_vocab()
    text = "The LARGE cyan diamond moves down, slowly"
    assert loaded.encode(text) == word_level.encode(text)
    assert loaded.decode(loaded.encode(text)) == word_level.decode(word_level.encode(text))
    restored = pickle.loads(pickle.dumps(loaded))  # grain workers receive it pickled
    assert restored.encode(text) == loaded.encode(text) and restored.eos_id == 2
    # The special ids must be those of the tokenizer file they sit beside.
    saved["eos"]["id"] = 7
    (target / "special_tokens.json").write_text(json.dumps(saved))
    with pytest.raises(TokenizerError, match=r"eos token '<eos>' has id 2 in tokenizer.json, but 7 here"):
        CaptionTokenizer.from_directory(target)


def _gpt2_directory(path, config=None):
    """A tiny GPT-2 style directory: byte-level BPE trained here, saved as vocab.json + merges.txt."""
    trained = tokenizers.ByteLevelBPETokenizer()
    trained.train_from_iterator(SENTENCES * 3, vocab_size=300, min_frequency=2, special_tokens=[GPT2_END_OF_TEXT],
                                show_progress=False)
    path.mkdir()
    trained.save_model(str(path))
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return trained


def test_gpt2_style_directory(tmp_path):
    trained = _gpt2_directory(tmp_path / "gpt2")
    assert sorted(os.listdir(tmp_path / "gpt2")) == ["merges.txt", "vocab.json"]
    tok = CaptionTokenizer.from_directory(tmp_path / "gpt2")
    end = trained.token_to_id(GPT2_END_OF_TEXT)
    # GPT-2: one <|endoftext|> starts and ends a caption, and pads (the mask tells padding apart).
    assert tok.bos_id == tok.eos_id == tok.pad_id == end == 0
    assert tok.vocab_size == trained.get_vocab_size()
    for text in SENTENCES + ["An unseen Sentence, with Ünïcode 🙂 and  double  spaces."]:
        ids = tok.encode(text)
        assert ids == trained.encode(text).ids
        assert tok.decode(ids) == text
    # Merges were learned: a frequent word is one token, with GPT-2's leading-space marker.
    assert tok.encode("the cat") == [trained.token_to_id("the"), trained.token_to_id("\u0120cat")]
    ids, mask, truncated = tok.encode_batch_padded(["Two dogs", "A man rides a horse on the beach."], 6)
    assert ids[0, 0] == end and ids[0, mask[0].sum() - 1] == end and (ids[0, ~mask[0]] == end).all()
    assert truncated.tolist() == [False, True]
    assert tok.decode(ids[0]) == "Two dogs"


def test_gpt2_special_tokens_from_config_and_tokenizer_json(tmp_path):
    # A tokenizer_config.json as `save_pretrained` writes it, special tokens as strings or {"content": ...}.
    config = {"bos_token": {"content": GPT2_END_OF_TEXT, "special": True}, "eos_token": GPT2_END_OF_TEXT,
              "pad_token": None, "unk_token": GPT2_END_OF_TEXT, "tokenizer_class": "GPT2Tokenizer"}
    trained = _gpt2_directory(tmp_path / "classic", config)
    classic = CaptionTokenizer.from_directory(tmp_path / "classic")
    assert classic.bos_id == classic.eos_id == classic.pad_id == classic.unk_id == 0
    # The same tokenizer as tokenizer.json (transformers' fast format) reads to the same ids.
    (tmp_path / "fast").mkdir()
    trained.save(str(tmp_path / "fast" / "tokenizer.json"))
    (tmp_path / "fast" / "tokenizer_config.json").write_text(json.dumps(config))
    fast = CaptionTokenizer.from_directory(str(tmp_path / "fast"))
    for text in SENTENCES:
        assert fast.encode(text) == classic.encode(text)
        assert fast.decode(fast.encode(text)) == text
    # A pad token of its own, named in the config, is used.
    padded = tmp_path / "padded"
    _gpt2_directory(padded, config | {"pad_token": "!"})
    tok = CaptionTokenizer.from_directory(padded)
    assert tok.pad_id == tok.tokenizer.token_to_id("!") != tok.eos_id


def _raises_naming(path, message):
    """pytest.raises(TokenizerError) whose message starts at `path` and goes on with the regex `message`."""
    return pytest.raises(TokenizerError, match=re.escape(str(path)) + message)


def test_directory_errors(tmp_path):
    expected = r"tokenizer.json, or vocab.json \+ merges.txt"
    with _raises_naming(tmp_path / "nowhere", f" does not exist; pass a directory holding {expected}"):
        CaptionTokenizer.from_directory(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with _raises_naming(tmp_path / "file", " is a file, not a directory"):
        CaptionTokenizer.from_directory(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "vocab.json").write_text("{}")  # half of GPT-2's pair is not a tokenizer
    with _raises_naming(empty, rf" holds no tokenizer: expected {expected} \(GPT-2\), found \['vocab.json'\]"):
        CaptionTokenizer.from_directory(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with _raises_naming(broken / "tokenizer.json", " is not a readable tokenizer file"):
        CaptionTokenizer.from_directory(broken)
    bad_bpe = tmp_path / "bad_bpe"
    bad_bpe.mkdir()
    (bad_bpe / "vocab.json").write_text('["not", "a", "mapping"]')
    (bad_bpe / "merges.txt").write_text("#version: 0.2\n")
    with _raises_naming(bad_bpe / "vocab.json", r" \+ .*merges.txt are not a readable BPE vocabulary"):
        CaptionTokenizer.from_directory(bad_bpe)
    bad_config = tmp_path / "bad_config"
    _gpt2_directory(bad_config)
    (bad_config / "tokenizer_config.json").write_text("{oops")
    with _raises_naming(bad_config / "tokenizer_config.json", " is not readable JSON"):
        CaptionTokenizer.from_directory(bad_config)
    (bad_config / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nothere|>"}))
    with _raises_naming(bad_config, r": its bos token '<\|nothere\|>' is not in the vocabulary"):
        CaptionTokenizer.from_directory(bad_config)


def test_tokenizer_without_special_tokens_is_an_error(tmp_path):
    plain = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    (tmp_path / "plain").mkdir()
    plain.save(str(tmp_path / "plain" / "tokenizer.json"))
    with pytest.raises(TokenizerError, match=r"names no start / end tokens: expected bos_token and eos_token in "
                                             r"tokenizer_config.json or special_tokens_map.json"):
        CaptionTokenizer.from_directory(tmp_path / "plain")


def test_missing_tokenizers_library_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'vidjax\[caption\]'"):
        CaptionTokenizer.from_directory(tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'vidjax\[caption\]'"):
        CaptionTokenizer.build_word_level(SENTENCES)


# ---------------------------------------------------------------------------------------------------------------
# Caption columns of the CSV and Charades sources.


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (root / name).write_bytes(b"\0")
    return root


def test_csv_caption_column(tmp_path, videos):
    listing = tmp_path / "captions.csv"
    listing.write_text('path,label,Caption\n'
                       'a.mp4,0,"A dog runs.; a dog is running ;;"\n'
                       'b.mp4,1,  one caption only  \n'
                       'c.mp4,1,"several\n lines; kept"\n')
    source = CsvVideoSource(listing, root=videos, caption_column="caption")
    assert len(source) == 3 and source.num_classes == 2
    first = source[0]
    assert set(first) == {"path", "index", "label", "captions"}
    assert first["captions"] == ("A dog runs.", "a dog is running") and first["label"] == 0
    assert source[1]["captions"] == ("one caption only",)
    assert source[2]["captions"] == ("several lines", "kept")
    assert pickle.loads(pickle.dumps(source))[0]["captions"] == first["captions"]
    assert repr(source) == (f"CsvVideoSource(csv_path={str(listing)!r}, root={str(videos)!r}, "
                            f"caption_column='caption', len=3)")
    # Without caption_column the same list reads as before: no captions, the repr it always had.
    plain = CsvVideoSource(listing, root=videos)
    assert "captions" not in plain[0]
    assert repr(plain) == f"CsvVideoSource(csv_path={str(listing)!r}, root={str(videos)!r}, len=3)"


def test_csv_captions_without_labels_and_missing_videos(tmp_path, videos):
    listing = tmp_path / "captions.csv"
    listing.write_text("path,caption\na.mp4,first video\ngone.mp4,never read\nc.mp4,third; 3rd\n")
    source = CsvVideoSource(listing, root=videos, caption_column="caption", skip_missing=True)
    assert [source[i]["captions"] for i in range(len(source))] == [("first video",), ("third", "3rd")]
    assert source[1]["path"].endswith("c.mp4") and source.num_classes is None
    with pytest.raises(ValueError, match="no 'label' or 'labels' column"):
        CsvVideoSource(listing, root=videos, skip_missing=True)


@pytest.mark.parametrize("cell", ['""', '" ; ;"', "   "])
def test_csv_empty_caption_names_file_and_line(tmp_path, videos, cell):
    listing = tmp_path / "captions.csv"
    listing.write_text(f"path,caption\na.mp4,fine\n\nb.mp4,{cell}\n")
    with pytest.raises(ValueError, match=r"captions.csv:4: empty caption in column 'caption'"):
        CsvVideoSource(listing, root=videos, caption_column="caption")


def test_csv_missing_caption_column(tmp_path, videos):
    listing = tmp_path / "labels.csv"
    listing.write_text("path,label,text\na.mp4,0,a dog\n")
    with pytest.raises(ValueError, match=r"labels.csv:1: the caption column 'caption' is not in the header; its "
                                         r"columns are \['path', 'label', 'text'\]"):
        CsvVideoSource(listing, root=videos, caption_column="caption")
    assert CsvVideoSource(listing, root=videos, caption_column="text")[0]["captions"] == ("a dog",)
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match="spaced.txt: captions need a comma-separated list with a header"):
        CsvVideoSource(spaced, root=videos, caption_column="caption")
    with pytest.raises(ValueError, match="caption_column must name a column"):
        CsvVideoSource(listing, root=videos, caption_column=" ")


CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def _charades(path, rows):
    """A Charades CSV of (id, script, descriptions, actions) rows."""
    path.write_text(CHARADES_HEADER + "".join(f'{vid},HR43,Kitchen,6,7,Yes,"{script}",food,"{desc}",{acts},9.0\n'
                                              for vid, script, desc, acts in rows))
    return path


def test_charades_script_and_descriptions(tmp_path):
    root = tmp_path / "Charades"
    root.mkdir()
    for vid in ("AAAAA", "BBBBB"):
        (root / f"{vid}.mp4").write_bytes(b"\0")
    listing = _charades(tmp_path / "Charades_v1_train.csv", [
        ("AAAAA", "A person cooks; then\nsits down.", "A person cooks food.;Someone sits on a chair. ;", "c001 0 1"),
        ("BBBBB", "A person laughs.", "Someone laughs at a phone", ""),
    ])
    script = CharadesSource(listing, root, caption_column="script")
    assert script[0]["captions"] == ("A person cooks; then sits down.",)  # the script is one reference
    assert script[1]["captions"] == ("A person laughs.",)
    descriptions = CharadesSource(listing, root, caption_column="descriptions")
    assert descriptions[0]["captions"] == ("A person cooks food.", "Someone sits on a chair.")
    assert descriptions[1]["captions"] == ("Someone laughs at a phone",)
    first = descriptions[0]
    assert set(first) == {"path", "index", "labels", "spans", "captions"} and first["labels"][1] == 1
    assert repr(descriptions).endswith("num_classes=157, caption_column='descriptions', len=2)")
    plain = CharadesSource(listing, root)
    assert "captions" not in plain[0]
    assert repr(plain) == f"CharadesSource(csv_path={str(listing)!r}, root={str(root)!r}, num_classes=157, len=2)"


def test_charades_caption_errors(tmp_path):
    listing = _charades(tmp_path / "ch.csv", [("AAAAA", "cooks", "desc", ""), ("BBBBB", "laughs", " ; ", "")])
    with pytest.raises(ValueError, match=r"ch.csv:3: empty caption in column 'descriptions'"):
        CharadesSource(listing, tmp_path, caption_column="descriptions")
    no_script = tmp_path / "no_script.csv"
    no_script.write_text("id,actions,descriptions\nAAAAA,,a person\n")
    with pytest.raises(ValueError, match=r"no_script.csv:1: the caption column 'script' is not in the header; its "
                                         r"columns are \['id', 'actions', 'descriptions'\]"):
        CharadesSource(no_script, tmp_path, caption_column="script")
    with pytest.raises(ValueError, match=r"caption_column must be one of \('script', 'descriptions'\)"):
        CharadesSource(listing, tmp_path, caption_column="caption")
