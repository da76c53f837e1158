"""Plots of a recorded run (CLI output).

Figures are drawn on an explicit Agg canvas (no pyplot, no display, no global backend
switch), so importing this module never changes the backend of an interactive session.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .trajectory import Trajectory

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
    from .transitions import analyse
    analysis = analysis if analysis is not None else analyse(traj)
    path = Path(path)
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

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.chmod(tmp, 0o644)   # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
