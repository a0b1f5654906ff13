"""Parity fixtures for VideoPrism: tiny random-weight transformers VideoPrism models and their outputs.

`videoprism_vision`: `VideoPrismVisionModel`'s last hidden state and its pre-norm spatial and temporal states, with
the attention logits capped at 2 (so the tanh bites: the random logits reach several units).
`videoprism_video`: `VideoPrismVideoModel`: the auxiliary blocks' output and the pooled, L2-normalised video
embeddings (transformers' pooler_output is (B, 1, D) and the classifier's logits (B, 1, classes): the query axis is
kept; vidjax's are (B, D) and (B, classes), stored so here).
`videoprism_classification`: `VideoPrismForVideoClassification`'s logits and the encoder's last hidden state, without
q/k/v biases, with another LayerNorm eps and two temporal blocks.
`videoprism_clip`: `VideoPrismClipModel` on 2 videos and 4 texts (`TEXTS`, stored as "texts"), tokenised by a small
`VideoPrismTokenizer` (a 40-id unigram vocabulary) with VideoPrismProcessor's text settings (padded to max_length,
here the tower's 8 positions): the ids and mask, video and text embeddings and both logits; its folder holds the
tokenizer (tokenizer.json), which travels with the conversion.

Every weight is random (norms' stored gamma - 1 around 0 and biases around 0, at 0.2 N(0, 1)), so no mapping mistake
hides behind zeros or ones. Run through scripts/make_parity_fixtures.py (needs torch and transformers);
tests/test_parity.py checks the first three, tests/test_videoprism.py the clip model.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import (
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismForVideoClassification,
    VideoPrismProcessor,
    VideoPrismTokenizer,
    VideoPrismVideoModel,
    VideoPrismVisionConfig,
    VideoPrismVisionModel,
)

BATCH, FRAMES, SIZE, PATCH = 2, 3, 24, 8
VISION = dict(image_size=SIZE, num_frames=FRAMES, tubelet_size=[1, PATCH, PATCH], hidden_size=32,
              num_attention_heads=2, intermediate_size=48, num_spatial_layers=2, num_temporal_layers=1,
              num_auxiliary_layers=1)
TEXT = dict(vocab_size=40, hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=2,
            max_position_embeddings=8)
# The clip case's tokenizer pieces ("\u2581" starts a word) and texts: whole words, a word spelt from pieces
# ("running"), a plural, and an upper-case letter the vocabulary lacks (<unk>); each fits the tower's 8 positions.
PIECES = ("\u2581a", "\u2581video", "\u2581of", "\u2581cat", "\u2581dog", "\u2581person", "\u2581play", "ing",
          "\u2581guitar", "\u2581the", "\u2581run", "\u2581red", "\u2581ball", "\u2581in", "\u2581pool",
          "\u2581swim", "\u2581", "s", "n", "m", "a", "c", "d", "e", "g", "i", "l", "o", "p", "r", "t", "u", "v", "y",
          "h")
TEXTS = ("a video of a cat", "a dog running", "cats", "A person playing the guitar")


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def write_case(out: pathlib.Path, name: str, model, arrays: dict, kind: str) -> pathlib.Path:
    case = out / name
    model.save_pretrained(case / "source")
    np.savez(case / "io.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    # "kind" "video": checked by tests/test_parity.py; "videoprism" (token ids among the inputs): by
    # tests/test_videoprism.py; the source's way back (`export --to_hf`) by tests/test_to_hf.py
    (case / "case.json").write_text(json.dumps(dict(
        convert="hf", kind=kind, reference=f"{type(model).__name__}, transformers {transformers.__version__}, "
                                           f"torch {torch.__version__}, random weights"), indent=1))
    return case


def _videos(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # channels-last -> transformers' (B, T, C, H, W)


def make(out: pathlib.Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    video = rng.random((BATCH, FRAMES, SIZE, SIZE, 3)).astype(np.float32)  # pixels in [0, 1], as VideoPrism reads

    model = VideoPrismVisionModel(VideoPrismVisionConfig(**VISION, attn_logit_softcapping=2.0)).eval()
    randomize(model, 1)
    with torch.no_grad():
        o = model(_videos(video))
    write_case(out, "videoprism_vision", model, dict(
        video=video, last_hidden_state=o.last_hidden_state.numpy(),
        last_spatial_hidden_state=o.last_spatial_hidden_state.numpy(),
        last_temporal_hidden_state=o.last_temporal_hidden_state.numpy()), "video")

    model = VideoPrismVideoModel(VideoPrismVisionConfig(**VISION)).eval()
    randomize(model, 2)
    with torch.no_grad():
        o = model(_videos(video))
    write_case(out, "videoprism_video", model, dict(video=video, last_hidden_state=o.last_hidden_state.numpy(),
                                                    video_embeds=o.pooler_output[:, 0].numpy()), "video")

    labels = {i: f"action_{i}" for i in range(5)}
    config = VideoPrismVisionConfig(**dict(VISION, num_temporal_layers=2), qkv_bias=False, layer_norm_eps=1e-5,
                                    num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = VideoPrismForVideoClassification(config).eval()
    randomize(model, 3)
    with torch.no_grad():
        logits = model(_videos(video)).logits[:, 0]  # transformers' are (B, 1, num_labels)
        hidden = model.vision_model(_videos(video)).last_hidden_state
    write_case(out, "videoprism_classification", model, dict(video=video, logits=logits.numpy(),
                                                             last_hidden_state=hidden.numpy()), "video")

    config = VideoPrismConfig(vision_config=dict(VISION, attn_logit_softcapping=3.0),
                              text_config=dict(TEXT, attn_logit_softcapping=3.0))
    model = VideoPrismClipModel(config).eval()
    randomize(model, 4)
    tokenizer = VideoPrismTokenizer(vocab=clip_vocab(), extra_ids=2)
    # VideoPrismProcessor's text settings (pad to max_length, truncate), at the tiny tower's length.
    text = tokenizer(list(TEXTS), return_tensors="np",
                     **dict(VideoPrismProcessor.text_kwargs, max_length=TEXT["max_position_embeddings"]))
    input_ids, attention_mask = text["input_ids"], text["attention_mask"]
    with torch.no_grad():
        o = model(_videos(video), torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    case = write_case(out, "videoprism_clip", model, dict(
        video=video, texts=np.array(TEXTS), input_ids=input_ids, attention_mask=attention_mask,
        video_embeds=o.video_embeds.numpy(), text_embeds=o.text_embeds.numpy(),
        logits_per_video=o.logits_per_video.numpy(), logits_per_text=o.logits_per_text.numpy()), "videoprism")
    tokenizer.save_pretrained(case / "source")


def clip_vocab() -> list[tuple[str, float]]:
    """A small unigram vocabulary in VideoPrismTokenizer's layout: <pad> 0, </s> 1, <unk> 2, the pieces, then the
    extra ids in reverse; 40 ids, the tiny text tower's vocab_size. Single characters score lower than words, so
    words win where both spell a text."""
    pieces = [(w, -1.0 - 0.1 * i - (3.0 if len(w.strip("\u2581")) <= 1 else 0.0)) for i, w in enumerate(PIECES)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<extra_id_1>", 0.0), ("<extra_id_0>", 0.0)]
    assert len(vocab) == TEXT["vocab_size"], len(vocab)
    return vocab
