"""Step-time benchmark of vidjax models, optionally side by side with the Hugging Face PyTorch implementation.

  python -m vidjax.bench --model=videomae --variant=S/16 --frames=16 --size=112 --batch=2 --mode=pretrain
  python -m vidjax.bench ... --compare=torch      # also times transformers' VideoMAE in the same process

Pre-train and fine-tune time the trainer's own jitted update step (the code `vidjax.main` runs); infer times
the jitted forward pass. The last line printed is one JSON object: seconds_per_step (median of the timed
steps after warm-up), clips_per_s, compile_s, flops_per_step (XLA's cost analysis), and with --compare the
PyTorch figures and `speedup_vs_torch` (torch seconds / vidjax seconds; above 1 means vidjax is faster).
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "videomae", "Model name (a module in vidjax.models).")
_VARIANT = flags.DEFINE_string("variant", "S/16", "Variant string, e.g. S/16, B/16.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", 112, "Frame height and width in pixels.")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch size.")
_MODE = flags.DEFINE_enum("mode", "pretrain", ["pretrain", "finetune", "infer"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 400, "Classes of the fine-tune/infer head.")
_COMPARE = flags.DEFINE_enum("compare", None, ["torch"], "Also time the PyTorch reference in the same run.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads for --compare=torch.")


def bench_config(model: str, variant: str, frames: int, size: int, batch: int, mode: str, dtype: str,
                 num_classes: int):
    """A trainer config for the benchmark workload (no data source is read)."""
    from vidjax import config_lib
    from vidjax.models import get_model

    config = config_lib.trainer_config()
    config.model_name = model
    config.task = "pretrain" if mode == "pretrain" else "classification"
    config.model = get_model(model).default_config()
    config.model.update(dict(variant=variant, num_frames=frames, image_size=size, dtype=dtype,
                             head="pretrain" if mode == "pretrain" else "classification", num_classes=num_classes))
    config.data = config_lib.synthetic_data(num_frames=frames, image_size=size, num_classes=num_classes)
    config.batch_size = batch
    config.total_steps = 1000
    config.optimizer.warmup_epochs = 0
    return config


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


def time_vidjax(config, mode: str, steps: int, warmup: int) -> dict:
    """Times the trainer's update step (pretrain/finetune) or the jitted forward (infer) on random inputs."""
    import jax
    import numpy as np
    from flax import nnx

    from vidjax import losses, sharding, train
    from vidjax.data.pipeline import tube_mask

    setup = train.build(config, train_source_len=config.batch_size)
    rng = np.random.default_rng(0)
    b, m = config.batch_size, config.model
    local = {"video": rng.integers(0, 256, (b, m.num_frames, m.image_size, m.image_size, 3), dtype=np.uint8),
             "label": rng.integers(0, m.num_classes, (b,), dtype=np.int32)}
    if mode == "pretrain":
        grid = setup.abstract_model.encoder.grid
        local["mask"] = np.stack([tube_mask(rng, grid, m.mask_ratio) for _ in range(b)])
    batch = sharding.global_batch(local, sharding.batch_sharding(setup.mesh))
    state = setup.init_state()

    start = time.perf_counter()
    if mode == "infer":
        def forward(params, video):
            model = nnx.merge(setup.graphdef, params)
            return model(losses.normalize_video(video, m.pixel_mean, m.pixel_std))["logits"]

        compiled = jax.jit(forward).lower(state["params"], batch["video"]).compile()
        params = state["params"]

        def step():
            return compiled(params, batch["video"])
    else:
        compiled = train.make_train_step(config, setup).lower(state, batch).compile()
        holder = {"state": state}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    seconds, times = _median_time(step, steps, warmup)
    return {"framework": "vidjax", "jax_version": jax.__version__, "backend": jax.default_backend(),
            "devices": jax.device_count(), "seconds_per_step": seconds, "step_times": times,
            "clips_per_s": config.batch_size / seconds, "compile_s": compile_s,
            "flops_per_step": float(cost.get("flops", float("nan")))}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = bench_config(_MODEL.value, _VARIANT.value, _FRAMES.value, _SIZE.value, _BATCH.value, _MODE.value,
                          _DTYPE.value, _NUM_CLASSES.value)
    result = {"model": _MODEL.value, "variant": _VARIANT.value, "mode": _MODE.value, "frames": _FRAMES.value,
              "size": _SIZE.value, "batch": _BATCH.value, "dtype": _DTYPE.value}
    result.update(time_vidjax(config, _MODE.value, _STEPS.value, _WARMUP.value))
    print(f"vidjax: {result['seconds_per_step']:.4f} s/step, {result['clips_per_s']:.2f} clips/s, "
          f"compile {result['compile_s']:.1f}s, {result['flops_per_step'] / 1e9:.1f} GFLOP/step", flush=True)
    if _COMPARE.value == "torch":
        if _MODEL.value != "videomae":
            raise app.UsageError("--compare=torch is available for --model=videomae.")
        from vidjax.bench_torch import time_torch

        torch_result = time_torch(_MODE.value, _VARIANT.value, _FRAMES.value, _SIZE.value, _BATCH.value,
                                  _STEPS.value, _WARMUP.value, mask_ratio=config.model.mask_ratio,
                                  num_classes=_NUM_CLASSES.value, threads=_TORCH_THREADS.value)
        result["torch"] = {k: v for k, v in torch_result.items() if k not in ("mode", "variant", "frames", "size",
                                                                             "batch")}
        result["speedup_vs_torch"] = torch_result["seconds_per_step"] / result["seconds_per_step"]
        print(f"torch:  {torch_result['seconds_per_step']:.4f} s/step ({torch_result['attn_implementation']}, "
              f"{torch_result['threads']} threads); vidjax speed-up {result['speedup_vs_torch']:.2f}x", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
