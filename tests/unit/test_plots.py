"""Unit tests of phantom.plots: every figure is a valid PNG, written atomically.

Synthetic trajectories and fake campaigns only: nothing is loaded or fine-tuned, and the
run store (when one is needed) lives under ``tmp_path``.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from phantom import laws, plots, store, transitions
from phantom.campaign import LORA_REF, Plan
from phantom.laws import ModelLaws
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

    monkeypatch.setattr(store.os, "replace", broken_replace)
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
    """Just what saturation_fits and plot_saturation read; "shame" diverges at the top LR."""

    model, plan, usable = "fake-model", Plan(), list(ETA_SAT)

    def run(self, mode, lr, context, stop=None):
        assert mode == "full" and lr in self.plan.saturation and stop is None
        if context == "shame" and lr == max(self.plan.saturation):
            return run(context, phi=[-1.0, 3.0], lr=lr, diverged_at=2)
        r = 0.8 * -np.expm1(-lr / ETA_SAT[context])
        return run(context, phi=[-1.0, -1.0 + r / 2, -1.0 + r], lr=lr)


def capture_figures(monkeypatch) -> list:
    figures = []
    save = plots._save

    def spy(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return figures


def test_plot_saturation(tmp_path, monkeypatch):
    figures = capture_figures(monkeypatch)
    camp = SatCampaign()
    fits = laws.saturation_fits(camp)
    assert list(fits) == list(ETA_SAT) and fits["shame"].n == 7
    path = tmp_path / "sat.png"
    path.write_bytes(b"stale")
    assert plots.plot_saturation(camp, fits, path) == path
    assert png_size(path) == (700, 500)
    assert_only(tmp_path, "sat.png")
    # measured points: every completed run, never the diverged one (it has no Φ_T)
    (ax,) = figures[0].axes
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert [len(line.get_xdata()) for line in points] == [8, 8, 7]
    assert max(points[2].get_xdata()) < max(Plan().saturation)
    assert max(max(line.get_ydata()) for line in points) < 1.0


@pytest.mark.filterwarnings("ignore:No artists with labels found")
def test_plot_saturation_without_fits(tmp_path):
    path = tmp_path / "sat.png"
    plots.plot_saturation(SatCampaign(), {}, path)
    assert png_size(path) == (700, 500)


# --- plot_prediction ----------------------------------------------------------------------

def row(model, eta_c, eta_hat, q=1e-6):
    return ModelLaws(model=model, g2mean=0.02, shape="gaussian", cls="A", eta_sat=None, h_ft=None, b_ft=0.5,
                     lora_sufficiency=0.6, q=q, eta_c=eta_c, eta_hat=eta_hat,
                     rel_error=None if eta_c is None or eta_hat is None else abs(eta_hat - eta_c) / eta_c)


@pytest.mark.parametrize("rows, n_points", [
    ([row("a", 7e-6, 8e-6), row("b", 2e-5, 1.5e-5)], 2),
    ([row("a", 7e-6, 8e-6), row("b", None, None, q=None), row("c", 2e-5, None), row("d", None, 3e-6)], 1),
    ([row("a", None, None), row("b", None, None, q=None)], 0),
    ([], 0),
], ids=["all", "some-none", "all-none", "empty"])
def test_plot_prediction(tmp_path, monkeypatch, rows, n_points):
    figures = capture_figures(monkeypatch)
    path = tmp_path / "critical_lr.png"
    path.write_bytes(b"stale")
    assert plots.plot_prediction(rows, path) == path
    assert png_size(path) == (450, 450)
    assert_only(tmp_path, "critical_lr.png")
    (ax,) = figures[0].axes
    assert len([line for line in ax.lines if line.get_marker() == "o"]) == n_points


# --- claims_figures -----------------------------------------------------------------------

class FigureCampaign:
    """reference(): "shame" jumps (largest J), "quiet" is linear (smallest J); LoRA on request."""

    model = "tiny-model"

    def __init__(self):
        self.calls = []

    def reference(self):
        self.calls.append(("reference",))
        return [curved_run("longing"), run("shame"), smooth_run("quiet"), curved_run("funny")]

    def run(self, mode, lr, context, stop=None):
        self.calls.append((mode, lr, context, stop))
        return curved_run(context, mode=mode, lr=lr)


def test_claims_figures(tmp_path):
    camp = FigureCampaign()
    outdir = tmp_path / "figures"
    figures = plots.claims_figures(camp, outdir)
    assert len(figures) == 3
    assert all(isinstance(k, str) and k.startswith("tiny-model: ") for k in figures)
    assert list(figures.values()) == [outdir / "full_ft.png", outdir / "lora.png", outdir / "readout.png"]
    sizes = [png_size(p) for p in figures.values()]
    assert sizes == [(840, 340), (840, 340), (420, 340)]
    assert_only(outdir, "full_ft.png", "lora.png", "readout.png")
    # the LoRA pair is the largest-J and the smallest-J reference context, at the LoRA reference LR
    assert camp.calls == [("reference",), ("lora", LORA_REF, "shame", None), ("lora", LORA_REF, "quiet", None)]


def test_claims_figures_overwrite(tmp_path):
    outdir = tmp_path / "figures"
    outdir.mkdir()
    for name in ("full_ft.png", "lora.png", "readout.png"):
        (outdir / name).write_bytes(b"stale")
    figures = plots.claims_figures(FigureCampaign(), outdir)
    for p in figures.values():
        png_size(p)
    assert_only(outdir, "full_ft.png", "lora.png", "readout.png")
    assert os.path.getsize(outdir / "readout.png") > 1000
