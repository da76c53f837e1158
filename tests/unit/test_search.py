"""Unit tests of phantom.search: the A1 saturation extension and the A2 per-context critical-LR search,
and phantom.critical, which reads η_c from the searches stored in the run store.

A fake campaign (``plan``, ``usable``, ``memo``, ``run``) serves synthetic runs: per context a
response ``R(η) = Φ_T − Φ_0`` and a Born-flip rule, so the searches' outcomes are checked
against the hidden ``η_sat`` and thresholds ``η_i*`` they must find. A replay campaign serves
only the runs a first search made: a search on a warm store runs nothing new.
"""
from __future__ import annotations

import json
import math
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantom import critical, laws, runs, search
from phantom.plans import Plan
from phantom.protocol import CONTEXT_RTOL, CRITICAL_RTOL, SAT_ABOVE, SAT_BELOW
from phantom.store import RunStore
from phantom.trajectory import SERIES, Trajectory

GRID = Plan().saturation                        # 2e-7 … 5e-5: the plan's saturation grid
assert GRID == (2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5)
PHI0 = -2.0


def traj(phi, *, context, lr, diverged_at=None) -> Trajectory:
    phi = np.asarray(phi, dtype=np.float64)
    series = {name: np.zeros(phi.size) for name in SERIES}
    series["phi"] = phi
    meta = {"model": "fake", "context": context, "mode": "full", "lr": lr, "steps": 30, "stop": "saturated",
            "g_max": 0.5, "rank_contested": True, "diverged_at": diverged_at, "stopped_at": None}
    return Trajectory(series, meta)


class Fake:
    """Campaign look-alike: ``make(lr, context)`` → a run; records every run read and keeps what it made."""

    def __init__(self, make, usable=("c0",), plan=Plan()):
        self.model, self.plan, self.usable, self.memo = "fake", plan, list(usable), {}
        self.make = make
        self.calls: list[tuple[str, float, str]] = []
        self.made: dict[tuple[str, float, str], Trajectory] = {}

    def run(self, mode, lr, context, stop=None):
        assert mode == "full" and stop is None and context in self.usable
        self.calls.append((mode, lr, context))
        key = (mode, lr, context)
        if key not in self.made:
            self.made[key] = self.make(lr, context)
        return self.made[key]


def never_run(lr, context):
    raise AssertionError(f"no run may be made here, got {lr!r} for {context!r}")


def replay(first: Fake) -> Fake:
    """A campaign whose store holds exactly the runs ``first`` made: any other run fails the test."""
    again = Fake(never_run, first.usable, first.plan)
    again.made = dict(first.made)
    return again


# --- worlds ----------------------------------------------------------------------------

class Saturating:
    """Φ = [Φ_0, Φ_0 + R(η)] with R = R_∞(1 − exp(−η/η_sat)) per context; some runs diverge."""

    def __init__(self, eta_sat, r_inf=1.0, diverged=(), transient_flip=()):
        self.eta_sat = eta_sat if isinstance(eta_sat, dict) else {"c0": eta_sat}
        self.r_inf = r_inf
        self.diverged, self.transient_flip = set(diverged), set(transient_flip)

    def response(self, lr, context):
        return self.r_inf * -math.expm1(-lr / self.eta_sat[context])

    def __call__(self, lr, context):
        if (context, lr) in self.diverged:
            return traj([PHI0, 7.0], context=context, lr=lr, diverged_at=1)
        end = PHI0 + self.response(lr, context)
        mid = 0.1 if context in self.transient_flip else PHI0 / 2     # a flip that Φ_T does not show
        return traj([PHI0, mid, end], context=context, lr=lr)


