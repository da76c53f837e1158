"""Cross-model laws of SPEC §5: saturation, critical LR, blind predictor, statistics.

Pure maths on plain numbers and callables: nothing here imports a model, the run store or
the fine-tuning engine. The run layer (:mod:`phantom.campaign`) measures the inputs and
passes them in:

- :func:`fit_saturation` fits ``R(η) = R_∞ (1 − exp(−η/η_sat))`` by least squares to the
  response ``R(η) = Φ_T(η) − Φ_0`` of one context over a learning-rate grid;
  :func:`reduced_field` turns the per-context ``η_sat`` of one model into ``H = η_ref / η_sat``.
- :func:`critical_lr` locates ``η_c``, the smallest full-FT LR at which at least half of the
  usable contexts Born-flip by ``T``, by bisection in log η to 1% relative precision.
- :func:`blind_q`, :func:`predict_held_out` and :func:`leave_one_out` implement the blind
  predictor ``η̂_c = k · q`` with ``k`` fitted on the *other* models only; the held-out model's
  ``η_c`` is provably not read before its prediction is fixed (:class:`LeakageError`).
- :func:`spearman` and :func:`cv` are the statistics the claims (SPEC §6) use.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .protocol import CRITICAL_FRACTION, CRITICAL_RTOL, ETA_REF

# Search range of η_sat relative to the LR grid: [min η / SAT_SPAN, max η · SAT_SPAN].
SAT_SPAN = 100.0
_LOG_STEP = 0.05          # coarse grid spacing in ln η_sat
_LOG_TOL = 1e-7           # golden-section stopping width in ln η_sat (≈ 1e-7 relative)
_INVPHI = (math.sqrt(5.0) - 1.0) / 2.0
EXTEND_DECADES = 3        # η_c search beyond the LR grid, in decades each way (not a SPEC value)


# --------------------------------------------------------------------------------------------
# Saturation
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SaturationFit:
    """Least-squares fit of ``R(η) = R_∞ (1 − exp(−η/η_sat))`` (SPEC §5).

    Attributes
    ----------
    r_inf : float
        Fitted saturation amplitude ``R_∞`` (unconstrained in sign).
    eta_sat : float
        Fitted saturation LR ``η_sat``. It lies in :func:`saturation_search_bounds`; when it
        equals a bound (see :meth:`at_boundary`) the data show no saturation within the range
        (e.g. a response linear in η gives the upper bound) and the caller must report it.
    residual : float
        Root-mean-square residual ``sqrt(mean((R − fit)²))``.
    n : int
        Number of points fitted.
    """

    r_inf: float
    eta_sat: float
    residual: float
    n: int

    def at_boundary(self, etas: Sequence[float], rel: float = 1e-3) -> bool:
        """True iff ``eta_sat`` is within ``rel`` (relative) of a bound of the search range.

        Parameters
        ----------
        etas : sequence of float
            The learning rates the fit was made on (they define the range).
        rel : float
            Relative closeness counted as "at the bound".
        """
        lo, hi = saturation_search_bounds(etas)
        return bool(self.eta_sat <= lo * (1.0 + rel) or self.eta_sat >= hi / (1.0 + rel))


def saturation_search_bounds(etas: Sequence[float]) -> tuple[float, float]:
    """Range ``[min η / 100, max η · 100]`` searched for ``η_sat`` by :func:`fit_saturation`.

    Parameters
    ----------
    etas : sequence of float
        Positive, finite learning rates.

    Returns
    -------
    tuple of float
        ``(lower, upper)`` bound on ``η_sat`` (SPEC §5 saturation fit).
    """
    e = np.asarray(etas, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError("etas must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError("etas must be positive and finite")
    return float(e.min() / SAT_SPAN), float(e.max() * SAT_SPAN)


def _sat_profile(eta: np.ndarray, resp: np.ndarray, log_sat: float) -> tuple[float, float]:
    """(sum of squared residuals, optimal R_∞) for fixed ``η_sat = exp(log_sat)``."""
    b = -np.expm1(-eta / math.exp(log_sat))          # 1 − exp(−η/η_sat), accurate for small η
    bb = float(b @ b)
    if bb == 0.0 or not math.isfinite(bb):
        r_inf = 0.0
    else:
        r_inf = float(b @ resp) / bb
    res = resp - r_inf * b
    return float(res @ res), r_inf


def _paired(x, y, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float64 arrays, or a ValueError naming them."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"{xname} and {yname} must be 1-D sequences")
    if a.size != b.size:
        raise ValueError(f"{xname} and {yname} differ in length ({a.size} vs {b.size})")
    return a, b


def fit_saturation(etas: Sequence[float], responses: Sequence[float]) -> SaturationFit:
    """Fit ``R(η) = R_∞ (1 − exp(−η/η_sat))`` by least squares (SPEC §5).

    For fixed ``η_sat`` the optimal ``R_∞`` is the closed-form linear least-squares
    coefficient; the remaining (profile) sum of squares is minimised over ``ln η_sat`` on a
    coarse log grid spanning ``[min η / 100, max η · 100]`` and refined by golden-section
    search in log space to about 1e-7 relative.

    If the best ``η_sat`` lies at the search boundary (e.g. a response linear in η: no
    saturation within range, or a step already complete at the smallest η) it is still
    returned; :meth:`SaturationFit.at_boundary` detects this and the caller reports it.

    Parameters
    ----------
    etas : sequence of float
        Learning rates (positive, finite), at least 3.
    responses : sequence of float
        Responses ``R(η) = Φ_T(η) − Φ_0`` (finite), same length as ``etas``.

    Returns
    -------
    SaturationFit

    Raises
    ------
    ValueError
        Fewer than 3 points, different lengths, non-positive or non-finite etas, or non-finite
        responses.
    """
    eta, resp = _paired(etas, responses, "etas", "responses")
    if eta.size < 3:
        raise ValueError(f"need at least 3 points for a saturation fit, got {eta.size}")
    if not np.all(np.isfinite(eta)) or np.any(eta <= 0):
        raise ValueError("etas must be positive and finite")
    if not np.all(np.isfinite(resp)):
        raise ValueError("responses must be finite")

    lo, hi = saturation_search_bounds(eta)
    a, b = math.log(lo), math.log(hi)
    m = max(int(math.ceil((b - a) / _LOG_STEP)), 2) + 1
    grid = np.linspace(a, b, m)
    sse = np.array([_sat_profile(eta, resp, x)[0] for x in grid])
    i = int(np.argmin(sse))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, m - 1)]

    # Golden-section search on [left, right] (the bracket of the best grid point).
    f = lambda x: _sat_profile(eta, resp, x)[0]  # noqa: E731
    c = right - _INVPHI * (right - left)
    d = left + _INVPHI * (right - left)
    fc, fd = f(c), f(d)
    while right - left > _LOG_TOL:
        if fc <= fd:
            right, d, fd = d, c, fc
            c = right - _INVPHI * (right - left)
            fc = f(c)
        else:
            left, c, fc = c, d, fd
            d = left + _INVPHI * (right - left)
            fd = f(d)
    # Best of the refined point and the bracket ends (keeps exact boundaries reachable).
    cands = [0.5 * (left + right), grid[i], left, right]
    vals = [f(x) for x in cands]
    x_best = cands[int(np.argmin(vals))]
    s_best, r_inf = _sat_profile(eta, resp, x_best)
    return SaturationFit(r_inf=float(r_inf), eta_sat=float(math.exp(x_best)),
                         residual=float(math.sqrt(s_best / eta.size)), n=int(eta.size))


def reduced_field(eta_sats: Sequence[float], eta_ref: float = ETA_REF) -> float:
    """Reduced field ``H = η_ref / median(η_sat)`` of one model (SPEC §5).

    Parameters
    ----------
    eta_sats : sequence of float
        Per-context fitted ``η_sat`` (positive, finite), at least one.
    eta_ref : float
        Reference LR, default :data:`ETA_REF` = 2e-5.

    Returns
    -------
    float
    """
    e = np.asarray(eta_sats, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError("eta_sats must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError("eta_sats must be positive and finite")
    if not (math.isfinite(eta_ref) and eta_ref > 0):
        raise ValueError("eta_ref must be positive and finite")
    return float(eta_ref / np.median(e))


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span."""
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    ranks = np.empty(v.size, dtype=np.float64)
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation, average ranks for ties (SPEC §6 claims).

    Parameters
    ----------
    x, y : sequence of float
        Paired values of equal length; ±inf are allowed (a jump ratio can be infinite).

    Returns
    -------
    float
        Pearson correlation of the average ranks; ``nan`` if ``n < 2`` or either input is
        constant.
    """
    a, b = _paired(x, y, "x", "y")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("x and y must not contain NaN (±inf rank last/first)")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    ra = _average_ranks(a) - (a.size + 1) / 2.0
    rb = _average_ranks(b) - (b.size + 1) / 2.0
    rho = float(ra @ rb) / math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(min(1.0, max(-1.0, rho)))


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation: sample std (ddof=1) / mean (SPEC §6, C9).

    Parameters
    ----------
    values : sequence of float
        Finite values, at least 2.

    Returns
    -------
    float
        ``std(values, ddof=1) / mean(values)``; ``nan`` if the mean is zero.

    Raises
    ------
    ValueError
        Fewer than 2 values or a non-finite value.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"cv needs at least 2 values, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    mean = float(np.mean(v))
    if mean == 0.0:
        return float("nan")
    return float(np.std(v, ddof=1) / mean)


# --------------------------------------------------------------------------------------------
# Critical learning rate
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalLR:
    """Result of :func:`critical_lr` (SPEC §5).

    Attributes
    ----------
    eta_c : float or None
        The critical LR (the upper end of the final bracket). Without a bracket: the smallest
        LR probed if every probe succeeds (an upper bound: η_c lies below it), ``None`` if no
        probe succeeds (η_c lies above the largest).
    bracket : tuple of float or None
        Final ``(lo, hi)`` with ``f(lo) < 0.5 ≤ f(hi)``; ``None`` when no bracket exists.
    probes : tuple of (float, float)
        ``(η, flip fraction)`` of every LR consulted, in probe order (values taken from
        ``known`` included).
    converged : bool
        True iff a bracket with ``hi/lo − 1 ≤ rtol`` was reached.
    """

    eta_c: float | None
    bracket: tuple[float, float] | None
    probes: tuple[tuple[float, float], ...]
    converged: bool


def critical_lr(flip_fraction: Callable[[float], float], grid: Sequence[float], *,
                rtol: float = CRITICAL_RTOL, known: Mapping[float, float] | None = None,
                extend: int = EXTEND_DECADES) -> CriticalLR:
    """Locate ``η_c`` by a grid scan then bisection in log η (SPEC §5).

    ``η_c`` is the smallest full-FT LR at which the Born flip happens by ``T`` for at least
    half of the usable contexts. The flip fraction is assumed monotone in η (nothing more).
    The sorted grid is scanned upwards and the scan stops at the first LR with fraction
    ``≥ 0.5`` (``hi``); ``lo`` is the grid LR below it. The bracket is then bisected at the
    geometric mean until ``hi/lo − 1 ≤ rtol``, keeping ``f(lo) < 0.5 ≤ f(hi)``; ``η_c = hi``.

    ``flip_fraction`` is never called twice for the same η, nor for an η in ``known``.

    Parameters
    ----------
    flip_fraction : callable
        ``η -> fraction in [0, 1]`` of usable contexts that Born-flip by ``T`` (expensive).
    grid : sequence of float
        Positive, finite, distinct LRs (any order).
    rtol : float
        Relative bracket width at which bisection stops (default 1%).
    extend : int
        Decades probed below (above) the grid when its smallest LR succeeds (no LR succeeds).
    known : mapping of float to float, optional
        Fractions already measured (e.g. on grid points); reused without calling. Keys are
        matched to probed LRs to within 1e-9 relative.

    Returns
    -------
    CriticalLR
        No bracket within ``extend`` decades: ``bracket=None``, ``converged=False``, and
        ``eta_c=None`` (every probe fails) or the smallest LR probed (every probe succeeds);
        the caller reports either case.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError("grid must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("grid LRs must be positive and finite")
    g = np.sort(g)
    if np.any(np.diff(g) == 0):
        raise ValueError("grid LRs must be distinct")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError("rtol must be positive and finite")

    def check(eta: float, v) -> float:
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"flip fraction at η={eta!r} is not a number: {v!r}") from None
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"flip fraction at η={eta!r} must lie in [0, 1], got {v!r}")
        return v

    seen: list[tuple[float, float]] = []
    for k, v in (known or {}).items():
        k = float(k)
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"known LR must be positive and finite, got {k!r}")
        seen.append((k, check(k, v)))
    probes: list[tuple[float, float]] = []

    def f(eta: float) -> float:
        eta = float(eta)
        for k, v in seen:
            if abs(k - eta) <= 1e-9 * max(k, eta):
                probes.append((eta, v))
                return v
        v = check(eta, flip_fraction(eta))
        seen.append((eta, v))
        probes.append((eta, v))
        return v

    hi_idx = next((i for i, eta in enumerate(g) if f(eta) >= CRITICAL_FRACTION), None)
    if hi_idx is None:                          # above the grid: a decade at a time upwards
        lo, hi = float(g[-1]), None
        for k in range(1, extend + 1):
            if f(float(g[-1]) * 10 ** k) >= CRITICAL_FRACTION:
                hi = float(g[-1]) * 10 ** k
                break
            lo = float(g[-1]) * 10 ** k
        if hi is None:
            return CriticalLR(eta_c=None, bracket=None, probes=tuple(probes), converged=False)
    elif hi_idx == 0:                           # below the grid: a decade at a time downwards
        lo, hi = None, float(g[0])
        for k in range(1, extend + 1):
            if f(float(g[0]) / 10 ** k) < CRITICAL_FRACTION:
                lo = float(g[0]) / 10 ** k
                break
            hi = float(g[0]) / 10 ** k
        if lo is None:
            return CriticalLR(eta_c=hi, bracket=None, probes=tuple(probes), converged=False)
    else:
        lo, hi = float(g[hi_idx - 1]), float(g[hi_idx])
    converged = True
    while hi / lo - 1.0 > rtol:
        mid = math.sqrt(lo) * math.sqrt(hi)
        if not (lo < mid < hi):          # floating-point exhaustion (rtol far below eps)
            converged = False
            break
        if f(mid) >= CRITICAL_FRACTION:
            hi = mid
        else:
            lo = mid
    return CriticalLR(eta_c=hi, bracket=(lo, hi), probes=tuple(probes), converged=converged)


