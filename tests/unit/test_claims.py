"""Unit tests of phantom.claims: every verdict rule of SPEC §6 on synthetic trajectories.

Each ``c*`` function is fed hand-built :class:`Trajectory` objects whose SPEC §5 read-outs
(jump, flip, silent failure, failure modes) are known exactly, and every status the
function can return is checked against the pre-registered rule quoted in ``CLAIMS``.
"""
import dataclasses
import math

import numpy as np
import pytest

from phantom import claims, laws, transitions
from phantom.claims import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict
from phantom.trajectory import SERIES, Trajectory

T = 30
N = T + 1
CONTEXTS = ("longing", "purpose", "shame", "tired", "awful", "scared", "quiet", "begin", "ancient", "funny")


# --- synthetic runs --------------------------------------------------------------------

def make(phi=None, *, context="longing", lr=2e-5, mode="full", g_max=0.5, rank_contested=True,
         diverged_at=None, stopped_at=None, **series):
    """A synthetic run; by default g overtakes c (not silent), Φ = S exactly, D = 0,
    read-outs flat and embedding/head bitwise frozen."""
    n = N if phi is None else len(phi)
    data = {name: np.zeros(n) for name in SERIES}
    data["loss"] = np.linspace(3.0, 1.0, n)
    data["p_g"] = np.linspace(0.1, 0.7, n)
    data["p_c"] = np.full(n, 0.4)
    data["embed_equal"] = np.ones(n)
    data["head_equal"] = np.ones(n)
    if phi is not None:
        data["phi"] = np.asarray(phi, dtype=np.float64)
        data["signal"] = np.asarray(phi, dtype=np.float64).copy()
    data.update({k: np.asarray(v, dtype=np.float64) for k, v in series.items()})
    meta = {"context": context, "lr": lr, "mode": mode, "steps": T, "g_max": g_max,
            "rank_contested": rank_contested, "diverged_at": diverged_at, "stopped_at": stopped_at}
    return Trajectory(series=data, meta=meta)


def jump_phi(quiet=1e-3, size=0.3):
    """Nine quiet steps (|ΔΦ| = quiet, alternating sign), a jump of ``size`` at t = 9, then
    a quiet plateau; starts at −0.1 and crosses 0. J = size / quiet exactly; quiet=0: J = inf."""
    steps = quiet * np.where(np.arange(T) % 2 == 0, 1.0, -1.0)
    steps[9] = size
    return np.concatenate([[-0.1], -0.1 + np.cumsum(steps)])


def smooth_phi(curv=0.001):
    """A convex rise from −0.2 crossing 0; its largest step is the last one, J < 2
    (increasing with ``curv``)."""
    t = np.arange(N, dtype=np.float64)
    return -0.2 + 0.01 * t + curv * t ** 2


def jumper(**kw):
    return make(jump_phi(kw.pop("quiet", 1e-3)), **kw)


def smoother(**kw):
    return make(smooth_phi(kw.pop("curv", 0.001)), **kw)


def silent(signal=0.01, drag_drop=0.05, **kw):
    """Silent failure: loss falls, p_g < p_c throughout. Kinematic iff |signal| ≤ 0.075
    (G_max 0.5); structural iff the drag falls by more than 0.01. Φ = S + D exactly."""
    s = np.full(N, float(signal))
    d = np.linspace(-0.3, -0.3 - drag_drop, N)
    return make(s + d, signal=s, drag=d, loss=np.linspace(3.0, 2.0, N),
                p_g=np.full(N, 0.1), p_c=np.full(N, 0.5), **kw)


def prediction(model, rel_error, eta_c=1e-4):
    return laws.Prediction(model=model, q=1.0, k=eta_c * (1 + rel_error), eta_hat=eta_c * (1 + rel_error),
                           eta_c=eta_c, rel_error=rel_error)


# --- the helpers produce what the tests assume ------------------------------------------

def test_synthetic_shapes():
    j = transitions.jump(jump_phi())
    assert j.t_star == 9 and j.ratio == pytest.approx(300.0) and j.n_quiescent == 9
    assert transitions.jumps(jumper()) and transitions.born_flip_step(jump_phi()) == 10
    assert transitions.jump(jump_phi(quiet=0.0)).ratio == math.inf and transitions.jumps(jumper(quiet=0.0))
    ratios = [transitions.jump(smooth_phi(c)).ratio for c in (0.0005, 0.001, 0.002, 0.004)]
    assert ratios == sorted(ratios) and len(set(ratios)) == 4 and max(ratios) < 2
    assert not transitions.jumps(smoother()) and transitions.born_flip_step(smooth_phi()) is not None
    assert not transitions.is_silent_failure(jumper()) and not transitions.is_silent_failure(smoother())
    assert transitions.failure_modes(silent()) == {"kinematic", "structural"}
    assert transitions.failure_modes(silent(signal=0.2)) == {"structural"}
    assert transitions.failure_modes(silent(drag_drop=0.0)) == {"kinematic"}
    assert transitions.is_silent_failure(silent(signal=0.2, drag_drop=0.0))
    assert transitions.failure_modes(silent(signal=0.2, drag_drop=0.0)) == frozenset()
    assert transitions.born_flip_step(silent()["phi"]) is None


# --- Verdict and registry ---------------------------------------------------------------

