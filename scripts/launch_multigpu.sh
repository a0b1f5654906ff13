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
# coordinator (the layout of multi-node jobs, handy to rehearse one on a single machine). Ctrl-C or SIGTERM stops
# them all; each saves at its next step boundary.
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
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