class Crossing:
    """Φ_T smooth in ln η, crossing 0 at η_i*: a context Born-flips iff η > η_i*.

    ``linear``: Φ_T = 0.3 ln(η/η_i*); ``saturating``: Φ_T = Φ_0 + 3(1 − exp(−η/η_sat)) with
    η_sat = η_i* / ln 3 (the response saturates beyond the flip). ``extra_flips``: runs that
    flip (a transient Φ > 0) against the rule, to break monotonicity.
    """

    def __init__(self, thresholds, shape="linear", extra_flips=()):
        self.theta = thresholds
        self.shape, self.extra_flips = shape, set(extra_flips)

    def phi_t(self, lr, context):
        t = self.theta[context]
        if self.shape == "linear":
            return 0.3 * math.log(lr / t)
        return PHI0 + 3.0 * -math.expm1(-lr * math.log(3.0) / t)

    def __call__(self, lr, context):
        mid = 0.1 if (context, lr) in self.extra_flips else PHI0 / 2
        return traj([PHI0, mid, self.phi_t(lr, context)], context=context, lr=lr)


# --- A1: saturation ----------------------------------------------------------------------

def test_bracketed_saturation_needs_no_extension():
    camp = Fake(Saturating(3e-6))
    s = search.saturation(camp, "c0")
    assert s.added == () and s.etas == GRID
    assert s.responses == pytest.approx([-math.expm1(-e / 3e-6) for e in GRID], rel=1e-12, abs=0)
    assert s.fit.eta_sat == pytest.approx(3e-6, rel=1e-6, abs=0) and s.fit.r_inf == pytest.approx(1.0, rel=1e-6, abs=0)
    assert s.estimate.value == pytest.approx(3e-6, rel=1e-6, abs=0)
    assert set(camp.calls) == {("full", lr, "c0") for lr in GRID}


@pytest.mark.parametrize("eta_sat, added", [
    (6e-8, (1e-7, 5e-8, 2e-8)),           # below the grid: 1e-7 leaves it below, 5e-8 one, 2e-8 two
    (1.5e-7, (1e-7, 5e-8)),               # just below 2e-7: 1e-7 and 5e-8 bracket it
    (1.5e-4, SAT_ABOVE),                  # above the grid: 1e-4 leaves it above, 2e-4 one, 5e-4 two
], ids=["knee-below", "knee-just-below", "knee-above"])
def test_saturation_extends_until_bracketed(eta_sat, added):
    camp = Fake(Saturating(eta_sat))
    s = search.saturation(camp, "c0")
    assert s.added == pytest.approx(added, rel=1e-12, abs=0)
    assert s.etas == tuple(sorted(GRID + s.added))
    assert s.estimate.value == pytest.approx(eta_sat, rel=1e-6, abs=0)
    assert laws.support(s.etas, eta_sat) >= (2, 2)
    assert {lr for _, lr, _ in camp.calls} == set(GRID) | set(s.added)     # nothing else is run


def test_saturation_below_a_spent_extension_is_a_bound():
    camp = Fake(Saturating(1e-9))
    s = search.saturation(camp, "c0")
    assert s.added == SAT_BELOW                                    # two decades below, in 1–2–5 steps
    assert s.estimate == laws.Estimate(0.0, min(SAT_BELOW))       # η_sat < 2e-9
    assert s.fit.eta_sat == pytest.approx(1e-9, rel=1e-5, abs=0)


def test_saturation_above_a_spent_extension_is_a_bound():
    camp = Fake(Saturating(3e-4))                                  # only 5e-4 lies above it
    s = search.saturation(camp, "c0")
    assert s.added == SAT_ABOVE
    assert s.estimate == laws.Estimate(2e-4, math.inf)


def test_saturation_skips_a_diverged_extension_lr():
    camp = Fake(Saturating(6e-8, diverged={("c0", 1e-7)}))
    s = search.saturation(camp, "c0")
    assert s.added == (1e-7, 5e-8, 2e-8)                           # 1e-7 was tried …
    assert 1e-7 not in s.etas and s.etas == (2e-8, 5e-8) + GRID   # … and left out of the fit
    assert s.estimate.value == pytest.approx(6e-8, rel=1e-6, abs=0)


def test_saturation_with_fewer_than_three_completed_runs():
    camp = Fake(Saturating(3e-6, diverged={("c0", lr) for lr in GRID[2:]}))
    s = search.saturation(camp, "c0")
    assert s.etas == GRID[:2] and s.fit is None and s.estimate is None and s.added == ()


