"""Unit tests of the per-model laws of phantom.campaign, measured through a campaign (SPEC §2, §5).

Every law except :func:`phantom.campaign.bulk` is fed by a fake campaign (the duck-typed
interface of :class:`phantom.campaign.Campaign`: ``model``, ``plan``, ``store``, ``loader``,
``usable``, ``orientations``, ``run``, ``runs``, ``reference``, ``lora_reference``) that
serves hand-built :class:`Trajectory` objects, so each law is checked against a value
computed by hand from the synthetic data. Nothing is fine-tuned; the run store always lives
under ``tmp_path`` (and ``$PHANTOM_RUNS`` points there too). ``bulk`` runs on a tiny local
Llama through a real Campaign.
"""
from __future__ import annotations

import math
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_models
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import campaign, contexts, dynamics, geometry, laws, runs, store, zoo
from phantom.campaign import Campaign, ModelLaws, Plan
from phantom.protocol import ETA_REF, EXTENDED_GRID, FULL_GRID, LORA_REF
from phantom.trajectory import SERIES, Trajectory

GRID = tuple(sorted(EXTENDED_GRID + FULL_GRID))   # the full-FT LRs that bracket η_c

T = 30
CONTEXTS = [c.id for c in contexts.CONTEXTS]
SAT_GRID = Plan().saturation                                   # 2e-7 … 5e-5, 8 LRs
assert len(CONTEXTS) == 10 and len(SAT_GRID) == 8


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    """``$PHANTOM_RUNS`` in tmp: the real run store is never touched."""
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "default-runs"))


@pytest.fixture
def fake_weights(monkeypatch):
    """Fake models have no weights: their hash is a function of the name."""
    monkeypatch.setattr(runs, "weights_sha256", lambda model: f"sha256-of-{model}")


# --- synthetic runs and a fake campaign ------------------------------------------------

def traj(phi, *, context, lr, mode="full", stop="saturated", burial0=0.5, diverged_at=None) -> Trajectory:
    """A run with the given Φ series; burial starts at ``burial0`` (later steps differ)."""
    phi = np.asarray(phi, dtype=np.float64)
    n = len(phi)
    series = {name: np.zeros(n) for name in SERIES}
    series["phi"] = phi
    series["burial"] = burial0 + 10.0 * np.arange(n)                # only step 0 is B
    meta = {"model": "fake", "context": context, "mode": mode, "lr": lr, "steps": T, "stop": stop,
            "g_max": 0.5, "rank_contested": True, "diverged_at": diverged_at, "stopped_at": None}
    return Trajectory(series, meta)


def pair(context: str, swap: bool = False) -> contexts.Pair:
    g, c = contexts.get(context).pair
    if swap:
        g, c = c, g
    return contexts.Pair(g_id=1, c_id=2, g_word=g, c_word=c, p_g0=0.1, p_c0=0.2)


def refuse_load(name):
    raise AssertionError(f"the model must not be loaded (asked for {name!r})")


class FakeCampaign:
    """Campaign look-alike serving ``make(mode, lr, context, stop)``; records every run asked."""

    def __init__(self, root, make, *, model="fake-model", plan=Plan(), usable=CONTEXTS, loader=refuse_load):
        self.model, self.plan, self.loader, self.device = model, plan, loader, "cpu"
        self.store = store.RunStore(root)
        self.usable = list(usable)
        self.orientations = {c: pair(c) for c in self.usable}
        self.make = make
        self.calls: list[tuple] = []
        self.held: dict[tuple, Trajectory] = {}    # (mode, lr, context) → a run "the store holds"

    def stored(self, mode, lr, context):
        return self.held.get((mode, lr, context))

    def run(self, mode, lr, context, stop=None):
        assert context in self.usable
        self.calls.append((mode, lr, context, stop))
        return self.make(mode, lr, context, stop)

    def runs(self, mode, lr):
        return [self.run(mode, lr, c) for c in self.usable]

    def reference(self):
        return self.runs("full", ETA_REF)

    def lora_reference(self):
        return self.runs("lora", LORA_REF)


def never_run(mode, lr, context, stop):
    raise AssertionError(f"no run may be requested here, got {(mode, lr, context, stop)}")


