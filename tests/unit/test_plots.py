"""Unit tests of phantom.plots: every figure is a valid PNG, written atomically.

Synthetic trajectories (and a fake campaign for the saturation responses) only: nothing is
loaded or fine-tuned, and the run store (when one is needed) lives under ``tmp_path``.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from phantom import files, laws, plots, search, transitions
from phantom.plans import Plan
from phantom.protocol import ETA_REF, LORA_REF
from phantom.trajectory import SERIES, Trajectory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = 30
N = T + 1


@pytest.fixture(autouse=True)
def private_store(tmp_path_factory, monkeypatch):
    """``$PHANTOM_RUNS`` in a tmp directory of its own (``tmp_path`` holds only the plots)."""
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path_factory.mktemp("runs")))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails unless it starts with the PNG signature and IHDR."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_only(directory: Path, *names: str) -> None:
    """``directory`` holds exactly ``names``: no temporary file was left behind."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def run(context="longing", *, phi=None, lr=2e-5, mode="full", diverged_at=None, g_max=0.3) -> Trajectory:
    """A synthetic run: by default Φ jumps at t = 12 and g overtakes c there."""
    t = np.arange(N, dtype=np.float64)
    if phi is None:
        phi = np.where(t < 12, -0.3 + 1e-3 * t, 0.25 + 1e-3 * t)
    phi = np.asarray(phi, dtype=np.float64)
    n = len(phi)
    t = t[:n]
    series = {name: np.zeros(n) for name in SERIES}
    series.update(phi=phi, signal=phi.copy(), drag=0.01 * np.sin(t), loss=np.linspace(3.0, 1.0, n),
                  p_g=np.clip(0.2 + phi, 0, 1), p_c=np.full(n, 0.3), dz=np.linspace(-1.0, 2.0, n),
                  a_g=np.linspace(0.5, 1.5, n), a_c=np.linspace(0.6, 0.4, n), burial=np.full(n, 0.7))
    meta = {"model": "tiny", "context": context, "mode": mode, "lr": lr, "steps": T, "g_max": g_max,
            "g_word": "g", "c_word": "c", "rank_contested": True, "diverged_at": diverged_at,
            "stopped_at": None}
    return Trajectory(series, meta)


def smooth_run(context="quiet", **kw) -> Trajectory:
    return run(context, phi=np.linspace(-0.3, 0.1, N), **kw)          # J = 1


def curved_run(context, **kw) -> Trajectory:
    return run(context, phi=-0.3 + 1e-3 * np.arange(N) ** 2, **kw)     # 1 < J < 10


# --- plot_trajectory --------------------------------------------------------------------

def test_plot_trajectory_writes_a_png(tmp_path):
    path = tmp_path / "nested" / "dir" / "run.png"
    out = plots.plot_trajectory(run(), path)
    assert out == path and isinstance(out, Path)
    assert png_size(path) == (700, 500)
    assert_only(path.parent, "run.png")


@pytest.mark.parametrize("traj", [run(), smooth_run(), run(phi=np.linspace(-0.3, -0.1, N)),
                                  run(phi=np.linspace(-0.3, 0.2, 9), diverged_at=9),
                                  run(lr="n/a")],
                         ids=["jump", "smooth", "no-flip", "diverged", "lr-not-a-number"])
def test_plot_trajectory_variants_and_given_analysis(tmp_path, traj):
    path = tmp_path / "run.png"
    plots.plot_trajectory(traj, str(path), transitions.analyse(traj))
    assert png_size(path) == (700, 500)
    assert_only(tmp_path, "run.png")


def test_plot_trajectory_overwrites(tmp_path):
    path = tmp_path / "run.png"
    path.write_bytes(b"not a png at all")
    plots.plot_trajectory(run(), path)
    assert png_size(path) == (700, 500)
    first = path.read_bytes()
    plots.plot_trajectory(smooth_run(), path)
    assert png_size(path) == (700, 500) and path.read_bytes() != first
    assert_only(tmp_path, "run.png")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.png"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        plots.plot_trajectory(run(), path)
    assert path.read_bytes() == b"old"
    assert_only(tmp_path, "run.png")


# --- plot_runs --------------------------------------------------------------------------

@pytest.mark.parametrize("runs, series, width", [
    ({"a": run("longing")}, ("dz", "a_g", "a_c"), 420),
    ({"a": run("longing"), "b": smooth_run()}, ("phi", "signal", "drag"), 840),
    ({"a": run("longing"), "b": smooth_run(), "c": curved_run("shame")}, ("phi",), 1260),
])
def test_plot_runs(tmp_path, runs, series, width):
    path = tmp_path / "runs.png"
    path.write_bytes(b"stale")
    assert plots.plot_runs(runs, series, path, "title") == path
    assert png_size(path) == (width, 340)
    assert_only(tmp_path, "runs.png")


