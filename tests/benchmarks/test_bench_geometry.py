"""Benchmarks of phantom.geometry at Gemma-3's vocabulary size (SPEC §2).

Ψ is (V, d) = (262 144, 640) float32 with random normal rows normalised, p a float64 softmax.
Speed targets are recorded in ``extra_info["target_s"]``; only correctness is asserted, never
time. Under ``--benchmark-disable`` each benchmark runs its function once.
"""
import math

import numpy as np
import pytest
import torch

from phantom.geometry import born_gap, g2_mean, normalize_rows, purity

V, D = 262_144, 640  # Gemma-3 vocabulary and embedding width


@pytest.fixture(scope="module")
def gemma_sized():
    gen = torch.Generator().manual_seed(0)
    psi = normalize_rows(torch.randn(V, D, dtype=torch.float32, generator=gen))
    logits = 3.0 * torch.randn(V, dtype=torch.float64, generator=gen)
    p = torch.softmax(logits, dim=0)
    g, c = int(p.argmax()), int(p.argsort()[-2])  # the top two tokens
    return psi, p, g, c


def test_bench_born_gap(benchmark, gemma_sized):
    psi, p, g, c = gemma_sized
    benchmark.extra_info["target_s"] = 0.05
    benchmark.extra_info["shape"] = [V, D]
    gap = benchmark(born_gap, p, psi, g, c)
    assert math.isfinite(gap.phi)
    assert gap.phi == pytest.approx(gap.signal + gap.drag, abs=1e-6)
    assert gap.signal > 0.0  # p_g > p_c and the pair is far from parallel
    col_g = (psi @ psi[g]).double()
    col_c = (psi @ psi[c]).double()
    assert gap.phi == pytest.approx(float(p @ col_g**2 - p @ col_c**2), abs=1e-6)


def test_bench_purity(benchmark, gemma_sized):
    psi, p, _, _ = gemma_sized
    benchmark.extra_info["target_s"] = 1.0
    benchmark.extra_info["shape"] = [V, D]
    gamma = benchmark.pedantic(purity, args=(p, psi), rounds=3, iterations=1, warmup_rounds=1)
    assert isinstance(gamma, float)
    assert 1.0 / D - 1e-6 <= gamma <= 1.0 + 1e-9  # ρ is (d, d) with unit trace
    # γ ≥ Σ p_i² (diagonal terms of Σ_ij p_i p_j G_ij², with G_ii = 1)
    assert gamma >= float((p**2).sum()) * (1.0 - 1e-5)


def test_bench_g2_mean(benchmark, gemma_sized):
    psi, _, _, _ = gemma_sized
    benchmark.extra_info["target_s"] = 3.0
    benchmark.extra_info["shape"] = [V, D]
    value = benchmark.pedantic(g2_mean, args=(psi,), rounds=3, iterations=1, warmup_rounds=1)
    assert isinstance(value, float)
    # random unit vectors in d dimensions: E[G_ij²] = 1/d exactly
    assert value == pytest.approx(1.0 / D, rel=0.01)
    # against brute force on a sampled block of rows (exact off-diagonal mean there)
    rows = psi[torch.from_numpy(np.random.default_rng(1).choice(V, 2000, replace=False))].double()
    G2 = (rows @ rows.T) ** 2
    block = float((G2.sum() - G2.diagonal().sum()) / (2000 * 1999))
    assert value == pytest.approx(block, rel=0.05)
