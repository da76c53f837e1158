"""Unit tests of phantom.laws: the pure maths of SPEC §5 and the statistics of §6 (with §8 A1–A6).

Oracles are independent of the implementation: hand-derived values, numpy brute force
(every permutation, a dense grid over a box) and small reference algorithms written here
(the pre-A2 bisection of the flip fraction, a per-context bisection).
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phantom.laws import (
    SAT_SPAN,
    BlindQ,
    ContextCheck,
    CriticalLR,
    Estimate,
    LeakageError,
    Prediction,
    SaturationFit,
    blind_q,
    bootstrap_indices,
    critical_from_brackets,
    cv,
    cv_range,
    fit_saturation,
    guard_held_out,
    kth_smallest,
    leave_one_out,
    median_estimate,
    next_saturation_lr,
    per_context_check,
    percentile_interval,
    permutation_p,
    predict_held_out,
    reduced_field,
    saturation_estimate,
    saturation_search_bounds,
    spearman,
    support,
)
from phantom.protocol import (
    BOOTSTRAP_B,
    BOOTSTRAP_SEED,
    CONTEXT_RTOL,
    CRITICAL_RTOL,
    ETA_REF,
    PERMUTATION_EXACT_MAX,
    SAT_ABOVE,
    SAT_BELOW,
)

GRID = (2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5)    # Plan().saturation: extended + sweep
INF = math.inf


def sat(etas, r_inf, eta_sat):
    return [r_inf * -math.expm1(-e / eta_sat) for e in etas]


# ------------------------------------------------------------------ Estimate

def test_estimate_number_and_bounds():
    assert Estimate.number(3.0) == Estimate(3.0, 3.0) and Estimate.number(3.0).value == 3.0
    assert Estimate(0.0, 2.0).value is None and Estimate(1.0, INF).value is None
    assert Estimate(0.0, 0.0).value == 0.0
    for lo, hi in ((2.0, 1.0), (-1.0, 1.0), (0.0, math.nan), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="0 ≤ lo ≤ hi"):
            Estimate(lo, hi)


@pytest.mark.parametrize("est, text", [
    (Estimate.number(9.24), "H = 9.24"),
    (Estimate(0.0, 3.0), "H < 3"),
    (Estimate(100.0, INF), "H > 100"),
    (Estimate(3.0, 9.0), "H ∈ [3, 9]"),
], ids=["number", "upper-bound", "lower-bound", "interval"])
def test_estimate_text(est, text):
    assert est.text("H") == text


@pytest.mark.parametrize("est, inverse", [
    (Estimate.number(4.0), Estimate.number(0.5)),
    (Estimate(0.0, 4.0), Estimate(0.5, INF)),          # x < 4  ⇒  2/x > 0.5
    (Estimate(4.0, INF), Estimate(0.0, 0.5)),          # x > 4  ⇒  2/x < 0.5
    (Estimate(1.0, 4.0), Estimate(0.5, 2.0)),
], ids=["number", "upper-bound", "lower-bound", "interval"])
def test_estimate_scaled_inverse(est, inverse):
    assert est.scaled_inverse(2.0) == inverse


# ------------------------------------------------------------------ median of estimates

@pytest.mark.parametrize("estimates, median", [
    ([Estimate.number(v) for v in (3.0, 1.0, 2.0)], Estimate.number(2.0)),
    ([Estimate.number(v) for v in (4.0, 1.0, 2.0, 3.0)], Estimate.number(2.5)),
    # bounds at the ends: whatever they hide, the middle is a number
    ([Estimate(0.0, 0.5), Estimate.number(2.0), Estimate.number(3.0), Estimate.number(4.0), Estimate(10.0, INF)],
     Estimate.number(3.0)),
    # a bound in the middle: every median in [1, 2.5] is possible (x ≤ 1 → 1, x = 2.5 → 2.5)
    ([Estimate.number(1.0), Estimate(0.0, 2.5), Estimate.number(3.0)], Estimate(1.0, 2.5)),
    # even count: x ∈ [0, 3] among 1, 2, 4 gives medians 1.5 … 2.5 (hand-enumerated)
    ([Estimate.number(1.0), Estimate.number(2.0), Estimate(0.0, 3.0), Estimate.number(4.0)], Estimate(1.5, 2.5)),
    # two lower bounds reach the middle: only a lower bound is left
    ([Estimate.number(1.0), Estimate(2.0, INF), Estimate(5.0, INF)], Estimate(2.0, INF)),
], ids=["numbers-odd", "numbers-even", "bounds-at-the-ends", "bound-in-the-middle", "bound-in-the-middle-even",
        "lower-bounds-in-the-middle"])
def test_median_estimate(estimates, median):
    assert median_estimate(estimates) == median


def test_median_estimate_brute_force_over_hidden_values():
    """Every median the bounds allow lies in the estimate, and its ends are attained."""
    ests = [Estimate.number(1.0), Estimate(0.0, 2.5), Estimate(1.5, 6.0), Estimate.number(4.0), Estimate(3.0, INF)]
    m = median_estimate(ests)
    axes = [np.linspace(e.lo, min(e.hi, 50.0), 11) for e in ests]
    medians = np.median(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(ests)), axis=1)
    assert medians.min() == pytest.approx(m.lo) and medians.max() == pytest.approx(m.hi)


def test_median_estimate_of_nothing():
    with pytest.raises(ValueError):
        median_estimate([])


# ------------------------------------------------------------------ saturation fit

@pytest.mark.parametrize("r_inf,eta_sat", [(1.0, 2e-6), (0.3, 5e-7), (1.7, 1e-5), (-0.8, 3e-6), (2.5, 3e-8)],
                         ids=["mid", "low", "high", "negative", "knee-below-grid"])
def test_fit_saturation_recovers_exact_data(r_inf, eta_sat):
    fit = fit_saturation(GRID, sat(GRID, r_inf, eta_sat))
    assert isinstance(fit, SaturationFit)
    assert fit.r_inf == pytest.approx(r_inf, rel=1e-6, abs=0)
    assert fit.eta_sat == pytest.approx(eta_sat, rel=1e-6, abs=0)
    assert fit.rel_residual < 1e-9
    assert fit.residual == pytest.approx(fit.rel_residual * abs(r_inf), rel=1e-9, abs=1e-15)
    assert fit.n == len(GRID)


@settings(max_examples=40, deadline=None)
@given(r_inf=st.floats(0.05, 2.0), log_sat=st.floats(math.log(3e-7), math.log(3e-5)))
def test_fit_saturation_property(r_inf, log_sat):
    eta_sat = math.exp(log_sat)
    fit = fit_saturation(GRID, sat(GRID, r_inf, eta_sat))
    assert fit.r_inf == pytest.approx(r_inf, rel=1e-6, abs=0)
    assert fit.eta_sat == pytest.approx(eta_sat, rel=1e-6, abs=0)
    assert fit.rel_residual < 1e-7


def test_fit_saturation_unordered_input_and_small_noise():
    rng = np.random.default_rng(0)
    etas = np.array(GRID)[::-1]
    clean = np.array(sat(etas, 1.0, 3e-6))
    noisy = clean + rng.normal(0.0, 0.005, clean.size)
    fit = fit_saturation(list(etas), list(noisy))
    assert fit.r_inf == pytest.approx(1.0, rel=0.03, abs=0)
    assert fit.eta_sat == pytest.approx(3e-6, rel=0.1, abs=0)
    assert 0.0 < fit.residual < 0.01
    assert fit.rel_residual == pytest.approx(fit.residual / abs(fit.r_inf), rel=1e-12, abs=0)


def test_fit_saturation_is_the_least_squares_optimum():
    """No point of a dense (R_∞, η_sat) grid around the fit has a smaller residual."""
    rng = np.random.default_rng(1)
    etas = np.array(GRID)
    y = np.array(sat(etas, 0.7, 4e-6)) + rng.normal(0.0, 0.02, etas.size)
    fit = fit_saturation(etas, y)
    ri = fit.r_inf * np.linspace(0.9, 1.1, 201)[:, None, None]
    es = fit.eta_sat * np.geomspace(0.8, 1.25, 201)[None, :, None]
    rms = np.sqrt(np.mean((y - ri * -np.expm1(-etas / es)) ** 2, axis=-1))
    assert fit.residual == pytest.approx(math.sqrt(np.mean((y - fit.r_inf * -np.expm1(-etas / fit.eta_sat)) ** 2)),
                                         rel=1e-9)
    assert rms.min() >= fit.residual * (1 - 1e-9)


def test_fit_saturation_linear_response_reaches_the_upper_search_bound():
    fit = fit_saturation(GRID, [3e4 * e for e in GRID])  # no saturation
    lo, hi = saturation_search_bounds(GRID)
    assert SAT_SPAN == 100.0 and (lo, hi) == pytest.approx((2e-9, 5e-3))
    assert fit.eta_sat == pytest.approx(hi, rel=1e-3, abs=0)
    assert support(GRID, fit.eta_sat) == (8, 0)
    assert np.isfinite(fit.r_inf) and fit.residual < 1e-3


def test_fit_saturation_zero_response_has_infinite_rel_residual():
    fit = fit_saturation(GRID, [0.0] * len(GRID))
    assert fit.r_inf == 0.0 and fit.residual == 0.0 and fit.rel_residual == INF


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


# ------------------------------------------------------------------ A1: brackets, bounds, extension

def fit_of(etas, eta_sat, r_inf=1.0):
    fit = fit_saturation(etas, sat(etas, r_inf, eta_sat))
    assert fit.eta_sat == pytest.approx(eta_sat, rel=1e-5, abs=0)
    return fit


def test_support_counts_strictly():
    assert support(GRID, 3e-6) == (4, 4)
    assert support(GRID, 2e-6) == (3, 4)            # an LR equal to η_sat is on neither side
    assert support(GRID, 1e-9) == (0, 8) and support(GRID, 1.0) == (8, 0)


def test_bracketed_fit_is_a_number_and_needs_no_extension():
    fit = fit_of(GRID, 3e-6)
    assert saturation_estimate(GRID, fit) == Estimate.number(fit.eta_sat)
    assert next_saturation_lr(GRID, fit) is None


def test_exactly_two_on_each_side_is_bracketed():
    etas = (1e-6, 2e-6, 1e-5, 2e-5)
    fit = fit_of(etas, 5e-6)
    assert support(etas, fit.eta_sat) == (2, 2)
    assert saturation_estimate(etas, fit).value == pytest.approx(5e-6, rel=1e-5, abs=0)
    assert next_saturation_lr(etas, fit) is None


def test_knee_below_the_grid_gives_an_upper_bound_and_extends_downwards():
    fit = fit_of(GRID, 3e-8)
    assert support(GRID, fit.eta_sat) == (0, 8)
    assert saturation_estimate(GRID, fit) == Estimate(0.0, 2e-7)     # η_sat < the lowest LR above the fit
    assert SAT_BELOW[:3] == (1e-7, 5e-8, 2e-8)
    assert next_saturation_lr(GRID, fit) == 1e-7
    assert next_saturation_lr(GRID + (1e-7,), fit) == 5e-8           # measured
    assert next_saturation_lr(GRID, fit, tried=(1e-7,)) == 5e-8      # tried: e.g. a run that diverged
    assert next_saturation_lr(GRID + (1e-7,), fit, tried=(5e-8,)) == 2e-8


def test_one_lr_below_the_fit_is_still_a_bound():
    etas = GRID + (1e-7,)
    fit = fit_of(etas, 1.5e-7)
    assert support(etas, fit.eta_sat) == (1, 8)
    assert saturation_estimate(etas, fit) == Estimate(0.0, 2e-7)
    assert next_saturation_lr(etas, fit) == 5e-8
    etas = etas + (5e-8,)                                            # now bracketed: 5e-8, 1e-7 below it
    fit = fit_of(etas, 1.5e-7)
    assert saturation_estimate(etas, fit).value == pytest.approx(1.5e-7, rel=1e-5, abs=0)
    assert next_saturation_lr(etas, fit) is None


def test_knee_below_an_exhausted_extension_stays_a_bound():
    etas = tuple(sorted(GRID + SAT_BELOW))
    fit = fit_of(etas, 5e-10)
    assert saturation_estimate(etas, fit) == Estimate(0.0, min(SAT_BELOW))
    assert next_saturation_lr(etas, fit) is None
    assert next_saturation_lr(GRID, fit, tried=SAT_BELOW) is None    # every step tried (diverged): spent


def test_knee_above_the_grid_gives_a_lower_bound_and_extends_upwards():
    fit = fit_of(GRID, 3e-5)
    assert support(GRID, fit.eta_sat) == (7, 1)
    assert saturation_estimate(GRID, fit) == Estimate(2e-5, INF)     # η_sat > the largest LR below the fit
    assert SAT_ABOVE == (1e-4, 2e-4, 5e-4)
    assert next_saturation_lr(GRID, fit) == 1e-4
    assert next_saturation_lr(GRID, fit, tried=(1e-4,)) == 2e-4
    etas = GRID + (1e-4,)
    fit = fit_of(etas, 3e-5)
    assert saturation_estimate(etas, fit).value == pytest.approx(3e-5, rel=1e-5, abs=0)
    assert next_saturation_lr(etas, fit) is None


def test_knee_above_an_exhausted_extension_stays_a_bound():
    etas = GRID + SAT_ABOVE
    fit = fit_of(etas, 1e-3)
    assert support(etas, fit.eta_sat) == (11, 0)
    assert saturation_estimate(etas, fit) == Estimate(5e-4, INF)
    assert next_saturation_lr(etas, fit) is None


def test_extension_goes_below_before_above():
    etas = (1e-6, 2e-6, 5e-6)                       # a fit in the middle: one LR on each side
    fit = fit_of(etas, 1.5e-6)
    assert support(etas, fit.eta_sat) == (1, 2)
    assert next_saturation_lr(etas, fit) == 1e-7
    fit = fit_of(etas, 3e-6)
    assert support(etas, fit.eta_sat) == (2, 1)
    assert next_saturation_lr(etas, fit) == 1e-4


# ------------------------------------------------------------------ reduced field

def test_reduced_field_of_a_number():
    assert ETA_REF == 2e-5
    assert reduced_field(Estimate.number(2e-6)).value == pytest.approx(10.0, rel=1e-12, abs=0)
    assert reduced_field(Estimate.number(2e-6), eta_ref=1e-5).value == pytest.approx(5.0, rel=1e-12, abs=0)


def test_reduced_field_inverts_bounds():
    h = reduced_field(Estimate(0.0, 2e-7))          # η_sat < 2e-7  ⇒  H > 100
    assert h.lo == pytest.approx(100.0, rel=1e-12, abs=0) and h.hi == INF and h.text("H") == "H > 100"
    h = reduced_field(Estimate(5e-5, INF))          # η_sat > 5e-5  ⇒  H < 0.4
    assert h.lo == 0.0 and h.hi == pytest.approx(0.4, rel=1e-12, abs=0)
    h = reduced_field(Estimate(1e-6, 4e-6))
    assert (h.lo, h.hi) == pytest.approx((5.0, 20.0), rel=1e-12, abs=0)


def test_reduced_field_validation():
    for bad in (0.0, -1e-5, INF, math.nan):
        with pytest.raises(ValueError):
            reduced_field(Estimate.number(1e-6), eta_ref=bad)


# ------------------------------------------------------------------ CV and the C9 interval engine

def test_cv():
    v = [1.0, 2.0, 3.0, 4.0]
    assert cv(v) == pytest.approx(np.std(v, ddof=1) / 2.5, rel=1e-12, abs=0)
    assert cv([5.0, 5.0]) == 0.0
    assert math.isnan(cv([0.0, 0.0]))
    with pytest.raises(ValueError):
        cv([1.0])
    with pytest.raises(ValueError):
        cv([1.0, np.nan])


def box_oracle(estimates, points=81):
    """(min, max) of the CV over a dense grid of the (bounded) box, numpy brute force."""
    axes = [np.linspace(e.lo, e.hi, points) for e in estimates]
    v = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(estimates))
    c = np.std(v, axis=1, ddof=1) / np.mean(v, axis=1)
    return float(c.min()), float(c.max())


@pytest.mark.parametrize("estimates, regime", [
    ([Estimate.number(10.0), Estimate(10.5, 11.0), Estimate(9.0, 9.6)], "all-below"),
    ([Estimate.number(10.0), Estimate(30.0, 40.0), Estimate(2.0, 3.0)], "all-above"),
    ([Estimate.number(10.0), Estimate(9.0, 30.0), Estimate(12.0, 13.0)], "straddling"),
    ([Estimate(9.0, 11.0), Estimate(10.5, 14.0), Estimate(12.0, 13.0)], "straddling"),
    ([Estimate(8.0, 12.0), Estimate(9.0, 11.0), Estimate(10.5, 20.0)], "straddling"),   # one value fits every box
], ids=["all-below-0.10", "all-above-0.10", "straddling", "straddling-no-common-value", "straddling-common-value"])
def test_cv_range_against_a_brute_force_box(estimates, regime):
    lo, hi = cv_range(estimates)
    grid_lo, grid_hi = box_oracle(estimates)
    assert hi == pytest.approx(grid_hi, rel=1e-9, abs=0)               # the max is at a vertex: on the grid
    assert lo <= grid_lo + 1e-12                                # the minimiser does at least as well …
    assert lo == pytest.approx(grid_lo, abs=2e-3)               # … as a grid this fine allows
    assert {"all-below": hi <= 0.10, "all-above": lo > 0.10, "straddling": lo <= 0.10 < hi}[regime]


def test_cv_range_of_numbers_is_the_cv():
    ests = [Estimate.number(v) for v in (8.0, 10.0, 13.0)]
    assert cv_range(ests) == (pytest.approx(cv([8.0, 10.0, 13.0]), rel=1e-12, abs=0),) * 2


def test_cv_range_common_value_has_zero_minimum():
    assert cv_range([Estimate(1.0, 3.0), Estimate(2.0, 5.0)])[0] == 0.0


@pytest.mark.parametrize("n", [2, 3, 5])
def test_cv_range_unbounded_side_tends_to_its_limit(n):
    """One value unbounded above among numbers: CV → √n (its std/mean as it dominates)."""
    ests = [Estimate.number(float(i + 1)) for i in range(n - 1)] + [Estimate(2.0, INF)]
    lo, hi = cv_range(ests)
    assert hi == pytest.approx(math.sqrt(n), rel=1e-6, abs=0)
    numbers = [float(i + 1) for i in range(n - 1)]
    grid = np.linspace(2.0, 40.0, 1001)      # the minimum lies near the numbers
    oracle = min(cv(numbers + [x]) for x in grid)
    assert lo == pytest.approx(oracle, abs=2e-3) and lo <= oracle + 1e-12


def test_cv_range_upper_bounds_only_reach_sqrt_n_max():
    """H_FT < x for every model (η_sat bounded below): a value may approach 0 while another stays."""
    ests = [Estimate(0.0, 1.0), Estimate(0.0, 2.0), Estimate.number(1.0)]
    lo, hi = cv_range(ests)
    assert lo == 0.0
    assert hi == pytest.approx(box_oracle(ests)[1], rel=1e-9, abs=0)


def test_cv_range_every_estimate_an_upper_bound():
    """Regression: the all-zero corner has no CV (NaN); Python's max() kept it and C9 read CV ≤ NaN as a fail."""
    ests = [Estimate(0.0, 1.0), Estimate(0.0, 2.0)]
    lo, hi = cv_range(ests)
    assert lo == 0.0
    assert hi == pytest.approx(math.sqrt(2.0), rel=1e-9, abs=0)          # at (0, 2): std √2, mean 1


