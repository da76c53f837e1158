"""Cross-model laws of SPEC §5 and the statistics of §6: pure maths on plain numbers.

Nothing here imports a model, the run store or the fine-tuning engine. The run layer
(:mod:`phantom.campaign`, :mod:`phantom.critical`) measures the inputs and passes them in:

- :func:`fit_saturation` fits ``R(η) = R_∞ (1 − exp(−η/η_sat))`` to one context's responses;
  :func:`saturation_estimate` turns a fit into a number when measured LRs bracket its
  ``η_sat`` and into a bound otherwise (A1), and :func:`next_saturation_lr` names the LR that
  extends the grid towards a bracket. An :class:`Estimate` is a number or a bound; medians,
  the reduced field ``H`` and the CV of C9 carry bounds through (:func:`median_estimate`,
  :func:`reduced_field`, :func:`cv_range`).
- :func:`critical_from_brackets` reads ``η_c``, the ``⌈n/2⌉``-th smallest per-context
  critical LR ``η_i``, from the contexts' brackets (A2).
- :func:`blind_q`, :func:`predict_held_out`, :func:`leave_one_out` and
  :func:`per_context_check` implement the blind predictor on ``Φ`` (A3) with ``k`` fitted on
  the *other* models only; the held-out model's ``η_c`` is provably not read before its
  prediction is fixed (:class:`LeakageError`).
- :func:`spearman`, :func:`permutation_p`, :func:`cv`, :func:`bootstrap_indices` and
  :func:`percentile_interval` are the statistics of §6 (A6), from scipy where it has them.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from .protocol import (
    BOOTSTRAP_B,
    BOOTSTRAP_SEED,
    CRITICAL_FRACTION,
    CRITICAL_RTOL,
    ETA_REF,
    INTERVAL,
    PERMUTATION_EXACT_MAX,
    PERMUTATION_SEED,
    PERMUTATIONS,
    SAT_ABOVE,
    SAT_BELOW,
    SAT_BRACKET,
)

# Search range of η_sat relative to the LRs fitted: [min η / SAT_SPAN, max η · SAT_SPAN]
# (an implementation constant, disclosed in CLAIMS.md).
SAT_SPAN = 100.0
_LOG_STEP = 0.05          # coarse grid spacing in ln η_sat before the bounded refinement
_LOG_TOL = 1e-7           # refinement tolerance in ln η_sat (≈ 1e-7 relative)


# --------------------------------------------------------------------------------------------
# Numbers and bounds
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A quantity known as a number (``lo == hi``) or only within ``[lo, hi]`` (SPEC §5 A1).

    ``lo = 0`` means only an upper bound is known, ``hi = inf`` only a lower bound.
    """

    lo: float
    hi: float

    def __post_init__(self):
        if not (0.0 <= self.lo <= self.hi) or math.isnan(self.hi):
            raise ValueError(f"an estimate needs 0 ≤ lo ≤ hi, got [{self.lo!r}, {self.hi!r}]")

    @classmethod
    def number(cls, value: float) -> Estimate:
        return cls(float(value), float(value))

    @property
    def value(self) -> float | None:
        """The number, or None when only a bound is known."""
        return self.lo if self.lo == self.hi else None

    def scaled_inverse(self, scale: float) -> Estimate:
        """``scale / x`` of every ``x`` in the estimate (``H = η_ref / η_sat``)."""
        return Estimate(scale / self.hi if self.hi > 0 else math.inf, scale / self.lo if self.lo > 0 else math.inf)

    def text(self, name: str, fmt: str = ".3g") -> str:
        """``"H_FT = 9.2"``, ``"H_FT > 100"``, ``"H_FT < 3"`` or ``"H_FT ∈ [3, 9]"``."""
        if self.value is not None:
            return f"{name} = {self.value:{fmt}}"
        if self.lo == 0.0:
            return f"{name} < {self.hi:{fmt}}"
        if math.isinf(self.hi):
            return f"{name} > {self.lo:{fmt}}"
        return f"{name} ∈ [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def median_estimate(estimates: Sequence[Estimate]) -> Estimate:
    """The median of quantities known as numbers or bounds: every median they allow.

    The median is non-decreasing in each argument, so the medians compatible with the
    estimates span ``[median(lo), median(hi)]``: a number when the middle ones are numbers,
    a bound when a bound reaches the middle (SPEC §5 A1: ``η_sat(model)``).
    """
    if not estimates:
        raise ValueError("the median of no estimate is undefined")
    return Estimate(float(np.median([e.lo for e in estimates])), float(np.median([e.hi for e in estimates])))


