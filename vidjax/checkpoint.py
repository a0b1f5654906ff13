"""Checkpoints with orbax: the train state, the grain iterator state and the config, saved and restored together.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a half-written checkpoint that looks finished. Saves are asynchronous; `wait()` surfaces a failed save.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores {state, data iterator, config} under `workdir/checkpoints/<step>`."""

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator: grain.DatasetIterator | None,
             config: ml_collections.ConfigDict, metadata: dict | None = None) -> None:
        """`metadata` (JSON: task, class and target names, preprocessing) is what inference reads beside the
        weights (vidjax.pretrained.load)."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if metadata is not None:
            items["metadata"] = ocp.args.JsonSave(metadata)
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state, data_iterator: grain.DatasetIterator | None = None):
        """Restores the state onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logger.info("Restored checkpoint %d from %s", step, self.directory)
        return restored["state"]

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
    """ShapeDtypeStructs carrying target shardings, so a restore lands directly on the current mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
