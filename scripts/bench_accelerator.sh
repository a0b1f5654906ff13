#!/usr/bin/env bash
# The accelerator benchmark matrix in one command: VideoMAE-B/16 pre-train and fine-tune, TimeSformer-B, ViViT-B and
# VideoMamba-S inference and fine-tune, float32 and bfloat16, at 16 frames x 224 px on every device of this host;
# a markdown table of step time, clips/s, achieved TFLOP/s and MFU, beside the PyTorch reference where it runs on the
# same device (vidjax/bench_matrix.py says what each column is).
#
#   scripts/bench_accelerator.sh --out=bench_h100.json      # on a GPU or TPU host
#   scripts/bench_accelerator.sh --quick --out=/tmp/q.json  # the same rows at toy sizes, about a minute on a CPU
#   scripts/bench_accelerator.sh --help                     # the other flags: --families, --dtypes, --torch, ...
#
# PYTHON picks the interpreter (default: python, e.g. a virtual environment's). Runs from any folder: the checkout
# this script lives in is put on PYTHONPATH, so an uninstalled clone works too.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m vidjax.bench_matrix "$@"
