"""Step-time benchmark of vidjax models, optionally side by side with their PyTorch reference implementation.

  python -m vidjax.bench --model=videomae --variant=S/16 --frames=16 --size=112 --batch=2 --mode=pretrain
  python -m vidjax.bench ... --compare=torch      # also times the PyTorch reference in the same process
  python -m vidjax.bench --model=timesformer --variant=S/16 --frames=8 --size=112 --mode=finetune --compare=torch
  python -m vidjax.bench --model=vivit --variant=S/16x2 --frames=16 --size=112 --mode=infer --compare=torch
  python -m vidjax.bench --model=videomamba --variant=S/16 --frames=8 --size=112 --mode=finetune --compare=torch
  python -m vidjax.bench --mode=mamba_block --variant=S/16 --frames=64 --size=224 --batch=1


Pre-train and fine-tune time the trainer's own jitted update step (the code `vidjax.main` runs); infer times
the jitted forward pass of the classifier, encode that of the backbone alone (config.model.head="none", no
predictor beside it; its `last_hidden_state`). The last line printed is one JSON object: seconds_per_step (median
of the timed steps after warm-up), clips_per_s, compile_s, flops_per_step (the model's, all devices together), and
with --compare the PyTorch figures and `speedup_vs_torch` (torch seconds / vidjax seconds; above 1 means vidjax is
faster); `--rounds=3` times vidjax and torch in turn three times and reports the median of the three ratios.
The references (vidjax.bench.reference, random weights sized from the vidjax config): transformers' VideoMAE
(pretrain, finetune, infer), TimeSformer and ViViT (finetune, infer; ViViT is timed as model 1, joint attention,
on both sides) and the PyTorch port of official VideoMamba (finetune, infer).
`temp_bytes` / `argument_bytes` are XLA's per-device memory figures for the compiled step. The memory and
compile-time controls each take a comma list, and the benchmark runs every combination in one process (so their
ratios are comparable) and ends with a markdown table and {"rows": [...]}: `--dtype` (float32 | bfloat16 compute;
parameters and optimizer state stay float32), `--remat` (none | full | dots_saveable per block), `--grad_accum`
(micro-batches per step) and `--scan_layers` (false | true: one lax.scan over the blocks):

  python -m vidjax.bench --model=videomae --variant=S/16 --batch=8 --remat=full --grad_accum=2
  python -m vidjax.bench --model=videomae --variant=B/16 --dtype=float32,bfloat16 --remat=none,full \
      --scan_layers=false,true

VideoMAE pre-training with VideoMAE V2's dual masking against VideoMAE's, at the same encoder, in one run, with the
decoder blocks' share of each step (from the step timed again with a one-block decoder):

  python -m vidjax.bench --model=videomae --variant=S/16 --mode=pretrain --decoder_mask=none,run_cell \
      --decoder_share

What a model too large to run here needs per device: `--compile_only` compiles the step for unallocated state
under `--mesh` (with simulated devices on a CPU) and reports XLA's per-device memory, running nothing:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m vidjax.bench --model=videomae --variant=g/14 \
      --frames=16 --size=224 --batch=8 --mode=pretrain --decoder_mask=run_cell --remat=full --scan_layers=true \
      --mesh=1,8,1 --compile_only

A long clip's inference memory, compiled only, by the compiler of this machine or, with `--topology` (as
`python -m vidjax.aot` takes it), by libtpu for a TPU slice; the row says which (`backend`, `device_kind`) and has
XLA's argument, output, temporary and total bytes per device (docs/performance.md, "V-JEPA 2 long clips"). XLA:CPU
hands some fusions to YNNPACK (a dense attention's two products and softmax, for one) and does not count what
YNNPACK holds inside them; XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-dot,-eltwise,-reduce keeps every
buffer in XLA's plan:

  python -m vidjax.bench --model=vjepa2 --variant=L/16 --mode=encode --frames=64 --size=256 --batch=1 --compile_only
  python -m vidjax.bench --model=vjepa2 --variant=L/16 --mode=encode --frames=64 --size=256 --batch=1 --compile_only \
      --topology=v5litepod-1

`--mode=mamba_block` compares VideoMamba's chunked selective scan with one unchunked associative scan on a single
bidirectional block of the variant's width: XLA's temporary memory for forward + backward at --frames (compiled
only, nothing runs), and the forward + backward time at --time_frames. Ratios are chunked / unchunked.

Scaling curves (`vidjax.bench.sweep`): time and memory of several families and modes over frames, image size or
batch, with the fitted log-log exponents, a JSON table and a PNG:

  python -m vidjax.bench --sweep=frames --sweep_values=8,16,32,64 --models=videomae,timesformer,vivit,videomamba \
      --modes=infer,finetune --size=112 --batch=1 --steps=3 --warmup=1 --out=docs/figures/sweep_frames_cpu

Long clips fine-tune in bounded memory with --remat=full --scan_layers=true (one value each in a sweep):

  python -m vidjax.bench --sweep=frames --sweep_values=64,128,256 --models=videomamba --modes=finetune --size=224 \
      --batch=1 --steps=2 --warmup=1 --remat=full --scan_layers=true --out=docs/figures/sweep_frames_videomamba_long

Every point of a sweep is checked before the first compiles (a size a model refuses is an error, exit 2); --out's
JSON is written after each point, and the same command run again after an interruption keeps the points it holds and
measures the rest. Interrupted (Ctrl-C, SIGTERM), the benchmark prints one line (what was kept) and exits 130 / 143;
--compare=torch without torch and transformers installed is one line naming `pip install 'vidjax[torch]'`, exit 2.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from absl import app, flags

from vidjax import cli, config_lib, host_malloc, tpu
from vidjax.bench import op_profile, reference, sweep
from vidjax.convert.common import is_video_config
from vidjax.flops import matmul_flops, plain_config  # `step.matmul_flops`, as the matrix and the sweep name it
from vidjax.models import available, get_model, traits, videomamba
from vidjax.models.layers import REMAT_POLICIES

_MODEL = flags.DEFINE_string("model", "videomae", "Video model name (a module in vidjax.models that takes clips).")
_VARIANT = flags.DEFINE_string("variant", "S/16", "Variant string, e.g. S/16, B/16.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 112, "Frame height and width in pixels.")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch size.")
_MODE = flags.DEFINE_enum("mode", "pretrain", ["pretrain", "finetune", "infer", "encode", "mamba_block"],
                          "What to time: the train step (pretrain, finetune), the classifier's forward (infer), the "
                          "backbone's forward alone (encode: head none, its last_hidden_state), or mamba_block.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_list("dtype", ["float32"], "Compute dtype(s), float32 or bfloat16 (parameters and optimizer "
                                                 "state stay float32).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 400, "Classes of the fine-tune/infer head.")
_COMPARE = flags.DEFINE_enum("compare", None, ["torch"], "Also time the PyTorch reference in the same run "
                                                         "(vidjax.bench.reference: videomae, timesformer, "
                                                         "vivit, videomamba).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads for --compare=torch.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "--compare=torch: time vidjax then torch this many times in turn in "
                                            "this process; speedup_vs_torch is the median of the rounds' ratios.")
_TIME_FRAMES = flags.DEFINE_integer("time_frames", 8, "--mode=mamba_block: frames for the timing comparison.")
_SCAN_CHUNK = flags.DEFINE_integer("scan_chunk", 0, "--mode=mamba_block: chunk length (0 = the model default).")
_REMAT = flags.DEFINE_list("remat", ["none"], "Per-block rematerialisation(s) (config.model.remat): none, full, "
                                              "dots_saveable.")
_GRAD_ACCUM = flags.DEFINE_list("grad_accum", ["1"], "Micro-batches per step (config.grad_accum_steps); --batch "
                                                     "is the global batch they split.")
_PROFILE = flags.DEFINE_bool("profile", False, "After timing, run the step under the profiler and print its op time by "
                                                "category (GEMMs by role, attention, norms, optimizer, copies...), "
                                                "beside PyTorch's with --compare=torch (vidjax.bench.op_profile).")
_SCAN_LAYERS = flags.DEFINE_list("scan_layers", ["false"], "config.model.scan_layers: false (blocks unrolled) or "
                                                           "true (one lax.scan over them).")
_DECODER_MASK = flags.DEFINE_list("decoder_mask", ["none"], "--mode=pretrain of videomae: "
                                  "config.model.decoder_mask_type: none (VideoMAE: the decoder reconstructs every "
                                  "masked token) or run_cell (VideoMAE V2's dual masking: a running-cell mask "
                                  "of ratio 0.5 halves the decoder's tokens); none,run_cell times both in one run.")
_PIXELS = flags.DEFINE_list("pixels", ["host"], "--mode=pretrain|finetune: where the clips' pixels are made "
                             "(config.data.pixels): host (uint8 RGB clips in the batch) or device (the decoded YUV "
                             "planes of the crops' region, a 640x360 video's at the recipe's short side, converted "
                             "and cropped in the step: `vidjax.ops.pixels`); host,device times both in one run, the "
                             "difference being the device's added step time.")
_MESH = flags.DEFINE_list("mesh", [], "DATA,FSDP,TENSOR: the device mesh (config.mesh), e.g. 1,8,1 for FSDP over 8 "
                          "devices; default: data parallel over every device.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Compile the step (or forward) for abstract (unallocated) "
                                  "state and report XLA's per-device memory, without running it: what a model too "
                                  "large for this host (ViT-g on a CPU) needs per device under --mesh.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "With --compile_only: compile for this TPU slice with libtpu "
                                "instead of for this machine (v5litepod-1, v6e-1, v5p:2x2x1, ...: the names "
                                "`python -m vidjax.aot --topology` takes; needs `pip install 'vidjax[tpu]'`).")
_ATTENTION_IMPL = flags.DEFINE_string("attention_impl", None, "config.model.attention_impl of the ViT families "
                                      "(default: auto, the backend's rule): one implementation for every attention, "
                                      "e.g. heads_major (dense) against blockwise (vidjax/platform.py).")
_DECODER_SHARE = flags.DEFINE_bool("decoder_share", False, "--mode=pretrain of videomae: also time each row with a "
                                   "one-block decoder, and report the decoder blocks' share of the step.")

_SWEEP = flags.DEFINE_enum("sweep", None, ["frames", "size", "batch"], "Scaling curves (vidjax.bench.sweep): time "
                           "and memory of each of --models in each of --modes at every --sweep_values of this "
                           "axis, the other two held at --frames, --size, --batch; with --out, a JSON table (written "
                           "after each point; a rerun resumes from it) and a log-log PNG with the fitted exponents.")
_SWEEP_VALUES = flags.DEFINE_list("sweep_values", [], "--sweep: the values, e.g. 8,16,32,64 (default: "
                                  "frames 8,16,32,64; size 112,160,224; batch 1,2,4,8).")
_MODELS = flags.DEFINE_list("models", [], "--sweep: the families (default: --model), e.g. "
                            "videomae,timesformer,vivit,videomamba; each at its smallest size (S/16, ViViT S/16x2) "
                            "unless --variant is given.")
_MODES = flags.DEFINE_list("modes", [], "--sweep: the modes (default: --mode), e.g. infer,finetune.")
_OUT = flags.DEFINE_string("out", None, "--sweep: write OUT.json (after each point: the same command again resumes "
                           "from it) and OUT.png (the curves).")

# What each controllable option may be, to check --dtype/--remat/--grad_accum/--scan_layers before compiling.
_CHOICES = {"dtype": ("float32", "bfloat16"), "remat": tuple(REMAT_POLICIES),
            "scan_layers": ("false", "true"), "decoder_mask": ("none", "run_cell"), "pixels": ("host", "device")}


# Peak dense bf16 FLOP/s of one device (a GPU, or a TPU chip as jax counts it) by `jax.Device.device_kind`, from the
# vendors' data sheets (without structured sparsity): the denominator of MFU. Kinds that only differ by a suffix
# (memory size, form factor) share an entry: "NVIDIA A100-SXM4-40GB" and "NVIDIA A100 80GB PCIe" are "NVIDIA A100".
PEAK_BF16_FLOPS = {
    "NVIDIA H100": 989e12,  # SXM (device kind "NVIDIA H100 80GB HBM3")
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,
    "NVIDIA GH200": 989e12,
    "NVIDIA A100": 312e12,
    # TPU chips (vidjax.tpu.CHIPS; a v3 chip is two jax devices, each half the chip's peak).
    **{chip.device_kind: chip.peak_bf16_flops / chip.devices_per_chip for chip in tpu.CHIPS.values()},
}
# Other spellings of a kind above: jax names a v5p chip "TPU v5"; the marketing names of the chips.
_KIND_ALIASES = {"TPU v5p": "TPU v5", "TPU v5e": "TPU v5 lite", "TPU v6e": "TPU v6 lite"}


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of `device_kind` (`jax.devices()[0].device_kind`), or None when the
    table (`PEAK_BF16_FLOPS`) has no figure for it (a CPU, an unknown accelerator).

    A kind matches an entry exactly, or starts with it followed by a space or a dash ("NVIDIA H100 80GB HBM3" is
    "NVIDIA H100"); the longest such entry wins ("NVIDIA H100 PCIe" before "NVIDIA H100").
    """
    kind = " ".join(str(device_kind).split())
    kind = _KIND_ALIASES.get(kind, kind).lower()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        name = key.lower()
        if kind == name or kind.startswith((name + " ", name + "-")):
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(flops_per_step: float, seconds_per_step: float, device_kind: str, devices: int = 1) -> float | None:
    """Model FLOPs utilisation of a step: its FLOPs per second per device over the device's peak (`peak_flops`);
    None when the peak is unknown.

    `flops_per_step` is the model's FLOPs for the whole step over all `devices`, as `time_vidjax` reports them.
    """
    peak = peak_flops(device_kind)
    if peak is None or not seconds_per_step > 0:
        return None
    return flops_per_step / devices / seconds_per_step / peak