# A synthetic "world": per context a saturating full-FT response, a Born-flip threshold,
# a step-0 burial depth and a LoRA verdict. Φ_0 = −2 keeps Φ negative whatever the
# response, and a flip is a positive Φ at t = 1 (independent of Φ_T − Φ_0).
ETA_SAT = dict(zip(CONTEXTS, np.geomspace(4e-7, 3e-5, 10)))
R_INF = dict(zip(CONTEXTS, np.linspace(0.2, 1.1, 10)))
BURIAL0 = dict(zip(CONTEXTS, [0.9, 0.1, 0.5, 0.3, 0.7, 1.3, 0.2, 2.0, 0.4, 0.6]))   # median 0.55
THETA_FACTORS = dict(zip(CONTEXTS, [0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0, 100.0]))
PHI0 = -2.0


def response(context, lr, scale=1.0):
    return R_INF[context] * -math.expm1(-lr / (ETA_SAT[context] * scale))


class World:
    """``make`` of a fake campaign: flips iff lr ≥ θ_ctx = θ* · factor (so ≥ half iff lr ≥ θ*)."""

    def __init__(self, theta_star=7.3e-6, sat_scale=1.0, lora_flips=3, diverged=()):
        self.theta = {c: theta_star * f for c, f in THETA_FACTORS.items()}
        self.sat_scale, self.lora_flips, self.diverged = sat_scale, lora_flips, set(diverged)

    def __call__(self, mode, lr, context, stop):
        i = CONTEXTS.index(context)
        if mode == "lora":
            return traj([-0.2, 0.1 if i < self.lora_flips else -0.1, -0.05], context=context, lr=lr,
                        mode=mode, stop=stop)
        if (context, lr) in self.diverged:      # garbage Φ that would wreck any fit it entered
            return traj([PHI0, 7.0], context=context, lr=lr, stop=stop, diverged_at=2)
        r = response(context, lr, self.sat_scale)
        mid = 0.1 if lr >= self.theta[context] else PHI0 + r / 2
        return traj([PHI0, mid, PHI0 + r], context=context, lr=lr, stop=stop, burial0=BURIAL0[context])


# --- saturation -------------------------------------------------------------------------

SAT_DIVERGED = ({(CONTEXTS[0], 5e-5)}                                  # one diverged: 7 points
                | {(CONTEXTS[1], lr) for lr in SAT_GRID[2:]}           # 2 completed: no fit
                | {(CONTEXTS[2], lr) for lr in SAT_GRID[3:]})          # exactly 3 completed: a fit


def test_saturation_fits_recover_eta_sat(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED))
    fits = campaign.saturation_fits(camp)
    assert list(fits) == [c for c in CONTEXTS if c != CONTEXTS[1]]
    for context, fit in fits.items():
        assert fit.eta_sat == pytest.approx(ETA_SAT[context], rel=1e-4), context
        assert fit.r_inf == pytest.approx(R_INF[context], rel=1e-4), context
        assert fit.residual < 1e-6
    assert fits[CONTEXTS[0]].n == 7 and fits[CONTEXTS[2]].n == 3
    assert all(fits[c].n == 8 for c in CONTEXTS[3:])
    # exactly the saturation grid, full FT, with the plan's stop policy, for every usable context
    assert sorted(camp.calls) == sorted(("full", lr, c, None) for c in CONTEXTS for lr in SAT_GRID)


def test_saturation_responses_leave_out_diverged_runs(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED))
    responses = campaign.saturation_responses(camp)
    assert list(responses) == CONTEXTS                                  # every usable context, fitted or not
    for context, (etas, resp) in responses.items():
        expected = [lr for lr in SAT_GRID if (context, lr) not in SAT_DIVERGED]
        assert etas == expected, context
        assert resp == pytest.approx([response(context, lr) for lr in expected], rel=1e-12, abs=1e-15)
    assert len(responses[CONTEXTS[1]][0]) == 2 and len(responses[CONTEXTS[2]][0]) == 3
    assert sorted(camp.calls) == sorted(("full", lr, c, None) for c in CONTEXTS for lr in SAT_GRID)


def test_saturation_fits_of_given_responses_request_no_run(tmp_path):
    responses = campaign.saturation_responses(FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED)))
    idle = FakeCampaign(tmp_path / "runs", never_run)
    fits = campaign.saturation_fits(idle, responses)
    assert fits == campaign.saturation_fits(FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED)))
    assert CONTEXTS[1] not in fits and idle.calls == []
    # only the responses are fitted: one context, three points of an exact curve
    etas = [1e-6, 3e-6, 1e-5]
    (fit,) = campaign.saturation_fits(idle, {"x": (etas, [0.7 * -math.expm1(-e / 2e-6) for e in etas])}).values()
    assert fit.eta_sat == pytest.approx(2e-6, rel=1e-4) and fit.r_inf == pytest.approx(0.7, rel=1e-4)


