"""phantom.geometry under float rounding: purity's bound γ ≤ 1 and the pair overlap's |G| ≤ 1 follow
from the arithmetic, for collapsed distributions and parallel (collapsed) embedding rows."""
import math

import pytest
import torch

from phantom import geometry


def _float32_rows(V=4096, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return geometry.normalize_rows(torch.randn(V, d, generator=gen))


def test_purity_of_a_collapsed_distribution_is_at_most_one():
    psi = _float32_rows()
    norm4 = psi.double().pow(2).sum(1) ** 2
    i = int(norm4.argmax())
    assert norm4[i] - 1.0 > 1e-7          # the float32 row is not unit in float64: the old γ was ‖ψ_i‖⁴
    p = torch.zeros(psi.shape[0], dtype=torch.float64)
    p[i] = 1.0
    gamma = geometry.purity(p, psi)
    assert 1.0 - 1e-12 <= gamma <= 1.0 + 1e-12
    assert geometry.localisation_length(gamma) == pytest.approx(0.0, abs=2e-6)


def test_purity_over_parallel_rows_is_at_most_one():
    # every row ≈ one direction (what full FT at lr 1e3 does to a tied head): γ ≈ 1 with p spread
    gen = torch.Generator().manual_seed(1)
    V, d = 4096, 64
    E = 1e3 * torch.randn(d, generator=gen).sign() + 1e-2 * torch.randn(V, d, generator=gen)
    psi = geometry.normalize_rows(E)
    p = torch.softmax(torch.randn(V, dtype=torch.float64, generator=gen), 0)
    fast = geometry._gram_sq_norm(psi, p.sqrt().float())
    gamma = geometry.purity(p, psi)
    exact = geometry._gram_sq_norm(psi.double(), p.sqrt(), unit=True)
    assert gamma <= 1.0 + geometry._rounding_bound(torch.float64, V, d)
    assert gamma == pytest.approx(exact, abs=1e-12)
    assert abs(fast - exact) < 3e-6       # the float32 products' own error, for the record
    assert math.isfinite(geometry.localisation_length(gamma))


def test_pair_overlap_of_parallel_rows_is_a_cosine():
    # identical rows (collapsed embeddings): the float64 dot product of the renormalised rows
    # rounds above 1 for about a quarter of random directions; burial_depth then used to raise
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        v = torch.randn(576, dtype=torch.float64, generator=gen)
        psi = torch.stack([v, v, torch.randn(576, dtype=torch.float64, generator=gen)])
        g_gc = geometry.pair_overlap(psi, 0, 1)
        assert 1.0 - 1e-15 <= g_gc <= 1.0
        assert geometry.burial_depth(0.1, g_gc) > 1e6   # unresolved (B > 1), not an error
