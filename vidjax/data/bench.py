"""`python -m vidjax.data.bench`: the data-loading benchmark.

The command is `vidjax.commands.data_bench`; this entry module keeps the name people type."""

import signal

if __name__ == "__mp_main__":
    # A grain worker process (multiprocessing's spawn runs the parent's main module under this name first thing):
    # SIGINT and SIGTERM ignored from its start. Ctrl-C in a terminal signals the whole process group, and a worker
    # would print a traceback of its own and die mid-element, its shared memory leaked; the parent, which handles the
    # signal (vidjax.cli.interruptible), stops its workers as it stops. Set before the imports below: they take
    # seconds, and that is when a Ctrl-C during a worker's start lands.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

from vidjax.commands import data_bench  # noqa: E402  (after the workers' signal settings)

if __name__ == "__main__":
    data_bench.run_command()
