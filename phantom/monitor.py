"""Watch your own fine-tune: the SPEC §2 order parameter on user probes, live (SPEC §2, §3, §5).

A *probe* is a context and two words: the ``target`` the user trains toward and its
near-synonym ``competitor``. Words resolve to single tokens as the SPEC §3 contexts' words
do (leading space; a word that splits is :class:`phantom.contexts.ContextUnusable`). The
target is ``g`` and the competitor ``c`` as given: ``Φ = b_target − b_competitor`` with no
re-orientation.

:class:`PhantomMonitor` observes a model at a step with one batched no-grad forward over all
probes and the live input embedding (so Ψ moves under full fine-tuning and stays put under
LoRA), records one row per probe and reports the SPEC §5 transitions as they happen. A
custom loop calls ``monitor.observe(model, step)`` and ``monitor.close(model, step)``;
:class:`phantom.callback.PhantomCallback` does it inside ``transformers.Trainer``; the blind
critical LR lives in :mod:`phantom.predict`. Series have one name everywhere (rows, logs,
plots): :data:`SERIES`.
"""
from __future__ import annotations

import collections
import importlib
import json
import logging
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import contexts, dynamics, geometry, transitions
from .files import write_atomic
from .protocol import STEPS

log = logging.getLogger(__name__)

SERIES = {   # name in rows, logs and plots → meaning (README: glossary)
    "phi": "Φ = b_target − b_competitor, the Born gap (SPEC §2); > 0: the target leads in Born weight",
    "S": "signal part of Φ, (p_target − p_competitor)(1 − G_gc²)",
    "D": "drag part of Φ, Φ − S: what the rest of the distribution adds",
    "p_target": "probability of the target word at the context's last position",
    "p_competitor": "probability of the competitor word",
    "rank_target": "rank of the target's logit (1 = top)",
    "rank_competitor": "rank of the competitor's logit",
    "dz": "Δz = z_target − z_competitor, the logit gap",
    "loss": "cross-entropy of the target at the context's last position",
    "G_gc": "cosine overlap of the two words' input embeddings (first observation)",
    "B": "burial depth of the target at the first observation (SPEC §2)",
    "r": "blind statistic ∇Φ·sign(−∇L) at the first observation (SPEC §5 A3; blind=True only)",
}
LIVE = ("phi", "S", "D", "p_target", "p_competitor", "rank_target", "rank_competitor", "dz", "loss")
FIRST = ("G_gc", "B", "r")                                    # first observation only
FINDINGS = ("born_flip", "rank_flip", "jump", "silent_failure_trend")
BAD_NEWS = frozenset({"silent_failure_trend"})                # warned; the others are logged only
TREND_TOLERANCE = 0.01   # silent_failure_trend: a loss rise ≤ 1 % between observations is noise
MAX_NAMED = 5            # error messages name at most this many offending items


class PhantomFinding(UserWarning):
    """Bad news seen on a probe during training (a silent failure trend)."""


class PhantomStop(RuntimeError):
    """Raised by :meth:`PhantomMonitor.observe` for a finding whose kind is in ``raise_on``."""


class UnsupportedModel(ValueError):
    """A model the monitor cannot read a next-token Born gap from (not causal, on meta, too small)."""


@dataclass(frozen=True)
class Probe:
    """A context and the word pair to watch (SPEC §3 words: single tokens with a leading space).

    ``name`` labels the probe in rows, logs and plots (default ``"<target>-<competitor>"``).
    """

    context: str
    target: str
    competitor: str
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.target}-{self.competitor}"


def _as_probe(p) -> Probe:
    if isinstance(p, Probe):
        return p
    if isinstance(p, (tuple, list)) and len(p) in (3, 4) and all(isinstance(x, str) for x in p):
        return Probe(*p)
    raise TypeError(f"a probe is a Probe or a (context, target, competitor[, name]) tuple of strings, got {p!r}"[:300])


