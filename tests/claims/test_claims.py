"""The claim suite (SPEC §6): one parametrised test per (claim × model), after the runs they read.

Items run in this order so that pytest-xdist spreads the costly work first: each context's
adaptive full-FT runs (its saturation bracket and critical LR, SPEC §5 A1–A2), each model's η_c
to 1%, the runs at the operating point (A4), each model's bulk and blind statistics (C10–C13),
then every planned run (costliest first), then the claims, which read the same entries back.
Parametrisation, expected failures and CLAIMS.md come from :mod:`phantom.pytest_plugin`.
"""
import math

import numpy as np

from phantom import critical, search
from phantom.campaign import blind_statistic, bulk, critical_lr_of, operating_lr
from phantom.protocol import CONTEXT_RTOL, CRITICAL_RTOL
from phantom.trajectory import SERIES


def test_context(searched_context, claims):
    """One context's adaptive runs: its saturation grid extended to a bracket (A1), its η_i to 5% (A2)."""
    model, context = searched_context
    camp = claims.campaign(model)
    if camp.plan.saturation:
        sat = search.saturation(camp, context)
        assert sat.estimate is None or sat.estimate.lo <= sat.estimate.hi
    if camp.plan.eta_c:
        state = critical.context_lr(camp, context)
        assert state.width() <= CONTEXT_RTOL or state.lo == 0.0 or math.isinf(state.hi) or not state.probes


def test_critical_lr(searched_model, claims):
    """η_c of one model to 1%: the contexts that decide it searched further (SPEC §5 A2)."""
    result = critical_lr_of(claims.campaign(searched_model))
    if result.converged:
        lo, hi = result.bracket
        assert hi / lo - 1 <= CRITICAL_RTOL * (1 + 1e-9) and result.eta_c == hi


def test_operating(searched_context, claims):
    """The context's full-FT run at η_H = 10 η_sat(model) (SPEC §6 A4), when η_sat is bracketed."""
    model, context = searched_context
    camp = claims.campaign(model)
    lr = operating_lr(camp)
    if lr is not None:
        assert camp.run("full", lr, context)["phi"][0] < 0


def test_statistics(session_model, claims):
    """The model's bulk statistics and, with a bisection, its blind ``q``, computed into the store."""
    camp = claims.campaign(session_model)
    stats = bulk(camp)
    assert 0.0 < stats["g2mean"] <= 1.0 and stats["cls"] in ("A", "B", "unclassified")
    if camp.plan.eta_c:
        blind = blind_statistic(camp)
        assert blind.q is None or math.isfinite(blind.q)


def test_run(planned_run, claims):
    """One planned run, computed into the store; its record is whole and starts contested in Φ."""
    model, mode, lr, context = planned_run
    camp = claims.campaign(model)
    traj = camp.run(mode, lr, context)
    n = len(traj["phi"])
    assert traj.meta["context"] == context and traj.meta["mode"] == mode and traj.meta["lr"] == lr
    recorded = {k: traj[k][~np.isnan(traj[k])] for k in SERIES}
    assert all(np.isfinite(v).all() for v in recorded.values()), "a recorded series is not finite"
    assert all(len(recorded[k]) == n for k in ("loss", "phi", "signal", "drag", "p_g", "p_c", "dz")), \
        "a series every claim reads was not recorded at every step"
    assert not np.isnan(traj["burial"][0]), "B at t = 0 (B_FT) was not recorded"
    if mode == "lora":
        assert len(recorded["embed_equal"]) == n, "C4's embedding check was not made at every step"
    if traj.diverged_at is None and traj.meta["stopped_at"] is None:
        assert n == camp.plan.steps + 1
    else:
        assert n == (traj.diverged_at if traj.diverged_at is not None else traj.meta["stopped_at"] + 1)
    assert traj["phi"][0] < 0, "orientation: every run starts contested in Φ (SPEC §3)"


def test_claim(claim_case, claims, judge):
    """The claim's verdict on its model (or the zoo) is the test's outcome."""
    judge(claims.check(claim_case))