def test_cv_range_needs_two():
    with pytest.raises(ValueError):
        cv_range([Estimate.number(1.0)])


# ------------------------------------------------------------------ Spearman

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


def test_spearman_infinities_rank_last_and_first():
    assert spearman([1, 2, 3, 4], [1.0, 5.0, 7.0, INF]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [-INF, 5.0, INF, 7.0]) == pytest.approx(0.8)    # ranks 1, 2, 4, 3
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, 2, 3], [1.0, math.nan, 2.0])


def test_spearman_perfect_and_degenerate():
    assert spearman([1, 2, 3], [1, 4, 9]) == 1.0
    assert spearman([1, 2, 3], [9, 4, 1]) == -1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [2, 2, 2]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


# ------------------------------------------------------------------ permutation p-values

def ranks(v):
    """Average ranks (1-based), numpy only."""
    v = np.asarray(v, dtype=np.float64)
    out = np.empty(v.size)
    for i, x in enumerate(v):
        out[i] = np.sum(v < x) + (np.sum(v == x) + 1) / 2
    return out


def brute_force_p(x, y):
    """Two-sided p over all n! orderings of y: 2·min(P(ρ ≤ ρ_obs), P(ρ ≥ ρ_obs)), capped at 1.

    With distinct values the null distribution is symmetric and this equals P(|ρ| ≥ |ρ_obs|).
    """
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt((rx @ rx) * (ry @ ry))
    obs = rx @ ry / scale
    perms = np.array(list(itertools.permutations(range(len(y)))))
    null = ry[perms] @ rx / scale
    tol = 1e-12
    p = 2 * min(np.mean(null <= obs + tol), np.mean(null >= obs - tol))
    return min(p, 1.0), float(np.mean(np.abs(null) >= abs(obs) - tol))