# --------------------------------------------------------------------------------------------
# Saturation (SPEC §5, A1)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SaturationFit:
    """Least-squares fit of ``R(η) = R_∞ (1 − exp(−η/η_sat))`` to one context (SPEC §5).

    Attributes
    ----------
    r_inf : float
        Fitted saturation amplitude ``R_∞`` (unconstrained in sign).
    eta_sat : float
        Fitted ``η_sat`` within :func:`saturation_search_bounds` of the LRs fitted.
    residual : float
        Root-mean-square residual ``sqrt(mean((R − fit)²))``.
    n : int
        Number of points fitted.
    """

    r_inf: float
    eta_sat: float
    residual: float
    n: int

    @property
    def rel_residual(self) -> float:
        """``rms(R − fit) / |R_∞|`` (SPEC §5 A1), inf when ``R_∞ = 0``."""
        return self.residual / abs(self.r_inf) if self.r_inf else math.inf


def saturation_search_bounds(etas: Sequence[float]) -> tuple[float, float]:
    """Range ``[min η / 100, max η · 100]`` searched for ``η_sat`` by :func:`fit_saturation`."""
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
    r_inf = float(b @ resp) / bb if bb > 0.0 and math.isfinite(bb) else 0.0
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
    coefficient; the profile sum of squares is scanned over ``ln η_sat`` on a coarse grid
    spanning ``[min η / 100, max η · 100]`` (the global minimum's neighbourhood) and refined
    by ``scipy.optimize.minimize_scalar`` (bounded) between the best point's neighbours.
    Whether the LRs fitted support the result is :func:`saturation_estimate`'s question.

    Parameters
    ----------
    etas : sequence of float
        Learning rates (positive, finite), at least 3.
    responses : sequence of float
        Responses ``R(η) = Φ_T(η) − Φ_0`` (finite), same length as ``etas``.
    """
    eta, resp = _paired(etas, responses, "etas", "responses")
    if eta.size < 3:
        raise ValueError(f"need at least 3 points for a saturation fit, got {eta.size}")
    if not np.all(np.isfinite(resp)):
        raise ValueError("responses must be finite")
    a, b = (math.log(x) for x in saturation_search_bounds(eta))
    grid = np.linspace(a, b, max(int(math.ceil((b - a) / _LOG_STEP)), 2) + 1)
    sse = np.array([_sat_profile(eta, resp, x)[0] for x in grid])
    i = int(np.argmin(sse))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    found = optimize.minimize_scalar(lambda x: _sat_profile(eta, resp, x)[0], bounds=(left, right),
                                     method="bounded", options={"xatol": _LOG_TOL})
    best = min((grid[i], found.x), key=lambda x: _sat_profile(eta, resp, x)[0])   # keeps the range's ends
    s_best, r_inf = _sat_profile(eta, resp, best)
    return SaturationFit(r_inf=float(r_inf), eta_sat=float(math.exp(best)),
                         residual=float(math.sqrt(s_best / eta.size)), n=int(eta.size))


def support(etas: Sequence[float], eta_sat: float) -> tuple[int, int]:
    """``(LRs below η_sat, LRs above it)`` among the LRs measured (SPEC §5 A1)."""
    e = np.asarray(etas, dtype=np.float64)
    return int(np.sum(e < eta_sat)), int(np.sum(e > eta_sat))


def next_saturation_lr(etas: Sequence[float], fit: SaturationFit, tried: Sequence[float] = ()) -> float | None:
    """The LR that extends a context's grid towards a bracketed ``η_sat``, or None (A1).

    Below first: the largest LR of :data:`~phantom.protocol.SAT_BELOW` not yet measured
    (nor ``tried``: a run that diverged) while fewer than two measured LRs lie below
    ``η_sat``; then above, the smallest of :data:`~phantom.protocol.SAT_ABOVE`. None when the
    fit is bracketed or the extension (two decades below the extended grid, one above) is spent.
    """
    below, above = support(etas, fit.eta_sat)
    measured = {round(math.log(e), 9) for e in (*etas, *tried)}
    for short, steps in ((below < SAT_BRACKET, SAT_BELOW), (above < SAT_BRACKET, SAT_ABOVE)):
        if short:
            fresh = [s for s in steps if round(math.log(s), 9) not in measured]
            if fresh:
                return fresh[0]
    return None


def saturation_estimate(etas: Sequence[float], fit: SaturationFit) -> Estimate:
    """A context's ``η_sat``: the fitted number when bracketed, else a bound (SPEC §5 A1).

    Bracketed: at least two measured LRs on each side of the fitted ``η_sat``. Otherwise the
    data only say on which side of the measured LRs it lies: ``η_sat < η`` with ``η`` the
    smallest measured LR above the fit (the grid's smallest when the fit lies below every
    LR) or ``η_sat > η`` with the largest measured LR below it.
    """
    below, above = support(etas, fit.eta_sat)
    e = np.asarray(etas, dtype=np.float64)
    if below >= SAT_BRACKET and above >= SAT_BRACKET:
        return Estimate.number(fit.eta_sat)
    if below < SAT_BRACKET:
        return Estimate(0.0, float(e[e > fit.eta_sat].min()) if above else float(e.max()))
    return Estimate(float(e[e < fit.eta_sat].max()), math.inf)


def reduced_field(eta_sat: Estimate, eta_ref: float = ETA_REF) -> Estimate:
    """Reduced field ``H = η_ref / η_sat(model)`` (SPEC §5): a bound when ``η_sat`` is one."""
    if not (math.isfinite(eta_ref) and eta_ref > 0):
        raise ValueError("eta_ref must be positive and finite")
    return eta_sat.scaled_inverse(eta_ref)


# --------------------------------------------------------------------------------------------
# Statistics (SPEC §6, A6)
# --------------------------------------------------------------------------------------------

def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (``scipy.stats.spearmanr``).

    ±inf are allowed (a jump ratio can be infinite); NaN is refused. ``nan`` if ``n < 2`` or
    either input is constant. ρ of (half-)integer ranks is a ratio of integers, so scipy's
    floating-point value is rounded to 12 decimals: a ρ of exactly 0.8 meets a 0.8 threshold
    (scipy gives 0.7999999999999999 for it).
    """
    a, b = _paired(x, y, "x", "y")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("x and y must not contain NaN (±inf rank last/first)")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    ra, rb = stats.rankdata(a), stats.rankdata(b)       # inf-safe ranks; spearmanr = Pearson of ranks
    return float(min(1.0, max(-1.0, round(float(stats.spearmanr(ra, rb).statistic), 12))))


def permutation_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided permutation p-value of Spearman's ρ (SPEC §6 A6), ``scipy.stats.permutation_test``.

    Every one of the ``n!`` orderings for ``n ≤ 8``, else 100,000 random ones (seed 0).
    ``nan`` where ρ is (``n < 2`` or a constant input).
    """
    a, b = _paired(x, y, "x", "y")
    if math.isnan(spearman(a, b)):
        return float("nan")
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra = (ra - ra.mean()) / np.linalg.norm(ra - ra.mean())
    rb = (rb - rb.mean()) / np.linalg.norm(rb - rb.mean())

    def rho(yy, axis=-1):                             # Pearson of centred unit ranks, vectorised
        return np.sum(ra * yy, axis=axis)

    exact = a.size <= PERMUTATION_EXACT_MAX
    result = stats.permutation_test((rb,), rho, permutation_type="pairings", vectorized=True,
                                    n_resamples=np.inf if exact else PERMUTATIONS, alternative="two-sided",
                                    rng=None if exact else np.random.default_rng(PERMUTATION_SEED))
    return float(result.pvalue)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation: sample std (ddof=1) / mean (SPEC §6, C9); nan for a zero mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"cv needs at least 2 values, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    mean = float(np.mean(v))
    return float("nan") if mean == 0.0 else float(np.std(v, ddof=1) / mean)


def cv_range(estimates: Sequence[Estimate]) -> tuple[float, float]:
    """Every CV the estimates allow: ``(min, max)`` over their box (SPEC §5 A1, C9).

    CV = std/mean is quasi-convex on positive values, so its maximum over a box lies at a
    vertex (all enumerated) and its minimum is found by ``scipy.optimize`` (a bounded scalar
    search over a common centre every value is clipped to, polished by L-BFGS-B). An
    unbounded side stands at 10⁹ times the largest finite end: CV tends to its limit there.
    """
    lo = np.array([e.lo for e in estimates], dtype=np.float64)
    hi = np.array([e.hi for e in estimates], dtype=np.float64)
    if lo.size < 2:
        raise ValueError(f"cv needs at least 2 values, got {lo.size}")
    finite = np.concatenate([lo[lo > 0], hi[np.isfinite(hi)]])
    big = 1e9 * float(finite.max(initial=1.0))
    hi = np.where(np.isinf(hi), big, hi)
    if np.all(lo == hi):
        return (cv(lo),) * 2
    corners = itertools.product(*[(a, b) if a != b else (a,) for a, b in zip(lo, hi)])
    top = float(np.nanmax([cv(np.array(c)) for c in corners]))   # the all-zero corner has no CV
    if lo.max() <= hi.min():                            # one value fits every box
        return 0.0, top
    clipped = lambda m: cv(np.clip(math.exp(m), lo, hi))   # noqa: E731
    ends = np.log(np.clip([lo.max(), hi.min()], 1e-300, None))
    centre = optimize.minimize_scalar(clipped, bounds=(min(ends), max(ends)), method="bounded")
    x0 = np.clip(math.exp(centre.x), lo, hi)
    polish = optimize.minimize(cv, x0, method="L-BFGS-B", bounds=list(zip(lo, hi)))
    return float(min(centre.fun, polish.fun, top)), float(top)


def bootstrap_indices(n: int, *, b: int = BOOTSTRAP_B, rng: np.random.Generator | None = None) -> np.ndarray:
    """(b, n) indices of ``b`` resamples with replacement of ``n`` contexts (SPEC §6 A6).

    One seeded generator (:data:`~phantom.protocol.BOOTSTRAP_SEED`) unless ``rng`` is given:
    the same resamples every time.
    """
    if n < 1:
        raise ValueError(f"a bootstrap needs at least one context, got {n}")
    rng = np.random.default_rng(BOOTSTRAP_SEED) if rng is None else rng
    return rng.integers(0, n, size=(b, n))


def percentile_interval(values: Sequence[float], level: float = INTERVAL) -> tuple[float, float] | None:
    """The ``level`` percentile interval of the finite bootstrap values, or None if there are none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# Critical learning rate (SPEC §5, A2)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalLR:
    """``η_c`` of a model from its contexts' brackets (SPEC §5 A2).

    Attributes
    ----------
    eta_c : float or None
        The ``⌈n/2⌉``-th smallest per-context upper end: the smallest LR known to flip at
        least half of the contexts. None when fewer than half ever flip in the range searched.
    bracket : tuple of float
        ``(lo, hi)``: at ``lo`` fewer than half of the contexts flip, at ``hi = eta_c`` at least
        half; ``lo = 0`` when every LR probed flips half of them (``η_c ≤ hi``, a bound).
    converged : bool
        ``hi / lo − 1 ≤ rtol``.
    """

    eta_c: float | None
    bracket: tuple[float, float]
    converged: bool

    def estimate(self) -> Estimate:
        """η_c as a number (converged) or the bound the bracket gives."""
        lo, hi = self.bracket
        return Estimate.number(self.eta_c) if self.converged else Estimate(lo, hi)


def kth_smallest(n: int) -> int:
    """``⌈n/2⌉``: the order of the per-context critical LR that is ``η_c`` (SPEC §5 A2)."""
    return math.ceil(n * CRITICAL_FRACTION)


def critical_from_brackets(brackets: Sequence[tuple[float, float]], rtol: float = CRITICAL_RTOL) -> CriticalLR:
    """``η_c`` from per-context brackets ``(lo_i, hi_i)``: no flip at ``lo_i``, a flip at ``hi_i``.

    ``lo_i = 0`` when the context flips at every LR probed, ``hi_i = inf`` when it never does.
    Under per-context monotonicity in η, at an LR ``η`` at least ``#{hi_i ≤ η}`` contexts
    flip and at most ``#{lo_i < η}``; so with ``k = ⌈n/2⌉`` at least half flip at the
    ``k``-th smallest ``hi_i`` and fewer than half at the ``k``-th smallest ``lo_i``: the
    same ``η_c`` as a bisection of the flip fraction, read from the contexts.
    """
    if not brackets:
        raise ValueError("η_c needs at least one usable context")
    k = kth_smallest(len(brackets))
    lo = sorted(b[0] for b in brackets)[k - 1]
    hi = sorted(b[1] for b in brackets)[k - 1]
    if math.isinf(hi):
        return CriticalLR(None, (lo, hi), False)
    return CriticalLR(hi, (lo, hi), lo > 0 and hi / lo - 1.0 <= rtol * (1 + 1e-9))


# --------------------------------------------------------------------------------------------
# Blind predictor (SPEC §5, A3)
# --------------------------------------------------------------------------------------------

class LeakageError(RuntimeError):
    """The held-out model's ``η_c`` was read while its blind prediction was being made."""


@dataclass(frozen=True)
class BlindQ:
    """Per-model blind statistic (SPEC §5 A3).

    Attributes
    ----------
    q : float or None
        Median over the contexts with ``r > 0`` of ``q_i = −Φ_0 / (T · r)``; None if none.
    per_context : dict of str to float
        ``q_i`` of every context used.
    excluded : tuple of str
        Contexts with ``r ≤ 0`` (reported and excluded).
    """

    q: float | None
    per_context: dict
    excluded: tuple[str, ...]

    @property
    def used(self) -> tuple[str, ...]:
        return tuple(self.per_context)


def blind_q(phi0: Mapping[str, float], r: Mapping[str, float], steps: int) -> BlindQ:
    """One model's ``q`` from per-context ``Φ_0`` and ``r`` (SPEC §5 A3).

    ``Φ_0 < 0`` by orientation (SPEC §3), so every ``q_i`` of a context with ``r > 0`` is a
    positive learning rate; a ``Φ_0 ≥ 0`` is an orientation error, raised.
    """
    if set(phi0) != set(r):
        raise ValueError(f"phi0 and r cover different contexts: {sorted(set(phi0) ^ set(r))}")
    if isinstance(steps, bool) or int(steps) != steps or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    per_context, excluded = {}, []
    for ctx in phi0:
        p, rc = float(phi0[ctx]), float(r[ctx])
        if not (math.isfinite(p) and math.isfinite(rc)):
            raise ValueError(f"non-finite Φ_0 or r for context {ctx!r}")
        if p >= 0:
            raise ValueError(f"Φ_0 = {p!r} ≥ 0 for context {ctx!r}: oriented contexts start at Φ_0 < 0")
        if rc > 0:
            per_context[ctx] = -p / (steps * rc)
        else:
            excluded.append(ctx)
    q = float(np.median(list(per_context.values()))) if per_context else None
    return BlindQ(q=q, per_context=per_context, excluded=tuple(excluded))


@dataclass(frozen=True)
class Prediction:
    """Leave-one-out blind prediction for one model (SPEC §5, claim C13)."""

    model: str
    q: float
    k: float          # geometric mean of η_c / q over the other models
    eta_hat: float    # k · q, fixed before eta_c was read
    eta_c: float
    rel_error: float  # |η̂_c − η_c| / η_c


def guard_held_out(eta_c: Callable[[str], float], model: str) -> Callable[[str], float]:
    """Wrap ``eta_c`` so that asking for ``model`` raises :class:`LeakageError`."""
    def guarded(m: str) -> float:
        if m == model:
            raise LeakageError(f"η_c of held-out model {model!r} read before its prediction")
        return eta_c(m)
    return guarded


def _positive(what: str, m: str, v) -> float:
    if v is None:
        raise ValueError(f"{what} of model {m!r} is None; exclude the model")
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} of model {m!r} must be positive and finite, got {v!r}")
    return v


