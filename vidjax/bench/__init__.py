"""The benchmarks of vidjax's models: commands, at the top layer (they may import anything in vidjax).

  python -m vidjax.bench ...          step time of one model (`step`; --sweep, --compare=torch, --profile, ...)
  python -m vidjax.bench.matrix ...   the accelerator matrix (`matrix`; scripts/bench_accelerator.sh runs it)

  step        the step-time benchmark: its flags, `bench_config`, `time_vidjax`, `peak_flops`, `mfu`, ...
  sweep       scaling curves over frames, image size or batch (`python -m vidjax.bench --sweep=...`)
  op_profile  a step's op time by category, for XLA and PyTorch (`python -m vidjax.bench --profile`)
  reference   the PyTorch reference timings (`--compare=torch`); imports no torch until it times one
  matrix      every family's steps in float32 and bfloat16 as one table, beside the PyTorch reference
  torch_ref   plain PyTorch ports of official models (VideoMamba, VideoMAE V2): the references above and the
              parity oracle (scripts/parity/); each imports torch at its top

This file imports none of them, so that importing one (a parity script's `vidjax.bench.torch_ref`, the matrix's
--help) loads only what it needs. The data benchmark is `python -m vidjax.data.bench` (vidjax/commands/data_bench.py).
"""
