"""Training metrics to `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard event files, and
to Weights & Biases when `config.wandb.project` is set (the `wandb` package: `pip install 'vidjax[wandb]'`).

W&B: one run per workdir. Its id is kept in `workdir/wandb_run_id`, so a resumed training run logs on into the same
W&B run (wandb's resume="allow"); `config.wandb.mode` "offline" writes under `workdir/wandb/` with no network (upload
later with `wandb sync`), "online" sends as it goes. Train rows are logged under their names, eval rows as
`eval/<name>`, with the training step as W&B's step.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping

import jax
import ml_collections

from vidjax import fileio

WANDB_MODES = ("offline", "online", "disabled")
WANDB_ID_FILE = "wandb_run_id"


def wandb_problems(config: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with config.wandb (empty when W&B is off or can run), each naming the fix."""
    block = config.get("wandb")
    if block is None or not block.project:
        return []
    problems = []
    if block.mode not in WANDB_MODES:
        problems.append(f"config.wandb.mode={block.mode!r}; choose one of {', '.join(WANDB_MODES)} (offline needs "
                        f"no network).")
    try:
        import wandb  # noqa: F401
    except ImportError:
        problems.append(f"config.wandb.project={block.project!r} sends the metrics to Weights & Biases, but the wandb "
                        f"package is not installed: pip install 'vidjax[wandb]', or set --config.wandb.project='' "
                        f"(TensorBoard and metrics.jsonl are written either way).")
    return problems


def _start_wandb(workdir: str, block: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    import wandb

    id_path = os.path.join(workdir, WANDB_ID_FILE)
    if os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:12]  # W&B run ids are any short [a-z0-9] string
        with fileio.atomic_output(id_path) as f:
            f.write(run_id + "\n")
    return wandb.init(project=block.project, entity=block.entity or None, name=block.name or None,
                      tags=list(block.tags) or None, mode=block.mode, dir=workdir, id=run_id, resume="allow",
                      config=config.to_dict())


class MetricWriter:
    """Writes on process 0 only. On resume, rows after the restored step (from a run that died later) are dropped.
    `config` (the run's) turns on W&B when its `wandb.project` is set."""

    def __init__(self, workdir: str, resume_step: int = 0, config: ml_collections.ConfigDict | None = None):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._wandb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # imported here: only process 0 writes

        # purge_step drops TensorBoard points past the restored step, as _truncate_after does for the JSONL.
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
        self._file = open(self.path, "a", encoding="utf-8")
        block = config.get("wandb") if config is not None else None
        if block is not None and block.project:
            self._wandb = _start_wandb(workdir, block, config)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        rows = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        rows.append(line)
                except json.JSONDecodeError:  # a line cut short when the previous run was killed
                    continue
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(rows)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        if not self.active:
            return
        row = {"step": int(step), "split": split}
        row.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        prefix = "" if split == "train" else f"{split}/"
        for key, value in scalars.items():
            self._tb.add_scalar(prefix + key, float(value), step)
        if self._wandb is not None:
            self._wandb.log({prefix + key: float(value) for key, value in scalars.items()}, step=int(step))

    def close(self) -> None:
        if self.active:
            self._file.close()
            self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()
                self._wandb = None


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `workdir/metrics.jsonl`, in order."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
