"""The paper's claims: a registry of what each reads and its pre-registered rule (SPEC §6).

Each claim is a row of :data:`CLAIMS` (scikit-learn's ``parametrize_with_checks`` for SPEC
§6): its id, statement, the paper's value, its rule, its scope — ``"model"`` (one verdict
per model, read from that model's :class:`~phantom.campaign.Campaign`) or ``"zoo"`` (one
verdict over every campaign) — and ``check``, which reads the data the claim needs and
applies its rule. The rules themselves are the pure ``c*`` functions below: they turn
measured data into a :class:`Verdict` — *reproduced*, *not reproduced* or *not testable*
(with the reason) — and the measured value to print next to the paper's; unit tests feed
them synthetic data.

Adding a claim: a ``c*`` rule function (with its unit test), a reader, and one
:class:`Claim` row; the claim suite parametrises over the registry.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import campaign as cmp
from . import laws, search, transitions
from .geometry import classify
from .protocol import (
    BLIND_REL_ERROR_MAX,
    BOOTSTRAP_B,
    BOOTSTRAP_SEED,
    BURIAL_MIN_MODELS,
    BURIAL_RHO_MIN,
    C5_MIN_JUMPS,
    CLASS_A_BAND,
    CLASS_B_BAND,
    DECOMPOSITION_TOL,
    FRAGILE_BELOW,
    H_CV_MAX,
    OPERATING_H,
    SPEARMAN_LORA_MAX,
    SUFFICIENCY_SPLIT,
)
from .trajectory import Trajectory

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable"

Pairs = list   # [(context, item)]: what a claim reads, one item per run or per context (A6)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper (SPEC §6) and how it is checked.

    ``read`` takes the subject (a :class:`~phantom.campaign.Campaign` for scope ``"model"``,
    the list of campaigns for ``"zoo"``) to the data the rule needs, as ``(context, item)``
    pairs (per model for a zoo claim: ``{model: (model constant, pairs)}``); ``judge``
    applies the rule to such data. The bootstrap of SPEC §6 A6 resamples the pairs' contexts
    and judges again (:func:`evaluate`). ``numbers`` names the verdict details that get a
    95% interval; ``consistency`` marks a check that holds by construction (A5).
    """

    id: str
    name: str
    statement: str
    paper: str       # the paper's figure or value
    rule: str        # reproduced iff …
    scope: str       # "model": one verdict per model; "zoo": one verdict over the zoo
    read: Callable = field(repr=False, compare=False)
    judge: Callable = field(repr=False, compare=False)    # (model or "zoo", data, exact) → Verdict
    numbers: tuple[str, ...] = ()
    consistency: bool = False
    resampled: bool = True   # False: the verdict does not depend on contexts (C10)

    def check(self, subject) -> Verdict:
        """The claim's verdict with its stability, intervals and p-values (:func:`evaluate`)."""
        return evaluate(self, subject)