def test_verdict_rejects_unknown_status_and_claim():
    Verdict("C1", "m", REPRODUCED, "ok", 1)
    with pytest.raises(ValueError, match="status"):
        Verdict("C1", "m", "maybe", "?", 1)
    with pytest.raises(ValueError, match="claim"):
        Verdict("C14", "m", REPRODUCED, "?", 1)
    with pytest.raises(ValueError, match="claim"):
        Verdict("c1", "m", REPRODUCED, "?", 1)


def test_not_testable_helper():
    v = claims.not_testable("C3", "m", "why", 2)
    assert (v.claim, v.model, v.status, v.value, v.n, v.details) == ("C3", "m", NOT_TESTABLE, "why", 2, {})


SPEC_IDS = ["C1", "C2", "C3", "C3′", "C4", "C5", "C5b", "C6", "C6′", "C7", "C8", "C9", "C10", "C11", "C12", "C13"]


def test_zoo_claims_return_zoo_verdicts():
    assert claims.c7_failure_modes({"a": [silent()]}).model == "zoo"
    assert claims.c9_h_consistency({"a": number(10.0), "b": number(10.1)}).model == "zoo"
    assert claims.c11_lora_sufficiency({"a": "A", "b": "B"}, {"a": 0.1, "b": 0.9}).model == "zoo"
    assert claims.c12_burial_laws({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3},
                                  numbers({"a": 3, "b": 2, "c": 1})).model == "zoo"
    assert claims.c13_blind_prediction([prediction("a", 0.01), prediction("b", 0.01)]).model == "zoo"


# --- C1 silent failure ------------------------------------------------------------------

def test_c1_reproduced_with_one_silent_run():
    v = claims.c1_silent_failure("m", [silent(context="longing", lr=2e-5), jumper(context="purpose")])
    assert (v.claim, v.model, v.status, v.n) == ("C1", "m", REPRODUCED, 2)
    assert v.value == "1/2 silent (longing@2e-05)"
    assert v.details["silent"] == ["longing@2e-05"]


def test_c1_not_reproduced_when_every_contested_run_flips():
    sweep = [jumper(context="longing"), smoother(context="purpose"),
             silent(context="shame", rank_contested=False)]      # not contested: ignored
    v = claims.c1_silent_failure("m", sweep)
    assert v.status == NOT_REPRODUCED and v.n == 2 and v.value == "0/2 silent"


def test_c1_not_testable_without_rank_contested_runs():
    sweep = [silent(rank_contested=False), jumper(rank_contested=False)]
    v = claims.c1_silent_failure("m", sweep)
    assert v.status == NOT_TESTABLE and v.value == "no rank-contested run" and v.n == 2
    assert claims.c1_silent_failure("m", []).status == NOT_TESTABLE


def test_c1_ignores_diverged_runs():
    diverged_silent = silent(context="shame", diverged_at=20)
    assert claims.c1_silent_failure("m", [diverged_silent]).status == NOT_TESTABLE
    v = claims.c1_silent_failure("m", [diverged_silent, jumper(context="longing")])
    assert v.status == NOT_REPRODUCED and v.n == 1


def test_c1_lists_at_most_four_silent_contexts():
    sweep = [silent(context=c, lr=lr) for c in CONTEXTS[:3] for lr in (1e-5, 2e-5)]
    v = claims.c1_silent_failure("m", sweep)
    assert v.status == REPRODUCED and v.value.startswith("6/6 silent (") and v.value.endswith("…)")
    assert len(v.details["silent"]) == 6 and v.details["silent"] == sorted(v.details["silent"])


# --- C2 decomposition -------------------------------------------------------------------

def _residual_run(residual, at=5):
    r = make(smooth_phi())
    r["phi"][at] += residual                    # signal is a copy of Φ and D = 0
    return r


@pytest.mark.parametrize("residual, status", [(0.0, REPRODUCED), (9e-7, REPRODUCED), (-9e-7, REPRODUCED),
                                              (2e-6, NOT_REPRODUCED), (-2e-6, NOT_REPRODUCED)])
def test_c2_tolerance(residual, status):
    runs = [make(smooth_phi()), _residual_run(residual), silent()]
    v = claims.c2_decomposition("m", runs)
    assert v.status == status and v.n == 3
    assert v.details["max_residual"] == pytest.approx(abs(residual), abs=1e-15)


def test_c2_exact_boundary_and_value():
    r = make(np.zeros(N))
    r["phi"][3] = 1e-6                          # |Φ − S − D| = 1e-6 exactly
    v = claims.c2_decomposition("m", [r])
    assert v.status == REPRODUCED and v.value == "max |Φ−S−D| = 1.0e-06"


def test_c2_uses_signal_and_drag():
    r = make(np.zeros(N), signal=np.full(N, 0.2), drag=np.full(N, -0.2))  # Φ = S + D exactly
    assert claims.c2_decomposition("m", [r]).status == REPRODUCED
    r = make(np.zeros(N), signal=np.full(N, 0.2), drag=np.zeros(N))
    v = claims.c2_decomposition("m", [r])
    assert v.status == NOT_REPRODUCED and v.details["max_residual"] == pytest.approx(0.2)


def test_c2_not_testable_without_runs_and_empty_runs_are_fine():
    assert claims.c2_decomposition("m", []).status == NOT_TESTABLE
    empty = make(np.zeros(0), diverged_at=0)    # diverged at step 0: nothing recorded
    assert claims.c2_decomposition("m", [empty]).status == REPRODUCED


# --- C3 jumps under full FT -------------------------------------------------------------

