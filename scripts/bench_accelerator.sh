#!/usr/bin/env bash
# The accelerator benchmark matrix in one command: VideoMAE-B/16 pre-train (VideoMAE's masking and VideoMAE V2's dual
# masking) and fine-tune, TimeSformer-B, ViViT-B and VideoMamba-S inference and fine-tune, float32 and bfloat16, at 16 frames x 224 px on every device of this host;
# a markdown table of step time, clips/s, achieved TFLOP/s and MFU, host cores per chip, beside the PyTorch
# reference where it runs on the same device (vidjax/bench/matrix.py says what each column is).
#
#   scripts/bench_accelerator.sh --out=bench_h100.json      # on a GPU or TPU host
#   scripts/bench_accelerator.sh --quick --out=/tmp/q.json  # the same rows at toy sizes, about a minute on a CPU
#   scripts/bench_accelerator.sh --help                     # the other flags: --families, --dtypes, --torch, ...
#
# Host cores per chip: first the input path's benchmark runs on this host's CPUs (`python -m vidjax.data.bench
# --config=configs/videomae_k400.py`, K400 pre-training clips on H.264 files it makes, num_samples 1 and 4), its
# JSON written next to --out as NAME.input.json (a temporary file without --out), and the matrix divides each row's
# clips/s per device by its clips/s per core (--input_bench): both figures from one machine. About a minute on a
# CPU host; with --quick a toy run of a few seconds (2 one-second 160x90 files, 16 clips, no worker processes).
#   --no_input_bench        skip it (the column then shows -)
#   --input_bench=FILE      use that data-bench JSON instead of running the bench here
#   INPUT_BENCH_FLAGS="..." more flags for the data bench, after the script's (the last of a flag wins), e.g.
#                           INPUT_BENCH_FLAGS="--workers=4,8 --dir=/scratch/bench_videos"
#
# PYTHON picks the interpreter (default: python, e.g. a virtual environment's). Runs from any folder: the checkout
# this script lives in is put on PYTHONPATH, so an uninstalled clone works too.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python}"

# The flags this script acts on are read here; every flag but --no_input_bench goes on to the matrix.
args=() quick=0 out="" run_input=1 expect_out=0
for arg in "$@"; do
  if ((expect_out)); then out="$arg" expect_out=0; fi
  case "$arg" in
    --no_input_bench|--no-input-bench) run_input=0; continue ;;
    --quick) quick=1 ;;
    --out=*) out="${arg#--out=}" ;;
    --out) expect_out=1 ;;
    --input_bench|--input_bench=*|--input-bench|--input-bench=*|-h|--help) run_input=0 ;;
  esac
  args+=("$arg")
done
if ((!run_input)); then
  exec "$python" -m vidjax.bench.matrix "${args[@]}"
fi

if [[ -n "$out" ]]; then
  input_json="${out%.json}.input.json"
  mkdir -p "$(dirname "$input_json")"
else
  input_json="$(mktemp "${TMPDIR:-/tmp}/vidjax_input_bench.XXXXXX")"
  trap 'rm -f "$input_json"' EXIT  # why the matrix below is not exec'd: the trap must run after it
fi
bench=(--config="$root/configs/videomae_k400.py" --config.data.short_side=256 --num_samples=1,4)
if ((quick)); then  # the same path on toy files: checks the column end to end; its figures mean nothing
  bench+=(--videos=2 --seconds=1 --width=160 --height=90 --clips=16 --batch=4 --workers=0 --rounds=1)
else
  bench+=(--workers=1,2 --rounds=2)
fi
# shellcheck disable=SC2206  # INPUT_BENCH_FLAGS is a list of flags, split on spaces
bench+=(${INPUT_BENCH_FLAGS:-} --json_out="$input_json")
echo "Input path on this host's CPUs: $python -m vidjax.data.bench ${bench[*]}"
input_status=0 status=0
"$python" -m vidjax.data.bench "${bench[@]}" || input_status=$?
if ((input_status)); then
  # The matrix still runs (the accelerator time is not wasted), without the column; the exit status says it failed.
  echo "The input bench failed (exit status $input_status, its error above): the matrix runs without the host" \
       "cores / chip column. --no_input_bench skips the input bench." >&2
  "$python" -m vidjax.bench.matrix "${args[@]}" || status=$?
  exit $((status ? status : 1))
fi
"$python" -m vidjax.bench.matrix "${args[@]}" --input_bench="$input_json" || status=$?
exit "$status"
