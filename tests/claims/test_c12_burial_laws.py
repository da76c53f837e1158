"""C12 burial-laws: B_FT rises with G²mean and falls with H (SPEC §6)."""
from phantom import claims, laws


def test_c12_burial_laws(zoo, judge):
    if len(zoo) < 3:   # do not pay for the laws of a claim that cannot be tested
        return judge(claims.not_testable("C12", "zoo", f"needs ≥3 models, have {len(zoo)}", len(zoo)))
    with_h = [c for c in zoo if c.plan.saturation]
    judge(claims.c12_burial_laws({c.model: laws.burial_ft(c) for c in with_h},
                                 {c.model: laws.bulk(c)["g2mean"] for c in with_h},
                                 {c.model: laws.reduced_field_of(c)[1] for c in with_h}))