def test_c3_reproduced_high_gmax_jumps():
    v = claims.c3_jumps_full("m", [jumper(context="longing", g_max=0.9), smoother(context="purpose", g_max=0.3)])
    assert v.status == REPRODUCED and v.n == 2
    assert v.details["n_jump"] == 1 and v.details["spearman"] == pytest.approx(1.0)
    assert v.details["p"] == pytest.approx(1.0)            # n = 2: both orderings, two-sided
    assert v.value == "1/2 jump; ρ(G_max, J) = +1.00 (p = 1)"
    assert claims.c3_jumps_full("m", [jumper(context="longing", g_max=0.9), smoother(context="purpose", g_max=0.3)],
                                p_values=False).details["p"] is None      # a bootstrap resample pays no p-value
    assert v.details["ratios"]["longing"] == pytest.approx(300.0)


def test_c3_not_reproduced_when_rho_negative():
    v = claims.c3_jumps_full("m", [jumper(context="longing", g_max=0.3), smoother(context="purpose", g_max=0.9)])
    assert v.status == NOT_REPRODUCED and v.details["n_jump"] == 1 and v.details["spearman"] == pytest.approx(-1.0)


def test_c3_not_reproduced_when_rho_zero():
    runs = [jumper(context="longing", g_max=0.1, quiet=1e-3), jumper(context="purpose", g_max=0.2, quiet=5e-4),
            jumper(context="shame", g_max=0.3, quiet=1e-3)]       # J ranks 1.5, 3, 1.5: ρ = 0
    v = claims.c3_jumps_full("m", runs)
    assert v.details["n_jump"] == 3 and v.details["spearman"] == 0.0
    assert v.status == NOT_REPRODUCED


def test_c3_not_reproduced_without_a_jump():
    runs = [smoother(context=c, g_max=g, curv=k) for c, g, k in
            zip(CONTEXTS, (0.1, 0.2, 0.3), (0.0005, 0.001, 0.002))]
    v = claims.c3_jumps_full("m", runs)
    assert v.details["spearman"] == pytest.approx(1.0) and v.details["n_jump"] == 0
    assert v.status == NOT_REPRODUCED


def test_c3_not_reproduced_when_rho_nan():
    runs = [jumper(context="longing", g_max=0.5), jumper(context="purpose", g_max=0.5)]  # constant G_max
    v = claims.c3_jumps_full("m", runs)
    assert math.isnan(v.details["spearman"]) and v.status == NOT_REPRODUCED


def test_c3_allows_infinite_jump_ratio():
    runs = [jumper(context="longing", g_max=0.9, quiet=0.0), jumper(context="purpose", g_max=0.6),
            smoother(context="shame", g_max=0.2)]
    v = claims.c3_jumps_full("m", runs)
    assert v.details["ratios"]["longing"] == math.inf
    assert v.status == REPRODUCED and v.details["spearman"] == pytest.approx(1.0) and v.details["n_jump"] == 2


def test_c3_not_testable_with_fewer_than_two_completed_runs():
    v = claims.c3_jumps_full("m", [jumper()])
    assert v.status == NOT_TESTABLE and v.n == 1 and v.value == "1 completed run(s) at η_ref"
    v = claims.c3_jumps_full("m", [jumper(context="longing", g_max=0.9),
                                   smoother(context="purpose", g_max=0.3, diverged_at=12)])
    assert v.status == NOT_TESTABLE and v.n == 1
    assert claims.c3_jumps_full("m", []).status == NOT_TESTABLE


# --- C4 LoRA frozen embeddings ----------------------------------------------------------

def test_c4_reproduced_when_bitwise_frozen():
    v = claims.c4_lora_frozen("m", [jumper(mode="lora"), smoother(mode="lora")])
    assert v.status == REPRODUCED and v.value == "2/2 runs bitwise frozen" and v.n == 2


@pytest.mark.parametrize("series", ["embed_equal", "head_equal"])
def test_c4_not_reproduced_on_one_changed_step(series):
    changed = jumper(mode="lora")
    changed[series][17] = 0.0
    v = claims.c4_lora_frozen("m", [smoother(mode="lora"), changed])
    assert v.status == NOT_REPRODUCED and v.value == "1/2 runs bitwise frozen"


def test_c4_not_testable_without_lora_runs():
    v = claims.c4_lora_frozen("m", [])
    assert v.status == NOT_TESTABLE and v.value == "no LoRA run"


# --- C5 / C5b under LoRA ----------------------------------------------------------------

def test_c5_needs_two_jumping_contexts():
    two = [jumper(context="longing", mode="lora"), jumper(context="purpose", mode="lora"),
           smoother(context="shame", mode="lora")]
    v = claims.c5_jumps_lora("m", two)
    assert v.status == REPRODUCED and v.value == "2/3 jump" and v.details["n_jump"] == 2
    v = claims.c5_jumps_lora("m", [jumper(mode="lora"), smoother(context="purpose", mode="lora")])
    assert v.status == NOT_REPRODUCED and v.details["n_jump"] == 1


def test_c5_ignores_diverged_runs():
    runs = [jumper(context="longing", mode="lora"), jumper(context="purpose", mode="lora", diverged_at=20)]
    v = claims.c5_jumps_lora("m", runs)
    assert v.status == NOT_REPRODUCED and v.n == 1 and v.value == "1/1 jump"


def test_c5_not_testable_without_completed_runs():
    assert claims.c5_jumps_lora("m", []).status == NOT_TESTABLE
    v = claims.c5_jumps_lora("m", [jumper(mode="lora", diverged_at=3)])
    assert v.status == NOT_TESTABLE and v.value == "no completed LoRA run"


