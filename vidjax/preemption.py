"""Preemption: SIGTERM (the notice TPU VMs and SLURM send) or SIGINT asks the trainer to stop at the next step.

The trainer checks `StopOnSignal.requested(step)` at each step boundary; when it answers True it writes a
checkpoint, waits for it and returns with `preempted=True`, which `python -m vidjax.main` turns into exit code 4.
Re-running the same command resumes exactly where it stopped.

One process: Python handlers set a flag (a second signal of the same kind acts as it would without vidjax, so a
second Ctrl-C interrupts at once). Several processes (jax.distributed): jax's preemption service catches SIGTERM
on any host and picks one step at which every host answers True, so they all save the same step; SIGINT is not
intercepted there.
"""

from __future__ import annotations

import signal
import threading

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: installs the handlers on entry (main thread only), puts the previous ones back on exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous.pop(signum))

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "SIGTERM"

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`. Call it at every step: with several processes it is a sync point."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None
