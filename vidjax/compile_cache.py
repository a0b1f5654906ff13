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

jax's key is the lowered program, so a hit still traces and lowers the Python function first: about a second for
the trainer's step, a quarter of a cached start. `compile_or_load` is the trainer's step one level up: its own
entries (in `STEPS_SUBDIR` of the folder) are keyed on what the step is built from instead (the caller's config and
values, the arguments' shapes, dtypes and shardings, the source of every module loaded from outside the Python
installation, vidjax's included, the installed versions, jax's options, XLA's environment variables and the
devices), and a hit loads the executable without tracing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import sysconfig
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import vidjax
from vidjax import config_lib, fileio
from vidjax.config_lib import ConfigError

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
_steps_on = False  # `compile_or_load` keeps its own entries: set by `configure`, which the commands call
_HIT = "/jax/compilation_cache/cache_hits"
STEPS_SUBDIR = "vidjax-steps"  # `compile_or_load`'s entries, beside jax's
MAX_STEP_ENTRIES = 32  # the most recently used are kept (a ViT-B train step's entry is tens of MB on a GPU)
# Environment variables that change what XLA compiles or how jax traces, part of `compile_or_load`'s key.
_ENV_PREFIXES = ("XLA_", "JAX_", "LIBTPU_", "TPU_", "NEURON_", "CUDA_", "NVIDIA_TF32")
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"


def resolve_dir(environ: dict | None = None) -> str | None:
    """The cache folder $VIDJAX_CACHE_DIR names (`~` expanded), the per-user default when it is unset, or None when
    it says off ("" or "off")."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV)
    if value is None:
        return fileio.user_cache_dir("jax", environ)
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
    With a cache on, `compile_or_load` keeps its entries too (in this process: the caller is a command).
    """
    global _steps_on
    _steps_on = False
    if not enabled:
        _set("jax_enable_compilation_cache", False)
        return None
    existing = _jax_config_dir()
    if existing:
        _steps_on = True
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
    _steps_on = True
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
        return time.time() - vidjax.IMPORTED_AT


def _steps_dir() -> str | None:
    """The folder of `compile_or_load`'s entries, or None where it does not keep any: in a program that did not
    start the cache through a command (`configure`: a library caller may patch what the key cannot see), without a
    persistent cache, in a bucket (jax's own entries serve a pod), over several processes (each compiles its part
    of a multi-host program), or under a `__main__` without a source file to key on (a notebook, `python -c`)."""
    import jax

    if not _steps_on:
        return None
    directory = active_dir()
    if directory is None or "://" in directory or jax.process_count() > 1:
        return None
    if not getattr(sys.modules.get("__main__"), "__file__", None):
        return None
    return os.path.join(directory, STEPS_SUBDIR)


