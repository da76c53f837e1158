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

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import campaign as cmp
from . import laws, transitions
from .geometry import classify
from .protocol import (
    BLIND_REL_ERROR_MAX,
    BURIAL_MIN_MODELS,
    BURIAL_RHO_MIN,
    C5_MIN_JUMPS,
    DECOMPOSITION_TOL,
    H_CV_MAX,
    SPEARMAN_LORA_MAX,
    SUFFICIENCY_SPLIT,
)
from .trajectory import Trajectory

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper (SPEC §6) and how it is checked."""

    id: str
    name: str
    statement: str
    paper: str       # the paper's figure or value
    rule: str        # reproduced iff …
    scope: str       # "model": one verdict per model; "zoo": one verdict over the zoo
    check: Callable = field(repr=False, compare=False)   # Campaign ("model") or campaigns ("zoo") → Verdict


@dataclass(frozen=True)
class Verdict:
    """A claim's outcome on one model (or on the zoo, ``model="zoo"``)."""

    claim: str
    model: str
    status: str
    value: str                     # the measured value, as printed in CLAIMS.md
    n: int                         # number of runs / contexts / models behind it
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE):
            raise ValueError(f"unknown verdict status {self.status!r}")
        if self.claim not in BY_ID:
            raise ValueError(f"unknown claim {self.claim!r}")

    def to_dict(self) -> dict:
        """JSON-able form (verdicts.json, and the record a pytest-xdist worker sends)."""
        return json.loads(json.dumps(asdict(self), default=float))

    @classmethod
    def from_dict(cls, d: Mapping) -> Verdict:
        """Inverse of :meth:`to_dict`; raises ValueError naming a missing or bad field."""
        try:
            return cls(str(d["claim"]), str(d["model"]), str(d["status"]), str(d["value"]), int(d["n"]),
                       dict(d.get("details") or {}))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a verdict record: {d!r} ({err})") from None


def _verdict(claim: str, model: str, ok: bool, value: str, n: int, **details) -> Verdict:
    return Verdict(claim, model, REPRODUCED if ok else NOT_REPRODUCED, value, n, details)


def not_testable(claim: str, model: str, reason: str, n: int = 0) -> Verdict:
    """A verdict that could not be reached, with the reason as its value."""
    return Verdict(claim, model, NOT_TESTABLE, reason, n)


def _completed(runs: Iterable[Trajectory]) -> list[Trajectory]:
    return [r for r in runs if r.diverged_at is None]


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def c1_silent_failure(model: str, sweep: Sequence[Trajectory]) -> Verdict:
    """C1: ≥1 silent failure among the rank-contested full-FT grid runs."""
    contested = [r for r in _completed(sweep) if r.meta["rank_contested"]]
    if not contested:
        return not_testable("C1", model, "no rank-contested run", len(sweep))
    silent = [r for r in contested if transitions.is_silent_failure(r)]
    where = sorted({f"{r.meta['context']}@{r.meta['lr']:g}" for r in silent})
    return _verdict("C1", model, len(silent) >= 1, f"{len(silent)}/{len(contested)} silent"
                    + (f" ({', '.join(where[:4])}{'…' if len(where) > 4 else ''})" if where else ""),
                    len(contested), silent=where)


def c2_decomposition(model: str, runs: Sequence[Trajectory]) -> Verdict:
    """C2: ``max |Φ − S − D|`` over every recorded step of every run ≤ 1e-6."""
    if not runs:
        return not_testable("C2", model, "no run")
    worst = max(float(np.max(np.abs(r["phi"] - r["signal"] - r["drag"]), initial=0.0)) for r in runs)
    return _verdict("C2", model, worst <= DECOMPOSITION_TOL, f"max |Φ−S−D| = {worst:.1e}", len(runs),
                    max_residual=worst)


def _jump_table(runs: Sequence[Trajectory]) -> tuple[int, float, dict]:
    """(number of jumping runs, Spearman(G_max, J), per-context J)."""
    ratios = {r.meta["context"]: transitions.jump(r["phi"]).ratio for r in runs}
    n_jump = sum(transitions.jumps(r) for r in runs)
    rho = laws.spearman([r.g_max for r in runs], [ratios[r.meta["context"]] for r in runs])
    return n_jump, rho, ratios


def c3_jumps_full(model: str, reference: Sequence[Trajectory]) -> Verdict:
    """C3: ≥1 jumping context at η_ref and Spearman(G_max, J) > 0."""
    runs = _completed(reference)
    if len(runs) < 2:
        return not_testable("C3", model, f"{len(runs)} completed run(s) at η_ref", len(runs))
    n_jump, rho, ratios = _jump_table(runs)
    return _verdict("C3", model, n_jump >= 1 and rho > 0, f"{n_jump}/{len(runs)} jump; ρ(G_max, J) = {rho:+.2f}",
                    len(runs), n_jump=n_jump, spearman=rho, ratios=ratios)


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


