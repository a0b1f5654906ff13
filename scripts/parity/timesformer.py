"""Parity fixtures for TimeSformer: tiny random-weight Hugging Face models and their fp32 outputs.

One case per attention type of `TimesformerForVideoClassification`, each with a different hidden_act/eps so the
converter's mapping of both is exercised, plus one `TimesformerModel` (no head). Every weight is randomised,
including LayerNorms, biases, the time table and the zero-initialised temporal_dense, so a mapping mistake cannot
hide behind zeros or ones.

space_only: the Hugging Face port runs each frame as its own sequence and returns (B*T, ...) outputs; vidjax
follows the official code, which averages the frames' token sequences before the final norm. That case's
reference therefore runs HF's embeddings and encoder, then the official average, then HF's layernorm and
classifier (all HF weights, only the pooling is the official one).

Run through scripts/make_parity_fixtures.py (needs torch and transformers).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

BATCH = 2
CASES = {
    # case name: (architecture, attention_type, hidden_act, layer_norm_eps)
    "timesformer_divided": ("TimesformerForVideoClassification", "divided_space_time", "gelu", 1e-6),
    "timesformer_joint": ("TimesformerForVideoClassification", "joint_space_time", "gelu_pytorch_tanh", 1e-5),
    "timesformer_space_only": ("TimesformerForVideoClassification", "space_only", "gelu_new", 1e-12),
    "timesformer_model_divided": ("TimesformerModel", "divided_space_time", "gelu", 1e-6),
}


def _randomise(model, torch) -> None:
    for name, param in model.named_parameters():
        noise = torch.randn_like(param)
        if "layernorm" in name and name.endswith("weight"):
            param.data = 1.0 + 0.2 * noise
        elif name.endswith(("cls_token", "position_embeddings", "time_embeddings")):
            param.data = 0.5 * noise
        else:
            param.data = 0.2 * noise


def make(out_dir: pathlib.Path) -> None:
    import torch
    import transformers

    out_dir = pathlib.Path(out_dir)
    for index, (case, (architecture, attention_type, act, eps)) in enumerate(CASES.items()):
        torch.manual_seed(index)
        config = transformers.TimesformerConfig(
            image_size=32, patch_size=8, num_channels=3, num_frames=4, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, hidden_act=act, layer_norm_eps=eps,
            attention_type=attention_type, qkv_bias=True, num_labels=5,
            id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)})
        model = getattr(transformers, architecture)(config).eval()
        with torch.no_grad():
            _randomise(model, torch)
        base = model.timesformer if architecture == "TimesformerForVideoClassification" else model
        video = torch.randn(BATCH, 4, 32, 32, 3, generator=torch.Generator().manual_seed(100 + index))
        pixel_values = video.permute(0, 1, 4, 2, 3).contiguous()  # HF takes (B, T, C, H, W)
        outputs = {}
        with torch.no_grad():
            if attention_type == "space_only":
                tokens = base.encoder(base.embeddings(pixel_values)).last_hidden_state  # (B*T, 1+N, D)
                hidden = base.layernorm(tokens.reshape(BATCH, 4, *tokens.shape[1:]).mean(1))
            else:
                hidden = base(pixel_values).last_hidden_state
            outputs["last_hidden_state"] = hidden.numpy()
            if architecture == "TimesformerForVideoClassification":
                logits = model.classifier(hidden[:, 0])
                if attention_type != "space_only":  # the classifier on CLS is exactly the HF forward
                    torch.testing.assert_close(logits, model(pixel_values).logits, rtol=0, atol=0)
                outputs["logits"] = logits.numpy()
        case_dir = out_dir / case
        (case_dir / "source").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(case_dir / "source", safe_serialization=True)
        np.savez(case_dir / "io.npz", video=video.numpy().astype(np.float32),
                 **{k: v.astype(np.float32) for k, v in outputs.items()})
        pooling = ("; space_only pooling = official TimeSformer (mean of frames before the final layernorm)"
                   if attention_type == "space_only" else "")
        reference = (f"transformers {transformers.__version__} {architecture} (attention_type={attention_type}, "
                     f"hidden_act={act}, layer_norm_eps={eps}), torch {torch.__version__}, random weights"
                     f"{pooling}")
        (case_dir / "case.json").write_text(json.dumps({"convert": "hf", "reference": reference}, indent=1))


if __name__ == "__main__":
    import sys

    make(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity"))