def _smooth_lora(g_by_rank):
    """Smooth runs whose J has rank ``r`` (1 = smallest) at G_max ``g``."""
    curv = (0.0005, 0.001, 0.002, 0.004, 0.008)
    return [smoother(context=CONTEXTS[i], mode="lora", lr=1e-3, g_max=g, curv=curv[r - 1])
            for i, (g, r) in enumerate(g_by_rank)]


def test_c5b_reproduced_all_smooth_and_uncorrelated():
    runs = _smooth_lora([(0.1, 2), (0.2, 4), (0.3, 1), (0.4, 3)])      # ρ = 0
    v = claims.c5b_smooth_lora("m", runs)
    assert v.details["n_jump"] == 0 and v.details["spearman"] == pytest.approx(0.0, abs=1e-12)
    assert v.status == REPRODUCED and v.n == 4


def test_c5b_rho_boundary():
    runs = _smooth_lora([(0.1, 1), (0.2, 3), (0.3, 5), (0.4, 4), (0.5, 2)])   # ρ = 0.3 exactly
    v = claims.c5b_smooth_lora("m", runs)
    assert v.details["spearman"] == 0.3 and v.status == NOT_REPRODUCED
    runs = _smooth_lora([(0.1, 2), (0.2, 4), (0.3, 5), (0.4, 3), (0.5, 1)])   # ρ = −0.3 exactly
    v = claims.c5b_smooth_lora("m", runs)
    assert v.details["spearman"] == -0.3 and v.status == NOT_REPRODUCED


def test_c5b_not_reproduced_when_strongly_correlated():
    v = claims.c5b_smooth_lora("m", _smooth_lora([(0.1, 1), (0.2, 2), (0.3, 3)]))
    assert v.details["n_jump"] == 0 and v.details["spearman"] == pytest.approx(1.0)
    assert v.status == NOT_REPRODUCED
    v = claims.c5b_smooth_lora("m", _smooth_lora([(0.1, 3), (0.2, 2), (0.3, 1)]))
    assert v.details["spearman"] == pytest.approx(-1.0) and v.status == NOT_REPRODUCED


def test_c5b_not_reproduced_with_a_jump():
    runs = _smooth_lora([(0.1, 2), (0.2, 4), (0.3, 1), (0.4, 3)])
    runs.append(jumper(context="funny", mode="lora", g_max=0.25))
    v = claims.c5b_smooth_lora("m", runs)
    assert v.details["n_jump"] == 1 and abs(v.details["spearman"]) < 0.3
    assert v.status == NOT_REPRODUCED


def test_c5b_constant_ratio_gives_nan_and_not_reproduced():
    runs = [smoother(context=c, mode="lora", g_max=g) for c, g in zip(CONTEXTS, (0.1, 0.2, 0.3))]
    v = claims.c5b_smooth_lora("m", runs)
    assert math.isnan(v.details["spearman"]) and v.details["n_jump"] == 0
    assert v.status == NOT_REPRODUCED and "nan" in v.value


def test_c5b_not_testable_with_fewer_than_two_completed_runs():
    assert claims.c5b_smooth_lora("m", [smoother(mode="lora")]).status == NOT_TESTABLE
    runs = [smoother(context="longing", mode="lora", g_max=0.1),
            smoother(context="purpose", mode="lora", g_max=0.2, curv=0.004, diverged_at=9)]
    v = claims.c5b_smooth_lora("m", runs)
    assert v.status == NOT_TESTABLE and v.value == "1 completed LoRA run(s)"


# --- C6 readout -------------------------------------------------------------------------

def _readout(largest):
    """Unit steps with one step of ``largest`` at t = 9: J = largest exactly."""
    steps = np.ones(T)
    steps[9] = largest
    return np.concatenate([[0.0], np.cumsum(steps)])


def test_c6_not_testable_without_jumping_runs():
    runs = [smoother(context="longing"), silent(context="purpose"), jumper(context="shame", diverged_at=20)]
    v = claims.c6_readout("m", runs)
    assert v.status == NOT_TESTABLE and v.value == "no jumping full-FT run" and v.n == 3


def test_c6_reproduced_with_smooth_readouts():
    runs = [jumper(context="longing", dz=_readout(9.5), a_g=smooth_phi(), a_c=np.full(N, 0.3)),
            jumper(context="purpose")]
    v = claims.c6_readout("m", runs)
    assert v.status == REPRODUCED and v.n == 2
    assert v.details["worst"] == {"dz": pytest.approx(9.5), "a_g": pytest.approx(transitions.jump(smooth_phi()).ratio),
                                  "a_c": 1.0}
    assert v.value.startswith("max J: dz 9.5, a_g ")


@pytest.mark.parametrize("series", ["dz", "a_g", "a_c"])
@pytest.mark.parametrize("largest", [10.0, 50.0])
def test_c6_not_reproduced_when_a_readout_jumps(series, largest):
    runs = [jumper(context="longing"), jumper(context="purpose", **{series: _readout(largest)})]
    v = claims.c6_readout("m", runs)
    assert v.status == NOT_REPRODUCED
    assert v.details["worst"][series] == pytest.approx(largest)


def test_c6_infinite_readout_ratio():
    flat_then_step = np.where(np.arange(N) > 9, 1.0, 0.0)
    v = claims.c6_readout("m", [jumper(a_c=flat_then_step)])
    assert v.status == NOT_REPRODUCED and v.details["worst"]["a_c"] == math.inf and "a_c inf" in v.value


