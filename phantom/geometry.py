"""Embedding geometry of the Born readout (SPEC §2).

Notation: ``Ψ`` (V, d) holds the unit-normalised token embeddings ``ψ_i = E_i/‖E_i‖``;
``G_ij = ψ_i·ψ_j``; ``p`` (V,) is the next-token distribution. Nothing here ever builds
the V×V overlap matrix: every quantity is either a (V, 2) product against the pair's
rows or a (d, d) Gram matrix. Sums are accumulated in float64; the O(V·d²) products run
in the embedding's own dtype (float32 for models) in row chunks, except where a bound must
hold exactly (purity near 1, see :func:`purity`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .protocol import BULK_PAIRS, BULK_SEED, CLASS_A_BAND, CLASS_B_BAND

_CHUNK = 65_536  # rows per (chunk, d)ᵀ(chunk, d) product: large enough for BLAS, small in memory
_DOMINANT = 1e-3    # purity: tokens with p_i at least this get float64 rows
_CACHE_CHUNK = 1 << 19   # bytes of E per unit_pair_columns chunk on the CPU: half a 1 MiB L2
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}

class BornGap(NamedTuple):
    """Φ = b_g − b_c and its exact split Φ = S + D (SPEC §2)."""

    phi: float | torch.Tensor
    signal: float | torch.Tensor
    drag: float | torch.Tensor


class BulkShape(NamedTuple):
    """Maximum-likelihood shape of the off-diagonal overlaps (SPEC §2).

    ``loglik_*`` are mean log-likelihoods per sampled pair; ``kind`` is the better fit,
    ``"gaussian"`` or ``"laplace"`` (the two-sided exponential).
    """

    kind: str
    loglik_gauss: float
    loglik_laplace: float
    mean: float
    std: float


def _matrix(psi) -> torch.Tensor:
    psi = torch.as_tensor(psi)
    if psi.ndim != 2 or psi.shape[0] < 2 or not psi.is_floating_point():
        raise ValueError(f"psi must be a floating (V, d) matrix with V >= 2, got shape {tuple(psi.shape)} "
                         f"and dtype {psi.dtype}")
    return psi


def _distribution(p, vocab: int) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if p.ndim not in (1, 2) or p.shape[-1] != vocab:
        raise ValueError(f"p must have shape (V,) or (T, V) with V = {vocab}, got {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("p must be finite and non-negative")
    return p


def _unit(E: torch.Tensor) -> torch.Tensor:
    """``E``'s rows over their norms (a zero row stays zero). A row's norm, and so its unit
    row, has the same bits whatever rows share the tensor (tested)."""
    return E / E.norm(dim=1, keepdim=True).clamp_min(torch.finfo(E.dtype).tiny)


def normalize_rows(E) -> torch.Tensor:
    """Return ``Ψ`` with ``ψ_i = E_i / ‖E_i‖`` (SPEC §1). A zero row stays zero."""
    return _unit(_matrix(E))


def _pair_gram(psi: torch.Tensor, g: int, c: int) -> torch.Tensor:
    """(2, 2) float64 Gram of the pair's rows, renormalised in float64."""
    pair = psi[[g, c]].to(torch.float64)
    pair = pair / pair.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return pair @ pair.T


def pair_overlap(psi, g: int, c: int) -> float:
    """``G_gc`` in float64, the same value :func:`born_gap` uses in ``S`` (SPEC §2 G_max).

    A cosine of two float64-renormalised rows: clipped to [-1, 1] (Cauchy–Schwarz), which
    rounding can exceed by an ulp when the rows are parallel (collapsed embeddings).
    """
    return min(1.0, max(-1.0, float(_pair_gram(_matrix(psi), g, c)[0, 1])))


def pair_columns(psi, g: int, c: int) -> torch.Tensor:
    """The (V, 2) float64 columns ``G_gj``, ``G_cj`` of the overlap matrix (SPEC §2).

    The pair's own 2×2 block is renormalised in float64 (``G_gg = G_cc = 1``), so that
    :func:`born_gap_from_columns` satisfies ``Φ = S + D`` to rounding.
    """
    psi = _matrix(psi)
    vocab = psi.shape[0]
    for name, i in (("g", g), ("c", c)):
        if not 0 <= int(i) < vocab:
            raise ValueError(f"{name}={i} is outside the vocabulary [0, {vocab})")
    if g == c:
        raise ValueError(f"g and c must differ, both are {g}")
    G = (psi @ psi[[g, c]].T).to(torch.float64)  # (V, 2): G_gj, G_cj
    G[[g, c]] = _pair_gram(psi, g, c)
    return G


