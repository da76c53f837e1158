"""A blind critical learning rate for a user's probe, before any training (SPEC §5, A3).

``η̂_c = k · (−Φ_0)/(T·r)``: ``r = ∇_θΦ·sign(−∇_θL)`` is the step-0 blind statistic of the
probe on the model (:func:`phantom.dynamics.step_zero_r`), ``k`` the geometric mean of
``η_c/q`` over a fixed set of measured models (:func:`blind_constant`, read from the run
store, never computed). The estimate is made by :func:`estimate` alone; its accuracy comes
from :func:`measured_accuracy` alone: the predictor's per-context errors measured on ``k``'s
models, each context predicted with ``k`` from the other models (SPEC §5 A3).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np

from . import campaign, contexts, laws, plans, zoo
from .protocol import EXTENDED_GRID, FULL_GRID, LORA_GRID, STEPS
from .store import NotStored, RunStore

NO_K = "no k: not every model of --k-models has η_c and q in the run store"
UNRELIABLE_FACTOR = 2.0     # η̂_c is "unreliable" when a leave-one-out η̂/η_c is off by more than ×2
# Approximate parameter counts of the offline zoo (for time estimates before a model is loaded).
OFFLINE_PARAMS = {"smollm2-135m": 134.5e6, "gemma3-270m": 268.1e6, "qwen2.5-0.5b": 494.0e6}
SEARCH_PROBES = 3   # ≈ probe runs per context of the η_i search (straddles of the response curve, SPEC §5 A2)


def _never_load(name: str):
    raise NotStored(f"model {name!r} would have to be loaded")


@dataclass(frozen=True)
class BlindConstant:
    """``k``: geometric mean of ``η_c / q`` over every model of ``models`` (SPEC §5).

    Attributes
    ----------
    models : tuple of str
        The models ``k`` is defined over (the budget's zoo by default): ``k`` needs all of them,
        so it never depends on which entries happen to be stored.
    k : float or None
        None unless every model has both ``η_c`` and ``q`` stored.
    ratios : dict of str to (η_c, q)
        The measured models.
    missing : dict of str to str
        Every other model, with the reason.
    loo : dict of str to (η̂_c, η_c)
        Leave-one-out prediction of each model's ``η_c`` from the others (SPEC §5, C13), with ≥ 2.
    contexts : dict of str to float
        ``ln(η̂_i / η_i)`` of every context of those models, ``"model/context"`` → value, each
        predicted with ``k`` from the other models (SPEC §5 A3), with ≥ 2.
    """

    models: tuple
    k: float | None
    ratios: dict
    missing: dict
    loo: dict
    contexts: dict


def blind_constant(models, store=None) -> BlindConstant:
    """``k`` from the run store only: nothing is fine-tuned or computed into the store.

    Each model's ``η_c`` and ``q`` are read under the keys :func:`phantom.campaign.critical_lr_of`
    and :func:`phantom.campaign.blind_statistic` build for the SPEC protocol plan; a model whose
    entries (or whose offline cache entry, which names its weights) are absent is in ``missing``.
    """
    store = store or RunStore()
    ratios, missing, measured = {}, {}, []
    for m in models:
        if m in zoo.OFFLINE and not (zoo.cache_root() / "models" / m / zoo.MANIFEST).exists():
            missing[m] = "not measured: never loaded on this machine (no model cache entry)"
            continue
        c = campaign.Campaign(m, plans.Plan(), store=RunStore(store.root, read_only=True), loader=_never_load)
        try:
            q, eta_c = campaign.blind_statistic(c).q, campaign.critical_lr_of(c)
        except NotStored as err:
            missing[m] = f"not measured: {err}"
            continue
        if q is None or not eta_c.converged:
            missing[m] = "no context with r > 0 (no q)" if q is None else campaign.eta_c_text(eta_c)
            continue
        ratios[m] = (eta_c.eta_c, q)
        measured.append(c)
    qs = {m: q for m, (_, q) in ratios.items()}
    k = laws.blind_k(list(ratios), qs, lambda m: ratios[m][0]) if ratios and not missing else None
    loo, per_context = {}, {}
    if k is not None and len(ratios) >= 2:
        blind = campaign.blind_predictions(measured)
        loo = {p.model: (p.eta_hat, p.eta_c) for p in blind.predictions}
        per_context = {f"{m}/{ctx}": v for m, check in blind.checks.items() if check is not None
                       for ctx, v in check.log_ratio.items()}
    return BlindConstant(tuple(models), k, ratios, missing, loo, per_context)


@dataclass(frozen=True)
class Accuracy:
    """How far off ``η̂_c`` is known to be: the place predict's output reads its error range from.

    Attributes
    ----------
    source : str
        Where the errors were measured.
    log_errors : dict of str to float
        ``|ln(η̂_i/η_i)|`` per held-out context (``"model/context"``) of ``k``'s models.
    factor : float or None
        ``exp(90th percentile of the log errors)``: ``η̂_c`` is given as ``[η̂/factor, η̂·factor]``,
        the range that held 90% of the zoo's contexts; None when unmeasured.
    reliable : bool or None
        ``factor ≤ UNRELIABLE_FACTOR``; None when unmeasured.
    """

    source: str
    log_errors: dict
    factor: float | None
    reliable: bool | None


def measured_accuracy(const: BlindConstant) -> Accuracy:
    """The predictor's accuracy measured context by context on ``k``'s models (SPEC §5 A3)."""
    errors = {item: abs(v) for item, v in const.contexts.items()}
    if not errors:
        return Accuracy("unmeasured: the per-context check needs k over ≥ 2 models", {}, None, None)
    factor = math.exp(float(np.percentile(list(errors.values()), 90)))
    models = sorted({item.split("/")[0] for item in errors})
    return Accuracy(f"90% of the {len(errors)} contexts of {', '.join(models)}, each predicted with k from the "
                    "other models (SPEC §5 A3)", errors, factor, factor <= UNRELIABLE_FACTOR)


def blind_lr(k: float | None, phi0: float, r: float | None, steps: int = STEPS) -> tuple[float | None, str | None]:
    """``(η̂_c, None)`` with ``η̂_c = k · (−Φ_0)/(T·r)`` (SPEC §5 A3), or ``(None, reason)``."""
    if r is None:
        return None, "r was not computed (no trainable parameter)"
    if r <= 0:
        return None, (f"r = {r:.4g} ≤ 0: Adam's first step does not move Φ toward the target, so "
                      f"(−Φ_0)/(T·r) is no learning rate (SPEC §5 excludes such contexts)")
    if phi0 >= 0:
        return None, f"Φ_0 = {phi0:.4g} ≥ 0: the target already leads its competitor in Born score"
    if k is None:
        return None, NO_K
    return k * (-phi0) / (steps * r), None


def estimate(k: float | None, row: dict, steps: int = STEPS) -> tuple[float | None, str | None]:
    """``η̂_c`` of a probe from its step-0 monitor row: the one place the predictor's formula is chosen."""
    return blind_lr(k, row["phi"], row["r"], steps)


def installed(model: str) -> bool:
    """Whether a model can be loaded here without installing anything (offline zoo: its packages
    or its cache entry; otherwise: :func:`phantom.zoo.check_name` passes)."""
    if model in zoo.OFFLINE:
        return ((zoo.cache_root() / "models" / model / zoo.MANIFEST).exists()
                or all(importlib.util.find_spec(p) is not None for p in zoo.OFFLINE[model].packages))
    try:
        zoo.check_name(model)
    except zoo.UnknownModel:
        return False
    return True


def measure_minutes(model: str) -> float | None:
    """Upper estimate of one thread's minutes of ``phantom laws --models <model>`` (its full-FT and
    LoRA grids and the per-context critical-LR searches, every context run to T, at ``plans.STEP_S_PER_PARAM``),
    None outside the offline zoo. Runs that stop at the Born flip make real times lower."""
    n = OFFLINE_PARAMS.get(model)
    if n is None:
        return None
    lrs = len(FULL_GRID) + len(EXTENDED_GRID) + len(LORA_GRID) + SEARCH_PROBES
    return plans.STEP_S_PER_PARAM * n * STEPS * len(contexts.CONTEXTS) * lrs / 60


def remedy(const: BlindConstant) -> list[str]:
    """Commands that would give ``k``, cheapest first, naming only models installed here."""
    def cost(m: str) -> str:
        minutes = measure_minutes(m)
        return f"up to ≈{minutes:.0f} min on one CPU thread" if minutes is not None else "time unknown"

    todo = sorted((m for m in const.missing if installed(m)), key=lambda m: measure_minutes(m) or math.inf)
    absent = [m for m in const.missing if not installed(m)]
    lines = []
    if todo and not absent:
        lines.append(f"measure: python -m phantom laws --models {','.join(todo)}  "
                     f"({'; '.join(f'{m}: {cost(m)}' for m in todo)})")
    cheapest = sorted((m for m in (*const.ratios, *todo)), key=lambda m: measure_minutes(m) or math.inf)[:1]
    if cheapest and (len(const.models) > 1 or absent):
        m = cheapest[0]
        step = f"python -m phantom laws --models {m} ({cost(m)}), then " if m in todo else ""
        lines.append(f"cheapest: {step}--k-models {m} (k from one model: its accuracy is then unmeasured)")
    if absent:
        lines.append(f"not installed here: {', '.join(absent)} (leave out of --k-models, or install: README Set-up)")
    return lines
