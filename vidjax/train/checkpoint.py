"""Checkpoints with orbax: the train state, the grain iterator state and the config, saved and restored together.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a half-written checkpoint that looks finished. Saves are asynchronous; `wait()` surfaces a failed save.
A step folder damaged afterwards (files lost or garbled by a copy, a full disk, a filesystem without atomic
renames) is caught on restore: orbax fails to read it, or the state read back does not match the checksum saved
beside it. `restore_latest` then moves it to `<workdir>/corrupt_checkpoints/` with a warning and uses the
previous step.

orbax runs a restore on a fresh asyncio event loop and closes it as soon as the first array read fails, with the
other reads still in flight; each of those then reports back to the closed loop from a tensorstore thread, which
Python prints as an ignored "RuntimeError: Event loop is closed" (one per array: hundreds under a damaged step).
`restore` therefore gives orbax loops that let pending reads finish before closing (`_loops_that_finish_tasks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from vidjax.config_lib import ConfigError
from vidjax.models import layers

logger = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """A step folder whose state does not read back as it was written."""


class _LoopFinishingTasks(asyncio.SelectorEventLoop):
    """An event loop that, closed with tasks still pending, first lets them finish (as `asyncio.run` would)."""

    timeout_s = 60.0  # a read that hangs longer (an unreachable bucket) is cancelled instead

    def close(self) -> None:
        pending = [task for task in asyncio.all_tasks(self) if not task.done()]
        if pending and not self.is_running() and not self.is_closed():
            done, hanging = self.run_until_complete(asyncio.wait(pending, timeout=self.timeout_s))
            for task in hanging:
                task.cancel()
            if hanging:
                self.run_until_complete(asyncio.wait(hanging))
            for task in done:  # their errors belong to the failed restore, already raised: consumed, not logged
                if not task.cancelled():
                    task.exception()
        super().close()


_loop_patch_lock = threading.Lock()


@contextlib.contextmanager
def _loops_that_finish_tasks():
    """Within: event loops made by `asyncio.new_event_loop` (how orbax runs a restore) finish their tasks on close."""
    with _loop_patch_lock:
        real = asyncio.new_event_loop
        asyncio.new_event_loop = _LoopFinishingTasks
        try:
            yield
        finally:
            asyncio.new_event_loop = real


@jax.jit
def _checksums(state) -> list:
    """One uint32 wrap-around sum of the raw bits per leaf: cheap on device, and any garbled byte changes it."""
    def bits(x):
        if x.dtype == jnp.bool_:
            return x.astype(jnp.uint32)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return [jnp.sum(bits(x), dtype=jnp.uint32) for x in jax.tree.leaves(state)]


def checksums(state) -> list[int]:
    return [int(c) for c in jax.device_get(_checksums(state))]


class Checkpointer:
    """Saves and restores {state, data iterator, config} under `workdir/checkpoints/<step>`."""

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        # A step folder left under its temporary name (a process ended while writing it) is removed at the start.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator: grain.DatasetIterator | None,
             config: ml_collections.ConfigDict, metadata: dict | None = None) -> None:
        """`metadata` (JSON: task, class and target names, preprocessing) is what inference reads beside the
        weights (vidjax.pretrained.load)."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict()),
                 "checksum": ocp.args.JsonSave({"state": checksums(state)})}
        if metadata is not None:
            items["metadata"] = ocp.args.JsonSave(metadata)
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state, data_iterator: grain.DatasetIterator | None = None):
        """Restores the state onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding).

        Any mesh works: arrays saved sharded over 8 devices land on the shardings asked for (4 devices, 1, ...).
        So does either block layout: a state saved with the blocks stacked (config.model.scan_layers: parameters,
        optimizer moments and EMA under .../blocks/stacked/...) restores into a per-block one (.../blocks/0/...)
        and the other way round (`layers.to_layout`).
        Raises CorruptCheckpointError when the state read back does not match the checksum saved with it
        (checkpoints written before checksums existed are not checked).
        """
        target = self._saved_layout(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        # Saved by another number of processes (a pod slice resumed on a smaller one): the data position is
        # carried over by carry_data_position instead of grain's per-process files.
        data_elsewhere = data_iterator is not None and not os.path.exists(os.path.join(
            self.path(step), "data", f"process_{jax.process_index()}-of-{jax.process_count()}.json"))
        if data_iterator is not None and not data_elsewhere:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        checked = os.path.isdir(os.path.join(self.path(step), "checksum"))
        if checked:
            items["checksum"] = ocp.args.JsonRestore()
        with _loops_that_finish_tasks():
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if checked and checksums(restored["state"]) != restored["checksum"]["state"]:
            raise CorruptCheckpointError(f"the state read from {self.path(step)} does not match the checksum saved "
                                         f"with it (garbled files)")
        if data_elsewhere:
            carry_data_position(os.path.join(self.path(step), "data"), data_iterator)
        state = restored["state"]
        if target is not abstract_state:
            logger.info("Checkpoint %d lays its blocks out the other way (config.model.scan_layers: stacked or "
                        "per block); converted to this model's layout", step)
            state = jax.device_put(layers.to_layout(state, abstract_state),
                                   jax.tree.map(lambda x: x.sharding, abstract_state))
        logger.info("Restored checkpoint %d from %s", step, self.directory)
        return state

    def _saved_layout(self, step: int, abstract_state):
        """`abstract_state`, or where the checkpoint at `step` lays its blocks out the other way (stacked or per
        block: `layers.abstract_in_layout`), that abstract state in the checkpoint's layout."""
        # The item's handler reads the tree's metadata itself: a PyTreeCheckpointer would also look for a step's
        # _CHECKPOINT_METADATA in the item folder (the manager writes it one level up) and warn on every resume.
        handler = ocp.PyTreeCheckpointHandler()
        try:
            metadata = handler.metadata(epath.Path(self.path(step)) / "state").tree
            saved = set(layers.flat_params(metadata))
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore itself reports what is wrong
            return abstract_state
        finally:
            handler.close()
        if not saved or saved == set(layers.flat_params(abstract_state)):
            return abstract_state
        other = layers.abstract_in_layout(abstract_state, saved)
        return other if set(layers.flat_params(other)) == saved else abstract_state

    def restore_latest(self, abstract_state, data_iterator: grain.DatasetIterator | None = None):
        """(step, state) of the newest step that restores, or None when there is no checkpoint.

        A newer step that fails to restore is taken for one damaged after it was written: it is moved to
        `<workdir>/corrupt_checkpoints/<step>` with a warning (kept for inspection; the next save can reuse the
        step number). When no step restores, the newest step's error is raised: then the checkpoints are not
        damaged but do not fit `abstract_state` (another model or optimizer set-up).
        """
        errors = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except Exception as err:  # noqa: BLE001 - tensorstore reports missing files as a bare Exception
                errors.append((step, err))
                continue
            if errors:
                self._set_aside(errors, step)
            return step, state
        if errors:
            raise errors[0][1]
        return None

    def _set_aside(self, errors: list, good_step: int) -> None:
        aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")
        for step, err in errors:
            logger.warning("Checkpoint %s is damaged and is skipped (%s: %s); resuming from step %d instead. Moved "
                           "to %s for inspection.", self.path(step), type(err).__name__,
                           str(err).splitlines()[0][:300] if str(err) else "", good_step, aside)
            if jax.process_index() == 0:
                os.makedirs(aside, exist_ok=True)
                target = os.path.join(aside, str(step))
                if os.path.exists(target):
                    shutil.rmtree(target)
                shutil.move(self.path(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("vidjax_corrupt_checkpoints_set_aside")
        self.manager.reload()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_step(workdir: str) -> int | None:
    """The newest step folder in `workdir/checkpoints` (complete ones: orbax writes a step under a temporary name
    and renames it when whole), read from the folder names alone; None without one."""
    directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = [int(name) for name in names if name.isdigit() and os.path.isdir(os.path.join(directory, name))]
    return max(steps, default=None)


def abstract_with_shardings(abstract_state, shardings):
    """ShapeDtypeStructs carrying target shardings, so a restore lands directly on the current mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


def carry_data_position(data_dir: str, data_iterator: grain.DatasetIterator) -> None:
    """Sets `data_iterator` (this process's share) to where a run with another number of processes stopped.

    Each of N processes reads every N-th element of one global order (vidjax.data.pipeline.make_dataset), so N
    iterators at `next_index` n have read the first n * N elements: this process of M continues at n * N / M.
    """
    names = sorted(name for name in (os.listdir(data_dir) if os.path.isdir(data_dir) else [])
                   if name.startswith("process_") and name.endswith(".json"))
    states = []
    for name in names:
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            states.append(json.load(f))
    positions = {state.get("next_index") if isinstance(state, dict) and len(state) == 1 else None
                 for state in states}
    saved_by = len(states)
    if not states or None in positions or len(positions) != 1 or set(data_iterator.get_state()) != {"next_index"}:
        raise ConfigError(
            f"The data position in {data_dir} was saved by {saved_by or 'no'} processes and cannot be carried to "
            f"{jax.process_count()}: that needs config.data.num_workers=0 in both runs (grain worker processes "
            f"keep per-worker positions). Resume with the original number of processes, or start a new --workdir "
            f"with --config.init_from=<this workdir> to keep the weights.")
    consumed = positions.pop() * saved_by
    if consumed % jax.process_count():
        raise ConfigError(f"{data_dir}: {consumed} training elements read by {saved_by} processes do not split over "
                          f"{jax.process_count()} processes; resume with a process count that divides it.")
    data_iterator.set_state({"next_index": consumed // jax.process_count()})
    logger.warning("The data position saved by %d processes continues on %d: element %d of the global order.",
                   saved_by, jax.process_count(), consumed)
