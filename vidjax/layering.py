"""vidjax's layers, bottom to top: a module imports modules of its own layer or of the layers below, never above.

`tests/test_layering.py` reads every module under vidjax/ and checks each `import` in it (at module level and
inside functions alike) against `LAYERS`, and that every module is placed here: a new module gets its line below.
A function-level import of a vidjax module says why on its line or the one above (an optional extra, start-up time
without jax, ...); one that only dodged an import cycle is a layer problem, fixed by moving code down or passing
what a lower layer needs in from above (the input path takes a task's `pipeline.InputSpec`; the models resize their
position tables with `vidjax.models.positions`, which the converters import from them).

Importing `vidjax.a.b` also runs the package `vidjax.a`, so a package's own module (its `__init__`) is placed too, and
counts for its importers. Modules are named in full; a name ending in "*" places every module whose name starts with
what precedes it (the benchmarks: `vidjax/bench*.py` and a `vidjax/bench/` package alike; every model, task and
evaluator, so that a new one is its own module and nothing else), and a full name placed elsewhere wins over such a
prefix (`vidjax.models.layers` sits below the models).
"""

from __future__ import annotations

# (layer, what it holds, its modules), bottom first.
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("foundation", "no model knowledge: config, files, devices and sharding, patches, metrics, losses, text, the "
     "command line and the process around a run", (
         "vidjax", "vidjax.layering", "vidjax.config_lib", "vidjax.fileio", "vidjax.sharding", "vidjax.patches",
         "vidjax.metrics", "vidjax.losses", "vidjax.mixup", "vidjax.tokenizer", "vidjax.cli", "vidjax.compile_cache",
         "vidjax.host_malloc", "vidjax.distributed", "vidjax.preemption", "vidjax.metric_writer",
         "vidjax.platform", "vidjax.visualize_lib", "vidjax.flops", "vidjax.tpu",
     )),
    ("kernels", "numerical ops and the blocks models are built of", (
        "vidjax.ops", "vidjax.ops.attention", "vidjax.ops.attention_kernel", "vidjax.ops.pixels",
        "vidjax.ops.scan_kernel", "vidjax.ops.selective_scan", "vidjax.models.layers", "vidjax.models.positions",
    )),
    ("models", "the models, looked up by name (`vidjax.models.get_model`), and decoding captions with them", (
        "vidjax.models", "vidjax.models.*",
    )),
    ("data", "videos to batches: sources, decoding, transforms, views, the embedded dataset, the input pipeline, "
     "the Kinetics label spaces", (
         "vidjax.data", "vidjax.data.decode", "vidjax.data.encode", "vidjax.data.kinetics", "vidjax.data.nvdec",
         "vidjax.data.sources", "vidjax.data.synthetic", "vidjax.data.transforms", "vidjax.data.views",
         "vidjax.data.pipeline",
         "vidjax.data.multiblock",
     )),
    ("checkpoints", "reading, converting and loading checkpoints (official and Hugging Face formats, the Hub), and a "
     "loaded model run over a video's windows", (
         "vidjax.convert", "vidjax.convert.common", "vidjax.convert.hf", "vidjax.convert.hf_captioner",
         "vidjax.convert.hf_gpt2", "vidjax.convert.hf_timesformer", "vidjax.convert.hf_videomae",
         "vidjax.convert.hf_vivit", "vidjax.convert.hf_vjepa2", "vidjax.convert.hf_videoprism",
         "vidjax.convert.hf_clip", "vidjax.convert.svt",
         "vidjax.convert.videomae", "vidjax.convert.videoprism",
         "vidjax.convert.videomamba", "vidjax.convert.vjepa2", "vidjax.pretrained", "vidjax.pretrained.*",
     )),
    ("tasks", "what a run trains a model for (each task's training spec, readout and presentation), and the "
     "evaluations of its splits", (
        "vidjax.tasks", "vidjax.tasks.*", "vidjax.evaluators", "vidjax.evaluators.*",
    )),
    ("trainer", "the training loop, its optimizer and its checkpoints", (
        "vidjax.train", "vidjax.train.*",
    )),
    ("commands", "what `python -m` runs: each command in `vidjax/commands/` (the benchmarks in `vidjax/bench/`, with "
     "their PyTorch references), and the entry modules that keep the names people type (`python -m vidjax.predict`, "
     "`vidjax.data.bench`, `vidjax.convert`), each only importing its command and calling it", (
        "vidjax.commands", "vidjax.commands.*", "vidjax.bench*",
        "vidjax.main", "vidjax.predict", "vidjax.zeroshot", "vidjax.extract", "vidjax.evaluate", "vidjax.probe",
        "vidjax.demo",
        "vidjax.export", "vidjax.push", "vidjax.visualize", "vidjax.aot", "vidjax.data.bench", "vidjax.data.check",
        "vidjax.data.pack", "vidjax.convert.__main__",
    )),
)


def layer_of(module: str) -> int | None:
    """The index in `LAYERS` of the dotted `module` ("vidjax.data.pipeline"), or None where no line places it."""
    best, best_length = None, -1
    for index, (_, _, names) in enumerate(LAYERS):
        for name in names:
            if name == module:
                return index
            if name.endswith("*") and module.startswith(name[:-1]) and len(name) > best_length:
                best, best_length = index, len(name)
    return best