@settings(max_examples=40, deadline=None)
@given(st.permutations([1.0, 2.0, 3.0]), st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3, unique=True))
def test_permutation_p_with_three_models_is_never_below_a_third(order, x):
    p = permutation_p(x, order)
    assert p >= 1 / 3 - 1e-12
    assert p == pytest.approx(1 / 3 if abs(spearman(x, order)) == 1.0 else 1.0, rel=1e-12)


@pytest.mark.parametrize("x, y", [
    ([1, 2, 3, 4], [1, 3, 2, 4]),
    ([1, 2, 3, 4, 5], [5, 2, 20, 8, 30]),
    ([0.3, 0.1, 0.9, 0.5, 0.7, 0.2], [1, 2, 3, 4, 5, 6]),
    ([3, 1, 4, 1.5, 5, 9, 2.6], [2, 7, 1, 8, 2.8, 1.8, 2.9]),
    (list(range(8)), [0, 2, 1, 3, 5, 4, 7, 6]),
    ([1, 2, 2, 3, 5], [1, 1, 2, 3, 4]),                  # ties on both sides
    ([1, 2, 3, 4, 5, 6], [1, 1, 1, 2, 2, 3]),            # asymmetric ties: a skewed null distribution
], ids=["n4", "n5", "n6", "n7", "n8", "n5-ties", "n6-asymmetric-ties"])
def test_permutation_p_is_exact_for_small_n(x, y):
    assert len(x) <= PERMUTATION_EXACT_MAX
    two_min, abs_rule = brute_force_p(x, y)
    assert permutation_p(x, y) == pytest.approx(two_min, rel=1e-12, abs=0)
    if len(set(x)) == len(x) and len(set(y)) == len(y):
        assert two_min == pytest.approx(abs_rule, rel=1e-12, abs=0)