def test_saturation_prefetches_every_extension_run_before_reading_it():
    """The plan's grid is planned (computed in bulk beforehand); each run the extension adds is prefetched."""
    camp = Fake(Saturating(6e-8))
    asked: list[tuple] = []
    read = camp.run

    def run(mode, lr, context, stop=None):
        assert lr in GRID or (mode, lr, context, camp.plan.stop) in asked, lr
        return read(mode, lr, context, stop)

    camp.run = run
    s = search.saturation(camp, "c0", asked.extend)
    assert s.added == (1e-7, 5e-8, 2e-8)
    assert {lr for _, lr, _, _ in asked} >= set(s.added)


def test_saturation_replays_from_the_store():
    first = Fake(Saturating(6e-8))
    s = search.saturation(first, "c0")
    again = replay(first)
    assert search.saturation(again, "c0") == s and again.calls == first.calls


# --- A2: one context's critical LR --------------------------------------------------------

THRESHOLDS = [3.3e-7, 1.3e-6, 7.3e-6, 1.37e-5, 4.1e-5]


@pytest.mark.parametrize("shape", ["linear", "saturating"])
@pytest.mark.parametrize("theta", THRESHOLDS)
def test_context_bracket_contains_the_threshold(theta, shape):
    camp = Fake(Crossing({"c0": theta}, shape))
    s = search.context_critical(camp, "c0")
    lo, hi = s.bracket
    assert lo < theta < hi and s.width() <= CONTEXT_RTOL
    assert s.estimate() == laws.Estimate.number(hi)
    assert s.violations() == []
    assert s.probes and all(lr not in GRID for lr in s.probes)
    assert s.steps == 2 * len(s.probes)                            # two steps per run of Φ = [Φ_0, ·, Φ_T]
    assert set(s.probes) <= set(s.seen)


@pytest.mark.parametrize("theta", THRESHOLDS)
def test_straddle_needs_few_probes_on_a_linear_response(theta):
    """Φ_T linear in ln η (not through Φ_0 at η = 0, so the cubic in η is only close): a probe at
    the estimate, then a straddling pair once two estimates agree."""
    camp = Fake(Crossing({"c0": theta}, "linear"))
    coarse = search.context_critical(camp, "c0")
    assert len(coarse.probes) <= 3
    fine = search.context_critical(camp, "c0", (CONTEXT_RTOL, CRITICAL_RTOL))
    assert len(fine.probes) <= 5
    assert fine.probes[:len(coarse.probes)] == coarse.probes      # a finer search walks the coarse path first
    lo, hi = fine.bracket
    assert lo < theta < hi and fine.width() <= CRITICAL_RTOL


@pytest.mark.parametrize("theta", THRESHOLDS)
def test_a_smooth_nonlinear_response_still_brackets_cheaply(theta):
    camp = Fake(Crossing({"c0": theta}, "saturating"))
    s = search.context_critical(camp, "c0", (CONTEXT_RTOL, CRITICAL_RTOL))
    lo, hi = s.bracket
    assert lo < theta < hi and s.width() <= CRITICAL_RTOL
    # a bisection from a factor-2.5 grid bracket to 1% alone takes ⌈log2(ln 2.5 / ln 1.01)⌉ = 7 probes;
    # a response through Φ_0 at η = 0, as a real one is, takes a probe and a pair to 5%, as many more to 1%
    assert len(s.probes) <= 4
    assert len(search.context_critical(Fake(Crossing({"c0": theta}, "saturating")), "c0").probes) <= 2


def test_zero_estimate_is_the_root_of_the_cubic_through_phi_0_and_every_run():
    camp = Fake(Crossing({"c0": 7.3e-6}, "saturating"))
    s = search.context_critical(camp, "c0")
    u = search.zero_estimate(s, PHI0)
    assert s.bracket[0] < u < s.bracket[1] and u == pytest.approx(7.3e-6, rel=CONTEXT_RTOL, abs=0)
    s.seen[s.hi] = (True, None)                                     # an end without Φ_T: no estimate
    assert search.zero_estimate(s, PHI0) is None


