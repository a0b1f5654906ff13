"""Plain PyTorch re-implementations of reference models that have no importable PyTorch package here.

Each module imports torch at its top, so nothing in vidjax imports them except where torch is wanted: the parity
fixture makers (scripts/parity/) and `python -m vidjax.bench --compare=torch` (vidjax.bench.reference, lazily).
Install the extra with `pip install 'vidjax[torch]'`.
"""
