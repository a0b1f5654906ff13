#!/usr/bin/env bash
# Train on one host with several GPUs.
#
#   WORKDIR=/data/runs/videomae_k400 scripts/launch_multigpu.sh --config=configs/videomae_k400.py
#
# One process drives every GPU of the host: no distributed start-up is needed, and the mesh (default data=-1)
# spreads the global batch over all of them. For models whose parameters and optimizer state do not fit one GPU:
# --config.mesh.fsdp=-1 --config.mesh.data=1 (or tensor=2 for attention heads / MLP over NVLink pairs).
#
# With PROCS_PER_HOST=N the script instead starts N processes, one per GPU, joined by jax.distributed on a local
# coordinator (the layout of multi-node jobs, handy to rehearse one on a single machine). Ctrl-C or SIGTERM to this
# script is passed on to every process as SIGTERM (they ignore the terminal's SIGINT, as background jobs of a
# script do): they agree on a step, save it and exit 4.
set -euo pipefail

: "${WORKDIR:?set WORKDIR to the run directory}"
PROCS_PER_HOST="${PROCS_PER_HOST:-1}"

if [[ "$PROCS_PER_HOST" == 1 ]]; then
  exec python -m vidjax.main --workdir="$WORKDIR" "$@"
fi

PORT="${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
for ((i = 0; i < PROCS_PER_HOST; i++)); do
  python -m vidjax.main --workdir="$WORKDIR" --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$PROCS_PER_HOST" --process_id="$i" --local_device_ids="$i" "$@" &
  pids+=($!)
done
# A trapped signal cuts `wait` short (status > 128) while the process still saves: wait for it again until it has
# exited, then keep its own exit code (4 after a stop by signal).
status=0
for pid in "${pids[@]}"; do
  while true; do
    code=0
    wait "$pid" || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  if ((code != 0)); then status=$code; fi
done
exit "$status"