def _kinds(kinds, what: str) -> frozenset[str]:
    kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
    unknown = sorted(kinds - set(FINDINGS))
    if unknown:
        raise ValueError(f"{what} names unknown finding kind(s) {unknown}; known: {', '.join(FINDINGS)}")
    return kinds


def _internal_dirs() -> tuple[str, ...]:
    dirs = [str(Path(__file__).parent)]
    for name in ("transformers", "accelerate", "peft", "torch"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(str(Path(module.__file__).parent))
    return tuple(dirs)


def user_stacklevel() -> int:
    """``stacklevel`` for a warning issued by the caller that points at the first frame outside
    phantom, transformers, accelerate, peft and torch: the user's ``observe`` or ``train()``."""
    internal, frame, level = _internal_dirs(), sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


def _causal(model) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # peft
    name = type(base).__name__
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or name.endswith("ForCausalLM")


def check_model(model, largest_id: int) -> None:
    """Refuse, with one line, a model whose next-token Born gap cannot be read.

    Raises
    ------
    UnsupportedModel
        An encoder-decoder (T5, BART) or any non-causal model (BERT), a model with weights on
        the meta device, or an embedding with no row for a probe's token id.
    """
    name = type(model).__name__
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModel(f"{name} is an encoder-decoder model: the monitor needs a causal LM "
                               "(decoder-only, e.g. Llama, GPT-2, SmolLM2)")
    if not _causal(model):
        raise UnsupportedModel(f"{name} is not a causal language model (no next-token head): its Φ would be "
                               "meaningless; load it with AutoModelForCausalLM")
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise UnsupportedModel(f"{name} has {len(meta)} parameter(s) on the meta device (e.g. {meta[0]}): "
                               "load its weights before observing")
    rows = model.get_input_embeddings().weight.shape[0]
    if largest_id >= rows:
        raise UnsupportedModel(f"the probes use token id {largest_id} but {name}'s embedding has {rows} rows: "
                               "the tokenizer does not belong to this model (or resize_token_embeddings)")


class PhantomMonitor:
    """Live SPEC §2 read-outs of user probes and their SPEC §5 findings.

    Parameters
    ----------
    tokenizer
        The model's tokenizer (Hugging Face).
    probes : sequence of Probe or (context, target, competitor[, name]) tuples
        Names must be unique.
    every : int
        :class:`phantom.callback.PhantomCallback` observes every ``every`` optimizer steps
        (and at the first and last step).
    window : int
        Steps a *silent failure trend* is judged over (default ``T`` = 30, SPEC §4's run).
    tolerance : float
        Relative loss noise the trend rule forgives (default 1 %): see :meth:`silent_failure_trend`.
    blind : bool
        Compute the blind statistic ``r`` at the first observation (default False: two backward
        passes per probe, about 10 training steps of cost each; ``phantom predict`` computes it).
    stop_on, raise_on : collection of str
        Finding kinds (:data:`FINDINGS`) that set :attr:`stop` (the callback then stops the
        Trainer) or make :meth:`observe` raise :class:`PhantomStop`.

    Attributes
    ----------
    history : list of dict
        Every row :meth:`observe` returned, in order; ``row["findings"]`` lists the kinds of
        finding first seen at that observation.
    findings : list of dict
        ``{"step", "observed_at", "probe", "kind", "bad", "message"}``, each ``(probe, kind)`` once.
    stop : dict or None
        The first finding whose kind is in ``stop_on``.
    """

    def __init__(self, tokenizer, probes, every: int = 1, window: int = STEPS, tolerance: float = TREND_TOLERANCE,
                 blind: bool = False, stop_on=(), raise_on=()):
        for name, value, low in (("every", every, 1), ("window", window, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a positive integer (steps), got {value!r}")
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
            raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
        self.probes = [_as_probe(p) for p in probes]
        if not self.probes:
            raise ValueError("probes is empty: give at least one (context, target, competitor)")
        names = [p.label for p in self.probes]
        dup = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        if dup:
            raise ValueError(f"probe names must be unique: {len(dup)} repeated, e.g. {dup[:MAX_NAMED]}"[:400])
        self.tokenizer, self.every, self.window, self.tolerance, self.blind = tokenizer, every, window, tolerance, blind
        self.stop_on, self.raise_on = _kinds(stop_on, "stop_on"), _kinds(raise_on, "raise_on")
        self.ids, self.pairs = [], []
        for p in self.probes:
            if not p.context.strip():
                raise ValueError(f"probe {p.label!r} has an empty context"[:300])
            g, c = (contexts.token_id(tokenizer, w, p.label) for w in (p.target, p.competitor))
            if g == c:
                raise ValueError(f"probe {p.label!r}: target and competitor are the same token {g}"[:300])
            self.pairs.append((g, c))
            self.ids.append(tokenizer(p.context, return_tensors="pt").input_ids[0])   # (n_i,)
        self._largest_id = max(max(max(g, c), int(i.max())) for (g, c), i in zip(self.pairs, self.ids))
        self.history: list[dict] = []
        self.findings: list[dict] = []
        self.stop: dict | None = None
        self._rows: dict[str, list[dict]] = {name: [] for name in names}   # history by probe
        self._g_gc: dict[str, float] = {}
        self._psi_key, self._psi, self._checked = None, None, None

    # --- observation ---------------------------------------------------------------

    def _normalized_embedding(self, model) -> torch.Tensor:
        """Ψ of the live input embedding: recomputed whenever the embedding is trainable (fused
        optimizer steps do not bump a tensor's version), reused while it is frozen (LoRA)."""
        E = model.get_input_embeddings().weight
        key = (E.data_ptr(), E._version, tuple(E.shape))
        if E.requires_grad or key != self._psi_key:
            self._psi_key, self._psi = key, geometry.normalize_rows(E.detach())
        return self._psi

    def _batch(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask (P, n_max) and each probe's last real position (P,)."""
        lengths = torch.tensor([len(i) for i in self.ids])
        ids = torch.zeros(len(self.ids), int(lengths.max()), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(self.ids):
            ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        return ids.to(device), mask.to(device), lengths - 1

    def _forward(self, model) -> torch.Tensor:
        """(P, V) float32 logits at each probe's last real position, one no-grad forward."""
        E = model.get_input_embeddings().weight
        ids, mask, last = self._batch(E.device)
        keep = torch.unique(last)                                         # positions whose logits are needed
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep.to(E.device)).logits
        col = torch.searchsorted(keep, last).to(logits.device)           # each probe's column in `keep`
        return logits[torch.arange(len(last), device=logits.device), col].float()   # (P, V)

    def _check_step(self, step) -> int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"step must be a non-negative integer (optimizer steps done), got {step!r}")
        if self.history and step <= self.history[-1]["step"]:
            raise ValueError(f"step {step} is not after the last observed step {self.history[-1]['step']}: "
                             "observe each step once, in increasing order")
        return int(step)

    def _row(self, model, probe: Probe, g: int, c: int, ids, z, psi, first: bool) -> dict:
        p = torch.softmax(z.to(torch.float64), dim=-1)
        gap = geometry.born_gap(p, psi, g, c)
        row = {"probe": probe.label, "phi": gap.phi, "S": gap.signal, "D": gap.drag,
               "p_target": float(p[g]), "p_competitor": float(p[c]),
               "rank_target": int((z > z[g]).sum()) + 1, "rank_competitor": int((z > z[c]).sum()) + 1,
               "dz": float(z[g] - z[c]), "loss": float(F.cross_entropy(z[None], torch.tensor([g], device=z.device)))}
        if first:
            g_gc = geometry.pair_overlap(psi, g, c)
            self._g_gc[probe.label] = g_gc
            xi = geometry.localisation_length(geometry.purity(p, psi))
            row.update(G_gc=g_gc, B=geometry.burial_depth(xi, g_gc),
                       r=_blind_r(model, ids[None].to(z.device), g, c) if self.blind else None)
        return row

    def observe(self, model, step: int) -> list[dict]:
        """One row per probe of the model's state after ``step`` updates (SPEC §2), appended to :attr:`history`.

        One batched no-grad forward; the model's train/eval flags are restored module by
        module; gradients and optimizer state are never touched. The first observation also
        has ``G_gc``, ``B`` and, with ``blind``, ``r``. Steps must be non-negative integers,
        strictly increasing. Findings are reported once each (:meth:`_report`).

        Raises
        ------
        UnsupportedModel
            At the first observation of a model the monitor cannot read (:func:`check_model`).
        PhantomStop
            After recording, when a finding of a kind in ``raise_on`` fired.
        """
        step = self._check_step(step)
        if self._checked is not model:
            check_model(model, self._largest_id)
            self._checked = model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            z_all, psi, first = self._forward(model), self._normalized_embedding(model), not self.history
            rows = [{"step": step, **self._row(model, probe, g, c, ids, z, psi, first)}
                    for probe, (g, c), ids, z in zip(self.probes, self.pairs, self.ids, z_all)]
        finally:
            for m, training in modes:
                m.training = training
        self.history.extend(rows)
        for row in rows:
            self._rows[row["probe"]].append(row)
            row["findings"] = self._check(row["probe"])
        raised = [f for f in self.findings if f["observed_at"] == step and f["kind"] in self.raise_on]
        if raised:
            raise PhantomStop(f"phantom: probe {raised[0]['probe']!r}: {raised[0]['message']}")
        return rows

    def close(self, model, step: int) -> list[dict]:
        """Observe the final state (after the last update) unless ``step`` was already observed.

        A loop that observes before each update calls this after the loop, so a T-step run
        gives T + 1 observations, as SPEC §4's ``t = 0..T``. Returns the new rows (or ``[]``).
        """
        if self.history and step == self.history[-1]["step"]:
            return []
        return self.observe(model, step)

    # --- findings (SPEC §5, live) ----------------------------------------------------

    def series(self, probe: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one probe's series over the history."""
        rows = [r for r in self._rows[probe] if r.get(name) is not None]
        return np.array([r["step"] for r in rows]), np.array([r[name] for r in rows], dtype=np.float64)

    def silent_failure_trend(self, steps, loss, p_g, p_c) -> int | None:
        """Index of the observation the judged window starts at, if it shows a silent failure trend; else None.

        The practitioner's form of SPEC §5's silent failure (``transitions.is_silent_failure``,
        exact, over a whole run): over the observations covering the last ``window`` steps
        (from the latest one at or before ``step − window``), ``p_target ≤ p_competitor`` at
        every one, the loss never rises by more than ``tolerance`` (relative) between two
        observations and ends at least ``tolerance`` below where the window began. With
        ``tolerance = 1e-6/L`` and one observation per step it is SPEC's rule on that window.
        """
        if steps[-1] - steps[0] < self.window:
            return None
        start = int(np.searchsorted(steps, steps[-1] - self.window, side="right")) - 1
        w = slice(start, None)
        if not transitions.silent_failure(loss[w], p_g[w], p_c[w], tolerance=self.tolerance * loss[w][:-1]):
            return None
        return start if loss[-1] <= (1.0 - self.tolerance) * loss[start] else None

    def _check(self, probe: str) -> list[str]:
        """Report the findings the probe's series now show; return the kinds new at this observation."""
        before = len(self.findings)
        steps, phi = self.series(probe, "phi")
        _, p_g = self.series(probe, "p_target")
        _, p_c = self.series(probe, "p_competitor")
        _, loss = self.series(probe, "loss")
        born = transitions.born_flip_step(phi)
        if born is not None and born > 0:
            self._report(probe, "born_flip", int(steps[born]),
                         f"Born flip: Φ = b_target − b_competitor turned positive ({phi[born]:.4g}) at step "
                         f"{steps[born]}")
        rank = transitions.rank_flip_step(p_g, p_c)
        if rank is not None and rank > 0:
            self._report(probe, "rank_flip", int(steps[rank]),
                         f"rank flip: p_target {p_g[rank]:.4g} overtook p_competitor {p_c[rank]:.4g} at step "
                         f"{steps[rank]}")
        if transitions.is_jump(phi, self._g_gc[probe]):      # SPEC §5's rule; t* < n − 1: a later step confirms it
            j = transitions.jump(phi)
            self._report(probe, "jump", int(steps[j.t_star + 1]),
                         f"jump: ΔΦ = {phi[j.t_star + 1] - phi[j.t_star]:.4g} between steps {steps[j.t_star]} and "
                         f"{steps[j.t_star + 1]}, J = {j.ratio:.3g} after {j.n_quiescent} quiet observations")
        start = self.silent_failure_trend(steps, loss, p_g, p_c)
        if start is not None:
            self._report(probe, "silent_failure_trend", int(steps[-1]),
                         f"silent failure trend: the target's loss fell {loss[start]:.4g} → {loss[-1]:.4g} over "
                         f"steps {steps[start]}–{steps[-1]} while p_target stayed ≤ p_competitor (now "
                         f"{p_g[-1]:.4g} ≤ {p_c[-1]:.4g}): training lowers the loss without the target winning")
        return [f["kind"] for f in self.findings[before:]]

    def _report(self, probe: str, kind: str, step: int, message: str) -> None:
        """Record a finding once: a log line (INFO), plus a :class:`PhantomFinding` warning at the
        user's call site for bad news (:data:`BAD_NEWS`)."""
        if any(f["probe"] == probe and f["kind"] == kind for f in self.findings):
            return
        bad = kind in BAD_NEWS
        finding = {"step": step, "observed_at": self._rows[probe][-1]["step"], "probe": probe, "kind": kind,
                   "bad": bad, "message": message}
        self.findings.append(finding)
        if kind in self.stop_on and self.stop is None:
            self.stop = finding
        text = f"phantom: probe {probe!r}: {message}"
        log.info(text)
        if bad:
            warnings.warn(text, PhantomFinding, stacklevel=user_stacklevel())

    # --- report ----------------------------------------------------------------------

    def report(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.json`` (probes, history, findings) and ``<path>.png``; return both paths.

        ``path`` may end in ``.json`` or ``.png`` or have no suffix. Both files are written
        atomically (:func:`phantom.files.write_atomic`).
        """
        from .plots import plot_monitor
        json_path, png_path = report_paths(path)
        doc = {"probes": [{"name": p.label, "context": p.context, "target": p.target, "competitor": p.competitor,
                           "g_id": g, "c_id": c} for p, (g, c) in zip(self.probes, self.pairs)],
               "series": SERIES, "every": self.every, "window": self.window, "tolerance": self.tolerance,
               "history": self.history, "findings": self.findings}
        write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
        plot_monitor(self, png_path)
        return json_path, png_path


def _blind_r(model, ids: torch.Tensor, g: int, c: int) -> float | None:
    """``r = ∇_θΦ·sign(−∇_θL)`` over the model's trainable parameters (SPEC §5 A3), None if none."""
    if not any(p.requires_grad for p in model.parameters()):
        return None
    with torch.enable_grad():
        return dynamics.step_zero_r(model, ids, g, c)[0]


def report_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.json, <stem>.png)`` of a report path ending in ``.json``, ``.png`` or nothing."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".png") else path
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".png")


_MOVED = {"PhantomCallback": "callback", "plot": "plots", "BlindConstant": "predict", "blind_constant": "predict",
          "blind_lr": "predict", "NO_K": "predict"}


def __getattr__(name: str):
    """The callback, the plot and predict's names, re-exported lazily from their modules."""
    if name in _MOVED:
        module = importlib.import_module(f".{_MOVED[name]}", __package__)
        return getattr(module, "plot_monitor" if name == "plot" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
