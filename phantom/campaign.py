"""The run layer per model: which runs a budget plans, and every law measured from them.

A :class:`Plan` lists the learning rates a model is fine-tuned at; :class:`Campaign`
serves those runs from the shared run store (each computed once across processes), so
claims never call the fine-tuning engine themselves. Any departure from the SPEC
protocol is a :class:`Plan` field away from its default and is named in
``Plan.reductions`` for CLAIMS.md. Budgets decide a model's plan from its estimated cost
(:func:`full_ft_seconds`), never from its name.

The per-model laws (SPEC §2, §5) are functions of a campaign: they read its runs and
hand plain numbers to the pure maths of :mod:`phantom.laws`. The runs placed by earlier
runs (A1's saturation extension, A2's per-context critical LRs) come from
:mod:`phantom.search`, replayed from the store; bulk statistics and the step-0 blind
statistic are cached entries of their own (:func:`phantom.runs.key`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import contexts, critical, laws, runs, search, zoo
from .progress import duration
from .protocol import ETA_REF, EXTENDED_GRID, FULL_GRID, LORA_GRID, LORA_REF, OPERATING_H, STEPS
from .store import RunStore
from .trajectory import Trajectory


@dataclass(frozen=True)
class Plan:
    """The runs a model gets (defaults: the SPEC §4 protocol)."""

    sweep: tuple[float, ...] = FULL_GRID          # full FT: C1, C2, C6, C7, C8 (η_ref ∈ sweep: C3)
    extended: tuple[float, ...] = EXTENDED_GRID   # full FT below the sweep: C9 saturation
    lora: tuple[float, ...] = LORA_GRID           # LoRA: C4 (LORA_REF: C5, C5b, C11)
    eta_c: bool = True                            # critical-LR search and blind predictor: C13
    steps: int = STEPS
    stop: str = "saturated"                       # dynamics.run(stop=…): ends runs that can change no verdict
    reductions: tuple[str, ...] = field(default=())  # human-readable departures, for CLAIMS.md

    @property
    def saturation(self) -> tuple[float, ...]:
        """The LRs of the saturation fit: extended + sweep grid, ascending."""
        return tuple(sorted(set(self.extended) | set(self.sweep))) if self.extended else ()

    @property
    def full_lrs(self) -> tuple[float, ...]:
        """Every full-FT LR of the plan (η_ref always), costliest (largest) first."""
        return tuple(sorted(set(self.sweep) | set(self.saturation) | {ETA_REF}, reverse=True))

    @property
    def lora_lrs(self) -> tuple[float, ...]:
        """Every LoRA LR of the plan (the reference always), ascending."""
        return tuple(sorted(set(self.lora) | {LORA_REF}))


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
        """The campaign of ``model`` under a claims budget (:func:`plan_for`)."""
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
                               store=self.store, loader=self.loader)

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
        """(mode, lr, context) of every planned run, costliest first: the only list of runs."""
        return ([("full", lr, c) for lr in self.plan.full_lrs for c in self.usable]
                + [("lora", lr, c) for lr in self.plan.lora_lrs for c in self.usable])


def schedule(campaigns: list[Campaign]) -> list[tuple[str, str, float, str]]:
    """(model, mode, lr, context) of every planned run of ``campaigns``, for a pool of workers.

    Runs that take the machine's one solo full-FT slot (:func:`phantom.runs.solo`) come
    first, together, so that a work-stealing pool (pytest-xdist) gives them to one worker
    while the others take the rest, instead of several workers waiting on the slot. Within
    each group, campaign order and :meth:`Campaign.planned` order (costliest first).
    """
    planned = [(c.model, *r) for c in campaigns for r in c.planned()]
    return sorted(planned, key=lambda r: not runs.solo(runs.model_info(r[0]), r[1]))


# --- budgets ---------------------------------------------------------------------------

BUDGETS = ("quick", "standard", "full")
_OFFLINE = ("smollm2-135m", "gemma3-270m")                 # SPEC §7: the offline zoo's default models
_PAPER = ("distilgpt2", "gpt2-medium", "HuggingFaceTB/SmolLM-360M", "EleutherAI/pythia-70m", "EleutherAI/pythia-410m")
ZOOS: dict[str, dict[str, tuple[str, ...]]] = {            # zoo → budget → the models a claims session covers
    "offline": {"quick": _OFFLINE[:1], "standard": _OFFLINE, "full": (*_OFFLINE, "qwen2.5-0.5b")},
    "paper": dict.fromkeys(BUDGETS, _PAPER),
}

# Seconds of one instrumented full-FT step on this project's machines (1 torch thread) per
# parameter: the step is memory-bound (AdamW and the vocabulary-sized gradients), so it grows
# with the parameter count; fitted on the measured Gemma-3 step (0.78 s for 268 M parameters;
# SmolLM2: 0.45 s for 135 M). The once-per-run t = 0 purity is not counted.
STEP_S_PER_PARAM = 2.9e-9
STANDARD_FULL_FT_S = 45 * 60    # the standard budget's ceiling on one model's full-FT grid


def full_ft_seconds(info: zoo.ModelInfo, plan: Plan = Plan()) -> float:
    """Estimated single-thread seconds of a plan's full-FT grid (no early stops) on a model."""
    return STEP_S_PER_PARAM * info.n_params * plan.steps * len(plan.full_lrs) * len(contexts.CONTEXTS)


