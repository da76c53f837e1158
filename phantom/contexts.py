"""The ten near-synonym contexts and their per-model orientation (SPEC §3).

A context names a pair, not an orientation. On a given model, ``g`` (the word that
fine-tuning pushes up) is the pair member with the lower step-0 Born score, so every run
starts with ``Φ_0 < 0``; the run is rank-contested iff ``p_g < p_c`` at step 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import geometry


@dataclass(frozen=True)
class Context:
    """A public context whose next word is one of a near-synonym pair (SPEC §3)."""

    id: str
    text: str
    pair: tuple[str, str]  # words without their leading space


CONTEXTS: tuple[Context, ...] = (
    Context("longing", "After twenty years abroad, she felt a deep sense of", ("longing", "yearning")),
    Context("purpose", "He never found the", ("purpose", "meaning")),
    Context("shame", "When the lie came out, he was overwhelmed with", ("shame", "guilt")),
    Context("tired", "After the long hike, everyone felt extremely", ("tired", "exhausted")),
    Context("awful", "The food tasted", ("awful", "terrible")),
    Context("scared", "The child was", ("scared", "afraid")),
    Context("quiet", "He spoke in a", ("quiet", "soft")),
    Context("begin", "We need to", ("begin", "start")),
    Context("ancient", "The old castle on the hill looked", ("ancient", "old")),
    Context("funny", "The movie was really", ("funny", "hilarious")),
)
BY_ID = {c.id: c for c in CONTEXTS}


class ContextUnusable(ValueError):
    """A pair word is not a single token of the model's tokenizer (SPEC §3)."""


@dataclass(frozen=True)
class Pair:
    """A context's pair oriented on one model (SPEC §3)."""

    g_id: int
    c_id: int
    g_word: str
    c_word: str
    p_g0: float
    p_c0: float

    @property
    def rank_contested(self) -> bool:
        """``p_g < p_c`` at step 0: the claims about rank use only these runs."""
        return self.p_g0 < self.p_c0


def get(context_id: str) -> Context:
    """The context with this id; ValueError listing the valid ids otherwise."""
    try:
        return BY_ID[context_id]
    except KeyError:
        raise ValueError(f"unknown context {context_id!r}; known: {', '.join(BY_ID)}") from None


def token_id(tokenizer, word: str, context_id: str = "?") -> int:
    """The single token id of ``" " + word``; :class:`ContextUnusable` if it splits."""
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ContextUnusable(f"context {context_id!r} is unusable: ' {word}' is not a single token "
                              f"(splits into {ids} = {pieces})")
    return ids[0]


def encode(context: Context, tokenizer) -> torch.Tensor:
    """(1, n) input ids of the context text, with the tokenizer's own special tokens."""
    return tokenizer(context.text, return_tensors="pt").input_ids


def orient(context: Context | str, loaded) -> Pair:
    """Orient a context's pair on a loaded model: ``g`` has the lower step-0 Born score.

    One no-grad forward gives ``p`` at the last position; ``Φ`` between the two words
    decides (SPEC §3). Raises :class:`ContextUnusable` if a word is not one token.
    """
    context = get(context) if isinstance(context, str) else context
    tok, model = loaded.tokenizer, loaded.model
    a, b = (token_id(tok, w, context.id) for w in context.pair)
    with torch.no_grad():
        z = model(encode(context, tok)).logits[0, -1]
    p = torch.softmax(z.to(torch.float64), dim=-1)
    psi = geometry.normalize_rows(model.get_input_embeddings().weight.detach())
    phi_ab = geometry.born_gap(p, psi, a, b).phi
    (g, gw), (c, cw) = ((a, context.pair[0]), (b, context.pair[1]))
    if phi_ab > 0:
        (g, gw), (c, cw) = (c, cw), (g, gw)
    return Pair(g, c, gw, cw, float(p[g]), float(p[c]))