@dataclass(frozen=True)
class Verdict:
    """A claim's outcome on one model (or on the zoo, ``model="zoo"``).

    ``stability`` is the fraction of bootstrap resamples of the contexts that give the same
    verdict (None when not resampled); ``intervals`` maps each number of the claim to its
    95% percentile interval over those resamples (SPEC §6 A6).
    """

    claim: str
    model: str
    status: str
    value: str                     # the measured value, as printed in CLAIMS.md
    n: int                         # number of runs / contexts / models behind it
    details: dict = field(default_factory=dict)
    stability: float | None = None
    intervals: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE):
            raise ValueError(f"unknown verdict status {self.status!r}")
        if self.claim not in BY_ID:
            raise ValueError(f"unknown claim {self.claim!r}")

    @property
    def fragile(self) -> bool:
        return self.stability is not None and self.stability < FRAGILE_BELOW

    def to_dict(self) -> dict:
        """JSON-able form (verdicts.json, and the record a pytest-xdist worker sends)."""
        return json.loads(json.dumps(asdict(self), default=_jsonable))

    @classmethod
    def from_dict(cls, d: Mapping) -> Verdict:
        """Inverse of :meth:`to_dict`; raises ValueError naming a missing or bad field."""
        try:
            stability = d.get("stability")
            return cls(str(d["claim"]), str(d["model"]), str(d["status"]), str(d["value"]), int(d["n"]),
                       dict(d.get("details") or {}), None if stability is None else float(stability),
                       {k: tuple(v) for k, v in (d.get("intervals") or {}).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a verdict record: {d!r} ({err})") from None


def _jsonable(x):
    return list(x) if isinstance(x, (tuple, set, frozenset)) else float(x)


def _verdict(claim: str, model: str, ok: bool, value: str, n: int, **details) -> Verdict:
    return Verdict(claim, model, REPRODUCED if ok else NOT_REPRODUCED, value, n, details)


def not_testable(claim: str, model: str, reason: str, n: int = 0) -> Verdict:
    """A verdict that could not be reached, with the reason as its value."""
    return Verdict(claim, model, NOT_TESTABLE, reason, n)


def _completed(runs: Iterable[Trajectory]) -> list[Trajectory]:
    return [r for r in runs if r.diverged_at is None]


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _rho(x: Sequence[float], y: Sequence[float], p_values: bool) -> tuple[float, float | None]:
    """Spearman ρ and, when asked (not in a bootstrap resample), its permutation p-value (A6)."""
    rho = laws.spearman(x, y)
    return rho, (laws.permutation_p(x, y) if p_values and not math.isnan(rho) else None)


def _p(p: float | None) -> str:
    return "" if p is None else f" (p = {p:.2g})"


def c1_silent_failure(model: str, sweep: Sequence[Trajectory]) -> Verdict:
    """C1: ≥1 silent failure among the rank-contested full-FT grid runs."""
    contested = [r for r in _completed(sweep) if r.meta["rank_contested"]]
    if not contested:
        return not_testable("C1", model, "no rank-contested run", len(sweep))
    silent = [r for r in contested if transitions.is_silent_failure(r)]
    where = sorted({f"{r.meta['context']}@{r.meta['lr']:g}" for r in silent})
    return _verdict("C1", model, len(silent) >= 1, f"{len(silent)}/{len(contested)} silent"
                    + (f" ({', '.join(where[:4])}{'…' if len(where) > 4 else ''})" if where else ""),
                    len(contested), silent=where, n_silent=len(silent))


def c2_decomposition(model: str, runs: Sequence[Trajectory]) -> Verdict:
    """C2: ``max |Φ − S − D|`` over every recorded step of every run ≤ 1e-6."""
    if not runs:
        return not_testable("C2", model, "no run")
    worst = max(float(np.max(np.abs(r["phi"] - r["signal"] - r["drag"]), initial=0.0)) for r in runs)
    return _verdict("C2", model, worst <= DECOMPOSITION_TOL, f"max |Φ−S−D| = {worst:.1e}", len(runs),
                    max_residual=worst)


def _jump_table(runs: Sequence[Trajectory], p_values: bool) -> tuple[int, float, float | None, dict]:
    """(number of jumping runs, Spearman(G_max, J), its p-value, per-context J)."""
    ratios = {r.meta["context"]: transitions.jump(r["phi"]).ratio for r in runs}
    n_jump = sum(transitions.jumps(r) for r in runs)
    rho, p = _rho([r.g_max for r in runs], [ratios[r.meta["context"]] for r in runs], p_values)
    return n_jump, rho, p, ratios


def c3_jumps_full(model: str, reference: Sequence[Trajectory], *, claim: str = "C3", where: str = "η_ref",
                  p_values: bool = True) -> Verdict:
    """C3 (and C3′ at η_H): ≥1 jumping context and Spearman(G_max, J) > 0."""
    runs = _completed(reference)
    if len(runs) < 2:
        return not_testable(claim, model, f"{len(runs)} completed run(s) at {where}", len(runs))
    n_jump, rho, p, ratios = _jump_table(runs, p_values)
    return _verdict(claim, model, n_jump >= 1 and rho > 0,
                    f"{n_jump}/{len(runs)} jump; ρ(G_max, J) = {rho:+.2f}{_p(p)}", len(runs),
                    n_jump=n_jump, spearman=rho, p=p, ratios=ratios)


def c4_lora_frozen(model: str, lora_runs: Sequence[Trajectory]) -> Verdict:
    """C4: input embedding (and untied head) bitwise equal at every step of every LoRA run."""
    if not lora_runs:
        return not_testable("C4", model, "no LoRA run")
    frozen = [bool(np.all(r["embed_equal"] == 1.0) and np.all(r["head_equal"] == 1.0)) for r in lora_runs]
    return _verdict("C4", model, all(frozen), f"{sum(frozen)}/{len(frozen)} runs bitwise frozen", len(frozen))


def c5_jumps_lora(model: str, lora_reference: Sequence[Trajectory]) -> Verdict:
    """C5: ≥2 jumping contexts under LoRA at the reference LR."""
    runs = _completed(lora_reference)
    if not runs:
        return not_testable("C5", model, "no completed LoRA run")
    n_jump = sum(transitions.jumps(r) for r in runs)
    return _verdict("C5", model, n_jump >= C5_MIN_JUMPS, f"{n_jump}/{len(runs)} jump", len(runs), n_jump=n_jump)


def c5b_smooth_lora(model: str, lora_reference: Sequence[Trajectory], *, p_values: bool = True) -> Verdict:
    """C5b: no jumping context under LoRA and |Spearman(G_max, J)| < 0.3."""
    runs = _completed(lora_reference)
    if len(runs) < 2:
        return not_testable("C5b", model, f"{len(runs)} completed LoRA run(s)", len(runs))
    n_jump, rho, p, ratios = _jump_table(runs, p_values)
    ok = n_jump == 0 and not math.isnan(rho) and abs(rho) < SPEARMAN_LORA_MAX
    return _verdict("C5b", model, ok, f"{n_jump}/{len(runs)} jump; ρ(G_max, J) = {rho:+.2f}{_p(p)}", len(runs),
                    n_jump=n_jump, spearman=rho, p=p, ratios=ratios)


def c6_readout(model: str, full_runs: Sequence[Trajectory], *, claim: str = "C6") -> Verdict:
    """C6 (and C6′ at η_H): in every jumping full-FT run, J of Δz, a_g and a_c stays < 10."""
    jumping = [r for r in full_runs if transitions.jumps(r)]
    if not jumping:
        return not_testable(claim, model, "no jumping full-FT run", len(full_runs))
    worst = {s: max(transitions.jump(r[s]).ratio for r in jumping) for s in transitions.READOUTS}
    ok = all(v < transitions.JUMP_RATIO for v in worst.values())
    return _verdict(claim, model, ok, "max J: " + ", ".join(f"{k} {_fmt(v)}" for k, v in worst.items()),
                    len(jumping), worst=worst)


def c7_failure_modes(silent_by_model: Mapping[str, Sequence[Trajectory]]) -> Verdict:
    """C7 (zoo): kinematic and structural modes each seen in ≥1 silent failure."""
    runs = [r for rs in silent_by_model.values() for r in rs if transitions.is_silent_failure(r)]
    if not runs:
        return not_testable("C7", "zoo", "no silent-failure run in the zoo")
    counts = {m: sum(m in transitions.failure_modes(r) for r in runs) for m in ("kinematic", "structural")}
    return _verdict("C7", "zoo", all(counts.values()),
                    f"kinematic {counts['kinematic']}, structural {counts['structural']} of {len(runs)} silent",
                    len(runs), counts=counts)


def c8_sweep_separation(model: str, sweep: Sequence[Trajectory]) -> Verdict:
    """C8: one G_max threshold separates jumping from continuous flipping sweep runs."""
    flipping = [r for r in _completed(sweep) if transitions.born_flip_step(r["phi"]) is not None]
    jump_g = [r.g_max for r in flipping if transitions.jumps(r)]
    cont_g = [r.g_max for r in flipping if not transitions.jumps(r)]
    if not jump_g or not cont_g:
        return not_testable("C8", model, f"flipping runs: {len(jump_g)} jumping, {len(cont_g)} continuous; "
                            "a threshold needs both", len(flipping))
    above = min(jump_g) > max(cont_g)   # the paper's direction: high G_max jumps
    below = max(jump_g) < min(cont_g)
    direction = "jump above" if above else "jump below" if below else "overlap"
    value = (f"{len(jump_g)} jump G_max∈[{min(jump_g):.3f}, {max(jump_g):.3f}], {len(cont_g)} continuous "
             f"G_max∈[{min(cont_g):.3f}, {max(cont_g):.3f}]: {direction}")
    return _verdict("C8", model, above or below, value, len(flipping), direction=direction)


def c9_h_consistency(h_by_model: Mapping[str, laws.Estimate | None]) -> Verdict:
    """C9 (zoo): CV of H_FT over ≥2 models ≤ 0.10, judged on every CV the bounds allow (SPEC §5 A1).

    Reproduced only if the whole interval of compatible CVs is ≤ 0.10, not reproduced only if
    all of it is > 0.10; otherwise not testable.
    """
    h = {m: v for m, v in h_by_model.items() if v is not None}
    measured = ", ".join(v.text(f"{m} H_FT", ".3g") for m, v in h.items())
    if len(h) < 2:
        return not_testable("C9", "zoo", f"needs ≥2 models with H_FT, have {len(h)}"
                            + (f" ({measured})" if h else ""), len(h))
    lo, hi = laws.cv_range(list(h.values()))
    cv = f"CV = {lo:.1%}" if lo == hi else f"CV ∈ [{lo:.1%}, {hi:.1%}]"
    numbers = {"cv": lo} if lo == hi else {"cv_min": lo, "cv_max": hi}
    numbers.update({f"H_FT {m}": v.value for m, v in h.items() if v.value is not None})
    if lo <= H_CV_MAX < hi:
        return Verdict("C9", "zoo", NOT_TESTABLE, f"{cv} straddles {H_CV_MAX:.0%}: the bounds on H_FT leave it "
                       f"open; {measured}", len(h), numbers)
    return _verdict("C9", "zoo", hi <= H_CV_MAX, f"{cv}; {measured}", len(h), **numbers)


def c10_two_classes(model: str, g2mean: float, kind: str) -> Verdict:
    """C10: the model is class A or class B (SPEC §2)."""
    cls = classify(g2mean, kind)
    return _verdict("C10", model, cls in ("A", "B"), f"G²mean = {g2mean:.4f}, {kind} → {cls}", 1,
                    g2mean=g2mean, kind=kind, cls=cls)


def c11_lora_sufficiency(classes: Mapping[str, str], sufficiency: Mapping[str, float]) -> Verdict:
    """C11 (zoo): class B ⇒ sufficiency ≥ 0.8, class A ⇒ < 0.8; needs both classes."""
    value = ", ".join(f"{m} {classes[m]} {sufficiency[m]:.0%}" for m in classes)
    present = set(classes.values())
    if not {"A", "B"} <= present:
        return not_testable("C11", "zoo", f"needs both classes A and B; have {value}", len(classes))
    ok = all((sufficiency[m] >= SUFFICIENCY_SPLIT) == (c == "B") for m, c in classes.items() if c in "AB")
    return _verdict("C11", "zoo", ok, value, len(classes))


def _ranked(estimates: Mapping[str, laws.Estimate]) -> dict[str, float] | None:
    """Values that rank the estimates as every value they allow does, or None when bounds overlap."""
    if all(e.value is not None for e in estimates.values()):
        return {m: e.value for m, e in estimates.items()}
    items = sorted(estimates.items(), key=lambda kv: (kv[1].lo, kv[1].hi))
    if any(a.hi >= b.lo for (_, a), (_, b) in zip(items, items[1:])):
        return None
    return {m: float(i) for i, (m, _) in enumerate(items)}


def c12_burial_laws(b_ft: Mapping[str, float], g2mean: Mapping[str, float], h: Mapping[str, laws.Estimate],
                    *, p_values: bool = True) -> Verdict:
    """C12 (zoo): Spearman(B_FT, G²mean) ≥ 0.8 and Spearman(B_FT, H) ≤ −0.8 over ≥3 models.

    An ``H_FT`` known only as a bound enters by its rank when the bounds fix the ranking.
    """
    models = [m for m in b_ft if m in g2mean and h.get(m) is not None]
    if len(models) < BURIAL_MIN_MODELS:
        return not_testable("C12", "zoo", f"needs ≥3 models, have {len(models)}", len(models))
    ranks = _ranked({m: h[m] for m in models})
    if ranks is None:
        return not_testable("C12", "zoo", "bounds on H_FT leave the models' ranking in H open: "
                            + ", ".join(h[m].text(f"{m} H_FT") for m in models), len(models))
    rho_g, p_g = _rho([b_ft[m] for m in models], [g2mean[m] for m in models], p_values)
    rho_h, p_h = _rho([b_ft[m] for m in models], [ranks[m] for m in models], p_values)
    ok = rho_g >= BURIAL_RHO_MIN and rho_h <= -BURIAL_RHO_MIN
    return _verdict("C12", "zoo", ok, f"ρ(B_FT, G²mean) = {rho_g:+.2f}{_p(p_g)}, ρ(B_FT, H) = {rho_h:+.2f}{_p(p_h)}",
                    len(models), rho_g2mean=rho_g, rho_h=rho_h, p_g2mean=p_g, p_h=p_h)


def c13_blind_prediction(predictions: Sequence[laws.Prediction],
                         checks: Mapping[str, laws.ContextCheck | None] | None = None) -> Verdict:
    """C13 (zoo): every leave-one-out relative error ≤ 2.1%; the per-context check beside it (A3)."""
    if len(predictions) < 2:
        return not_testable("C13", "zoo", f"needs ≥2 models with η_c and q, have {len(predictions)}",
                            len(predictions))
    value = "; ".join(f"{p.model} η̂_c={p.eta_hat:.3g} η_c={p.eta_c:.3g} err {p.rel_error:.1%}" for p in predictions)
    shown = {m: ch for m, ch in (checks or {}).items() if ch is not None}
    if shown:
        value += ". Per context (not judged), |ln(η̂_i/η_i)|: " + "; ".join(
            f"{m} median {ch.median:.2f}, 90th pct {ch.p90:.2f} (n={ch.n})" for m, ch in shown.items())
    ok = all(p.rel_error <= BLIND_REL_ERROR_MAX for p in predictions)
    return _verdict("C13", "zoo", ok, value, len(predictions),
                    **{f"err {p.model}": p.rel_error for p in predictions},
                    **{f"η_c {p.model}": p.eta_c for p in predictions},
                    context_check={m: {"median": ch.median, "p90": ch.p90, "n": ch.n} for m, ch in shown.items()})


# --- readers: what each claim reads from the run layer, as (context, item) pairs ------------

def _by_context(runs: Iterable[Trajectory]) -> Pairs:
    return [(r.meta["context"], r) for r in runs]


def _items(pairs: Pairs) -> list:
    return [item for _, item in pairs]


def _model_claim(runs_of: Callable, rule: Callable) -> tuple[Callable, Callable]:
    """(read, judge) of a model claim whose rule reads a list of runs."""
    takes_p = "p_values" in inspect.signature(rule).parameters   # once, not in each of B resamples

    def judge(model: str, pairs: Pairs, exact: bool) -> Verdict:
        return rule(model, _items(pairs), **({"p_values": exact} if takes_p else {}))
    return (lambda c: _by_context(runs_of(c))), judge


def _operating(rule: Callable, claim: str) -> tuple[Callable, Callable]:
    """(read, judge) of C3′ / C6′: the C3 / C6 rule on the runs at η_H = 10 η_sat (SPEC §6 A4)."""
    def read(c: cmp.Campaign):
        if cmp.operating_lr(c) is not None:
            return _by_context(cmp.operating_runs(c))
        eta_sat = cmp.reduced_field_of(c)[0]
        why = "not measured (no saturation grid)" if eta_sat is None else f"not bracketed: {eta_sat.text('η_sat')}"
        return not_testable(claim, c.model, f"η_sat(model) {why}: no η_H = {OPERATING_H:g} η_sat")

    def judge(model: str, pairs: Pairs, exact: bool) -> Verdict:
        lr = pairs[0][1].meta["lr"] if pairs else float("nan")
        extra = {"p_values": exact, "where": f"η_H = {lr:.3g}"} if rule is c3_jumps_full else {}
        verdict = rule(model, _items(pairs), claim=claim, **extra)
        return dataclasses.replace(verdict, value=f"at η_H = {lr:.3g}: {verdict.value}",
                                   details={**verdict.details, "eta_h": lr})
    return read, judge


def _c9_read(zoo: Sequence[cmp.Campaign]) -> dict:
    return {c.model: (None, [(ctx, s.estimate) for ctx, s in cmp.saturations(c).items() if s.estimate is not None])
            for c in zoo if c.plan.saturation}


def _h(pairs: Pairs) -> laws.Estimate | None:
    return laws.reduced_field(laws.median_estimate(_items(pairs))) if pairs else None


def _c9_judge(_, data: dict, exact: bool) -> Verdict:
    return c9_h_consistency({m: _h(pairs) for m, (_, pairs) in data.items()})


def _c10_read(c: cmp.Campaign) -> dict:
    return cmp.bulk(c)


def _c10_judge(model: str, bulk: dict, exact: bool) -> Verdict:
    return c10_two_classes(model, bulk["g2mean"], bulk["kind"])


def _c11_read(zoo: Sequence[cmp.Campaign]) -> dict:
    return {c.model: (cmp.bulk(c)["cls"], [(r.meta["context"], search.born_flipped(r)) for r in c.lora_reference()])
            for c in zoo}


def _c11_judge(_, data: dict, exact: bool) -> Verdict:
    return c11_lora_sufficiency({m: cls for m, (cls, _) in data.items()},
                                {m: float(np.mean(_items(pairs))) for m, (_, pairs) in data.items()})


def _c12_read(zoo: Sequence[cmp.Campaign]):
    if len(zoo) < BURIAL_MIN_MODELS:   # do not pay for the laws of a claim that cannot be tested
        return not_testable("C12", "zoo", f"needs ≥{BURIAL_MIN_MODELS} models, have {len(zoo)}", len(zoo))
    out = {}
    for c in zoo:
        if c.plan.saturation:
            sat = cmp.saturations(c)
            out[c.model] = (cmp.bulk(c)["g2mean"], [(ctx, (r["burial"][0], sat[ctx].estimate))
                                                    for ctx, r in _by_context(c.reference())])
    return out


def _c12_judge(_, data, exact: bool) -> Verdict:
    return c12_burial_laws({m: float(np.median([b for b, _ in _items(p)])) for m, (_, p) in data.items()},
                           {m: g for m, (g, _) in data.items()},
                           {m: _h([(c, e) for c, (_, e) in p if e is not None]) for m, (_, p) in data.items()},
                           p_values=exact)


def _c13_read(zoo: Sequence[cmp.Campaign]):
    searched = [c for c in zoo if c.plan.eta_c]
    if len(searched) < 2:   # nothing to predict: report the η_c that was measured
        measured = ", ".join(f"{c.model} {cmp.eta_c_text(cmp.critical_lr_of(c))}" for c in searched)
        return not_testable("C13", "zoo", f"needs ≥2 models with a critical-LR search, have {len(searched)}"
                            + (f" ({measured})" if searched else ""), len(searched))
    blind = cmp.blind_predictions(searched)
    if len(blind.predictions) < 2:
        return not_testable("C13", "zoo", "needs ≥2 models with η_c and q; excluded: "
                            + "; ".join(f"{m}: {why}" for m, why in blind.excluded.items()), len(blind.predictions))
    out = {}
    for p in blind.predictions:
        c = next(c for c in searched if c.model == p.model)
        q_i = cmp.blind_statistic(c).per_context
        brackets = {ctx: s.bracket for ctx, s in cmp.critical_lrs(c)[1].items()}
        out[p.model] = (blind.checks.get(p.model), [(ctx, (q_i.get(ctx), brackets[ctx])) for ctx in brackets])
    return out


def _c13_judge(_, data, exact: bool) -> Verdict:
    q, eta_c = {}, {}
    for m, (_, pairs) in data.items():
        q_i = [v for v, _ in _items(pairs) if v is not None]
        result = laws.critical_from_brackets([b for _, b in _items(pairs)])
        if not q_i or result.eta_c is None or (exact and not result.converged):
            return not_testable("C13", "zoo", f"{m}: no q or no η_c in this sample")
        q[m], eta_c[m] = float(np.median(q_i)), result.eta_c
    predictions = laws.leave_one_out(q, eta_c.__getitem__)
    return c13_blind_prediction(predictions, {m: check for m, (check, _) in data.items()} if exact else None)


def _c7_read(zoo: Sequence[cmp.Campaign]) -> dict:
    return {c.model: (None, _by_context(c.sweep())) for c in zoo}


def _c7_judge(_, data: dict, exact: bool) -> Verdict:
    return c7_failure_modes({m: _items(pairs) for m, (_, pairs) in data.items()})


# --- the bootstrap of SPEC §6 A6 ----------------------------------------------------------------

def _numbers(claim: Claim, verdict: Verdict) -> dict[str, float]:
    """The claim's interval-worthy numbers in a verdict's details, flattened (``worst.dz``)."""
    out = {}
    for key in claim.numbers:
        for k, v in verdict.details.items():
            if k == key or (key.endswith("*") and k.startswith(key[:-1])):
                if isinstance(v, dict):
                    out.update({f"{k}.{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))})
                elif isinstance(v, (int, float)):
                    out[k] = float(v)
    return out


def _resamples(claim: Claim, data, rng: np.random.Generator):
    """The B resampled data of a claim: contexts drawn with replacement (per model for a zoo claim)."""
    if claim.scope == "model":
        for row in laws.bootstrap_indices(len(data), rng=rng):
            yield [data[i] for i in row]
        return
    idx = {m: laws.bootstrap_indices(len(pairs), rng=rng) for m, (_, pairs) in data.items()}
    for b in range(BOOTSTRAP_B):
        yield {m: (const, [pairs[i] for i in idx[m][b]]) for m, (const, pairs) in data.items()}


def evaluate(claim: Claim, subject) -> Verdict:
    """A claim's verdict on its subject, with its bootstrap stability and 95% intervals (SPEC §6 A6).

    The rule is applied to the data read, then to each of ``B = 1000`` resamples (seed 0) of
    the usable contexts, all runs of a context together (within each model for a zoo claim).
    The stability is the fraction of resamples that give the same verdict; every number the
    claim names gets the 95% percentile interval of its resampled values.
    """
    name = subject.model if claim.scope == "model" else "zoo"
    data = claim.read(subject)
    if isinstance(data, Verdict):            # the reader found the claim untestable before reading runs
        return data
    verdict = claim.judge(name, data, True)
    empty = not data or (claim.scope == "zoo" and not all(p for _, p in data.values()))
    if not claim.resampled or empty:
        return verdict
    same, values = 0, {k: [] for k in _numbers(claim, verdict)}
    for sample in _resamples(claim, data, np.random.default_rng(BOOTSTRAP_SEED)):
        v = claim.judge(name, sample, False)
        same += v.status == verdict.status
        got = _numbers(claim, v)
        for k in values:
            values[k].append(got.get(k))
    intervals = {k: iv for k, vals in values.items() if (iv := laws.percentile_interval(vals)) is not None}
    return dataclasses.replace(verdict, stability=same / BOOTSTRAP_B, intervals=intervals)


def _claim(cid, name, statement, paper, rule, scope, read_judge, **kw) -> Claim:
    return Claim(cid, name, statement, paper, rule, scope, *read_judge, **kw)


CLAIMS: tuple[Claim, ...] = (
    _claim("C1", "silent-failure", "loss falls while g never overtakes c", "Fig. 3 / abstract",
           "≥1 silent-failure run per model over the full-FT grid (rank-contested runs)", "model",
           _model_claim(lambda c: c.sweep(), c1_silent_failure), numbers=("n_silent",)),
    _claim("C2", "decomposition", "Φ = S + D", "abstract (additive decomposition)",
           f"|Φ−S−D| ≤ {DECOMPOSITION_TOL:g} at every recorded step of every run", "model",
           _model_claim(lambda c: c.all_runs(), c2_decomposition), numbers=("max_residual",), consistency=True),
    _claim("C3", "jumps-full", "catapult-like jumps under full FT; high-G_max pairs jump, low ones rise smoothly",
           "Fig. 3: J = 33.7 (longing) vs 4.3 (purpose)",
           "≥1 jumping context at η_ref and Spearman(G_max, J) > 0", "model",
           _model_claim(lambda c: c.reference(), c3_jumps_full), numbers=("n_jump", "spearman")),
    _claim("C3′", "jumps-operating-point", "C3 at the paper's operating point H ≈ 10",
           "Fig. 7: every model at H ≈ 10 (SPEC §6 A4)",
           f"C3's rule on the full-FT runs at η_H = {OPERATING_H:g} η_sat(model)", "model",
           _operating(c3_jumps_full, "C3′"), numbers=("n_jump", "spearman")),
    _claim("C4", "lora-frozen", "embedding (and untied head) exactly unchanged under LoRA", "abstract",
           "torch.equal (bitwise) at every step of every LoRA run", "model",
           _model_claim(lambda c: c.lora_runs(), c4_lora_frozen), consistency=True),
    _claim("C5", "jumps-lora", "jumps persist under LoRA with frozen embeddings", "abstract",
           f"≥{C5_MIN_JUMPS} jumping contexts at the LoRA reference LR", "model",
           _model_claim(lambda c: c.lora_reference(), c5_jumps_lora), numbers=("n_jump",)),
    _claim("C5b", "smooth-lora", "freezing embeddings turns all jumps smooth and removes G_max's predictive power",
           "Fig. 4 caption (contradicts C5)",
           f"no jumping context under LoRA and |Spearman(G_max, J)| < {SPEARMAN_LORA_MAX:g}", "model",
           _model_claim(lambda c: c.lora_reference(), c5b_smooth_lora), numbers=("n_jump", "spearman")),
    _claim("C6", "readout", "the discontinuity lives in the softmax readout: a_g, a_c, Δz smooth through the flip",
           "Fig. 5", f"in every jumping full-FT run, J of Δz, a_g, a_c < {transitions.JUMP_RATIO:g}", "model",
           _model_claim(lambda c: c.sweep(), c6_readout), numbers=("worst",)),
    _claim("C6′", "readout-operating-point", "C6 at the paper's operating point H ≈ 10",
           "Fig. 5, Fig. 7 (SPEC §6 A4)", f"C6's rule on the full-FT runs at η_H = {OPERATING_H:g} η_sat(model)",
           "model", _operating(c6_readout, "C6′"), numbers=("worst",)),
    _claim("C7", "failure-modes", "both kinematic and structural failures occur", "§5.1",
           "each mode seen in ≥1 silent-failure run in the zoo", "zoo", (_c7_read, _c7_judge), numbers=("counts",)),
    _claim("C8", "sweep-separation", "the 5-LR × 10-context sweep is separated by one G_max threshold",
           "Fig. 3 caption (50 combinations on SmolLM-360M)",
           "one G_max threshold separates jumping from continuous flipping sweep runs without error", "model",
           _model_claim(lambda c: c.sweep(), c8_sweep_separation)),
    _claim("C9", "h-consistency", "H_FT consistent across architectures", "CV 9.3%, n=5, H≈10",
           f"CV(H_FT) ≤ {H_CV_MAX:g} over ≥2 models, on every CV the bounds on H_FT allow", "zoo",
           (_c9_read, _c9_judge), numbers=("cv", "cv_min", "cv_max", "H_FT*")),
    _claim("C10", "two-classes", "every architecture is class A or class B",
           f"Fig. 6: A G²mean ∈ [{CLASS_A_BAND[0]:g}, {CLASS_A_BAND[1]:g}] Gaussian; "
           f"B ∈ [{CLASS_B_BAND[0]:g}, {CLASS_B_BAND[1]:g}] exponential",
           "the model is classified A or B", "model", (_c10_read, _c10_judge), resampled=False),
    _claim("C11", "lora-sufficiency", "class predicts LoRA sufficiency (sparse bulk: LoRA suffices)", "abstract",
           f"every class-B model ≥ {SUFFICIENCY_SPLIT:g} and every class-A model < {SUFFICIENCY_SPLIT:g}; "
           "needs both classes", "zoo", (_c11_read, _c11_judge)),
    _claim("C12", "burial-laws", "B_FT rises with G²mean and falls with H", "ρ = +0.90 and −0.90",
           f"both Spearman signs match with |ρ| ≥ {BURIAL_RHO_MIN:g} over ≥{BURIAL_MIN_MODELS} models", "zoo",
           (_c12_read, _c12_judge), numbers=("rho_g2mean", "rho_h")),
    _claim("C13", "blind-prediction", "critical LR of a held-out architecture predicted blind",
           "within 2.1%", f"leave-one-out over ≥2 models: every relative error ≤ {BLIND_REL_ERROR_MAX:g}", "zoo",
           (_c13_read, _c13_judge), numbers=("err*", "η_c*")),
)
BY_ID = {c.id: c for c in CLAIMS}
