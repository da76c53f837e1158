"""C6 readout: Δz, a_g, a_c stay smooth through every full-FT jump (SPEC §6)."""
from phantom import claims


def test_c6_readout(campaign, judge):
    judge(claims.c6_readout(campaign.model, campaign.sweep()))
