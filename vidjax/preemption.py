"""Preemption: SIGTERM (the notice TPU VMs and SLURM send) or SIGINT asks the trainer to stop at the next step.

The trainer checks `StopOnSignal.requested(step)` at each step boundary; when it answers True it writes a
checkpoint, waits for it and returns with `preempted=True`, which `python -m vidjax.main` turns into exit code 4.
Re-running the same command resumes exactly where it stopped.

Every process installs Python handlers that only set a flag (a second signal of the same kind acts as it would
without vidjax, so a second Ctrl-C interrupts at once; a signal a launcher set to be ignored stays ignored).

One process may wait to be asked: `StopOnSignal(armed=False)` passes a signal on to the handler it replaced (under
a vidjax command `cli.Interrupted`, the start-up stops at once: there is no step to checkpoint yet) until `arm()`;
the trainer arms it once its first step has run. Several processes always wait for a step boundary: all must stop
after the same step, whenever the notice came.

One process: `requested` answers whether a signal came.

Several processes (jax.distributed): the signal may reach one process only (one host reclaimed, a `kill` by hand),
yet all of them must stop after the same step, since saving a checkpoint is collective. At each step boundary,
before that step's checkpoint or eval, every process waits at a barrier of jax.distributed's coordination service
and then reads its key-value store for notices (host to host, no device work: the device keeps the steps already
dispatched); a signalled process first posts a notice keyed by its step. All processes read the same notices, so
all stop after the same step, each with the checkpoint of that step. Cost: two RPCs per step (a barrier and a
read), 0.9 ms per step measured with 2 local processes on a 2-core machine. The barrier also keeps the hosts'
loops within a step of each other, which the collective train step does anyway.

Why not jax's own preemption service (`multihost_utils.reached_preemption_sync_point`, which
`jax.distributed.initialize` starts by default, on CPU too, installing a C++ SIGTERM handler that a thread polls
once a second): its counter starts at 0, so a notice that arrives before the first step of a resumed run sets the
sync point to step 1, which a run resuming at step N never reaches: the run trains on, ignoring that SIGTERM and
every later one (the handler swallows them), until the scheduler kills it. orbax's CheckpointManager also calls
it, with the step being saved and from its save-finalize thread, which moves that counter behind the trainer's
back. And it does not catch SIGINT. The service stays on (some orbax versions fail a save when it is off), but
`StopOnSignal` takes SIGTERM over from its handler, so it never hears of a notice and answers "no" to orbax; the
handler cannot be put back from Python, so on exit SIGTERM gets its default action.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Callable, Iterator

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WAIT_MS = 10 * 60 * 1000  # processes are at most a few steps apart; a dead one is not waited for longer
_runs = itertools.count()  # one key namespace per StopOnSignal: every process creates them in the same order


def _coordination_client():
    from jax._src import distributed as jax_distributed  # the client jax.distributed.initialize started

    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError(f"{jax.process_count()} processes but no jax.distributed client: vidjax's multi-process "
                           f"preemption uses jax.distributed's coordination service. Start the processes with "
                           f"jax.distributed.initialize (vidjax.distributed.initialize does).")
    return client


class StopOnSignal:
    """Context manager: installs the handlers on entry (main thread only), puts the previous ones back on exit.

    `armed=False`: with one process, a signal that comes before `arm()` goes on to the previous handler."""

    def __init__(self, armed: bool = True):
        self.received: int | None = None  # the first signal this process received
        self._armed = armed
        self._previous: dict = {}
        self._keys = f"vidjax/preemption/{next(_runs)}"
        self._posted = False
        self._stop_at: int | None = None
        self._agreed_name: str | None = None
        self._passed_on: BaseException | None = None  # what the previous handler raised for a signal before `arm()`

    def __enter__(self) -> StopOnSignal:
        # Decided here, not in the handler (asking jax there could start its backend inside a signal handler).
        self._armed = self._armed or jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored on purpose (nohup, a shell's `&`)
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, _restorable(handler))
        self._previous.clear()

    @contextlib.contextmanager
    def second_signal(self, callback: Callable[[int], None] | None) -> Iterator[None]:
        """Within (the wind-down after a stop was asked for), SIGTERM and SIGINT call `callback(signum)` in the main
        thread instead of what they would do: a command ends the process from there, rather than have an exception
        raised inside orbax's wait for the checkpoint (orbax logs it with its traceback, and the interpreter's exit
        then breaks the save under way with more). None, or off the main thread: nothing changes."""
        if callback is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.getsignal(sig) for sig in _SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            for sig in before:
                signal.signal(sig, lambda signum, frame: callback(signum))
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, _restorable(handler))

    def arm(self) -> None:
        """From now on a signal asks for a stop at the next step boundary.

        Raises what the previous handler raised for a signal that came before (a command's `cli.Interrupted`) when
        that exception never stopped the start-up: Python drops an exception raised where it cannot propagate (a
        garbage-collection callback, a `__del__`) or that C code clears, and the run would go on as if never
        signalled; this is the start-up's end, before any step is checkpointed."""
        self._armed = True
        lost, self._passed_on = self._passed_on, None
        if lost is not None:
            raise lost

    def _handle(self, signum: int, frame) -> None:
        previous = _restorable(self._previous.pop(signum))
        signal.signal(signum, previous)
        if self._armed:
            self.received = self.received or signum
        elif callable(previous):  # not armed: as if this handler had not been there
            try:
                previous(signum, frame)
            except BaseException as err:
                self._passed_on = err  # `arm()` raises it again, should it be lost on its way
                raise
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)

    @property
    def name(self) -> str:
        """The signal that stopped the run ("SIGTERM" or "SIGINT"), as agreed by all processes."""
        if self._agreed_name:
            return self._agreed_name
        return signal.Signals(self.received).name if self.received else "SIGTERM"

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`. Every process must call it at every step boundary, before any collective
        work of that step (a checkpoint save, an eval): with several processes it is a sync point."""
        if jax.process_count() == 1:
            return self.received is not None
        if self._stop_at is None:
            self._stop_at = self._agree(step)
        return self._stop_at is not None and step >= self._stop_at

    def _agree(self, step: int) -> int | None:
        """`step` if any process has posted a notice at or before it, else None; the same answer on every process.

        A signalled process posts a notice keyed by the step it is at; then every process waits at this step's
        barrier and reads the notices of steps up to this one. A notice is posted before its poster reaches the
        barrier, so every process reads the same set (a later notice carries a later step and is left for that
        step's look). Nobody waits for a process that is busy elsewhere: all of them call this before the step's
        collective work, and each has dispatched every step up to this one.
        """
        client = _coordination_client()
        if self.received is not None and not self._posted:
            client.key_value_set(f"{self._keys}/notice/{step}/{jax.process_index()}",
                                 signal.Signals(self.received).name)
            self._posted = True
        try:
            client.wait_at_barrier(f"{self._keys}/step/{step}", _WAIT_MS)
        except Exception as err:  # noqa: BLE001 - jax raises its runtime error type, which moved between versions
            raise RuntimeError(
                f"Process {jax.process_index()} waited {_WAIT_MS // 60000} minutes at step {step} for the other "
                f"processes to reach the same step boundary, and they did not ({err}). One may have died; the last "
                f"checkpoint is the one to resume from.") from err
        notices = []
        for key, name in client.key_value_dir_get(f"{self._keys}/notice/"):
            posted_step, process = (int(part) for part in key.rstrip("/").split("/")[-2:])
            if posted_step <= step:
                notices.append((process, name))
        if not notices:
            return None
        # Every process names the stop after the same signal: the notice of the lowest process id.
        self._agreed_name = min(notices)[1]
        return step


def _restorable(handler):
    """`signal.signal` accepts back what it returned, except None: a handler set outside Python (the default then)."""
    return signal.SIG_DFL if handler is None else handler