# --------------------------------------------------------------------------------------------
# Blind predictor
# --------------------------------------------------------------------------------------------

class LeakageError(RuntimeError):
    """The held-out model's ``η_c`` was read while its blind prediction was being made."""


@dataclass(frozen=True)
class BlindQ:
    """Per-model blind statistic ``q`` (SPEC §5).

    Attributes
    ----------
    q : float or None
        ``median over contexts with r > 0 of (−Δz_0) / (T · r)``; ``None`` if no context has
        ``r > 0``.
    used : tuple of str
        Contexts with ``r > 0`` (in input order).
    excluded : tuple of str
        Contexts with ``r ≤ 0`` (reported and excluded).
    """

    q: float | None
    used: tuple[str, ...]
    excluded: tuple[str, ...]


def blind_q(dz0: Mapping[str, float], r: Mapping[str, float], steps: int) -> BlindQ:
    """Compute one model's ``q`` from per-context ``Δz_0`` and ``r`` (SPEC §5).

    Parameters
    ----------
    dz0 : mapping of str to float
        Per context, ``Δz_0 = z_g − z_c`` at step 0.
    r : mapping of str to float
        Per context, ``r = ∇_θΔz · sign(−∇_θL)`` at step 0; same contexts as ``dz0``.
    steps : int
        The protocol's ``T`` (positive).

    Returns
    -------
    BlindQ
    """
    if set(dz0) != set(r):
        raise ValueError(f"dz0 and r cover different contexts: "
                         f"{sorted(set(dz0) ^ set(r))}")
    if isinstance(steps, bool) or int(steps) != steps or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    used, excluded, vals = [], [], []
    for ctx in dz0:
        d, rc = float(dz0[ctx]), float(r[ctx])
        if not (math.isfinite(d) and math.isfinite(rc)):
            raise ValueError(f"non-finite Δz_0 or r for context {ctx!r}")
        if rc > 0:
            used.append(ctx)
            vals.append(-d / (steps * rc))
        else:
            excluded.append(ctx)
    q = float(np.median(vals)) if vals else None
    return BlindQ(q=q, used=tuple(used), excluded=tuple(excluded))


