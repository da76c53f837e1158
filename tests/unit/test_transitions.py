"""Unit tests of phantom.transitions (SPEC §5 definitions)."""
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phantom.trajectory import SERIES, Trajectory
from phantom.transitions import (
    Analysis,
    Jump,
    analyse,
    born_flip_step,
    failure_modes,
    is_silent_failure,
    is_smooth,
    jump,
    jumps,
    rank_flip_step,
)

T = 30


def make_traj(steps=T, g_max=0.5, diverged_at=None, n=None, **series):
    """Synthetic run: falling loss, g never overtakes c, zero signal and drag, flat Φ."""
    n = steps + 1 if n is None else n
    data = {name: np.zeros(n) for name in SERIES}
    data["loss"] = np.linspace(3.0, 2.0, n)
    data["p_g"] = np.full(n, 0.1)
    data["p_c"] = np.full(n, 0.5)
    data.update({k: np.asarray(v, dtype=np.float64) for k, v in series.items()})
    return Trajectory(series=data,
                      meta={"steps": steps, "g_max": g_max, "diverged_at": diverged_at})


def figure3_phi(jump_size=0.3, seed=0):
    """Nine quiet steps (|increment| ~ 1e-3), one jump at t = 9, noisy plateau; T = 30."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(5e-4, 1.5e-3, T) * rng.choice([-1.0, 1.0], T)
    noise[9] = jump_size
    return np.concatenate([[-0.1], -0.1 + np.cumsum(noise)])


def smooth_rise():
    t = np.arange(T + 1)
    return -0.2 + 0.4 * (1.0 - np.exp(-t / 5.0))


def step_phi(t_jump, size=0.3, n=T + 1):
    """Exactly flat, then one step of ``size`` between t_jump and t_jump + 1."""
    return np.where(np.arange(n) > t_jump, size, 0.0)


# --- Figure 3 shapes -------------------------------------------------------------------

def test_figure3_jump_shape():
    phi = figure3_phi()
    j = jump(phi)
    assert j.t_star == 9
    assert j.size == pytest.approx(0.3)
    assert j.ratio >= 10
    assert j.n_quiescent == 9
    assert jumps(make_traj(phi=phi))
    assert born_flip_step(phi) == j.t_star + 1
    assert not is_smooth(phi)


def test_continuous_rise_is_not_a_jump():
    phi = smooth_rise()
    j = jump(phi)
    assert j.t_star == 0 and j.ratio == 1.0
    assert not jumps(make_traj(phi=phi))
    assert is_smooth(phi)
    assert born_flip_step(phi) == 4  # 1 − exp(−t/5) > 1/2 first at t = 4


# --- jump ratio edge cases -------------------------------------------------------------

def test_maximum_at_step_zero_gives_ratio_one():
    j = jump([0.0, 1.0, 1.5, 1.7, 1.8])
    assert j == Jump(ratio=1.0, t_star=0, size=1.0, n_quiescent=0)


def test_flat_series_ratio_one_no_jump():
    assert jump(np.full(T + 1, 0.2)) == Jump(1.0, 0, 0.0, 0)
    assert not jumps(make_traj(phi=np.full(T + 1, 0.2)))


@pytest.mark.parametrize("series", [[], [0.4]])
def test_fewer_than_two_points(series):
    assert jump(series) == Jump(1.0, 0, 0.0, 0)


def test_ties_take_first_index():
    assert jump([0.0, 0.1, 0.1, 0.2, 0.3]).t_star == 0
    assert jump([0.0, 0.0, 0.5, 1.0]).t_star == 1


def test_exactly_flat_then_jump_is_infinite_ratio():
    phi = step_phi(9)
    j = jump(phi)
    assert j.ratio == math.inf and j.t_star == 9 and j.n_quiescent == 9
    assert jumps(make_traj(phi=phi))
    assert born_flip_step(phi) == 10


def test_size_threshold_depends_on_g_max():
    phi = step_phi(9, size=0.04)
    assert jump(phi).ratio >= 10
    assert not jumps(make_traj(phi=phi, g_max=0.0))   # 0.04 < 0.05
    assert jumps(make_traj(phi=phi, g_max=0.9))       # 0.04 ≥ 0.05 · 0.19


def test_ratio_of_exactly_ten_jumps():
    # Dyadic steps 1/16 (x3) then 10/16: J = 10 exactly, which counts (J ≥ 10).
    phi = np.concatenate([np.arange(4) / 16, np.full(T - 3, 13 / 16)])
    assert jump(phi).ratio == 10.0
    assert jumps(make_traj(phi=phi)) and not is_smooth(phi)


def test_jump_at_last_update_does_not_count():
    assert not jumps(make_traj(phi=step_phi(T - 1)))  # t* = T − 1
    assert jumps(make_traj(phi=step_phi(T - 2)))      # t* = T − 2


def test_diverged_run_never_jumps_nor_fails_silently():
    traj = make_traj(phi=figure3_phi(), diverged_at=20)
    assert not jumps(traj)
    assert not is_silent_failure(traj)
    assert failure_modes(traj) == frozenset()


def test_quiescent_count():
    # steps 0.01, 0.05, 0.02, 0.5: quiet below 0.05 → t = 0, 2
    assert jump(np.cumsum([0.0, 0.01, 0.05, 0.02, 0.5])).n_quiescent == 2


# --- flips -----------------------------------------------------------------------------

@pytest.mark.parametrize("phi, expected", [
    ([-0.1, -0.05, 0.0, 0.02, 0.1], 3),   # Φ = 0 is not a flip
    ([-0.3, -0.2, -0.1, 0.0], None),
    ([0.1, -0.1, 0.2], 0),
    ([], None),
])
def test_born_flip_step(phi, expected):
    assert born_flip_step(phi) == expected


@pytest.mark.parametrize("p_g, p_c, expected", [
    ([0.1, 0.2, 0.3], [0.5, 0.3, 0.3], None),  # a tie is not a flip
    ([0.1, 0.4, 0.2], [0.5, 0.3, 0.6], 1),
    ([0.6, 0.1], [0.2, 0.5], 0),
])
def test_rank_flip_step(p_g, p_c, expected):
    assert rank_flip_step(p_g, p_c) == expected


def test_flip_steps_are_python_ints():
    assert type(born_flip_step(np.array([-1.0, 1.0]))) is int
    assert type(rank_flip_step(np.array([0.1, 0.9]), np.array([0.5, 0.1]))) is int


# --- silent failure --------------------------------------------------------------------

def test_silent_failure_falling_loss_no_flip():
    assert is_silent_failure(make_traj())


def test_loss_rise_breaks_silent_failure():
    loss = np.linspace(3.0, 2.0, T + 1)
    loss[10] = loss[9] + 1e-5
    assert not is_silent_failure(make_traj(loss=loss))


def test_loss_tolerance_is_respected():
    loss = np.linspace(3.0, 2.0, T + 1)
    loss[10] = loss[9] + 5e-7
    assert is_silent_failure(make_traj(loss=loss))


def test_rank_flip_breaks_silent_failure():
    p_g = np.full(T + 1, 0.1)
    p_g[-1] = 0.6
    assert not is_silent_failure(make_traj(p_g=p_g))


def test_unchanged_loss_is_not_silent_failure():
    loss = np.full(T + 1, 3.0)  # non-increasing, but L_T == L_0
    assert not is_silent_failure(make_traj(loss=loss))


# --- failure modes ---------------------------------------------------------------------

BIG_SIGNAL = np.full(T + 1, -0.3)        # |S| > 0.1 (1 − 0.5²) = 0.075
FALLING_DRAG = np.linspace(0.0, -0.05, T + 1)


@pytest.mark.parametrize("series, expected", [
    ({}, {"kinematic"}),
    ({"signal": BIG_SIGNAL, "drag": FALLING_DRAG}, {"structural"}),
    ({"drag": FALLING_DRAG}, {"kinematic", "structural"}),
    ({"signal": BIG_SIGNAL}, set()),
])
def test_failure_modes(series, expected):
    traj = make_traj(**series)
    assert is_silent_failure(traj)
    assert failure_modes(traj) == frozenset(expected)


def test_failure_mode_boundaries():
    # |S| = 0.1 (1 − 0²) is still kinematic; D_T − D_0 = −0.01 is not structural.
    traj = make_traj(g_max=0.0, signal=np.full(T + 1, 0.1),
                     drag=np.linspace(0.0, -0.01, T + 1))
    assert failure_modes(traj) == frozenset({"kinematic"})


def test_non_silent_run_has_no_failure_mode():
    traj = make_traj(loss=np.linspace(2.0, 3.0, T + 1), drag=FALLING_DRAG)
    assert not is_silent_failure(traj)
    assert failure_modes(traj) == frozenset()


# --- analyse ---------------------------------------------------------------------------

def test_analyse_figure3_run():
    phi = figure3_phi()
    a = analyse(make_traj(phi=phi, dz=smooth_rise(), a_g=phi, a_c=np.zeros(T + 1)))
    assert isinstance(a, Analysis)
    assert a.jump == jump(phi) and a.jumps and a.born_flip == 10
    assert a.rank_flip is None and a.silent and a.modes == {"kinematic"}
    assert not a.diverged
    assert a.smooth_readout == {"dz": True, "a_g": False, "a_c": True}


def test_analyse_diverged_run_ignores_non_finite_tail():
    n = 21
    bad = {name: np.concatenate([np.linspace(0.0, 0.1, n - 1), [np.nan]])
           for name in ("phi", "dz", "a_g", "a_c", "p_g", "loss")}
    a = analyse(make_traj(diverged_at=n - 1, n=n, **bad))
    assert a.diverged and not a.jumps and not a.silent and a.modes == frozenset()
    assert a.jump == jump(bad["phi"][:-1])
    assert a.born_flip == 1


def test_results_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        jump([0.0, 1.0]).ratio = 2.0


# --- properties ------------------------------------------------------------------------

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
int_series = st.lists(st.integers(-1000, 1000), min_size=0, max_size=40)


@given(st.lists(finite_floats, max_size=40))
def test_ratio_at_least_one(series):
    assert jump(series).ratio >= 1.0


@given(st.lists(finite_floats, max_size=40))
def test_quiescent_steps_precede_t_star(series):
    j = jump(series)
    assert 0 <= j.n_quiescent <= j.t_star


@given(int_series, st.integers(-10**6, 10**6))
def test_jump_invariant_under_shift(series, shift):
    # Integer-valued series keep every difference exact, so the result is identical.
    assert jump(np.add(series, shift, dtype=np.float64)) == jump(series)


@given(int_series, st.floats(1e-3, 1e3))
def test_ratio_invariant_under_positive_scaling(series, scale):
    j, k = jump(series), jump(np.multiply(series, scale, dtype=np.float64))
    assert k.t_star == j.t_star
    assert k.ratio == pytest.approx(j.ratio, rel=1e-9)


# --- input validation ------------------------------------------------------------------

def test_nan_is_rejected_with_its_index():
    with pytest.raises(ValueError, match="NaN at index 2"):
        jump([0.0, 0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="phi contains NaN at index 0"):
        born_flip_step([np.nan])


def test_infinity_is_rejected():
    with pytest.raises(ValueError, match="infinite value at index 1"):
        is_smooth([0.0, np.inf])


def test_two_dimensional_is_rejected_with_its_shape():
    with pytest.raises(ValueError, match=r"must be 1-D, got shape \(2, 3\)"):
        jump(np.zeros((2, 3)))


def test_mismatched_probability_lengths():
    with pytest.raises(ValueError, match=r"differ in length: shapes \(3,\) and \(2,\)"):
        rank_flip_step([0.1, 0.2, 0.3], [0.5, 0.4])


def test_nan_in_trajectory_series_is_rejected():
    loss = np.linspace(3.0, 2.0, T + 1)
    loss[5] = np.nan
    with pytest.raises(ValueError, match="loss contains NaN at index 5"):
        is_silent_failure(make_traj(loss=loss))
