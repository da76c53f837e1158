"""Plots: one recorded run (CLI), the representative runs of CLAIMS.md, the laws.

Figures are drawn on an explicit Agg canvas (no pyplot, no display, no global backend
switch), so importing this module never changes the backend of an interactive session.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import write_atomic
from .protocol import ETA_REF, LORA_REF
from .trajectory import Trajectory
from .transitions import analyse, born_flip_step, jump, jumps

FIGSIZE, DPI = (7.0, 5.0), 100


def _title(traj: Trajectory, analysis) -> str:
    m = traj.meta
    lr = m.get("lr")
    head = f"{m.get('model', '?')} · {m.get('context', '?')} · {m.get('mode', '?')} · lr={lr:g}" \
        if isinstance(lr, (int, float)) else f"{m.get('model', '?')} · {m.get('context', '?')}"
    tail = f"J = {analysis.jump.ratio:.3g}" + (" (jumps)" if analysis.jumps else "")
    if traj.diverged_at is not None:
        tail += f", diverged at t = {traj.diverged_at}"
    return f"{head}\n{tail}"


def plot_trajectory(traj: Trajectory, path: str | os.PathLike, analysis=None) -> Path:
    """Write a two-panel PNG of a run to ``path`` (atomically) and return the path.

    Top panel: Born gap Φ, signal S and drag D against t; bottom panel: the logit gap
    Δz = z_g − z_c. A dashed vertical line marks the Born flip step, a dotted one the
    rank flip step (when they happen).

    Parameters
    ----------
    traj : Trajectory
    path : path-like
        Destination PNG; written to a temporary file in the same directory, then renamed.
    analysis : phantom.transitions.Analysis, optional
        Computed from ``traj`` if omitted.
    """
    analysis = analysis if analysis is not None else analyse(traj)
    t = range(len(traj["phi"]))

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2)})
    top.plot(t, traj["phi"], label="Φ (Born gap)", color="C0", lw=1.8)
    top.plot(t, traj["signal"], label="S (signal)", color="C1", lw=1.2)
    top.plot(t, traj["drag"], label="D (drag)", color="C2", lw=1.2)
    top.axhline(0.0, color="0.6", lw=0.6)
    bottom.plot(t, traj["dz"], label="Δz = z_g − z_c", color="C0", lw=1.5)
    bottom.axhline(0.0, color="0.6", lw=0.6)
    for ax in (top, bottom):
        if analysis.born_flip is not None:
            ax.axvline(analysis.born_flip, color="C3", ls="--", lw=1.0,
                       label=f"Born flip (t={analysis.born_flip})" if ax is top else None)
        if analysis.rank_flip is not None:
            ax.axvline(analysis.rank_flip, color="C4", ls=":", lw=1.4,
                       label=f"rank flip (t={analysis.rank_flip})" if ax is top else None)
        ax.grid(alpha=0.3)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("Φ, S, D")
    bottom.set_ylabel("Δz")
    bottom.set_xlabel("step t")
    top.legend(fontsize=8, loc="best")
    bottom.legend(fontsize=8, loc="best")
    top.set_title(_title(traj, analysis), fontsize=10)
    fig.tight_layout()

    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file, then rename)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path


def _flip_lines(ax, traj: Trajectory) -> None:
    flip = born_flip_step(traj["phi"])
    if flip is not None:
        ax.axvline(flip, color="C3", ls="--", lw=1.0, label=f"Born flip (t={flip})")


def plot_runs(runs: dict[str, Trajectory], series: tuple[str, ...], path: str | os.PathLike,
              title: str) -> Path:
    """One panel per run (label → trajectory), each with the given series against t."""
    fig = Figure(figsize=(4.2 * len(runs), 3.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, (label, traj) in zip(axes, runs.items()):
        for name in series:
            ax.plot(range(len(traj[name])), traj[name], label=name, lw=1.4)
        _flip_lines(ax, traj)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def claims_figures(model: str, reference: list[Trajectory], lora_reference: list[Trajectory],
                   outdir: str | os.PathLike) -> dict[str, Path]:
    """The representative runs linked from CLAIMS.md, from one model's recorded runs.

    The η_ref context with the largest jump ratio J (the jumping one, if any) and the one
    with the smallest: their full-FT runs, the same pair under LoRA, and the readout series
    (Δz, a_g, a_c) of the first, whose smoothness C6 tests.

    Parameters
    ----------
    model : str
    reference, lora_reference : list of Trajectory
        The model's full-FT runs at η_ref and LoRA runs at the LoRA reference LR.
    outdir : path
    """
    outdir = Path(outdir)
    ref = sorted(reference, key=lambda r: jump(r["phi"]).ratio)
    hi, lo = ref[-1], ref[0]
    lora_by_context = {r.meta["context"]: r for r in lora_reference}

    def label(r):
        a = jump(r["phi"])
        return f"{r.meta['context']} (G_max {r.g_max:.2f}, J {a.ratio:.3g}{', jumps' if jumps(r) else ''})"

    lora = {label(r): r for r in (lora_by_context[t.meta["context"]] for t in (hi, lo))}
    return {
        f"{model}: full FT at η_ref, largest vs smallest J": plot_runs(
            {label(hi): hi, label(lo): lo}, ("phi", "signal", "drag"), outdir / "full_ft.png",
            f"{model} full fine-tuning, lr {ETA_REF:g}"),
        f"{model}: the same pair under LoRA": plot_runs(
            lora, ("phi", "signal", "drag"), outdir / "lora.png", f"{model} LoRA, lr {LORA_REF:g}"),
        f"{model}: readout series of the largest-J run (C6)": plot_runs(
            {label(hi): hi}, ("dz", "a_g", "a_c"), outdir / "readout.png",
            f"{model} readout through the flip (full FT, lr {ETA_REF:g})"),
    }


def plot_saturation(model: str, saturations: dict, path: str | os.PathLike) -> Path:
    """Per context, measured ``R(η) = Φ_T − Φ_0``, its fit and ``η_sat`` (SPEC §5 A1).

    ``saturations`` maps a context to its :class:`phantom.search.Saturation`. Each panel
    shades the LRs measured; a bracketed ``η_sat`` is a solid line, a bound an arrow from
    the measured LR it was bounded by, pointing where it lies.
    """
    fitted = {c: s for c, s in saturations.items() if s.fit is not None}
    cols = 5
    rows = max(1, -(-len(fitted) // cols))
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows + 0.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, squeeze=False)).ravel()
    for ax, (context, sat) in zip(axes, fitted.items()):
        etas, fit, est = np.asarray(sat.etas), sat.fit, sat.estimate
        grid = np.geomspace(etas.min() / 3, etas.max() * 3, 200)
        ax.axvspan(etas.min(), etas.max(), color="0.93", lw=0)
        ax.plot(grid, fit.r_inf * -np.expm1(-grid / fit.eta_sat), color="C0", lw=1.2)
        ax.plot(etas, sat.responses, "o", color="C1", ms=3.5, zorder=3)
        if est.value is not None:
            ax.axvline(est.value, color="C2", lw=1.2)
            text = f"η_sat = {est.value:.2g}"
        else:
            edge = est.hi if est.lo == 0.0 else est.lo
            ax.annotate("", xy=(edge / 4 if est.lo == 0.0 else edge * 4, 0.5), xytext=(edge, 0.5),
                        xycoords=("data", "axes fraction"), arrowprops={"arrowstyle": "->", "color": "C3", "lw": 1.5})
            text = est.text("η_sat", ".2g") + " (bound)"
        ax.set_title(f"{context}: {text}\nrms/R∞ {fit.rel_residual:.1%}", fontsize=8)
        ax.set_xscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(fitted):]:
        ax.set_visible(False)
    fig.suptitle(f"{model}: saturation R(η) = Φ_T − Φ_0 per context (grey: LRs measured; dots: runs; "
                 "line: fit)", fontsize=10)
    fig.supxlabel("learning rate η (full FT)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_context_prediction(points: dict, eta_c: dict, path: str | os.PathLike) -> Path:
    """Blind per-context prediction ``η̂_i = k q_i`` against the measured ``η_i`` (SPEC §5 A3).

    ``points`` maps a model to ``[(context, η_i, η̂_i)]`` with ``k`` from the other models;
    ``eta_c`` a model to its measured η_c (a dotted vertical line).
    """
    fig = Figure(figsize=(5.5, 5.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    every = [v for pts in points.values() for _, x, y in pts for v in (x, y)]
    for i, (model, pts) in enumerate(points.items()):
        if not pts:
            continue
        ax.plot([x for _, x, _ in pts], [y for _, _, y in pts], "o", color=f"C{i}", ms=5, label=model)
        if eta_c.get(model):
            ax.axvline(eta_c[model], color=f"C{i}", lw=1, ls=":")
    if every:
        lo, hi = min(every) / 2, max(every) * 2
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--", label="η̂_i = η_i")
        ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("measured η_i (dotted: the model's η_c)")
    ax.set_ylabel("blind prediction η̂_i = k q_i (k from the other models)")
    ax.set_title("critical LR per context, leave-one-out", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


FINDING_STYLE = {   # kind → (colour, line style, short label); bad news in red
    "born_flip": ("tab:green", "--", "Born flip"), "rank_flip": ("tab:blue", ":", "rank flip"),
    "jump": ("tab:purple", "-.", "jump"), "silent_failure_trend": ("tab:red", "-", "silent failure trend"),
}


def _finding_marks(axes, findings: list[dict], window: int) -> None:
    """A vertical line per finding on every panel, a labelled triangle above the top panel, and the
    judged window shaded for a silent failure trend."""
    top = axes[0]
    for f in findings:
        color, ls, label = FINDING_STYLE[f["kind"]]
        for ax in axes:
            ax.axvline(f["step"], color=color, ls=ls, lw=1.6, zorder=4)
            if f["kind"] == "silent_failure_trend":
                ax.axvspan(f["step"] - window, f["step"], color=color, alpha=0.08, zorder=0)
        top.plot([f["step"]], [1.0], marker="v", ms=9, color=color, transform=top.get_xaxis_transform(),
                 clip_on=False, zorder=5, label=f"{label} (step {f['step']})")


def plot_monitor(monitor, path: str | os.PathLike) -> Path:
    """PNG of a :class:`phantom.monitor.PhantomMonitor`'s history, one column per probe.

    Rows: ``phi`` (Φ) with its zero line; its parts ``S`` and ``D``; ``p_target`` and
    ``p_competitor``. Series carry the names of the monitor's rows and logs. Findings are
    vertical lines on every row and triangles above the top one (colours: :data:`FINDING_STYLE`);
    the x-range is padded so a finding at the last step stays off the frame.
    """
    names = [p.label for p in monitor.probes]
    fig = Figure(figsize=(4.2 * len(names) + 0.6, 7.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(names), squeeze=False, sharex="col")
    for col, name in enumerate(names):
        phi_ax, parts_ax, p_ax = axes[:, col]
        steps, phi = monitor.series(name, "phi")
        phi_ax.plot(steps, phi, color="k", lw=2.0, marker="o", ms=3, label="phi (Φ = S + D)")
        phi_ax.axhline(0.0, color="0.5", lw=0.8)
        parts_ax.plot(*monitor.series(name, "S"), color="tab:orange", lw=1.6, marker="s", ms=3, label="S")
        parts_ax.plot(*monitor.series(name, "D"), color="tab:cyan", lw=1.6, ls="--", marker="^", ms=3, label="D")
        parts_ax.axhline(0.0, color="0.5", lw=0.8)
        p_ax.plot(*monitor.series(name, "p_target"), color="tab:green", lw=1.6, marker="o", ms=3, label="p_target")
        p_ax.plot(*monitor.series(name, "p_competitor"), color="tab:red", lw=1.6, ls="--", marker="x", ms=4,
                  label="p_competitor")
        _finding_marks(axes[:, col], [f for f in monitor.findings if f["probe"] == name], monitor.window)
        if steps.size:                                   # after the marks: the window's span must not widen it
            pad = max(0.5, 0.04 * float(steps.max() - steps.min()))
            for ax in axes[:, col]:
                ax.set_xlim(steps.min() - pad, steps.max() + pad)
        phi_ax.set_title(name, fontsize=10, pad=14)
        p_ax.set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    for ax, label in zip(axes[:, 0], ("phi", "S, D", "p")):
        ax.set_ylabel(label)
    fig.tight_layout()
    return save_figure(fig, path)