def test_c6_ignores_readout_jumps_in_non_jumping_runs():
    runs = [jumper(context="longing"), smoother(context="purpose", dz=_readout(100.0)),
            jumper(context="shame", a_g=_readout(100.0), diverged_at=25)]
    v = claims.c6_readout("m", runs)
    assert v.status == REPRODUCED and v.n == 1


# --- C7 failure modes (zoo) -------------------------------------------------------------

def test_c7_both_modes_across_models():
    v = claims.c7_failure_modes({"a": [silent(drag_drop=0.0), jumper()], "b": [silent(signal=0.2)]})
    assert v.status == REPRODUCED and v.n == 2 and v.model == "zoo"
    assert v.details["counts"] == {"kinematic": 1, "structural": 1}
    assert v.value == "kinematic 1, structural 1 of 2 silent"


def test_c7_both_modes_in_one_run():
    v = claims.c7_failure_modes({"a": [silent()]})
    assert v.status == REPRODUCED and v.details["counts"] == {"kinematic": 1, "structural": 1}


@pytest.mark.parametrize("runs, counts", [
    ([silent(drag_drop=0.0), silent(drag_drop=0.0)], {"kinematic": 2, "structural": 0}),
    ([silent(signal=0.2)], {"kinematic": 0, "structural": 1}),
    ([silent(signal=0.2, drag_drop=0.0), silent(drag_drop=0.0)], {"kinematic": 1, "structural": 0}),
])
def test_c7_not_reproduced_with_one_mode(runs, counts):
    v = claims.c7_failure_modes({"a": runs, "b": [smoother()]})
    assert v.status == NOT_REPRODUCED and v.details["counts"] == counts and v.n == len(runs)


def test_c7_not_testable_without_silent_runs():
    assert claims.c7_failure_modes({}).status == NOT_TESTABLE
    v = claims.c7_failure_modes({"a": [jumper(), smoother()], "b": [silent(diverged_at=10)], "c": []})
    assert v.status == NOT_TESTABLE and v.value == "no silent-failure run in the zoo"


# --- C8 sweep separation ----------------------------------------------------------------

def test_c8_jump_above():
    sweep = [jumper(context="longing", g_max=0.8), jumper(context="purpose", g_max=0.9),
             smoother(context="shame", g_max=0.3), smoother(context="tired", g_max=0.4),
             silent(context="awful", g_max=0.85),                  # never flips: ignored
             smoother(context="scared", g_max=0.85, diverged_at=20)]  # diverged: ignored
    v = claims.c8_sweep_separation("m", sweep)
    assert v.status == REPRODUCED and v.n == 4 and v.details["direction"] == "jump above"
    assert v.value == ("2 jump G_max∈[0.800, 0.900], 2 continuous G_max∈[0.300, 0.400]: jump above")


def test_c8_jump_below():
    sweep = [jumper(context="longing", g_max=0.2), smoother(context="purpose", g_max=0.7),
             smoother(context="shame", g_max=0.6)]
    v = claims.c8_sweep_separation("m", sweep)
    assert v.status == REPRODUCED and v.details["direction"] == "jump below" and v.n == 3


@pytest.mark.parametrize("cont_g", [0.5, 0.3])   # inside the jumping range; equal to its minimum
def test_c8_overlap(cont_g):
    sweep = [jumper(context="longing", g_max=0.3), jumper(context="purpose", g_max=0.9),
             smoother(context="shame", g_max=cont_g)]
    v = claims.c8_sweep_separation("m", sweep)
    assert v.status == NOT_REPRODUCED and v.details["direction"] == "overlap" and v.value.endswith(": overlap")


def test_c8_not_testable_without_both_classes():
    only_jumps = [jumper(context="longing", g_max=0.8), silent(context="purpose", g_max=0.2)]
    v = claims.c8_sweep_separation("m", only_jumps)
    assert v.status == NOT_TESTABLE and v.n == 1 and "1 jumping, 0 continuous" in v.value
    only_smooth = [smoother(context="longing", g_max=0.8), jumper(context="purpose", g_max=0.2, diverged_at=15)]
    v = claims.c8_sweep_separation("m", only_smooth)
    assert v.status == NOT_TESTABLE and "0 jumping, 1 continuous" in v.value
    assert claims.c8_sweep_separation("m", []).status == NOT_TESTABLE


# --- C9 H consistency (zoo) -------------------------------------------------------------

def number(x):
    return laws.Estimate.number(x)


def numbers(d):
    return {m: laws.Estimate.number(v) for m, v in d.items()}


def test_c9_reproduced_and_not():
    v = claims.c9_h_consistency(numbers({"a": 10.0, "b": 10.5}))
    assert v.status == REPRODUCED and v.n == 2 and v.details["cv"] == pytest.approx(laws.cv([10.0, 10.5]))
    assert v.value.startswith("CV = 3.4%; a H_FT = 10, b H_FT = 10.5")
    v = claims.c9_h_consistency(numbers({"a": 5.0, "b": 10.0, "c": 15.0}))
    assert v.status == NOT_REPRODUCED and v.details["cv"] == pytest.approx(0.5)


@pytest.mark.parametrize("cv, status", [(0.0999, REPRODUCED), (0.1001, NOT_REPRODUCED)])
def test_c9_near_boundary(cv, status):
    x = cv / math.sqrt(2)                       # CV of {1 + x, 1 − x} is √2·x
    v = claims.c9_h_consistency(numbers({"a": 10 * (1 + x), "b": 10 * (1 - x)}))
    assert v.details["cv"] == pytest.approx(cv) and v.status == status


