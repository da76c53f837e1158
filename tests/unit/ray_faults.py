"""Faulty Ray workers for tests/unit/test_executor.py (imported by the Ray workers themselves).

Each is :func:`phantom.executor._worker` (arguments: task, driver fingerprint, weights hash,
store root) with a fault, and keeps its files in the folder above the store root. The first
two fail on the first attempt of a task only: it claims ``first`` there (``O_EXCL``: exactly
one attempt across processes gets it), and every attempt appends its pid to ``attempts``.
"""
from __future__ import annotations

import os
from pathlib import Path

from phantom import dynamics, executor


def _first_attempt(root: str) -> bool:
    folder = Path(root).parent
    with open(folder / "attempts", "a") as log:
        log.write(f"{os.getpid()}\n")
    try:
        os.close(os.open(folder / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def raise_mid_run(*args):
    """The first attempt raises at the third optimizer step of its fine-tuning run."""
    if not _first_attempt(args[3]):
        return executor._worker(*args)
    real = dynamics.optimizer

    def optimizer(model, lr):
        opt, steps = real(model, lr), []
        step = opt.step

        def failing_step(*a, **k):
            steps.append(1)
            if len(steps) == 3:
                raise RuntimeError("injected fault at optimizer step 3")
            return step(*a, **k)

        opt.step = failing_step
        return opt

    dynamics.optimizer = optimizer
    try:
        return executor._worker(*args)
    finally:
        dynamics.optimizer = real


def die_mid_write(*args):
    """The first attempt's process exits (no clean-up) once the entry's temporary file is written,
    before it is renamed into place."""
    if _first_attempt(args[3]):
        os.replace = lambda src, dst: os._exit(1)
    return executor._worker(*args)


def other_code(*args):
    """A worker whose phantom source differs: its imported sources are those of the folder ``other``."""
    other = Path(args[3]).parent / "other"
    real = dict(executor.IMPORTED)
    executor.IMPORTED.update({name: (other / f"{name}.py").read_bytes() for name in real})
    try:
        return executor._worker(*args)
    finally:
        executor.IMPORTED.update(real)
