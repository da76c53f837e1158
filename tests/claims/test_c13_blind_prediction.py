"""C13 blind-prediction: a held-out model's critical LR predicted blind (SPEC §5, §6).

The held-out model's η_c is read only after its prediction is fixed (laws.leave_one_out).
"""
from functools import cache

from phantom import claims, laws


def test_c13_blind_prediction(zoo, judge):
    eligible = {c.model: c for c in zoo if c.plan.eta_c}
    if len(eligible) < 2:   # nothing to predict: report the η_c that was measured
        measured = ", ".join(f"{m} η_c={laws.critical_lr_of(c).eta_c:.3g}" for m, c in eligible.items())
        return judge(claims.not_testable("C13", "zoo", f"needs ≥2 models with a critical-LR bisection, "
                                         f"have {len(eligible)}" + (f" ({measured})" if eligible else ""),
                                         len(eligible)))
    q = {m: laws.blind_statistic(c).q for m, c in eligible.items()}

    @cache
    def eta_c(model):
        return laws.critical_lr_of(eligible[model]).eta_c

    try:
        predictions = laws.leave_one_out(q, eta_c)
    except ValueError as err:   # a model without q or without a located η_c
        return judge(claims.not_testable("C13", "zoo", str(err), len(eligible)))
    judge(claims.c13_blind_prediction(predictions))