def _source_digest() -> list[tuple[str, str]]:
    """(module, sha256 of its source file) for every loaded module whose file lies outside the Python installation's
    own folders (the standard library and site-packages, which `_versions` stands for), and for vidjax wherever it
    is: a checkout, a user's own models and configs, the running script."""
    import site

    folders = [sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    folders += site.getsitepackages() + [site.getusersitepackages()]
    installed = tuple({os.path.join(form, "") for path in folders if path
                       for form in (path, os.path.realpath(path))})
    digests = []
    for name, module in sorted(sys.modules.copy().items()):  # one C call; see `_versions`
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py") or path.startswith(installed) and not name.startswith("vidjax"):
            continue
        try:
            with open(path, "rb") as f:
                digests.append((name, hashlib.sha256(f.read()).hexdigest()))
        except OSError:
            digests.append((name, "unreadable"))
    return digests


def _versions() -> list[tuple[str, str]]:
    """(package, version) of every loaded top-level package that states one (jax, jaxlib, flax, optax, numpy, ...).

    The trainer computes it on its compile thread while the main thread may import: `sys.modules.copy()` is one C
    call under the GIL, where `list(sys.modules.items())` could see the dict change size mid-copy and raise."""
    return sorted((name, version) for name, module in sys.modules.copy().items()
                  if "." not in name and isinstance(version := getattr(module, "__version__", None), str))


def step_key(name: str, args: Sequence, key_parts: Sequence) -> str:
    """`compile_or_load`'s key (sha256 hex) for the program `name` built from `key_parts` and taking `args`."""
    import jax
    import numpy as np

    def describe(value):
        if isinstance(value, (np.ndarray, jax.Array)):
            value = np.asarray(value)
            return ("array", value.shape, str(value.dtype), hashlib.sha256(value.tobytes()).hexdigest())
        return repr(value)

    def describe_arg(x):
        return (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)), repr(getattr(x, "sharding", None)))

    leaves, tree = jax.tree.flatten(args)
    devices = [(d.id, d.platform, d.device_kind, d.process_index) for d in jax.devices()]
    parts = {
        "name": name,
        "key_parts": [describe(part) for part in key_parts],
        "args": (str(tree), [describe_arg(x) for x in leaves]),
        "devices": (devices, jax.devices()[0].client.platform_version),
        "jax_options": sorted((option, repr(value)) for option, value in jax.config.values.items()),
        "environment": sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)),
        "python": sys.version,
        "versions": _versions(),
        "sources": _source_digest(),
    }
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def compile_or_load(name: str, jitted, args: Sequence, key_parts: Sequence = (),
                    on_lowered: Callable[[], None] | None = None):
    """`jitted.lower(*args).compile()`, loaded from this module's own entry when an earlier run compiled the same
    step: returns (compiled, what the cache found, as `describe` says it).

    `key_parts` must hold every value the function was built from besides the code (a config, values computed from
    the data); the code, the arguments' shapes, dtypes and shardings, jax's options and the devices are keyed here
    (`step_key`). A hit skips tracing and lowering; a miss lowers and compiles (through jax's persistent cache) and
    stores the executable when XLA compiled it in this process (an executable jax loaded from its own cache cannot
    be stored again: XLA:CPU leaves out its compiled functions). An entry that does not load is a warning, is
    removed, and the step is compiled. `on_lowered` is called once nothing more holds the GIL for long: after
    lowering, or at once on a hit.
    """
    import jax
    from jax.experimental import serialize_executable

    watch()
    directory = _steps_dir()
    path = None
    if directory is not None:
        path = os.path.join(directory, f"{name}-{step_key(name, args, key_parts)}")
        if os.path.exists(path):
            if on_lowered is not None:  # loading holds the GIL little: the caller's own work goes on alongside
                on_lowered()
            try:
                with open(path, "rb") as f:
                    payload, in_tree, out_tree, device_ids = pickle.loads(zlib.decompress(f.read()))
                by_id = {device.id: device for device in jax.devices()}
                compiled = serialize_executable.deserialize_and_load(
                    payload, in_tree, out_tree, execution_devices=[by_id[i] for i in device_ids])
            except Exception as err:  # noqa: BLE001 -- any damage to the entry: compile instead
                _warn(f"the cached {name} in {path} did not load ({type(err).__name__}: {str(err)[:200]}); "
                      f"compiling it again and replacing the entry.")
                _remove(path)
            else:
                try:
                    os.utime(path)  # recently used: kept by `_prune`
                except OSError:
                    pass
                return compiled, f"compile cache hit, {active_dir()}"
    before = counts()
    try:
        lowered = jitted.lower(*args)
    finally:
        if on_lowered is not None:
            on_lowered()
    compiled = lowered.compile()
    found = describe(before, counts())
    if path is not None and not counts()["hits"] - before["hits"]:
        _store(path, compiled, serialize_executable)
    return compiled, found


def _store(path: str, compiled, serialize_executable) -> None:
    """Writes `compiled` to `path` whole or not at all (a temporary file renamed into place)."""
    try:
        data = zlib.compress(pickle.dumps(_serialized(compiled, serialize_executable),
                                          protocol=pickle.HIGHEST_PROTOCOL), level=1)
        _write_whole(path, data)
        _prune(os.path.dirname(path))
    except (OSError, ValueError, NotImplementedError, pickle.PicklingError, TypeError, AttributeError) as err:
        _warn(f"could not keep the compiled {os.path.basename(path).split('-')[0]} in {os.path.dirname(path)} "
              f"({type(err).__name__}: {str(err)[:200]}); the next run compiles it again.")


def _serialized(compiled, serialize_executable) -> tuple:
    """(payload, in_tree, out_tree, device ids) of a compiled program: the devices it runs on, in its order (jax's
    loader assumes all of them otherwise)."""
    device_ids = [device.id for device in compiled._executable._unloaded_executable.device_list]
    return (*serialize_executable.serialize(compiled), device_ids)


