#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every worker (host) of the slice.
#
#   TPU=my-v5e-32 ZONE=us-west4-a WORKDIR=gs://my-bucket/videomae_k400 \
#     scripts/launch_tpu_pod.sh --config=configs/videomae_k400.py --config.batch_size=512
#
# Every worker runs `python -m vidjax.main` with the arguments given here. jax.distributed is detected (no
# --coordinator_address needed): each host drives its local TPU chips, reads its own share of the data and writes its
# own checkpoint shards, so WORKDIR must be storage every host sees (a gs:// bucket). Process 0 alone writes
# metrics.jsonl, TensorBoard and figures. The default mesh (data=-1) is pure data parallel over all chips; for large
# models use --config.mesh.fsdp=<chips per host> (parameters and optimizer state sharded over each host's chips,
# which talk over ICI) and keep data for the rest.
#
# Preemption (spot / queued resources): every process on the TPU VMs receives SIGTERM; the processes agree on a step,
# save it and exit 4. Re-running this script with the same WORKDIR resumes. The run writes its log to
# ~/vidjax_train.log on each worker itself, under nohup, and this script only follows that file: a pipe to `tee`
# would die with the same SIGTERM and fail the run's next print, and a dropped ssh connection would cut the run's
# output (SIGPIPE) or hang it up (SIGHUP). Stop it by hand with SIGTERM, which also saves:
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="pkill -TERM -f vidjax.main"
#
# Set-up once per slice (same vidjax checkout at REPO on every worker):
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
#     --command="git clone https://github.com/<you>/vidjax ~/vidjax && pip install -e ~/vidjax 'jax[tpu]'"
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
: "${WORKDIR:?set WORKDIR to a gs:// path every worker can write}"
REPO="${REPO:-~/vidjax}"

# First, on this machine: the train step compiled for the slice's TPU topology (`python -m vidjax.aot`, which needs
# `pip install 'vidjax[tpu]'` here, any Linux x86-64 machine), so that a config whose step does not fit the chips'
# HBM stops now, with what to change, instead of on every host after start-up. The slice's accelerator type comes
# from gcloud (or ACCELERATOR_TYPE=v5p-128 and the like); SKIP_AOT_CHECK=1 skips the check.
if [[ "${SKIP_AOT_CHECK:-0}" != 1 ]]; then
  accelerator="${ACCELERATOR_TYPE:-$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" \
    --format='value(acceleratorType)')}"
  config_args=()
  for arg in "$@"; do
    if [[ "$arg" == --config* ]]; then config_args+=("$arg"); fi
  done
  echo "Checking the step on $accelerator before starting the hosts (python -m vidjax.aot; SKIP_AOT_CHECK=1 skips)"
  status=0
  python -m vidjax.aot --topology="$accelerator" "${config_args[@]}" || status=$?
  if [[ $status -ne 0 ]]; then
    echo "Not starting the hosts: python -m vidjax.aot exited $status for $accelerator (3: the step does not fit)." >&2
    exit "$status"
  fi
fi

args=$(printf ' %q' "$@")
# \$ is expanded on the worker: the run's process id, so that `tail` follows until it ends and `wait` returns its
# exit code (4 after a preemption).
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
  --command="cd $REPO && { nohup python -m vidjax.main --workdir=$WORKDIR$args >> ~/vidjax_train.log 2>&1 < /dev/null &
    pid=\$!; tail -n 0 -F --pid=\$pid ~/vidjax_train.log; wait \$pid; }"