def test_saturation_fits_use_the_plan_grid_and_usable_contexts(tmp_path):
    plan = Plan(sweep=(1e-6, 1e-5, 5e-5), extended=(1e-7,))
    usable = CONTEXTS[3:7]
    camp = FakeCampaign(tmp_path / "runs", World(), plan=plan, usable=usable)
    fits = campaign.saturation_fits(camp)
    assert list(fits) == usable
    assert sorted(camp.calls) == sorted(("full", lr, c, None) for c in usable for lr in (1e-7, 1e-6, 1e-5, 5e-5))
    for context, fit in fits.items():
        assert fit.n == 4 and fit.eta_sat == pytest.approx(ETA_SAT[context], rel=1e-4)


def test_reduced_field_of(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED))
    eta_sat, h = campaign.reduced_field_of(camp)
    fitted = sorted(ETA_SAT[c] for c in CONTEXTS if c != CONTEXTS[1])   # 9 contexts: the 5th
    assert eta_sat == pytest.approx(fitted[4], rel=1e-4)
    assert h == pytest.approx(2e-5 / fitted[4], rel=1e-4)
    assert h == pytest.approx(ETA_REF / eta_sat, rel=1e-12)


def test_reduced_field_of_even_count_takes_the_middle_mean(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World())
    eta_sat, h = campaign.reduced_field_of(camp)
    values = sorted(ETA_SAT.values())
    assert eta_sat == pytest.approx((values[4] + values[5]) / 2, rel=1e-4)
    assert h == pytest.approx(2e-5 / eta_sat, rel=1e-12)


def test_reduced_field_of_without_any_fit(tmp_path):
    diverged = {(c, lr) for c in CONTEXTS for lr in SAT_GRID[2:]}      # 2 completed points each
    camp = FakeCampaign(tmp_path / "runs", World(diverged=diverged))
    assert campaign.saturation_fits(camp) == {}
    assert campaign.reduced_field_of(camp) == (None, None)


# --- LoRA sufficiency and burial ----------------------------------------------------------

def lora_world(mode, lr, context, stop):
    assert mode == "lora" and lr == LORA_REF
    phi = {"longing": [-0.2, -0.1, 0.05],          # flips at the last step
           "purpose": [0.1, 0.2, 0.3],             # already Φ > 0 at t = 0
           "shame": [-0.2, 0.1, -0.05],            # flips, then falls back: still a flip
           "tired": [-0.2, 0.3],                   # positive Φ but diverged: no flip
           "awful": [-0.2, 0.0, 0.0]}.get(context, [-0.3, -0.2, -0.1])   # Φ = 0 is no flip
    return traj(phi, context=context, lr=lr, mode=mode, stop=stop,
                diverged_at=2 if context == "tired" else None)


def test_lora_sufficiency(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", lora_world)
    assert campaign.lora_sufficiency(camp) == pytest.approx(3 / 10)
    assert camp.calls == [("lora", LORA_REF, c, None) for c in CONTEXTS]
    sub = FakeCampaign(tmp_path / "runs", lora_world, usable=["longing", "tired", "funny", "quiet"])
    assert campaign.lora_sufficiency(sub) == pytest.approx(1 / 4)


def test_burial_ft_is_the_median_step0_burial_of_the_reference_runs(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World())
    assert campaign.burial_ft(camp) == pytest.approx(0.55, rel=1e-12)    # (0.5 + 0.6) / 2
    assert camp.calls == [("full", ETA_REF, c, None) for c in CONTEXTS]
    odd = FakeCampaign(tmp_path / "runs", World(), usable=CONTEXTS[:5])   # 0.9 0.1 0.5 0.3 0.7
    assert campaign.burial_ft(odd) == pytest.approx(0.5, rel=1e-12)


# --- flip fraction with early decision ----------------------------------------------------

def pattern_world(pattern):
    """1: Born flip; 0: none; "d": diverged with a positive Φ (not a flip)."""
    def make(mode, lr, context, stop):
        p = pattern[CONTEXTS.index(context)]
        phi = [-0.1, 0.2] if p in (1, "d") else [-0.1, -0.05]
        return traj(phi, context=context, lr=lr, stop=stop, diverged_at=2 if p == "d" else None)
    return make


@pytest.mark.parametrize("pattern, n_runs, fraction", [
    ([1] * 5 + [0] * 5, 5, 0.5),                    # 5 of 10 flip: decided ≥ ½ after 5 runs
    ([0] * 6 + [1] * 4, 6, 0.0),                    # 6 misses: ≥ ½ impossible after 6 runs
    ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], 10, 0.4),      # the 6th miss comes last
    ([1, 0] * 5, 9, 0.5),                           # 5th flip at the 9th run
    ([0, 1] * 5, 10, 0.5),                          # 5th flip at the 10th run
    (["d"] * 6 + [1] * 4, 6, 0.0),                  # diverged runs count as no flip
    ([1, "d", 1, 1, 1, 1, 0, 0, 0, 0], 6, 0.5),
    ([1] * 10, 5, 0.5),
    ([0] * 10, 6, 0.0),
])
def test_flip_fraction_stops_once_decided(tmp_path, pattern, n_runs, fraction):
    camp = FakeCampaign(tmp_path / "runs", pattern_world(pattern))
    f = campaign.flip_fraction(camp, 3e-6)
    assert f == pytest.approx(fraction)
    assert (f >= 0.5) == (sum(p == 1 for p in pattern) >= 5)       # the decision is exact
    assert camp.calls == [("full", 3e-6, c, "born_flip") for c in CONTEXTS[:n_runs]]