@dataclass(frozen=True)
class Prediction:
    """Leave-one-out blind prediction for one model (SPEC §5, claim C13).

    Attributes
    ----------
    model : str
    q : float
        The model's blind statistic.
    k : float
        Geometric mean of ``η_c / q`` over the other models.
    eta_hat : float
        ``k · q``, fixed before ``eta_c`` was read.
    eta_c : float
        The measured critical LR.
    rel_error : float
        ``|η̂_c − η_c| / η_c``.
    """

    model: str
    q: float
    k: float
    eta_hat: float
    eta_c: float
    rel_error: float


def guard_held_out(eta_c: Callable[[str], float], model: str) -> Callable[[str], float]:
    """Wrap ``eta_c`` so that asking for ``model`` raises :class:`LeakageError`.

    Parameters
    ----------
    eta_c : callable
        ``model name -> η_c``.
    model : str
        The held-out model.

    Returns
    -------
    callable
        Same as ``eta_c`` for every other model.
    """
    def guarded(m: str) -> float:
        if m == model:
            raise LeakageError(f"η_c of held-out model {model!r} read before its prediction")
        return eta_c(m)
    return guarded


def _usable_q(q: Mapping[str, float | None]) -> dict[str, float]:
    out = {}
    for m, v in q.items():
        if v is None:
            continue
        v = float(v)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"q of model {m!r} must be positive and finite, got {v!r}")
        out[m] = v
    return out


