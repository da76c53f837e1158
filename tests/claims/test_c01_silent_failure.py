"""C1 silent-failure: loss falls while g never overtakes c (SPEC §6)."""
from phantom import claims


def test_c1_silent_failure(campaign, judge):
    judge(claims.c1_silent_failure(campaign.model, campaign.sweep()))
