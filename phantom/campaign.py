"""The run layer per model: a plan's runs served from the store, and every law measured from them.

:class:`Campaign` serves the runs of a :class:`~phantom.plans.Plan` from the shared run
store (each computed once across processes), so claims never call the fine-tuning engine
themselves. Plans and budgets live in :mod:`phantom.plans`, their cost before running in
:mod:`phantom.dryrun`.

The per-model laws (SPEC §2, §5) are functions of a campaign: they read its runs and
hand plain numbers to the pure maths of :mod:`phantom.laws`. The runs placed by earlier
runs (A1's saturation extension, A2's per-context critical LRs) come from
:mod:`phantom.search`, replayed from the store; bulk statistics and the step-0 blind
statistic are cached entries of their own (:func:`phantom.runs.key`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import contexts, critical, laws, runs, search
from .plans import Plan, plan_for
from .protocol import ETA_REF, LORA_REF, OPERATING_H
from .store import RunStore
from .trajectory import Trajectory


class Campaign:
    """A model's runs under a plan, served from the run store.

    Parameters
    ----------
    model : str
        Zoo name, local directory or hub id.
    plan : Plan
    store : RunStore, optional
        Defaults to the shared store (``$PHANTOM_RUNS``).
    loader : callable, optional
        name → Loaded, called only when a run is missing (default: one model per process).
    device : str, optional
        Torch device of its fine-tuning runs (default CPU); part of every run's key.
    """

    def __init__(self, model: str, plan: Plan = Plan(), store: RunStore | None = None,
                 loader=runs.SLOT, device: str = "cpu"):
        self.model, self.plan = model, plan
        self.store = store or RunStore()
        self.loader = loader
        self.device = device
        self.memo: dict = {}     # laws replayed from the store, once per process (see _memo)

    @classmethod
    def for_budget(cls, model: str, budget: str, store: RunStore | None = None,
                   device: str = "cpu") -> Campaign:
        """The campaign of ``model`` under a claims budget (:func:`phantom.plans.plan_for`)."""
        return cls(model, plan_for(budget, runs.model_info(model)), store, device=device)

    def __repr__(self) -> str:
        return f"Campaign({self.model!r})"

    @cached_property
    def orientations(self) -> dict[str, contexts.Pair | str]:
        """Context id → its Pair on this model, or the reason it is unusable (SPEC §3)."""
        out = {}
        for c in contexts.CONTEXTS:
            try:
                out[c.id] = runs.orientation(self.model, c, store=self.store, loader=self.loader)
            except contexts.ContextUnusable as err:
                out[c.id] = str(err)
        return out

    @property
    def usable(self) -> list[str]:
        return [c for c, p in self.orientations.items() if isinstance(p, contexts.Pair)]

    @property
    def unusable(self) -> dict[str, str]:
        return {c: p for c, p in self.orientations.items() if isinstance(p, str)}

    def run(self, mode: str, lr: float, context: str, stop: str | None = None) -> Trajectory:
        """One run through the store (computed once across processes)."""
        return runs.trajectory(self.model, context, mode=mode, lr=lr, steps=self.plan.steps,
                               stop=self.plan.stop if stop is None else stop, device=self.device,
                               batch=self.plan.batch(mode, lr), store=self.store, loader=self.loader)

    def runs(self, mode: str, lr: float) -> list[Trajectory]:
        """One run per usable context at this LR."""
        return [self.run(mode, lr, c) for c in self.usable]

    def sweep(self) -> list[Trajectory]:
        return [r for lr in self.plan.sweep for r in self.runs("full", lr)]

    def reference(self) -> list[Trajectory]:
        return self.runs("full", ETA_REF)

    def lora_runs(self) -> list[Trajectory]:
        return [r for lr in self.plan.lora for r in self.runs("lora", lr)]

    def lora_reference(self) -> list[Trajectory]:
        return self.runs("lora", LORA_REF)

    def all_runs(self) -> list[Trajectory]:
        """Every planned full-FT and LoRA run (C2)."""
        return [r for lr in sorted(set(self.plan.sweep) | set(self.plan.saturation))
                for r in self.runs("full", lr)] + self.lora_runs()

    def planned(self) -> list[tuple[str, float, str]]:
        """(mode, lr, context) of every planned run, costliest first: the only list of runs.

        LoRA runs by context: a context's grid is one batched training, which the first of its
        runs computes and the next ones read.
        """
        return ([("full", lr, c) for lr in self.plan.full_lrs for c in self.usable]
                + [("lora", lr, c) for c in self.usable for lr in self.plan.lora_lrs])


def schedule(campaigns: list[Campaign]) -> list[tuple[str, str, float, str]]:
    """(model, mode, lr, context) of every planned run of ``campaigns``, for a pool of workers.

    Runs that take the machine's one solo full-FT slot (:func:`phantom.runs.solo`) come
    first, together, so that a work-stealing pool (pytest-xdist) gives them to one worker
    while the others take the rest, instead of several workers waiting on the slot. Within
    each group, campaign order and :meth:`Campaign.planned` order (costliest first).
    """
    planned = [(c.model, *r) for c in campaigns for r in c.planned()]
    return sorted(planned, key=lambda r: not runs.solo(runs.model_info(r[0]), r[1]))


# --- per-model laws ----------------------------------------------------------------------

def _memo(campaign, name: str, compute: Callable):
    """A per-campaign memo: laws replayed from the store are read once per process."""
    if name not in campaign.memo:
        campaign.memo[name] = compute()
    return campaign.memo[name]


def saturations(campaign) -> dict[str, search.Saturation]:
    """Per usable context, its saturation fit with the A1 extension (SPEC §5); {} without a saturation grid."""
    if not campaign.plan.saturation:
        return {}
    return _memo(campaign, "saturations", lambda: {c: search.saturation(campaign, c) for c in campaign.usable})


def reduced_field_of(campaign) -> tuple[laws.Estimate | None, laws.Estimate | None]:
    """``(η_sat(model), H_FT)``: the median over contexts and ``η_ref / η_sat``, each a number or a bound (A1)."""
    estimates = [s.estimate for s in saturations(campaign).values() if s.estimate is not None]
    if not estimates:
        return None, None
    eta_sat = laws.median_estimate(estimates)
    return eta_sat, laws.reduced_field(eta_sat)


def operating_lr(campaign) -> float | None:
    """``η_H = 10 η_sat(model)`` to 3 significant digits (SPEC §6 A4); None unless η_sat is bracketed."""
    eta_sat = reduced_field_of(campaign)[0]
    if eta_sat is None or eta_sat.value is None:
        return None
    return float(f"{OPERATING_H * eta_sat.value:.3g}")


def operating_runs(campaign) -> list[Trajectory]:
    """Every usable context's full-FT run at ``η_H`` (C3′, C6′); [] when η_H is not defined."""
    lr = operating_lr(campaign)
    return [] if lr is None else campaign.runs("full", lr)


