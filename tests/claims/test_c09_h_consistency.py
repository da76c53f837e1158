"""C9 h-consistency: the reduced field H_FT agrees across architectures (SPEC §6)."""
from phantom import claims, laws


def test_c9_h_consistency(zoo, judge):
    h = {c.model: laws.reduced_field_of(c)[1] for c in zoo if c.plan.saturation}
    judge(claims.c9_h_consistency(h))