def _eta_c_value(m: str, v) -> float:
    if v is None:
        raise ValueError(f"η_c of model {m!r} is None (not located); exclude the model")
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"η_c of model {m!r} must be positive and finite, got {v!r}")
    return v


def blind_k(others: Sequence[str], q: Mapping[str, float], eta_c: Callable[[str], float]) -> float:
    """The blind predictor's ``k``: geometric mean of ``η_c / q`` over ``others`` (SPEC §5).

    Reads ``eta_c`` for each of ``others`` only; ``q`` must hold them.
    """
    logs = [math.log(_eta_c_value(o, eta_c(o)) / q[o]) for o in others]
    return float(math.exp(math.fsum(logs) / len(logs)))


def predict_held_out(model: str, q: Mapping[str, float | None],
                     eta_c: Callable[[str], float]) -> tuple[float, float]:
    """Blind prediction ``η̂_c = k · q`` for ``model`` with ``k`` from the others (SPEC §5).

    ``k`` is the geometric mean of ``η_c / q`` over the other models with ``q`` not None.
    ``eta_c`` is called only through :func:`guard_held_out`, so a read of ``model`` raises
    :class:`LeakageError` instead of leaking.

    Parameters
    ----------
    model : str
        The held-out model (its ``q`` must be positive and finite).
    q : mapping of str to float or None
        Per-model blind statistic (models with ``None`` are ignored).
    eta_c : callable
        ``model name -> η_c`` (positive, finite) for the other models.

    Returns
    -------
    tuple of float
        ``(k, η̂_c)``.
    """
    qs = _usable_q(q)
    if model not in qs:
        raise ValueError(f"held-out model {model!r} has no usable q")
    others = [m for m in qs if m != model]
    if not others:
        raise ValueError("blind prediction needs at least one other model with a q")
    k = blind_k(others, qs, guard_held_out(eta_c, model))
    return k, k * qs[model]


