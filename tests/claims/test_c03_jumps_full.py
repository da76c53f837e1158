"""C3 jumps-full: jumps under full FT at η_ref, and high-G_max pairs jump (SPEC §6)."""
from phantom import claims


def test_c3_jumps_full(campaign, judge):
    judge(claims.c3_jumps_full(campaign.model, campaign.reference()))