def test_a_stalled_search_bisects(monkeypatch):
    """Estimates that keep landing next to the same end (regula falsi's stall) fall back to bisection."""
    monkeypatch.setattr(search, "zero_estimate", lambda state, phi0: state.lo * 1.001)
    camp = Fake(Crossing({"c0": 7.3e-6}, "saturating"))
    s = search.context_critical(camp, "c0")
    lo, hi = s.bracket
    assert lo < 7.3e-6 < hi and s.width() <= CONTEXT_RTOL
    bisections = [x for x, (a, b) in zip(s.probes, _brackets(s))
                  if x == pytest.approx(math.sqrt(a * b), rel=1e-12, abs=0)]
    assert bisections and len(s.probes) < 40


def _brackets(s: search.ContextCritical) -> list[tuple[float, float]]:
    """The bracket before each probe, replayed from the probe order."""
    seen = {lr: v for lr, v in s.seen.items() if lr not in s.probes}
    out = []
    for x in s.probes:
        out.append(search.ContextCritical("c0", dict(seen)).bracket)
        seen[x] = s.seen[x]
    return out


def test_context_search_replayed_on_the_same_store_runs_nothing_new():
    first = Fake(Crossing({"c0": 7.3e-6}, "saturating"))
    s = search.context_critical(first, "c0", (CONTEXT_RTOL, CRITICAL_RTOL))
    again = replay(first)
    t = search.context_critical(again, "c0", (CONTEXT_RTOL, CRITICAL_RTOL))
    assert (t.seen, t.probes, t.steps) == (s.seen, s.probes, s.steps)
    assert again.calls == first.calls


def test_context_search_reports_monotonicity_violations():
    # flips at 2e-6 (a transient Φ > 0) though its threshold is 7.3e-6: misses at 5e-6 above it
    camp = Fake(Crossing({"c0": 7.3e-6}, "saturating", extra_flips={("c0", 2e-6)}))
    s = search.context_critical(camp, "c0")
    v = s.violations()
    assert (2e-6, 5e-6) in v and all(up == 2e-6 for up, _ in v)
    assert {down for _, down in v} == {lr for lr, (f, _) in s.seen.items() if not f and lr > 2e-6}
    assert s.hi == 2e-6 and s.width() <= CONTEXT_RTOL            # the bracket is read at the lowest flip


def test_a_diverged_run_counts_as_no_flip():
    run = traj([PHI0, 0.5], context="c0", lr=1e-5, diverged_at=1)
    assert not search.born_flipped(run) and search.response(run) is None
    assert search.born_flipped(traj([PHI0, 0.5, -0.1], context="c0", lr=1e-5))
    assert search.response(traj([PHI0, 0.5, -0.5], context="c0", lr=1e-5)) == pytest.approx(1.5)


def test_a_context_that_never_flips_gives_a_lower_bound():
    camp = Fake(Saturating(3e-6, r_inf=1.5))                       # Φ_T ≤ −0.5 at every LR
    s = search.context_critical(camp, "c0")
    assert search.EXTEND_DECADES == 3
    assert s.probes == pytest.approx([5e-4, 5e-3, 5e-2], rel=1e-12, abs=0)   # three decades above the grid
    assert s.bracket == (s.probes[-1], math.inf) and s.estimate() == laws.Estimate(s.probes[-1], math.inf)
    assert s.width() == math.inf


def test_a_context_that_flips_everywhere_gives_an_upper_bound():
    camp = Fake(Saturating(3e-6, transient_flip={"c0"}))            # bracketed response, a flip at every LR
    s = search.context_critical(camp, "c0")
    assert s.probes == pytest.approx([2e-8, 2e-9, 2e-10], rel=1e-12, abs=0)  # three decades below the grid
    assert s.bracket == (0.0, s.probes[-1]) and s.estimate() == laws.Estimate(0.0, s.probes[-1])


