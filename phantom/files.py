"""File primitives every phantom module writes through: atomic writes, exclusive locks, usable directories.

A leaf module (standard library only), so that the model zoo, the run store and the
reports share one implementation without importing one another. A path that cannot be
used (a directory where a file belongs, a file or ``/proc`` where a directory belongs, a
symlinked lock, a read-only file system) raises :class:`UnusablePath`, whose message names
the path, what it is for and the reason.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

STALE_S = 3600.0      # a temporary file or build folder untouched this long belongs to a killed process
TMP_PATTERN = ".*.phantom-*.tmp"   # write_atomic's temporary files (no one else's hidden .tmp files)
LOCK_NOTICE_S = 5.0   # a process blocked this long on a lock says on stderr what it waits for


class UnusablePath(OSError):
    """A file or directory phantom must use cannot be used; the message names it and says why."""


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def ensure_dir(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Create the directory ``path`` if needed and prove it writable (a file is created and removed).

    Parameters
    ----------
    what : str
        What the directory is for, as the error message names it (e.g. ``"run store"``).

    Raises
    ------
    UnusablePath
        ``path`` is a file, lies under one, cannot be created or is not writable.
    """
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UnusablePath(f"{what} {str(path)!r} is not a writable directory: {_reason(err)}") from None
    return path


def sweep_stale(folder: pathlib.Path, pattern: str, *, older_than: float = STALE_S) -> None:
    """Remove the entries of ``folder`` matching ``pattern`` not modified for ``older_than`` seconds.

    What a killed process left behind (temporary files, half-built folders); never fails.
    """
    import shutil
    cutoff = time.time() - older_than
    with suppress(OSError):
        for entry in folder.glob(pattern):
            with suppress(OSError):
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it.

    The data go to a temporary file ``.<name>.phantom-*.tmp`` in the same directory, are flushed and
    fsynced, then renamed over ``path`` (mode 0644); the temporary file is removed if anything
    fails, and stale ones a killed process left there (older than :data:`STALE_S`) are swept.
    Every file phantom writes goes through here.

    Raises
    ------
    OSError
        The directory cannot be created or written, or ``path`` is a directory.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, TMP_PATTERN)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.phantom-", suffix=".tmp",
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


def _notice(path: pathlib.Path, fd: int, what: str) -> None:
    """Say once on stderr what a blocked process waits for (the holder wrote its pid into the file)."""
    try:
        holder = f", held by pid {int(os.pread(fd, 32, 0).split()[0])}"
    except (OSError, ValueError, IndexError):
        holder = ""
    print(f"phantom: waiting for {what} (lock {path}{holder}) …", file=sys.stderr, flush=True)


@contextmanager
def exclusive_lock(path: pathlib.Path, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    The lock file is opened with ``O_NOFOLLOW`` (a symlink planted in its place is refused,
    not followed) and receives the holder's pid. A process blocked for :data:`LOCK_NOTICE_S`
    says once on stderr what it waits for (``what``, default the path) and who holds it.

    Raises
    ------
    UnusablePath
        The lock file cannot be created or opened (a directory, a symlink, a read-only place).
    """
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UnusablePath(f"cannot use the lock file {str(path)!r}: {_reason(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            timer = threading.Timer(LOCK_NOTICE_S, _notice, (path, fd, what or str(path)))
            timer.daemon = True
            timer.start()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                timer.cancel()
        with suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
