"""C11 lora-sufficiency: the bulk class predicts whether LoRA suffices (SPEC §6)."""
from phantom import claims, laws


def test_c11_lora_sufficiency(zoo, judge):
    classes = {c.model: laws.bulk(c)["cls"] for c in zoo}
    judge(claims.c11_lora_sufficiency(classes, {c.model: laws.lora_sufficiency(c) for c in zoo}))
