"""The dry run: what a budget will compute, and for how long, before anything runs (SPEC §4–§6).

:func:`estimate` counts a plan's runs per kind (the grids exactly, the adaptive runs of
SPEC §5 A1–A2 and §6 A4 by a rule of thumb per usable context) and prices them with the
measured per-run and per-step costs of :class:`Costs`; :func:`format_dry_run` prints them
for ``phantom campaign --dry-run`` and the claim suite's ``--collect-only`` header.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import contexts, runs, zoo
from .plans import Plan, plan_for
from .progress import duration
from .protocol import STEPS
from .store import RunStore


@dataclass(frozen=True)
class Costs:
    """Measured costs of one run on this project's machines, per parameter of the model.

    Fitted on the 346 trajectories of the cold standard session of 2026-12-06 11:13 UTC (34.6
    min; 2 cores, xdist ``-n 2``, one torch thread each, under each other's contention; the
    step-0 state shared per context, :class:`phantom.dynamics.StepZero`; each context's LoRA
    grid batched, :func:`phantom.dynamics.run_lora_grid`, its runs' ``wall_s`` the grid's
    time shared by forwards), by least squares of a run's recorded ``wall_s`` on
    ``n_params · (1, updates)`` per mode: per update SmolLM2-135M 0.41 s and Gemma-3-270M
    0.79 s under full FT, 0.135 s and 0.254 s under LoRA (0.21 s and 0.36 s run one by one).
    ``wall_s`` holds the step-0 observables (the fit's intercept, ``t0_s_per_param``) but not
    the model copy before it (``copy_s_per_param``, from ``test_bench_run_setup`` of
    ``tests/benchmarks/test_bench_dynamics.py``). ``kept`` is the mean fraction of the ``T``
    updates a run makes before its early stop (``stop="saturated"``): 0.80 under full FT
    (29% of the runs stopped early), 0.65 under LoRA (52%).
    """

    step_s_per_param: dict = field(default_factory=lambda: {"full": 2.6e-9, "lora": 9.0e-10})
    t0_s_per_param: dict = field(default_factory=lambda: {"full": 8.7e-9, "lora": 1.1e-9})
    copy_s_per_param: float = 7e-9
    kept: dict = field(default_factory=lambda: {"full": 0.80, "lora": 0.65})

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
                 "from the measured costs of phantom.dryrun.Costs (2 cores, one torch thread a worker); "
                 "model loads and statistics not counted")
    return "\n".join(lines)
