"""Jump, flip and silent-failure read-outs of a recorded run (SPEC §5).

Every definition here is pre-registered in SPEC §5; the thresholds come from
:mod:`phantom.protocol` and must not be tuned after seeing data.

- ``ΔΦ_t = Φ_{t+1} − Φ_t``; the largest step is ``t* = argmax_t |ΔΦ_t|`` (first on ties).
- Jump ratio ``J = |ΔΦ_{t*}| / median_{0≤t≤t*} |ΔΦ_t|``.
- A run *jumps* iff ``J ≥ 10``, ``|ΔΦ_{t*}| ≥ 0.05 (1 − G_max²)`` and ``t* < T − 1``.
- A *silent failure* never rank-flips, never increases its loss and ends below ``L_0``;
  its failure modes are *kinematic* (small signal) and/or *structural* (falling drag).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .protocol import JUMP_RATIO, JUMP_SIZE, KINEMATIC_SIGNAL, LOSS_TOLERANCE, QUIESCENT, STRUCTURAL_DRAG
from .trajectory import Trajectory

READOUTS = ("dz", "a_g", "a_c")


@dataclass(frozen=True)
class Jump:
    """The largest step of a series and how it stands out (SPEC §5).

    Attributes
    ----------
    ratio : float
        Jump ratio ``J = |ΔΦ_{t*}| / median_{0≤t≤t*} |ΔΦ_t|``; ``1.0`` for a series with
        no step or a flat one, ``inf`` when the median is 0 but the largest step is not.
    t_star : int
        Index ``t*`` of the largest step ``ΔΦ_{t*} = Φ_{t*+1} − Φ_{t*}`` (first on ties).
    size : float
        ``|ΔΦ_{t*}|``.
    n_quiescent : int
        ``#{t < t*: |ΔΦ_t| < 0.1 |ΔΦ_{t*}|}``.
    """

    ratio: float
    t_star: int
    size: float
    n_quiescent: int


@dataclass(frozen=True)
class Analysis:
    """Every SPEC §5 read-out of one trajectory.

    Attributes
    ----------
    jump : Jump
        :func:`jump` of the Born gap Φ (over the finite steps ``t < diverged_at`` of a
        diverged run).
    jumps : bool
        :func:`jumps`.
    born_flip : int or None
        :func:`born_flip_step` of Φ.
    rank_flip : int or None
        :func:`rank_flip_step` of ``p_g``, ``p_c``.
    silent : bool
        :func:`is_silent_failure`.
    modes : frozenset of str
        :func:`failure_modes`.
    diverged : bool
        Whether the run diverged (``diverged_at`` is not None).
    smooth_readout : dict of str to bool
        :func:`is_smooth` of each read-out series ``"dz"``, ``"a_g"``, ``"a_c"``.
    """

    jump: Jump
    jumps: bool
    born_flip: int | None
    rank_flip: int | None
    silent: bool
    modes: frozenset[str]
    diverged: bool
    smooth_readout: dict[str, bool]


def _as_series(values: ArrayLike, name: str = "series") -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array, or raise ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        kind = "NaN" if np.isnan(arr[i]) else "an infinite value"
        raise ValueError(f"{name} contains {kind} at index {i}")
    return arr


def _first(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask``, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def jump(series: ArrayLike) -> Jump:
    """Largest step of a series and its jump ratio (SPEC §5).

    Parameters
    ----------
    series : array_like
        Finite 1-D series ``Φ_0..Φ_n``.

    Returns
    -------
    Jump
        ``t* = argmax_t |ΔΦ_t|`` (first on ties), ``J = |ΔΦ_{t*}| / median_{0≤t≤t*}
        |ΔΦ_t|`` (the median includes ``t*``, so a maximum at ``t = 0`` gives ``J = 1``),
        and the quiescent count. Fewer than 2 points: ``Jump(1.0, 0, 0.0, 0)``. Median 0:
        ``J = 1`` if the largest step is also 0 (flat series), else ``J = inf``.

    Raises
    ------
    ValueError
        If ``series`` is not 1-D or is not finite.
    """
    steps = np.abs(np.diff(_as_series(series)))
    if steps.size == 0:
        return Jump(ratio=1.0, t_star=0, size=0.0, n_quiescent=0)
    t_star = int(np.argmax(steps))
    size = float(steps[t_star])
    median = float(np.median(steps[: t_star + 1]))
    if median > 0:
        ratio = size / median
    else:
        ratio = 1.0 if size == 0 else math.inf
    n_quiescent = int(np.count_nonzero(steps[:t_star] < QUIESCENT * size))
    return Jump(ratio=ratio, t_star=t_star, size=size, n_quiescent=n_quiescent)


def jumps(traj: Trajectory) -> bool:
    """Whether the run's Born gap Φ jumps (SPEC §5).

    Parameters
    ----------
    traj : Trajectory
        A run; uses series ``"phi"`` and meta ``steps`` (T) and ``g_max`` (G_max).

    Returns
    -------
    bool
        ``J ≥ 10`` and ``|ΔΦ_{t*}| ≥ 0.05 (1 − G_max²)`` and ``t* < T − 1``. Always False
        for a diverged run, which is not a completed observation.
    """
    if traj.diverged_at is not None:
        return False
    return is_jump(traj["phi"], traj.g_max, traj.steps)


def is_jump(phi: ArrayLike, g_max: float, steps: int | None = None) -> bool:
    """SPEC §5's jump rule on a Born-gap series ``Φ_0..Φ_T``.

    Parameters
    ----------
    phi : array_like
        Finite 1-D series.
    g_max : float
        ``G_max`` of the pair (the size threshold is ``0.05 (1 − G_max²)``).
    steps : int, optional
        ``T``; default ``len(phi) − 1`` (the monitor's observations so far).

    Returns
    -------
    bool
        ``J ≥ 10`` and ``|ΔΦ_{t*}| ≥ 0.05 (1 − G_max²)`` and ``t* < T − 1`` (a later step confirms it).
    """
    steps = len(phi) - 1 if steps is None else steps
    j = jump(phi)
    return j.ratio >= JUMP_RATIO and j.size >= JUMP_SIZE * (1.0 - g_max ** 2) and j.t_star < steps - 1


def is_smooth(series: ArrayLike) -> bool:
    """Whether a series is smooth, i.e. its jump ratio ``J < 10`` (SPEC §5).

    Used for the read-out series Δz, ``a_g`` and ``a_c``, where only the ratio counts.

    Parameters
    ----------
    series : array_like
        Finite 1-D series.

    Returns
    -------
    bool
    """
    return jump(series).ratio < JUMP_RATIO


def born_flip_step(phi: ArrayLike) -> int | None:
    """First step with ``Φ_t > 0`` (SPEC §5).

    Parameters
    ----------
    phi : array_like
        Finite 1-D Born-gap series.

    Returns
    -------
    int or None
        The first such ``t``, or None if Φ never becomes positive.
    """
    return _first(_as_series(phi, "phi") > 0)


def rank_flip_step(p_g: ArrayLike, p_c: ArrayLike) -> int | None:
    """First step with ``p_g > p_c`` (SPEC §5).

    Parameters
    ----------
    p_g, p_c : array_like
        Finite 1-D probability series of equal length.

    Returns
    -------
    int or None
        The first such ``t``, or None if ``g`` never overtakes ``c``.

    Raises
    ------
    ValueError
        If either series is not 1-D or not finite, or their lengths differ.
    """
    g, c = _as_series(p_g, "p_g"), _as_series(p_c, "p_c")
    if g.shape != c.shape:
        raise ValueError(f"p_g and p_c differ in length: shapes {g.shape} and {c.shape}")
    return _first(g > c)


def is_silent_failure(traj: Trajectory) -> bool:
    """Whether the run is a silent failure (SPEC §5).

    Parameters
    ----------
    traj : Trajectory
        A run; uses series ``"loss"``, ``"p_g"``, ``"p_c"``.

    Returns
    -------
    bool
        No rank flip over the recorded steps, ``L_{t+1} ≤ L_t + 1e-6`` at every step,
        and ``L_T < L_0``. Always False for a diverged run.
    """
    if traj.diverged_at is not None:
        return False
    return silent_failure(traj["loss"], traj["p_g"], traj["p_c"])


def silent_failure(loss: ArrayLike, p_g: ArrayLike, p_c: ArrayLike, tolerance: ArrayLike = LOSS_TOLERANCE) -> bool:
    """SPEC §5's silent-failure rule on series (``is_silent_failure`` applies it to a whole run).

    Parameters
    ----------
    loss, p_g, p_c : array_like
        Finite 1-D series of equal length.
    tolerance : float or array_like
        The allowed rise ``L_{t+1} − L_t`` (SPEC: 1e-6; the monitor passes a relative one per step).

    Returns
    -------
    bool
        No rank flip, ``L_{t+1} ≤ L_t + tolerance`` at every step and ``L_T < L_0``.
    """
    loss = _as_series(loss, "loss")
    return bool(rank_flip_step(p_g, p_c) is None
                and np.all(loss[1:] <= loss[:-1] + np.asarray(tolerance))
                and loss.size > 0 and loss[-1] < loss[0])


def failure_modes(traj: Trajectory) -> frozenset[str]:
    """Failure modes of a silent failure (SPEC §5).

    Parameters
    ----------
    traj : Trajectory
        A run; uses series ``"signal"`` (S) and ``"drag"`` (D) and meta ``g_max``.

    Returns
    -------
    frozenset of str
        ``"kinematic"`` if ``|S_t| ≤ 0.1 (1 − G_max²)`` for all t, ``"structural"`` if
        ``D_T − D_0 < −0.01``; both may hold. Empty for a run that is not a silent failure.
    """
    if not is_silent_failure(traj):
        return frozenset()
    signal = _as_series(traj["signal"], "signal")
    drag = _as_series(traj["drag"], "drag")
    modes = {"kinematic": np.all(np.abs(signal) <= KINEMATIC_SIGNAL * (1.0 - traj.g_max ** 2)),
             "structural": drag[-1] - drag[0] < STRUCTURAL_DRAG}
    return frozenset(name for name, holds in modes.items() if holds)


def analyse(traj: Trajectory) -> Analysis:
    """All SPEC §5 read-outs of one run.

    For a diverged run the series-level read-outs (jump, flips, smoothness) use only the
    steps ``t < diverged_at``, whose state was finite; ``jumps`` and ``silent`` are False.

    Parameters
    ----------
    traj : Trajectory

    Returns
    -------
    Analysis
    """
    def finite(name: str) -> np.ndarray:
        return traj[name][: traj.diverged_at]

    return Analysis(
        jump=jump(finite("phi")),
        jumps=jumps(traj),
        born_flip=born_flip_step(finite("phi")),
        rank_flip=rank_flip_step(finite("p_g"), finite("p_c")),
        silent=is_silent_failure(traj),
        modes=failure_modes(traj),
        diverged=traj.diverged_at is not None,
        smooth_readout={name: is_smooth(finite(name)) for name in READOUTS},
    )
