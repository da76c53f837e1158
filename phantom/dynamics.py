"""Fine-tuning dynamics: one context, per-step trajectory (SPEC §4).

``run`` fine-tunes a pristine copy of a loaded model on one context (cross-entropy of
``g`` at the last position, AdamW, constant LR, fp32, seeded) under full fine-tuning or
LoRA, and records every SPEC §2 quantity at ``t = 0..T`` from the training forward
itself: the logits it returns and the LM-head input captured by a hook. The only extra
forward is the no-grad one that reads the final state ``t = T``.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import contexts as ctx
from . import geometry, heap
from .protocol import (
    BETAS,
    EPS,
    LORA_ALPHA,
    LORA_DROPOUT,
    LORA_RANK,
    MODES,
    PROTOCOL_VERSION,
    SEED,
    STEPS,
    WEIGHT_DECAY,
)
from .trajectory import SERIES, Trajectory

LORA_TARGETS = {                          # the attention query and value projections
    "llama": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"), "gemma3": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"), "gemma": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"), "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",),
}
STOPS = ("never", "saturated", "born_flip")
SEED_LIMIT = 2 ** 64   # torch.manual_seed takes seeds below 2**64
SATURATION_EPS = 1e-4   # stop="saturated": after both flips, once p_g ≥ 1 − ε (Φ then moves ≤ ~3ε more)


def lora_targets(model_type: str) -> tuple[str, ...]:
    """Query/value projection module names for an architecture (SPEC §4)."""
    try:
        return LORA_TARGETS[model_type]
    except KeyError:
        raise ValueError(f"no LoRA query/value targets known for architecture {model_type!r}; "
                         f"known: {', '.join(sorted(LORA_TARGETS))}") from None


def _real(x) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _integer(x) -> bool:
    """An integer (numpy integers included), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def validate(mode: str, lr: float, steps: int, stop: str = "never", seed: int = SEED,
             observables: str = "claims") -> tuple[float, int, int]:
    """Reject a bad run argument with an error naming it (SPEC §4).

    Returns
    -------
    (lr, steps, seed) as plain ``float``, ``int``, ``int`` (numpy scalars are accepted).
    """
    if observables not in OBSERVABLES:
        raise ValueError(f"observables must be one of {OBSERVABLES}, got {observables!r}")
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (_real(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (_integer(steps) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (_integer(seed) and 0 <= seed < SEED_LIMIT):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return float(lr), int(steps), int(seed)


def prepare(loaded, mode: str, seed: int, device: str | torch.device = "cpu"):
    """A pristine trainable copy of ``loaded.model`` on ``device`` (LoRA-wrapped for ``"lora"``)."""
    torch.manual_seed(seed)
    # eval(): no dropout (GPT-2 configs carry 0.1), so the training forward that the probe
    # reads is the state itself, deterministic and equal to the orientation's (gradients flow).
    model = copy.deepcopy(loaded.model).to(device).eval()
    if mode == "lora":
        from peft import get_peft_model
        model = get_peft_model(model, _lora_config(model.config.model_type))
        frozen = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
        assert not any(w.requires_grad for w in frozen), "LoRA must freeze the embedding and LM head"
    else:
        model.requires_grad_(True)
    return model


def _lora_config(model_type: str):
    """The SPEC §4 LoRA adapter (rank, α, dropout, query/value targets) of an architecture."""
    from peft import LoraConfig
    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, bias="none",
                      target_modules=list(lora_targets(model_type)))


def prepare_grid(loaded, n: int, seed: int, device: str | torch.device = "cpu"):
    """A pristine copy of ``loaded.model`` with ``n`` LoRA adapters, each as :func:`prepare` makes it.

    Every adapter is initialised after seeding torch with ``seed``, so each starts from the
    same bits as the single adapter of a sequential run. Returns ``(model, names)``; all
    adapters are trainable, the base (embedding and head included) frozen.
    """
    model = prepare(loaded, "lora", seed, device)
    names = ["default", *(f"lr{k}" for k in range(1, n))]
    for name in names[1:]:
        torch.manual_seed(seed)
        model.add_adapter(name, _lora_config(model.config.model_type))
    model.eval()   # new adapters start in training mode; peft mixes adapters in a batch only in eval
    for name, p in model.named_parameters():
        p.requires_grad_(_adapter(name) in names)
    return model, names


def _adapter(name: str) -> str | None:
    """The adapter a peft parameter belongs to (``…q_proj.lora_A.lr1.weight`` → ``"lr1"``), else None."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 2 and parts[-3] in ("lora_A", "lora_B") else None


def _sparse_lookup(model) -> None:
    """Make a tied input embedding's lookup gradient sparse (full FT; less memory traffic).

    The lookup touches only the context's token rows, yet its dense gradient is a fresh
    (V, d) tensor added to the tied head's (V, d) gradient every step. As a sparse tensor it
    is added row by row to the head's dense gradient, which AdamW then reads as before: the
    same bits when no token repeats in the context (true of every SPEC §3 context on the
    offline zoo); a repeated token's rows are summed in another order (float rounding). Left
    dense when the head is untied: the fused AdamW takes no sparse gradient.
    """
    embedding = model.get_input_embeddings()
    if embedding.weight is model.get_output_embeddings().weight:
        embedding.sparse = True


def optimizer(model, lr: float | dict[str, float]) -> torch.optim.AdamW:
    """SPEC §4 AdamW over the trainable parameters (fused kernel: 2× faster on CPU).

    ``lr`` a dict adapter name → LR (:func:`prepare_grid`): one parameter group per adapter,
    each at its own LR (AdamW is elementwise: each group steps as its own optimizer would).
    """
    if isinstance(lr, dict):
        named = [(_adapter(n), p) for n, p in model.named_parameters() if p.requires_grad]
        params = [{"params": [p for a, p in named if a == name], "lr": v} for name, v in lr.items()]
        lr = min(lr.values())   # every group names its own
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=True)


class _HeadInput:
    """Forward hook keeping ``h``, the LM head's input at the last position (batch, d)."""

    def __init__(self, head: torch.nn.Module):
        self.h = None
        self._handle = head.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.h = args[0][:, -1].detach()

    def remove(self):
        self._handle.remove()


def _words(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as int64 words (int8 when its size is not a multiple of 8)."""
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    return raw.view(torch.int64) if raw.numel() % 8 == 0 else raw.view(torch.int8)


_WORDS = 1 << 19   # int64 words per compared chunk (4 MiB: the comparison's temporary stays in cache)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality at memory speed (``torch.equal`` alone treats -0.0 == 0.0).

    The bytes are compared as int64 words; on the CPU through NumPy, chunk by chunk, which
    streams them at about the machine's copy bandwidth (``torch.equal`` on uint8 views: ~25×
    slower on a 262,144 × 640 embedding), stopping at the first differing chunk.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    x, y = _words(a), _words(b)
    if x.device.type != "cpu":
        return torch.equal(x, y)
    x, y = x.numpy(), y.numpy()
    return all(np.array_equal(x[i:i + _WORDS], y[i:i + _WORDS]) for i in range(0, x.size, _WORDS))


FINITE = ("phi", "signal", "drag", "a_g", "a_c", "g_gc")   # NaN here: the embedding diverged
STEP_ZERO = ("purity", "pr", "xi", "burial")   # O(V·d²): recorded at t = 0 only unless observables="all"
EMBEDDING = ("max_de", "embed_equal", "head_equal")
OBSERVABLES = ("claims", "all")


@dataclass(frozen=True)
class StepZero:
    """What every run of one context starts from: ``G_max`` and the :data:`STEP_ZERO` series at t = 0.

    Every run of a context, in either mode and at every LR, starts from the same pristine
    weights and the same t = 0 forward (LoRA's B = 0 adds exactly zero), so these numbers are
    the same bits in all of them (SPEC §2 at t = 0). The first run of a context in a process
    computes them; the others read them from :data:`_SHARED`.
    """

    g_max: float          # G_gc, the pair's overlap (SPEC §2 G_max)
    g_max_other: float    # max_{j≠g} G_gj, c included
    row: dict             # the STEP_ZERO series at t = 0


# loaded model → {(token ids, g, c, device): StepZero}; entries go with the model they were read from
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Probe:
    """Per-run instrumentation state: pair, frozen references and the shared step-0 state.

    ``observables="claims"`` records what the claims read: the cheap series at every step,
    the O(V·d²) series (:data:`STEP_ZERO`) at t = 0 only, and the bitwise embedding check
    (:data:`EMBEDDING`, C4) at every step of a LoRA run only. ``"all"`` records everything
    at every step. A value not recorded is NaN, never a number.
    """

    g: int
    c: int
    E: torch.Tensor                   # live input embedding weight (V, d)
    U: torch.Tensor | None            # live untied output matrix, None when tied
    E0: torch.Tensor | None           # step-0 copies, kept only for the embedding check
    U0: torch.Tensor | None
    frozen: bool                      # LoRA: E never changes, so its pair columns and Ψ are built once
    observables: str = "all"
    step_zero: StepZero | None = None   # shared by every run of the context; None until t = 0 is recorded
    psi: torch.Tensor | None = None     # Ψ, kept only while E is frozen
    columns: tuple[torch.Tensor, torch.Tensor] | None = None   # frozen E only: the run's fixed pair columns

    def recorded(self, t: int) -> set[str]:
        """The optional series recorded at step ``t``."""
        if self.observables == "all":
            return set(STEP_ZERO) | set(EMBEDDING)
        return (set(STEP_ZERO) if t == 0 else set()) | (set(EMBEDDING) if self.frozen else set())

    def _psi(self, E: torch.Tensor) -> torch.Tensor:
        """Ψ of the live ``E`` (V, d); under LoRA built once per run."""
        if not self.frozen:
            return geometry.normalize_rows(E)
        if self.psi is None:
            self.psi = geometry.normalize_rows(E)
        return self.psi

    def _columns(self, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`geometry.unit_pair_columns` of the live ``E``; under LoRA (Ψ frozen) once per run."""
        if not self.frozen:
            return geometry.unit_pair_columns(E, self.g, self.c)
        if self.columns is None:
            self.columns = geometry.unit_pair_columns(E, self.g, self.c)
        return self.columns

    def g_max(self) -> tuple[float, float]:
        """``(G_gc, max_{j≠g} G_gj)`` at step 0 (SPEC §2 G_max), read from the shared state when known."""
        if self.step_zero is not None:
            return self.step_zero.g_max, self.step_zero.g_max_other
        psi = self._psi(self.E.detach())
        col = (psi @ psi[self.g]).to(torch.float64)
        col[self.g] = -math.inf
        return geometry.pair_overlap(psi, self.g, self.c), float(col.max())

    def record(self, z: torch.Tensor, h: torch.Tensor, loss: float, t: int,
               checked: dict[str, float] | None = None) -> dict[str, float]:
        """The SPEC §2 quantities of the current state from the training forward's ``z``, ``h``.

        ``checked``: this step's :meth:`embedding_check`, when already made (a batched grid's
        adapters share one model, so one check per step serves them all).
        """
        g, c = self.g, self.c
        E = self.E.detach()
        wanted = self.recorded(t)
        p = torch.softmax(z.to(torch.float64), dim=-1)                    # (V,)
        columns, pair = self._columns(E)               # (V, 2): G_gj, G_cj; (2, d): ψ_g, ψ_c
        gap = geometry.born_gap_from_columns(p, columns, g, c)
        g_gc = geometry.pair_overlap(pair, 0, 1)
        row = {
            "loss": loss, "p_g": float(p[g]), "p_c": float(p[c]),
            "rank_g": float((z > z[g]).sum() + 1), "rank_c": float((z > z[c]).sum() + 1),
            "phi": gap.phi, "signal": gap.signal, "drag": gap.drag,
            "dz": float(z[g] - z[c]),
            "a_g": float(pair[0].to(torch.float64) @ h.to(torch.float64)),
            "a_c": float(pair[1].to(torch.float64) @ h.to(torch.float64)),
            "g_gc": g_gc, **dict.fromkeys(STEP_ZERO + EMBEDDING, math.nan),
        }
        if not all(math.isfinite(row[k]) for k in FINITE):
            return row                      # a diverged state: nothing more to measure in it
        if t == 0 and self.step_zero is not None:
            row.update(self.step_zero.row)
        elif "purity" in wanted:
            gamma = geometry.purity(p, self._psi(E))
            xi = geometry.localisation_length(gamma)
            row.update(purity=gamma, pr=1.0 / gamma, xi=xi, burial=geometry.burial_depth(xi, g_gc))
        if "embed_equal" in wanted:
            row.update(checked or self.embedding_check())
        return row

    def embedding_check(self) -> dict[str, float]:
        """The :data:`EMBEDDING` series (C4): is the live ``E`` (and untied head) its step-0 bits?"""
        E = self.E.detach()
        embed_equal = _bitwise_equal(E, self.E0)
        return {"max_de": 0.0 if embed_equal else float((E - self.E0).abs_().max()),
                "embed_equal": float(embed_equal),
                "head_equal": float(embed_equal if self.U is None else _bitwise_equal(self.U, self.U0))}


def _probe(model, mode: str, g: int, c: int, observables: str, step_zero: StepZero | None = None) -> _Probe:
    E = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    U = None if head.data_ptr() == E.data_ptr() else head
    keep = mode == "lora" or observables == "all"          # the references the embedding check reads
    return _Probe(g, c, E, U, E.detach().clone() if keep else None,
                  None if U is None or not keep else U.detach().clone(), frozen=mode == "lora",
                  observables=observables, step_zero=step_zero)


def _shared_key(ids: torch.Tensor, g: int, c: int, device) -> tuple:
    return tuple(ids.flatten().tolist()), g, c, str(torch.device(device))


def _should_stop(stop: str, rows: list[dict]) -> bool:
    """The ``stop`` policy of :func:`run` applied to the steps recorded so far."""
    born = any(r["phi"] > 0 for r in rows)
    if stop == "born_flip":
        return born
    return (stop == "saturated" and born and any(r["p_g"] > r["p_c"] for r in rows)
            and rows[-1]["p_g"] >= 1.0 - SATURATION_EPS)


def _train(model, opt, probe: _Probe, ids: torch.Tensor, target: torch.Tensor, steps: int,
           stop: str) -> tuple[list[dict], int | None, int | None]:
    """The training loop of :func:`run`: ``(rows, diverged_at, stopped_at)``.

    Each step's record reads the training forward's logits and head input (no second forward).
    """
    hook = _HeadInput(model.get_output_embeddings())
    rows = []
    try:
        for t in range(steps + 1):
            with torch.set_grad_enabled(t < steps):
                z = model(ids, logits_to_keep=1).logits[0, -1]     # (V,) the training forward
                loss = F.cross_entropy(z[None].float(), target)
            if not (torch.isfinite(loss) and torch.isfinite(z).all()):
                return rows, t, None
            with torch.no_grad():
                row = probe.record(z.detach(), hook.h[0], float(loss), t)
            if not all(math.isfinite(row[k]) for k in FINITE):   # a non-finite embedding row
                return rows, t, None                              # reaches Φ and D through G
            rows.append(row)
            if t < steps and _should_stop(stop, rows):
                return rows, None, t
            if t < steps:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        hook.remove()
    return rows, None, None


def _train_grid(model, opt, start: _Start, names: list[str], steps: int,
                stop: str) -> list[tuple[list[dict], int | None, int | None]]:
    """The training loop of :func:`run_lora_grid`: ``(rows, diverged_at, stopped_at)`` per adapter.

    As :func:`_train`, for the adapters still running: row ``i`` of the batch goes through
    adapter ``active[i]``; an adapter that diverges or stops early leaves the batch, so its
    parameters get no gradient and AdamW leaves them as they are. The embedding check (C4)
    is made once per step: every adapter's ``E`` and head are the one frozen base's.
    """
    hook = _HeadInput(model.get_output_embeddings())
    rows: list[list[dict]] = [[] for _ in names]
    ends: list[tuple[int | None, int | None]] = [(None, None) for _ in names]
    active = list(range(len(names)))
    try:
        for t in range(steps + 1):
            with torch.set_grad_enabled(t < steps):
                z = model(start.ids.expand(len(active), -1), logits_to_keep=1,
                          adapter_names=[names[k] for k in active]).logits[:, -1]          # (N, V)
                losses = F.cross_entropy(z.float(), start.target.expand(len(active)), reduction="none")  # (N,)
            going = []
            checked = start.probe.embedding_check() if "embed_equal" in start.probe.recorded(t) else None
            for i, k in enumerate(active):
                row = None
                if torch.isfinite(losses[i]) and torch.isfinite(z[i]).all():
                    with torch.no_grad():
                        row = start.probe.record(z[i].detach(), hook.h[i], float(losses[i]), t, checked)
                if row is None or not all(math.isfinite(row[f]) for f in FINITE):
                    ends[k] = (t, None)
                    continue
                rows[k].append(row)
                if t < steps and _should_stop(stop, rows[k]):
                    ends[k] = (None, t)
                    continue
                going.append(i)
            if t == steps or not going:
                break
            losses[going].sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            active = [active[i] for i in going]
    finally:
        hook.remove()
    return [(r, *end) for r, end in zip(rows, ends)]


def _step_zero_alone(model, start: _Start, adapter: str) -> StepZero:
    """The context's step-0 state as a run of its own records it: one row through one adapter.

    At t = 0 every adapter adds exactly zero (B = 0), so this is the forward every sequential
    run of the context makes first. The grid's batched rows can round differently from it
    (SmolLM2's 3-token contexts: their GEMMs take another kernel), so the shared state is
    never taken from them: whichever run of a context comes first in a process, the state
    every run reads is the same bits.
    """
    hook = _HeadInput(model.get_output_embeddings())
    try:
        with torch.no_grad():
            z = model(start.ids, logits_to_keep=1, adapter_names=[adapter]).logits[0, -1]   # (V,)
            row = start.probe.record(z, hook.h[0], float(F.cross_entropy(z[None].float(), start.target)), 0)
    finally:
        hook.remove()
    return start.step_zero(row)


def run(loaded, context, *, mode: str, lr: float, steps: int = STEPS, seed: int = SEED,
        device: str | torch.device = "cpu", pair: ctx.Pair | None = None, stop: str = "never",
        observables: str = "claims") -> Trajectory:
    """Fine-tune on one context and record ``t = 0..T`` (SPEC §4).

    Parameters
    ----------
    loaded : phantom.zoo.Loaded
        The model is copied; ``loaded.model`` itself is never modified.
    context : Context or str
        A SPEC §3 context (or its id).
    mode : {"full", "lora"}
    lr : float
        Constant AdamW learning rate.
    steps : int
        Number of updates T.
    seed : int
        Seeds torch before copying/wrapping the model.
    device : str or torch.device
        Where every tensor of the run lives (CPU by default).
    pair : Pair, optional
        A precomputed orientation (:func:`phantom.contexts.orient`); computed if omitted.
    stop : {"never", "saturated", "born_flip"}
        ``"saturated"`` ends the run early once it can no longer change a SPEC §5 verdict:
        both the Born and the rank flip have happened and ``p_g ≥ 1 − 1e-4`` (so Φ is within
        ~3e-4 of its ceiling ``1 − G_gc²``). ``"born_flip"`` ends it at the first ``Φ_t > 0``
        (all a critical-LR probe needs). Recorded as ``meta["stopped_at"]``.
    observables : {"claims", "all"}
        ``"claims"`` (default) records what the claims read: the cheap series at every step,
        purity, PR, ξ and B at t = 0 only, and the bitwise embedding check at every step of a
        LoRA run only; ``"all"`` records every series at every step. Unrecorded values are
        NaN; ``meta["recorded"]`` says when each optional series was recorded.

    Notes
    -----
    ``G_max`` and the t = 0 values of purity, PR, ξ and B are computed by the first run of a
    context on ``loaded.model`` in this process and shared, bit for bit, by its other runs
    (:class:`StepZero`): they are the same numbers in every mode and at every LR.

    Returns
    -------
    Trajectory
        Series of length T + 1, or ``diverged_at`` when a state became non-finite (NaN/inf
        loss, logits or input embedding), in which case the series stop just before that step:
        under full fine-tuning as under LoRA, at any learning rate, a divergence is recorded,
        never raised.
    """
    lr, steps, seed = validate(mode, lr, steps, stop, seed, observables)
    context = ctx.get(context) if isinstance(context, str) else context
    pair = pair or ctx.orient(context, loaded)
    with heap.reused():   # each step's (V, d) buffers reuse the last step's pages
        model = prepare(loaded, mode, seed, device)
        if mode == "full":
            _sparse_lookup(model)
        opt = optimizer(model, lr)
        start = _Start.of(loaded, model, context, pair, mode, observables, device)
        began = time.perf_counter()
        rows, diverged_at, stopped_at = _train(model, opt, start.probe, start.ids, start.target, steps, stop)
        start.share(start.step_zero(rows[0]) if rows else None)
    return start.trajectory(rows, mode=mode, lr=lr, steps=steps, seed=seed, stop=stop, diverged_at=diverged_at,
                            stopped_at=stopped_at, n_trainable=sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad),
                            wall_s=time.perf_counter() - began)


def run_lora_grid(loaded, context, *, lrs, steps: int = STEPS, seed: int = SEED,
                  device: str | torch.device = "cpu", pair: ctx.Pair | None = None, stop: str = "never",
                  observables: str = "claims") -> list[Trajectory]:
    """The LoRA runs of one context at several LRs as one training: one adapter per LR (SPEC §4).

    Each LR gets its own adapter (:func:`prepare_grid`, initialised as the single adapter of a
    sequential run) and its own AdamW parameter group; one forward of the frozen base over a
    batch of ``len(lrs)`` copies of the context (peft's mixed-adapter batch: row k through
    adapter k) and one backward of the summed losses serve them all, since no parameter is
    shared between adapters. Each run stops early or diverges on its own and then leaves the
    batch; the embedding check (C4) runs once per step on the one frozen ``E`` every adapter
    reads. Arguments as :func:`run` (``mode`` is LoRA), with ``lrs`` distinct positive LRs.

    Each run equals its sequential run bit for bit wherever the batched products compute each
    row as the sequential ones do: with one torch thread (as every claims worker), on the tiny
    models, Gemma-3 and 7 of SmolLM2's 10 contexts. SmolLM2's three 3-token contexts (begin,
    awful, scared) round differently (their 15-row products take another kernel than 3 rows):
    |ΔΦ| ≤ 6.7e-6 over 30 steps, the same early stops, every CLAIMS.md value the same at its
    printed precision but C2's rounding residual (measured 2026-12-06). The step-0 state is
    the sequential one (:func:`_step_zero_alone`). The LM head's input is left as the model
    slices it, so each row's logits stay a product of their own (a contiguous batch makes
    Gemma-3's grid step 1.8× faster but moves Φ by up to 7e-5 and once a rank).

    Returns
    -------
    list of Trajectory
        One per LR, in the order of ``lrs``, each as :func:`run` records it, with
        ``meta["batch"]`` listing the batch's LRs and ``meta["wall_s"]`` the batch's time shared
        in proportion to the forwards each run took part in.
    """
    lrs = [validate("lora", lr, steps, stop, seed, observables)[0] for lr in lrs]
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct learning rates, at least one, got {lrs!r}")
    _, steps, seed = validate("lora", lrs[0], steps, stop, seed, observables)
    context = ctx.get(context) if isinstance(context, str) else context
    pair = pair or ctx.orient(context, loaded)
    with heap.reused():
        model, names = prepare_grid(loaded, len(lrs), seed, device)
        opt = optimizer(model, dict(zip(names, lrs)))
        start = _Start.of(loaded, model, context, pair, "lora", observables, device)
        if start.probe.step_zero is None:   # the first run of the context in this process
            start.probe.step_zero = _step_zero_alone(model, start, names[0])
            start.share(start.probe.step_zero)
        began = time.perf_counter()
        ends = _train_grid(model, opt, start, names, steps, stop)
        wall_s = time.perf_counter() - began
    forwards = sum(len(rows) + (d is not None) for rows, d, _ in ends)
    n_trainable = sum(p.numel() for p in opt.param_groups[0]["params"])
    return [start.trajectory(rows, mode="lora", lr=lr, steps=steps, seed=seed, stop=stop, diverged_at=d,
                             stopped_at=s, n_trainable=n_trainable, batch=lrs,
                             wall_s=wall_s * (len(rows) + (d is not None)) / forwards)
            for lr, (rows, d, s) in zip(lrs, ends)]


@dataclass
class _Start:
    """What a run (or a batched LoRA grid) starts from: ids, target, probe, ``G_max``, the shared state."""

    loaded: object
    context: ctx.Context
    pair: ctx.Pair
    device: str
    observables: str
    ids: torch.Tensor           # (1, n) the context's token ids
    target: torch.Tensor        # (1,) g
    probe: _Probe
    g_max: float
    g_max_other: float
    key: tuple                  # the context's entry in _SHARED

    @classmethod
    def of(cls, loaded, model, context, pair, mode: str, observables: str, device) -> _Start:
        ids = ctx.encode(context, loaded.tokenizer).to(device)
        key = _shared_key(ids, pair.g_id, pair.c_id, device)
        probe = _probe(model, mode, pair.g_id, pair.c_id, observables, _SHARED.get(loaded.model, {}).get(key))
        return cls(loaded, context, pair, str(device), observables, ids, torch.tensor([pair.g_id], device=device),
                   probe, *probe.g_max(), key)

    def step_zero(self, row: dict) -> StepZero:
        """The context's shared state from a run's finite t = 0 row."""
        return StepZero(self.g_max, self.g_max_other, {k: row[k] for k in STEP_ZERO})

    def share(self, state: StepZero | None) -> None:
        """Share the t = 0 state with the context's later runs in this process (the first state only)."""
        if state is not None:
            _SHARED.setdefault(self.loaded.model, {}).setdefault(self.key, state)

    def trajectory(self, rows: list[dict], *, mode: str, lr: float, steps: int, seed: int, stop: str,
                   diverged_at: int | None, stopped_at: int | None, n_trainable: int, wall_s: float,
                   batch: list[float] | None = None) -> Trajectory:
        """The recorded rows and the run's facts as a :class:`Trajectory`."""
        info, pair, probe = self.loaded.info, self.pair, self.probe
        series = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in SERIES}
        meta = {
            "model": info.name, "weights_sha256": info.weights_sha256,
            "context": self.context.id, "text": self.context.text, "g_word": pair.g_word, "c_word": pair.c_word,
            "g_id": pair.g_id, "c_id": pair.c_id, "p_g0": pair.p_g0, "p_c0": pair.p_c0,
            "rank_contested": pair.rank_contested, "mode": mode, "lr": lr, "steps": steps, "seed": seed,
            "g_max": self.g_max, "g_max_other": self.g_max_other, "diverged_at": diverged_at,
            "stop": stop, "stopped_at": stopped_at, "n_trainable": n_trainable,
            "protocol_version": PROTOCOL_VERSION, "device": self.device, "observables": self.observables,
            "recorded": {k: "every step" if k in probe.recorded(1) else "t = 0" if k in probe.recorded(0)
                         else "never" for k in STEP_ZERO + EMBEDDING},
            **({"batch": list(batch)} if batch is not None else {}),
            "wall_s": wall_s,
        }
        return Trajectory(series, meta)


def step_zero_r(model, ids: torch.Tensor, g: int, c: int) -> tuple[float, float]:
    """``(r, Φ_0)`` of a model's current state: ``r = ∇_θΦ · sign(−∇_θL)`` (SPEC §5, A3).

    Adam's first update is ``−η·sign(∇L)``, so one step moves ``Φ`` by about ``η·r``; ``Φ`` is
    the quantity whose flip defines ``η_c``, and its gradient includes the embedding's own
    motion (through every ``ψ_j``). One forward and two backward passes over the parameters
    that require a gradient, no update. ``Φ = Σ_j p_j (G_gj² − G_cj²)`` is differentiated
    through the pair's columns of ``G`` (O(V·d), never V×V); ``Φ_0`` is the float64 value a
    run records at ``t = 0``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Its trainable parameters are the ``θ`` of ``r`` (every one under full fine-tuning).
    ids : torch.Tensor
        (1, n) token ids of the context.
    g, c : int
        Token ids of the target and its competitor.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    E = model.get_input_embeddings().weight                                    # (V, d)
    z = model(ids, logits_to_keep=1).logits[0, -1]                              # (V,)
    loss = F.cross_entropy(z[None].float(), torch.tensor([g], device=z.device))
    psi = E / torch.linalg.vector_norm(E, dim=1, keepdim=True)                  # (V, d)
    columns = psi @ psi[[g, c]].T                                               # (V, 2): G_gj, G_cj
    phi = torch.softmax(z.float(), dim=-1) @ (columns[:, 0] ** 2 - columns[:, 1] ** 2)
    grad_loss = torch.autograd.grad(loss, params, retain_graph=True)
    grad_phi = torch.autograd.grad(phi, params, allow_unused=True)
    r = math.fsum(float((gp.double() * torch.sign(-gl).double()).sum())
                  for gp, gl in zip(grad_phi, grad_loss) if gp is not None)
    with torch.no_grad():
        cols, _ = geometry.unit_pair_columns(E.detach(), g, c)
        phi0 = geometry.born_gap_from_columns(torch.softmax(z.detach().double(), dim=-1), cols, g, c).phi
    return r, phi0


def blind_r(loaded, context, pair: ctx.Pair) -> dict[str, float]:
    """Step-0 ``{"r": r, "phi0": Φ_0}`` of one context under full fine-tuning (SPEC §5, A3).

    :func:`step_zero_r` on a pristine full-FT copy of ``loaded.model`` (never modified).
    """
    context = ctx.get(context) if isinstance(context, str) else context
    model = prepare(loaded, "full", seed=0)
    r, phi0 = step_zero_r(model, ctx.encode(context, loaded.tokenizer), pair.g_id, pair.c_id)
    return {"r": r, "phi0": phi0}
