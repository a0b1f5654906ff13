"""The persistent compilation cache the commands switch on: jax's own, in one folder per user, so a second run of a
command loads the programs the first one compiled instead of compiling them again (most of a short run's start-up).

Every `python -m vidjax.<command>` turns it on through `vidjax.cli` (`configure`), before jax compiles anything:
- the folder is $VIDJAX_CACHE_DIR, else `$XDG_CACHE_HOME/vidjax/jax`, else `~/.cache/vidjax/jax`;
- `VIDJAX_CACHE_DIR=off` (or set to an empty string) and the flag `--nocompilation_cache` (`--compilation_cache=false`)
  turn it off; the flag also turns off a cache configured for jax directly;
- a cache configured for jax directly (JAX_COMPILATION_CACHE_DIR, or `jax.config.update` in a program or notebook
  that calls a command's `main`) is left as it is;
- a folder that cannot be written is one warning, and the run goes on without a cache;
- a bucket (`VIDJAX_CACHE_DIR=gs://bucket/jax-cache`) is handed to jax as it is: one cache for every host of a pod
  (jax writes from process 0 only, so a per-host folder fills on the first host alone).

What is cached is XLA's executable for a program that took `MIN_COMPILE_TIME_SECS` or more to compile (the train,
eval and inference steps), keyed on the program, the devices and jax / XLA versions and flags: a hit runs exactly
what compiling would have given. The folder grows without bound unless JAX_COMPILATION_CACHE_MAX_SIZE (bytes) is set;
deleting it is always safe.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

ENV = "VIDJAX_CACHE_DIR"
OFF = ("", "off")  # values of $VIDJAX_CACHE_DIR that turn the cache off
# Programs that compiled faster than this are compiled again rather than cached: each eager op (an array made on
# device, a slice) is its own tiny program of 10-50 ms, and a cache read costs about as much (tests/conftest.py
# measured caching them all as a loss). jax's default is 1 s; half that also keeps the init and eval programs of the
# runlocal recipes, which compile in about a second on a laptop CPU (the train step in 10-20 s).
MIN_COMPILE_TIME_SECS = 0.5

_warned: set[str] = set()
_counts = threading.local()  # per thread: jax reports a lookup on the thread that compiles
_listening = False
_HIT = "/jax/compilation_cache/cache_hits"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"


def resolve_dir(environ: dict | None = None) -> str | None:
    """The cache folder $VIDJAX_CACHE_DIR names (`~` expanded), the per-user default when it is unset, or None when
    it says off ("" or "off")."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV)
    if value is None:
        base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "vidjax", "jax")
    if value.strip().lower() in OFF:
        return None
    if "://" in value:  # a bucket (gs://...), which jax reads and writes itself: shared by the hosts of a pod
        return value.strip()
    return os.path.abspath(os.path.expanduser(value.strip()))


def _writable(directory: str) -> str | None:
    """None if `directory` can be made and written to, else why not."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vidjax-write-check-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _jax_config_dir() -> str | None:
    """The cache folder jax is configured with already (by its environment variable or by the program), if any."""
    if "jax" in sys.modules:
        import jax

        return jax.config.jax_compilation_cache_dir
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or None


def _set(name: str, value) -> None:
    """A jax option: through jax.config once jax is imported, else through its environment variable, which jax
    reads when it is imported (so that `--help` and config errors answer without loading jax)."""
    if "jax" in sys.modules:
        import jax

        jax.config.update(name, value)
    else:
        os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)


def configure(enabled: bool = True) -> str | None:
    """Switches the persistent compilation cache on (the folder `resolve_dir` gives) or, with `enabled=False`, off.

    Returns the folder jax will use, or None for no cache. Call before the first compilation: jax decides whether
    to use the cache then. A cache already configured for jax is kept; an unwritable folder is a warning and no cache.
    """
    if not enabled:
        _set("jax_enable_compilation_cache", False)
        return None
    existing = _jax_config_dir()
    if existing:
        return existing
    directory = resolve_dir()
    if directory is None:
        return None
    problem = None if "://" in directory else _writable(directory)
    if problem:
        _warn(f"compilation cache off for this run: cannot write to {directory} ({problem}). Set {ENV} to a "
              f"writable folder, or {ENV}=off (or --nocompilation_cache) to run without one and silence this.")
        return None
    _set("jax_compilation_cache_dir", directory)
    _set("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    _set("jax_persistent_cache_min_entry_size_bytes", -1)  # every program over the time threshold, however small
    return directory


def active_dir() -> str | None:
    """The folder jax reads and writes compiled programs in, or None when no persistent cache is on."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def watch() -> None:
    """Starts counting cache hits and misses (`counts`); idempotent. Call before the compilations to count."""
    global _listening
    if _listening:
        return
    import jax

    def on_event(event: str, **kwargs) -> None:
        if event == _HIT:
            _thread_counts()["hits"] += 1
        elif event == _REQUEST:  # every lookup; the misses are the lookups that were not hits
            _thread_counts()["lookups"] += 1

    jax.monitoring.register_event_listener(on_event)
    _listening = True


def _thread_counts() -> dict[str, int]:
    if not hasattr(_counts, "found"):
        _counts.found = {"hits": 0, "lookups": 0}
    return _counts.found


def counts() -> dict[str, int]:
    """{"hits", "misses"}: persistent-cache lookups by this thread since `watch` that loaded a compiled program, and
    that did not (per thread, so that a compilation on a background thread is told apart from the main thread's)."""
    found = _thread_counts()
    return {"hits": found["hits"], "misses": found["lookups"] - found["hits"]}


def describe(before: dict[str, int], after: dict[str, int]) -> str:
    """"compile cache hit, DIR" / "miss" / "3 hits, 1 miss" / "off": what the lookups between two `counts` found."""
    directory = active_dir()
    if directory is None:
        return "compile cache off"
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    found = ("not used" if not hits + misses else "hit" if not misses else "miss" if not hits
             else f"{hits} hit{'s' * (hits != 1)}, {misses} miss{'es' * (misses != 1)}")
    return f"compile cache {found}, {directory}"


def seconds_since_start() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere: since vidjax was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        import vidjax

        return time.time() - vidjax.IMPORTED_AT