def c5b_smooth_lora(model: str, lora_reference: Sequence[Trajectory]) -> Verdict:
    """C5b: no jumping context under LoRA and |Spearman(G_max, J)| < 0.3."""
    runs = _completed(lora_reference)
    if len(runs) < 2:
        return not_testable("C5b", model, f"{len(runs)} completed LoRA run(s)", len(runs))
    n_jump, rho, ratios = _jump_table(runs)
    ok = n_jump == 0 and not math.isnan(rho) and abs(rho) < SPEARMAN_LORA_MAX
    return _verdict("C5b", model, ok, f"{n_jump}/{len(runs)} jump; ρ(G_max, J) = {rho:+.2f}", len(runs),
                    n_jump=n_jump, spearman=rho, ratios=ratios)


def c6_readout(model: str, full_runs: Sequence[Trajectory]) -> Verdict:
    """C6: in every jumping full-FT run, J of Δz, a_g and a_c stays < 10."""
    jumping = [r for r in full_runs if transitions.jumps(r)]
    if not jumping:
        return not_testable("C6", model, "no jumping full-FT run", len(full_runs))
    worst = {s: max(transitions.jump(r[s]).ratio for r in jumping) for s in ("dz", "a_g", "a_c")}
    ok = all(v < transitions.JUMP_RATIO for v in worst.values())
    return _verdict("C6", model, ok, "max J: " + ", ".join(f"{k} {_fmt(v)}" for k, v in worst.items()),
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


def c9_h_consistency(h_by_model: Mapping[str, float]) -> Verdict:
    """C9 (zoo): CV of H_FT over ≥2 models ≤ 0.10."""
    h = {m: v for m, v in h_by_model.items() if v is not None and math.isfinite(v)}
    measured = ", ".join(f"{m} H_FT={v:.3g}" for m, v in h.items())
    if len(h) < 2:
        return not_testable("C9", "zoo", f"needs ≥2 models with H_FT, have {len(h)}"
                            + (f" ({measured})" if h else ""), len(h))
    cv = laws.cv(list(h.values()))
    value = f"CV = {cv:.1%}; {measured}"
    return _verdict("C9", "zoo", cv <= H_CV_MAX, value, len(h), cv=cv)


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


def c12_burial_laws(b_ft: Mapping[str, float], g2mean: Mapping[str, float], h: Mapping[str, float]) -> Verdict:
    """C12 (zoo): Spearman(B_FT, G²mean) ≥ 0.8 and Spearman(B_FT, H) ≤ −0.8 over ≥3 models."""
    models = [m for m in b_ft if m in g2mean and m in h]
    if len(models) < BURIAL_MIN_MODELS:
        return not_testable("C12", "zoo", f"needs ≥3 models, have {len(models)}", len(models))
    rho_g = laws.spearman([b_ft[m] for m in models], [g2mean[m] for m in models])
    rho_h = laws.spearman([b_ft[m] for m in models], [h[m] for m in models])
    ok = rho_g >= BURIAL_RHO_MIN and rho_h <= -BURIAL_RHO_MIN
    return _verdict("C12", "zoo", ok, f"ρ(B_FT, G²mean) = {rho_g:+.2f}, ρ(B_FT, H) = {rho_h:+.2f}", len(models))


def c13_blind_prediction(predictions: Sequence[laws.Prediction]) -> Verdict:
    """C13 (zoo): every leave-one-out relative error ≤ 2.1%."""
    if len(predictions) < 2:
        return not_testable("C13", "zoo", f"needs ≥2 models with η_c and q, have {len(predictions)}",
                            len(predictions))
    value = "; ".join(f"{p.model} η̂_c={p.eta_hat:.3g} η_c={p.eta_c:.3g} err {p.rel_error:.1%}" for p in predictions)
    ok = all(p.rel_error <= BLIND_REL_ERROR_MAX for p in predictions)
    return _verdict("C13", "zoo", ok, value, len(predictions))


# --- readers: what each claim reads from the run layer -------------------------------------

def _c10(c: cmp.Campaign) -> Verdict:
    b = cmp.bulk(c)
    return c10_two_classes(c.model, b["g2mean"], b["kind"])


def _c9(zoo: Sequence[cmp.Campaign]) -> Verdict:
    return c9_h_consistency({c.model: cmp.reduced_field_of(c)[1] for c in zoo if c.plan.saturation})


def _c11(zoo: Sequence[cmp.Campaign]) -> Verdict:
    return c11_lora_sufficiency({c.model: cmp.bulk(c)["cls"] for c in zoo},
                                {c.model: cmp.lora_sufficiency(c) for c in zoo})


def _c12(zoo: Sequence[cmp.Campaign]) -> Verdict:
    if len(zoo) < BURIAL_MIN_MODELS:   # do not pay for the laws of a claim that cannot be tested
        return not_testable("C12", "zoo", f"needs ≥{BURIAL_MIN_MODELS} models, have {len(zoo)}", len(zoo))
    with_h = [c for c in zoo if c.plan.saturation]
    return c12_burial_laws({c.model: cmp.burial_ft(c) for c in with_h},
                           {c.model: cmp.bulk(c)["g2mean"] for c in with_h},
                           {c.model: cmp.reduced_field_of(c)[1] for c in with_h})


def _c13(zoo: Sequence[cmp.Campaign]) -> Verdict:
    bisected = [c for c in zoo if c.plan.eta_c]
    if len(bisected) < 2:   # nothing to predict: report the η_c that was measured
        measured = ", ".join(f"{c.model} {cmp.eta_c_text(cmp.critical_lr_of(c))}" for c in bisected)
        return not_testable("C13", "zoo", f"needs ≥2 models with a critical-LR bisection, have {len(bisected)}"
                            + (f" ({measured})" if bisected else ""), len(bisected))
    predictions, excluded = cmp.blind_predictions(bisected)
    if len(predictions) < 2:
        return not_testable("C13", "zoo", "needs ≥2 models with η_c and q; excluded: "
                            + "; ".join(f"{m}: {why}" for m, why in excluded.items()), len(predictions))
    return c13_blind_prediction(predictions)


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "silent-failure", "loss falls while g never overtakes c", "Fig. 3 / abstract",
          "≥1 silent-failure run per model over the full-FT grid (rank-contested runs)", "model",
          lambda c: c1_silent_failure(c.model, c.sweep())),
    Claim("C2", "decomposition", "Φ = S + D", "abstract (additive decomposition)",
          "|Φ−S−D| ≤ 1e-6 at every recorded step of every run", "model",
          lambda c: c2_decomposition(c.model, c.all_runs())),
    Claim("C3", "jumps-full", "catapult-like jumps under full FT; high-G_max pairs jump, low ones rise smoothly",
          "Fig. 3: J = 33.7 (longing) vs 4.3 (purpose)",
          "≥1 jumping context at η_ref and Spearman(G_max, J) > 0", "model",
          lambda c: c3_jumps_full(c.model, c.reference())),
    Claim("C4", "lora-frozen", "embedding (and untied head) exactly unchanged under LoRA", "abstract",
          "torch.equal (bitwise) at every step of every LoRA run", "model",
          lambda c: c4_lora_frozen(c.model, c.lora_runs())),
    Claim("C5", "jumps-lora", "jumps persist under LoRA with frozen embeddings", "abstract",
          "≥2 jumping contexts at the LoRA reference LR", "model",
          lambda c: c5_jumps_lora(c.model, c.lora_reference())),
    Claim("C5b", "smooth-lora", "freezing embeddings turns all jumps smooth and removes G_max's predictive power",
          "Fig. 4 caption (contradicts C5)",
          "no jumping context under LoRA and |Spearman(G_max, J)| < 0.3", "model",
          lambda c: c5b_smooth_lora(c.model, c.lora_reference())),
    Claim("C6", "readout", "the discontinuity lives in the softmax readout: a_g, a_c, Δz smooth through the flip",
          "Fig. 5", "in every jumping full-FT run, J of Δz, a_g, a_c < 10", "model",
          lambda c: c6_readout(c.model, c.sweep())),
    Claim("C7", "failure-modes", "both kinematic and structural failures occur", "§5.1",
          "each mode seen in ≥1 silent-failure run in the zoo", "zoo",
          lambda zoo: c7_failure_modes({c.model: c.sweep() for c in zoo})),
    Claim("C8", "sweep-separation", "the 5-LR × 10-context sweep is separated by one G_max threshold",
          "Fig. 3 caption (50 combinations on SmolLM-360M)",
          "one G_max threshold separates jumping from continuous flipping sweep runs without error", "model",
          lambda c: c8_sweep_separation(c.model, c.sweep())),
    Claim("C9", "h-consistency", "H_FT consistent across architectures", "CV 9.3%, n=5, H≈10",
          "CV(H_FT) ≤ 0.10 over ≥2 models", "zoo", _c9),
    Claim("C10", "two-classes", "every architecture is class A or class B",
          "Fig. 6: A G²mean ∈ [0.045, 0.097] Gaussian; B ∈ [0.002, 0.003] exponential",
          "the model is classified A or B", "model", _c10),
    Claim("C11", "lora-sufficiency", "class predicts LoRA sufficiency (sparse bulk: LoRA suffices)", "abstract",
          "every class-B model ≥ 0.8 and every class-A model < 0.8; needs both classes", "zoo", _c11),
    Claim("C12", "burial-laws", "B_FT rises with G²mean and falls with H", "ρ = +0.90 and −0.90",
          "both Spearman signs match with |ρ| ≥ 0.8 over ≥3 models", "zoo", _c12),
    Claim("C13", "blind-prediction", "critical LR of a held-out architecture predicted blind",
          "within 2.1%", "leave-one-out over ≥2 models: every relative error ≤ 0.021", "zoo", _c13),
)
BY_ID = {c.id: c for c in CLAIMS}
