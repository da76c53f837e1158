"""Which runs each model gets under a claims budget (SPEC §4 grids, issue budgets).

A :class:`Plan` lists the learning rates a model is fine-tuned at; :class:`Campaign`
serves those runs from the shared run store (each computed once across processes), so
claim tests never call the fine-tuning engine themselves. Any departure from the SPEC
protocol is a :class:`Plan` field away from its default and is named in
``Plan.reductions`` for CLAIMS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from . import contexts, store
from .trajectory import Trajectory

FULL_GRID = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5)       # SPEC §4 full-FT sweep
EXTENDED_GRID = (2e-7, 5e-7, 1e-6)               # SPEC §4, below it, for saturation fits
LORA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)       # SPEC §4
ETA_REF, LORA_REF = 2e-5, 1e-3                   # SPEC §4 reference LRs
STEPS = 30                                       # SPEC §4 T


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


class Campaign:
    """A model's runs under a plan, served from the run store.

    Parameters
    ----------
    model : str
        Zoo name, local directory or hub id.
    plan : Plan
    runs : store.RunStore, optional
        Defaults to the shared store (``$PHANTOM_RUNS``).
    loader : callable, optional
        name → Loaded, called only when a run is missing (default: one model per process).
    """

    def __init__(self, model: str, plan: Plan = Plan(), runs: store.RunStore | None = None,
                 loader=store.SLOT):
        self.model, self.plan = model, plan
        self.store = runs or store.RunStore()
        self.loader = loader

    @cached_property
    def orientations(self) -> dict[str, contexts.Pair | str]:
        """Context id → its Pair on this model, or the reason it is unusable (SPEC §3)."""
        out = {}
        for c in contexts.CONTEXTS:
            try:
                out[c.id] = store.orientation(self.model, c, store=self.store, loader=self.loader)
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
        return store.trajectory(self.model, context, mode=mode, lr=lr, steps=self.plan.steps,
                                stop=self.plan.stop if stop is None else stop, store=self.store,
                                loader=self.loader)

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
        """(mode, lr, context) of every planned run, costliest first (for precomputing)."""
        full = sorted(set(self.plan.sweep) | set(self.plan.saturation) | {ETA_REF}, reverse=True)
        lora = sorted(set(self.plan.lora) | {LORA_REF})
        return ([("full", lr, c) for lr in full for c in self.usable]
                + [("lora", lr, c) for lr in lora for c in self.usable])


ZOOS = {
    "offline": ("smollm2-135m", "gemma3-270m"),             # SPEC §7 standard offline zoo
    "offline-full": ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"),
    "paper": ("distilgpt2", "gpt2-medium", "HuggingFaceTB/SmolLM-360M",
              "EleutherAI/pythia-70m", "EleutherAI/pythia-410m"),
}
BUDGETS = ("quick", "standard", "full")


def zoo_models(zoo: str, budget: str) -> tuple[str, ...]:
    """The models a claims session covers: ``quick`` is SmolLM2 alone, ``full`` adds Qwen offline."""
    if zoo not in ("offline", "paper"):
        raise ValueError(f"zoo must be 'offline' or 'paper', got {zoo!r}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if zoo == "paper":
        return ZOOS["paper"]
    return {"quick": ZOOS["offline"][:1], "standard": ZOOS["offline"], "full": ZOOS["offline-full"]}[budget]


def select_models(models: str | None, zoo: str, budget: str) -> tuple[str, ...]:
    """The claims session's models: ``--models a,b`` if given, else the zoo under the budget."""
    if models:
        return tuple(m.strip() for m in models.split(",") if m.strip())
    return zoo_models(zoo, budget)


def plan_for(budget: str, model: str) -> Plan:
    """The plan of one model under a budget; every reduction is named (issue time targets)."""
    if budget == "full":
        return Plan()
    lora_only_ref = "LoRA grid reduced to the reference LR 1e-3 (C4 checks those runs only)"
    if budget == "quick":
        return Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False,
                    reductions=("full-FT sweep reduced to η_ref = 2e-5", "no saturation grid (C9 untested)",
                                lora_only_ref, "no critical-LR bisection (C13 untested)"))
    if model == "gemma3-270m":
        return Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False,
                    reductions=("full-FT sweep reduced to η_ref = 2e-5: an instrumented full-FT step of "
                                "Gemma-3 takes 2.9 s on 2 cores (1.2 s bare + 1.7 s, mostly the exact "
                                "purity over 262,144 × 640²), so the 5-LR sweep alone (≈50 runs) takes ≈1 h",
                                "no saturation grid (80 runs, ≈1.6 h): C9 without Gemma-3",
                                "no critical-LR bisection (≈1 h more): C13 without Gemma-3",
                                lora_only_ref))
    return Plan(lora=(LORA_REF,), reductions=(lora_only_ref,))
