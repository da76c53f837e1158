"""C5 jumps-lora: jumps persist under LoRA with frozen embeddings (SPEC §6; contradicts C5b)."""
from phantom import claims


def test_c5_jumps_lora(campaign, judge):
    judge(claims.c5_jumps_lora(campaign.model, campaign.lora_reference()))
