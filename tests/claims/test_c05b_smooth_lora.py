"""C5b smooth-lora: under LoRA every run is smooth and G_max predicts nothing (SPEC §6; contradicts C5)."""
from phantom import claims


def test_c5b_smooth_lora(campaign, judge):
    judge(claims.c5b_smooth_lora(campaign.model, campaign.lora_reference()))