def bench_config(model: str, variant: str, frames: int, size: int, batch: int, mode: str, dtype: str,
                 num_classes: int, remat: str = "none", grad_accum: int = 1, scan_layers: bool = False,
                 compare: str | None = None, decoder_mask: str = "none", pixels: str = "host"):
    """A trainer config for the benchmark workload (no data source is read). With compare="torch", the model
    config is the one the PyTorch reference implements (`reference.vidjax_overrides`: ViViT's joint model 1).
    `pixels` "device": the batch holds the planes a Kinetics recipe's clip sends (short side 256/224 of the size,
    multi-scale crops: config.data's pixel settings), `time_vidjax` draws them."""
    config = config_lib.trainer_config()
    config.model_name = model
    config.task = "pretrain" if mode == "pretrain" else "classification"
    config.model = get_model(model).default_config()
    head = {"pretrain": "pretrain", "encode": "none"}.get(mode, "classification")
    config.model.update(dict(variant=variant, num_frames=frames, image_size=size, dtype=dtype, head=head,
                             num_classes=num_classes, remat=remat, scan_layers=scan_layers))
    if mode != "pretrain" and "predictor" in config.model:  # V-JEPA 2's predictor: pre-training's, unused here
        config.model.predictor = False
    if decoder_mask != "none":
        config.model.decoder_mask_type = decoder_mask
    if compare == "torch":
        config.model.update(reference.vidjax_overrides(model))
    config.data = config_lib.synthetic_data(num_frames=frames, image_size=size, num_classes=num_classes)
    config.data.pixels = pixels
    if pixels == "device":
        config.data.update(short_side=round(size * 256 / 224), train_crop="multi_scale")
    config.batch_size = batch
    config.grad_accum_steps = grad_accum
    config.total_steps = 1000
    config.optimizer.warmup_epochs = 0
    return config