def lora_sufficiency(campaign) -> float:
    """Fraction of usable contexts with a Born flip by T under LoRA at 1e-3 (SPEC §5)."""
    reference = campaign.lora_reference()       # not `runs`: that is the run-layer module here
    return sum(map(search.born_flipped, reference)) / len(reference)


def burial_ft(campaign) -> float:
    """``B_FT``: median step-0 burial depth over usable contexts (SPEC §6, C12)."""
    return float(np.median([r["burial"][0] for r in campaign.reference()]))


def bulk(campaign) -> dict:
    """Bulk statistics of the model's embedding (SPEC §2), cached in the run store."""
    return runs.bulk(campaign.model, store=campaign.store, loader=campaign.loader)


def critical_lrs(campaign, prefetch: search.Prefetch | None = None) -> tuple[laws.CriticalLR, dict]:
    """``η_c`` (1%) and every context's η_i search (5%) (SPEC §5 A2), replayed from the store."""
    return _memo(campaign, "critical", lambda: critical.critical(campaign, prefetch))


def critical_lr_of(campaign, prefetch: search.Prefetch | None = None) -> laws.CriticalLR:
    """``η_c(model)``: the ``⌈n/2⌉``-th smallest per-context critical LR (SPEC §5 A2)."""
    return critical_lrs(campaign, prefetch)[0]


def context_lrs(campaign) -> dict[str, laws.Estimate]:
    """Per usable context, ``η_i`` (a number, or the bound its search reached) (SPEC §5 A2)."""
    return {c: s.estimate() for c, s in critical_lrs(campaign)[1].items()}


def eta_c_text(result: laws.CriticalLR) -> str:
    """``"η_c = …"``, or where η_c lies when the contexts' brackets do not locate it."""
    lo, hi = result.bracket
    if result.converged:
        return f"η_c = {result.eta_c:.3g}"
    if result.eta_c is None:
        return f"η_c > {lo:.3g} (fewer than half of the contexts flip at any LR searched)"
    if lo == 0.0:
        return f"η_c ≤ {hi:.3g} (half of the contexts flip at every LR searched)"
    return f"η_c ∈ ({lo:.3g}, {hi:.3g}]"


def search_report(campaign) -> str:
    """One line on a model's adaptive runs: the A1 extension, the η_i searches and their monotonicity."""
    sat = saturations(campaign)
    result, states = critical_lrs(campaign)
    added = sum(len(s.added) for s in sat.values())
    unbracketed = sum(s.estimate is not None and s.estimate.value is None for s in sat.values())
    probes = sum(len(s.probes) for s in states.values())
    steps = sum(s.steps for s in states.values())
    read = sum(len(s.seen) for s in states.values())
    bad = [(c, up, down) for c, s in states.items() for up, down in s.violations()]
    check = (f"monotonicity in η held on all {read} runs read" if not bad else
             f"monotonicity in η VIOLATED on {len(bad)} pair(s) of the {read} runs read: "
             + "; ".join(f"{c} flips at {up:.3g} but not at {down:.3g}" for c, up, down in bad))
    return (f"{eta_c_text(result)}; saturation grid extended by {added} run(s), {unbracketed} of "
            f"{len(sat)} contexts unbracketed (a bound); η_i of {len(states)} contexts: {probes} probe runs, "
            f"{steps} steps; {check}")