@pytest.mark.parametrize("pattern, n_runs, fraction", [
    ([1] * 5 + [0] * 4, 5, 5 / 9),                  # 9 contexts: need 5
    ([1] * 4 + [0] * 5, 9, 4 / 9),                  # 4 of 9 < ½: needs every run
    ([0] * 5 + [1] * 4, 5, 0.0),
    ([1], 1, 1.0),
    ([0], 1, 0.0),
])
def test_flip_fraction_odd_counts(tmp_path, pattern, n_runs, fraction):
    usable = CONTEXTS[:len(pattern)]
    camp = FakeCampaign(tmp_path / "runs", pattern_world(pattern + [0] * (10 - len(pattern))), usable=usable)
    f = campaign.flip_fraction(camp, 3e-6)
    assert f == pytest.approx(fraction)
    assert (f >= 0.5) == (2 * sum(pattern) >= len(pattern))
    assert camp.calls == [("full", 3e-6, c, "born_flip") for c in usable[:n_runs]]


# --- critical LR --------------------------------------------------------------------------

def test_critical_lr_of_brackets_the_threshold(tmp_path, fake_weights):
    theta = 7.3e-6                                          # between sweep LRs 5e-6 and 1e-5
    camp = FakeCampaign(tmp_path / "runs", World(theta_star=theta))
    res = campaign.critical_lr_of(camp)
    assert theta <= res.eta_c <= theta * 1.01
    assert res.converged
    lo, hi = res.bracket
    assert lo < theta <= hi and hi == res.eta_c and hi / lo - 1 <= 0.01
    # the grid (extended + sweep) is read upwards until its first success (1e-5: 6 of 10)
    scanned = (2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5)
    assert res.probes[:6] == ((2e-7, 0.0), (5e-7, 0.0), (1e-6, 0.0), (2e-6, 0.0), (5e-6, 0.2), (1e-5, 0.6))
    for eta, f in res.probes[6:]:
        assert 5e-6 < eta < 1e-5 and (f >= 0.5) == (eta >= theta)
    requested_grid = [(lr, c, stop) for mode, lr, c, stop in camp.calls if lr in GRID]
    assert requested_grid == [(lr, c, None) for lr in scanned for c in CONTEXTS]
    assert not any(lr in (2e-5, 5e-5) for _, lr, _, _ in camp.calls)
    probes = [call for call in camp.calls if call[1] not in GRID]
    assert probes and all(mode == "full" and stop == "born_flip" for mode, _, _, stop in probes)
    assert {lr for _, lr, _, _ in probes} == {eta for eta, _ in res.probes[6:]}
    # only the contexts open between 5e-6 and 1e-5 are ever probed (θ factors 0.7 … 1.2);
    # the others are implied by their grid outcomes (monotonicity in η)
    assert {c for _, _, c, _ in probes} <= set(CONTEXTS[2:6])
    report = campaign.bisection_report(camp)
    assert f"{len(probes)} probe runs" in report and f"held on all {60 + len(probes)} runs read" in report

    again = FakeCampaign(tmp_path / "runs", never_run)        # same store: served from it
    assert campaign.critical_lr_of(again) == res
    assert again.calls == []


def exhaustive_critical_lr(theta: dict[str, float]) -> laws.CriticalLR:
    """The bisection with every context run at every probe (no inference, no early stop)."""
    return laws.critical_lr(lambda lr: float(np.mean([lr >= t for t in theta.values()])), GRID)