def leave_one_out(q: Mapping[str, float | None],
                  eta_c: Callable[[str], float]) -> list[Prediction]:
    """Leave-one-out blind prediction over all models with a ``q`` (SPEC §5, claim C13).

    For each model in the order of ``q`` (models with ``q`` None are skipped), the prediction
    is made first by :func:`predict_held_out` (which cannot read the model's ``η_c``); only
    then is ``eta_c(model)`` read for the relative error. ``eta_c`` is cached: each model's
    ``η_c`` is computed at most once over the whole loop.

    Parameters
    ----------
    q : mapping of str to float or None
        Per-model blind statistic.
    eta_c : callable
        ``model name -> η_c`` (may be expensive, e.g. a bisection).

    Returns
    -------
    list of Prediction

    Raises
    ------
    ValueError
        Fewer than 2 models with ``q`` not None, or an invalid ``q`` / ``η_c``.
    """
    qs = _usable_q(q)
    if len(qs) < 2:
        raise ValueError(f"leave-one-out needs at least 2 models with a q, got {len(qs)}")
    cache: dict[str, float] = {}

    def cached(m: str) -> float:
        if m not in cache:
            cache[m] = _eta_c_value(m, eta_c(m))
        return cache[m]

    out = []
    for m in qs:
        k, eta_hat = predict_held_out(m, qs, cached)   # guard sits outside the cache
        ec = cached(m)
        out.append(Prediction(model=m, q=qs[m], k=k, eta_hat=eta_hat, eta_c=ec,
                              rel_error=abs(eta_hat - ec) / ec))
    return out