def test_an_estimate_below_the_extension_probes_its_floor_then_gives_a_bound():
    """Φ_T > 0 at every LR down to far below the grid: the search ends with a flip at the floor
    (three decades below the lowest LR it started from), not at the last estimate above it."""
    camp = Fake(Crossing({"c0": 1e-13}, "saturating"))
    s = search.context_critical(camp, "c0")
    floor = min(lr for lr in s.seen if lr not in s.probes) / 10 ** search.EXTEND_DECADES
    assert s.bracket[0] == 0.0 and s.bracket[1] == pytest.approx(floor, rel=1e-8, abs=0)
    assert s.estimate() == laws.Estimate(0.0, s.bracket[1])


def test_the_search_starts_from_the_extended_saturation_grid():
    world = Crossing({"c0": 4.3e-8}, "saturating")                  # η_sat = 4.3e-8 / ln 3: below the grid
    camp = Fake(world)
    sat = search.saturation(camp, "c0")
    assert sat.added                                                # A1 extended the grid downwards …
    s = search.context_critical(camp, "c0")
    assert set(sat.etas) <= set(s.seen)                             # … and the η_i search read those runs
    lo, hi = s.bracket
    assert lo < 4.3e-8 < hi and s.width() <= CONTEXT_RTOL


def test_a_plan_without_a_saturation_grid_still_searches_from_its_sweep():
    camp = Fake(Crossing({"c0": 7.3e-6}, "linear"), plan=Plan(extended=()))      # eta_c=True by default
    s = search.context_critical(camp, "c0")
    assert s.bracket[0] < 7.3e-6 < s.bracket[1] and s.width() <= CONTEXT_RTOL


# --- A2: η_c of a model (phantom.critical over the search) ----------------------------------

CONTEXTS = [f"c{i}" for i in range(10)]


@pytest.fixture
def fake_weights(monkeypatch):
    """Fake models have no weights: their hash is a function of the name."""
    monkeypatch.setattr(runs, "weights_sha256", lambda model: f"sha256-of-{model}")


def stored(make, root, usable) -> Fake:
    camp = Fake(make, usable)
    camp.store, camp.device = RunStore(root), "cpu"
    return camp


def reference_eta_c(thresholds, rtol=CRITICAL_RTOL):
    """The pre-A2 η_c: scan the grid upwards for the first LR with ≥ half flipping, bisect in ln η."""
    def half(lr):
        return np.mean([lr > t for t in thresholds]) >= 0.5
    lo = max(g for g in GRID if not half(g))
    hi = min(g for g in GRID if half(g))
    while hi / lo - 1 > rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if half(mid) else (mid, hi)
    return hi


def check_critical(result, states, theta):
    k = laws.kth_smallest(len(theta))
    truth = sorted(theta.values())[k - 1]
    assert result.converged and result.eta_c == result.bracket[1]
    lo, hi = result.bracket
    assert lo < truth < hi and hi / lo - 1 <= CRITICAL_RTOL * (1 + 1e-9)
    for c, s in states.items():
        assert s.bracket[0] < theta[c] < s.bracket[1] and s.width() <= CONTEXT_RTOL * (1 + 1e-9), c
        assert s.violations() == []
    # the contexts whose brackets reach between η_c's ends were refined to 1%
    deciders = [s for s in states.values() if s.lo < hi and s.hi > lo]
    assert deciders and all(s.width() <= CRITICAL_RTOL * (1 + 1e-9) for s in deciders)
    return truth


@pytest.mark.parametrize("shape", ["linear", "saturating"])
def test_critical_matches_the_reference_bisection(tmp_path, fake_weights, shape):
    theta = dict(zip(CONTEXTS, [7.3e-6 * f for f in (0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0, 100.0)]))
    result, states = critical.critical(stored(Crossing(theta, shape), tmp_path, CONTEXTS))
    truth = check_critical(result, states, theta)
    assert truth == theta["c4"]
    ref = reference_eta_c(list(theta.values()))
    assert abs(math.log(result.eta_c / ref)) <= math.log1p(CRITICAL_RTOL)
    assert states["c9"].bracket[0] >= 5e-4                           # found by the decade extension