class Thresholds:
    """``make``: context c Born-flips iff lr ≥ θ_c (monotone in η)."""

    def __init__(self, theta):
        self.theta = theta

    def __call__(self, mode, lr, context, stop):
        return traj([PHI0, 0.1 if lr >= self.theta[context] else PHI0], context=context, lr=lr, stop=stop)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(1e-7, 1e-4), min_size=10, max_size=10))
def test_bisection_with_inference_finds_the_exhaustive_eta_c(fake_weights, thresholds):
    """Implied outcomes, stored runs and the deciding order change the cost, never η_c."""
    theta = dict(zip(CONTEXTS, thresholds))
    with tempfile.TemporaryDirectory() as root:
        camp = FakeCampaign(root, Thresholds(theta))
        res = campaign.critical_lr_of(camp)
        cost = campaign.bisection_report(camp)
    expected = exhaustive_critical_lr(theta)
    assert (res.eta_c, res.bracket, res.converged) == (expected.eta_c, expected.bracket, expected.converged)
    assert [eta for eta, _ in res.probes] == [eta for eta, _ in expected.probes]
    assert [f >= 0.5 for _, f in res.probes] == [f >= 0.5 for _, f in expected.probes]
    assert "held on all" in cost
    scanned = [eta for eta, _ in res.probes if eta in GRID]
    for _, lr, c, _ in camp.calls:
        if lr not in GRID:      # a probe runs only contexts the scanned grid leaves open at lr
            assert not any(theta[c] <= g <= lr for g in scanned), (c, lr)      # flipped lower
            assert not any(lr <= g < theta[c] for g in scanned), (c, lr)       # missed higher


def test_bisection_reads_stored_runs_instead_of_running_them(tmp_path, fake_weights):
    first = FakeCampaign(tmp_path / "a", World())
    res = campaign.critical_lr_of(first)
    made = [call for call in first.calls if call[1] not in GRID]
    assert made
    again = FakeCampaign(tmp_path / "b", World())             # another store, holding those runs
    again.held = {(m, lr, c): World()(m, lr, c, stop) for m, lr, c, stop in made}
    assert campaign.critical_lr_of(again) == res
    assert not [call for call in again.calls if call[1] not in GRID]
    assert f"{len(made)} read from stored runs" in campaign.bisection_report(again)


def test_bisection_runs_the_likeliest_deciders_first(tmp_path, fake_weights):
    # open between 5e-6 and 1e-5: θ = 6e-6, 7e-6, 8e-6, 9e-6; a probe at 5.1e-6 after a failing one
    theta = dict(zip(CONTEXTS, [1e-7, 2e-7, 3e-7, 6e-6, 7e-6, 8e-6, 9e-6, 1e-3, 1e-3, 1e-3]))
    camp = FakeCampaign(tmp_path / "runs", Thresholds(theta))
    res = campaign.critical_lr_of(camp)
    assert res.eta_c == exhaustive_critical_lr(theta).eta_c
    probes = [(lr, c) for _, lr, c, _ in camp.calls if lr not in GRID]
    first_lr = probes[0][0]                  # √(5e-6 · 1e-5) ≈ 7.07e-6: 3 + 4 open ≥ 5 expected to flip
    assert [c for lr, c in probes if lr == first_lr][:2] == CONTEXTS[3:5]   # the likeliest flips first


def test_bisection_reports_monotonicity_violations(tmp_path, fake_weights):
    world = World()

    def make(mode, lr, context, stop):                      # the last context flips at 2e-6 only
        if context == CONTEXTS[9] and lr == 2e-6:
            return traj([PHI0, 0.1], context=context, lr=lr, stop=stop)
        return world(mode, lr, context, stop)

    camp = FakeCampaign(tmp_path / "runs", make)
    assert 7.3e-6 <= campaign.critical_lr_of(camp).eta_c <= 7.3e-6 * 1.01   # a contradicted context is run
    report = campaign.bisection_report(camp)
    assert "VIOLATED on" in report             # against every scanned and probed LR above 2e-6
    assert f"{CONTEXTS[9]} flips at 2e-06 but not at 5e-06" in report


