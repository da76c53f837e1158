"""File primitives every phantom module writes through: atomic writes and exclusive locks.

A leaf module (standard library only), so that the model zoo, the run store and the
reports share one implementation without importing one another.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import tempfile
from contextlib import contextmanager, suppress
from typing import Iterator


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it.

    The data go to a temporary file in the same directory, are flushed and fsynced,
    then renamed over ``path`` (mode 0644); the temporary file is removed if anything
    fails. Every file phantom writes goes through here.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                      delete=False)
    try:
        with tmp:
            tmp.write(raw)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)   # NamedTemporaryFile creates 0600
        os.replace(tmp.name, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp.name)
        raise


@contextmanager
def exclusive_lock(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


