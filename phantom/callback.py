"""``transformers.Trainer`` integration of :class:`phantom.monitor.PhantomMonitor` (SPEC §2, §5).

Every observation (step 0, every ``every``-th step, the final state) and every finding is
sent through the Trainer's logging path: appended to ``state.log_history`` and passed to
each callback's ``on_log``, so each ``report_to`` integration (TensorBoard, W&B, …) receives
it at the step it was observed. These are phantom's own log events: the Trainer's own
``logging_steps`` are left alone, and the console printers are skipped.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback

from . import files
from .monitor import FIRST, LIVE, PhantomMonitor, report_paths

log = logging.getLogger(__name__)


def metrics(rows: list[dict], findings: list[dict] = ()) -> dict[str, float]:
    """``{"phantom/<probe>/<series>": value}`` of rows, and ``phantom/<probe>/<kind>``: the step of
    each finding (logged when it is found)."""
    out = {f"phantom/{r['probe']}/{k}": float(r[k]) for r in rows for k in LIVE + FIRST if r.get(k) is not None}
    out.update({f"phantom/{f['probe']}/{f['kind']}": float(f["step"]) for f in findings})
    return out


def _running_handler() -> CallbackHandler | None:
    """The CallbackHandler whose event is running now (found on the call stack), or None."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            return candidate
        frame = frame.f_back
    return None


class PhantomCallback(TrainerCallback):
    """Runs a :class:`PhantomMonitor` inside ``transformers.Trainer``.

    Observes at the first step (``on_train_begin``), after every ``monitor.every``-th
    optimizer step and at the end (:meth:`PhantomMonitor.close`), and logs each through the
    Trainer's logging path (module docstring). ``callbacks=[PhantomCallback(...)]`` and
    :meth:`attach` behave the same: the callback puts itself first in the Trainer's list, so
    its final log reaches the integrations before they close. Sets
    ``control.should_training_stop`` on a finding of ``monitor.stop_on``. Writes the report
    at ``on_train_end`` to ``path`` (default ``<output_dir>/phantom``), whose directory is
    checked at construction and at ``on_train_begin``; a failure at the end is logged, never
    raised, so the user's code after ``train()`` runs. Works unchanged with a peft model.
    """

    def __init__(self, monitor: PhantomMonitor, path: str | os.PathLike | None = None):
        if not isinstance(monitor, PhantomMonitor):
            raise TypeError(f"PhantomCallback needs a PhantomMonitor, got {type(monitor).__name__}")
        self.monitor, self.path, self.handler, self._pending = monitor, path, None, None
        self.written: tuple[Path, Path] | None = None
        if path is not None:
            self._check_path(path)

    @staticmethod
    def _check_path(path) -> None:
        json_path, _ = report_paths(path)
        files.ensure_dir(json_path.parent, "monitor report directory")

    def attach(self, trainer) -> "PhantomCallback":
        """Add this callback to ``trainer`` (first in its list); the same as ``callbacks=[...]``."""
        self._adopt(trainer.callback_handler)
        return self

    def _adopt(self, handler: CallbackHandler) -> None:
        self.handler = handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)    # the loop over callbacks keeps its place: later ones still run
        handler.callbacks.insert(0, self)

    def _emit(self, args, state, control, logs: dict) -> None:
        """One log event of ``logs`` at ``state.global_step``: log_history and every callback's on_log."""
        state.log_history.append({**logs, "step": state.global_step})
        h = self.handler
        if h is None:
            return
        for cb in h.callbacks:
            if cb is self or isinstance(cb, (PrinterCallback, ProgressCallback)):
                continue
            cb.on_log(args, state, control, logs=dict(logs), model=h.model, processing_class=h.processing_class,
                      optimizer=h.optimizer, lr_scheduler=h.lr_scheduler, train_dataloader=h.train_dataloader,
                      eval_dataloader=h.eval_dataloader)

    def _observe(self, model, step: int, close: bool = False) -> dict:
        before = len(self.monitor.findings)
        rows = self.monitor.close(model, step) if close else self.monitor.observe(model, step)
        return metrics(rows, self.monitor.findings[before:])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.handler is None:
            handler = _running_handler()
            if handler is None:
                log.warning("phantom: no Trainer callback handler found: the monitor's values go to "
                            "state.log_history only, not to the report_to integrations")
            else:
                self._adopt(handler)
        self._check_path(self.path or Path(args.output_dir) / "phantom")
        if not self.monitor.history or self.monitor.history[-1]["step"] < state.global_step:
            self._pending = self._observe(model, state.global_step)   # logged once every on_train_begin ran

    def on_step_begin(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._emit(args, state, control, self._pending)
            self._pending = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.monitor.every == 0:
            self._emit(args, state, control, self._observe(model, state.global_step))
        if self.monitor.stop is not None:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        try:
            if self._pending is not None:       # trained no step at all
                self._emit(args, state, control, self._pending)
                self._pending = None
            final = self._observe(model, state.global_step, close=True)
            if final:
                self._emit(args, state, control, final)
            self.written = self.monitor.report(self.path or Path(args.output_dir) / "phantom")
        except Exception as err:  # noqa: BLE001 - training is over: never keep the user's code from running
            log.error(f"phantom: the monitor's end of training failed ({type(err).__name__}: {err}); "
                      "training itself finished")
