"""Unit tests of phantom.laws (SPEC §5 cross-model laws)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phantom.laws import (
    BlindQ,
    CriticalLR,
    LeakageError,
    Prediction,
    SaturationFit,
    blind_q,
    critical_lr,
    cv,
    fit_saturation,
    guard_held_out,
    leave_one_out,
    predict_held_out,
    reduced_field,
    saturation_search_bounds,
    spearman,
)
from phantom.protocol import ETA_REF

GRID = [2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5]


def sat(etas, r_inf, eta_sat):
    return [r_inf * (1.0 - math.exp(-e / eta_sat)) for e in etas]


# ------------------------------------------------------------------ saturation

@pytest.mark.parametrize("r_inf,eta_sat", [(1.0, 2e-6), (0.3, 5e-7), (1.7, 1e-5), (-0.8, 3e-6)])
def test_fit_saturation_recovers_noiseless(r_inf, eta_sat):
    fit = fit_saturation(GRID, sat(GRID, r_inf, eta_sat))
    assert isinstance(fit, SaturationFit)
    assert fit.r_inf == pytest.approx(r_inf, rel=1e-4)
    assert fit.eta_sat == pytest.approx(eta_sat, rel=1e-4)
    assert fit.residual < 1e-8 * abs(r_inf)
    assert fit.n == len(GRID)
    assert not fit.at_boundary(GRID)


@settings(max_examples=60, deadline=None)
@given(r_inf=st.floats(0.05, 2.0), log_sat=st.floats(math.log(3e-7), math.log(3e-5)))
def test_fit_saturation_property(r_inf, log_sat):
    eta_sat = math.exp(log_sat)
    fit = fit_saturation(GRID, sat(GRID, r_inf, eta_sat))
    assert fit.r_inf == pytest.approx(r_inf, rel=1e-4)
    assert fit.eta_sat == pytest.approx(eta_sat, rel=1e-4)


def test_fit_saturation_unordered_input_and_small_noise():
    rng = np.random.default_rng(0)
    etas = np.array(GRID)[::-1]
    clean = np.array(sat(etas, 1.0, 3e-6))
    noisy = clean + rng.normal(0.0, 0.005, clean.size)
    fit = fit_saturation(list(etas), list(noisy))
    assert fit.r_inf == pytest.approx(1.0, rel=0.03)
    assert fit.eta_sat == pytest.approx(3e-6, rel=0.1)
    assert 0.0 < fit.residual < 0.01


def test_fit_saturation_is_least_squares_optimum():
    rng = np.random.default_rng(1)
    etas = np.array(GRID)
    y = np.array(sat(etas, 0.7, 4e-6)) + rng.normal(0.0, 0.02, etas.size)
    fit = fit_saturation(etas, y)

    def rms(ri, es):
        return math.sqrt(np.mean((y - ri * (1 - np.exp(-etas / es))) ** 2))

    assert fit.residual == pytest.approx(rms(fit.r_inf, fit.eta_sat), rel=1e-9)
    for dr in (0.99, 1.01):
        for de in (0.99, 1.01):
            assert rms(fit.r_inf * dr, fit.eta_sat * de) >= fit.residual


def test_fit_saturation_linear_response_hits_upper_boundary():
    fit = fit_saturation(GRID, [3e4 * e for e in GRID])  # no saturation
    lo, hi = saturation_search_bounds(GRID)
    assert (lo, hi) == pytest.approx((2e-9, 5e-3))
    assert fit.eta_sat == pytest.approx(hi, rel=1e-3)
    assert fit.at_boundary(GRID)
    assert np.isfinite(fit.r_inf) and fit.residual < 1e-3


def test_fit_saturation_validation():
    with pytest.raises(ValueError, match="at least 3"):
        fit_saturation([1e-6, 2e-6], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        fit_saturation([1e-6, 2e-6, 3e-6], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        fit_saturation([0.0, 2e-6, 3e-6], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="positive"):
        fit_saturation([-1e-6, 2e-6, 3e-6], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        fit_saturation([np.inf, 2e-6, 3e-6], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="responses"):
        fit_saturation([1e-6, 2e-6, 3e-6], [0.1, np.nan, 0.3])


def test_reduced_field():
    assert ETA_REF == 2e-5
    assert reduced_field([1e-6, 2e-6, 4e-6]) == pytest.approx(10.0)
    assert reduced_field([1e-6, 3e-6]) == pytest.approx(2e-5 / 2e-6)
    assert reduced_field([2e-6], eta_ref=1e-5) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        reduced_field([])
    with pytest.raises(ValueError):
        reduced_field([1e-6, -1e-6])


# ------------------------------------------------------------------ statistics

def test_cv():
    v = [1.0, 2.0, 3.0, 4.0]
    assert cv(v) == pytest.approx(np.std(v, ddof=1) / 2.5)
    assert cv([5.0, 5.0]) == 0.0
    with pytest.raises(ValueError):
        cv([1.0])
    with pytest.raises(ValueError):
        cv([1.0, np.nan])


def test_spearman_hand_example():
    # ranks x: 1,2,3,4,5; ranks y: 2,1,4,3,5 -> d^2 sum = 4 -> 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [5, 2, 20, 8, 30]) == pytest.approx(0.8)


def test_spearman_ties_average_ranks():
    x = [1, 2, 2, 3]          # ranks 1, 2.5, 2.5, 4
    y = [10, 20, 30, 40]      # ranks 1, 2, 3, 4
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 2, 3, 4]) - 2.5
    expected = rx @ ry / math.sqrt((rx @ rx) * (ry @ ry))
    assert spearman(x, y) == pytest.approx(expected)
    assert spearman(x, y) == pytest.approx(0.9486832980505138)


def test_spearman_perfect_and_degenerate():
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [2, 2, 2]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


# ------------------------------------------------------------------ critical LR

class Counter:
    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, eta):
        self.calls.append(eta)
        return self.fn(eta)


@pytest.mark.parametrize("eta_star", [3e-7, 1.3e-6, 7.7e-6, 4.9e-5])
def test_critical_lr_step_threshold(eta_star):
    f = Counter(lambda e: 1.0 if e >= eta_star else 0.0)
    res = critical_lr(f, GRID)
    assert isinstance(res, CriticalLR) and res.converged
    lo, hi = res.bracket
    assert lo < eta_star <= hi and hi / lo - 1 <= 0.01
    assert res.eta_c == hi
    assert abs(res.eta_c - eta_star) / eta_star <= 0.01
    assert len(set(f.calls)) == len(f.calls)
    assert [p[0] for p in res.probes] == f.calls


def test_critical_lr_smooth_monotone():
    eta_star = 3.3e-6   # fraction crosses 0.5 here
    f = Counter(lambda e: 1.0 / (1.0 + (eta_star / e) ** 4))
    res = critical_lr(f, GRID[::-1])   # unsorted grid is sorted
    assert res.converged
    assert abs(res.eta_c - eta_star) / eta_star <= 0.01
    assert len(set(f.calls)) == len(f.calls)
    lo, hi = res.bracket
    assert f.fn(lo) < 0.5 <= f.fn(hi)


def test_critical_lr_stops_scan_at_first_success():
    f = Counter(lambda e: 1.0 if e >= 1.5e-6 else 0.0)
    res = critical_lr(f, GRID)
    grid_calls = [c for c in f.calls if c in GRID]
    assert grid_calls == [2e-7, 5e-7, 1e-6, 2e-6]     # nothing above the first success
    assert all(c <= 2e-6 for c in f.calls)
    assert res.eta_c == pytest.approx(1.5e-6, rel=0.01)


def test_critical_lr_reuses_known():
    truth = lambda e: 1.0 if e >= 1.5e-6 else 0.0  # noqa: E731
    known = {e: truth(e) for e in GRID}
    f = Counter(truth)
    res = critical_lr(f, GRID, known=known)
    assert not any(c in GRID for c in f.calls)     # grid points never recomputed
    assert all(1e-6 < c < 2e-6 for c in f.calls)   # only bisection points
    assert res.eta_c == pytest.approx(1.5e-6, rel=0.01)
    # all-known, all-fail, no search beyond the grid: no call at all
    f2 = Counter(truth)
    res2 = critical_lr(f2, GRID, known={e: 0.0 for e in GRID}, extend=0)
    assert f2.calls == [] and res2.eta_c is None


def test_critical_lr_all_fail_and_first_succeeds():
    f = Counter(lambda e: 0.2)
    res = critical_lr(f, GRID)
    assert res.eta_c is None and res.bracket is None and not res.converged
    assert f.calls == pytest.approx(sorted(GRID) + [5e-4, 5e-3, 5e-2])   # three decades above
    g = Counter(lambda e: 0.5)
    res = critical_lr(g, GRID)
    assert res.eta_c == pytest.approx(2e-10) and res.bracket is None and not res.converged
    assert g.calls == pytest.approx([GRID[0], 2e-8, 2e-9, 2e-10])       # three decades below
    assert critical_lr(Counter(lambda e: 0.5), GRID, extend=0).eta_c == GRID[0]


@pytest.mark.parametrize("eta_star", [3e-10, 3e-9, 1.5e-8, 1.9e-7, 6e-5, 3e-4, 2e-2])
def test_critical_lr_brackets_beyond_the_grid(eta_star):
    """η_c is defined by the flips, not by the grid: up to three decades each way are searched."""
    f = Counter(lambda e: 1.0 if e >= eta_star else 0.0)
    res = critical_lr(f, GRID)
    assert res.converged and eta_star <= res.eta_c <= eta_star * 1.01
    assert len(set(f.calls)) == len(f.calls)
    lo, hi = res.bracket
    assert f.fn(lo) < 0.5 <= f.fn(hi)


def test_critical_lr_validation():
    with pytest.raises(ValueError):
        critical_lr(lambda e: 0.0, [])
    with pytest.raises(ValueError):
        critical_lr(lambda e: 0.0, [1e-6, -1e-6])
    with pytest.raises(ValueError):
        critical_lr(lambda e: 1.5, GRID)
    with pytest.raises(ValueError):
        critical_lr(lambda e: float("nan"), GRID)


# ------------------------------------------------------------------ blind predictor

def test_blind_q_median_and_exclusion():
    dz0 = {"a": -2.0, "b": -3.0, "c": -1.0, "d": -5.0, "e": -1.0}
    r = {"a": 1.0, "b": 0.5, "c": 2.0, "d": 0.0, "e": -1.0}
    res = blind_q(dz0, r, steps=10)
    assert isinstance(res, BlindQ)
    # used: a -> 0.2, b -> 0.6, c -> 0.05; median 0.2
    assert res.q == pytest.approx(0.2)
    assert res.used == ("a", "b", "c") and res.excluded == ("d", "e")


def test_blind_q_all_excluded_and_validation():
    res = blind_q({"a": -1.0, "b": -2.0}, {"a": 0.0, "b": -0.1}, steps=5)
    assert res.q is None and res.used == () and res.excluded == ("a", "b")
    with pytest.raises(ValueError):
        blind_q({"a": -1.0}, {"b": 1.0}, steps=5)
    with pytest.raises(ValueError):
        blind_q({"a": -1.0}, {"a": 1.0}, steps=0)


def test_leave_one_out_exact_law():
    k_true = 3.7
    q = {"m1": 1e-6, "m2": 4e-6, "m3": 2.5e-7, "m4": None}
    calls = []

    def eta_c(m):
        calls.append(m)
        return k_true * q[m]

    preds = leave_one_out(q, eta_c)
    assert [p.model for p in preds] == ["m1", "m2", "m3"]
    for p in preds:
        assert isinstance(p, Prediction)
        assert p.k == pytest.approx(k_true, rel=1e-12)
        assert p.eta_hat == pytest.approx(p.eta_c, rel=1e-12)
        assert p.rel_error < 1e-12
    assert sorted(calls) == ["m1", "m2", "m3"]      # at most once each, never m4


def test_leave_one_out_geometric_mean_of_others():
    q = {"a": 1.0, "b": 2.0, "c": 4.0}
    ec = {"a": 2.0, "b": 8.0, "c": 4.0}             # ratios 2, 4, 1
    preds = {p.model: p for p in leave_one_out(q, ec.__getitem__)}
    assert preds["a"].k == pytest.approx(2.0)       # sqrt(4 * 1)
    assert preds["b"].k == pytest.approx(math.sqrt(2.0))
    assert preds["c"].k == pytest.approx(math.sqrt(8.0))
    assert preds["a"].rel_error == pytest.approx(0.0)
    assert preds["c"].eta_hat == pytest.approx(4 * math.sqrt(8.0))
    assert preds["c"].rel_error == pytest.approx(math.sqrt(8.0) - 1.0)


def test_predict_held_out_never_reads_held_out():
    q = {"a": 1.0, "b": 2.0, "c": 3.0}

    def eta_c(m):
        if m == "b":
            raise AssertionError("held-out η_c was read")
        return 5.0 * q[m]

    k, eta_hat = predict_held_out("b", q, eta_c)
    assert k == pytest.approx(5.0) and eta_hat == pytest.approx(10.0)


def test_guard_raises_leakage_for_held_out():
    ec = {"a": 1.0, "b": 2.0}.__getitem__
    guarded = guard_held_out(ec, "b")
    assert guarded("a") == 1.0
    with pytest.raises(LeakageError):
        guarded("b")
    assert issubclass(LeakageError, RuntimeError)


def test_buggy_prediction_path_raises_leakage(monkeypatch):
    # Simulate a bug: k computed over *all* models, held-out included.
    import phantom.laws as laws
    original = laws.blind_k
    monkeypatch.setattr(laws, "blind_k",
                        lambda others, q, eta_c: original(list(q), q, eta_c))
    with pytest.raises(LeakageError):
        laws.predict_held_out("a", {"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}.__getitem__)
    with pytest.raises(LeakageError):
        laws.leave_one_out({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}.__getitem__)


def test_leave_one_out_guard_not_bypassed_by_cache():
    # After m1's η_c is cached (as an "other"), predicting m1 must still not read it.
    order = []

    def eta_c(m):
        order.append(m)
        return {"m0": 1.0, "m1": 2.0, "m2": 3.0}[m]

    leave_one_out({"m0": 1.0, "m1": 1.0, "m2": 1.0}, eta_c)
    assert sorted(order) == ["m0", "m1", "m2"]
    assert order[:2] == ["m1", "m2"]                # m0 read only after its prediction


def test_leave_one_out_needs_two_models():
    with pytest.raises(ValueError):
        leave_one_out({"a": 1.0, "b": None}, lambda m: 1.0)
    with pytest.raises(ValueError):
        leave_one_out({"a": 1.0, "b": -1.0}, lambda m: 1.0)
    with pytest.raises(ValueError):
        predict_held_out("a", {"a": 1.0}, lambda m: 1.0)
