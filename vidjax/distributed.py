"""Multi-host start-up: `jax.distributed.initialize` when flags or the cluster say so, a no-op on one process.

Call `initialize` once, before anything touches a device (the first `jax.devices()` freezes the backend). After
it, `jax.devices()` lists every device of every process and `jax.process_index()` says which process this is;
each process reads its own share of the data (vidjax.data.pipeline.make_dataset), process 0 alone writes
metrics and figures, and every process takes part in checkpoints (orbax writes each process's shards).

Three ways in:
  * explicit: coordinator_address ("host:port" of process 0, the same on every process), num_processes and
    process_id, e.g. `python -m vidjax.main ... --coordinator_address=10.0.0.1:1234 --num_processes=2
    --process_id=0` (see scripts/launch_multigpu.sh);
  * detected: on a Cloud TPU VM pod slice, under SLURM (`srun`) or Open MPI (`mpirun`), jax's own cluster
    detection fills everything in (scripts/launch_tpu_pod.sh, scripts/launch_slurm.sbatch);
  * neither: one process, nothing to start (also when num_processes is 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax

from vidjax.config_lib import ConfigError

logger = logging.getLogger(__name__)


def detected_cluster() -> str | None:
    """The name of the multi-process environment jax can configure itself from (TPU pod, SLURM, Open MPI), if any.

    A SLURM or Open MPI job of a single task is not one: it needs no coordinator.
    """
    try:  # jax's own detection, so that vidjax starts exactly where `jax.distributed.initialize()` would
        from jax._src.clusters import ClusterEnv
    except ImportError:  # a jax without it: the two environment-variable cases still work
        ClusterEnv = None  # noqa: N806
    if ClusterEnv is None:
        if "SLURM_STEP_NODELIST" in os.environ and "SLURM_PROCID" in os.environ:  # set by srun
            return "SlurmCluster" if int(os.environ.get("SLURM_NTASKS", "1")) > 1 else None
        return "OmpiCluster" if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 else None
    for env in ClusterEnv._cluster_types:
        if env.opt_in_only_method or not env.is_env_present():
            continue
        if env.__name__ in ("SlurmCluster", "OmpiCluster") and env.get_process_count() == 1:
            return None
        return env.__name__
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               initialization_timeout: int = 300) -> bool:
    """Starts jax's distributed runtime when this is one process of several; returns whether it did.

    Explicit arguments win over what the environment says; with none and no detected cluster (or with
    num_processes=1) this is a no-op. CPU processes exchange data with gloo collectives.
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if num_processes == 1 and coordinator_address is None:
        return False
    cluster = detected_cluster()
    if not explicit and cluster is None:
        return False
    if cluster is None:
        missing = [name for name, value in (("--coordinator_address", coordinator_address),
                                            ("--num_processes", num_processes), ("--process_id", process_id))
                   if value is None]
        if missing:
            raise ConfigError(f"Multi-process start-up needs --coordinator_address, --num_processes and --process_id "
                              f"together (no TPU pod, SLURM or Open MPI job was detected to fill them in); "
                              f"missing {', '.join(missing)}. Give all three on every process, e.g. "
                              f"--coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0.")
    if coordinator_address is not None and (":" not in coordinator_address
                                            or not coordinator_address.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT of process 0, "
                          f"e.g. 10.0.0.1:1234 (the same on every process).")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes} must be >= 1.")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}) (--num_processes="
                          f"{num_processes}); give each process its own id, 0 for the coordinator's host.")
    # CPU processes (tests, CPU clusters) need a collectives backend to exchange data; GPU and TPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)
    logger.info("Process %d of %d (%s): %d local of %d devices", jax.process_index(), jax.process_count(),
                cluster or "explicit flags", jax.local_device_count(), jax.device_count())
    if jax.process_index() == 0:
        print(f"Distributed: {jax.process_count()} processes ({cluster or 'explicit flags'}), {jax.device_count()} "
              f"devices, {jax.local_device_count()} on this process", flush=True)
    return True
