"""A model's critical learning rates: per-context ``η_i`` as run-store entries, and ``η_c`` (SPEC §5 A2).

Each context's search (:func:`phantom.search.context_critical`) is stored under a key of kind
``critical_lrs`` (:func:`phantom.runs.key`), which hashes this module, the search's code and
the fine-tuning code that made the runs it read: a warm store answers without reading the
runs again, and changing the search or the runs is never served an old ``η_i``.
:func:`critical` reads ``η_c``, the ``⌈n/2⌉``-th smallest ``η_i``, from them, refining to 1%
the contexts that decide it.
"""
from __future__ import annotations

import math

from . import laws, runs, search
from .protocol import CONTEXT_RTOL, CRITICAL_RTOL

REFINEMENTS = 4   # rounds of refining η_c's deciders (1%, then half of that while brackets interleave)


def context_lr(campaign, context: str, rtols: tuple[float, ...] = (CONTEXT_RTOL,),
               prefetch: search.Prefetch | None = None) -> search.ContextCritical:
    """The context's η_i search to each precision of ``rtols``, from the store or computed into it."""
    key = runs.key("critical_lrs", campaign.model, context=context, rtols=list(rtols),
                   grid=sorted(set(campaign.plan.sweep) | set(campaign.plan.saturation)),   # the LRs it starts from
                   steps=campaign.plan.steps, stop=campaign.plan.stop,
                   device=runs.device_type(campaign.device))
    payload = campaign.store.get_or_compute(
        key, lambda: search.context_critical(campaign, context, rtols, prefetch).to_dict())
    return search.ContextCritical.from_dict(payload)


def critical(campaign, prefetch: search.Prefetch | None = None) -> tuple[laws.CriticalLR, dict]:
    """``η_c`` (1%) and every usable context's search (``η_i`` to 5%) of a model (SPEC §5 A2).

    Every context is searched to 5%; then, while the ``⌈n/2⌉``-th smallest bracket ends lie
    more than 1% apart, the contexts whose brackets reach between them are searched further
    (to 1%, then half of that while two contexts' brackets still interleave).
    """
    states = {c: context_lr(campaign, c, prefetch=prefetch) for c in campaign.usable}
    rtols = (CONTEXT_RTOL,)
    for _ in range(REFINEMENTS):
        result = laws.critical_from_brackets([s.bracket for s in states.values()])
        lo, hi = result.bracket
        if result.converged or lo == 0.0 or math.isinf(hi):
            return result, states
        rtols = rtols + (CRITICAL_RTOL if len(rtols) == 1 else rtols[-1] / 2,)
        for c, s in states.items():
            if s.lo < hi and s.hi > lo and s.width() > rtols[-1]:
                states[c] = context_lr(campaign, c, rtols, prefetch)
    return laws.critical_from_brackets([s.bracket for s in states.values()]), states