def device_pixel_batch(config, rng) -> dict:
    """A device-pixel batch's planes and crops (`vidjax.ops.pixels.PLANE_KEYS`) for `config`'s clips: random pixels
    in the canvas `pipeline.pixel_canvas` sizes, each video's region that of a multi-scale crop of a 640x360 video
    (360 rows of it at the recipe's short side), its box a random square of 0.66-1 of that, half of them flipped."""
    import numpy as np

    from vidjax.data import pipeline  # the input pipeline loads grain: not for --help or a bad command line

    b, t = config.batch_size, config.model.num_frames
    rows, cols = pipeline.pixel_canvas(config.data)
    side = min(rows, cols, 360)
    boxes = []
    for _ in range(b):
        extent = side * rng.uniform(0.66, 1.0)
        top, left = rng.uniform(0, side - extent, 2)
        boxes.append([[top, left, top + extent, left + extent]])
    return {"planes_y": rng.integers(0, 256, (b, t, rows, cols), dtype=np.uint8),
            "planes_u": rng.integers(0, 256, (b, t, rows // 2, cols // 2), dtype=np.uint8),
            "planes_v": rng.integers(0, 256, (b, t, rows // 2, cols // 2), dtype=np.uint8),
            "crop_box": np.asarray(boxes, np.float32), "crop_flip": rng.random((b, 1)) < 0.5,
            "planes_valid": np.full((b, 2), side, np.int32), "planes_colour": np.zeros((b, 2), np.int32)}


def _median_time(fn, steps: int, warmup: int) -> tuple[float, list[float]]:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_vidjax(config, mode: str, steps: int, warmup: int, profile: bool = False, compile_only: bool = False,
                topology: str | None = None) -> dict:
    """Times the trainer's update step (pretrain/finetune) or the jitted forward (infer: the logits; encode: the
    last_hidden_state) on random inputs; with `profile`, also its op time by category (`op_profile.profile_jax`) as
    "profile". With `compile_only` the step is compiled for abstract state and batch (nothing is allocated or run):
    the row has compile time, the model's FLOPs and XLA's per-device memory (`train.memory_figures`), and no times;
    `topology` (a TPU slice's name, `tpu.slice_of`) compiles it for that slice's devices with libtpu, the model's
    platform choices resolved for TPU, as `vidjax.train.aot` does. The row's `backend` and `device_kind` say whose
    compiler made the figures."""
    import jax
    import numpy as np
    from flax import nnx

    # Imported here, not at the top: the trainer loads the input pipeline (grain), which --help and a bad command
    # line need not wait for.
    from vidjax import losses, sharding, train
    from vidjax.data.pipeline import running_cell_mask, tube_mask

    slice_ = tpu.slice_of(topology) if topology else None
    mesh = sharding.create_mesh(config.mesh, tpu.topology_devices(slice_)) if slice_ else None
    backend = slice_.platform if slice_ else None
    setup = train.build(config, train_source_len=config.batch_size, mesh=mesh, backend=backend)
    rng = np.random.default_rng(0)
    b, m = config.batch_size, config.model
    local = {"video": rng.integers(0, 256, (b, m.num_frames, m.image_size, m.image_size, 3), dtype=np.uint8),
             "label": rng.integers(0, m.num_classes, (b,), dtype=np.int32),
             "decode_failures": np.zeros((b,), np.int32)}
    if mode == "pretrain":
        grid = setup.abstract_model.encoder.grid
        local["mask"] = np.stack([tube_mask(rng, grid, m.mask_ratio) for _ in range(b)])
        if m.get("decoder_mask_type", "none") == "run_cell":  # VideoMAE V2's dual masking, as the pipeline draws it
            local["decoder_mask"] = np.stack([running_cell_mask(rng, grid, m.decoder_mask_ratio) for _ in range(b)])
    batch_sh = sharding.batch_sharding(setup.mesh)
    host_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in local.items()}
    if config.data.pixels == "device":
        local.pop("video")
        local.update(device_pixel_batch(config, rng))
    if mode not in ("infer", "encode") and train.host_batch(config):  # as the trainer puts it: `train.batch_putter`
        local = train.fold_micro_batches(local, train.check_grad_accum(config, setup.mesh))
        batch_sh = sharding.host_batch_sharding(setup.mesh)
    if compile_only:
        batch = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh), local)
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), setup.abstract_state,
                             setup.state_shardings)
    else:
        batch = sharding.global_batch(local, batch_sh)
        state = setup.init_state()

    def jitted(config, setup, state, batch=batch):
        """The jitted function the row times, with its arguments."""
        if mode in ("infer", "encode"):
            output = "logits" if mode == "infer" else "last_hidden_state"

            def forward(params, video):
                model = nnx.merge(setup.graphdef, params)
                return model(losses.normalize_video(video, m.pixel_mean, m.pixel_std))[output]

            return jax.jit(forward), (state["params"], batch["video"])
        return train.make_train_step(config, setup), (state, batch)

    start = time.perf_counter()
    fn, args = jitted(config, setup, state)
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    if mode in ("infer", "encode"):
        params = state["params"]

        def step():
            return compiled(params, batch["video"])
    else:
        holder = {"state": state}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics
    # The model's FLOPs: the matrix products of the same step in its plainest form (`matmul_flops`): blocks
    # unrolled and one batch (a loop's body would count once), no rematerialisation (recomputed work is not the
    # model's), attention as plain products (a fused kernel is one opaque call). Counted from the traced program,
    # not from XLA's cost analysis: on GPU the compiled step's analysis counted 0.05-0.2 of them (its GEMMs are
    # library calls) and a lowering's returned none.
    plain = plain_config(config)
    plain_setup = train.build(plain, config.batch_size, setup.mesh, backend)  # its own layout (blocks unstacked)
    fn, args = jitted(plain, plain_setup, plain_setup.abstract_state, host_batch)  # the model's: no pixel work
    flops = matmul_flops(jax.make_jaxpr(fn)(*args))
    # XLA's per-device figures for the compiled step: arguments (parameters, optimizer state, batch), temporaries
    # (activations, gradients in flight), outputs, and their total.
    memory_figures = train.memory_figures(compiled) or {"temp_bytes": None, "argument_bytes": None}
    device = setup.mesh.devices.flat[0]
    common = {"framework": "vidjax", "jax_version": jax.__version__, "backend": device.platform,
              "device_kind": device.device_kind, "devices": setup.mesh.devices.size, "mesh": dict(setup.mesh.shape),
              "compile_s": compile_s, "flops_per_step": flops}
    if compile_only:
        return common | memory_figures | {"compile_only": True}
    seconds, times = _median_time(step, steps, warmup)
    profiled = {}
    if profile:
        numels = {int(np.prod(p.shape)) for p in jax.tree.leaves(state["params"])}
        profiled["profile"] = op_profile.profile_jax(step, compiled.as_text(), numels)
    return profiled | common | {"host_malloc": host_malloc.state(), "seconds_per_step": seconds, "step_times": times,
                                "clips_per_s": config.batch_size / seconds} | memory_figures