# --- plot_saturation ----------------------------------------------------------------------

ETA_SAT = {"longing": 1e-6, "purpose": 5e-6, "shame": 2e-5}


class SatCampaign:
    """Just what search.saturation reads; "shame" diverges at the top LR."""

    model, plan, usable = "fake-model", Plan(), list(ETA_SAT)

    def run(self, mode, lr, context, stop=None):
        assert mode == "full" and stop is None
        if context == "shame" and lr == max(self.plan.saturation):
            return run(context, phi=[-1.0, 3.0], lr=lr, diverged_at=2)
        r = 0.8 * -np.expm1(-lr / ETA_SAT[context])
        return run(context, phi=[-1.0, -1.0 + r / 2, -1.0 + r], lr=lr)


def capture_figures(monkeypatch) -> list:
    figures = []
    save = plots.save_figure

    def spy(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    return figures


def saturations():
    camp = SatCampaign()
    return {c: search.saturation(camp, c) for c in camp.usable}


def test_plot_saturation(tmp_path, monkeypatch):
    """One panel per fitted context: the measured points, the fit, the LRs measured and η_sat (A1)."""
    figures = capture_figures(monkeypatch)
    sats = saturations()
    # "shame" diverged at 5e-5, so A1 measured above its η_sat (2e-5) at the next 1–2–5 LR instead
    assert sats["shame"].added == (1e-4,) and 5e-5 not in sats["shame"].etas and sats["longing"].added == ()
    path = tmp_path / "sat.png"
    path.write_bytes(b"stale")
    assert plots.plot_saturation("fake-model", sats, path) == path
    assert_only(tmp_path, "sat.png")
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert len(axes) == len(sats)
    for ax, (context, sat) in zip(axes, sats.items()):
        (points,) = [line for line in ax.lines if line.get_marker() == "o"]
        assert list(points.get_xdata()) == list(sat.etas) and list(points.get_ydata()) == list(sat.responses)
        assert ax.get_title().startswith(f"{context}: " + sat.estimate.text("η_sat", ".2g"))
        assert len(ax.patches) == 1                                  # the measured LR range


def test_plot_saturation_marks_a_bound_with_an_arrow(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    sat = saturations()["longing"]
    bound = dataclasses.replace(sat, estimate=laws.Estimate(0.0, min(sat.etas)))
    plots.plot_saturation("fake-model", {"longing": bound}, tmp_path / "sat.png")
    ax = figures[0].axes[0]
    assert "(bound)" in ax.get_title() and "η_sat < " in ax.get_title()
    assert len(ax.texts) == 1 and not [line for line in ax.lines if list(line.get_xdata()) == [sat.fit.eta_sat] * 2]


def test_plot_saturation_without_fits(tmp_path):
    path = tmp_path / "sat.png"
    plots.plot_saturation("fake-model", {}, path)
    assert path.exists()


# --- plot_context_prediction ------------------------------------------------------------

@pytest.mark.parametrize("points, n_models", [
    ({"a": [("longing", 1e-6, 2e-6), ("purpose", 3e-6, 1e-6)], "b": [("shame", 1e-7, 1e-7)]}, 2),
    ({"a": []}, 0),
    ({}, 0),
], ids=["two-models", "no-context", "empty"])
def test_plot_context_prediction(tmp_path, monkeypatch, points, n_models):
    """η̂_i against η_i per model (log-log), with the y = x line and each model's η_c (SPEC §5 A3)."""
    figures = capture_figures(monkeypatch)
    path = tmp_path / "critical_lr.png"
    assert plots.plot_context_prediction(points, {"a": 2e-6, "b": None}, path) == path
    assert_only(tmp_path, "critical_lr.png")
    (ax,) = figures[0].axes
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(dots) == n_models
    for line, pts in zip(dots, [p for p in points.values() if p]):
        assert list(line.get_xdata()) == [x for _, x, _ in pts] and list(line.get_ydata()) == [y for _, _, y in pts]
    assert (ax.get_xscale() == ax.get_yscale() == "log") == bool(n_models)
    assert any(line.get_linestyle() == "--" for line in ax.lines) == bool(any(points.values()))
    assert [list(line.get_xdata()) for line in ax.lines if line.get_linestyle() == ":"] == \
        ([[2e-6, 2e-6]] if points.get("a") else [])


# --- claims_figures -----------------------------------------------------------------------

# "shame" jumps (largest J), "quiet" is linear (smallest J); LoRA runs are smooth, in another order.
REFERENCE = [curved_run("longing"), run("shame"), smooth_run("quiet"), curved_run("funny")]
LORA_REFERENCE = [smooth_run(c, mode="lora", lr=LORA_REF) for c in ("funny", "quiet", "longing", "shame")]


def test_claims_figures(tmp_path, monkeypatch):
    figures_drawn = capture_figures(monkeypatch)
    outdir = tmp_path / "figures"
    figures = plots.claims_figures("tiny-model", REFERENCE, LORA_REFERENCE, outdir)
    assert len(figures) == 3
    assert all(isinstance(k, str) and k.startswith("tiny-model: ") for k in figures)
    assert list(figures.values()) == [outdir / "full_ft.png", outdir / "lora.png", outdir / "readout.png"]
    sizes = [png_size(p) for p in figures.values()]
    assert sizes == [(840, 340), (840, 340), (420, 340)]
    assert_only(outdir, "full_ft.png", "lora.png", "readout.png")
    full, lora, readout = figures_drawn
    assert [ax.get_title().split()[0] for ax in full.axes] == ["shame", "quiet"]
    assert [ax.get_title().split()[0] for ax in readout.axes] == ["shame"]
    # the LoRA pair is the largest-J and the smallest-J reference context, from the LoRA runs
    assert [ax.get_title().split()[0] for ax in lora.axes] == ["shame", "quiet"]
    by_context = {r.meta["context"]: r for r in LORA_REFERENCE}
    for ax in lora.axes:
        (phi,) = [line for line in ax.lines if line.get_label() == "phi"]
        assert list(phi.get_ydata()) == list(by_context[ax.get_title().split()[0]]["phi"])
    assert f"lr {ETA_REF:g}" in full.get_suptitle() and f"lr {LORA_REF:g}" in lora.get_suptitle()


def test_claims_figures_overwrite(tmp_path):
    outdir = tmp_path / "figures"
    outdir.mkdir()
    for name in ("full_ft.png", "lora.png", "readout.png"):
        (outdir / name).write_bytes(b"stale")
    figures = plots.claims_figures("tiny-model", REFERENCE, LORA_REFERENCE, outdir)
    for p in figures.values():
        png_size(p)
    assert_only(outdir, "full_ft.png", "lora.png", "readout.png")
    assert os.path.getsize(outdir / "readout.png") > 1000


class FakeMonitor:
    """What plot_monitor reads of a PhantomMonitor: probes, series, findings, window."""

    window = 30

    def __init__(self):
        from phantom.monitor import Probe
        self.probes = [Probe("c", "a", "b", "flips"), Probe("c", "d", "e", "silent")]
        t = np.arange(N, dtype=float)
        self._series = {("flips", "phi"): t / T - 0.5, ("silent", "phi"): -0.05 - t / 1000,
                        ("flips", "S"): t / T - 0.5, ("silent", "S"): -0.05 - t / 1000,
                        ("flips", "D"): 1e-3 + 0 * t, ("silent", "D"): 1e-3 + 0 * t,
                        ("flips", "p_target"): t / T, ("silent", "p_target"): 0.01 + 0 * t,
                        ("flips", "p_competitor"): 1 - t / T, ("silent", "p_competitor"): 0.2 + t / 100}
        self.findings = [{"probe": "flips", "kind": "born_flip", "step": 15},
                         {"probe": "silent", "kind": "silent_failure_trend", "step": T}]

    def series(self, probe, name):
        return np.arange(N), self._series[(probe, name)]


def test_plot_monitor_lines_named_as_logged_and_findings_off_the_frame(tmp_path, monkeypatch):
    """One column per probe, rows phi / S, D / p with the log names; a finding at the last step is
    drawn inside the padded x-range, with a labelled marker in the legend."""
    figures = capture_figures(monkeypatch)
    path = plots.plot_monitor(FakeMonitor(), tmp_path / "m.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and png_size(path)[0] > 600
    (fig,) = figures
    axes = np.array(fig.axes).reshape(3, 2)
    labels = [[ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")] for ax in axes[:, 0]]
    assert labels == [["phi (Φ = S + D)", "Born flip (step 15)"], ["S", "D"], ["p_target", "p_competitor"]]
    for ax in axes[:, 1]:
        lo, hi = ax.get_xlim()
        assert lo < 0 and hi > T + 0.5                      # the step-30 finding is not on the frame
    assert "silent failure trend (step 30)" in [line.get_label() for line in axes[0, 1].get_lines()]
    assert [len(ax.patches) for ax in axes.flat] == [0, 1] * 3   # the trend's judged window is shaded, and only it
