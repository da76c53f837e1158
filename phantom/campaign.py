"""The run layer per model: which runs a budget plans, and every law measured from them.

A :class:`Plan` lists the learning rates a model is fine-tuned at; :class:`Campaign`
serves those runs from the shared run store (each computed once across processes), so
claims never call the fine-tuning engine themselves. Any departure from the SPEC
protocol is a :class:`Plan` field away from its default and is named in
``Plan.reductions`` for CLAIMS.md. Budgets decide a model's plan from its estimated cost
(:func:`full_ft_seconds`), never from its name.

The per-model laws (SPEC §2, §5) are functions of a campaign: they read its runs and
hand plain numbers to the pure maths of :mod:`phantom.laws`. The expensive ones (bulk
statistics, critical-LR bisection, step-0 blind statistic) are cached in the run store
under keys built by :func:`phantom.runs.key`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import contexts, laws, runs, zoo
from .protocol import CRITICAL_FRACTION, CRITICAL_RTOL, ETA_REF, EXTENDED_GRID, FULL_GRID, LORA_GRID, LORA_REF, STEPS
from .store import RunStore
from .trajectory import Trajectory


@dataclass(frozen=True)
class Plan:
    """The runs a model gets (defaults: the SPEC §4 protocol)."""

    sweep: tuple[float, ...] = FULL_GRID          # full FT: C1, C2, C6, C7, C8 (η_ref ∈ sweep: C3)
    extended: tuple[float, ...] = EXTENDED_GRID   # full FT below the sweep: C9 saturation
    lora: tuple[float, ...] = LORA_GRID           # LoRA: C4 (LORA_REF: C5, C5b, C11)
    eta_c: bool = True                            # critical-LR bisection and blind predictor: C13
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

    def stored(self, mode: str, lr: float, context: str) -> Trajectory | None:
        """A stored run at ``lr`` made under another stop policy than a probe's (``"born_flip"``)
        that decides the Born flip by T all the same (the plan's, or none), or None."""
        for stop in dict.fromkeys(s for s in (self.plan.stop, "never") if s != "born_flip"):
            run = runs.trajectory(self.model, context, mode=mode, lr=lr, steps=self.plan.steps, stop=stop,
                                  device=self.device, store=self.store, loader=self.loader, stored_only=True)
            if run is not None:
                return run
        return None

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

    Runs that take the machine's one heavy full-FT slot (:func:`phantom.runs.heavy`) come
    first, together, so that a work-stealing pool (pytest-xdist) gives them to one worker
    while the others take the rest, instead of several workers waiting on the slot. Within
    each group, campaign order and :meth:`Campaign.planned` order (costliest first).
    """
    planned = [(c.model, *r) for c in campaigns for r in c.planned()]
    return sorted(planned, key=lambda r: not runs.heavy(runs.model_info(r[0]), r[1]))


# --- budgets ---------------------------------------------------------------------------

ZOOS = {
    "offline": ("smollm2-135m", "gemma3-270m"),             # SPEC §7 standard offline zoo
    "offline-full": ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"),
    "paper": ("distilgpt2", "gpt2-medium", "HuggingFaceTB/SmolLM-360M",
              "EleutherAI/pythia-70m", "EleutherAI/pythia-410m"),
}
BUDGETS = ("quick", "standard", "full")

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
    """The models a claims session covers: ``quick`` is SmolLM2 alone, ``full`` adds Qwen offline."""
    if zoo_name not in ("offline", "paper"):
        raise ValueError(f"zoo must be 'offline' or 'paper', got {zoo_name!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if zoo_name == "paper":
        return ZOOS["paper"]
    return {"quick": ZOOS["offline"][:1], "standard": ZOOS["offline"], "full": ZOOS["offline-full"]}[budget]


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
                                "no critical-LR bisection (C13 untested)"))
    cost = full_ft_seconds(info)
    if cost > STANDARD_FULL_FT_S:
        hours = f"≈{cost / 3600:.1f} h of single-thread fine-tuning > the standard budget's " \
                f"{STANDARD_FULL_FT_S / 3600:.0f} h"
        return Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False,
                    reductions=(f"full-FT sweep reduced to η_ref = 2e-5: its full-FT grid would take {hours}",
                                "no saturation grid: C9 without this model",
                                "no critical-LR bisection: C13 without this model",
                                lora_ref_only))
    return Plan()


# --- per-model laws ----------------------------------------------------------------------

def _born_flipped(traj) -> bool:
    return traj.diverged_at is None and bool(np.any(traj["phi"] > 0))


def saturation_responses(campaign) -> dict[str, tuple[list[float], list[float]]]:
    """Per usable context, ``(η, R(η) = Φ_T(η) − Φ_0)`` over the saturation grid (SPEC §5).

    A run stopped at saturation contributes its last recorded Φ (within ~3e-4 of Φ_T);
    diverged runs are left out.
    """
    out = {}
    for context in campaign.usable:
        done = [r for r in (campaign.run("full", lr, context) for lr in campaign.plan.saturation)
                if r.diverged_at is None]
        out[context] = ([r.meta["lr"] for r in done], [r["phi"][-1] - r["phi"][0] for r in done])
    return out


def saturation_fits(campaign, responses: dict | None = None) -> dict[str, laws.SaturationFit]:
    """Per usable context with ≥ 3 completed runs, the saturation fit of its responses (SPEC §5)."""
    responses = saturation_responses(campaign) if responses is None else responses
    return {c: laws.fit_saturation(etas, resp) for c, (etas, resp) in responses.items() if len(etas) >= 3}


def reduced_field_of(campaign) -> tuple[float | None, float | None]:
    """``(η_sat(model), H_FT)``: median η_sat over contexts and ``η_ref / η_sat`` (SPEC §5)."""
    fits = saturation_fits(campaign)
    if not fits:
        return None, None
    eta_sat = float(np.median([f.eta_sat for f in fits.values()]))
    return eta_sat, ETA_REF / eta_sat


def lora_sufficiency(campaign) -> float:
    """Fraction of usable contexts with a Born flip by T under LoRA at 1e-3 (SPEC §5)."""
    runs = campaign.lora_reference()
    return sum(map(_born_flipped, runs)) / len(runs)


def burial_ft(campaign) -> float:
    """``B_FT``: median step-0 burial depth over usable contexts (SPEC §6, C12)."""
    return float(np.median([r["burial"][0] for r in campaign.reference()]))


def bulk(campaign) -> dict:
    """Bulk statistics of the model's embedding (SPEC §2), cached in the run store."""
    return runs.bulk(campaign.model, store=campaign.store, loader=campaign.loader)


Prefetch = Callable[[list[tuple[str, float, str, str]]], None]
"""Computes the store entries of runs ``(mode, lr, context, stop)``, e.g. in parallel."""


def flip_fraction(campaign, lr: float, prefetch: Prefetch | None = None, *, known: Mapping[str, bool] | None = None,
                  order: Sequence[str] | None = None,
                  on_run: Callable[[str, Trajectory], None] | None = None) -> float:
    """Fraction of usable contexts known to Born-flip by T at ``lr`` (full FT), stopping early.

    Contexts whose outcome is ``known`` are counted without a run; the others are run in
    ``order`` (default: usable order; each run stops at its flip) until the ≥ ½ decision of
    SPEC §5 is certain. The returned fraction counts unrun contexts as not flipping, so it
    is exact about that decision (a lower bound on the full fraction). Runs are taken in
    waves of the fewest further contexts that cannot decide before the wave's end, so a
    wave holds only runs that a one-by-one scan makes too; ``prefetch`` (optional) computes
    each wave's runs before they are read, e.g. in parallel, without changing which runs
    are made. ``on_run(context, run)`` sees every run read.
    """
    usable, known = campaign.usable, known or {}
    need = math.ceil(len(usable) * CRITICAL_FRACTION)
    todo = [c for c in (usable if order is None else order) if c not in known]
    flips = sum(bool(known[c]) for c in usable if c in known)
    fails = sum(c in known for c in usable) - flips
    while todo and flips < need and fails <= len(usable) - need:
        size = min(need - flips, len(usable) - need + 1 - fails)
        wave, todo = todo[:size], todo[size:]
        if prefetch is not None:
            prefetch([("full", lr, context, "born_flip") for context in wave])
        for context in wave:
            run = campaign.run("full", lr, context, stop="born_flip")
            if on_run is not None:
                on_run(context, run)
            flipped = _born_flipped(run)
            flips, fails = flips + flipped, fails + (not flipped)
    return flips / len(usable)


class _Bisection:
    """The Born-flip outcomes one η_c bisection has seen, per context and LR (SPEC §5).

    A probe counts, without a run, every context whose outcome at that LR is implied by its
    outcomes so far under per-context monotonicity in η (a flip at η' ≤ η, or no flip at
    η' ≥ η) or decided by a run the store already holds at that LR under another stop policy;
    it runs the others, those likeliest to settle the majority first (a probe run already
    stored is read back and counted as a probe run: the cost does not depend on the store's
    history). Monotonicity is then checked on every run it read (the grid scan, the probes,
    the stored runs): each violation is reported.
    """

    def __init__(self, campaign, grid: Sequence[float], prefetch: Prefetch | None):
        self.campaign, self.grid, self.prefetch = campaign, grid, prefetch
        self.seen: dict[str, dict[float, bool]] = {c: {} for c in campaign.usable}
        self.cost = {"probe_runs": 0, "probe_steps": 0, "implied": 0, "reused": 0}

    def _add(self, context: str, lr: float, run: Trajectory) -> bool:
        self.seen[context][lr] = flipped = _born_flipped(run)
        return flipped

    def _made(self, context: str, run: Trajectory) -> None:
        self._add(context, run.meta["lr"], run)
        self.cost["probe_runs"] += 1
        self.cost["probe_steps"] += len(run["phi"]) - 1

    def implied(self, context: str, lr: float) -> bool | None:
        """The outcome at ``lr`` that monotonicity implies, None when open (or contradicted)."""
        seen = self.seen[context].items()
        up = any(flipped for eta, flipped in seen if eta <= lr)
        down = any(not flipped for eta, flipped in seen if eta >= lr)
        return up if up != down else None

    def _estimate(self, context: str) -> float:
        """Geometric middle of the context's open bracket (where it is expected to start flipping)."""
        seen = self.seen[context]
        lo = max((eta for eta, f in seen.items() if not f), default=min(self.grid) / 10)
        hi = min((eta for eta, f in seen.items() if f), default=max(self.grid) * 10)
        return math.sqrt(lo * hi)

    def fraction(self, lr: float) -> float:
        if lr in self.grid:
            return sum(self._add(c, lr, self.campaign.run("full", lr, c)) for c in self.campaign.usable) \
                / len(self.campaign.usable)
        known = {}
        for c in self.campaign.usable:
            if (v := self.implied(c, lr)) is not None:
                known[c] = v
                self.cost["implied"] += 1
            elif (run := self.campaign.stored("full", lr, c)) is not None:
                known[c] = self._add(c, lr, run)
                self.cost["reused"] += 1
        open_ = sorted((c for c in self.campaign.usable if c not in known), key=self._estimate)
        expected = sum(known.values()) + sum(self._estimate(c) <= lr for c in open_)
        if expected < math.ceil(len(self.campaign.usable) * CRITICAL_FRACTION):
            open_.reverse()                 # a failure is expected: the likeliest misses first
        return flip_fraction(self.campaign, lr, self.prefetch, known=known, order=open_, on_run=self._made)

    def violations(self) -> list[tuple[str, float, float]]:
        """``(context, η_flip, η_miss)`` for every flip at a lower LR than a miss of the same context."""
        return [(c, up, down) for c, seen in self.seen.items() for up, f in sorted(seen.items()) if f
                for down, g in sorted(seen.items()) if not g and down > up]


def _critical_lr_entry(campaign, rtol: float, prefetch: Prefetch | None) -> dict:
    """The stored η_c bisection of a campaign, computed on a miss (see :func:`critical_lr_of`)."""
    grid = sorted(set(campaign.plan.sweep) | set(campaign.plan.extended))

    def compute() -> dict:
        bisection = _Bisection(campaign, grid, prefetch)
        result = dataclasses.asdict(laws.critical_lr(bisection.fraction, grid, rtol=rtol))
        violations = bisection.violations()
        return {**result, "cost": bisection.cost, "violations": violations,
                "checked": sum(map(len, bisection.seen.values()))}

    key = runs.key("critical_lr", campaign.model, grid=grid, steps=campaign.plan.steps, stop=campaign.plan.stop,
                   rtol=rtol, contexts=campaign.usable, device=runs.device_type(campaign.device))
    return campaign.store.get_or_compute(key, compute)


def critical_lr_of(campaign, *, rtol: float = CRITICAL_RTOL, prefetch: Prefetch | None = None) -> laws.CriticalLR:
    """``η_c(model)`` by bisection in log η (SPEC §5); cached.

    The full-FT grid LRs (sweep and extended) are read from their runs (scanned upwards until
    the first success; decades beyond the grid when it holds no bracket, see
    :func:`phantom.laws.critical_lr`); every other probe counts the contexts whose outcome is already
    implied (per-context monotonicity in η, checked on every run read) or stored, and runs
    the rest with ``stop="born_flip"`` (:func:`flip_fraction`, whose waves ``prefetch``
    computes first, e.g. in parallel). :func:`bisection_report` says what it cost.
    """
    return _result(_critical_lr_entry(campaign, rtol, prefetch))


def _result(entry: dict) -> laws.CriticalLR:
    return laws.CriticalLR(entry["eta_c"], tuple(entry["bracket"]) if entry["bracket"] else None,
                           tuple(map(tuple, entry["probes"])), entry["converged"])


def eta_c_text(result: laws.CriticalLR) -> str:
    """``"η_c = …"``, or where η_c lies when no bracket was found."""
    if result.converged:
        return f"η_c = {result.eta_c:.3g}"
    lrs = [eta for eta, _ in result.probes]
    return (f"η_c > {max(lrs):.3g} (no LR probed flips half the contexts)" if result.eta_c is None
            else f"η_c ≤ {result.eta_c:.3g} (every LR probed flips half the contexts)")


def bisection_report(campaign, *, rtol: float = CRITICAL_RTOL) -> str:
    """One line on a model's η_c bisection: its probe runs and steps, and the monotonicity check."""
    d = _critical_lr_entry(campaign, rtol, None)
    cost, bad = d["cost"], d["violations"]
    check = (f"monotonicity in η held on all {d['checked']} runs read" if not bad else
             f"monotonicity in η VIOLATED on {len(bad)} pair(s) of the {d['checked']} runs read: "
             + "; ".join(f"{c} flips at {up:.3g} but not at {down:.3g}" for c, up, down in bad))
    return (f"{eta_c_text(_result(d))} after {len(d['probes'])} probes: {cost['probe_runs']} probe runs, "
            f"{cost['probe_steps']} steps; {cost['implied']} outcomes implied by monotonicity, "
            f"{cost['reused']} read from stored runs; {check}")


def blind_statistic(campaign) -> laws.BlindQ:
    """The model's blind ``q`` from step-0 gradients (SPEC §5), ``r`` cached per context."""
    dz0, r = {}, {}
    for context in campaign.usable:
        out = runs.blind_r(campaign.model, context, campaign.orientations[context], store=campaign.store,
                           loader=campaign.loader)
        dz0[context], r[context] = out["dz0"], out["r"]
    return laws.blind_q(dz0, r, campaign.plan.steps)


@dataclass(frozen=True)
class ModelLaws:
    """One model's row of the laws table (SPEC §2, §5); None where its plan has no data."""

    model: str
    g2mean: float
    shape: str
    cls: str
    eta_sat: float | None
    h_ft: float | None
    b_ft: float
    lora_sufficiency: float
    q: float | None
    eta_c: float | None
    eta_hat: float | None = None
    rel_error: float | None = None


def blind_predictions(campaigns: Sequence[Campaign]) -> tuple[list[laws.Prediction], dict[str, str]]:
    """Leave-one-out blind predictions of η_c (SPEC §5, C13) over the campaigns that allow one.

    A model takes part when its plan has the critical-LR bisection, its ``q`` exists (some
    context has ``r > 0``) and its ``η_c`` was bracketed (:func:`phantom.laws.critical_lr`).
    Each prediction is fixed before the held-out model's ``η_c`` is read
    (:func:`phantom.laws.leave_one_out`).

    Returns
    -------
    predictions : list of Prediction
        Empty when fewer than two models take part.
    excluded : dict of str to str
        Every other model, with the reason it cannot take part.
    """
    q, excluded = {}, {}
    for c in campaigns:
        if not c.plan.eta_c:
            excluded[c.model] = "no critical-LR bisection in its plan"
        elif (bq := blind_statistic(c)).q is None:
            excluded[c.model] = f"no context with r > 0 ({', '.join(bq.excluded)})"
        elif not (ec := critical_lr_of(c)).converged:
            excluded[c.model] = f"no bracket on η_c: {eta_c_text(ec)}"
        else:
            q[c.model] = bq.q
    by_model = {c.model: c for c in campaigns}
    if len(q) < 2:
        return [], excluded
    return laws.leave_one_out(q, lambda m: critical_lr_of(by_model[m]).eta_c), excluded


def _bracketed(result: laws.CriticalLR) -> float | None:
    """η_c when the bisection bracketed it, else None (only a bound is known)."""
    return result.eta_c if result.converged else None


def laws_table(campaigns: Sequence[Campaign]) -> list[ModelLaws]:
    """Every per-model law, then the leave-one-out blind predictions where ≥2 models allow."""
    rows = {}
    for c in campaigns:
        b = bulk(c)
        eta_sat, h = reduced_field_of(c) if c.plan.saturation else (None, None)
        rows[c.model] = ModelLaws(
            model=c.model, g2mean=b["g2mean"], shape=b["kind"], cls=b["cls"], eta_sat=eta_sat, h_ft=h,
            b_ft=burial_ft(c), lora_sufficiency=lora_sufficiency(c),
            q=blind_statistic(c).q if c.plan.eta_c else None,
            eta_c=_bracketed(critical_lr_of(c)) if c.plan.eta_c else None)
    predictions, _ = blind_predictions(campaigns)
    for p in predictions:
        rows[p.model] = dataclasses.replace(rows[p.model], eta_hat=p.eta_hat, rel_error=p.rel_error)
    return list(rows.values())
