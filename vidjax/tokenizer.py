"""Tokenizers: a captioner's (Hugging Face tokenizer directories, GPT-2's byte-level BPE, small word-level
vocabularies) and a video-text model's text tower's (VideoPrism's unigram `TextTowerTokenizer`).

`CaptionTokenizer` wraps a `tokenizers.Tokenizer` (the Hugging Face `tokenizers` library, the optional extra
`pip install 'vidjax[caption]'`) together with the ids a captioner needs: start (bos), end (eos), padding (pad) and
unknown (unk). It reads

* a Hugging Face tokenizer directory (`tokenizer.save_pretrained(DIR)`): `tokenizer.json`, or GPT-2's classic
  `vocab.json` + `merges.txt` (byte-level BPE); the special tokens come from `tokenizer_config.json` /
  `special_tokens_map.json` when present, else GPT-2's `<|endoftext|>`, which is then both bos and eos. GPT-2
  has no padding token: pad is eos there, as Hugging Face's `generate` pads (the mask tells padding apart);
* a directory written by `CaptionTokenizer.save` (`tokenizer.json` + `special_tokens.json`, which names the
  special tokens and their ids);

and builds a word-level tokenizer offline from caption text (`build_word_level`): lower-cased, split at whitespace
and punctuation, with distinct special ids `<pad>` = 0, `<bos>` = 1, `<eos>` = 2, `<unk>` = 3 and the words after
them, most frequent first. `encode` gives the plain token ids of a text (no special tokens); `encode_batch_padded`
makes the decoder's training inputs, each caption as [bos] + tokens + [eos], cut to a fixed length and padded.

`TextTowerTokenizer` turns text into a video-text model's input ids exactly as transformers' `VideoPrismTokenizer`
and `VideoPrismProcessor` do (transformers 5.24): it reads the checkpoint's `tokenizer.json` (a T5-style unigram
vocabulary: `<pad>` 0, `</s>` 1, `<unk>` 2, no bos) and rebuilds what `VideoPrismTokenizer` rebuilds from it (the
unigram model with unk id 2, no byte fallback; the file's SentencePiece `Precompiled` normaliser and nothing else;
whitespace split then `\u2581` metaspace before every word; the file's post-processor, which in the published files
appends nothing), so the ids match; texts are padded with `<pad>` to a fixed length (the processor pads to
max_length 64, the published text towers' positions) with an attention mask 1 at tokens. Where the processor cuts
a longer text short, `encode_padded` raises `TextTooLongError` naming the text and the limit: a label or query cut
short would be scored as another text, silently. A checkpoint holding only `spiece.model` is refused with the
command that writes its `tokenizer.json`.

A text tower vidjax trained (`vidjax.tasks.contrastive`) reads its texts as the trainer gave them, and the trainer
reads them through a `TextTowerTokenizer` too, so that the two cannot differ: a unigram vocabulary as the processor
frames it (above: a published tower fine-tuned), any other tokenizer (the word-level one built from the training
captions, saved to WORKDIR/tokenizer; a GPT-2 BPE) as `CaptionTokenizer` frames a caption, [start] + tokens + [end]
(`TextTowerTokenizer.from_caption_tokenizer`). `from_directory` tells the two apart by the file's model.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from vidjax import fileio

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_FILE = "special_tokens.json"  # written by `CaptionTokenizer.save`
GPT2_FILES = ("vocab.json", "merges.txt")
SENTENCEPIECE_FILE = "spiece.model"  # a VideoPrism checkpoint's SentencePiece model, beside its tokenizer.json
# A tokenizer directory's files (`tokenizer.save_pretrained(DIR)`): transformers 5's format (tokenizer.json), the
# classic GPT-2 one (vocab.json + merges.txt), a sentencepiece model (VideoPrism's T5-style tokenizer), and
# `CaptionTokenizer.save`'s special tokens.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   *GPT2_FILES, SENTENCEPIECE_FILE)
_HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # special tokens of a Hugging Face directory
GPT2_END_OF_TEXT = "<|endoftext|>"
# The special tokens of `build_word_level`, in id order: pad = 0, bos = 1, eos = 2, unk = 3.
WORD_LEVEL_SPECIALS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
_ROLES = ("pad", "bos", "eos", "unk")

# VideoPrismTokenizer's layout and pre-tokenisation (transformers 5.24, tokenization_videoprism.py).
TEXT_TOWER_SPECIALS = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
TEXT_TOWER_UNK_ID = 2
METASPACE = "\u2581"


class TokenizerError(ValueError):
    """A tokenizer directory that is missing, incomplete or unreadable, or a tokenizer without the ids it needs."""


class TextTooLongError(ValueError):
    """A text with more tokens than the text tower has positions (`TextTooLongError.text`, `.length`, `.limit`)."""

    def __init__(self, text: str, length: int, limit: int):
        super().__init__(f"{text!r} is {length} tokens, more than the text tower's {limit} positions; shorten it "
                         f"(the processor would cut it to its first {limit} tokens and score another text)")
        self.text, self.length, self.limit = text, length, limit


def _tokenizers():
    """The `tokenizers` module, or an ImportError naming the extra that installs it."""
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError("Tokenizers (a captioner's, a video-text model's) need the Hugging Face `tokenizers` "
                          "library, which is not installed: pip install 'vidjax[caption]'") from err
    return tokenizers


class CaptionTokenizer:
    """A `tokenizers.Tokenizer` with the special ids of caption decoding (see the module docstring).

    Build one with `from_directory`, `build_word_level`, or from a `tokenizers.Tokenizer` and the special token
    strings (`unk` may be None; `pad` None means eos). `bos_id`, `eos_id`, `pad_id` are ints; `unk_id` is an int or
    None. `vocab_size` counts every id, added special tokens included.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos: str, eos: str, pad: str | None = None,
                 unk: str | None = None, where: str = "the tokenizer"):
        self._tokenizer = tokenizer
        self._tokens = {"bos": bos, "eos": eos, "pad": eos if pad is None else pad, "unk": unk}
        ids = {}
        for role, token in self._tokens.items():
            if token is None:
                ids[role] = None
                continue
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise TokenizerError(f"{where}: its {role} token {token!r} is not in the vocabulary; name a token "
                                     "the tokenizer has")
            ids[role] = token_id
        self._ids = ids
        # Registered as special, the tokens are never split when they occur in text, and decode can skip them.
        tokenizer.add_special_tokens([t for t in self._tokens.values() if t is not None])

    # ----------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> CaptionTokenizer:
        """Reads a Hugging Face tokenizer directory or one written by `save` (see the module docstring).

        Raises TokenizerError naming the path when the directory is missing, holds none of the expected files, or
        a file cannot be read; ImportError naming `pip install 'vidjax[caption]'` without the `tokenizers` library.
        """
        tk = _tokenizers()
        directory = fileio.user_path(path)
        expected = f"{TOKENIZER_FILE}, or {' + '.join(GPT2_FILES)} (GPT-2)"
        if not os.path.isdir(directory):
            what = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
            raise TokenizerError(f"tokenizer directory {directory} {what}; pass a directory holding {expected}")
        tokenizer_file = os.path.join(directory, TOKENIZER_FILE)
        vocab_file, merges_file = (os.path.join(directory, name) for name in GPT2_FILES)
        hf_config = _read_hf_config(directory)
        if os.path.isfile(tokenizer_file):
            try:
                tokenizer = tk.Tokenizer.from_file(tokenizer_file)
            except Exception as err:  # the Rust library raises plain Exception on malformed files
                raise TokenizerError(f"{tokenizer_file} is not a readable tokenizer file ({err}); write it with "
                                     "`tokenizer.save_pretrained(DIR)` or CaptionTokenizer.save") from err
        elif os.path.isfile(vocab_file) and os.path.isfile(merges_file):
            tokenizer = _byte_level_bpe(tk, vocab_file, merges_file, bool(hf_config.get("add_prefix_space", False)))
        else:
            present = sorted(os.listdir(directory))
            raise TokenizerError(f"tokenizer directory {directory} holds no tokenizer: expected {expected}, found "
                                 f"{present or 'nothing'}")
        specials_file = os.path.join(directory, SPECIAL_TOKENS_FILE)
        where = f"the tokenizer in {directory}"
        if os.path.isfile(specials_file):
            tokens = _read_saved_specials(specials_file, tokenizer)
        else:
            tokens = {role: _token_text(hf_config.get(f"{role}_token"), directory) for role in _ROLES}
            if tokens["bos"] is None and tokens["eos"] is None and tokenizer.token_to_id(GPT2_END_OF_TEXT) is not None:
                tokens["bos"] = tokens["eos"] = GPT2_END_OF_TEXT
            tokens["bos"] = tokens["bos"] or tokens["eos"]  # GPT-2 style: one end-of-text token starts and ends
            tokens["eos"] = tokens["eos"] or tokens["bos"]
            if tokens["bos"] is None:
                raise TokenizerError(
                    f"{where} names no start / end tokens: expected bos_token and eos_token in "
                    f"{' or '.join(_HF_CONFIG_FILES)}, or GPT-2's {GPT2_END_OF_TEXT} in the vocabulary")
        return cls(tokenizer, **tokens, where=where)

    @classmethod
    def build_word_level(cls, captions: Iterable[str], *, min_frequency: int = 1,
                         max_vocab_size: int | None = None) -> CaptionTokenizer:
        """A word-level tokenizer over the words of `captions`, built offline.

        Text is lower-cased and split at whitespace and punctuation (each run of punctuation is a token). The ids
        are `<pad>` 0, `<bos>` 1, `<eos>` 2, `<unk>` 3, then the words seen at least `min_frequency` times, most
        frequent first (ties in alphabetical order, so the same captions always give the same ids), keeping at most
        `max_vocab_size` ids in all. Words outside the vocabulary encode as `<unk>`.
        """
        tk = _tokenizers()
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        specials = [WORD_LEVEL_SPECIALS[role] for role in _ROLES]
        if max_vocab_size is not None and max_vocab_size <= len(specials):
            raise ValueError(f"max_vocab_size must leave room for words after the {len(specials)} special tokens, "
                             f"got {max_vocab_size}")
        normalizer, pre_tokenizer = tk.normalizers.Lowercase(), tk.pre_tokenizers.Whitespace()
        counts: collections.Counter[str] = collections.Counter()
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"captions must be strings, got {caption!r} of type {type(caption).__name__}")
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)))
        words = sorted((w for w, n in counts.items() if n >= min_frequency and w not in specials),
                       key=lambda w: (-counts[w], w))
        if not words:
            raise ValueError(f"no words to build a vocabulary from (min_frequency={min_frequency}); pass captions")
        if max_vocab_size is not None:
            words = words[: max_vocab_size - len(specials)]
        vocab = {token: i for i, token in enumerate(specials + words)}
        tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token=WORD_LEVEL_SPECIALS["unk"]))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizer
        # Words are joined with single spaces on decode (no decoder): "a dog , runs" for "A dog, runs".
        return cls(tokenizer, **WORD_LEVEL_SPECIALS, where="the word-level tokenizer")

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `tokenizer.json` and `special_tokens.json` (each special token and its id) to `directory`."""
        directory = fileio.user_path(directory)
        with fileio.atomic_output(os.path.join(directory, TOKENIZER_FILE)) as f:
            f.write(self._tokenizer.to_str(pretty=True))
        specials = {role: {"token": self._tokens[role], "id": self._ids[role]} for role in _ROLES}
        with fileio.atomic_output(os.path.join(directory, SPECIAL_TOKENS_FILE)) as f:
            json.dump(specials, f, indent=2)
            f.write("\n")

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included: the size a decoder's output layer needs at least."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    def __repr__(self) -> str:
        return (f"CaptionTokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
                f"pad_id={self.pad_id}, unk_id={self.unk_id})")

    # ---------------------------------------------------------------------------------------- encoding / decoding

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, without start or end tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens (bos, eos, pad, unk and any other the tokenizer marks) are left out
        unless `skip_special_tokens` is False."""
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                      skip_special_tokens=skip_special_tokens)

    def decode_generated(self, ids: np.ndarray, eos_id: int) -> list[str]:
        """The text of each row of generated ids (B, 1 + new tokens): the tokens after the start token, up to the
        first `eos_id` (the decoder's; -1 never stops)."""
        texts = []
        for row in np.asarray(ids)[:, 1:].tolist():
            texts.append(self.decode(row[: row.index(eos_id)] if eos_id in row else row))
        return texts

    def encode_batch_padded(self, texts: Sequence[str], max_length: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decoder inputs for `texts`: each as [bos] + tokens + [eos], cut to `max_length`, padded with pad.

        Returns (ids int32 (n, max_length), mask bool (n, max_length) True at real tokens, truncated bool (n,)
        True where a caption did not fit and lost its end, eos included: such a row ends mid-caption, without an
        eos to learn from, and callers count them to report).
        """
        if isinstance(texts, str):
            raise TypeError(f"texts must be a sequence of strings, got the string {texts!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a start and an end token), got {max_length}")
        # One text at a time: `encode_batch` starts the library's thread pool, and a process that forks after
        # using it (grain's worker processes) has its parallelism disabled with a warning.
        return _cut_and_padded([[self.bos_id, *self.encode(text), self.eos_id] for text in texts], max_length,
                               self.pad_id)


class TextTowerTokenizer:
    """A video-text model's tokenizer: texts -> the text tower's (ids, attention mask), as transformers' VideoPrism
    tokenizer and processor give them, or as vidjax's trainer gave a tower it trained (the module docstring). Build
    one with `from_directory` or `from_caption_tokenizer`."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, pad_id: int, padding_side: str = "right",
                 caption: CaptionTokenizer | None = None, source: str | None = None):
        if padding_side not in ("right", "left"):
            raise TokenizerError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self._tokenizer, self.pad_id, self.padding_side = tokenizer, pad_id, padding_side
        # `caption`: texts framed as a caption, [start] + tokens + [end]; else as the file's post-processor frames them.
        # `source`: the directory the files came from (`save` copies them).
        self._caption, self._source = caption, source

    @classmethod
    def from_caption_tokenizer(cls, tokenizer: CaptionTokenizer, source: str | None = None) -> TextTowerTokenizer:
        """Texts framed as `tokenizer.encode_batch_padded` frames a caption: [start] + tokens + [end], padded with its
        pad id on the right (how `vidjax.tasks.contrastive` trains a text tower on any tokenizer but a unigram one)."""
        return cls(tokenizer.tokenizer, pad_id=tokenizer.pad_id, caption=tokenizer, source=source)

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> TextTowerTokenizer:
        """Reads a checkpoint's tokenizer directory (DST/tokenizer/: tokenizer.json, tokenizer_config.json): a unigram
        vocabulary as VideoPrismTokenizer reads it, any other tokenizer `CaptionTokenizer.from_directory` reads (a
        vidjax run's WORKDIR/tokenizer) framed as a caption (`from_caption_tokenizer`).

        Raises TokenizerError naming the path when the directory or its tokenizer.json is missing (a directory with
        only spiece.model included), or its tokenizer lacks the ids it needs; ImportError naming
        `pip install 'vidjax[caption]'` without the `tokenizers` library."""
        tk = _tokenizers()
        directory = fileio.user_path(path)
        tokenizer_file = os.path.join(directory, TOKENIZER_FILE)
        if not os.path.isfile(tokenizer_file):
            found = sorted(os.listdir(directory)) if os.path.isdir(directory) else "no such directory"
            if isinstance(found, list) and all(os.path.isfile(os.path.join(directory, f)) for f in GPT2_FILES):
                return cls.from_caption_tokenizer(CaptionTokenizer.from_directory(directory), directory)
            spm = (f"; it has {SENTENCEPIECE_FILE} only: write tokenizer.json beside it once with `python -c \"from "
                   f"transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{directory}')"
                   f".save_pretrained('{directory}')\"`" if SENTENCEPIECE_FILE in found else "")
            raise TokenizerError(f"tokenizer directory {directory} holds no {TOKENIZER_FILE} (found "
                                 f"{found or 'nothing'}){spm}")
        spec = _read_json(tokenizer_file)
        model = spec.get("model") or {}
        if model.get("type") != "Unigram":  # a tokenizer vidjax's trainer framed as captions
            return cls.from_caption_tokenizer(CaptionTokenizer.from_directory(directory), directory)
        if not isinstance(model.get("vocab"), list):
            raise TokenizerError(f"{tokenizer_file}: its unigram model has no vocabulary list (model.vocab); write "
                                 f"the file again with `tokenizer.save_pretrained(DIR)`")
        try:
            tokenizer = tk.Tokenizer.from_file(tokenizer_file)  # the added tokens and the post-processor
        except Exception as err:  # the Rust library raises plain Exception on malformed files
            raise TokenizerError(f"{tokenizer_file} is not a readable tokenizer file ({err})") from err
        # What VideoPrismTokenizer.__init__ rebuilds from the file, whatever else the file says.
        tokenizer.model = tk.models.Unigram([(str(p), float(s)) for p, s in model["vocab"]],
                                            unk_id=TEXT_TOWER_UNK_ID, byte_fallback=False)
        charsmap = _precompiled_charsmap(spec.get("normalizer"))
        tokenizer.normalizer = tk.normalizers.Precompiled(charsmap) if charsmap else None
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.WhitespaceSplit(),
            tk.pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)])
        tokenizer.decoder = tk.decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
        # Padding and truncation are the call's (transformers sets them per call): a file may carry a saved call's.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        config = _read_hf_config(directory)
        pad = _token_text(config.get("pad_token"), directory) or TEXT_TOWER_SPECIALS["pad"]
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise TokenizerError(f"the tokenizer in {directory}: its pad token {pad!r} is not in the vocabulary")
        tokenizer.add_special_tokens([t for t in (pad, *TEXT_TOWER_SPECIALS.values())
                                      if tokenizer.token_to_id(t) is not None])
        return cls(tokenizer, pad_id=pad_id, padding_side=str(config.get("padding_side", "right")), source=directory)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the tokenizer to `directory` so that `from_directory` reads the same one back: a caption-framed one
        as `CaptionTokenizer.save` writes it, a unigram one as the tokenizer files it was read from (`TOKENIZER_FILES`,
        each written whole)."""
        directory = fileio.user_path(directory)
        if self._caption is not None:
            self._caption.save(directory)
            return
        if self._source is None:
            raise TokenizerError("this unigram tokenizer was not read from a directory; save the files it came from")
        if os.path.abspath(self._source) == os.path.abspath(directory):
            return
        for name in TOKENIZER_FILES:
            path = os.path.join(self._source, name)
            if os.path.isfile(path):
                with open(path, "rb") as src, fileio.atomic_output(os.path.join(directory, name), "wb") as dst:
                    dst.write(src.read())

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included: the size a text tower's embedding needs at least."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def framing(self) -> str:
        """How texts are framed: "caption" ([start] + tokens + [end]) or "processor" (the file's post-processor)."""
        return "caption" if self._caption is not None else "processor"

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """The ids of `text` before padding: transformers' `tokenizer(text)["input_ids"]`, or [start] + tokens + [end]
        for a caption-framed tokenizer."""
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {text!r} of type {type(text).__name__}")
        if self._caption is not None:
            return [self._caption.bos_id, *self._caption.encode(text), self._caption.eos_id]
        return self._tokenizer.encode(text).ids

    def encode_batch_padded(self, texts: Sequence[str], max_length: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A trainer's inputs for `texts` (`vidjax.tasks.captioning.CaptionFields`): (ids int32 (n, max_length), mask
        bool (n, max_length) True at tokens, truncated bool (n,)), each text's ids cut to `max_length` (a training
        caption is cut and counted, where `encode_padded` refuses a query), padded on the right."""
        if isinstance(texts, str):
            raise TypeError(f"texts must be a sequence of strings, got the string {texts!r}")
        return _cut_and_padded([self.encode(text) for text in texts], max_length, self.pad_id)

    def encode_padded(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 (n, max_length), attention mask int32 (n, max_length), 1 at tokens) of `texts`, padded with
        the pad id as `VideoPrismProcessor` pads to max_length. A text of more than `max_length` tokens raises
        `TextTooLongError` (the processor would cut it short)."""
        if isinstance(texts, str):
            raise TypeError(f"texts must be a sequence of strings, got the string {texts!r}")
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            tokens = self.encode(text)
            if len(tokens) > max_length:
                raise TextTooLongError(text, len(tokens), max_length)
            cols = slice(0, len(tokens)) if self.padding_side == "right" else slice(max_length - len(tokens), None)
            ids[row, cols] = tokens
            mask[row, cols] = 1
        return ids, mask


