"""PyTorch reference timings for `python -m vidjax.bench --compare=torch`, random weights, sized like vidjax.

Each model family is compared with its PyTorch reference, built from the vidjax model config being timed (its
variant resolved through vidjax's own size tables, plus its frames, image size, MLP width, LayerNorm eps, q/k/v
biases, GELU form), so the comparison is like for like and the two sides cannot drift apart:

  videomae     transformers' VideoMAEForPreTraining / VideoMAEForVideoClassification (pretrain, finetune, infer)
  timesformer  transformers' TimesformerForVideoClassification, divided space-time attention (finetune, infer)
  vivit        transformers' VivitForVideoClassification: model 1, joint space-time attention over tubelets, the
               only one Hugging Face ports, so vidjax is timed with `model_type="joint"` (finetune, infer)
  videomamba   vidjax.bench.torch_ref.videomamba.VisionMamba, a plain PyTorch port of the official model on mamba_ssm's
               reference scan (finetune, infer); mamba_ssm's CUDA kernels do not run on CPU

`torch_config_kwargs` (pure: no torch) gives the constructor arguments of each reference; `build_torch_model`
builds it; `time_torch` times it, on the CPU or a CUDA GPU (`placement`: where vidjax runs), in float32 or under
`torch.autocast` for a bfloat16 vidjax run. Nothing is downloaded. torch and transformers are imported lazily inside the
functions: vidjax itself never depends on them, so this module imports fine without them, and only building a
model asks for the `vidjax[torch]` extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from vidjax.bench import op_profile
from vidjax.models import layers, videomae, videomamba, vivit

_INSTALL_HINT = (
    "the PyTorch reference benchmark needs torch and transformers: "
    "pip install torch transformers  (or: pip install 'vidjax[torch]')"
)


def _vit_kwargs(cfg: ml_collections.ConfigDict, size: str, patch: int) -> dict[str, Any]:
    """The transformer sizes shared by the Hugging Face ViT-style video models, from a vidjax ViT config whose
    variant is `size` (a `layers.VIT_SIZES` name) with `patch` pixel patches; explicit widths and depths win."""
    dims = layers.vit_dims(f"{size}/{patch}", cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim)
    return dict(image_size=cfg.image_size, num_channels=3, num_frames=cfg.num_frames, hidden_size=dims["width"],
                num_hidden_layers=dims["depth"], num_attention_heads=dims["num_heads"],
                intermediate_size=dims["mlp_dim"], layer_norm_eps=cfg.ln_eps, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)


def _hidden_act(cfg: ml_collections.ConfigDict) -> str:
    # vidjax's tanh GELU is HF's "gelu_fast" (what HF's ViViT configs name it); otherwise the exact erf GELU.
    return "gelu_fast" if cfg.approximate_gelu else "gelu"


def _videomae_kwargs(cfg: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
    size, patch = layers.parse_variant(cfg.variant)
    kwargs = _vit_kwargs(cfg, size, patch) | dict(
        patch_size=patch, tubelet_size=cfg.tubelet_size, hidden_act="gelu",
        qkv_bias=cfg.qkv_bias == "qv",  # HF stores it as q/v bias (no k bias), matching the VideoMAE reference
    )
    if mode == "pretrain":
        dec_width, dec_heads = videomae.DECODER_SIZES[size]
        dec_width, dec_heads = cfg.decoder_width or dec_width, cfg.decoder_heads or dec_heads
        kwargs.update(
            decoder_hidden_size=dec_width, decoder_num_hidden_layers=cfg.decoder_depth,
            decoder_num_attention_heads=dec_heads, decoder_intermediate_size=cfg.decoder_mlp_dim or 4 * dec_width,
            norm_pix_loss=cfg.norm_pix_loss,
            # False gives the encoder its final LayerNorm, as in the VideoMAE pre-training encoder and HF's
            # pre-training checkpoints (mean pooling only matters for the classification head).
            use_mean_pooling=False,
        )
    else:
        kwargs.update(num_labels=cfg.num_classes, use_mean_pooling=cfg.use_mean_pooling)
    return kwargs


def _timesformer_kwargs(cfg: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
    del mode
    if cfg.attention_type == "space_only":
        # HF returns one logits row per frame for it, not per clip: no like-for-like classification step.
        raise ValueError("--compare=torch times TimeSformer with attention_type divided_space_time or "
                         "joint_space_time; Hugging Face's space_only classifies frames, not clips.")
    size, patch = layers.parse_variant(cfg.variant)
    return _vit_kwargs(cfg, size, patch) | dict(
        patch_size=patch, attention_type=cfg.attention_type, qkv_bias=bool(cfg.qkv_bias),
        # transformers 5 declares drop_path_rate an int and refuses 0.0: no drop path is written 0.
        hidden_act=_hidden_act(cfg), drop_path_rate=cfg.drop_path or 0, num_labels=cfg.num_classes)


def _vivit_kwargs(cfg: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
    del mode
    if cfg.model_type != "joint" or vivit.classifier_of(cfg) != "token":
        raise ValueError(f"--compare=torch times ViViT model 1 (model_type='joint', CLS classifier), the one "
                         f"Hugging Face ports; the config has model_type={cfg.model_type!r}, classifier="
                         f"{vivit.classifier_of(cfg)!r}.")
    size, patch, tubelet = vivit.parse_variant(cfg.variant)
    return _vit_kwargs(cfg, size, patch) | dict(
        tubelet_size=[tubelet, patch, patch], qkv_bias=cfg.qkv_bias == "qkv", hidden_act=_hidden_act(cfg),
        num_labels=cfg.num_classes)


def _videomamba_kwargs(cfg: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
    del mode
    d = videomamba.dims(cfg)
    return dict(img_size=cfg.image_size, patch_size=d["patch"], depth=d["depth"], embed_dim=d["width"],
                num_classes=cfg.num_classes, kernel_size=cfg.tubelet_size, num_frames=cfg.num_frames,
                norm_epsilon=cfg.rms_eps, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                dt_rank=d["dt_rank"])


def _import_transformers() -> tuple[Any, Any]:
    """Imports torch and transformers, turning a missing install into an ImportError that says what to install."""
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return torch, transformers


def _build_hf(config_name: str, class_names: dict[str, str]) -> Callable[[dict[str, Any], str], tuple[Any, dict]]:
    """A builder of the Hugging Face model `class_names[mode]` from `transformers.<config_name>(**kwargs)`."""

    def build(kwargs: dict[str, Any], mode: str) -> tuple[Any, dict[str, Any]]:
        _, transformers = _import_transformers()
        config_cls, cls = getattr(transformers, config_name), getattr(transformers, class_names[mode])
        # SDPA is the fastest CPU attention; a model (or an older transformers) without it raises when asked,
        # and falls back to eager. Which one ran is reported: it changes the timings noticeably.
        try:
            model = cls._from_config(config_cls(**kwargs), attn_implementation="sdpa")
        except (ValueError, ImportError, TypeError):
            model = cls._from_config(config_cls(**kwargs), attn_implementation="eager")
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        return model, {"attn_implementation": str(impl), "reference": f"transformers.{cls.__name__}"}

    return build


def _build_videomamba(kwargs: dict[str, Any], mode: str) -> tuple[Any, dict[str, Any]]:
    del mode
    try:
        from vidjax.bench.torch_ref.videomamba import VisionMamba  # imported here: it imports torch at its top
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return VisionMamba(**kwargs), {"attn_implementation": None, "scan": "selective_scan_ref (sequential)",
                                   "reference": "vidjax.bench.torch_ref.videomamba.VisionMamba"}


@dataclasses.dataclass(frozen=True)
class _Family:
    modes: tuple[str, ...]
    kwargs: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]  # pure: the reference's constructor args
    build: Callable[[dict[str, Any], str], tuple[Any, dict[str, Any]]]  # (model, what ran) from those args
    clip_layout: str  # the reference's input: "BTCHW" (Hugging Face) or "BCTHW" (Conv3d first, the official code)
    vidjax_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # config.model to match it


_FAMILIES: dict[str, _Family] = {
    "videomae": _Family(("pretrain", "finetune", "infer"), _videomae_kwargs,
                        _build_hf("VideoMAEConfig", {"pretrain": "VideoMAEForPreTraining",
                                                     "finetune": "VideoMAEForVideoClassification",
                                                     "infer": "VideoMAEForVideoClassification"}), "BTCHW"),
    "timesformer": _Family(("finetune", "infer"), _timesformer_kwargs,
                           _build_hf("TimesformerConfig", dict.fromkeys(("finetune", "infer"),
                                                                        "TimesformerForVideoClassification")),
                           "BTCHW"),
    "vivit": _Family(("finetune", "infer"), _vivit_kwargs,
                     _build_hf("VivitConfig", dict.fromkeys(("finetune", "infer"), "VivitForVideoClassification")),
                     "BTCHW", {"model_type": "joint", "classifier": "token"}),
    "videomamba": _Family(("finetune", "infer"), _videomamba_kwargs, _build_videomamba, "BCTHW"),
}


def supported() -> str:
    """What --compare=torch supports, as one line: model (modes); ..."""
    return "; ".join(f"--model={name} (--mode={'|'.join(f.modes)})" for name, f in _FAMILIES.items())


def check_supported(model: str, mode: str) -> None:
    """Raises ValueError, naming what is supported, for a model or mode without a PyTorch reference."""
    if not has_reference(model, mode):
        raise ValueError(f"--compare=torch has no PyTorch reference for --model={model} --mode={mode}; it "
                         f"supports {supported()}.")


def missing(models: list[str] | tuple[str, ...]) -> str | None:
    """Why the PyTorch references of `models` cannot run here, one line with the install command, or None: torch
    (every reference) and transformers (the Hugging Face ones: all but videomamba) imported, as they will be, before
    anything is timed."""
    try:
        import torch  # noqa: F401  (the optional `vidjax[torch]` extra)

        if any(model != "videomamba" for model in models):
            import transformers  # noqa: F401
    except Exception as err:  # noqa: BLE001 (ImportError, or a broken install's OSError / RuntimeError)
        text = str(err).strip().splitlines()
        return (f"--compare=torch needs torch and transformers, which do not import here ({type(err).__name__}: "
                f"{text[0][:160] if text else ''}): pip install 'vidjax[torch]' (or pip install torch transformers), "
                f"or leave --compare out.")
    return None


def has_reference(model: str, mode: str) -> bool:
    """Whether a PyTorch reference times `model` in `mode`."""
    return model in _FAMILIES and mode in _FAMILIES[model].modes


def vidjax_overrides(model: str) -> dict[str, Any]:
    """config.model fields that make the vidjax model the one the reference implements (ViViT: model 1)."""
    return dict(_FAMILIES[model].vidjax_overrides) if model in _FAMILIES else {}


def torch_config_kwargs(model: str, mode: str, model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The reference's constructor arguments (a transformers config's, or VisionMamba's) for the vidjax model
    `model` built from `model_config` (a `config.model` block) and timed in `mode`. Needs no torch."""
    check_supported(model, mode)
    return _FAMILIES[model].kwargs(model_config, mode)