def zoo_models(zoo_name: str, budget: str) -> tuple[str, ...]:
    """The models a claims session covers (:data:`ZOOS`): ``quick`` is SmolLM2 alone, ``full`` adds Qwen offline."""
    if zoo_name not in ZOOS:
        raise ValueError(f"zoo must be one of {tuple(ZOOS)}, got {zoo_name!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return ZOOS[zoo_name][budget]


def parse_models(text: str) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``; an empty list or an empty item is a usage error (ValueError)."""
    items = [m.strip() for m in text.split(",")]
    if not any(items):
        raise ValueError(f"the model list {text!r} names no model")
    if not all(items):
        raise ValueError(f"the model list {text!r} has an empty item")
    return tuple(items)


def select_models(models: str | None, zoo_name: str, budget: str) -> tuple[str, ...]:
    """The claims session's models: ``--models a,b`` if given, else the zoo under the budget."""
    return parse_models(models) if models is not None else zoo_models(zoo_name, budget)


def plan_for(budget: str, info: zoo.ModelInfo) -> Plan:
    """The plan of one model under a budget, decided by its estimated cost; every reduction named."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if budget == "full":
        return Plan()
    lora_ref_only = "LoRA grid reduced to the reference LR 1e-3 (C4 checks those runs only)"
    if budget == "quick":
        return Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False,
                    reductions=("full-FT sweep reduced to η_ref = 2e-5", "no saturation grid (C9 untested)",
                                lora_ref_only,
                                "no critical-LR search (C13 untested)"))
    cost = full_ft_seconds(info)
    if cost > STANDARD_FULL_FT_S:
        hours = f"≈{cost / 3600:.1f} h of single-thread fine-tuning > the standard budget's " \
                f"{STANDARD_FULL_FT_S / 3600:.0f} h"
        return Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False,
                    reductions=(f"full-FT sweep reduced to η_ref = 2e-5: its full-FT grid would take {hours}",
                                "no saturation grid: C9 without this model",
                                "no critical-LR search: C13 without this model",
                                lora_ref_only))
    return Plan()


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
    runs = campaign.lora_reference()
    return sum(map(search.born_flipped, runs)) / len(runs)


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


# --- dry run: what a budget will compute, and for how long ------------------------------

@dataclass(frozen=True)
class Costs:
    """Measured costs of one run on this project's machines, per parameter of the model.

    Fitted on the 287 trajectories of the standard cold session's run store (2 cores, xdist
    ``-n 2``, one torch thread each, under the contention of that session), by least squares
    of a run's recorded ``wall_s`` on ``n_params · (1, updates)`` per mode: SmolLM2-135M full FT
    0.86 s per update, Gemma-3-270M 1.71 s; LoRA 0.43 s and 0.86 s. ``wall_s`` holds the step-0
    observables (the fit's intercept, ``t0_s_per_param``) but not the model copy and step-0
    geometry before it (``copy_s_per_param``; ``test_bench_run_setup`` of
    ``tests/benchmarks/test_bench_dynamics.py`` times copy + step-0 observables at 1.2 s on
    SmolLM2, 2.7 steps, and 5.6 s on Gemma-3, 8.1 steps). ``kept`` is the mean fraction of the ``T`` updates a run makes
    before its early stop (``stop="saturated"``): 0.76 under full FT (34% of the runs stopped
    early), 0.65 under LoRA (52%).
    """

    step_s_per_param: dict = field(default_factory=lambda: {"full": 6.4e-9, "lora": 3.2e-9})
    t0_s_per_param: dict = field(default_factory=lambda: {"full": 3.6e-8, "lora": 4.5e-9})
    copy_s_per_param: float = 7e-9
    kept: dict = field(default_factory=lambda: {"full": 0.76, "lora": 0.65})

    def run_s(self, info: zoo.ModelInfo, mode: str, updates: float) -> float:
        """Seconds of one run of ``updates`` updates on one worker (set-up included)."""
        n = info.n_params
        return n * (self.copy_s_per_param + self.t0_s_per_param[mode] + updates * self.step_s_per_param[mode])


COSTS = Costs()

# The adaptive runs (SPEC §5 A1–A2, §6 A4) depend on the planned runs' outcomes; per usable
# context, a rule of thumb from the standard session: the A1 extension adds 0–2 runs (most
# contexts are bracketed by the extended grid: 0.5), the A2 search of η_i to 5% ≈3 probes
# (η_c's refinement to 1% included), A4 one run at η_H.
ADAPTIVE_PER_CONTEXT = {"A1 saturation extension": 0.5, "A2 critical-LR probes": 3.0, "A4 η_H runs": 1.0}


@dataclass(frozen=True)
class KindEstimate:
    """One kind of run of a model's campaign: how many, their steps, their seconds on one worker."""

    kind: str
    mode: str
    runs: float            # exact for the grids, a rule of thumb for the adaptive kinds
    steps: float           # upper bound: runs × T (an early stop makes a run shorter)
    seconds: float         # expected single-worker seconds, early stops included (Costs.kept)
    estimated: bool        # adaptive: ``runs`` is a rule of thumb (ADAPTIVE_PER_CONTEXT)


@dataclass(frozen=True)
class Estimate:
    """A model's planned and adaptive runs under a plan and their estimated cost."""

    model: str
    n_params: int
    contexts: int
    contexts_known: bool   # False: the orientations are not stored yet, every context counted
    kinds: tuple[KindEstimate, ...]
    solo: bool             # full FT takes the machine's one solo slot (runs one at a time)

    @property
    def runs(self) -> float:
        return sum(k.runs for k in self.kinds)

    @property
    def steps(self) -> float:
        return sum(k.steps for k in self.kinds)

    @property
    def seconds(self) -> float:
        return sum(k.seconds for k in self.kinds)

    @property
    def serial_seconds(self) -> float:
        """Seconds that no second worker can share: the solo full-FT runs, one at a time."""
        return sum(k.seconds for k in self.kinds if k.mode == "full") if self.solo else 0.0


def estimate(plan: Plan, info: zoo.ModelInfo, contexts_n: int | None = None, costs: Costs = COSTS,
             known: bool = False) -> Estimate:
    """The runs of ``plan`` on a model per kind, their steps and seconds (pure: nothing is run).

    Parameters
    ----------
    plan : Plan
    info : phantom.zoo.ModelInfo
        Only ``name`` and ``n_params`` are read.
    contexts_n : int, optional
        Usable contexts (default: every SPEC §3 context, an upper bound).
    costs : Costs
    known : bool
        Whether ``contexts_n`` is the measured number of usable contexts.
    """
    n = len(contexts.CONTEXTS) if contexts_n is None else contexts_n
    T = plan.steps

    def kind(name, mode, runs_, estimated=False):
        per_run = costs.run_s(info, mode, costs.kept[mode] * T)
        return KindEstimate(name, mode, runs_, runs_ * T, runs_ * per_run, estimated)

    kinds = [kind("full-FT grid", "full", n * len(plan.full_lrs)),
             kind("LoRA grid", "lora", n * len(plan.lora_lrs))]
    adaptive = {"A1 saturation extension": bool(plan.saturation), "A2 critical-LR probes": plan.eta_c,
                "A4 η_H runs": bool(plan.saturation)}
    kinds += [kind(name, "full", n * ADAPTIVE_PER_CONTEXT[name], estimated=True)
              for name, on in adaptive.items() if on]
    return Estimate(info.name, info.n_params, n, known, tuple(kinds), runs.solo(info, "full"))


def wall_seconds(estimates: Sequence[Estimate], workers: int) -> float:
    """Estimated wall seconds of the estimates' runs on ``workers`` workers (work stealing).

    The work spread evenly over the workers, but never less than the solo full-FT runs,
    which run one at a time (:func:`phantom.runs.solo`). Model loads, orientations and the
    bulk and blind statistics (seconds per model) are not counted.
    """
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    total = sum(e.seconds for e in estimates)
    return max(total / workers, sum(e.serial_seconds for e in estimates))


def stored_usable(model: str, store: RunStore) -> int | None:
    """Usable contexts of ``model`` from its stored orientations (read only); None if any is missing."""
    from .store import NotStored
    view = RunStore(store.root, read_only=True, secret=store.secret)

    def no_load(name):
        raise NotStored(f"the orientations of {name} are not stored")
    usable = 0
    for c in contexts.CONTEXTS:
        try:
            runs.orientation(model, c, store=view, loader=no_load)
            usable += 1
        except contexts.ContextUnusable:
            pass
        except NotStored:
            return None
    return usable


def dry_run(models: Sequence[str], budget: str, store: RunStore | None = None,
            costs: Costs = COSTS) -> list[Estimate]:
    """Each model's :class:`Estimate` under ``budget``; nothing is computed or written.

    Offline zoo names are described from the cache manifest (no load); usable contexts come
    from the stored orientations when all are stored, else every context is counted.
    """
    store = store or RunStore()
    out = []
    for m in models:
        info = runs.model_info(m)
        usable = stored_usable(m, store)
        out.append(estimate(plan_for(budget, info), info, usable, costs, known=usable is not None))
    return out


def format_dry_run(estimates: Sequence[Estimate], budget: str, workers: int, steps: int = STEPS) -> str:
    """One block per model (a line per kind of run) and the total wall time on ``workers`` workers."""
    rule = ", ".join(f"{k} {v:g}" for k, v in ADAPTIVE_PER_CONTEXT.items())
    lines = [f"dry run, budget {budget}: at most T = {steps} updates a run (early stops make runs shorter); "
             f"'~': adaptive runs, a rule of thumb per usable context ({rule})"]
    for e in estimates:
        where = "stored orientations" if e.contexts_known else "not stored yet: every context counted"
        lines.append(f"{e.model} ({e.n_params / 1e6:.0f} M parameters, {e.contexts} usable contexts, {where}"
                     + ("; full FT one run at a time" if e.solo else "") + ")")
        for k in e.kinds:
            lines.append(f"  {k.kind:<26}{k.mode:<5}{'~' if k.estimated else ' '}{k.runs:>5.0f} runs "
                         f"{k.steps:>7.0f} steps  {duration(k.seconds):>7} of one worker")
        lines.append(f"  {'total':<26}{'':<5} {e.runs:>5.0f} runs {e.steps:>7.0f} steps  "
                     f"{duration(e.seconds):>7} of one worker")
    wall = wall_seconds(estimates, workers)
    lines.append(f"total: {sum(e.runs for e in estimates):.0f} runs, ≤{sum(e.steps for e in estimates):.0f} steps, "
                 f"≈{duration(wall)} wall on {workers} worker{'s' if workers > 1 else ''} (xdist -n {workers}), "
                 "from the measured costs of phantom.campaign.Costs (2 cores, one torch thread a worker); "
                 "model loads and statistics not counted")
    return "\n".join(lines)
