"""C10 two-classes: the model's bulk is class A or class B (SPEC §2, §6)."""
from phantom import claims, laws


def test_c10_two_classes(campaign, judge):
    bulk = laws.bulk(campaign)
    judge(claims.c10_two_classes(campaign.model, bulk["g2mean"], bulk["kind"]))