def test_critical_lr_of_above_and_below_the_grid(tmp_path, fake_weights):
    never = FakeCampaign(tmp_path / "runs", World(theta_star=1.0), model="never")   # no flip up to 5e-2
    res = campaign.critical_lr_of(never)
    assert res.eta_c is None and res.bracket is None and not res.converged
    assert [eta for eta, _ in res.probes] == pytest.approx(list(GRID) + [5e-4, 5e-3, 5e-2])
    assert campaign.eta_c_text(res) == "η_c > 0.05 (no LR probed flips half the contexts)"
    assert campaign.critical_lr_of(FakeCampaign(tmp_path / "runs", never_run, model="never")) == res

    above = FakeCampaign(tmp_path / "runs", World(theta_star=2e-4), model="above")  # a decade above
    res = campaign.critical_lr_of(above)
    assert res.converged and 2e-4 <= res.eta_c <= 2e-4 * 1.01 and 5e-5 * 0.99 < res.bracket[0]

    below = FakeCampaign(tmp_path / "runs", World(theta_star=1e-7), model="below")  # 8 of 10 flip at 2e-7
    res = campaign.critical_lr_of(below)
    assert res.converged and 1e-7 <= res.eta_c <= 1e-7 * 1.01
    assert res.probes[:2] == ((2e-7, 0.8), (pytest.approx(2e-8), 0.0))            # a decade down: none
    assert {lr for _, lr, _, _ in below.calls if lr in GRID} == {2e-7}

    always = FakeCampaign(tmp_path / "runs", World(theta_star=1e-12), model="always")
    res = campaign.critical_lr_of(always)
    assert res.eta_c == pytest.approx(2e-10) and res.bracket is None and not res.converged
    assert campaign.eta_c_text(res) == "η_c ≤ 2e-10 (every LR probed flips half the contexts)"


def test_critical_lr_of_cache_key_follows_the_contexts(tmp_path, fake_weights):
    camp = FakeCampaign(tmp_path / "runs", World())
    first = campaign.critical_lr_of(camp)
    fewer = FakeCampaign(tmp_path / "runs", World(), usable=CONTEXTS[:8])
    campaign.critical_lr_of(fewer)
    assert fewer.calls                                  # another usable set: measured anew
    looser = FakeCampaign(tmp_path / "runs", World())
    assert campaign.critical_lr_of(looser, rtol=0.05) != first and looser.calls


# --- blind statistic ------------------------------------------------------------------------

BLIND = {  # context: (r, Δz_0); −Δz_0 / (30 r) over r > 0: 0.05, 0.04, 0.01, −0.01, 0.12 → median 0.04
    "longing": (2.0, -3.0), "purpose": (-1.0, -5.0), "shame": (0.5, -0.6),
    "tired": (4.0, -1.2), "awful": (1.0, 0.3), "scared": (0.25, -0.9),
}


@pytest.fixture
def fake_blind_r(monkeypatch):
    calls = []

    def blind_r(loaded, context, p):
        calls.append((loaded, context, p))
        r, dz0 = BLIND[context]
        return {"r": r, "dz0": dz0}

    monkeypatch.setattr(dynamics, "blind_r", blind_r)
    return calls


def test_blind_statistic(tmp_path, fake_weights, fake_blind_r):
    loaded = object()
    loads = []

    def loader(name):
        loads.append(name)
        return loaded

    usable = list(BLIND)
    camp = FakeCampaign(tmp_path / "runs", never_run, usable=usable, loader=loader)
    bq = campaign.blind_statistic(camp)
    assert bq.q == pytest.approx(0.04, rel=1e-12)
    assert bq.used == ("longing", "shame", "tired", "awful", "scared") and bq.excluded == ("purpose",)
    assert [(ld, c, p) for ld, c, p in fake_blind_r] == [(loaded, c, camp.orientations[c]) for c in usable]
    assert set(loads) == {"fake-model"}

    fake_blind_r.clear()
    again = FakeCampaign(tmp_path / "runs", never_run, usable=usable)     # loader refuses
    assert campaign.blind_statistic(again) == bq
    assert fake_blind_r == []

    swapped = FakeCampaign(tmp_path / "runs", never_run, usable=usable, loader=loader)
    swapped.orientations["longing"] = pair("longing", swap=True)          # another orientation
    assert campaign.blind_statistic(swapped) == bq
    assert [c for _, c, _ in fake_blind_r] == ["longing"]


def test_blind_statistic_uses_the_plan_steps(tmp_path, fake_weights, fake_blind_r):
    camp = FakeCampaign(tmp_path / "runs", never_run, usable=list(BLIND), plan=Plan(steps=20),
                        loader=lambda name: None)
    assert campaign.blind_statistic(camp).q == pytest.approx(0.06, rel=1e-12)