def _write_whole(path: str, data: bytes) -> None:
    """`data` at `path` whole or not at all: a temporary file beside it, renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                                         delete=False) as f:
            tmp = f.name
            f.write(data)
        os.chmod(tmp, 0o644)  # as jax's entries (the temporary file's own mode is 0600)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise


# ---- steps compiled ahead of time for another machine (`python -m vidjax.aot --save`, `--config.aot_step`) ----

AOT_FORMAT = "vidjax-aot-step-1"


def _lowered_digest(lowered) -> str:
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def _installed(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _build_header(lowered, devices: Sequence, mesh_shape: dict, config_json: str, where: str) -> dict:
    import jax

    return {"format": AOT_FORMAT, "jax": jax.__version__, "jaxlib": _installed("jaxlib"),
            "libtpu": _installed("libtpu"), "platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "num_devices": len(devices), "mesh": dict(mesh_shape), "where": where,
            "step": _lowered_digest(lowered), "config": config_json}


def save_step(path: str, lowered, compiled, mesh, config_json: str, where: str) -> int:
    """Writes the compiled step to `path` (whole or not at all) with what it was compiled for: jax's, jaxlib's and
    libtpu's versions, the devices (platform, kind, count), the mesh, the lowered program's digest and the config
    (`config_json`); `where` names the slice. Returns the bytes written."""
    from jax.experimental import serialize_executable

    header = _build_header(lowered, list(mesh.devices.flat), mesh.shape, config_json, where)
    data = zlib.compress(pickle.dumps((header, _serialized(compiled, serialize_executable)),
                                      protocol=pickle.HIGHEST_PROTOCOL), level=1)
    _write_whole(path, data)
    return len(data)


def load_step(path: str, jitted, args: Sequence, mesh, config_json: str,
              on_lowered: Callable[[], None] | None = None):
    """The step saved at `path` by `save_step`, loaded onto `mesh`'s devices, once it is known to be the program
    `jitted` lowers for `args` (the lowering is compared, so any change of config, code or shapes shows) on devices
    of the same kind and count, under the same jax, jaxlib and libtpu. A mismatch is a ConfigError of one line that
    names it; nothing is compiled in its place."""
    import jax
    from jax.experimental import serialize_executable

    flag = f"--config.aot_step={path}"
    try:
        with open(path, "rb") as f:
            header, (payload, in_tree, out_tree, device_ids) = pickle.loads(zlib.decompress(f.read()))
        if header.get("format") != AOT_FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zlib.error, TypeError) as err:
        raise ConfigError(f"{flag}: not a step saved by `python -m vidjax.aot --save` ({type(err).__name__}: "
                          f"{str(err)[:120]}).") from err
    lowered = jitted.trace(*args).lower()
    if on_lowered is not None:
        on_lowered()
    devices = list(mesh.devices.flat)
    now = _build_header(lowered, devices, mesh.shape, config_json, "")
    for key, what in (("jax", "jax"), ("jaxlib", "jaxlib"), ("libtpu", "libtpu")):
        if header[key] != now[key]:
            raise ConfigError(f"{flag} was compiled with {what} {header[key]}, this run has {now[key]}: compile it "
                              f"again here (python -m vidjax.aot ... --save) or install {what}=={header[key]}.")
    if (header["platform"], header["device_kind"], header["num_devices"], header["mesh"]) != (
            now["platform"], now["device_kind"], now["num_devices"], now["mesh"]):
        raise ConfigError(f"{flag} was compiled for {header['where']}: {header['num_devices']} {header['device_kind']} "
                          f"devices, mesh {header['mesh']}; this run has {now['num_devices']} "
                          f"{now['device_kind']}, mesh {now['mesh']}: compile it for this slice.")
    if header["step"] != now["step"]:
        changed = config_lib.differences(header["config"], config_json, skip=("aot_step",))
        raise ConfigError(f"{flag} holds another step than this run's (" + (
            f"config: {'; '.join(changed)}" if changed else "same config: other code, data shapes or schedule length")
            + "): compile it again with this run's config.")
    by_id = {device.id: device for device in jax.devices()}
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                     execution_devices=[by_id[i] for i in device_ids])


def _prune(directory: str) -> None:
    """Keeps the `MAX_STEP_ENTRIES` most recently used entries (a hit touches its file), removing the others."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.is_file() and not entry.name.startswith(".")]
    except OSError:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in entries[MAX_STEP_ENTRIES:]:
        _remove(entry.path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
