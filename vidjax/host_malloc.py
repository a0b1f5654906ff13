"""The host allocator under XLA:CPU: one glibc arena that keeps what it frees, so each step reuses its memory.

One of the platform choices (`vidjax.platform`, which says where it applies and the measurements behind it): XLA:CPU
allocates an executable's temporaries and outputs afresh on every call and frees them when the call returns, and
glibc's malloc serves a request above its mmap threshold (at most 32 MiB) with a fresh `mmap` and hands it back with
`munmap` when it is freed (the arenas of the backend's worker threads, whose heaps hold at most 64 MiB, do the same
for anything larger), so every step faulted its temporaries in again, page by page.

`configure` sets glibc's malloc, through `mallopt`, to serve every thread from the main arena (M_ARENA_MAX 1),
which grows with `brk` instead of mapping large blocks (M_MMAP_MAX 0) and is never trimmed (M_TRIM_THRESHOLD -1):
freed buffers stay mapped and the next step reuses them without a page fault. The cost is that the process keeps
its peak heap until it exits. The commands call it as they parse their command line (vidjax/cli.py), before jax
starts its CPU backend: the backend's threads take their arenas when they start, so calling it later changes
nothing for them, and `configure` then leaves the allocator alone. A program of one's own calls it before its
first jax computation.

It applies only where XLA:CPU runs the model on glibc Linux: not where VIDJAX_HOST_MALLOC=system, not elsewhere
than glibc, and not on a host whose GPU or TPU chips jax will use, unless JAX_PLATFORMS (jax_platforms) says cpu
(there the model's buffers live on the device and the host's threads decode video, which one arena would
serialise). A plugin installed without its chips (libtpu, which the test extra brings, on a machine with no TPU)
is no accelerator: jax runs on the CPU there, and the policy applies (`vidjax.platform.accelerator_on_host`).
`state()` says what was decided, and the benchmark records it with its figures.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

from vidjax import platform as vidjax_platform

ENV = "VIDJAX_HOST_MALLOC"
VALUES = ("reuse", "system")  # $VIDJAX_HOST_MALLOC: the default, or glibc's own settings left alone

REUSE = "reuse"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_state = "system (not configured)"


def state() -> str:
    """What `configure` decided: "reuse" (one arena that keeps freed memory), or "system (why)"."""
    return _state


def _requested() -> str:
    value = os.environ.get(ENV, REUSE).strip().lower() or REUSE
    if value not in VALUES:
        raise ValueError(f"${ENV}={os.environ[ENV]!r} is not one of {VALUES}: unset it (or set it to {REUSE!r}) to "
                         f"let XLA:CPU reuse its step memory, or set it to 'system' to leave glibc's malloc as it is.")
    return value


def _platforms() -> str:
    """jax_platforms as set ($JAX_PLATFORMS or jax.config), "" where unset."""
    import jax

    return jax.config.jax_platforms or ""


def _accelerator_plugin() -> str | None:
    """The name of an installed jax GPU/TPU plugin, or None."""
    for entry in importlib.metadata.entry_points(group="jax_plugins"):
        return entry.name
    return "libtpu" if importlib.util.find_spec("libtpu") is not None else None


def runs_on_cpu_only(platforms: str, plugin: str | None) -> bool:
    """Whether XLA:CPU runs the model: `platforms` (jax_platforms, e.g. "cpu" or "cuda,cpu") names the CPU first,
    or names nothing and no accelerator is on this host: no `plugin` installed, or its chips absent
    (`vidjax.platform.host_allocator_applies`, `accelerator_on_host`)."""
    return vidjax_platform.host_allocator_applies(platforms, vidjax_platform.accelerator_on_host(plugin))


def configure() -> str:
    """Sets the allocator policy of the module docstring where it applies; returns `state()`."""
    global _state
    from jax._src import xla_bridge

    if _requested() == "system":
        _state = f"system (${ENV}=system)"
    elif not on_glibc_linux():
        _state = "system (not glibc Linux)"
    elif xla_bridge.backends_are_initialized():
        # Its threads already hold their arenas; changing the policy now would only reach new ones.
        _state = "system (jax's backend had started)" if _state != REUSE else REUSE
    elif not runs_on_cpu_only(platforms := _platforms(), plugin := _accelerator_plugin()):
        _state = f"system (jax runs on {platforms or plugin})"
    else:
        libc = ctypes.CDLL("libc.so.6")
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
        if all(libc.mallopt(param, value) == 1 for param, value in settings):
            _state = REUSE
        else:
            _state = "system (mallopt refused)"
    return _state


def on_glibc_linux() -> bool:
    """Whether this process's malloc is glibc's on Linux, which `configure` and `release` act on."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release() -> int | None:
    """Hands the heap's free pages back to the system (glibc's `malloc_trim(0)`, which does so in every arena and
    whatever `configure` set) and returns the resident bytes that gave back; None where it does not apply (not glibc
    Linux). For a process that does not reuse what it freed: `vidjax.train.aot` calls it after each compile. A
    compiler's working set is large (SVT's ViT-B step for a v4-32 slice: 21 GB at its peak, 14 GB of it freed and
    still resident when the compile returned), and the next compile's came on top of it: `--find_batch`'s second
    compile ran out of a 24 GB machine's memory."""
    if not on_glibc_linux():
        return None
    before = _resident_bytes()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return before - _resident_bytes()