def test_permutation_p_is_seeded_and_close_to_exact_above_eight():
    x = [0.1, 0.5, 0.2, 0.9, 0.4, 0.8, 0.3, 0.7, 0.6]
    y = [1, 3, 2, 9, 5, 6, 4, 8, 7]
    p = permutation_p(x, y)
    assert permutation_p(x, y) == p                                 # same random orderings every time
    exact, _ = brute_force_p(x, y)                                  # 9! = 362,880 orderings
    assert 0.0 < exact < 0.05
    se = math.sqrt(exact * (1 - exact) / 100_000)
    assert p == pytest.approx(exact, abs=5 * se + 1e-5)


def test_permutation_p_undefined_where_rho_is():
    assert math.isnan(permutation_p([1, 1, 1], [1, 2, 3]))
    assert math.isnan(permutation_p([1], [2]))


# ------------------------------------------------------------------ bootstrap and intervals

def test_bootstrap_indices_are_seeded_with_shape_b_by_n():
    idx = bootstrap_indices(7)
    assert idx.shape == (BOOTSTRAP_B, 7) and idx.min() >= 0 and idx.max() <= 6
    assert np.array_equal(idx, bootstrap_indices(7))
    assert np.array_equal(idx, np.random.default_rng(BOOTSTRAP_SEED).integers(0, 7, size=(BOOTSTRAP_B, 7)))
    assert set(np.unique(idx)) == set(range(7))
    assert bootstrap_indices(4, b=5).shape == (5, 4)
    other = bootstrap_indices(7, rng=np.random.default_rng(BOOTSTRAP_SEED + 1))
    assert not np.array_equal(idx, other)
    with pytest.raises(ValueError):
        bootstrap_indices(0)