@pytest.mark.parametrize("cv, status", [(0.10, REPRODUCED), (np.nextafter(0.10, 1.0), NOT_REPRODUCED)])
def test_c9_exact_boundary(monkeypatch, cv, status):
    monkeypatch.setattr(laws, "cv_range", lambda estimates: (cv, cv))
    assert claims.c9_h_consistency(numbers({"a": 10.0, "b": 11.0})).status == status


@pytest.mark.parametrize("h, status, text", [
    # H_FT > 100 against 9.2: every compatible CV exceeds 10% → not reproduced, on the bound
    ({"a": laws.Estimate.number(9.2), "b": laws.Estimate(100.0, math.inf)}, NOT_REPRODUCED, "CV ∈ [117.6%, 141.4%]"),
    # H_FT ∈ [9, 11] against 10: every compatible CV ≤ 7.4% (at 9) → reproduced although a bound
    ({"a": laws.Estimate.number(10.0), "b": laws.Estimate(9.0, 11.0)}, REPRODUCED, "CV ∈ [0.0%, 7.4%]"),
    # H_FT ∈ [8, 11] against 10: CVs from 0 to 15.7% (at 8) → the bounds leave C9 open
    ({"a": laws.Estimate.number(10.0), "b": laws.Estimate(8.0, 11.0)}, NOT_TESTABLE, "straddles 10%"),
    # H_FT ∈ [10, 10.5] against 10: every compatible CV ≤ 10% → reproduced
    ({"a": laws.Estimate.number(10.0), "b": laws.Estimate(10.0, 10.5)}, REPRODUCED, "CV ∈ [0.0%, 3.4%]"),
])
def test_c9_judges_every_cv_the_bounds_allow(h, status, text):
    """SPEC §5 A1: reproduced only if the whole interval of CVs is ≤ 0.10, not reproduced only if all > 0.10."""
    v = claims.c9_h_consistency(h)
    assert v.status == status and text in v.value
    assert "b H_FT" in v.value


def test_c9_drops_missing_h():
    v = claims.c9_h_consistency({"a": number(10.0), "b": None, "d": number(10.5)})
    assert v.status == REPRODUCED and v.n == 2 and "b H" not in v.value
    v = claims.c9_h_consistency({"a": number(10.0), "b": None})
    assert v.status == NOT_TESTABLE and v.n == 1 and v.value.startswith("needs ≥2 models with H_FT, have 1")
    assert claims.c9_h_consistency({}).status == NOT_TESTABLE


# --- C10 two classes --------------------------------------------------------------------

@pytest.mark.parametrize("g2, kind, cls, status", [
    (0.05, "gaussian", "A", REPRODUCED), (0.045, "gaussian", "A", REPRODUCED), (0.097, "gaussian", "A", REPRODUCED),
    (0.0025, "laplace", "B", REPRODUCED), (0.002, "laplace", "B", REPRODUCED), (0.003, "laplace", "B", REPRODUCED),
    (0.05, "laplace", "unclassified", NOT_REPRODUCED), (0.0025, "gaussian", "unclassified", NOT_REPRODUCED),
    (0.01, "gaussian", "unclassified", NOT_REPRODUCED), (0.2, "gaussian", "unclassified", NOT_REPRODUCED),
])
def test_c10(g2, kind, cls, status):
    v = claims.c10_two_classes("m", g2, kind)
    assert v.status == status and v.details["cls"] == cls and v.n == 1 and v.model == "m"
    assert v.value == f"G²mean = {g2:.4f}, {kind} → {cls}"


def test_c10_rejects_unknown_kind():
    with pytest.raises(ValueError):
        claims.c10_two_classes("m", 0.05, "cauchy")


# --- C11 LoRA sufficiency (zoo) ---------------------------------------------------------

@pytest.mark.parametrize("suff_a, suff_b, status", [
    (0.5, 0.9, REPRODUCED), (0.79, 0.8, REPRODUCED),
    (0.8, 0.9, NOT_REPRODUCED), (0.95, 0.9, NOT_REPRODUCED), (0.5, 0.79, NOT_REPRODUCED),
])
def test_c11(suff_a, suff_b, status):
    v = claims.c11_lora_sufficiency({"a": "A", "b": "B"}, {"a": suff_a, "b": suff_b})
    assert v.status == status and v.n == 2


def test_c11_ignores_unclassified_models():
    v = claims.c11_lora_sufficiency({"a": "A", "b": "B", "u": "unclassified"}, {"a": 0.5, "b": 0.9, "u": 0.1})
    assert v.status == REPRODUCED and v.n == 3 and v.value == "a A 50%, b B 90%, u unclassified 10%"


@pytest.mark.parametrize("classes", [{"a": "A"}, {"a": "A", "b": "A"}, {"b": "B"}, {"a": "A", "u": "unclassified"}, {}])
def test_c11_not_testable_without_both_classes(classes):
    v = claims.c11_lora_sufficiency(classes, {m: 0.5 for m in classes})
    assert v.status == NOT_TESTABLE and v.value.startswith("needs both classes A and B")


# --- C12 burial laws (zoo) --------------------------------------------------------------

B3 = {"a": 1.0, "b": 2.0, "c": 3.0}