def bench_mamba_block(variant: str, frames: int, size: int, batch: int, time_frames: int, steps: int, warmup: int,
                      dtype: str, scan_chunk: int = 0) -> dict:
    """Chunked vs unchunked vs sequential vs recurrent selective scan in one bidirectional VideoMamba block: fwd+bwd
    memory and time, and the scan "auto" picks on this backend."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    cfg = videomamba.default_config()
    cfg.variant = variant
    width, patch = videomamba.dims(cfg)["width"], videomamba.dims(cfg)["patch"]
    chunk = scan_chunk or cfg.scan_chunk

    def tokens(n_frames: int) -> int:
        return 1 + n_frames * (size // patch) ** 2

    def measure(scan: str) -> dict:
        with nnx.use_eager_sharding(False):
            block = videomamba.Block(width, scan=scan, scan_chunk=chunk, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(block)

        def loss(params, x_BLD):
            hidden, _ = nnx.merge(graphdef, params)(x_BLD)
            return jnp.sum(hidden.astype(jnp.float32))

        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
        big = jax.ShapeDtypeStruct((batch, tokens(frames), width), jnp.float32)
        memory = grad_fn.lower(params, big).compile().memory_analysis()
        x = jax.random.normal(jax.random.key(0), (batch, tokens(time_frames), width), jnp.float32)
        compiled = grad_fn.lower(params, x).compile()
        seconds, _ = _median_time(lambda: compiled(params, x), steps, warmup)
        return {"temp_bytes": int(memory.temp_size_in_bytes), "seconds_fwd_bwd": seconds}

    result = {"width": width, "scan_chunk": chunk, "memory_tokens": tokens(frames), "time_tokens": tokens(time_frames),
              "chunked": measure("chunked"), "associative": measure("associative"),
              "sequential": measure("sequential"), "recurrent": measure("recurrent"),
              "auto": videomamba.resolve_scan("auto")}
    result["memory_ratio"] = result["chunked"]["temp_bytes"] / result["associative"]["temp_bytes"]
    result["time_ratio"] = result["chunked"]["seconds_fwd_bwd"] / result["associative"]["seconds_fwd_bwd"]
    result["sequential_time_ratio"] = result["sequential"]["seconds_fwd_bwd"] / result["chunked"]["seconds_fwd_bwd"]
    result["recurrent_time_ratio"] = result["recurrent"]["seconds_fwd_bwd"] / result["chunked"]["seconds_fwd_bwd"]
    return result


def mesh_flag() -> tuple[int, int, int]:
    """--mesh as (data, fsdp, tensor)."""
    try:
        data, fsdp, tensor = (int(v) for v in _MESH.value)
    except ValueError:
        raise app.UsageError(f"--mesh={','.join(_MESH.value)}: give DATA,FSDP,TENSOR, e.g. 1,8,1 (-1 = the rest of "
                             f"the devices).") from None
    return data, fsdp, tensor


def decoder_share(config, seconds_per_step: float, steps: int, warmup: int) -> dict:
    """The decoder blocks' share of a VideoMAE pre-training step, from the same step timed with one decoder block:
    a block costs (t - t_1) / (depth - 1), the blocks depth times that, over t. Attention, norms and MLPs of the
    blocks count; the decoder's input projection, head and loss (a few percent) stay with the rest."""
    if config.model.get("head") != "pretrain" or "decoder_depth" not in config.model:
        raise app.UsageError("--decoder_share applies to --model=videomae --mode=pretrain.")
    depth = config.model.decoder_depth
    if depth < 2:
        raise app.UsageError(f"--decoder_share needs a decoder of at least 2 blocks; it has {depth}.")
    one = config.copy_and_resolve_references()
    one.model.decoder_depth = 1
    seconds_one = time_vidjax(one, "pretrain", steps, warmup)["seconds_per_step"]
    per_block = max(seconds_per_step - seconds_one, 0.0) / (depth - 1)
    return {"seconds_per_step_one_decoder_block": seconds_one,
            "decoder_blocks_share": depth * per_block / seconds_per_step}