def _cut_and_padded(rows: list[list[int]], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32 (n, max_length), mask bool True at tokens, truncated bool (n,)) of token id lists, each cut to
    `max_length` and padded with `pad_id` on the right."""
    ids = np.full((len(rows), max_length), pad_id, np.int32)
    mask = np.zeros((len(rows), max_length), bool)
    truncated = np.zeros(len(rows), bool)
    for row, tokens in enumerate(rows):
        truncated[row] = len(tokens) > max_length
        tokens = tokens[:max_length]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
    return ids, mask, truncated


def _precompiled_charsmap(normalizer: dict | None) -> bytes | None:
    """The SentencePiece charsmap of a tokenizer.json's `Precompiled` normaliser (alone or in a Sequence), as
    transformers takes it from the file; None without one."""
    import base64

    if not normalizer:
        return None
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            return base64.b64decode(part["precompiled_charsmap"])
    return None


def _byte_level_bpe(tk, vocab_file: str, merges_file: str, add_prefix_space: bool) -> tokenizers.Tokenizer:
    """GPT-2's tokenizer from its vocab.json + merges.txt, as Hugging Face's GPT2TokenizerFast assembles it."""
    try:
        model = tk.models.BPE.from_file(vocab_file, merges_file)
    except Exception as err:  # the Rust library raises plain Exception on malformed files
        raise TokenizerError(f"{vocab_file} + {merges_file} are not a readable BPE vocabulary ({err}); expected "
                             "GPT-2's vocab.json (token -> id) and merges.txt (one merge 'a b' per line)") from err
    tokenizer = tk.Tokenizer(model)
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise TokenizerError(f"{path} is not readable JSON ({err})") from err
    if not isinstance(value, dict):
        raise TokenizerError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def _read_hf_config(directory: str) -> dict:
    """The settings of a Hugging Face directory's tokenizer_config.json, special_tokens_map.json overriding."""
    config: dict = {}
    for name in _HF_CONFIG_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            config.update({k: v for k, v in _read_json(path).items() if v is not None})
    return config


