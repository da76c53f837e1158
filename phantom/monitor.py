"""Watch your own fine-tune: the SPEC §2 order parameter on user probes, live (SPEC §2, §3, §5).

A *probe* is a context and two words: the ``target`` the user trains toward and its
near-synonym ``competitor``. Words resolve to single tokens as the SPEC §3 contexts' words
do (leading space; a word that splits is :class:`phantom.contexts.ContextUnusable`). The
target is ``g`` and the competitor ``c`` as given: ``Φ = b_target − b_competitor`` with no
re-orientation.

:class:`PhantomMonitor` observes a model at a step with one batched no-grad forward over all
probes and the live input embedding (so Ψ moves under full fine-tuning and stays put under
LoRA), records one row per probe and reports the SPEC §5 transitions as they happen.
:class:`PhantomCallback` plugs it into ``transformers.Trainer``; a custom loop calls
``monitor.observe(model, step)``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from . import campaign, contexts, geometry, laws, transitions, zoo
from .files import write_atomic
from .plots import DPI, save_figure
from .protocol import JUMP_RATIO, JUMP_SIZE, LOSS_TOLERANCE, STEPS
from .store import NotStored, RunStore

log = logging.getLogger(__name__)

LIVE = ("phi", "signal", "drag", "p_g", "p_c", "rank_g", "rank_c", "dz", "loss")  # every observation
FIRST = ("g_gc", "burial", "r")                                                  # first observation only
FINDINGS = ("born_flip", "rank_flip", "jump", "silent_failure")


class PhantomFinding(UserWarning):
    """A SPEC §5 transition (or a silent failure in progress) seen on a probe during training."""


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
    raise TypeError(f"a probe is a Probe or a (context, target, competitor[, name]) tuple of strings, got {p!r}")


def step_zero_r(model, ids: torch.Tensor, g: int, c: int) -> float | None:
    """``r = ∇_θΔz · sign(−∇_θL)`` over the model's trainable parameters (SPEC §5 blind predictor).

    ``L`` is the cross-entropy of ``g`` at the last position of ``ids`` (1, n). Gradients come
    from :func:`torch.autograd.grad`, so no ``.grad`` is touched. None if nothing is trainable.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    with torch.enable_grad():
        z = model(ids, logits_to_keep=1).logits[0, -1]
        loss = F.cross_entropy(z[None].float(), torch.tensor([g], device=z.device))
        grad_loss = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grad_dz = torch.autograd.grad(z[g] - z[c], params, allow_unused=True)
    return math.fsum(float((gd.double() * torch.sign(-gl).double()).sum())
                     for gd, gl in zip(grad_dz, grad_loss) if gd is not None and gl is not None)


