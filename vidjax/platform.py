"""Platform choices: what the models compute differently on CPU, GPU and TPU, held as explicit config values.

A few parts of the models have two or more ways of computing the same thing, one faster on one backend and slower
(or unavailable) on another. Each such choice is a value of the model's config block (`config.model`, and the model
blocks nested in it: a captioner's `encoder` and `decoder`, SVT's `backbone`), "auto" by default. `resolve(config)`
replaces every "auto" with the concrete value for a backend (this machine's unless `backend=` names one) once, at
set-up, before a model is built: the trainer (`train.build`, which `vidjax.evaluate` and the benchmarks use too) and
`pretrained.load` / `pretrained.init` call it, and a model constructor given a block that still says "auto"
resolves it as it is built (`choices`; e.g. `Model(default_config())` in a test or a notebook). The model hands the
values down to its blocks and layers (`Choices`): nothing asks `jax.default_backend()` while a model is traced, and
`backend()` here is the one place a model's computation learns which machine it runs on (the attention length rule
is a function of a resolved rule and of the operands' shapes, see `attention_implementation`).

Every pair of values computes the same maths (the tests hold forward and gradients to 1e-5); they differ in time and
memory. To try one backend's choice on another, set the value: `--config.model.backward=autodiff` times autodiff's
backward on a CPU, `attention_impl="auto_gpu"` runs GPU's rule there, `block_gradients="written_out"` puts the CPU's
boundaries into a GPU run. The config a run or a checkpoint records keeps "auto" (only the copy a model is built
from is resolved), so a checkpoint trained on a CPU runs with GPU's choices when loaded on a GPU.

The values (`FIELDS`; "auto" gives the CPU value / the value elsewhere), and the A/B runs that chose them
(docs/performance.md; unless said, VideoMAE-S/16, 16 x 112 px, batch 2, on a 2-core CPU, variants alternated in one
process):

- `attention_impl` (VideoMAE, TimeSformer, ViViT and the captioner's or SVT's encoders of those families):
  "auto" -> the backend's rule, "auto_cpu" / "auto_gpu" / "auto_tpu" ("xla" on any other backend); "" is "auto",
  as configs and checkpoints of earlier versions say. A rule picks the implementation per call, from the operands'
  dtype and head size and the sequence lengths, which only the call knows (`attention_implementation`):
  - "auto_cpu": "heads_major", or "blockwise" from `BLOCKWISE_FROM_SCORES` scores per (batch, head).
  - "auto_gpu": "cudnn" for 16-bit operands whose head size cuDNN's fused kernel takes (at most 128, a multiple of
    8); otherwise "xla", or "blockwise" from the same length as on CPU. (`jax.nn.dot_product_attention` left to
    itself runs XLA's everywhere, jax 0.10.)
  - "auto_tpu": "pallas_resident" from `RESIDENT_FROM_SCORES` scores per (batch, head) where it takes the shapes
    (`resident_attention_takes`: heads in 128-lane blocks, keys that fit VMEM); else "pallas_tpu" from
    `PALLAS_TPU_FROM_SCORES` scores for heads of at most 128 or a multiple of 128; else "xla".
  - or one implementation for every call: "xla", "cudnn", "heads_major", "blockwise", "pallas_tpu",
    "pallas_resident" (how each runs: `vidjax.ops.attention`).
  Why: on the (batch, tokens, heads, head_dim) operands `jax.nn.dot_product_attention` takes, XLA:CPU runs the
  score and value products, and their backward, with strided batch dimensions and transposes of score-sized
  tensors; "heads_major" moves the heads first once, on the small q/k/v/output tensors, and writes its backward out
  so that no product needs a score-sized operand transposed. One attention forward + backward (2 x 392 tokens, 6
  heads of 64) took 42.1 ms with "xla" and 29.4 ms with it (0.70x); VideoMAE-S/16 inference 0.286 -> 0.267 s,
  TimeSformer-S/16 fine-tune (8 x 112) 1.228 -> 1.187 s ("Attention on CPU: heads before tokens"); the written-out
  backward took the fine-tune step from 1.013 to 0.939 s ("The backward written out"). "blockwise" (FlashAttention-2
  in jnp/lax) holds one score block at a time: XLA's temporaries grow linearly in length instead of quadratically,
  but at about 200 tokens it is slower on CPU than "heads_major", whose score matrix fits in cache, hence the
  threshold of 512 x 512 scores ("Attention at length"). On GPU, cuDNN's fused kernel is the fast path for 16-bit
  operands (the accelerator table); float32 stays on XLA's below the same length. The TPU threshold is not
  measured (no TPU was lent): the Pallas kernel pads a sequence to its blocks (128 tokens at the least, 512 above
  that), so shorter sequences would be mostly padding; docs/tpu.md has libtpu's estimates of it.
- `backward` (every model with LayerNorm or the MLP's GELU: the ViT families and GPT-2): "auto" -> "hand_written"
  / "autodiff". "hand_written": LayerNorm's and GELU's backward written out (`layers.layer_norm`, `layers.gelu`,
  custom VJPs), each one fused pass over what the forward kept (the input and two numbers a row for LayerNorm, the
  input for GELU), in float32; "autodiff": autodiff's backward of the forward.
  Why: left to autodiff, XLA:CPU splits a LayerNorm's backward into several passes over the activation and a GELU's
  into the derivative of erf's expansion. Fine-tune step: LayerNorm's written out 1.013 -> 0.965 s, GELU's 0.954 ->
  0.933 s; with the attention's (above), against autodiff's backwards, 1.030 -> 0.959 s; pre-training 0.364 ->
  0.345 s ("The backward written out"). GPU and TPU compilers fuse autodiff's forms on their own and keep them.
- `projection_form` (every model): "auto" -> "flat" / "multi_axis". How a projection whose kernel has several axes
  runs (`layers.project`: attention's qkv (d, 3, heads, head_dim) and output (heads, head_dim, d) kernels in every
  family, GPT-2's, VideoMamba's in_proj, and every `layers.Dense`): "flat", one 2-D product of the flattened
  operands, reshaped back, forward and backward; "multi_axis", the multi-axis contraction, which keeps a kernel
  sharded over heads sharded through the product.
  Why: XLA:CPU decomposes a contraction over several kernel axes into a 2-D product behind a transpose: every
  block's qkv and output kernels were copied transposed each step for the backward's dX product, and their
  gradients copied into the parameters' layout. The pre-training step (its encoder sees 80 tokens, so the copies
  outweighed the products) took 0.268 s multi-axis and 0.248 s flat (8 rounds; its copies 46.3 -> 5.9 ms),
  fine-tuning 0.888 -> 0.861 s, TimeSformer-S/16 fine-tune 1.055 -> 1.031 s ("The projections as 2-D products").
- `block_gradients` (every model): "auto" -> "written_out" / "fused". "written_out": the gradient reaching each
  unrolled block's input passes an identity conditional XLA cannot fold (`layers.call_block`), so it is written out
  whole; "fused": the plain graph. (A layer scan, config.model.scan_layers, writes its carry out between iterations
  anyway.)
  Why: without it XLA:CPU fuses the residual stream's gradient into each of its consumers instead of writing it
  out, so every LayerNorm backward, reduction and transposed copy further down recomputes the chain of all the
  blocks above it (fusions of 800 instructions, quadratic in depth; `python -m vidjax.bench --profile` counts them
  as norms; `lax.optimization_barrier` does not help, XLA:CPU expands it away before fusing). The fine-tune step
  went from 1.56 to 1.21 s (0.78x, 5 rounds) and compiles faster. GPU and TPU compilers fuse differently, and a
  conditional per block would cost them a launch.
- `scan` (VideoMamba): "auto" -> "recurrent" on CPU / "pallas" on TPU / "chunked" elsewhere; also "associative" and
  "sequential" (what each is: `vidjax.models.videomamba`). "pallas" is the fused kernel of `vidjax.ops.scan_kernel`
  (Mosaic, the state in on-chip memory); on a GPU it runs the chunked scan, since no GPU has measured a Pallas
  (Triton) form of the loop against it, and on a CPU it runs only under Pallas's TPU interpreter (for tests).
  Why: on CPU what costs is memory traffic, not the number of steps: the associative scans move (batch, K, N,
  d_inner) tensors through memory once per level, and autodiff through the sequential `lax.scan` saves every step's
  state for the backward pass (1.6 GiB of temporaries at the micro runlocal's shape). The recurrent scan keeps one
  state per block of 8 steps and recomputes the rest in its hand-written backward: forward + backward of one scan at
  the micro runlocal's shape (batch 32, 129 tokens, d_inner 192, N 16) took about 0.5x the sequential scan's CPU
  time (which itself took 173 ms against 462 ms for the chunked one), 0.4x at 65 tokens ("VideoMamba: which
  selective scan, per platform"). On accelerators a step-by-step scan would be hundreds of tiny kernels a layer.

One setting is not a platform choice but behaves differently by platform: config.model.remat (per-block
rematerialisation, `jax.checkpoint`) saves memory on XLA:CPU only with config.model.scan_layers=True. Unrolled, the
CPU compiler expands the optimization barriers that keep the backward's recomputation apart from the forward pass
before it optimises, and common-subexpression elimination merges the two again, so every block's activations stay
live (a plain 12-layer MLP keeps the same temporaries with and without `jax.checkpoint`). Under a layer scan the
backward recomputes each block in its own loop iteration, where nothing can merge it with the forward's: the
VideoMamba-S/16 fine-tune step at 16 x 224 px keeps 8,381 MiB unrolled without remat, 8,230 MiB unrolled with
remat="full" and 1,047 MiB scanned with it ("VideoMamba at 64-256 frames" in docs/performance.md). `notes` says so
at set-up.

One more choice is not a config value, because it has to be made before jax starts its backend, so no backend can be
asked: the host allocator (`vidjax.host_malloc`, set as each command parses its command line, vidjax/cli.py).
$VIDJAX_HOST_MALLOC "reuse" (the default) gives glibc's malloc one arena that keeps what it frees where XLA:CPU runs
the model (`host_allocator_applies`: jax_platforms names the CPU first, or names nothing and no GPU/TPU plugin is
installed that has its chips on this host), on glibc Linux; "system" leaves glibc's settings alone, and so does every
other host (there the model's buffers live on the device and the host's threads decode video, which one arena would
serialise). An installed plugin is not an accelerator: the test extra brings libtpu to every developer's machine
(`vidjax.aot` compiles for TPUs with it), and jax then runs on the CPU. So the decision reads what the chips leave on
the host (`accelerator_on_host`: Google's PCI devices for a TPU, NVIDIA's device files for CUDA), the files jax reads
for the same question, and never starts a backend. Installed libtpu without chips took the pre-training step from
0.202 to 0.231 s, 14% slower, before this was decided by the chips.
Why: XLA:CPU allocates an executable's temporaries afresh on every call, and glibc served the large ones with a
fresh mmap each step: the pre-training step faulted 32,700 pages (128 MiB) and spent about 60 ms of kernel time a
step doing so. Kept, 72 faults a step, and the step 12-15% faster (pre-training 0.273 -> 0.237 s, fine-tuning 0.914
-> 0.781 s; "The host allocator").
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vidjax.config_lib import ConfigError

AUTO = "auto"
OTHER = "other"  # a backend other than cpu, gpu and tpu, in `Field.auto`

# Above this many scores per (batch, head), query length x key length, the CPU rule and GPU's rule for float32 run
# "blockwise" (docs/performance.md, "Attention at length").
BLOCKWISE_FROM_SCORES = 512 * 512
# TPU's rule runs "pallas_tpu" from this many scores per (batch, head) (unmeasured: no TPU was lent; the kernel pads a
# sequence to its blocks, 128 tokens at the least (`attention.pallas_blocks`), so shorter ones would be mostly padding).
PALLAS_TPU_FROM_SCORES = 1024 * 1024
# TPU's rule runs "pallas_resident" (each head's keys and values whole in VMEM, `vidjax.ops.attention_kernel`) from
# this many scores per (batch, head) where it takes the shapes (`resident_attention_takes`), up to this many keys.
RESIDENT_FROM_SCORES = 512 * 512
RESIDENT_MAX_KEYS = 8192

# What `vidjax.ops.attention.dot_product_attention` can run, and the per-backend rules that pick one of them per call.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "heads_major", "blockwise", "pallas_tpu", "pallas_resident")
ATTENTION_RULES = ("auto_cpu", "auto_gpu", "auto_tpu")


@dataclasses.dataclass(frozen=True)
class Field:
    """One platform choice of a model config block: its concrete `values`, what "auto" becomes on each backend
    (`auto`: backend -> value, OTHER for any other backend), and `aliases` that mean "auto"."""

    name: str
    values: tuple[str, ...]
    auto: Mapping[str, str]
    summary: str
    aliases: tuple[str, ...] = ()

    def choices(self) -> tuple[str, ...]:
        """Every value a config may hold: "auto" and the concrete ones."""
        return (AUTO, *self.values)

    def for_backend(self, backend: str) -> str:
        """The value "auto" stands for on `backend`."""
        return self.auto.get(canonical(backend), self.auto[OTHER])

    def check(self, value: Any, where: str | None = None) -> str:
        """`value` if the config may hold it ("auto", an alias of it, or a concrete value), else a ConfigError naming
        the field and its choices."""
        if isinstance(value, str) and (value in self.values or value == AUTO or value in self.aliases):
            return value
        raise ConfigError(f"{where or 'config.model.' + self.name}={value!r}; choose one of "
                          f"{', '.join(repr(c) for c in self.choices())} ({self.summary}; vidjax/platform.py says "
                          f"what each does where).")

    def resolve(self, value: Any, backend: Callable[[], str], where: str | None = None) -> str:
        """The concrete value for `value`: itself, or for "auto" the one of the backend `backend()` names (asked only
        then)."""
        value = self.check(value, where)
        return self.for_backend(backend()) if value == AUTO or value in self.aliases else value


FIELDS: dict[str, Field] = {field.name: field for field in (
    Field("attention_impl", (*ATTENTION_RULES, *ATTENTION_IMPLEMENTATIONS),
          {"cpu": "auto_cpu", "gpu": "auto_gpu", "tpu": "auto_tpu", OTHER: "xla"},
          "'auto': the backend's rule, which picks per call by dtype, head size and length", aliases=("",)),
    Field("backward", ("hand_written", "autodiff"), {"cpu": "hand_written", OTHER: "autodiff"},
          "LayerNorm's and GELU's backward; 'auto': hand_written on CPU, autodiff elsewhere"),
    Field("projection_form", ("flat", "multi_axis"), {"cpu": "flat", OTHER: "multi_axis"},
          "multi-axis projections as one 2-D product or a multi-axis contraction; 'auto': flat on CPU"),
    Field("block_gradients", ("written_out", "fused"), {"cpu": "written_out", OTHER: "fused"},
          "each block input's gradient written out whole, or left to fusion; 'auto': written_out on CPU"),
    Field("scan", ("chunked", "associative", "sequential", "recurrent", "pallas"),
          {"cpu": "recurrent", "tpu": "pallas", OTHER: "chunked"},
          "VideoMamba's selective scan; 'auto': recurrent on CPU, the fused Pallas kernel on TPU, chunked elsewhere"),
)}

# The platform fields of each kind of model (its config block holds them, "auto" by default).
TRANSFORMER_FIELDS = ("attention_impl", "backward", "projection_form", "block_gradients")  # ViT families
TEXT_FIELDS = ("backward", "projection_form", "block_gradients")  # GPT-2 (its own causal attention)
MAMBA_FIELDS = ("scan", "projection_form", "block_gradients")  # VideoMamba


# Where training clips get their pixels (config.data.pixels; `vidjax.data.pipeline.resolve_pixels`).
PIXELS = ("auto", "host", "device")


def pixels_rule(backend: str) -> str:
    """config.data.pixels "auto" on `backend`, for training clips that can take either path: "device" on GPU and TPU
    (the input workers send the decoded planes of the crops' region, half the bytes of RGB a pixel, and skip the
    colour conversion and the resample: docs/performance.md, "Pixels on the device"), "host" on a CPU, where the
    step would do the same work on the same cores as the workers, in matrix products rather than libswscale's and
    PIL's kernels."""
    return "device" if canonical(backend) in ("gpu", "tpu") else "host"