def _token_text(value: object, directory: str) -> str | None:
    """A special token as Hugging Face writes it: a string, or {"content": string, ...}; None when absent."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value or None
    raise TokenizerError(f"{directory}: a special token is {value!r}; expected a string or {{'content': string}}")


def _read_saved_specials(path: str, tokenizer: tokenizers.Tokenizer) -> dict[str, str | None]:
    """The special tokens of a `special_tokens.json`, each checked against the id it records."""
    saved = _read_json(path)
    tokens = {}
    for role in _ROLES:
        entry = saved.get(role)
        if not isinstance(entry, dict) or "token" not in entry or "id" not in entry:
            raise TokenizerError(f"{path}: expected {{'token': ..., 'id': ...}} for {role!r} (each of {_ROLES}), "
                                 f"got {entry!r}; write the directory with CaptionTokenizer.save")
        token, token_id = entry["token"], entry["id"]
        if token is not None and tokenizer.token_to_id(token) != token_id:
            raise TokenizerError(f"{path}: {role} token {token!r} has id {tokenizer.token_to_id(token)} in "
                                 f"{TOKENIZER_FILE}, but {token_id} here; the two files do not belong together")
        tokens[role] = token
    if tokens["bos"] is None or tokens["eos"] is None:
        raise TokenizerError(f"{path}: bos and eos tokens are required, got {tokens}")
    return tokens