# --- bulk (tiny real model) --------------------------------------------------------------------

def test_bulk_on_a_tiny_model(tmp_path, monkeypatch):
    path = str(tiny_models.build_tiny("llama", tmp_path / "llama"))
    loads = []

    def loader(name):
        loads.append(name)
        return runs.SLOT(name)

    camp = Campaign(path, Plan(), store=store.RunStore(tmp_path / "runs"), loader=loader)
    b = campaign.bulk(camp)
    assert set(b) == {"g2mean", "kind", "loglik_gauss", "loglik_laplace", "mean", "std", "cls"}
    assert 0.0 < b["g2mean"] < 1.0
    assert b["kind"] in ("gaussian", "laplace")
    assert b["cls"] == geometry.classify(b["g2mean"], b["kind"])
    assert loads == [path]
    # G²mean by brute force over every ordered pair i ≠ j of the embedding's unit rows
    E = runs.SLOT(path).model.get_input_embeddings().weight.detach().double()
    psi = E / E.norm(dim=1, keepdim=True)
    G2 = (psi @ psi.T) ** 2
    V = G2.shape[0]
    assert b["g2mean"] == pytest.approx(float((G2.sum() - G2.diagonal().sum()) / (V * (V - 1))), rel=1e-5)

    monkeypatch.setattr(zoo, "load", refuse_load)
    cached = Campaign(path, Plan(), store=store.RunStore(tmp_path / "runs"), loader=refuse_load)
    assert campaign.bulk(cached) == b


# --- the laws table ------------------------------------------------------------------------

K = 3.0   # η_c = K · q exactly for every model below


def fake_loaded(seed: int):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.Embedding.from_pretrained(torch.randn(64, 8, generator=g))
    return SimpleNamespace(model=SimpleNamespace(get_input_embeddings=lambda: emb), q=None)


@pytest.fixture
def table_world(tmp_path, fake_weights, monkeypatch):
    """Fake campaigns sharing one store; blind_r answers q = η_c / K (set per model)."""
    loaded: dict[str, SimpleNamespace] = {}

    def blind_r(ld, context, p):
        return {"r": 1.0, "dz0": -T * ld.q}

    monkeypatch.setattr(dynamics, "blind_r", blind_r)

    def make_campaign(model, plan=Plan(), **world):
        loaded[model] = fake_loaded(len(loaded))
        return FakeCampaign(tmp_path / "runs", World(**world), model=model, plan=plan,
                            loader=lambda name: loaded[name])

    def set_q(camp, q):
        loaded[camp.model].q = q

    return make_campaign, set_q


def check_common(row: ModelLaws, camp, lora_flips=3):
    b = campaign.bulk(camp)
    assert (row.g2mean, row.shape, row.cls) == (b["g2mean"], b["kind"], b["cls"])
    assert row.b_ft == pytest.approx(0.55, rel=1e-12)
    assert row.lora_sufficiency == pytest.approx(lora_flips / 10)


def test_laws_table_exact_blind_prediction(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6, sat_scale=1.0)
    b = make_campaign("model-b", theta_star=2.6e-5, sat_scale=2.0, lora_flips=6)
    eta_c = {c.model: campaign.critical_lr_of(c).eta_c for c in (a, b)}     # now in the store
    assert 7.3e-6 <= eta_c["model-a"] <= 7.3e-6 * 1.01 and 2.6e-5 <= eta_c["model-b"] <= 2.6e-5 * 1.01
    for c in (a, b):
        set_q(c, eta_c[c.model] / K)

    rows = campaign.laws_table([a, b])
    assert [r.model for r in rows] == ["model-a", "model-b"]
    values = sorted(ETA_SAT.values())
    for row, camp, scale, flips in ((rows[0], a, 1.0, 3), (rows[1], b, 2.0, 6)):
        check_common(row, camp, flips)
        assert row.eta_sat == pytest.approx(scale * (values[4] + values[5]) / 2, rel=1e-4)
        assert row.h_ft == pytest.approx(2e-5 / row.eta_sat, rel=1e-12)
        assert row.q == pytest.approx(eta_c[row.model] / K, rel=1e-12)
        assert row.eta_c == eta_c[row.model]
        assert row.eta_hat == pytest.approx(row.eta_c, rel=1e-9)
        assert row.rel_error == pytest.approx(0.0, abs=1e-9)


