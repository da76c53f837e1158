"""Unit tests of the per-model laws of phantom.campaign, measured through a campaign (SPEC §2, §5).

Every law except :func:`phantom.campaign.bulk` is fed by a fake campaign (the duck-typed
interface of :class:`phantom.campaign.Campaign`: ``model``, ``plan``, ``store``, ``loader``,
``usable``, ``orientations``, ``memo``, ``device``, ``run``, ``runs``, ``reference``,
``lora_reference``) that
serves hand-built :class:`Trajectory` objects, so each law is checked against a value
computed by hand from the synthetic data. Nothing is fine-tuned; the run store always lives
under ``tmp_path`` (and ``$PHANTOM_RUNS`` points there too). ``bulk`` runs on a tiny local
Llama through a real Campaign.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_models
import torch

from phantom import campaign, contexts, dynamics, geometry, laws, runs, store, zoo
from phantom.campaign import Campaign, ModelLaws
from phantom.plans import Plan
from phantom.protocol import ETA_REF, LORA_REF, SAT_ABOVE, SAT_BELOW
from phantom.trajectory import SERIES, Trajectory

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
        self.memo: dict = {}

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


# --- saturation (A1) ------------------------------------------------------------------------

SAT_DIVERGED = ({(CONTEXTS[0], 5e-5)}                                  # one diverged: 7 points
                | {(CONTEXTS[1], lr) for lr in SAT_GRID[2:]}           # 2 completed: no fit
                | {(CONTEXTS[2], lr) for lr in SAT_GRID[3:] + SAT_ABOVE})   # 3 completed: a fit, a bound


def expected_added(eta_sat, grid=SAT_GRID):
    """A1 by hand: SAT_BELOW steps until two LRs lie below η_sat, then SAT_ABOVE until two lie above."""
    etas, added = list(grid), []
    for steps, side in ((SAT_BELOW, lambda e: e < eta_sat), (SAT_ABOVE, lambda e: e > eta_sat)):
        for s in steps:
            if sum(map(side, etas)) >= 2:
                break
            etas.append(s)
            added.append(s)
    return tuple(added)


def test_saturations_extend_each_context_to_a_bracket(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World())
    sats = campaign.saturations(camp)
    assert list(sats) == CONTEXTS
    assert sats[CONTEXTS[0]].added == (1e-7,) and sats[CONTEXTS[9]].added == (1e-4,)   # η_sat 4e-7, 3e-5
    for context, s in sats.items():
        assert s.added == expected_added(ETA_SAT[context]), context
        assert s.estimate.value == pytest.approx(ETA_SAT[context], rel=1e-6), context
        assert s.fit.r_inf == pytest.approx(R_INF[context], rel=1e-6), context
        assert s.fit.rel_residual < 1e-7
    asked = {(mode, lr, c, stop) for mode, lr, c, stop in camp.calls}
    assert asked == {("full", lr, c, None) for c in CONTEXTS for lr in SAT_GRID + sats[c].added}
    n = len(camp.calls)
    assert campaign.saturations(camp) is sats and len(camp.calls) == n        # memoised per campaign


def test_saturations_leave_out_diverged_runs(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED))
    sats = campaign.saturations(camp)
    assert sats[CONTEXTS[0]].etas == (1e-7,) + SAT_GRID[:-1]                # 5e-5 diverged, 1e-7 added
    assert sats[CONTEXTS[0]].estimate.value == pytest.approx(ETA_SAT[CONTEXTS[0]], rel=1e-6)
    assert sats[CONTEXTS[1]].fit is None and sats[CONTEXTS[1]].estimate is None
    assert sats[CONTEXTS[1]].etas == SAT_GRID[:2]
    s2 = sats[CONTEXTS[2]]                                                    # η_sat ≈ 1.04e-6, 2e-7 … 1e-6 left
    assert s2.etas == SAT_GRID[:3] and s2.fit.eta_sat == pytest.approx(ETA_SAT[CONTEXTS[2]], rel=1e-5)
    assert s2.added == SAT_ABOVE                                              # tried, diverged: spent
    assert s2.estimate == laws.Estimate(1e-6, math.inf)                       # above every LR left: a bound


def test_saturations_without_a_saturation_grid(tmp_path):
    quick = Plan(sweep=(ETA_REF,), extended=(), eta_c=False)
    camp = FakeCampaign(tmp_path / "runs", never_run, plan=quick)
    assert campaign.saturations(camp) == {} and campaign.reduced_field_of(camp) == (None, None)
    assert campaign.operating_lr(camp) is None and campaign.operating_runs(camp) == []


def test_reduced_field_of_carries_a_bound_through_the_median(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World(diverged=SAT_DIVERGED))
    eta_sat, h = campaign.reduced_field_of(camp)
    # contexts 0, 3…9 are 8 numbers, context 2 is η_sat > 1e-6, context 1 has no fit: 9 estimates.
    # The median of the 9 is the 4th number when context 2's η_sat is small, the 5th when it is large.
    values = sorted(ETA_SAT[c] for c in CONTEXTS if c not in CONTEXTS[1:3])
    assert values[0] < 1e-6 < values[1]
    assert isinstance(eta_sat, laws.Estimate) and eta_sat.value is None
    assert (eta_sat.lo, eta_sat.hi) == pytest.approx((values[3], values[4]), rel=1e-6)
    assert (h.lo, h.hi) == pytest.approx((ETA_REF / values[4], ETA_REF / values[3]), rel=1e-6)
    assert campaign.operating_lr(camp) is None                # η_H needs η_sat as a number


def test_reduced_field_of_is_a_number_when_bounds_sit_at_the_ends(tmp_path):
    diverged = {(CONTEXTS[9], lr) for lr in SAT_GRID[6:]}     # η_sat 3e-5 > 1e-5: a lower bound, at the top end
    camp = FakeCampaign(tmp_path / "runs", World(diverged=diverged | {(CONTEXTS[9], lr) for lr in SAT_ABOVE}))
    assert campaign.saturations(camp)[CONTEXTS[9]].estimate == laws.Estimate(1e-5, math.inf)
    eta_sat, h = campaign.reduced_field_of(camp)
    values = sorted(ETA_SAT.values())
    assert eta_sat.value == pytest.approx((values[4] + values[5]) / 2, rel=1e-6)
    assert h.value == pytest.approx(ETA_REF / eta_sat.value, rel=1e-12)


def test_reduced_field_of_even_count_takes_the_middle_mean(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World())
    eta_sat, h = campaign.reduced_field_of(camp)
    values = sorted(ETA_SAT.values())
    assert eta_sat.value == pytest.approx((values[4] + values[5]) / 2, rel=1e-6)
    assert h.value == pytest.approx(2e-5 / eta_sat.value, rel=1e-12)


def test_reduced_field_of_a_knee_below_the_extension_is_a_bound(tmp_path):
    # η_sat = 4e-10 … 3e-8: contexts 0–3 (< 2e-9) and 4–5 (< 5e-9) keep fewer than two LRs below
    camp = FakeCampaign(tmp_path / "runs", World(sat_scale=1e-3))
    sats = campaign.saturations(camp)
    assert [sats[c].estimate.hi for c in CONTEXTS[:6]] == [2e-9] * 4 + [5e-9] * 2
    assert all(sats[c].estimate.lo == 0.0 for c in CONTEXTS[:6])
    assert all(sats[c].estimate.value is not None for c in CONTEXTS[6:])
    eta_sat, h = campaign.reduced_field_of(camp)
    assert eta_sat == laws.Estimate(0.0, 5e-9)                            # η_sat < 5e-9 …
    assert h.lo == pytest.approx(4000.0, rel=1e-12) and h.hi == math.inf  # … H_FT > 4000
    assert campaign.operating_lr(camp) is None
    n = len(camp.calls)
    assert campaign.operating_runs(camp) == [] and len(camp.calls) == n


def test_operating_lr_is_ten_eta_sat_to_three_digits(tmp_path):
    camp = FakeCampaign(tmp_path / "runs", World())
    values = sorted(ETA_SAT.values())
    eta_h = campaign.operating_lr(camp)
    assert eta_h == float(f"{10 * (values[4] + values[5]) / 2:.3g}") == 3.56e-5
    runs_h = campaign.operating_runs(camp)
    assert [r.meta["context"] for r in runs_h] == CONTEXTS and all(r.meta["lr"] == eta_h for r in runs_h)
    assert camp.calls[-10:] == [("full", eta_h, c, None) for c in CONTEXTS]


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


# --- critical LRs (A2) ---------------------------------------------------------------------

def test_critical_lrs_bracket_every_context_and_eta_c(tmp_path, fake_weights):
    theta = 7.3e-6                                          # between sweep LRs 5e-6 and 1e-5
    world = World(theta_star=theta)
    camp = FakeCampaign(tmp_path / "runs", world)
    result, states = campaign.critical_lrs(camp)
    assert campaign.critical_lr_of(camp) is result
    assert result.converged and theta <= result.eta_c <= theta * 1.01
    lo, hi = result.bracket
    assert lo < theta <= hi and hi == result.eta_c and hi / lo - 1 <= 0.01
    eta_i = campaign.context_lrs(camp)
    assert list(eta_i) == CONTEXTS
    for c, e in eta_i.items():
        assert world.theta[c] <= e.value <= world.theta[c] * 1.05 * (1 + 1e-9), c   # η_i to 5%
        assert states[c].lo < world.theta[c]
    assert sorted(e.value for e in eta_i.values())[4] == result.eta_c      # the 5th smallest of 10
    assert campaign.eta_c_text(result) == f"η_c = {result.eta_c:.3g}"
    n = len(camp.calls)
    assert campaign.critical_lrs(camp) == (result, states) and len(camp.calls) == n     # memoised
    again = FakeCampaign(tmp_path / "runs", never_run)                    # a warm store: nothing is read
    assert campaign.critical_lr_of(again) == result and again.calls == []


def test_search_report_counts_the_adaptive_runs(tmp_path, fake_weights):
    camp = FakeCampaign(tmp_path / "runs", World())
    report = campaign.search_report(camp)
    sats = campaign.saturations(camp)
    result, states = campaign.critical_lrs(camp)
    added = sum(len(s.added) for s in sats.values())
    assert added == 2                                                     # 1e-7 (context 0), 1e-4 (context 9)
    probes = sum(len(s.probes) for s in states.values())
    steps = sum(s.steps for s in states.values())
    read = sum(len(s.seen) for s in states.values())
    assert probes > 0 and steps == 2 * probes
    assert report == (f"η_c = {result.eta_c:.3g}; saturation grid extended by 2 run(s), 0 of 10 contexts unbracketed "
                      f"(a bound); η_i of 10 contexts: {probes} probe runs, {steps} steps; "
                      f"monotonicity in η held on all {read} runs read")


def test_search_report_names_monotonicity_violations(tmp_path, fake_weights):
    world = World()

    def make(mode, lr, context, stop):                      # the last context flips at 2e-6 only
        if context == CONTEXTS[9] and lr == 2e-6:
            return traj([PHI0, 0.1, PHI0 + response(context, lr)], context=context, lr=lr, stop=stop)
        return world(mode, lr, context, stop)

    camp = FakeCampaign(tmp_path / "runs", make)
    # η_c reads η_i under monotonicity: context 9's η_i = 2e-6 makes the 4th context's (0.9 θ*) the 5th smallest
    theta4 = 0.9 * 7.3e-6
    assert theta4 <= campaign.critical_lr_of(camp).eta_c <= theta4 * 1.01
    report = campaign.search_report(camp)
    assert "monotonicity in η VIOLATED on" in report
    assert f"{CONTEXTS[9]} flips at 2e-06 but not at 5e-06" in report
    assert campaign.context_lrs(camp)[CONTEXTS[9]].value == 2e-6


@pytest.mark.parametrize("result, text", [
    (laws.CriticalLR(7.31e-6, (7.25e-6, 7.31e-6), True), "η_c = 7.31e-06"),
    (laws.CriticalLR(None, (0.05, math.inf), False),
     "η_c > 0.05 (fewer than half of the contexts flip at any LR searched)"),
    (laws.CriticalLR(2e-10, (0.0, 2e-10), False), "η_c ≤ 2e-10 (half of the contexts flip at every LR searched)"),
    (laws.CriticalLR(8e-6, (7e-6, 8e-6), False), "η_c ∈ (7e-06, 8e-06]"),
], ids=["converged", "above", "below", "interval"])
def test_eta_c_text(result, text):
    assert campaign.eta_c_text(result) == text


@pytest.mark.parametrize("theta_star, text", [
    (1.0, "η_c > 0.05 (fewer than half of the contexts flip at any LR searched)"),
    (1e-12, "η_c ≤ 2e-10 (half of the contexts flip at every LR searched)"),
], ids=["above", "below"])
def test_critical_lr_of_beyond_the_searched_range(tmp_path, fake_weights, theta_star, text):
    camp = FakeCampaign(tmp_path / "runs", World(theta_star=theta_star))
    result = campaign.critical_lr_of(camp)
    assert not result.converged and campaign.eta_c_text(result) == text
    assert all(e.value is None for e in campaign.context_lrs(camp).values())


# --- blind statistic (A3) -------------------------------------------------------------------

BLIND = {  # context: (r, Φ_0); −Φ_0 / (30 r) over r > 0: 0.05, 0.04, 0.01, 0.01, 0.12 → median 0.04
    "longing": (2.0, -3.0), "purpose": (-1.0, -5.0), "shame": (0.5, -0.6),
    "tired": (4.0, -1.2), "awful": (1.0, -0.3), "scared": (0.25, -0.9),
}


@pytest.fixture
def fake_blind_r(monkeypatch):
    calls = []

    def blind_r(loaded, context, p):
        calls.append((loaded, context, p))
        r, phi0 = BLIND[context]
        return {"r": r, "phi0": phi0}

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
    assert bq.per_context == {c: pytest.approx(-BLIND[c][1] / (T * BLIND[c][0]), rel=1e-12) for c in bq.used}
    assert bq.per_context["awful"] == pytest.approx(0.01, rel=1e-12)
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


def test_blind_statistic_refuses_a_non_negative_phi0(tmp_path, fake_weights, monkeypatch):
    monkeypatch.setattr(dynamics, "blind_r", lambda loaded, context, p: {"r": 1.0, "phi0": 0.2})
    camp = FakeCampaign(tmp_path / "runs", never_run, usable=["longing"], loader=lambda name: None)
    with pytest.raises(ValueError, match="'longing'"):
        campaign.blind_statistic(camp)


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
        return {"r": 1.0, "phi0": -T * ld.q}

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
        assert row.eta_sat.value == pytest.approx(scale * (values[4] + values[5]) / 2, rel=1e-6)
        assert row.h_ft.value == pytest.approx(2e-5 / row.eta_sat.value, rel=1e-12)
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
        assert row.eta_sat.value is not None and row.b_ft == pytest.approx(0.55)


def test_blind_predictions_name_every_excluded_model(table_world, monkeypatch):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    b = make_campaign("model-b", theta_star=2.6e-5)
    no_search = make_campaign("model-c", plan=Plan(eta_c=False))
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
    blind = campaign.blind_predictions([a, no_search, above, b, no_r])
    assert isinstance(blind, campaign.BlindResult)
    assert [p.model for p in blind.predictions] == ["model-a", "model-b"]
    by_model = {"model-a": a, "model-b": b}
    for p in blind.predictions:
        assert p.eta_c == campaign.critical_lr_of(by_model[p.model]).eta_c
        assert p.k == pytest.approx(K, rel=1e-12)                            # the other model's η_c / q
        assert p.eta_hat == pytest.approx(p.eta_c, rel=1e-9) and p.rel_error == pytest.approx(0.0, abs=1e-9)
    assert list(blind.excluded) == ["model-c", "model-d", "model-e"]
    assert blind.excluded["model-c"] == "no critical-LR search in its plan"
    assert blind.excluded["model-d"] == ("η_c not located: η_c > 0.05 (fewer than half of the contexts flip "
                                         "at any LR searched)")
    assert blind.excluded["model-e"] == f"no context with r > 0 ({', '.join(CONTEXTS)})"
    assert no_search.calls == []                                        # nothing measured for it
    # the per-context check: η̂_i = k q_i = η_c (every q_i = q here) against each context's η_i
    assert list(blind.checks) == ["model-a", "model-b"]
    for p in blind.predictions:
        eta_i = {c: e.value for c, e in campaign.context_lrs(by_model[p.model]).items()}
        check = blind.checks[p.model]
        expected = {c: math.log(p.eta_c / v) for c, v in eta_i.items()}
        assert check.n == 10 and check.log_ratio == pytest.approx(expected, rel=1e-9)
        a_ = np.abs(list(expected.values()))
        assert check.median == pytest.approx(float(np.median(a_)), rel=1e-9)
        assert check.p90 == pytest.approx(float(np.percentile(a_, 90)), rel=1e-9)
    points = campaign.context_points([a, no_search, above, b, no_r], blind)
    assert list(points) == ["model-a", "model-b"]
    for p in blind.predictions:
        eta_i = campaign.context_lrs(by_model[p.model])
        assert points[p.model] == [(c, eta_i[c].value, pytest.approx(p.eta_c, rel=1e-9)) for c in CONTEXTS]


def test_blind_predictions_need_two_models(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    set_q(a, 1e-6)
    assert campaign.blind_predictions([a]) == campaign.BlindResult([], {}, {})
    assert campaign.blind_predictions([]) == campaign.BlindResult([], {}, {})
    quick = make_campaign("model-q", plan=Plan(eta_c=False))
    assert campaign.blind_predictions([a, quick]) == campaign.BlindResult(
        [], {}, {"model-q": "no critical-LR search in its plan"})
    assert campaign.context_points([a, quick]) == {}


def test_laws_table_raises_on_an_invalid_q(table_world):
    """An invalid blind statistic is an error, not a silently missing prediction."""
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    b = make_campaign("model-b", theta_star=2.6e-5)
    set_q(a, -1e-6)                                      # Φ_0 = −T q > 0: an orientation error
    set_q(b, 1e-6)
    with pytest.raises(ValueError, match="Φ_0"):
        campaign.laws_table([a, b])


def test_laws_table_single_eligible_model(table_world):
    make_campaign, set_q = table_world
    a = make_campaign("model-a", theta_star=7.3e-6)
    set_q(a, 1e-6)
    (row,) = campaign.laws_table([a])
    assert row.eta_c == campaign.critical_lr_of(a).eta_c and row.q == pytest.approx(1e-6)
    assert row.eta_hat is None and row.rel_error is None
