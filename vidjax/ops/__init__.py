"""Numerical kernels written in plain JAX (scans, recurrences) that the models build on."""