def test_laws_table_model_without_eta_c(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    quick = Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False)
    c = make_campaign("model-c", plan=quick, theta_star=7.3e-6)
    b = make_campaign("model-b", theta_star=2.6e-5)
    for m in (a, b):
        set_q(m, campaign.critical_lr_of(m).eta_c / K)

    rows = {r.model: r for r in campaign.laws_table([a, c, b])}
    assert list(rows) == ["model-a", "model-c", "model-b"]
    row = rows["model-c"]
    check_common(row, c)
    assert row.eta_sat is None and row.h_ft is None                      # no saturation grid
    assert row.q is None and row.eta_c is None and row.eta_hat is None and row.rel_error is None
    # C's plan asks for no saturation, no blind_r (its loaded.q is None) and no critical-LR runs
    assert set(c.calls) == ({("full", ETA_REF, x, None) for x in CONTEXTS}
                            | {("lora", LORA_REF, x, None) for x in CONTEXTS})
    for m in ("model-a", "model-b"):
        assert rows[m].rel_error == pytest.approx(0.0, abs=1e-9)
        assert rows[m].eta_hat == pytest.approx(rows[m].eta_c, rel=1e-9)


@pytest.mark.parametrize("theta_star", [1.0, 1e-12], ids=["above", "below"])
def test_laws_table_eta_c_without_a_bracket(table_world, theta_star):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=theta_star)             # no LR probed brackets η_c
    b = make_campaign("model-b", theta_star=7.3e-6)
    set_q(a, 1e-5)
    set_q(b, campaign.critical_lr_of(b).eta_c / K)
    rows = campaign.laws_table([a, b])
    assert [r.model for r in rows] == ["model-a", "model-b"]
    assert rows[0].eta_c is None and rows[0].q == pytest.approx(1e-5, rel=1e-12)
    assert rows[1].eta_c == campaign.critical_lr_of(b).eta_c
    for row in rows:
        assert row.eta_hat is None and row.rel_error is None
        assert row.eta_sat is not None and row.b_ft == pytest.approx(0.55)


def test_blind_predictions_name_every_excluded_model(table_world, monkeypatch):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    b = make_campaign("model-b", theta_star=2.6e-5)
    no_bisection = make_campaign("model-c", plan=Plan(eta_c=False))
    above = make_campaign("model-d", theta_star=1.0)                    # η_c above every LR probed
    for m in (a, b):
        set_q(m, campaign.critical_lr_of(m).eta_c / K)
    set_q(above, 1e-5)
    no_r = make_campaign("model-e", theta_star=7.3e-6)
    set_q(no_r, 1e-6)
    blind_r = dynamics.blind_r

    def no_positive_r(ld, context, p):
        out = blind_r(ld, context, p)
        return {**out, "r": -1.0} if ld is no_r.loader("model-e") else out

    monkeypatch.setattr(dynamics, "blind_r", no_positive_r)
    predictions, excluded = campaign.blind_predictions([a, no_bisection, above, b, no_r])
    assert [p.model for p in predictions] == ["model-a", "model-b"]
    for p in predictions:
        assert p.eta_c == campaign.critical_lr_of(a if p.model == "model-a" else b).eta_c
        assert p.eta_hat == pytest.approx(p.eta_c, rel=1e-9) and p.rel_error == pytest.approx(0.0, abs=1e-9)
    assert list(excluded) == ["model-c", "model-d", "model-e"]
    assert excluded["model-c"] == "no critical-LR bisection in its plan"
    assert excluded["model-d"] == "no bracket on η_c: η_c > 0.05 (no LR probed flips half the contexts)"
    assert excluded["model-e"] == f"no context with r > 0 ({', '.join(CONTEXTS)})"
    assert no_bisection.calls == []                                     # nothing measured for it


def test_blind_predictions_need_two_models(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    set_q(a, 1e-6)
    assert campaign.blind_predictions([a]) == ([], {})
    assert campaign.blind_predictions([]) == ([], {})


def test_laws_table_raises_on_an_invalid_q(table_world):
    """An invalid blind statistic is an error, not a silently missing prediction."""
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    b = make_campaign("model-b", theta_star=2.6e-5)
    set_q(a, -1e-6)                                      # −Δz_0 / (T r) < 0
    set_q(b, 1e-6)
    with pytest.raises(ValueError, match="'model-a'"):
        campaign.laws_table([a, b])


def test_laws_table_single_eligible_model(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    set_q(a, 1e-6)
    (row,) = campaign.laws_table([a])
    assert row.eta_c == campaign.critical_lr_of(a).eta_c and row.q == pytest.approx(1e-6)
    assert row.eta_hat is None and row.rel_error is None