def test_percentile_interval_ignores_none_and_nan():
    values = list(range(101))
    assert percentile_interval(values) == pytest.approx((2.5, 97.5))
    assert percentile_interval(values + [None, math.nan, None]) == pytest.approx((2.5, 97.5))
    assert percentile_interval(values, level=0.5) == pytest.approx((25.0, 75.0))
    assert percentile_interval([3.0]) == (3.0, 3.0)
    assert percentile_interval([None, math.nan]) is None
    assert percentile_interval([]) is None


# ------------------------------------------------------------------ A2: η_c from per-context brackets

def test_kth_smallest():
    assert [kth_smallest(n) for n in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_critical_from_brackets_hand_cases():
    brackets = [(1.0, 1.005), (2.0, 2.01), (0.5, 0.502), (3.0, 3.3)]     # k = 2: lo 1.0, hi 1.005
    res = critical_from_brackets(brackets)
    assert res == CriticalLR(1.005, (1.0, 1.005), True)
    assert res.estimate() == Estimate.number(1.005)
    coarse = critical_from_brackets([(1.0, 1.04), (2.0, 2.01), (0.5, 0.502), (3.0, 3.3)])
    assert coarse.eta_c == 1.04 and not coarse.converged
    assert coarse.estimate() == Estimate(1.0, 1.04)
    assert critical_from_brackets([(1.0, 1.04)], rtol=0.05).converged


def test_critical_from_brackets_bounds():
    never = critical_from_brackets([(1.0, INF), (2.0, INF), (0.1, 0.101)])     # k = 2: fewer than half flip
    assert never.eta_c is None and never.bracket == (1.0, INF) and not never.converged
    assert never.estimate() == Estimate(1.0, INF)
    always = critical_from_brackets([(0.0, 1e-9), (0.0, 2e-9), (5.0, 5.01)])   # half flip at every LR probed
    assert always.eta_c == 2e-9 and always.bracket == (0.0, 2e-9) and not always.converged
    assert always.estimate() == Estimate(0.0, 2e-9)
    with pytest.raises(ValueError):
        critical_from_brackets([])


def flips(thresholds, lr):
    """Fraction of contexts that flip at ``lr``: context i flips iff lr ≥ θ_i (monotone in η)."""
    return float(np.mean([lr >= t for t in thresholds]))


def reference_bisection(thresholds, grid=GRID, rtol=CRITICAL_RTOL):
    """The pre-A2 η_c: scan the grid upwards for the first LR where ≥ half flip, bisect in ln η."""
    lo = None
    for g in sorted(grid):
        if flips(thresholds, g) >= 0.5:
            hi = g
            break
        lo = g
    assert lo is not None, "the reference needs η_c inside the grid"
    while hi / lo - 1 > rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if flips(thresholds, mid) >= 0.5 else (mid, hi)
    return hi


def context_bracket(theta, rtol, bracket=None, grid=GRID):
    """A per-context bisection: (lo, hi) with no flip at lo (lo < θ) and a flip at hi (θ ≤ hi)."""
    if bracket is None:
        lo = max((g for g in grid if g < theta), default=0.0)
        hi = min((g for g in grid if g >= theta), default=INF)
    else:
        lo, hi = bracket
    while lo > 0 and math.isfinite(hi) and hi / lo - 1 > rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if mid >= theta else (mid, hi)
    return lo, hi


def brackets_to_precision(thresholds):
    """Every context to CONTEXT_RTOL; those between the k-th ends to CRITICAL_RTOL, then halving."""
    brackets = [context_bracket(t, CONTEXT_RTOL) for t in thresholds]
    rtol = CRITICAL_RTOL
    for _ in range(4):
        res = critical_from_brackets(brackets)
        if res.converged:
            break
        lo, hi = res.bracket
        brackets = [context_bracket(t, rtol, b) if b[0] < hi and b[1] > lo else b
                    for t, b in zip(thresholds, brackets)]
        rtol /= 2
    return brackets


@pytest.mark.parametrize("thresholds", [
    [7.3e-6 * f for f in (0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0, 100.0)],
    [3e-7, 4e-7, 8e-7, 2.2e-5, 4.4e-5],
    [1.1e-6, 1.105e-6, 1.11e-6, 1.2e-6],        # deciders within 1% of each other
    [4.1e-6],
], ids=["ten-contexts", "five-contexts", "interleaved-deciders", "one-context"])
def test_critical_from_brackets_matches_the_reference_bisection(thresholds):
    truth = sorted(thresholds)[kth_smallest(len(thresholds)) - 1]       # the smallest LR flipping ≥ half
    reference = reference_bisection(thresholds)
    res = critical_from_brackets(brackets_to_precision(thresholds))
    assert truth <= reference <= truth * (1 + CRITICAL_RTOL)
    assert truth <= res.eta_c <= truth * (1 + CRITICAL_RTOL)
    assert abs(math.log(res.eta_c / reference)) <= math.log1p(CRITICAL_RTOL)
    assert flips(thresholds, res.eta_c) >= 0.5 > flips(thresholds, res.bracket[0])
    assert res.converged


log_lr = st.floats(math.log(2.01e-7), math.log(4.99e-5))


@settings(max_examples=60, deadline=None)
@given(st.lists(log_lr, min_size=1, max_size=12))
def test_kth_smallest_eta_i_is_the_smallest_lr_where_half_flip(logs):
    thresholds = [math.exp(x) for x in logs]
    truth = sorted(thresholds)[kth_smallest(len(thresholds)) - 1]
    assert flips(thresholds, truth) >= 0.5 and flips(thresholds, truth * (1 - 1e-12)) < 0.5
    brackets = brackets_to_precision(thresholds)
    assert all(lo < t <= hi for t, (lo, hi) in zip(thresholds, brackets))
    assert all(hi / lo - 1 <= CONTEXT_RTOL * (1 + 1e-9) for lo, hi in brackets)
    res = critical_from_brackets(brackets)
    lo, hi = res.bracket
    assert lo < truth <= hi
    assert res.eta_c == hi and hi <= truth * (1 + CRITICAL_RTOL) * (1 + 1e-9)
    assert flips(thresholds, hi) >= 0.5 > flips(thresholds, lo)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(log_lr, st.floats(0.0, 1.0), st.floats(0.0, 0.5)), min_size=1, max_size=12))