@pytest.mark.parametrize("g2, h, status", [
    ({"a": 0.01, "b": 0.02, "c": 0.03}, {"a": 12.0, "b": 11.0, "c": 10.0}, REPRODUCED),
    ({"a": 0.03, "b": 0.02, "c": 0.01}, {"a": 12.0, "b": 11.0, "c": 10.0}, NOT_REPRODUCED),   # ρ_G wrong sign
    ({"a": 0.01, "b": 0.02, "c": 0.03}, {"a": 10.0, "b": 11.0, "c": 12.0}, NOT_REPRODUCED),   # ρ_H wrong sign
    ({"a": 0.03, "b": 0.02, "c": 0.01}, {"a": 10.0, "b": 11.0, "c": 12.0}, NOT_REPRODUCED),   # both wrong
    ({"a": 0.01, "b": 0.01, "c": 0.01}, {"a": 12.0, "b": 11.0, "c": 10.0}, NOT_REPRODUCED),   # ρ_G nan
])
def test_c12_signs(g2, h, status):
    v = claims.c12_burial_laws(B3, g2, numbers(h))
    assert v.status == status and v.n == 3


def test_c12_bounds_enter_by_rank_only_when_they_fix_it():
    g2 = {"a": 0.01, "b": 0.02, "c": 0.03}
    fixed = {"a": number(9.0), "b": number(5.0), "c": laws.Estimate(0.0, 3.0)}      # c < 3 < 5 < 9
    v = claims.c12_burial_laws(B3, g2, fixed)
    assert v.status == REPRODUCED and v.details["rho_h"] == pytest.approx(-1.0)
    open_ = {"a": number(9.0), "b": number(5.0), "c": laws.Estimate(0.0, 6.0)}       # c may be above b
    v = claims.c12_burial_laws(B3, g2, open_)
    assert v.status == NOT_TESTABLE and "ranking in H open" in v.value


def test_c12_p_values_are_exact_permutation_p():
    v = claims.c12_burial_laws(B3, {"a": 0.01, "b": 0.02, "c": 0.03}, numbers({"a": 12.0, "b": 11.0, "c": 10.0}))
    assert v.details["p_g2mean"] == pytest.approx(1 / 3) and v.details["p_h"] == pytest.approx(1 / 3)


def test_c12_magnitude_boundary():
    b = {m: float(i) for i, m in enumerate("abcde", 1)}
    g_08 = dict(zip("abcde", (2.0, 1.0, 4.0, 3.0, 5.0)))     # ρ = 0.8 exactly
    g_07 = dict(zip("abcde", (3.0, 1.0, 2.0, 4.0, 5.0)))     # ρ = 0.7
    h_08 = {m: 10 - v for m, v in g_08.items()}              # ρ = −0.8 exactly
    h_07 = {m: 10 - v for m, v in g_07.items()}
    v = claims.c12_burial_laws(b, g_08, numbers(h_08))
    assert v.status == REPRODUCED and v.value == "ρ(B_FT, G²mean) = +0.80 (p = 0.13), ρ(B_FT, H) = -0.80 (p = 0.13)"
    assert claims.c12_burial_laws(b, g_07, numbers(h_08)).status == NOT_REPRODUCED
    assert claims.c12_burial_laws(b, g_08, numbers(h_07)).status == NOT_REPRODUCED


def test_c12_not_testable_with_fewer_than_three_models():
    v = claims.c12_burial_laws(B3, {"a": 0.01, "b": 0.02, "c": 0.03}, numbers({"a": 12.0, "b": 11.0}))  # c: no H
    assert v.status == NOT_TESTABLE and v.n == 2 and v.value == "needs ≥3 models, have 2"
    assert claims.c12_burial_laws({}, {}, {}).status == NOT_TESTABLE


# --- C13 blind prediction (zoo) ---------------------------------------------------------

@pytest.mark.parametrize("errors, status", [
    ((0.0, 0.01), REPRODUCED), ((0.021, 0.02, 0.001), REPRODUCED),
    ((0.01, 0.0211), NOT_REPRODUCED), ((0.5, 0.01), NOT_REPRODUCED),
])
def test_c13(errors, status):
    preds = [prediction(f"m{i}", e) for i, e in enumerate(errors)]
    v = claims.c13_blind_prediction(preds)
    assert v.status == status and v.n == len(errors)
    assert all(p.model in v.value for p in preds)


def test_c13_value_format():
    v = claims.c13_blind_prediction([prediction("a", 0.01), prediction("b", 0.021, eta_c=2e-4)])
    assert v.value == "a η̂_c=0.000101 η_c=0.0001 err 1.0%; b η̂_c=0.000204 η_c=0.0002 err 2.1%"


def test_c13_not_testable_with_fewer_than_two_predictions():
    v = claims.c13_blind_prediction([prediction("a", 0.0)])
    assert v.status == NOT_TESTABLE and v.n == 1 and v.value == "needs ≥2 models with η_c and q, have 1"
    assert claims.c13_blind_prediction([]).status == NOT_TESTABLE


# --- the registry -----------------------------------------------------------------------------

def test_registry_follows_the_spec_table():
    assert [c.id for c in claims.CLAIMS] == SPEC_IDS                                 # SPEC §6, in its order
    assert {c.id for c in claims.CLAIMS if c.scope == "zoo"} == {"C7", "C9", "C11", "C12", "C13"}
    assert all(c.scope in ("model", "zoo") and callable(c.check) for c in claims.CLAIMS)
    assert all(c.name and c.statement and c.paper and c.rule for c in claims.CLAIMS)
    assert len({c.name for c in claims.CLAIMS}) == len(claims.CLAIMS)
    assert claims.BY_ID == {c.id: c for c in claims.CLAIMS}
    assert {c.id for c in claims.CLAIMS if c.consistency} == {"C2", "C4"}            # SPEC §6 A5