def build_torch_model(model: str, mode: str, model_config: ml_collections.ConfigDict,
                      device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The PyTorch reference of `model` sized like `model_config`, random weights, float32 parameters on `device`,
    and what ran ({"attn_implementation": "sdpa" | "eager" | None, "reference": its class, ...})."""
    kwargs = torch_config_kwargs(model, mode, model_config)
    module, details = _FAMILIES[model].build(kwargs, mode)
    import torch

    return module.to(device=device, dtype=torch.float32), details


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


def check_arguments(model: str, mode: str, model_config: ml_collections.ConfigDict, batch: int, steps: int,
                    warmup: int, threads: int | None = None) -> None:
    """Raises ValueError for arguments `time_torch` cannot run, before anything imports torch."""
    check_supported(model, mode)
    if batch < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, steps >= 1, warmup >= 0; got {batch=}, {steps=}, {warmup=}.")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 (or None for torch's default).")
    if mode != "pretrain" and model_config.num_classes < 1:
        raise ValueError(f"num_classes={model_config.num_classes} must be >= 1.")
    if mode == "pretrain":
        kwargs = torch_config_kwargs(model, mode, model_config)
        per_frame = (kwargs["image_size"] // kwargs["patch_size"]) ** 2
        num_masked = int(model_config.mask_ratio * per_frame)
        if not 0 < num_masked < per_frame:
            # All-visible gives an empty MSE target (NaN loss); all-masked leaves the encoder no tokens.
            raise ValueError(f"mask_ratio={model_config.mask_ratio} masks {num_masked} of {per_frame} patches per "
                             f"frame; pre-training needs at least one masked and one visible patch.")


def time_torch(model: str, mode: str, model_config: ml_collections.ConfigDict, batch: int, steps: int, warmup: int,
               threads: int | None = None, seed: int = 0, profile: bool = False, device: str = "cpu",
               autocast: str | None = None) -> dict[str, Any]:
    """Times `steps` steps of `model`'s PyTorch reference on `device` after `warmup` untimed ones; returns the
    median and all times, and what ran.

    model_config: the vidjax `config.model` block being timed (its frames and image size are the clip's).
    mode: "pretrain" (VideoMAE only: tube-masked MSE loss + backward + AdamW step), "finetune" (cross-entropy +
          backward + AdamW step) or "infer" (eval forward under torch.inference_mode()).
    threads: if given, torch.set_num_threads(threads) for the run (restored afterwards, since the benchmark runs
          in-process with JAX); otherwise torch's default.
    profile: also run the step under torch.profiler and return its op time by category as "profile"
          (`vidjax.bench.op_profile.profile_torch`).
    device: "cpu" or "cuda" (a GPU: each step ends with torch.cuda.synchronize(), so its wall time is its time).
    autocast: "bfloat16" or "float16" runs the forward (and loss) under torch.autocast in that dtype, as a mixed
          precision training script does, parameters and optimizer state in float32; None runs float32.
    """
    # Validate before importing torch so bad arguments get a clear error even without torch installed.
    check_arguments(model, mode, model_config, batch, steps, warmup, threads)
    if device not in ("cpu", "cuda") or autocast not in (None, "bfloat16", "float16"):
        raise ValueError(f"device={device!r}, autocast={autocast!r}: the reference runs on 'cpu' or 'cuda', under "
                         f"autocast None, 'bfloat16' or 'float16'.")
    torch, _ = _import_transformers()
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no GPU (torch.cuda.is_available() is False).")
    with _num_threads(torch, threads):
        torch.manual_seed(seed)
        module, details = build_torch_model(model, mode, model_config, device)
        step = _make_step(torch, module, model, mode, model_config, batch, seed, device, autocast)
        step_times = _time_steps(step, steps, warmup)
        used_threads = torch.get_num_threads()
        numels = [p.numel() for p in module.parameters()]
        profiled = {"profile": op_profile.profile_torch(step, set(numels))} if profile else {}
    median = statistics.median(step_times)
    return profiled | details | _versions(torch, details) | {
        "framework": "torch", "model": model, "mode": mode, "frames": model_config.num_frames,
        "size": model_config.image_size, "batch": batch, "num_params": sum(numels), "device": device,
        "autocast": autocast, "threads": used_threads, "seconds_per_step": median, "step_times": step_times,
        "clips_per_s": batch / median}


@contextlib.contextmanager
def _num_threads(torch: Any, threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block, torch's own count restored after it (the benchmark runs
    in-process with JAX); None leaves torch's default."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _make_step(torch: Any, module: Any, model: str, mode: str, model_config: ml_collections.ConfigDict, batch: int,
               seed: int, device: str, autocast: str | None) -> Callable[[], None]:
    """The step `time_torch` times: `module`'s `mode` step on random inputs drawn from `seed`, ending synchronised
    on a GPU. The inputs are made here, once, outside the timed region: we time the model step, not the data
    pipeline."""
    layout = _FAMILIES[model].clip_layout
    gen = torch.Generator().manual_seed(seed)
    clips = _random_clips(torch, layout, model_config, batch, gen).to(device)
    mixed_precision = _mixed_precision(torch, device, autocast)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def logits() -> Any:
        with mixed_precision():
            out = module(clips) if layout == "BCTHW" else module(pixel_values=clips)
        return getattr(out, "logits", out)

    if mode == "infer":
        module.eval()

        def step() -> None:
            with torch.inference_mode():
                logits()
            synchronize()

        return step
    if mode == "pretrain":
        mask = _pretrain_mask(torch, model, model_config, batch, gen).to(device)

        def loss_fn() -> Any:
            with mixed_precision():
                return module(pixel_values=clips, bool_masked_pos=mask).loss

    else:
        labels = torch.randint(0, model_config.num_classes, (batch,), generator=gen).to(device)

        def loss_fn() -> Any:
            # Explicit cross-entropy rather than passing labels, so HF's problem_type inference
            # can't pick a different loss.
            return torch.nn.functional.cross_entropy(logits().float(), labels)

    return _training_step(torch, module, loss_fn, synchronize)


def _random_clips(torch: Any, layout: str, model_config: ml_collections.ConfigDict, batch: int, gen: Any) -> Any:
    """`batch` random clips of the config's frames and size from `gen`, in the reference's `layout`."""
    size = model_config.image_size
    clips = torch.randn(batch, model_config.num_frames, 3, size, size, generator=gen)
    if layout == "BCTHW":
        clips = clips.permute(0, 2, 1, 3, 4).contiguous()
    return clips


def _mixed_precision(torch: Any, device: str, autocast: str | None) -> Callable[[], Any]:
    """A fresh context for each forward: torch.autocast in the `autocast` dtype, or none for a float32 run."""
    if autocast is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=getattr(torch, autocast))


def _pretrain_mask(torch: Any, model: str, model_config: ml_collections.ConfigDict, batch: int, gen: Any) -> Any:
    """The tube mask of a pre-training step: `mask_ratio` of each frame's patches, drawn from `gen`."""
    kwargs = torch_config_kwargs(model, "pretrain", model_config)
    per_frame = (model_config.image_size // kwargs["patch_size"]) ** 2
    return _tube_mask(torch, batch, model_config.num_frames // kwargs["tubelet_size"], per_frame,
                      int(model_config.mask_ratio * per_frame), gen)


def _training_step(torch: Any, module: Any, loss_fn: Callable[[], Any],
                   synchronize: Callable[[], None]) -> Callable[[], None]:
    """A training step of `module` on `loss_fn`: backward and an AdamW update (VideoMAE's recipe values)."""
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step() -> None:
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()

    return step


def _time_steps(step: Callable[[], None], steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` calls of `step`, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    # CPU ops run synchronously, and a GPU step ends synchronised: wall time around each step is its time.
    step_times: list[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
    return step_times


def _versions(torch: Any, details: dict[str, Any]) -> dict[str, str]:
    """The versions of what ran: torch, and transformers for a Hugging Face reference."""
    versions = {"torch_version": torch.__version__}
    if details["reference"].startswith("transformers."):
        import transformers

        versions["transformers_version"] = transformers.__version__
    return versions


def share_gpu_memory() -> None:
    """Lets jax and the PyTorch reference share one GPU in one process: jax otherwise takes 75% of the GPU's memory
    when its backend starts, and torch runs out. Call before jax's first computation; `XLA_PYTHON_CLIENT_PREALLOCATE`
    set by the user wins."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def placement(backend: str, dtype: str) -> dict[str, Any]:
    """`time_torch`'s device and autocast for a vidjax run on jax `backend` computing in `dtype`: CUDA for a GPU
    run, the CPU otherwise (TPUs have no PyTorch reference here); autocast in the compute dtype unless float32."""
    return {"device": "cuda" if backend in ("gpu", "cuda") else "cpu",
            "autocast": None if dtype == "float32" else str(dtype)}


def describe(result: dict[str, Any]) -> str:
    """What a `time_torch` result ran, for the benchmark's one-line summary: attention kernel or scan, threads."""
    impl = result.get("attn_implementation") or result.get("scan", "?")
    where = (f"{result['threads']} threads" if result.get("device", "cpu") == "cpu" else result["device"]) + (
        f", {result['autocast']} autocast" if result.get("autocast") else "")
    return f"{result['reference']}, {impl}, {where}"