def test_any_valid_brackets_contain_eta_c(items):
    """Whatever the widths, the k-th smallest ends bracket the k-th smallest threshold."""
    thresholds = [math.exp(x) for x, _, _ in items]
    brackets = [(math.exp(x - w * s), math.exp(x + w * (1 - s))) for x, s, w in items]
    brackets = [(lo if lo < math.exp(x) else math.exp(x) * 0.999, hi) for (lo, hi), (x, _, _) in zip(brackets, items)]
    truth = sorted(thresholds)[kth_smallest(len(thresholds)) - 1]
    lo, hi = critical_from_brackets(brackets).bracket
    assert lo < truth <= hi * (1 + 1e-12)


# ------------------------------------------------------------------ A3: blind q on Φ

@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3),
                       st.tuples(st.floats(-50.0, -1e-6), st.floats(-5.0, 5.0)), min_size=1, max_size=10),
       st.integers(1, 500))
def test_blind_q_is_a_positive_lr_for_every_context_used(data, steps):
    phi0 = {c: p for c, (p, _) in data.items()}
    r = {c: rr for c, (_, rr) in data.items()}
    res = blind_q(phi0, r, steps)
    assert set(res.used) == {c for c in data if r[c] > 0}
    assert set(res.excluded) == {c for c in data if r[c] <= 0}
    assert all(q > 0 for q in res.per_context.values())
    for c, q in res.per_context.items():
        assert q == -phi0[c] / (steps * r[c])
    if res.per_context:
        assert res.q == pytest.approx(float(np.median(list(res.per_context.values()))), rel=1e-12) and res.q > 0
    else:
        assert res.q is None