def blind_statistic(campaign) -> laws.BlindQ:
    """The model's blind ``q`` from step-0 ``r`` and ``Φ_0`` (SPEC §5 A3), cached per context."""
    phi0, r = {}, {}
    for context in campaign.usable:
        out = runs.blind_r(campaign.model, context, campaign.orientations[context], store=campaign.store,
                           loader=campaign.loader)
        phi0[context], r[context] = out["phi0"], out["r"]
    return laws.blind_q(phi0, r, campaign.plan.steps)


@dataclass(frozen=True)
class ModelLaws:
    """One model's row of the laws table (SPEC §2, §5); None where its plan has no data."""

    model: str
    g2mean: float
    shape: str
    cls: str
    eta_sat: laws.Estimate | None
    h_ft: laws.Estimate | None
    b_ft: float
    lora_sufficiency: float
    q: float | None
    eta_c: float | None
    eta_hat: float | None = None
    rel_error: float | None = None


@dataclass(frozen=True)
class BlindResult:
    """C13's leave-one-out predictions and, per held-out model, the per-context check (SPEC §5 A3)."""

    predictions: list
    checks: dict          # model → laws.ContextCheck or None
    excluded: dict        # model → why it takes no part


def blind_predictions(campaigns: Sequence[Campaign]) -> BlindResult:
    """Leave-one-out blind predictions of η_c (SPEC §5, C13) over the campaigns that allow one.

    A model takes part when its plan locates η_c, its ``q`` exists (some context has
    ``r > 0``) and η_c is a number. Each prediction is fixed before the held-out model's
    ``η_c`` is read (:func:`phantom.laws.leave_one_out`); the per-context check uses the
    same ``k`` (the other models') on the held-out model's ``q_i`` and ``η_i``.
    """
    q, excluded, blind = {}, {}, {}
    for c in campaigns:
        if not c.plan.eta_c:
            excluded[c.model] = "no critical-LR search in its plan"
        elif (bq := blind_statistic(c)).q is None:
            excluded[c.model] = f"no context with r > 0 ({', '.join(bq.excluded)})"
        elif not (ec := critical_lr_of(c)).converged:
            excluded[c.model] = f"η_c not located: {eta_c_text(ec)}"
        else:
            q[c.model], blind[c.model] = bq.q, bq
    if len(q) < 2:
        return BlindResult([], {}, excluded)
    by_model = {c.model: c for c in campaigns}
    predictions = laws.leave_one_out(q, lambda m: critical_lr_of(by_model[m]).eta_c)
    checks = {p.model: laws.per_context_check(p.k, blind[p.model].per_context,
                                              {c: e.value for c, e in context_lrs(by_model[p.model]).items()})
              for p in predictions}
    return BlindResult(predictions, checks, excluded)


def context_points(campaigns: Sequence[Campaign], blind: BlindResult | None = None) -> dict[str, list]:
    """Per predicted model, ``[(context, η_i, η̂_i = k q_i)]`` with ``k`` from the other models (A3)."""
    blind = blind_predictions(campaigns) if blind is None else blind
    by_model = {c.model: c for c in campaigns}
    out = {}
    for p in blind.predictions:
        c = by_model[p.model]
        q_i, eta_i = blind_statistic(c).per_context, context_lrs(c)
        out[p.model] = [(ctx, eta_i[ctx].value, p.k * q) for ctx, q in q_i.items() if eta_i[ctx].value is not None]
    return out


def laws_table(campaigns: Sequence[Campaign]) -> list[ModelLaws]:
    """Every per-model law, then the leave-one-out blind predictions where ≥2 models allow."""
    rows = {}
    for c in campaigns:
        b = bulk(c)
        eta_sat, h = reduced_field_of(c)
        ec = critical_lr_of(c) if c.plan.eta_c else None
        rows[c.model] = ModelLaws(
            model=c.model, g2mean=b["g2mean"], shape=b["kind"], cls=b["cls"], eta_sat=eta_sat, h_ft=h,
            b_ft=burial_ft(c), lora_sufficiency=lora_sufficiency(c),
            q=blind_statistic(c).q if c.plan.eta_c else None,
            eta_c=ec.eta_c if ec is not None and ec.converged else None)
    for p in blind_predictions(campaigns).predictions:
        rows[p.model] = dataclasses.replace(rows[p.model], eta_hat=p.eta_hat, rel_error=p.rel_error)
    return list(rows.values())
