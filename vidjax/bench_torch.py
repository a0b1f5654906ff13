"""PyTorch reference timings for `python -m vidjax.bench --compare=torch`: Hugging Face VideoMAE, random weights.

The model is built from a `transformers.VideoMAEConfig` sized like the vidjax variant, so the comparison is
like for like: same width/depth/heads, patch 16, tubelet 2, MLP ratio 4, and (for pre-training) the 4-block
decoder with 90% tube masking. Nothing is downloaded; weights are the library's random init.

torch and transformers are imported lazily inside the functions: vidjax itself never depends on them, so this
module imports fine without them, and only calling `time_torch` asks for the `vidjax[torch]` extra.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from vidjax.models import layers, videomae

MODES: tuple[str, ...] = ("pretrain", "finetune", "infer")

# Sized from vidjax's own tables, so the two sides of the comparison cannot drift apart.
_DECODER_DEPTH = 4
_TUBELET = 2

_INSTALL_HINT = (
    "the PyTorch reference benchmark needs torch and transformers: "
    "pip install torch transformers  (or: pip install 'vidjax[torch]')"
)


def _import_torch() -> tuple[Any, Any]:
    """Imports torch and transformers, turning a missing install into an ImportError that says what to install."""
    try:
        import torch
        import transformers
        from transformers import VideoMAEConfig  # noqa: F401  (VideoMAE needs a recent transformers)
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return torch, transformers


def _build_model(torch: Any, transformers: Any, cls: Any, config_kwargs: dict[str, Any]) -> tuple[Any, str]:
    """Builds `cls` with random weights, preferring SDPA attention (the fastest CPU path) over eager.

    Older transformers releases lack SDPA for VideoMAE and raise when it is requested; we then fall back to
    eager and report which one ran, since it changes the timings noticeably.
    """
    config = transformers.VideoMAEConfig(**config_kwargs)
    try:
        model = cls._from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError, TypeError):
        config = transformers.VideoMAEConfig(**config_kwargs)
        model = cls._from_config(config, attn_implementation="eager")
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    return model, str(impl)


def _tube_mask(torch: Any, batch: int, t_tokens: int, per_frame: int, num_masked: int, gen: Any) -> Any:
    """Tube mask (batch, t_tokens * per_frame), True = masked.

    Each clip draws one spatial mask with exactly `num_masked` of its `per_frame` patches masked and repeats it
    over every temporal token slice, as VideoMAE's tube masking does. A fixed count per clip is also what HF
    needs: it gathers visible tokens with a boolean index and reshapes to (batch, -1, dim).
    """
    order = torch.rand(batch, per_frame, generator=gen).argsort(dim=1)
    spatial = torch.zeros(batch, per_frame, dtype=torch.bool)
    spatial.scatter_(1, order[:, :num_masked], True)
    # HF's patch embedding flattens (T', H', W') in that order, so the temporal index is the slowest axis.
    return spatial[:, None, :].expand(batch, t_tokens, per_frame).reshape(batch, t_tokens * per_frame)


def time_torch(
    mode: str,
    variant: str,
    frames: int,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    mask_ratio: float = 0.9,
    num_classes: int = 400,
    threads: int | None = None,
    seed: int = 0,
    profile: bool = False,
) -> dict[str, Any]:
    """Times `steps` steps of HF VideoMAE on CPU after `warmup` untimed ones; returns the median and all times.

    mode: "pretrain" (VideoMAEForPreTraining, tube-masked MSE loss + backward + AdamW step),
          "finetune" (VideoMAEForVideoClassification, cross-entropy + backward + AdamW step) or
          "infer" (VideoMAEForVideoClassification, eval forward under torch.inference_mode()).
    threads: if given, torch.set_num_threads(threads) for the run (restored afterwards, since the benchmark
          runs in-process with JAX); otherwise torch's default.
    profile: also run the step under torch.profiler and return its op time by category as "profile"
          (`vidjax.bench_profile.profile_torch`).
    """
    # Validate before importing torch so bad arguments get a clear error even without torch installed.
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}: expected one of {', '.join(MODES)}.")
    size_name, patch = layers.parse_variant(variant)
    if frames < _TUBELET or frames % _TUBELET:
        raise ValueError(f"frames={frames} must be a positive multiple of the tubelet size {_TUBELET}.")
    if size < patch or size % patch:
        raise ValueError(f"size={size} must be a positive multiple of the patch size {patch} ({variant}).")
    if batch < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, steps >= 1, warmup >= 0; got {batch=}, {steps=}, {warmup=}.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 (or None for torch's default).")
    per_frame = (size // patch) ** 2
    t_tokens = frames // _TUBELET
    num_masked = int(mask_ratio * per_frame)
    if mode == "pretrain" and not 0 < num_masked < per_frame:
        # All-visible gives an empty MSE target (NaN loss); all-masked leaves the encoder no tokens.
        raise ValueError(
            f"mask_ratio={mask_ratio} masks {num_masked} of {per_frame} patches per frame; "
            "pre-training needs at least one masked and one visible patch."
        )
    if mode != "pretrain" and num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1.")

    torch, transformers = _import_torch()

    hidden, depth, heads = layers.VIT_SIZES[size_name]
    config_kwargs: dict[str, Any] = dict(
        image_size=size,
        patch_size=patch,
        num_channels=3,
        num_frames=frames,
        tubelet_size=_TUBELET,
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,  # HF stores it as q/v bias (no k bias), matching the VideoMAE reference
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if mode == "pretrain":
        dec_hidden, dec_heads = videomae.DECODER_SIZES[size_name]
        config_kwargs.update(
            decoder_hidden_size=dec_hidden,
            decoder_num_hidden_layers=_DECODER_DEPTH,
            decoder_num_attention_heads=dec_heads,
            decoder_intermediate_size=4 * dec_hidden,
            norm_pix_loss=True,
            # False gives the encoder its final LayerNorm, as in the VideoMAE pre-training encoder and
            # HF's pre-training checkpoints (mean pooling only matters for the classification head).
            use_mean_pooling=False,
        )
        model_cls = transformers.VideoMAEForPreTraining
    else:
        config_kwargs.update(num_labels=num_classes, use_mean_pooling=True)
        model_cls = transformers.VideoMAEForVideoClassification

    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model, attn_impl = _build_model(torch, transformers, model_cls, config_kwargs)
        model = model.to(device="cpu", dtype=torch.float32)

        # Inputs are made once, outside the timed region: we time the model step, not the data pipeline.
        gen = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(batch, frames, 3, size, size, generator=gen)

        if mode == "infer":
            model.eval()

            def step() -> None:
                with torch.inference_mode():
                    model(pixel_values=pixel_values)

        else:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
            if mode == "pretrain":
                mask = _tube_mask(torch, batch, t_tokens, per_frame, num_masked, gen)

                def loss_fn() -> Any:
                    return model(pixel_values=pixel_values, bool_masked_pos=mask).loss

            else:
                labels = torch.randint(0, num_classes, (batch,), generator=gen)

                def loss_fn() -> Any:
                    # Explicit cross-entropy rather than passing labels, so HF's problem_type inference
                    # can't pick a different loss.
                    logits = model(pixel_values=pixel_values).logits
                    return torch.nn.functional.cross_entropy(logits, labels)

            def step() -> None:
                loss = loss_fn()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        # CPU ops run synchronously, so wall time around each step is the step time.
        step_times: list[float] = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - start)
        used_threads = torch.get_num_threads()
        profiled = {}
        if profile:
            from vidjax import bench_profile

            numels = {p.numel() for p in model.parameters()}
            profiled["profile"] = bench_profile.profile_torch(step, numels)
    finally:
        if threads is not None:
            torch.set_num_threads(prev_threads)

    median = statistics.median(step_times)
    return profiled | {
        "framework": "torch",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "attn_implementation": attn_impl,
        "mode": mode,
        "variant": variant,
        "frames": frames,
        "size": size,
        "batch": batch,
        "threads": used_threads,
        "seconds_per_step": median,
        "step_times": step_times,
        "clips_per_s": batch / median,
    }