def test_blind_q_median_and_exclusion():
    phi0 = {"a": -2.0, "b": -3.0, "c": -1.0, "d": -5.0, "e": -1.0}
    r = {"a": 1.0, "b": 0.5, "c": 2.0, "d": 0.0, "e": -1.0}
    res = blind_q(phi0, r, steps=10)
    assert isinstance(res, BlindQ)
    assert res.per_context == {"a": 2.0 / 10, "b": 3.0 / 5, "c": 1.0 / 20}
    assert res.q == pytest.approx(0.2, rel=1e-12, abs=0)                   # median of 0.2, 0.6, 0.05
    assert res.used == ("a", "b", "c") and res.excluded == ("d", "e")


def test_blind_q_all_excluded_and_validation():
    res = blind_q({"a": -1.0, "b": -2.0}, {"a": 0.0, "b": -0.1}, steps=5)
    assert res.q is None and res.used == () and res.excluded == ("a", "b")
    with pytest.raises(ValueError, match="different contexts"):
        blind_q({"a": -1.0}, {"b": 1.0}, steps=5)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            blind_q({"a": -1.0}, {"a": 1.0}, steps=steps)
    with pytest.raises(ValueError, match="non-finite"):
        blind_q({"a": -1.0}, {"a": math.nan}, steps=5)


