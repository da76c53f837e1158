"""Runs placed by what earlier runs showed: saturation brackets (A1) and critical LRs (A2).

Both searches are deterministic functions of a context's runs, so a search replayed on a
warm store reads exactly the runs it made the first time and computes nothing; its cost
(runs and steps it read beyond the plan's grid) does not depend on the store's history.

- :func:`saturation` fits a context's response over the saturation grid and extends the grid
  by the SPEC's 1–2–5 steps until measured LRs bracket ``η_sat`` (SPEC §5 A1).
- :func:`context_critical` locates the per-context critical LR ``η_i``, the smallest full-FT
  LR at which the context Born-flips by ``T``, to a relative precision (SPEC §5 A2). Every
  run it reads enters a per-context record of outcomes, whose monotonicity in η it checks.
  Probes go where the response ``Φ_T(η)``, smooth in η and ``Φ_0`` at η = 0, crosses zero
  by a monotone cubic through every run read (:func:`zero_estimate`): one probe per step,
  then, once two successive estimates agree, a pair straddling the estimate within the
  precision; a bracket that fails to halve over :data:`BISECT_AFTER` steps is bisected.

:mod:`phantom.critical` caches the per-context searches in the run store and combines them
into ``η_c``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq

from . import laws
from .protocol import CONTEXT_RTOL
from .trajectory import Trajectory

EXTEND_DECADES = 3    # η_i searched up to three decades beyond the LRs of the plan (not a SPEC value)
_STRADDLE = 0.999     # a straddling pair spans (1 + rtol) · 0.999², safely inside the precision
BISECT_AFTER = 3      # a search whose bracket fails to halve (in ln η) over this many steps bisects once

Prefetch = Callable[[list[tuple[str, float, str, str]]], None]
"""Computes the store entries of runs ``(mode, lr, context, stop)`` before they are read, e.g. in parallel."""


def born_flipped(run: Trajectory) -> bool:
    """Born flip by ``T`` (SPEC §5): some recorded ``Φ_t > 0`` in a run that did not diverge."""
    return run.diverged_at is None and bool((run["phi"] > 0).any())


def response(run: Trajectory) -> float | None:
    """``R = Φ_T − Φ_0`` of a completed run (a saturated stop's last Φ is within ~3e-4 of Φ_T)."""
    return None if run.diverged_at is not None else float(run["phi"][-1] - run["phi"][0])


# --- A1: saturation ---------------------------------------------------------------------

@dataclass(frozen=True)
class Saturation:
    """One context's saturation fit on its measured LRs (SPEC §5 A1)."""

    context: str
    etas: tuple[float, ...]          # LRs of completed runs, ascending
    responses: tuple[float, ...]
    fit: laws.SaturationFit | None   # None with fewer than 3 completed runs
    estimate: laws.Estimate | None   # η_sat: a number when bracketed, else a bound
    added: tuple[float, ...]         # LRs the extension added to the plan's grid


def saturation(campaign, context: str, prefetch: Prefetch | None = None) -> Saturation:
    """Fit the context's responses, extending its grid until ``η_sat`` is bracketed (SPEC §5 A1)."""
    tried = list(campaign.plan.saturation)
    while True:
        done = {lr: r for lr in sorted(tried) if (r := response(campaign.run("full", lr, context))) is not None}
        etas, resp = tuple(done), tuple(done.values())
        if len(etas) < 3:
            return Saturation(context, etas, resp, None, None, tuple(tried[len(campaign.plan.saturation):]))
        fit = laws.fit_saturation(etas, resp)
        nxt = laws.next_saturation_lr(etas, fit, tried)
        if nxt is None:
            return Saturation(context, etas, resp, fit, laws.saturation_estimate(etas, fit),
                              tuple(tried[len(campaign.plan.saturation):]))
        tried.append(nxt)
        if prefetch is not None:                 # the plan's grid is computed before (its planned runs)
            prefetch([("full", nxt, context, campaign.plan.stop)])


# --- A2: per-context critical LRs ------------------------------------------------------------

@dataclass
class ContextCritical:
    """The outcomes one context's η_i search has read, and what they bracket (SPEC §5 A2)."""

    context: str
    seen: dict = field(default_factory=dict)      # lr → (Born-flipped by T, response R or None)
    probes: list = field(default_factory=list)    # LRs run by the search itself, in order
    steps: int = 0                                # training steps of those runs

    def add(self, run: Trajectory) -> None:
        self.seen[run.meta["lr"]] = (born_flipped(run), response(run))

    def to_dict(self) -> dict:
        """JSON-able form (a run-store payload: :mod:`phantom.critical`)."""
        return {"context": self.context, "seen": [[lr, f, r] for lr, (f, r) in sorted(self.seen.items())],
                "probes": self.probes, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> ContextCritical:
        return cls(d["context"], {float(lr): (bool(f), r) for lr, f, r in d["seen"]}, list(d["probes"]),
                   int(d["steps"]))

    @property
    def lo(self) -> float:
        """Largest LR without a flip below :attr:`hi` (0 when every LR read flips)."""
        return max((lr for lr, (f, _) in self.seen.items() if not f and lr < self.hi), default=0.0)

    @property
    def hi(self) -> float:
        """Smallest LR with a flip (inf when none flips)."""
        return min((lr for lr, (f, _) in self.seen.items() if f), default=math.inf)

    @property
    def bracket(self) -> tuple[float, float]:
        return self.lo, self.hi

    def width(self) -> float:
        lo, hi = self.bracket
        return hi / lo - 1.0 if lo > 0 and math.isfinite(hi) else math.inf

    def violations(self) -> list[tuple[float, float]]:
        """``(η_flip, η_miss)`` pairs with a flip at a lower LR than a miss."""
        return [(up, down) for up, (f, _) in sorted(self.seen.items()) if f
                for down, (g, _) in sorted(self.seen.items()) if not g and down > up]

    def estimate(self) -> laws.Estimate:
        """η_i: a number (the bracket's upper end) when bracketed, else the bound searched."""
        lo, hi = self.bracket
        return laws.Estimate(lo, hi) if lo == 0.0 or math.isinf(hi) else laws.Estimate.number(hi)


def zero_estimate(state: ContextCritical, phi0: float) -> float | None:
    """Where ``Φ_T(η)`` crosses zero inside the bracket, from every completed run read so far.

    The root of a monotone cubic (PCHIP, :class:`scipy.interpolate.PchipInterpolator`) in
    η through each run's ``Φ_T`` and ``(0, Φ_0)`` (no update moves nothing). None when the
    interpolant does not change sign across the bracket (an end that diverged, or that
    flipped with ``Φ_T ≤ 0``).
    """
    lo, hi = state.bracket
    if not math.isfinite(hi) or any(state.seen[end][1] is None for end in (lo, hi) if end > 0):
        return None
    points = sorted((lr, phi0 + r) for lr, (_, r) in state.seen.items() if r is not None)
    f = PchipInterpolator([0.0] + [lr for lr, _ in points], [phi0] + [phi for _, phi in points])
    if not f(lo) < 0 < f(hi):
        return None
    return float(brentq(f, lo, hi, xtol=hi * 1e-9))


def _next_probes(state: ContextCritical, rtol: float, phi0: float, last: float | None, bisect: bool,
                 grid: tuple[float, float]) -> tuple[list[float], float | None]:
    """The LRs of the search's next step and the zero estimate they rest on (None: not estimated).

    Never flipped: a decade higher. Otherwise at :func:`zero_estimate`, one probe, or a pair
    straddling it within ``rtol`` once two successive estimates agree to ``rtol / 2``. When
    ``bisect`` (or no estimate), the bracket's geometric mean, or a decade lower when every
    LR read flips. Nothing beyond :data:`EXTEND_DECADES` of the grid: ``[]``, a bound.
    """
    lo, hi = state.bracket
    if math.isinf(hi):                                     # never flipped: a decade higher
        top = max(state.seen) * 10
        return ([top] if top <= grid[1] * 10 ** EXTEND_DECADES * (1 + 1e-9) else []), None
    floor = grid[0] / 10 ** EXTEND_DECADES * (1 - 1e-9)
    u = None if bisect else zero_estimate(state, phi0)
    if u is None:
        if lo == 0.0:                                      # flipped everywhere: a decade lower
            bottom = min(state.seen) / 10
            return ([bottom] if bottom >= floor else []), None
        return [math.sqrt(lo * hi)], None
    u = max(u, floor)
    if last is not None and abs(math.log(u / last)) < rtol / 2:
        half = 0.5 * math.log1p(rtol) * _STRADDLE
        probes = [math.exp(math.log(u) - half), math.exp(math.log(u) + half)]
    else:
        probes = [u]
    above = (lambda x: x > lo * (1 + 1e-9)) if lo > 0 else (lambda x: x >= floor)   # the floor itself is probed
    inside = [x for x in probes if above(x) and x < hi / (1 + 1e-9)]
    if inside or lo == 0.0:
        return inside, u
    return [math.sqrt(lo * hi)], u


def context_critical(campaign, context: str, rtols: tuple[float, ...] = (CONTEXT_RTOL,),
                     prefetch: Prefetch | None = None) -> ContextCritical:
    """Locate the context's critical LR ``η_i`` to each precision of ``rtols`` in turn (SPEC §5 A2).

    Starts from the context's full-FT runs of the plan (its sweep, its saturation grid and
    that grid's A1 extension), then
    extends a decade at a time (at most :data:`EXTEND_DECADES` beyond the grid) until the
    context flips at one LR and not at another, then narrows the bracket until
    ``hi / lo − 1 ≤ rtol``. Probes run under the plan's stop policy, so each records ``Φ_T``
    for the next placement. A search to ``(0.05, 0.01)`` first walks the exact path of a
    search to ``(0.05,)``: the runs they share are made once. With ``prefetch``, the
    context's saturation runs must be computed already (:func:`saturation` with it first).
    """
    state = ContextCritical(context)
    plan = campaign.plan
    for lr in sorted(set(plan.sweep) | set(plan.saturation) | set(saturation(campaign, context).etas)):
        run = campaign.run("full", lr, context)
        state.add(run)
    grid = (min(state.seen), max(state.seen))
    phi0 = float(run["phi"][0])                             # every run of a context starts from the same Φ_0
    for rtol in rtols:
        widths, last = [], None                           # ln(hi/lo) before each step; last estimate
        while state.width() > rtol:
            widths.append(math.log1p(state.width()))
            stalled = len(widths) > BISECT_AFTER and widths[-1] > 0.5 * widths[-1 - BISECT_AFTER]
            found, last = _next_probes(state, rtol, phi0, last, stalled, grid)
            probes = [x for x in found if x not in state.seen]
            if stalled:
                widths = []
            if not probes:
                break                                      # the extension is spent: a bound
            if prefetch is not None:
                prefetch([("full", x, context, campaign.plan.stop) for x in probes])
            for x in probes:
                run = campaign.run("full", x, context)
                state.add(run)
                state.probes.append(x)
                state.steps += len(run["phi"]) - 1
    return state
