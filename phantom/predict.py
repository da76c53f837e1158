"""A blind critical learning rate for a user's probe, before any training (SPEC §5).

``η̂_c = k · (−Δz_0)/(T·r)``: ``r`` is the step-0 blind statistic of the probe on the model
(:func:`step_zero_r`), ``k`` the geometric mean of ``η_c/q`` over a fixed set of measured
models (:func:`blind_constant`, read from the run store, never computed). The estimate is
made by :func:`estimate` alone (SPEC §5 amendment A3 will switch it from Δz to Φ there), and
its accuracy comes from :func:`measured_accuracy` alone (today the leave-one-out errors of
``k``'s models; the campaign layer's per-context accuracy will slot in there).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import campaign, contexts, laws, zoo
from .protocol import CRITICAL_RTOL, EXTENDED_GRID, FULL_GRID, LORA_GRID, STEPS
from .store import NotStored, RunStore

NO_K = "no k: not every model of --k-models has η_c and q in the run store"
UNRELIABLE_FACTOR = 2.0     # η̂_c is "unreliable" when a leave-one-out η̂/η_c is off by more than ×2
# Approximate parameter counts of the offline zoo (for time estimates before a model is loaded).
OFFLINE_PARAMS = {"smollm2-135m": 134.5e6, "gemma3-270m": 268.1e6, "qwen2.5-0.5b": 494.0e6}
BISECTION_PROBES = math.ceil(math.log2(math.log(10) / CRITICAL_RTOL))   # ≈ LRs the η_c bisection adds


def step_zero_r(model, ids: torch.Tensor, g: int, c: int) -> float | None:
    """``r = ∇_θΔz · sign(−∇_θL)`` over the model's trainable parameters (SPEC §5 blind predictor).

    ``L`` is the cross-entropy of ``g`` at the last position of ``ids`` (1, n). Gradients come
    from :func:`torch.autograd.grad`, so no ``.grad`` is touched. None if nothing is trainable.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    with torch.enable_grad():
        z = model(ids, logits_to_keep=1).logits[0, -1]
        loss = F.cross_entropy(z[None].float(), torch.tensor([g], device=z.device))
        grad_loss = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grad_dz = torch.autograd.grad(z[g] - z[c], params, allow_unused=True)
    return math.fsum(float((gd.double() * torch.sign(-gl).double()).sum())
                     for gd, gl in zip(grad_dz, grad_loss) if gd is not None and gl is not None)


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
    """

    models: tuple
    k: float | None
    ratios: dict
    missing: dict
    loo: dict


def blind_constant(models, store=None) -> BlindConstant:
    """``k`` from the run store only: nothing is fine-tuned or computed into the store.

    Each model's ``η_c`` and ``q`` are read under the keys :func:`phantom.campaign.critical_lr_of`
    and :func:`phantom.campaign.blind_statistic` build for the SPEC protocol plan; a model whose
    entries (or whose offline cache entry, which names its weights) are absent is in ``missing``.
    """
    store = store or RunStore()
    ratios, missing = {}, {}
    for m in models:
        if m in zoo.OFFLINE and not (zoo.cache_root() / "models" / m / zoo.MANIFEST).exists():
            missing[m] = "not measured: never loaded on this machine (no model cache entry)"
            continue
        c = campaign.Campaign(m, campaign.Plan(), store=RunStore(store.root, read_only=True), loader=_never_load)
        try:
            q, eta_c = campaign.blind_statistic(c).q, campaign.critical_lr_of(c).eta_c
        except NotStored as err:
            missing[m] = f"not measured: {err}"
            continue
        if q is None or eta_c is None:
            missing[m] = "no context with r > 0 (no q)" if q is None else "η_c above the full-FT grid"
            continue
        ratios[m] = (eta_c, q)
    qs = {m: q for m, (_, q) in ratios.items()}
    k = laws.blind_k(list(ratios), qs, lambda m: ratios[m][0]) if ratios and not missing else None
    loo = {}
    if k is not None and len(ratios) >= 2:
        loo = {p.model: (p.eta_hat, p.eta_c) for p in laws.leave_one_out(qs, lambda m: ratios[m][0])}
    return BlindConstant(tuple(models), k, ratios, missing, loo)


@dataclass(frozen=True)
class Accuracy:
    """How far off ``η̂_c`` is known to be: the place predict's output reads its error range from.

    Attributes
    ----------
    source : str
        Where the errors were measured.
    log_errors : dict of str to float
        ``|ln(η̂/η_c)|`` per held-out item (today: per model of ``k``).
    factor : float or None
        ``exp(max log error)``: ``η̂_c`` is given as ``[η̂/factor, η̂·factor]``; None when unmeasured.
    reliable : bool or None
        ``factor ≤ UNRELIABLE_FACTOR``; None when unmeasured.
    """

    source: str
    log_errors: dict
    factor: float | None
    reliable: bool | None


def measured_accuracy(const: BlindConstant) -> Accuracy:
    """The predictor's measured accuracy: leave-one-out over ``k``'s models until the campaign
    layer measures it per context (SPEC §5 amendment A3)."""
    errors = {m: abs(math.log(eta_hat / eta_c)) for m, (eta_hat, eta_c) in const.loo.items()}
    if not errors:
        return Accuracy("unmeasured: leave-one-out needs k over ≥ 2 models", {}, None, None)
    factor = math.exp(max(errors.values()))
    return Accuracy(f"leave-one-out over {', '.join(errors)}", errors, factor, factor <= UNRELIABLE_FACTOR)


def blind_lr(k: float | None, dz0: float, r: float | None, steps: int = STEPS) -> tuple[float | None, str | None]:
    """``(η̂_c, None)`` with ``η̂_c = k · (−Δz_0)/(T·r)`` (SPEC §5), or ``(None, reason)``."""
    if r is None:
        return None, "r was not computed (no trainable parameter)"
    if r <= 0:
        return None, (f"r = {r:.4g} ≤ 0: Adam's first step does not move Δz toward the target, so "
                      f"(−Δz_0)/(T·r) is no learning rate (SPEC §5 excludes such contexts)")
    if dz0 >= 0:
        return None, f"Δz_0 = {dz0:.4g} ≥ 0: the target already leads its competitor in logit"
    if k is None:
        return None, NO_K
    return k * (-dz0) / (steps * r), None


def estimate(k: float | None, row: dict, steps: int = STEPS) -> tuple[float | None, str | None]:
    """``η̂_c`` of a probe from its step-0 monitor row: the one place the predictor's formula is chosen."""
    return blind_lr(k, row["dz"], row["r"], steps)


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
    LoRA grids and the η_c bisection, every context run to T, at ``campaign.STEP_S_PER_PARAM``),
    None outside the offline zoo. Runs that stop at the Born flip make real times lower."""
    n = OFFLINE_PARAMS.get(model)
    if n is None:
        return None
    lrs = len(FULL_GRID) + len(EXTENDED_GRID) + len(LORA_GRID) + BISECTION_PROBES
    return campaign.STEP_S_PER_PARAM * n * STEPS * len(contexts.CONTEXTS) * lrs / 60


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