@pytest.mark.parametrize("phi0", [0.0, 0.3], ids=["zero", "positive"])
def test_blind_q_refuses_a_non_negative_phi0(phi0):
    with pytest.raises(ValueError, match="Φ_0"):
        blind_q({"a": -1.0, "b": phi0}, {"a": 1.0, "b": -1.0}, steps=5)     # even where r ≤ 0


# ------------------------------------------------------------------ leave-one-out (leakage guard)

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
        assert p.k == pytest.approx(k_true, rel=1e-12, abs=0)
        assert p.eta_hat == pytest.approx(p.eta_c, rel=1e-12, abs=0)
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
    with pytest.raises(ValueError, match="η_c"):
        leave_one_out({"a": 1.0, "b": 2.0}, lambda m: None)


# ------------------------------------------------------------------ A3: the per-context check

def test_per_context_check_against_numpy():
    k = 2.0
    q_i = {"a": 1e-6, "b": 3e-6, "c": 5e-7, "d": 2e-6, "e": 4e-6, "f": 1e-6}
    eta_i = {"a": 2e-6, "b": 3e-6, "c": 4e-6, "d": None, "e": INF, "g": 1e-6}    # common: a, b, c
    res = per_context_check(k, q_i, eta_i)
    assert isinstance(res, ContextCheck) and res.n == 3
    expected = {"a": math.log(1.0), "b": math.log(2.0), "c": math.log(0.25)}
    assert res.log_ratio == pytest.approx(expected, abs=1e-12)
    a = np.abs([0.0, math.log(2.0), math.log(0.25)])
    assert res.median == pytest.approx(float(np.median(a)), rel=1e-12)
    assert res.median == pytest.approx(math.log(2.0), rel=1e-12, abs=0)
    assert res.p90 == pytest.approx(float(np.percentile(a, 90)), rel=1e-12)
    assert res.p90 == pytest.approx(math.log(2.0) + 0.8 * (math.log(4.0) - math.log(2.0)), rel=1e-12)


def test_per_context_check_exact_predictor_and_no_common_context():
    q_i = {c: 1e-6 * (i + 1) for i, c in enumerate("abcdefghij")}
    res = per_context_check(3.0, q_i, {c: 3.0 * q for c, q in q_i.items()})
    assert res.n == 10 and res.median == pytest.approx(0.0, abs=1e-12) and res.p90 == pytest.approx(0.0, abs=1e-12)
    assert per_context_check(3.0, {"a": 1e-6}, {"b": 1e-6}) is None
    assert per_context_check(3.0, {"a": 1e-6}, {"a": None}) is None
    assert per_context_check(3.0, {}, {}) is None