def canonical(backend: str) -> str:
    """A backend name as the fields key it: "cuda" is "gpu"."""
    backend = str(backend).lower()
    return "gpu" if backend == "cuda" else backend


def backend() -> str:
    """This process's default jax backend ("cpu", "gpu", "tpu", ...): what "auto" resolves for when no backend is
    named. Asked at set-up only, never while a model is traced."""
    import jax

    return canonical(jax.default_backend())


def _asker(named: str | None) -> Callable[[], str]:
    """`backend` for a named backend, else this process's, asked at most once."""
    if named is not None:
        return lambda: canonical(named)
    cache: list[str] = []
    return lambda: cache[0] if cache else cache.append(backend()) or cache[0]


@dataclasses.dataclass(frozen=True)
class Choices:
    """The platform values a model is built with, every one concrete (no "auto"), handed down from the model to its
    blocks and layers. None: not a choice of this model (VideoMamba has no attention); a layer that needs a value
    its model did not choose says so when it is built (`need`).

    `choices(config.model, fields)` makes one from a config block; `Choices.for_backend("gpu")` is a backend's
    defaults; `dataclasses.replace(c, backward="autodiff")` changes one value.
    """

    attention_impl: str | None = None
    backward: str | None = None
    projection_form: str | None = None
    block_gradients: str | None = None
    scan: str | None = None

    def __post_init__(self):
        for name, field in FIELDS.items():
            value = getattr(self, name)
            if value is not None and value not in field.values:
                raise ConfigError(f"platform.Choices({name}={value!r}): a model is built with concrete values, one "
                                  f"of {', '.join(repr(v) for v in field.values)}; \"auto\" is resolved first "
                                  f"(platform.resolve / platform.choices).")

    @classmethod
    def for_backend(cls, backend: str | None = None) -> Choices:
        """Every field's "auto" value on `backend` (None: this process's, asked now)."""
        here = _asker(backend)()
        return cls(**{name: field.for_backend(here) for name, field in FIELDS.items()})

    def need(self, name: str) -> str:
        """The value of field `name`; a ValueError where the model did not choose it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"These platform choices have no {name} ({self}): build the layer with the choices of a "
                             f"model config that has config.model.{name}, or with platform.Choices.for_backend().")
        return value


def given(choices: Choices | None) -> Choices:
    """`choices`, or for None (a layer built on its own, outside a model) this process's backend's defaults, resolved
    as the layer is built."""
    return choices if choices is not None else Choices.for_backend()


def choices(block: Mapping[str, Any], fields: Iterable[str], backend: str | None = None, *,
            where: str = "config.model") -> Choices:
    """The `Choices` of a model config block for its platform `fields`: each field's value in `block` ("auto" when the
    block lacks it), "auto" resolved for `backend` (None: this process's, asked only if some value is "auto").
    Fields not in `fields` stay None. A bad value is a ConfigError naming `where`.FIELD and the choices."""
    ask = _asker(backend)
    return Choices(**{name: FIELDS[name].resolve(block.get(name, AUTO), ask, f"{where}.{name}") for name in fields})


def resolve(config: Any, backend: str | None = None, fixed: dict[str, str] | None = None) -> Any:
    """A copy of `config` (a whole config, whose `model` block is resolved, or a model block) with every platform
    field's "auto" replaced by the concrete value for `backend` (None: this process's backend, asked at most once),
    in the block and in the model blocks nested in it (a captioner's encoder and decoder, SVT's backbone). Explicit
    values are kept; a value that is not a choice is a ConfigError naming the field and its choices. `fixed` sets
    fields to the given choices wherever they appear, whatever the config says (an export's portable forms). The copy
    is what a model is built from; `config` itself keeps "auto", so what a run records runs anywhere."""
    import ml_collections

    config = config.copy_and_resolve_references()
    block = config.model if isinstance(config.get("model"), ml_collections.ConfigDict) else config
    ask = _asker(backend)

    def walk(block: ml_collections.ConfigDict, where: str) -> None:
        for key in list(block.keys()):
            value = block[key]
            if key in FIELDS and not isinstance(value, ml_collections.ConfigDict):
                value = fixed[key] if fixed and key in fixed else value
                block[key] = FIELDS[key].resolve(value, ask, f"{where}.{key}")
            elif isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{where}.{key}")

    walk(block, "config.model")
    return config


def notes(block: Any, backend: str | None = None) -> list[str]:
    """What a run with the model block `block` should know about its settings on `backend` (None: this process's):
    per-block remat without a layer scan on the CPU, which saves nothing there (the module docstring says why), and
    VideoMamba's TPU kernel asked for on a CPU."""
    found = []
    on_cpu = _asker(backend)() == "cpu"
    if on_cpu and block.get("scan") == "pallas":
        found.append("config.model.scan='pallas' is the fused TPU kernel: on the CPU backend it runs only under "
                     "Pallas's TPU interpreter (jax.experimental.pallas.tpu.force_tpu_interpret_mode(), for checking "
                     "it) and stops with 'Only interpret mode is supported on CPU backend' otherwise; leave "
                     "config.model.scan='auto' (the recurrent scan on CPU).")
    remat, scanned = block.get("remat", "none"), block.get("scan_layers", False)
    if remat == "none" or scanned or not on_cpu:
        return found
    return [*found, f"config.model.remat={remat!r} saves no memory on the CPU backend unless "
            f"config.model.scan_layers=True (XLA:CPU merges an unrolled block's recomputation back into its forward "
            f"pass); set --config.model.scan_layers=true to keep one block's activations at a time."]


def resident_attention_lanes(heads: int, head_dim: int) -> int | None:
    """The lanes a grid step of "pallas_resident" (`vidjax.ops.attention_kernel`) reads for `heads` heads of
    `head_dim`: 128 holding 128 // head_dim heads side by side (a size that divides 128; where heads x head_dim is not
    a multiple of 128, the last block is filled with zero heads, as VideoMAE-S's decoder's 3 heads of 64 are), or one
    head of a multiple of 128; None where it takes neither."""
    if head_dim % 128 == 0:
        return head_dim
    if 128 % head_dim == 0 and heads > 0:
        return 128
    return None


def resident_attention_takes(heads: int, head_dim: int, length_kv: int) -> bool:
    """Whether "pallas_resident" takes `heads` heads of `head_dim` over `length_kv` keys: heads in whole lane blocks
    (`resident_attention_lanes`) and keys (padded to 128) whose score rows fit VMEM (`RESIDENT_MAX_KEYS`)."""
    return resident_attention_lanes(heads, head_dim) is not None and -(-length_kv // 128) * 128 <= RESIDENT_MAX_KEYS


def attention_implementation(value: str, dtype, head_dim: int = 64, length: int = 0,
                             length_kv: int | None = None, heads: int = 0) -> str:
    """The implementation a resolved `attention_impl` value runs for one call on operands of `dtype` with `heads`
    heads (0: unknown) of `head_dim`, `length` queries and `length_kv` keys (default: as many as queries; 0: short):
    an implementation is itself, a rule ("auto_cpu", "auto_gpu", "auto_tpu") picks by these, as the module docstring
    says. Nothing here asks which backend runs: "auto" is resolved at set-up (`resolve`, `choices`), and is an error
    here."""
    if value in ATTENTION_IMPLEMENTATIONS:
        return value
    if value not in ATTENTION_RULES:
        FIELDS["attention_impl"].check(value)
        raise ConfigError(f"attention_impl={value!r} reached an attention call unresolved: \"auto\" is resolved once "
                          f"at set-up (vidjax.platform.resolve(config) before building the model, or a model built "
                          f"from its config); a direct call takes an implementation or a rule "
                          f"({', '.join(ATTENTION_RULES)}).")
    import jax.numpy as jnp

    scores = length * (length if length_kv is None else length_kv)
    if value == "auto_cpu":
        return "blockwise" if scores >= BLOCKWISE_FROM_SCORES else "heads_major"
    if value == "auto_gpu":
        if jnp.dtype(dtype).itemsize == 2 and head_dim <= 128 and head_dim % 8 == 0:
            return "cudnn"
        return "blockwise" if scores >= BLOCKWISE_FROM_SCORES else "xla"
    if scores >= RESIDENT_FROM_SCORES and resident_attention_takes(heads, head_dim,
                                                                   length if length_kv is None else length_kv):
        return "pallas_resident"
    if (head_dim <= 128 or head_dim % 128 == 0) and scores >= PALLAS_TPU_FROM_SCORES:
        return "pallas_tpu"
    return "xla"


def check(name: str, value: Any) -> str:
    """`value` if it is a concrete value of field `name`, else a ConfigError naming the choices (for the functions
    that take one value directly, e.g. `layers.layer_norm(..., backward=)`)."""
    field = FIELDS[name]
    if value not in field.values:
        raise ConfigError(f"{name}={value!r}; choose one of {', '.join(repr(v) for v in field.values)} (\"auto\" is "
                          f"resolved at set-up: vidjax.platform.resolve).")
    return value


def host_allocator_applies(platforms: str, accelerator: str | None) -> bool:
    """Whether the host allocator policy ("reuse", `vidjax.host_malloc`) is this host's choice: XLA:CPU runs the model
    because `platforms` (jax_platforms, e.g. "cpu" or "cuda,cpu") names the CPU first, or names nothing and no
    `accelerator` is on this host (`accelerator_on_host`). Decided before jax starts a backend, so from these and not
    from `backend()`."""
    first = platforms.split(",")[0].strip()
    return first == "cpu" or (not first and accelerator is None)


# What an accelerator's chips leave on a Linux host, read without starting a backend (jax's own checks read the same:
# `jax._src.hardware_utils`). A TPU chip is a PCI device of Google's vendor id, on a TPU VM and in a GKE TPU pod alike
# (any device of Google's counts, so a new generation is not taken for none); an NVIDIA GPU shows its device files
# (`/dev/dxg` under WSL2); AMD's kernel driver shows `/dev/kfd`.
GOOGLE_PCI_VENDOR = "0x1ae0"
PCI_DEVICES = "/sys/bus/pci/devices"
NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")
AMD_DEVICE_FILES = ("/dev/kfd",)


def tpu_chips(pci_devices: str = PCI_DEVICES) -> int:
    """How many PCI devices of Google's this host has under `pci_devices`: its TPU chips, as jax counts them."""
    count = 0
    for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
        try:
            count += pathlib.Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR
        except OSError:
            continue
    return count


def accelerator_on_host(plugin: str | None) -> str | None:
    """`plugin` (an installed jax plugin: "libtpu", "xla_cuda12", "xla_rocm", ...) where its chips are on this host,
    else None: jax with a plugin whose chips are absent runs on the CPU. A plugin of another kind counts as
    present (nothing here says what its chips leave on the host)."""
    if plugin is None:
        return None
    name = plugin.lower()
    if "tpu" in name:
        return plugin if tpu_chips(PCI_DEVICES) else None
    if "cuda" in name or "nvidia" in name:
        return plugin if any(os.path.exists(path) for path in NVIDIA_DEVICE_FILES) else None
    if "rocm" in name:
        return plugin if any(os.path.exists(path) for path in AMD_DEVICE_FILES) else None
    return plugin