class PhantomMonitor:
    """Live SPEC §2 read-outs of user probes and their SPEC §5 findings.

    Parameters
    ----------
    tokenizer
        The model's tokenizer (Hugging Face).
    probes : sequence of Probe or (context, target, competitor[, name]) tuples
        Names must be unique.
    every : int
        :class:`PhantomCallback` observes every ``every`` optimizer steps (and at step 0).
    silent_after : int
        A *silent failure in progress* is reported once ``silent_after`` observations show
        the probe's loss non-increasing (``L_{t+1} ≤ L_t + 1e-6``), ``L_last < L_0`` and no
        rank flip (``p_g ≤ p_c`` throughout). Default ``T + 1``: the SPEC §4 window ``t = 0..T``.
    blind : bool
        Compute the blind statistic ``r`` at the first observation (two backward passes per
        probe over the trainable parameters; about 3 training steps of cost per probe).

    Attributes
    ----------
    history : list of dict
        Every row :meth:`observe` returned, in order; ``row["findings"]`` lists the kinds of
        finding first seen at that observation.
    findings : list of dict
        ``{"step", "probe", "kind", "message"}``, each ``(probe, kind)`` at most once.
    """

    def __init__(self, tokenizer, probes, every: int = 1, silent_after: int = STEPS + 1, blind: bool = True):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if isinstance(silent_after, bool) or not isinstance(silent_after, int) or silent_after < 2:
            raise ValueError(f"silent_after must be an integer >= 2 (observations), got {silent_after!r}")
        self.probes = [_as_probe(p) for p in probes]
        if not self.probes:
            raise ValueError("probes is empty: give at least one (context, target, competitor)")
        names = [p.label for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique, got {names}")
        self.tokenizer, self.every, self.silent_after, self.blind = tokenizer, every, silent_after, blind
        self.ids, self.pairs = [], []
        for p in self.probes:
            if not p.context.strip():
                raise ValueError(f"probe {p.label!r} has an empty context")
            g, c = (contexts.token_id(tokenizer, w, p.label) for w in (p.target, p.competitor))
            if g == c:
                raise ValueError(f"probe {p.label!r}: target and competitor are the same token {g}")
            self.pairs.append((g, c))
            self.ids.append(tokenizer(p.context, return_tensors="pt").input_ids[0])   # (n_i,)
        self.history: list[dict] = []
        self.findings: list[dict] = []
        self._rows: dict[str, list[dict]] = {name: [] for name in names}   # history by probe
        self._g_gc: dict[str, float] = {}
        self._psi_key, self._psi = None, None

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

    def observe(self, model, step: int) -> list[dict]:
        """One row per probe of the model's current state (SPEC §2), appended to :attr:`history`.

        One batched no-grad forward; the model's train/eval flags are restored module by
        module; gradients and optimizer state are never touched. The first observation also
        has ``g_gc``, ``burial`` (``B`` of that step) and, with ``blind``, the blind ``r``.
        Findings (SPEC §5) are warned once as :class:`PhantomFinding` and logged.
        """
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            z_all = self._forward(model)
            psi = self._normalized_embedding(model)
            first = not self.history
            rows = []
            for probe, (g, c), ids, z in zip(self.probes, self.pairs, self.ids, z_all):
                p = torch.softmax(z.to(torch.float64), dim=-1)
                gap = geometry.born_gap(p, psi, g, c)
                row = {"step": int(step), "probe": probe.label, "phi": gap.phi, "signal": gap.signal,
                       "drag": gap.drag, "p_g": float(p[g]), "p_c": float(p[c]),
                       "rank_g": int((z > z[g]).sum()) + 1, "rank_c": int((z > z[c]).sum()) + 1,
                       "dz": float(z[g] - z[c]),
                       "loss": float(F.cross_entropy(z[None], torch.tensor([g], device=z.device)))}
                if first:
                    g_gc = geometry.pair_overlap(psi, g, c)
                    self._g_gc[probe.label] = g_gc
                    xi = geometry.localisation_length(geometry.purity(p, psi))
                    row.update(g_gc=g_gc, burial=geometry.burial_depth(xi, g_gc),
                               r=step_zero_r(model, ids[None].to(z.device), g, c) if self.blind else None)
                rows.append(row)
        finally:
            for m, training in modes:
                m.training = training
        self.history.extend(rows)
        for row in rows:
            self._rows[row["probe"]].append(row)
            row["findings"] = self._check(row["probe"])
        return rows

    # --- findings (SPEC §5, live) ----------------------------------------------------

    def series(self, probe: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one probe's series over the history."""
        rows = [r for r in self._rows[probe] if name in r]
        return np.array([r["step"] for r in rows]), np.array([r[name] for r in rows], dtype=np.float64)

    def _check(self, probe: str) -> list[str]:
        """Report the findings the probe's series now show; return the kinds new at this observation."""
        before = len(self.findings)
        steps, phi = self.series(probe, "phi")
        _, p_g = self.series(probe, "p_g")
        _, p_c = self.series(probe, "p_c")
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
        j = transitions.jump(phi)
        size_min = JUMP_SIZE * (1.0 - self._g_gc[probe] ** 2)
        if j.ratio >= JUMP_RATIO and j.size >= size_min and j.t_star < len(phi) - 2:   # a later step confirms it
            self._report(probe, "jump", int(steps[j.t_star + 1]),
                         f"jump: ΔΦ = {phi[j.t_star + 1] - phi[j.t_star]:.4g} between steps {steps[j.t_star]} and "
                         f"{steps[j.t_star + 1]}, J = {j.ratio:.3g} ≥ {JUMP_RATIO:g} after {j.n_quiescent} quiet "
                         f"observations")
        if (len(loss) >= self.silent_after and rank is None and loss[-1] < loss[0]
                and np.all(loss[1:] <= loss[:-1] + LOSS_TOLERANCE)):
            self._report(probe, "silent_failure", int(steps[-1]),
                         f"silent failure in progress: the target's loss fell {loss[0]:.4g} → {loss[-1]:.4g} over "
                         f"{len(loss)} observations (steps {steps[0]}–{steps[-1]}) while p_target "
                         f"{p_g[-1]:.4g} ≤ p_competitor {p_c[-1]:.4g} at every one")
        return [f["kind"] for f in self.findings[before:]]

    def _report(self, probe: str, kind: str, step: int, message: str) -> None:
        if any(f["probe"] == probe and f["kind"] == kind for f in self.findings):
            return
        text = f"phantom: probe {probe!r}: {message}"
        self.findings.append({"step": step, "probe": probe, "kind": kind, "message": message})
        log.warning(text)
        warnings.warn(text, PhantomFinding, stacklevel=4)

    # --- report ----------------------------------------------------------------------

    def report(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<path>.json`` (probes, history, findings) and ``<path>.png``; return both paths.

        ``path`` may end in ``.json`` or ``.png`` or have no suffix. Both files are written
        atomically (:func:`phantom.files.write_atomic`).
        """
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".png") else path
        json_path, png_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".png")
        doc = {"probes": [{"name": p.label, "context": p.context, "target": p.target, "competitor": p.competitor,
                           "g_id": g, "c_id": c} for p, (g, c) in zip(self.probes, self.pairs)],
               "every": self.every, "silent_after": self.silent_after,
               "history": self.history, "findings": self.findings}
        write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
        plot(self, png_path)
        return json_path, png_path


def plot(monitor: PhantomMonitor, path: str | os.PathLike) -> Path:
    """PNG of a monitor's history: per probe, Φ, S, D (top) and p_target, p_competitor (bottom).

    Findings are marked by vertical lines (Born flip dashed, rank flip dotted, jump dash-dot,
    silent failure solid). Drawn on an explicit Agg canvas like :mod:`phantom.plots`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = dict(zip(FINDINGS, (("C3", "--"), ("C4", ":"), ("C5", "-."), ("k", "-"))))
    names = [p.label for p in monitor.probes]
    fig = Figure(figsize=(3.6 * len(names) + 0.6, 5.2), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(names), squeeze=False, sharex="col")
    for col, name in enumerate(names):
        top, bottom = axes[0, col], axes[1, col]
        for series, label, color in (("phi", "Φ", "C0"), ("signal", "S", "C1"), ("drag", "D", "C2")):
            top.plot(*monitor.series(name, series), label=label, color=color, lw=1.6 if series == "phi" else 1.1)
        for series, label, color in (("p_g", "p_target", "C0"), ("p_c", "p_competitor", "C3")):
            bottom.plot(*monitor.series(name, series), label=label, color=color, lw=1.4)
        for f in (f for f in monitor.findings if f["probe"] == name):
            color, ls = styles[f["kind"]]
            for ax in (top, bottom):
                ax.axvline(f["step"], color=color, ls=ls, lw=1.0,
                           label=f"{f['kind'].replace('_', ' ')} ({f['step']})" if ax is top else None)
        top.axhline(0.0, color="0.6", lw=0.6)
        top.set_title(name, fontsize=9)
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    axes[0, 0].set_ylabel("Φ, S, D")
    axes[1, 0].set_ylabel("p")
    fig.tight_layout()
    return save_figure(fig, path)


class PhantomCallback(TrainerCallback):
    """``transformers.TrainerCallback`` running a :class:`PhantomMonitor` inside ``Trainer``.

    Observes at step 0 (``on_train_begin``) and after every ``monitor.every``-th optimizer
    step; each observation asks the Trainer to log, and the rows go into that log entry as
    ``phantom/<probe>/<series>`` (so into ``state.log_history`` and every ``report_to``
    integration that runs after this callback; :meth:`attach` puts it first so all do).
    Writes ``monitor.report`` at ``on_train_end`` to ``path`` (default
    ``<output_dir>/phantom``). Works unchanged with a peft-wrapped model.
    """

    def __init__(self, monitor: PhantomMonitor, path: str | os.PathLike | None = None):
        self.monitor, self.path, self._pending = monitor, path, {}
        self.written: tuple[Path, Path] | None = None

    def attach(self, trainer) -> "PhantomCallback":
        """Insert this callback first in ``trainer``'s list, ahead of the ``report_to`` integrations."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    @staticmethod
    def metrics(rows: list[dict]) -> dict[str, float]:
        """``{"phantom/<probe>/<series>": value}`` of the numeric fields of rows."""
        return {f"phantom/{r['probe']}/{k}": float(r[k]) for r in rows
                for k in LIVE + FIRST if r.get(k) is not None}

    def _observe(self, model, step: int) -> None:
        self._pending.update(self.metrics(self.monitor.observe(model, step)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._observe(model, state.global_step)
        state.log_history.append({**self._pending, "step": state.global_step})
        self._pending = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.monitor.every == 0:
            self._observe(model, state.global_step)
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending:
            return
        if logs is not None:
            logs.update(self._pending)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step:
            last.update(self._pending)
        else:
            state.log_history.append({**self._pending, "step": state.global_step})
        self._pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        self.written = self.monitor.report(self.path or Path(args.output_dir) / "phantom")


# --- predict: a blind critical LR for a probe before training (SPEC §5) ---------------------

NO_K = "no k: no zoo model has η_c and q in the run store"


def _never_load(name: str):
    raise NotStored(f"model {name!r} would have to be loaded")


@dataclass(frozen=True)
class BlindConstant:
    """``k``: geometric mean of ``η_c / q`` over the models measured in the run store (SPEC §5).

    Attributes
    ----------
    k : float or None
        None when no model has both ``η_c`` and ``q`` stored.
    ratios : dict of str to (η_c, q)
        The models ``k`` comes from.
    missing : dict of str to str
        Every other model, with the reason.
    loo : dict of str to float
        Leave-one-out relative error of ``η̂_c`` per model (SPEC §5, C13), with ≥ 2 models.
    """

    k: float | None
    ratios: dict
    missing: dict
    loo: dict


def blind_constant(models, store=None) -> BlindConstant:
    """``k`` from the run store only: nothing is fine-tuned or computed into the store.

    Offline zoo names are identified by their cache manifest; a local directory or hub id is
    loaded once to hash its weights (the key of every entry).

    Each model's ``η_c`` and ``q`` are read under the keys :func:`phantom.campaign.critical_lr_of`
    and :func:`phantom.campaign.blind_statistic` build for the SPEC protocol plan; a model whose
    entries (or whose offline cache entry, which names its weights) are absent is listed in
    ``missing``.
    """
    store = store or RunStore()
    ratios, missing = {}, {}
    for m in models:
        if m in zoo.OFFLINE and not (zoo.cache_root() / "models" / m / zoo.MANIFEST).exists():
            missing[m] = "not measured: never loaded on this machine (no model cache entry)"
            continue
        c = campaign.Campaign(m, campaign.Plan(), store=RunStore(store.root, read_only=True),
                              loader=_never_load)
        try:
            q, eta_c = campaign.blind_statistic(c).q, campaign.critical_lr_of(c).eta_c
        except NotStored as err:
            missing[m] = f"not measured: {err}"
            continue
        if q is None or eta_c is None:
            missing[m] = "no context with r > 0 (no q)" if q is None else "η_c above the full-FT grid"
            continue
        ratios[m] = (eta_c, q)
    k = laws.blind_k(list(ratios), {m: q for m, (_, q) in ratios.items()}, lambda m: ratios[m][0]) \
        if ratios else None
    loo = {}
    if len(ratios) >= 2:
        preds = laws.leave_one_out({m: q for m, (_, q) in ratios.items()}, lambda m: ratios[m][0])
        loo = {p.model: p.rel_error for p in preds}
    return BlindConstant(k, ratios, missing, loo)


def blind_lr(k: float | None, dz0: float, r: float | None, steps: int = STEPS) -> tuple[float | None, str | None]:
    """``(η̂_c, None)`` with ``η̂_c = k · (−Δz_0)/(T·r)`` (SPEC §5), or ``(None, reason)``."""
    if r is None:
        return None, "r was not computed (no trainable parameter)"
    if r <= 0:
        return None, (f"r = {r:.4g} ≤ 0: Adam's first step does not move Δz toward the target, so "
                      f"(−Δz_0)/(T·r) is no learning rate (SPEC §5 excludes such contexts)")
    if dz0 >= 0:
        return None, f"Δz_0 = {dz0:.4g} ≥ 0: the target already leads its competitor in logit"
    if k is None:
        return None, NO_K
    return k * (-dz0) / (steps * r), None
