"""The commands: one module each, what `python -m vidjax.NAME` runs.

Each is called by an entry module named as people type it (`vidjax/predict.py`, `vidjax/data/bench.py`,
`vidjax/convert/__main__.py`), which only imports it and calls its `run_command()`; the functions a notebook or a
test calls that belong to one command (`extract.extract`, `data_check.run`, ...) live here. No command imports
another: what two of them share is library code in a lower layer (`vidjax.predictions` for outputs read by a task's
readout, `vidjax.pretrained.windows`, `.zero_shot`, `.pooling`, `.reconstruction` and `.onnx_export` for a loaded
model run, `vidjax.cli.start` for the start of a `main`). The benchmarks are the `vidjax/bench/` package
(`python -m vidjax.bench`).
"""