def option_rows() -> list[dict]:
    """Every combination of the comma-listed --dtype, --remat, --grad_accum and --scan_layers (and --decoder_mask
    when given), checked."""
    import itertools

    values = {"dtype": _DTYPE.value, "remat": _REMAT.value, "grad_accum": _GRAD_ACCUM.value,
              "scan_layers": _SCAN_LAYERS.value}
    if _PIXELS.value != ["host"]:
        if _MODE.value not in ("pretrain", "finetune"):
            raise app.UsageError(f"--pixels={','.join(_PIXELS.value)} applies to the training step (--mode=pretrain or "
                                 f"finetune).")
        values["pixels"] = _PIXELS.value
    if _DECODER_MASK.value != ["none"]:
        if _MODE.value != "pretrain" or _MODEL.value not in (pretraining := pretraining_models()):
            raise app.UsageError(f"--decoder_mask={','.join(_DECODER_MASK.value)} applies to "
                                 f"--model={'|'.join(pretraining)} --mode=pretrain.")
        values["decoder_mask"] = _DECODER_MASK.value
    for name, choices in _CHOICES.items():
        if name not in values:
            continue
        bad = [v for v in values[name] if v not in choices]
        if bad or not values[name]:
            raise app.UsageError(f"--{name}={','.join(values[name])}: each value must be one of {', '.join(choices)}.")
    try:
        values["grad_accum"] = [int(v) for v in values["grad_accum"]]
        assert values["grad_accum"] and min(values["grad_accum"]) >= 1
    except (ValueError, AssertionError):
        raise app.UsageError(f"--grad_accum={','.join(map(str, _GRAD_ACCUM.value))}: give positive integers, "
                             f"e.g. --grad_accum=1,2,4.") from None
    values["scan_layers"] = [v == "true" for v in values["scan_layers"]]
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def _row_line(row: dict) -> str:
    line = (f"{row['seconds_per_step']:.4f} s/step, {row['clips_per_s']:.2f} clips/s, compile {row['compile_s']:.1f}s, "
            f"{row['flops_per_step'] / 1e9:.1f} GFLOP/step")
    line += f", temp memory {row['temp_bytes'] / 2**20:.1f} MiB" if row["temp_bytes"] is not None else ""
    return line + (f", decoder blocks {row['decoder_blocks_share']:.0%} of the step"
                   if "decoder_blocks_share" in row else "")


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table, with step time and memory relative to the first row (and the decoder mask and
    the decoder blocks' share of the step when the rows have them)."""
    masks = "decoder_mask" in rows[0]
    shares = "decoder_blocks_share" in rows[0]
    where = "pixels" in rows[0]
    lines = [f"| {'pixels | ' if where else ''}{'decoder_mask | ' if masks else ''}dtype | remat | grad_accum | "
             f"scan_layers | s/step | clips/s | compile s | temp MiB | args MiB | time vs first | temp vs first |"
             f"{' decoder blocks share |' * shares}",
             "|" + " --- |" * (11 + masks + shares + where)]
    first = rows[0]
    for r in rows:
        temp = r["temp_bytes"] / 2**20 if r["temp_bytes"] is not None else float("nan")
        args = r["argument_bytes"] / 2**20 if r["argument_bytes"] is not None else float("nan")
        temp_ratio = r["temp_bytes"] / first["temp_bytes"] if r["temp_bytes"] and first["temp_bytes"] else float("nan")
        share = f" {r['decoder_blocks_share']:.2f} |" if shares else ""
        lines.append(f"| {r['pixels'] + ' | ' if where else ''}{r['decoder_mask'] + ' | ' if masks else ''}"
                     f"{r['dtype']} | {r['remat']} | {r['grad_accum']} | {str(r['scan_layers']).lower()} | "
                     f"{r['seconds_per_step']:.4f} | {r['clips_per_s']:.2f} | "
                     f"{r['compile_s']:.1f} | {temp:.1f} | {args:.1f} | "
                     f"{r['seconds_per_step'] / first['seconds_per_step']:.2f} | {temp_ratio:.2f} |" + share)
    return "\n".join(lines)


def video_models() -> list[str]:
    """The models this benchmark times: those that take a clip (frames and image size in their config)."""
    return [name for name in available() if is_video_config(get_model(name).default_config())]


def pretraining_models() -> list[str]:
    """The video models whose traits give them a masked pre-training step to time (`Benchmark.modes`)."""
    return [name for name in video_models()
            if (bench := traits(name).benchmark) is not None and "pretrain" in bench.modes]


def check_workload_flags() -> None:
    """Raises app.UsageError for a model, size or step count that cannot be benchmarked, before anything compiles.
    (A variant string is checked by the model itself: its ConfigError is reported the same way by `cli.run`.)"""
    models = video_models()
    if _MODEL.value not in models:
        raise app.UsageError(f"--model={_MODEL.value}: no such model; choose a video model: {', '.join(models)}.")
    for flag in (_FRAMES, _SIZE, _BATCH, _STEPS, _TIME_FRAMES, _ROUNDS):
        if flag.value < 1:
            raise app.UsageError(f"--{flag.name}={flag.value} must be at least 1.")
    if _WARMUP.value < 0 or _SCAN_CHUNK.value < 0:
        raise app.UsageError("--warmup and --scan_chunk cannot be negative.")
    if _COMPARE.value == "torch":
        if _TORCH_THREADS.value is not None and _TORCH_THREADS.value < 1:
            raise app.UsageError(f"--torch_threads={_TORCH_THREADS.value} must be at least 1 (or left unset for "
                                 f"torch's default).")
        if not _SWEEP.value:  # a sweep compares the families and modes that have a reference (`run_sweep`)
            try:  # `reference` imports no torch: what it supports is known without it
                reference.check_supported(_MODEL.value, _MODE.value)
            except ValueError as err:
                raise app.UsageError(str(err)) from None
            why = reference.missing([_MODEL.value])  # last: it imports torch (as the run will)
            if why:
                raise app.UsageError(why)


def check_point(config) -> None:
    """Raises ConfigError (or the model's ValueError) for a config the trainer would refuse, before anything
    compiles: its problems (`train.check_config`) and its model built abstractly, as `train.build` builds it."""
    from flax import nnx

    # Imported here, as in `time_vidjax`: the trainer loads the input pipeline (grain), which --help need not wait for.
    from vidjax import platform, train
    from vidjax.models import ParamKeys  # beside it: the same reason

    train.check_config(config)
    model_config = platform.resolve(config.model)
    with nnx.use_eager_sharding(False):
        nnx.eval_shape(lambda: get_model(config.model_name).Model(model_config, rngs=ParamKeys(config.seed)))


def check_sweep_points(axis: str, values: list[int], models: list[str], modes: list[str], variant: str | None
                       ) -> None:
    """Raises app.UsageError, naming the points and why, when a model refuses any point of the sweep (a size its
    patches or tubelets do not divide, a variant it has not): checked for every point before the first compiles."""
    refused, seen = [], {}
    for model in models:
        model_variant = variant or sweep.DEFAULT_VARIANTS.get(model, "S/16")
        for mode in modes:
            for value in values:
                point = {"frames": _FRAMES.value, "size": _SIZE.value, "batch": _BATCH.value, axis: value}
                key = (model, mode == "pretrain", tuple(point.values()))  # infer and finetune build the same model
                if key not in seen:
                    try:
                        check_point(bench_config(model, model_variant, point["frames"], point["size"], point["batch"],
                                                 mode, _DTYPE.value[0], _NUM_CLASSES.value, remat=_REMAT.value[0],
                                                 scan_layers=_SCAN_LAYERS.value[0] == "true",
                                                 compare=_COMPARE.value if reference.has_reference(model, mode)
                                                 else None))
                        seen[key] = None
                    except (config_lib.ConfigError, ValueError, TypeError) as err:
                        seen[key] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                if seen[key] is not None:
                    refused.append((f"{model} {model_variant} {mode} at {axis}={value}", seen[key]))
    if refused:
        (first, why), more = refused[0], len(refused) - 1
        held = " ".join(f"--{k}={v}" for k, v in (("frames", _FRAMES.value), ("size", _SIZE.value),
                                                    ("batch", _BATCH.value)) if k != axis)
        raise app.UsageError(f"--sweep={axis} --sweep_values={','.join(map(str, values))} ({held}): nothing was "
                             f"run, {len(refused)} point{'s' * (more > 0)} cannot: {first}: {why.rstrip('.')}"
                             + (f"; and {more} more ({', '.join(p for p, _ in refused[1:4])}"
                                f"{', ...' if more > 3 else ''})" if more else "")
                             + ". Choose values (and a --variant) every model takes, or leave those models out.")


def run_sweep() -> int:
    """--sweep: the scaling curves of `vidjax.bench.sweep`, every flag and point checked before the first compiles.
    With --out, PREFIX.json is rewritten after each point, and a rerun of the same command keeps the points it holds;
    interrupted, the command says how many points are kept and returns 130 (SIGINT) or 143 (SIGTERM)."""
    models = _MODELS.value or [_MODEL.value]
    modes = _MODES.value or [_MODE.value]
    known = video_models()
    bad = [m for m in models if m not in known]
    if bad:
        raise app.UsageError(f"--models={','.join(models)}: {', '.join(bad)} is no video model; choose from "
                             f"{', '.join(known)}.")
    bad = [m for m in modes if m not in ("pretrain", "finetune", "infer")]
    pretraining = pretraining_models()
    if bad or ("pretrain" in modes and not set(models) <= set(pretraining)):
        raise app.UsageError(f"--modes={','.join(modes)}: give infer, finetune (and pretrain for "
                             f"--models={','.join(pretraining)} alone).")
    try:
        values = [int(v) for v in _SWEEP_VALUES.value] or list(sweep.DEFAULT_VALUES[_SWEEP.value])
        assert min(values) >= 1 and len(values) == len(set(values))
    except (ValueError, AssertionError):
        raise app.UsageError(f"--sweep_values={','.join(_SWEEP_VALUES.value)}: give distinct positive integers, e.g. "
                             f"--sweep_values=8,16,32,64.") from None
    if len(_REMAT.value) > 1 or len(_SCAN_LAYERS.value) > 1 or len(_DTYPE.value) > 1:
        raise app.UsageError("--sweep: give one --dtype, one --remat and one --scan_layers (the curve's setting); "
                             "run the sweep once per setting to compare them.")
    option_rows()  # each value known (--dtype, --remat, --scan_layers)
    values = sorted(values)
    variant = _VARIANT.value if flags.FLAGS["variant"].present else None
    compared = [m for m in models if any(reference.has_reference(m, mode) for mode in modes)]
    if _COMPARE.value == "torch" and not compared:
        raise app.UsageError(f"--compare=torch: no PyTorch reference for --models={','.join(models)} "
                             f"--modes={','.join(modes)}; it supports {reference.supported()}.")
    check_sweep_points(_SWEEP.value, values, models, modes, variant)
    if _COMPARE.value == "torch" and (why := reference.missing(compared)):  # last: it imports torch, as the run will
        raise app.UsageError(why)
    options = dict(frames=_FRAMES.value, size=_SIZE.value, batch=_BATCH.value, steps=_STEPS.value,
                   warmup=_WARMUP.value, dtype=_DTYPE.value[0], num_classes=_NUM_CLASSES.value, variant=variant,
                   compare=_COMPARE.value, remat=_REMAT.value[0], scan_layers=_SCAN_LAYERS.value[0] == "true")
    done, saved = None, {"points": 0}
    if _OUT.value:
        try:
            done = sweep.previous(_OUT.value, sweep.settings(_SWEEP.value, values, models, modes, **options),
                                  sweep.host())
        except ValueError as err:
            raise app.UsageError(str(err)) from None
        if done is not None:
            count = len(done["rows"])
            print(f"resuming: {count} point{'s' * (count != 1)} of these settings already in "
                  f"{sweep.json_path(_OUT.value)} {'are' if count != 1 else 'is'} kept, not measured again"
                  + (" (the sweep is complete; delete the file to measure it again)" if done.get("complete") else ""),
                  flush=True)

    def save(partial: dict) -> None:
        sweep.write_json(partial, _OUT.value)
        saved["points"] = len(partial["rows"])

    interrupted = None
    try:
        result = sweep.run(_SWEEP.value, values, models, modes, **options, log=lambda line: print(line, flush=True),
                           bench=sys.modules[__name__], done=done, save=save if _OUT.value else None)
        print(sweep.markdown(result), flush=True)
        if _OUT.value:
            for path in sweep.write(result, _OUT.value, log=lambda line: print(line, flush=True)):
                print(f"wrote {path}", flush=True)
        print(json.dumps(result), flush=True)
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM (cli.interruptible)
        interrupted = err
    if interrupted is None:
        return 0
    if _OUT.value:
        points = saved["points"] or len((done or {}).get("rows", []))
        kept = (f"{points} point{'s' * (points != 1)} kept in {sweep.json_path(_OUT.value)}; rerun the same command "
                f"to measure the rest and draw the picture (the kept points are not measured again)")
    else:
        kept = ("the points measured are printed above, not kept (no --out); add --out=PREFIX to keep each point as "
                "it is measured and to resume a rerun")
    return cli.stopped(interrupted, kept + ".")


def run_mamba_block() -> None:
    """--mode=mamba_block: VideoMamba's selective scans on one block (`bench_mamba_block`), printed and as JSON."""
    rows = option_rows()
    if len(rows) > 1:
        raise app.UsageError("--mode=mamba_block takes one --dtype and no --remat/--grad_accum/--scan_layers "
                             "lists.")
    dtype = rows[0]["dtype"]
    result = {"mode": "mamba_block", "variant": _VARIANT.value, "frames": _FRAMES.value, "size": _SIZE.value,
              "batch": _BATCH.value, "time_frames": _TIME_FRAMES.value, "dtype": dtype}
    result.update(bench_mamba_block(_VARIANT.value, _FRAMES.value, _SIZE.value, _BATCH.value, _TIME_FRAMES.value,
                                    _STEPS.value, _WARMUP.value, dtype, _SCAN_CHUNK.value))
    for scan in ("chunked", "associative", "sequential", "recurrent"):
        print(f"{scan:>11}: fwd+bwd temp memory {result[scan]['temp_bytes'] / 2**20:.1f} MiB at "
              f"{result['memory_tokens']} tokens; {result[scan]['seconds_fwd_bwd'] * 1e3:.1f} ms at "
              f"{result['time_tokens']} tokens", flush=True)
    print(f"chunked / associative: memory {result['memory_ratio']:.3f}, time {result['time_ratio']:.2f}; "
          f"sequential / chunked: time {result['sequential_time_ratio']:.2f}; scan='auto' runs "
          f"{result['auto']} here", flush=True)
    print(json.dumps(result))


def _check_row_flags(rows: list[dict]) -> None:
    """Raises app.UsageError for --compile_only, --topology or --compare=torch with what they cannot time."""
    if _COMPILE_ONLY.value and (_COMPARE.value or _DECODER_SHARE.value or _PROFILE.value):
        raise app.UsageError("--compile_only compiles the step and runs nothing: it takes no --compare, "
                             "--decoder_share or --profile.")
    if _TOPOLOGY.value and not _COMPILE_ONLY.value:
        raise app.UsageError(f"--topology={_TOPOLOGY.value} compiles for a TPU slice this machine does not have: add "
                             f"--compile_only (nothing runs).")
    if _COMPARE.value and len(rows) > 1:
        raise app.UsageError("--compare=torch times one configuration: give single --dtype/--remat/--grad_accum/"
                             "--scan_layers values.")


def _row_config(options: dict):
    """The trainer config of one row of `option_rows`, under --mesh when given."""
    config = bench_config(_MODEL.value, _VARIANT.value, _FRAMES.value, _SIZE.value, _BATCH.value, _MODE.value,
                          options["dtype"], _NUM_CLASSES.value, options["remat"], options["grad_accum"],
                          options["scan_layers"], _COMPARE.value, options.get("decoder_mask", "none"),
                          options.get("pixels", "host"))
    if _MESH.value:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_flag()
    if _ATTENTION_IMPL.value:
        if "attention_impl" not in config.model:
            raise app.UsageError(f"--attention_impl: --model={_MODEL.value} has no attention implementation to "
                                 f"choose.")
        config.model.attention_impl = _ATTENTION_IMPL.value
    return config


def _time_row(config, row: dict, label: str) -> dict:
    """`row` (the workload and its options) completed with vidjax's figures for `config`, and its line printed
    (`label` names the row among several)."""
    row.update(time_vidjax(config, _MODE.value, _STEPS.value, _WARMUP.value, _PROFILE.value, _COMPILE_ONLY.value,
                           _TOPOLOGY.value))
    if _COMPILE_ONLY.value:
        gib = 2**30
        what = "state, batch" if _MODE.value in ("pretrain", "finetune") else "parameters, clips"
        compiler = {"cpu": "XLA:CPU", "gpu": "XLA:GPU", "tpu": "libtpu"}.get(row["backend"], row["backend"])
        print(f"vidjax (compiled only, by {compiler} for {row['device_kind']}) mesh {row['mesh']}: per "
              f"device arguments ({what}) {row['argument_bytes'] / gib:.3f} GiB, temporaries "
              f"{row['temp_bytes'] / gib:.3f} GiB, outputs {row['output_bytes'] / gib:.3f} GiB, total "
              f"{row['total_bytes'] / gib:.3f} GiB; compile {row['compile_s']:.1f}s", flush=True)
        return row
    if _DECODER_SHARE.value:
        row.update(decoder_share(config, row["seconds_per_step"], _STEPS.value, _WARMUP.value))
    print(f"vidjax{' [' + label + ']' if label else ''}: {_row_line(row)}", flush=True)
    return row


def _torch_round(number: int, result: dict, config, placement: dict) -> dict:
    """Round `number` of --compare=torch: vidjax (timed again after the first round), then its PyTorch reference
    on `placement`; the first round's torch figures and profile go into `result` as "torch"."""
    if number > 1:  # vidjax again (recompiled: the same program), then torch: alternating in this process
        vidjax_s = time_vidjax(config, _MODE.value, _STEPS.value, _WARMUP.value)["seconds_per_step"]
    else:
        vidjax_s = result["seconds_per_step"]
    torch_result = reference.time_torch(_MODEL.value, _MODE.value, config.model, _BATCH.value, _STEPS.value,
                                        _WARMUP.value, threads=_TORCH_THREADS.value,
                                        profile=_PROFILE.value and number == 1, **placement)
    if number == 1:
        result["torch"] = {k: v for k, v in torch_result.items()
                           if k not in ("model", "mode", "frames", "size", "batch")}
    torch_s = torch_result["seconds_per_step"]
    which = f" [round {number} of {_ROUNDS.value}]" if _ROUNDS.value > 1 else ""
    print(f"torch:  {torch_s:.4f} s/step ({reference.describe(torch_result)}); vidjax {vidjax_s:.4f} s/step; "
          f"speed-up {torch_s / vidjax_s:.2f}x{which}", flush=True)
    return {"vidjax_seconds_per_step": vidjax_s, "torch_seconds_per_step": torch_s,
            "speedup_vs_torch": torch_s / vidjax_s}


def compare_torch(result: dict, config) -> None:
    """--compare=torch: `--rounds` rounds of vidjax then its PyTorch reference, on the device vidjax ran on; the
    median speed-up (and the rounds, when several) go into `result`."""
    overrides = reference.vidjax_overrides(_MODEL.value)
    if overrides:
        result["vidjax_overrides"] = overrides
        print(f"vidjax {_MODEL.value} timed with {' '.join(f'{k}={v}' for k, v in overrides.items())}, the "
              f"model the PyTorch reference implements", flush=True)
    # Torch on the device vidjax ran on (a GPU: CUDA), and under autocast when vidjax computes in bfloat16.
    placement = reference.placement(result["backend"], config.model.dtype)
    rounds = [_torch_round(number, result, config, placement) for number in range(1, _ROUNDS.value + 1)]
    result["speedup_vs_torch"] = statistics.median(r["speedup_vs_torch"] for r in rounds)
    if len(rounds) > 1:
        result["rounds"] = rounds
        print(f"median of {len(rounds)} alternating rounds: vidjax speed-up {result['speedup_vs_torch']:.2f}x "
              f"(vidjax {statistics.median(r['vidjax_seconds_per_step'] for r in rounds):.4f} s/step, torch "
              f"{statistics.median(r['torch_seconds_per_step'] for r in rounds):.4f} s/step)", flush=True)


def run_rows() -> None:
    """The step timings: one row per combination of the option lists, printed, then as JSON; one row alone can
    be compared with PyTorch (--compare) and profiled (--profile)."""
    rows = option_rows()
    _check_row_flags(rows)
    common = {"model": _MODEL.value, "variant": _VARIANT.value, "mode": _MODE.value, "frames": _FRAMES.value,
              "size": _SIZE.value, "batch": _BATCH.value}
    if _ATTENTION_IMPL.value:
        common["attention_impl"] = _ATTENTION_IMPL.value
    results = []
    for options in rows:
        config = _row_config(options)
        label = " ".join(f"{k}={str(v).lower()}" for k, v in options.items()) if len(rows) > 1 else ""
        results.append(_time_row(config, dict(common, **options), label))
    if _COMPILE_ONLY.value or len(results) > 1:
        if not _COMPILE_ONLY.value:
            print(markdown_table(results), flush=True)
        print(json.dumps({**common, "rows": results}))
        return
    result = results[0]
    if _COMPARE.value == "torch":
        compare_torch(result, config)
    if _PROFILE.value:
        torch_side = result.get("torch", {})
        print(op_profile.markdown(result["profile"], torch_side.get("profile"), result["seconds_per_step"],
                                  torch_side.get("seconds_per_step")), flush=True)
    print(json.dumps(result))


def main(argv: list[str]) -> int:
    """The benchmark; returns the exit status (0, or 130 / 143 when SIGINT / SIGTERM stopped it)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    check_workload_flags()
    if _COMPARE.value == "torch":
        reference.share_gpu_memory()
    try:
        if _SWEEP.value:
            return run_sweep()
        if _MODE.value == "mamba_block":
            run_mamba_block()
        else:
            run_rows()
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM (cli.interruptible): rows are printed, none are kept
        return cli.stopped(err, "nothing was written (the rows timed so far are printed above); run the same "
                                "command again to time them all.")
    return 0
