"""C8 sweep-separation: one G_max threshold separates jumping from continuous flips (SPEC §6)."""
from phantom import claims


def test_c8_sweep_separation(campaign, judge):
    judge(claims.c8_sweep_separation(campaign.model, campaign.sweep()))
