"""Progress of long commands on stderr: ``label: done/total (pct), elapsed, ETA``.

Shown only when stderr is a terminal and the ``CI`` environment variable is unset, so pipes,
log files and CI stay quiet. One line, redrawn in place, ended by a newline on close.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .store import RunStore, key_hash


def wanted(stream=None) -> bool:
    """Whether progress should be drawn on ``stream`` (default stderr): a TTY and not in CI."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("CI")


def duration(seconds: float) -> str:
    """A duration as every phantom line prints it: ``42s``, ``3m05s``, ``1h02m``."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 \
        else f"{s}s"


class Progress:
    """Steps done out of ``total``, with an ETA from the mean rate so far.

    Parameters
    ----------
    total : int
        Expected number of steps (grown to ``done`` if more arrive: the ETA then reads ``?``).
    label : str
    stream : file, optional
        Default stderr.
    show : bool, optional
        Default :func:`wanted`; False makes every method a no-op.
    """

    def __init__(self, total: int, label: str, stream=None, show: bool | None = None):
        self.total, self.label, self.done = max(int(total), 0), label, 0
        self.stream = sys.stderr if stream is None else stream
        self.show = wanted(self.stream) if show is None else show
        self.start, self._drawn = time.perf_counter(), False

    def line(self) -> str:
        """The current progress line (without the carriage return)."""
        elapsed = time.perf_counter() - self.start
        if self.done > self.total:
            return f"{self.label}: {self.done} done, {duration(elapsed)} elapsed, ETA ?"
        pct = self.done / self.total if self.total else 1.0
        eta = duration(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        return f"{self.label}: {self.done}/{self.total} ({pct:.0%}), {duration(elapsed)} elapsed, ETA {eta}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.show:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def forwards(progress: Progress) -> Iterator[Progress]:
    """Advance ``progress`` once per forward of a causal LM (a model with an LM head) in the block.

    A process-wide module forward hook: counts each training/probe forward of
    :func:`phantom.dynamics.run` without touching the engine. No hook when progress is hidden.
    """
    if not progress.show:
        yield progress
        return
    import torch
    from transformers import PreTrainedModel

    def hook(module, args, output):
        if isinstance(module, PreTrainedModel) and module.get_output_embeddings() is not None:
            progress.advance()

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with progress:
            yield progress
    finally:
        handle.remove()


class CountingStore(RunStore):
    """A run store that advances ``progress`` once per distinct entry of ``kind`` it serves."""

    def __init__(self, progress: Progress, root=None, kind: str = "trajectory"):
        super().__init__(root)
        self.progress, self.kind, self._seen = progress, kind, set()

    def get_or_compute(self, key: dict, compute, validate=None) -> dict:
        payload = super().get_or_compute(key, compute, validate)
        if key.get("kind") == self.kind and (h := key_hash(key)) not in self._seen:
            self._seen.add(h)
            self.progress.advance()
        return payload