@pytest.mark.parametrize("cid", ["C2", "C5", "C5b", "C9", "C11", "C12", "C13"])
def test_rule_text_reads_its_threshold_from_protocol(cid):
    """A claim's rule text prints the protocol's threshold, never a second literal."""
    from phantom import protocol
    value = {"C2": protocol.DECOMPOSITION_TOL, "C5": protocol.C5_MIN_JUMPS, "C5b": protocol.SPEARMAN_LORA_MAX,
             "C9": protocol.H_CV_MAX, "C11": protocol.SUFFICIENCY_SPLIT, "C12": protocol.BURIAL_RHO_MIN,
             "C13": protocol.BLIND_REL_ERROR_MAX}[cid]
    assert f"{value:g}" in claims.BY_ID[cid].rule


class _NoRuns:
    """A campaign stand-in whose every read fails: a check that reads nothing must not touch it."""

    def __init__(self, model, eta_c=True):
        self.model = model
        self.plan = type("P", (), {"eta_c": eta_c, "saturation": ()})()

    def __getattr__(self, name):
        raise AssertionError(f"{self.model}: {name} read by a claim that cannot be tested")


def test_c12_with_too_few_models_reads_nothing():
    v = claims.BY_ID["C12"].check([_NoRuns("a"), _NoRuns("b")])
    assert v.stability is None
    assert (v.status, v.value, v.n) == (NOT_TESTABLE, "needs ≥3 models, have 2", 2)


def test_c13_without_two_bisected_models_reads_nothing():
    v = claims.BY_ID["C13"].check([_NoRuns("a", eta_c=False), _NoRuns("b", eta_c=False)])
    assert (v.status, v.value, v.n) == (NOT_TESTABLE, "needs ≥2 models with a critical-LR search, have 0", 0)


def test_model_claims_read_their_campaign(monkeypatch):
    seen = []

    class Recorder:
        model = "m"

        def __getattr__(self, name):
            seen.append(name)
            return lambda *a, **k: []

    ids = [c.id for c in claims.CLAIMS if c.scope == "model" and c.id not in ("C10", "C3′", "C6′")]
    verdicts = {cid: claims.BY_ID[cid].check(Recorder()) for cid in ids}
    assert all(v.claim == cid and v.model == "m" for cid, v in verdicts.items())
    assert set(seen) == {"sweep", "all_runs", "reference", "lora_runs", "lora_reference"}


def test_verdict_record_round_trips_and_rejects_garbage():
    v = Verdict("C3", "m", REPRODUCED, "1/2 jump", 2, {"ratios": {"a": float("inf")}}, 0.75,
                {"n_jump": (0.0, 3.0)})
    assert Verdict.from_dict(v.to_dict()) == v and v.fragile
    for bad in ({}, {"claim": "C3"}, {"claim": "C3", "model": "m", "status": "reproduced", "value": "", "n": None}):
        with pytest.raises(ValueError):
            Verdict.from_dict(bad)


# --- the bootstrap of SPEC §6 A6 --------------------------------------------------------------

class _Sweep:
    """A campaign stand-in with one full-FT run per context: ``silent_in`` are silent failures."""

    def __init__(self, silent_in=(), n=10):
        self.model = "m"
        self._runs = [silent(context=c) if c in silent_in else jumper(context=c) for c in CONTEXTS[:n]]

    def sweep(self):
        return self._runs


def test_a_verdict_resting_on_one_context_is_fragile():
    """C1 reproduced by one silent context of ten: a resample keeps it with probability 1 − 0.9¹⁰ ≈ 0.65."""
    v = claims.BY_ID["C1"].check(_Sweep(silent_in=("longing",)))
    assert v.status == REPRODUCED and v.fragile
    assert v.stability == pytest.approx(1 - 0.9 ** 10, abs=0.05)     # B = 1000: ±3 standard errors
    assert v.intervals["n_silent"] == (0.0, 3.0)


def test_a_verdict_resting_on_every_context_is_stable():
    v = claims.BY_ID["C1"].check(_Sweep(silent_in=CONTEXTS))
    assert v.status == REPRODUCED and v.stability == 1.0 and not v.fragile
    assert v.intervals["n_silent"] == (10.0, 10.0)


def test_the_bootstrap_is_deterministic():
    a, b = (claims.BY_ID["C1"].check(_Sweep(silent_in=("longing", "awful"))) for _ in range(2))
    assert a == b and a.stability is not None


def test_zoo_claims_resample_within_each_model(monkeypatch):
    """C9: each model's η_sat median is recomputed from its own resampled contexts."""
    per_model = {"a": [(c, laws.Estimate.number(1e-6 * (1 + 0.01 * i))) for i, c in enumerate(CONTEXTS)],
                 "b": [(c, laws.Estimate.number(2e-6 * (1 + 0.01 * i))) for i, c in enumerate(CONTEXTS)]}
    monkeypatch.setattr(claims, "_c9_read", lambda zoo: {m: (None, p) for m, p in per_model.items()})
    claim = dataclasses.replace(claims.BY_ID["C9"], read=claims._c9_read)
    v = claim.check([])
    assert v.status == NOT_REPRODUCED and v.stability == 1.0     # H differs by ×2 in every resample
    lo, hi = v.intervals["H_FT a"]
    assert 20 / 1.1 < lo <= hi < 20.0 + 1e-9
