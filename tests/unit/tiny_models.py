"""Tiny random causal LMs with a tiny tokenizer, saved as local model directories.

``build_tiny(arch, path)`` writes a Hugging Face model directory (``save_pretrained``)
that :func:`phantom.zoo.load` accepts as a local path. The tokenizer is a WordLevel
vocabulary over GPT-2 style byte-level pre-tokens, so every word of the contexts of
:mod:`phantom.contexts` (texts and pair words, with their leading space, e.g.
``"Ġlonging"``) is exactly one token: all contexts are usable on the tiny models.
A word outside the vocabulary becomes the single token ``<unk>``; a phrase of known
words (``" deep sense"``) is several tokens.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from phantom.contexts import CONTEXTS

ARCHS = ("gpt2", "gpt_neox", "llama")
SPECIALS = ("<unk>", "<eos>")
EXTRA_TEXT = (
    "The cat sat on the mat. A dog ran in the park, and the bird sang!",
    "She said that it was a good day to read a book or to write a letter?",
)
# Defaults follow the usual configs: GPT-2 ties its LM head, GPT-NeoX and Llama do not.
DEFAULT_TIED = {"gpt2": True, "gpt_neox": False, "llama": False}


def corpus() -> list[str]:
    """Every context text, every pair word with its leading space, and a few sentences."""
    lines = list(EXTRA_TEXT)
    for c in CONTEXTS:
        lines.append(c.text)
        lines.extend(" " + w for w in c.pair)
        lines.extend(w for w in c.pair)  # the bare word too (e.g. at the start of a text)
    return lines


def build_tokenizer():
    """A ``PreTrainedTokenizerFast``: byte-level pre-tokens of :func:`corpus` as a WordLevel vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = sorted({piece for line in corpus() for piece, _ in pre.pre_tokenize_str(line)})
    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<eos>")


def build_config(arch: str, vocab_size: int, *, tied: bool | None = None):
    """A small config of the given architecture."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    tied = DEFAULT_TIED[arch] if tied is None else tied
    eos = SPECIALS.index("<eos>")
    common = dict(vocab_size=vocab_size, tie_word_embeddings=tied, bos_token_id=eos, eos_token_id=eos)
    if arch == "gpt2":
        return GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                           intermediate_size=64, max_position_embeddings=64, **common)
    raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def build_model(arch: str, vocab_size: int, *, tied: bool | None = None, seed: int = 0):
    """A freshly initialised fp32 causal LM (deterministic given ``seed``)."""
    from transformers import AutoModelForCausalLM

    config = build_config(arch, vocab_size, tied=tied)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.float().eval()


def build_tiny(arch: str, path: str | os.PathLike, *, tied: bool | None = None, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` model and its tokenizer into ``path``; return the path."""
    path = Path(path)
    tokenizer = build_tokenizer()
    model = build_model(arch, len(tokenizer), tied=tied, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@functools.cache
def offline_tokenizer(name: str):
    """:func:`phantom.zoo.load_tokenizer` of an offline zoo name, once per process.

    Qwen's tokenizer comes from its GGUF when its cache entry is not built (~10 s):
    test modules share this one copy instead of each paying for it.
    """
    from phantom import zoo
    return zoo.load_tokenizer(name)