def test_critical_on_a_warm_store_reads_no_run(tmp_path, fake_weights):
    theta = dict(zip(CONTEXTS, np.geomspace(4e-7, 3e-5, 10)))
    first = stored(Crossing(theta, "saturating"), tmp_path, CONTEXTS)
    result, states = critical.critical(first)
    assert first.calls
    again = stored(never_run, tmp_path, CONTEXTS)
    result2, states2 = critical.critical(again)
    assert again.calls == []
    assert result2 == result
    assert {c: (s.seen, s.probes, s.steps) for c, s in states2.items()} == \
        {c: (s.seen, s.probes, s.steps) for c, s in states.items()}


def test_context_critical_round_trips_through_json():
    s = search.context_critical(Fake(Crossing({"c0": 7.3e-6}, "saturating")), "c0")
    back = search.ContextCritical.from_dict(json.loads(json.dumps(s.to_dict())))
    assert (back.context, back.seen, back.probes, back.steps) == (s.context, s.seen, s.probes, s.steps)
    assert back.bracket == s.bracket and back.estimate() == s.estimate()


def test_critical_when_fewer_than_half_ever_flip(tmp_path, fake_weights):
    theta = dict(zip(CONTEXTS[:4], [1e-6, 2e-6, 10.0, 20.0]))      # 2 of 4 flip: still half
    result, _ = critical.critical(stored(Crossing(theta, "linear"), tmp_path / "a", CONTEXTS[:4]))
    assert result.converged and 2e-6 < result.eta_c <= 2e-6 * (1 + CRITICAL_RTOL)
    theta = dict(zip(CONTEXTS[:5], [1e-6, 2e-6, 10.0, 20.0, 30.0]))  # 2 of 5: never half
    result, states = critical.critical(stored(Crossing(theta, "linear"), tmp_path / "b", CONTEXTS[:5]))
    assert result.eta_c is None and not result.converged and math.isinf(result.bracket[1])
    assert result.bracket[0] == sorted(s.lo for s in states.values())[2]


def test_critical_prefetches_the_runs_it_reads(tmp_path, fake_weights):
    theta = dict(zip(CONTEXTS[:3], [1e-6, 3e-6, 9e-6]))
    camp = stored(Crossing(theta, "saturating"), tmp_path, CONTEXTS[:3])
    asked: set = set()
    read = camp.run

    def run(mode, lr, context, stop=None):                 # every probe is prefetched before it is read
        assert lr in GRID or (mode, lr, context) in asked, (lr, context)
        return read(mode, lr, context, stop)

    camp.run = run
    critical.critical(camp, prefetch=lambda batch: asked.update((m, lr, c) for m, lr, c, _ in batch))
    probes = {call for call in camp.calls if call[1] not in GRID}
    assert len(probes) >= 3 and asked >= probes


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(math.log(2.5e-7), math.log(4e-5)), min_size=1, max_size=8))
def test_critical_finds_the_smallest_lr_where_half_flip(fake_weights, logs):
    theta = {f"c{i}": math.exp(x) for i, x in enumerate(logs)}
    with tempfile.TemporaryDirectory() as root:
        result, states = critical.critical(stored(Crossing(theta, "saturating"), root, list(theta)))
    truth = check_critical(result, states, theta)
    flips = [np.mean([lr > t for t in theta.values()]) for lr in (result.bracket[0], result.eta_c)]
    assert flips[0] < 0.5 <= flips[1]
    assert truth < result.eta_c <= truth * (1 + CRITICAL_RTOL) * (1 + 1e-9)


def test_the_eta_i_entry_key_names_every_lr_the_search_starts_from(monkeypatch):
    """Two plans that differ only in their sweep start the search from other runs: other entries."""
    keys = []

    class Store:
        def get_or_compute(self, key, compute):
            keys.append(key)
            return search.ContextCritical("c0", {1e-6: (False, -0.1), 2e-6: (True, 0.1)}).to_dict()

    monkeypatch.setattr(runs, "weights_sha256", lambda model: "w" * 64)
    for sweep in ((1e-5,), (2e-5,)):
        camp = type("C", (), {"model": "m", "plan": Plan(sweep=sweep, extended=()), "device": "cpu",
                              "store": Store()})()
        critical.context_lr(camp, "c0")
    assert keys[0]["grid"] == [1e-5] and keys[1]["grid"] == [2e-5]
