"""Plans and budgets: which runs a model gets under a claims budget, and which models a zoo covers.

A :class:`Plan` lists the learning rates a model is fine-tuned at (defaults: the SPEC §4
protocol). Any departure from that protocol is a :class:`Plan` field away from its default
and is named in ``Plan.reductions`` for CLAIMS.md. Budgets decide a model's plan from its
estimated cost (:func:`full_ft_seconds`), never from its name; :data:`ZOOS` says which models
a claims session covers under each budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import contexts, zoo
from .protocol import ETA_REF, EXTENDED_GRID, FULL_GRID, LORA_GRID, LORA_REF, STEPS


@dataclass(frozen=True)
class Plan:
    """The runs a model gets (defaults: the SPEC §4 protocol)."""

    sweep: tuple[float, ...] = FULL_GRID          # full FT: C1, C2, C6, C7, C8 (η_ref ∈ sweep: C3)
    extended: tuple[float, ...] = EXTENDED_GRID   # full FT below the sweep: C9 saturation
    lora: tuple[float, ...] = LORA_GRID           # LoRA: C4 (LORA_REF: C5, C5b, C11)
    eta_c: bool = True                            # critical-LR search and blind predictor: C13
    steps: int = STEPS
    stop: str = "saturated"                       # dynamics.run(stop=…): ends runs that can change no verdict
    batch_lora: bool = True                       # a context's LoRA grid as one batched training (run_lora_grid)
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

    def batch(self, mode: str, lr: float) -> tuple[float, ...] | None:
        """The LoRA grid a run is computed in (:func:`phantom.runs.trajectory`), None for a run of its own."""
        grid = self.lora_lrs
        return grid if self.batch_lora and mode == "lora" and lr in grid and len(grid) > 1 else None


BUDGETS = ("quick", "standard", "full")
_PAPER = ("distilgpt2", "gpt2-medium", "HuggingFaceTB/SmolLM-360M", "EleutherAI/pythia-70m", "EleutherAI/pythia-410m")
ZOOS: dict[str, dict[str, tuple[str, ...]]] = {            # zoo → budget → the models a claims session covers
    "offline": {b: tuple(name for name, m in zoo.OFFLINE.items() if b in m.budgets) for b in BUDGETS},   # SPEC §7
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