def unit_pair_columns(E, g: int, c: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair's columns of ``G`` straight from ``E``, without materialising Ψ (V×d).

    ``G_gj = (E_j·ψ_g) / ‖E_j‖``, the quotient taken in float64. On the CPU, one pass over
    ``E`` in chunks of ``chunk`` rows (default: 512 KiB of them): the norms stream a chunk
    into cache and NumPy's BLAS takes its (chunk, d)×(d, 2) product from there (torch's
    matmul is ~4× slower at two columns; a 512 KiB chunk also stays under OpenBLAS's
    threading threshold, so the product runs on the caller's thread). Elsewhere, or for a
    dtype NumPy lacks, two whole-matrix torch ops. It equals :func:`pair_columns` of
    ``normalize_rows(E)`` to float32 rounding (the division comes after the product instead
    of before), and is what :mod:`phantom.dynamics` records.

    Returns
    -------
    G : (V, 2) float64 tensor
        The pair's columns, its own 2×2 block renormalised in float64 as in :func:`pair_columns`.
    pair : (2, d) tensor
        ``ψ_g`` and ``ψ_c``, the pair's unit rows (the rows of :func:`normalize_rows`).
    """
    E = _matrix(E).detach()
    vocab, d = E.shape
    pair = _unit(E[[g, c]])                                                    # (2, d)
    if E.device.type == "cpu" and E.dtype in _NUMPY and E.is_contiguous():
        rows = chunk or max(1, _CACHE_CHUNK // (d * E.element_size()))
        norms = torch.empty(vocab, dtype=E.dtype)                              # (V,): ‖E_j‖
        dots = np.empty((vocab, 2), dtype=_NUMPY[E.dtype])                     # (V, 2): E_j·ψ_g, E_j·ψ_c
        E_np, pair_t = E.numpy(), pair.T.contiguous().numpy()                  # (V, d), (d, 2)
        for start in range(0, vocab, rows):
            stop = start + rows
            torch.linalg.vector_norm(E[start:stop], dim=1, out=norms[start:stop])
            np.dot(E_np[start:stop], pair_t, out=dots[start:stop])
        dots = torch.from_numpy(dots)
    else:
        norms, dots = E.norm(dim=1), E @ pair.T
    G = dots.to(torch.float64) / norms.to(torch.float64).clamp_min(torch.finfo(E.dtype).tiny)[:, None]
    G[[g, c]] = _pair_gram(pair, 0, 1)
    return G, pair


def born_gap_from_columns(p, G: torch.Tensor, g: int, c: int) -> BornGap:
    """:func:`born_gap` from the pair's columns ``G`` (:func:`pair_columns`): O(V) per distribution.

    Under LoRA Ψ is frozen, so a run computes ``G`` once and reads Φ, S, D from it at every step.
    """
    p = _distribution(p, G.shape[0])
    G2 = G * G
    b = p @ G2                                     # (..., 2): b_g, b_c
    w = G2[:, 0] - G2[:, 1]                        # (V,): G_gj² − G_cj²
    w[[g, c]] = 0.0                                # drag sums over j ∉ {g, c}
    phi = b[..., 0] - b[..., 1]
    signal = (p[..., g] - p[..., c]) * (1.0 - G2[c, 0])
    drag = p @ w
    if p.ndim == 1:
        return BornGap(float(phi), float(signal), float(drag))
    return BornGap(phi, signal, drag)


def born_gap(p, psi, g: int, c: int) -> BornGap:
    """Born gap ``Φ = b_g − b_c`` with signal ``S`` and drag ``D`` (SPEC §2).

    Parameters
    ----------
    p : (V,) or (T, V)
        Next-token distribution(s).
    psi : (V, d)
        Normalised embeddings (:func:`normalize_rows`).
    g, c : int
        Token ids of the pushed word and its competitor (distinct).

    Returns
    -------
    BornGap
        Floats for a single distribution, length-T float64 tensors for (T, V).
    """
    G = pair_columns(psi, g, c)
    return born_gap_from_columns(p, G, g, c)


def _gram_blocks(A: torch.Tensor, weights: torch.Tensor | None = None, *, dtype: torch.dtype | None = None,
                 unit: bool = False, blocks: int = 4, acc: list | None = None) -> list:
    """Upper column blocks of ``BᵀB`` for ``B = diag(weights) A`` (A: (V, d)), in float64.

    The Gram is symmetric, so only its upper blocks are computed (``(b+1)/2b`` of the work,
    strided views), never holding more than one row chunk of B: rows are cast to ``dtype``
    (default: A's), renormalised to unit length there if ``unit``, weighted, multiplied in
    ``dtype`` and accumulated in float64 — into ``acc`` (a previous result) if given.
    Returns ``[((s0, s1), (t0, t1), block), …]``.
    """
    dtype = dtype or A.dtype
    if acc is None:
        edges = torch.linspace(0, A.shape[1], blocks + 1).long().tolist()
        spans = [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
        acc = [(s, t, torch.zeros(s[1] - s[0], t[1] - t[0], dtype=torch.float64, device=A.device))
               for i, s in enumerate(spans) for t in spans[i:]]
    chunk = _CHUNK if dtype.itemsize <= 4 else _CHUNK // 4          # float64: half the bytes per chunk
    for start in range(0, A.shape[0], chunk):
        rows = A[start:start + chunk].to(dtype)                            # (chunk, d)
        if unit:
            rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        if weights is not None:
            rows = rows * weights[start:start + chunk, None].to(dtype)
        for s, t, block in acc:
            block += (rows[:, s[0]:s[1]].T @ rows[:, t[0]:t[1]]).to(torch.float64)
    return acc


def _sq_norm(acc: list) -> float:
    """``‖BᵀB‖_F²`` from its upper blocks (:func:`_gram_blocks`)."""
    return sum((1.0 if s == t else 2.0) * float((block ** 2).sum()) for s, t, block in acc)


def _gram_sq_norm(A: torch.Tensor, weights: torch.Tensor | None = None, **kwargs) -> float:
    """``‖BᵀB‖_F²`` for ``B = diag(weights) A`` (keyword arguments as :func:`_gram_blocks`)."""
    return _sq_norm(_gram_blocks(A, weights, **kwargs))


def _rounding_bound(dtype: torch.dtype, vocab: int, dim: int) -> float:
    """Worst-case ``|γ̃ − γ|`` of :func:`purity` per unit of probability mass multiplied in ``dtype``.

    Each (d, d) entry of ρ is a sum of at most ``K`` (rows per chunk) products per chunk:
    Higham's bound ``|fl(BᵀB) − BᵀB| ≤ γ_K |B|ᵀ|B|``, ``γ_K ≈ K·u``, gives ``‖δρ‖_F ≤ γ_K·m``
    for rows of mass ``m``; rows unit only to ``(d + 2)·u`` add ``2(d + 2)·u·m``; and
    ``|γ̃ − γ| ≤ 2‖δρ‖ + ‖δρ‖² < 3‖δρ‖`` since ``‖ρ‖_F ≤ tr ρ ≤ 1``.
    """
    return 3.0 * (min(vocab, _CHUNK) + 2 * (dim + 2)) * torch.finfo(dtype).eps / 2


def purity(p, psi) -> float | torch.Tensor:
    """Purity ``γ = Tr ρ² = ‖Ψᵀ diag(p) Ψ‖_F²`` (SPEC §2), via the (d, d) matrix ρ.

    ``γ ≤ (tr ρ)² = 1`` must follow from the arithmetic, but float32 unit rows have
    ``‖ψ‖⁴ − 1`` up to ~7e-7, so a distribution collapsed on one token would give γ > 1.
    The rows of the few tokens with ``p_i ≥ 1e-3`` are therefore renormalised and multiplied
    in float64, the light rest in Ψ's dtype (fast). Only if γ still exceeds 1 by more than
    float64's rounding bound (:func:`_rounding_bound`, ~2e-11 at Gemma-3's size) — a spread
    distribution over collapsed, nearly parallel rows — is all of ρ recomputed in float64
    (~3× slower). Either way the result is at most ``1 + _rounding_bound(float64, V, d)``.
    """
    psi = _matrix(psi)
    p = _distribution(p, psi.shape[0])
    if p.ndim == 2:
        return torch.tensor([purity(row, psi) for row in p], dtype=torch.float64)
    w = p.sqrt()                                                   # rows √p_i ψ_i: BᵀB = ρ
    dominant = torch.nonzero(p >= _DOMINANT).flatten()                   # at most 1/_DOMINANT rows
    light = w.to(psi.dtype, copy=True)
    light[dominant] = 0.0
    acc = _gram_blocks(psi, light)
    gamma = _sq_norm(_gram_blocks(psi[dominant], w[dominant], dtype=torch.float64, unit=True, acc=acc))
    if gamma > 1.0 + _rounding_bound(torch.float64, *psi.shape):
        gamma = _gram_sq_norm(psi, w, dtype=torch.float64, unit=True)
    return gamma


def participation_ratio(p, psi) -> float | torch.Tensor:
    """``PR = 1/γ`` (SPEC §2)."""
    return 1.0 / purity(p, psi)


def localisation_length(gamma) -> float | torch.Tensor:
    """``ξ = arccos(√γ)`` in radians (SPEC §2); γ is clipped to [0, 1] against rounding."""
    if isinstance(gamma, torch.Tensor):
        return torch.arccos(gamma.clamp(0.0, 1.0).sqrt())
    if not 0.0 <= gamma <= 1.0 + 1e-9:
        raise ValueError(f"purity must lie in [0, 1], got {gamma}")
    return math.acos(math.sqrt(min(gamma, 1.0)))


def burial_depth(xi, g_max: float) -> float | torch.Tensor:
    """``B = ξ / arccos(G_max)`` (SPEC §2); ``B > 1`` means the pair is unresolved.

    ``G_max = 1`` (identical directions) gives ``inf`` for ``ξ > 0`` and NaN for ``ξ = 0``.
    """
    if not -1.0 <= g_max <= 1.0:
        raise ValueError(f"g_max is a cosine and must lie in [-1, 1], got {g_max}")
    angle = math.acos(g_max)
    return xi / angle if angle > 0 else xi * math.inf


def g2_mean(psi) -> float:
    """Exact mean of ``G_ij²`` over ``i ≠ j`` (SPEC §2 bulk density) via the (d, d) Gram.

    ``Σ_{i≠j} G_ij² = ‖ΨᵀΨ‖_F² − Σ_i ‖ψ_i‖⁴``; the subtracted diagonal is V for unit rows.
    """
    psi = _matrix(psi)
    V = psi.shape[0]
    diag = (psi.pow(2).sum(1, dtype=torch.float64) ** 2).sum()
    return float((_gram_sq_norm(psi) - diag) / (V * (V - 1)))


def sample_overlaps(psi, n_pairs: int, seed: int) -> np.ndarray:
    """``G_ij`` for ``n_pairs`` uniformly sampled ordered pairs ``i ≠ j`` (float64)."""
    psi = _matrix(psi)
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    V = psi.shape[0]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, V, n_pairs)
    j = rng.integers(0, V - 1, n_pairs)
    j += j >= i                                     # uniform over j ≠ i
    out = np.empty(n_pairs)
    for s in range(0, n_pairs, 100_000):
        a, b = torch.from_numpy(i[s:s + 100_000]), torch.from_numpy(j[s:s + 100_000])
        out[s:s + 100_000] = (psi[a] * psi[b]).sum(1).to(torch.float64).numpy()
    return out


def bulk_shape(psi, n_pairs: int = BULK_PAIRS, seed: int = BULK_SEED) -> BulkShape:
    """Gaussian vs Laplace maximum-likelihood fit of sampled off-diagonal overlaps (SPEC §2)."""
    x = sample_overlaps(psi, n_pairs, seed)
    mean, std = float(x.mean()), float(x.std())
    loc = float(np.median(x))
    scale = float(np.abs(x - loc).mean())
    if std == 0.0 or scale == 0.0:
        raise ValueError("all sampled overlaps are equal: the bulk has no shape to fit")
    ll_gauss = -0.5 * (math.log(2 * math.pi * std**2) + 1.0)  # MLE plug-in, per pair
    ll_laplace = -(math.log(2 * scale) + 1.0)
    kind = "gaussian" if ll_gauss >= ll_laplace else "laplace"
    return BulkShape(kind, ll_gauss, ll_laplace, mean, std)


def classify(g2mean: float, kind: str) -> str:
    """Universality class (SPEC §2): ``"A"``, ``"B"`` or ``"unclassified"``."""
    if kind not in ("gaussian", "laplace"):
        raise ValueError(f"kind must be 'gaussian' or 'laplace', got {kind!r}")
    if CLASS_A_BAND[0] <= g2mean <= CLASS_A_BAND[1] and kind == "gaussian":
        return "A"
    if CLASS_B_BAND[0] <= g2mean <= CLASS_B_BAND[1] and kind == "laplace":
        return "B"
    return "unclassified"
