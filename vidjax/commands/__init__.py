"""The commands: one module each, what `python -m vidjax.NAME` runs.

Each is called by an entry module named as people type it (`vidjax/predict.py`, `vidjax/data/bench.py`,
`vidjax/convert/__main__.py`), which only imports it and calls its `run_command()`; the functions a notebook or a
test calls (`predict.predict_video`, `extract.extract`, `data_check.run`, ...) live here. The benchmarks are the
`vidjax/bench/` package (`python -m vidjax.bench`).
"""
