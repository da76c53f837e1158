"""C4 lora-frozen: the embedding (and untied head) are bitwise unchanged under LoRA (SPEC §6)."""
from phantom import claims


def test_c4_lora_frozen(campaign, judge):
    judge(claims.c4_lora_frozen(campaign.model, campaign.lora_runs()))