def _usable_q(q: Mapping[str, float | None]) -> dict[str, float]:
    return {m: _positive("q", m, v) for m, v in q.items() if v is not None}


def blind_k(others: Sequence[str], q: Mapping[str, float], eta_c: Callable[[str], float]) -> float:
    """The blind predictor's ``k``: geometric mean of ``η_c / q`` over ``others`` (SPEC §5)."""
    logs = [math.log(_positive("η_c", o, eta_c(o)) / q[o]) for o in others]
    return float(math.exp(math.fsum(logs) / len(logs)))


def predict_held_out(model: str, q: Mapping[str, float | None],
                     eta_c: Callable[[str], float]) -> tuple[float, float]:
    """``(k, η̂_c = k · q)`` for ``model`` with ``k`` from the others, read through a guard."""
    qs = _usable_q(q)
    if model not in qs:
        raise ValueError(f"held-out model {model!r} has no usable q")
    others = [m for m in qs if m != model]
    if not others:
        raise ValueError("blind prediction needs at least one other model with a q")
    k = blind_k(others, qs, guard_held_out(eta_c, model))
    return k, k * qs[model]


def leave_one_out(q: Mapping[str, float | None], eta_c: Callable[[str], float]) -> list[Prediction]:
    """Leave-one-out blind prediction over all models with a ``q`` (SPEC §5, C13).

    Each prediction is fixed by :func:`predict_held_out` before the model's own ``η_c`` is
    read; ``eta_c`` is called at most once per model.
    """
    qs = _usable_q(q)
    if len(qs) < 2:
        raise ValueError(f"leave-one-out needs at least 2 models with a q, got {len(qs)}")
    cache: dict[str, float] = {}

    def cached(m: str) -> float:
        if m not in cache:
            cache[m] = _positive("η_c", m, eta_c(m))
        return cache[m]

    out = []
    for m in qs:
        k, eta_hat = predict_held_out(m, qs, cached)   # the guard sits outside the cache
        ec = cached(m)
        out.append(Prediction(model=m, q=qs[m], k=k, eta_hat=eta_hat, eta_c=ec, rel_error=abs(eta_hat - ec) / ec))
    return out


@dataclass(frozen=True)
class ContextCheck:
    """The blind predictor context by context (SPEC §5 A3): ``|ln(η̂_i / η_i)|`` with ``η̂_i = k q_i``."""

    median: float
    p90: float
    n: int
    log_ratio: dict      # context → ln(η̂_i / η_i)


def per_context_check(k: float, q_i: Mapping[str, float], eta_i: Mapping[str, float]) -> ContextCheck | None:
    """Median and 90th percentile of ``|ln(k q_i / η_i)|`` over contexts with both (None if none)."""
    common = [c for c in q_i if eta_i.get(c) is not None and math.isfinite(eta_i[c])]
    if not common:
        return None
    logs = {c: math.log(k * q_i[c] / eta_i[c]) for c in common}
    a = np.abs(list(logs.values()))
    return ContextCheck(float(np.median(a)), float(np.percentile(a, 90)), len(a), logs)
