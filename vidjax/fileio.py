"""Paths as people type them, vidjax's per-user cache folders, and writing files so that a reader never sees a
partial one: the contents replace the path only when complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import IO


def user_path(path: str | os.PathLike) -> str:
    """A path as a person types it (relative, `./x`, `~/x`, a trailing slash, through a symlink) made absolute, with
    `~` expanded: the form every loader, writer and orbax (which refuses relative paths) is given."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def user_cache_dir(name: str, environ: Mapping[str, str] | None = None) -> str:
    """`$XDG_CACHE_HOME/vidjax/<name>`, else `~/.cache/vidjax/<name>`: where vidjax keeps what it can make again
    (compiled programs, converted Hub checkpoints)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vidjax", name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file to write whose contents replace `path` only when the block completes: never a partial file."""
    path = user_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
