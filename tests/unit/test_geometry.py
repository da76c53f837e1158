"""Unit tests of phantom.geometry (SPEC §2: Born readout geometry).

Property tests run on small float64 problems (V ≤ 12, d ≤ 6) and compare against
brute-force formulas that build the V×V overlap matrix ``G`` explicitly — only here, in
the tests; the module itself must never build it.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from phantom.geometry import (
    BornGap,
    BulkShape,
    born_gap,
    bulk_shape,
    burial_depth,
    classify,
    g2_mean,
    localisation_length,
    normalize_rows,
    participation_ratio,
    purity,
    sample_overlaps,
)
from phantom.protocol import CLASS_A_BAND, CLASS_B_BAND

TOL = 1e-9

# ------------------------------------------------------------------ strategies

# Entries are 0 or of magnitude ≥ 1e-3, so row norms stay far from under/overflow.
_entry = st.one_of(st.just(0.0), st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3))


@st.composite
def embeddings(draw, vocab, dim_min=1, dim_max=6):
    """Raw (V, d) float64 embedding matrix with no zero row."""
    dim = draw(st.integers(dim_min, dim_max))
    E = draw(hnp.arrays(np.float64, (vocab, dim), elements=_entry))
    zero = np.linalg.norm(E, axis=1) == 0.0
    E[zero, 0] = 1.0  # Ψ is only defined for non-zero rows
    return E


@st.composite
def distributions(draw, vocab):
    """Probability vector of length V: generic (with exact zeros), near one-hot, one-hot, uniform."""
    mode = draw(st.sampled_from(["generic", "near_one_hot", "one_hot", "uniform"]))
    if mode == "uniform":
        return np.full(vocab, 1.0 / vocab)
    if mode == "one_hot":
        w = np.zeros(vocab)
        w[draw(st.integers(0, vocab - 1))] = 1.0
        return w
    if mode == "near_one_hot":
        w = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-15, 1e-9)),
                                   min_size=vocab, max_size=vocab)))
        w[draw(st.integers(0, vocab - 1))] = 1.0
    else:
        w = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
                                   min_size=vocab, max_size=vocab)))
        if w.sum() == 0.0:
            w[draw(st.integers(0, vocab - 1))] = 1.0
    return w / w.sum()


@st.composite
def problems(draw, vocab_min=2, vocab_max=12, dim_min=1):
    """(p, Ψ, g, c) with Ψ a float64 tensor of unit rows and g ≠ c."""
    vocab = draw(st.integers(vocab_min, vocab_max))
    psi = normalize_rows(torch.from_numpy(draw(embeddings(vocab, dim_min=dim_min))))
    p = draw(distributions(vocab))
    g = draw(st.integers(0, vocab - 1))
    c = draw(st.integers(0, vocab - 2))
    c += c >= g
    return p, psi, g, c


def brute_overlaps(psi) -> np.ndarray:
    psi = np.asarray(psi, dtype=np.float64)
    return psi @ psi.T


def brute_gap(p, psi, g, c):
    G2 = brute_overlaps(psi) ** 2
    p = np.asarray(p, dtype=np.float64)
    b = G2 @ p  # b_i = Σ_j p_j G_ij²
    rest = [j for j in range(len(p)) if j not in (g, c)]
    signal = (p[g] - p[c]) * (1.0 - G2[g, c])
    drag = sum(p[j] * (G2[g, j] - G2[c, j]) for j in rest)
    return b[g] - b[c], signal, drag


def brute_purity(p, psi) -> float:
    G2 = brute_overlaps(psi) ** 2
    p = np.asarray(p, dtype=np.float64)
    return float(sum(p[i] * p[j] * G2[i, j] for i in range(len(p)) for j in range(len(p))))


def brute_g2_mean(psi) -> float:
    G2 = brute_overlaps(psi) ** 2
    off = ~np.eye(len(G2), dtype=bool)
    return float(G2[off].mean())


# ------------------------------------------------------------------ normalize_rows

@given(E=st.integers(2, 12).flatmap(embeddings))
def test_normalize_rows_gives_unit_rows(E):
    psi = normalize_rows(torch.from_numpy(E))
    assert psi.dtype == torch.float64
    assert torch.allclose(psi.norm(dim=1), torch.ones(len(E), dtype=torch.float64), atol=1e-12)


def test_normalize_rows_keeps_zero_row_zero():
    psi = normalize_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64))
    assert psi.tolist() == [[0.6, 0.8], [0.0, 0.0]]


# ------------------------------------------------------------------ Born gap Φ = S + D

@given(problems())
def test_phi_equals_signal_plus_drag(prob):
    p, psi, g, c = prob
    gap = born_gap(p, psi, g, c)
    assert isinstance(gap, BornGap)
    assert all(isinstance(x, float) for x in gap)
    assert gap.phi == pytest.approx(gap.signal + gap.drag, abs=TOL)


@given(problems())
def test_born_gap_matches_brute_force(prob):
    p, psi, g, c = prob
    phi, signal, drag = brute_gap(p, psi, g, c)
    gap = born_gap(p, psi, g, c)
    assert gap.phi == pytest.approx(phi, abs=TOL)
    assert gap.signal == pytest.approx(signal, abs=TOL)
    assert gap.drag == pytest.approx(drag, abs=TOL)


@given(st.integers(2, 12).flatmap(
    lambda V: st.tuples(st.lists(distributions(V), min_size=1, max_size=5), embeddings(V),
                        st.integers(0, V - 1), st.integers(0, V - 2))))
def test_born_gap_batched_rows_equal_row_wise(args):
    rows, E, g, c = args
    c += c >= g
    psi = normalize_rows(torch.from_numpy(E))
    P = np.stack(rows)
    gap = born_gap(P, psi, g, c)
    for field in gap:
        assert isinstance(field, torch.Tensor)
        assert field.shape == (len(rows),)
        assert field.dtype == torch.float64
    assert torch.allclose(gap.phi, gap.signal + gap.drag, rtol=0.0, atol=TOL)
    for t, row in enumerate(rows):
        single = born_gap(row, psi, g, c)
        for name in BornGap._fields:
            assert float(getattr(gap, name)[t]) == pytest.approx(getattr(single, name), abs=1e-12)


@given(problems())
def test_born_gap_is_antisymmetric(prob):
    p, psi, g, c = prob
    fwd, bwd = born_gap(p, psi, g, c), born_gap(p, psi, c, g)
    assert fwd.phi == pytest.approx(-bwd.phi, abs=1e-12)
    assert fwd.signal == pytest.approx(-bwd.signal, abs=1e-12)
    assert fwd.drag == pytest.approx(-bwd.drag, abs=1e-12)


@given(problems(), st.data())
def test_invariant_under_vocabulary_permutation(prob, data):
    p, psi, g, c = prob
    V = len(p)
    perm = np.array(data.draw(st.permutations(range(V))))
    inv = np.argsort(perm)  # old token k sits at new position inv[k]
    p2, psi2 = p[perm], psi[torch.from_numpy(perm)]
    ref, got = born_gap(p, psi, g, c), born_gap(p2, psi2, int(inv[g]), int(inv[c]))
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, abs=1e-12)
    assert purity(p2, psi2) == pytest.approx(purity(p, psi), abs=1e-12)
    assert g2_mean(psi2) == pytest.approx(g2_mean(psi), abs=1e-12)


@given(st.integers(2, 12).flatmap(
    lambda V: st.tuples(embeddings(V), distributions(V), st.integers(0, V - 1), st.integers(0, V - 2),
                        st.lists(st.floats(1e-3, 1e3), min_size=V, max_size=V))))
def test_invariant_under_positive_row_rescaling(args):
    E, p, g, c, scales = args
    c += c >= g
    psi = normalize_rows(torch.from_numpy(E))
    psi_s = normalize_rows(torch.from_numpy(E * np.array(scales)[:, None]))
    for a, b in zip(born_gap(p, psi, g, c), born_gap(p, psi_s, g, c)):
        assert b == pytest.approx(a, abs=1e-12)
    assert purity(p, psi_s) == pytest.approx(purity(p, psi), abs=1e-12)
    assert g2_mean(psi_s) == pytest.approx(g2_mean(psi), abs=1e-12)


@given(problems(dim_min=2))
def test_signal_sign_follows_probability_gap(prob):
    p, psi, g, c = prob
    S = born_gap(p, psi, g, c).signal
    dp = p[g] - p[c]
    G_gc = float(psi[g] @ psi[c])
    if abs(G_gc) >= 1.0 - 1e-6:  # (anti)parallel pair: no signal to speak of
        assert abs(S) <= 3e-6 * abs(dp) + 1e-15
        return
    assert np.sign(S) == np.sign(dp)
    assert (S == 0.0) == (p[g] == p[c])


@given(problems(dim_min=2))
def test_signal_vanishes_for_equal_probabilities(prob):
    p, psi, g, c = prob
    assume(abs(float(psi[g] @ psi[c])) < 1.0 - 1e-6)
    p = p.copy()
    p[c] = p[g]  # not normalised any more, which S does not care about
    assert born_gap(p, psi, g, c).signal == 0.0


def test_born_gap_float32_psi_close_to_float64():
    rng = np.random.default_rng(3)
    E = rng.standard_normal((300, 16))
    p = rng.dirichlet(np.ones(300))
    ref = born_gap(p, normalize_rows(torch.from_numpy(E)), 5, 7)
    got = born_gap(p, normalize_rows(torch.from_numpy(E.astype(np.float32))), 5, 7)
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, abs=1e-6)


# ------------------------------------------------------------------ purity, PR

@given(problems())
def test_purity_bounds_and_participation_ratio(prob):
    p, psi, _, _ = prob
    gamma = purity(p, psi)
    assert isinstance(gamma, float)
    assert 0.0 < gamma <= 1.0 + 1e-12
    assert gamma >= 1.0 / psi.shape[1] - 1e-12  # ρ is (d, d) with unit trace
    pr = participation_ratio(p, psi)
    assert pr >= 1.0 - 1e-12
    assert pr == pytest.approx(1.0 / gamma, rel=1e-12)


@given(problems())
def test_purity_matches_brute_force(prob):
    p, psi, _, _ = prob
    assert purity(p, psi) == pytest.approx(brute_purity(p, psi), abs=TOL)


@given(st.integers(2, 12).flatmap(
    lambda V: st.tuples(st.lists(distributions(V), min_size=1, max_size=5), embeddings(V))))
def test_purity_batched_rows_equal_row_wise(args):
    rows, E = args
    psi = normalize_rows(torch.from_numpy(E))
    gammas = purity(np.stack(rows), psi)
    assert isinstance(gammas, torch.Tensor) and gammas.shape == (len(rows),)
    prs = participation_ratio(np.stack(rows), psi)
    assert isinstance(prs, torch.Tensor) and prs.shape == (len(rows),)
    # rel=1e-6 only: the float64 requirement is checked in test_purity_batched_is_float64
    for t, row in enumerate(rows):
        assert float(gammas[t]) == pytest.approx(purity(row, psi), rel=1e-6)
        assert float(prs[t]) == pytest.approx(1.0 / purity(row, psi), rel=1e-6)


def test_purity_batched_is_float64():
    """Batched γ must keep float64 like born_gap's batched fields (sums are float64, SPEC §2)."""
    psi = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    psi = normalize_rows(psi)
    P = np.array([[2 / 3, 1 / 3], [0.5, 0.5]])
    gammas, prs = purity(P, psi), participation_ratio(P, psi)
    assert gammas.dtype == torch.float64
    assert prs.dtype == torch.float64
    for t in range(2):
        assert float(gammas[t]) == purity(P[t], psi)
        assert float(prs[t]) == pytest.approx(participation_ratio(P[t], psi), rel=1e-15)


def test_figure1_one_hot_is_pure():
    psi = normalize_rows(torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    p = np.zeros(7)
    p[3] = 1.0
    assert purity(p, psi) == pytest.approx(1.0, abs=1e-12)
    assert participation_ratio(p, psi) == pytest.approx(1.0, abs=1e-12)


def test_figure1_uniform_over_four_orthogonal_vectors():
    psi = torch.eye(4, dtype=torch.float64)
    p = np.full(4, 0.25)
    assert purity(p, psi) == pytest.approx(0.25, abs=1e-12)
    assert participation_ratio(p, psi) == pytest.approx(4.0, abs=1e-12)


def test_figure1_two_overlapping_tokens():
    G = 0.85
    psi = torch.tensor([[1.0, 0.0], [G, math.sqrt(1.0 - G * G)]], dtype=torch.float64)
    gamma = purity([0.5, 0.5], psi)
    assert gamma == pytest.approx(0.5 + 0.5 * G * G, abs=1e-12)  # 0.86125
    assert round(gamma, 3) == 0.861
    assert round(participation_ratio([0.5, 0.5], psi), 3) == 1.161


# ------------------------------------------------------------------ G² mean

@given(st.integers(2, 12).flatmap(embeddings))
def test_g2_mean_matches_brute_force(E):
    psi = normalize_rows(torch.from_numpy(E))
    assert g2_mean(psi) == pytest.approx(brute_g2_mean(psi), abs=TOL)


def test_g2_mean_matches_brute_force_v500():
    rng = np.random.default_rng(11)
    psi = normalize_rows(torch.from_numpy(rng.standard_normal((500, 24))))
    assert g2_mean(psi) == pytest.approx(brute_g2_mean(psi), rel=1e-10)
    # float32 input: the Gram products run in float32, the sums in float64
    assert g2_mean(psi.float()) == pytest.approx(brute_g2_mean(psi), rel=1e-4)


def test_g2_mean_extremes():
    assert g2_mean(torch.eye(6, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-15)
    same = normalize_rows(torch.ones(5, 3, dtype=torch.float64))
    assert g2_mean(same) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------ ξ and B

def test_localisation_length_values():
    assert localisation_length(1.0) == 0.0
    assert localisation_length(0.5) == pytest.approx(math.pi / 4, abs=1e-15)
    assert localisation_length(1.0 + 1e-12) == 0.0  # rounding above 1 is clipped
    xi = localisation_length(torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    assert torch.allclose(xi, torch.tensor([0.0, math.pi / 4, math.pi / 3], dtype=torch.float64))


@pytest.mark.parametrize("gamma", [-0.1, 1.5, math.nan])
def test_localisation_length_rejects_non_purity(gamma):
    with pytest.raises(ValueError, match="purity must lie"):
        localisation_length(gamma)


@given(st.floats(1e-3, math.pi / 2))
def test_burial_depth_is_one_at_own_angle(xi):
    assert burial_depth(xi, math.cos(xi)) == pytest.approx(1.0, rel=1e-9)


def test_burial_depth_values():
    assert burial_depth(math.pi / 4, 0.0) == pytest.approx(0.5)
    assert burial_depth(0.3, 1.0) == math.inf  # identical embeddings can never be resolved
    gamma = purity([0.5, 0.5], torch.tensor([[1.0, 0.0], [0.85, math.sqrt(1 - 0.85**2)]],
                                            dtype=torch.float64))
    assert burial_depth(localisation_length(gamma), 0.85) < 1.0


@pytest.mark.parametrize("g_max", [1.0 + 1e-9, -1.5, 2.0, math.nan])
def test_burial_depth_rejects_non_cosine(g_max):
    with pytest.raises(ValueError, match="g_max is a cosine"):
        burial_depth(0.5, g_max)


# ------------------------------------------------------------------ bulk shape

def test_bulk_shape_gaussian_embeddings():
    gen = torch.Generator().manual_seed(0)
    psi = normalize_rows(torch.randn(2000, 512, generator=gen))
    shape = bulk_shape(psi, n_pairs=200_000, seed=1)
    assert isinstance(shape, BulkShape)
    assert shape.kind == "gaussian"
    assert shape.loglik_gauss > shape.loglik_laplace
    assert abs(shape.mean) < 5e-4
    assert shape.std == pytest.approx(1.0 / math.sqrt(512), rel=0.02)


def test_bulk_shape_sparse_embeddings_are_laplace():
    rng = np.random.default_rng(0)
    V, d, k = 2000, 512, 32
    E = np.zeros((V, d), dtype=np.float32)
    for i in range(V):
        cols = rng.choice(d, size=k, replace=False)
        E[i, cols] = rng.choice([-1.0, 1.0], size=k)
    shape = bulk_shape(normalize_rows(torch.from_numpy(E)), n_pairs=200_000, seed=1)
    assert shape.kind == "laplace"
    assert shape.loglik_laplace > shape.loglik_gauss
    assert abs(shape.mean) < 1e-3


def test_bulk_shape_rejects_constant_overlaps():
    with pytest.raises(ValueError, match="no shape"):
        bulk_shape(torch.eye(8, dtype=torch.float64), n_pairs=1000)


def test_sample_overlaps_never_samples_the_diagonal():
    # identity rows: an i == j sample would give 1.0, every i != j gives 0.0
    x = sample_overlaps(torch.eye(50, dtype=torch.float64), n_pairs=250_000, seed=4)
    assert x.dtype == np.float64 and x.shape == (250_000,)
    assert (x == 0.0).all()
    # V = 2: the only off-diagonal overlap is G_01
    x2 = sample_overlaps(torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64), 10_000, seed=5)
    assert np.allclose(x2, 0.6, atol=1e-15)


def test_sample_overlaps_uniform_over_pairs():
    psi = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.28, 0.96]], dtype=torch.float64)
    x = sample_overlaps(psi, 60_000, seed=6)
    for value in (0.6, 0.0, 0.8 * 0.28):
        frac = np.isclose(x, value, atol=1e-12).mean()
        assert frac == pytest.approx(1.0 / 3.0, abs=0.015)


def test_sample_overlaps_deterministic_for_seed():
    psi = normalize_rows(torch.randn(100, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    a, b = sample_overlaps(psi, 5000, seed=9), sample_overlaps(psi, 5000, seed=9)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_overlaps(psi, 5000, seed=10))
    assert bulk_shape(psi, 5000, seed=9) == bulk_shape(psi, 5000, seed=9)


@pytest.mark.parametrize("n_pairs", [0, -3])
def test_sample_overlaps_rejects_no_pairs(n_pairs):
    with pytest.raises(ValueError, match="n_pairs must be >= 1"):
        sample_overlaps(torch.eye(3, dtype=torch.float64), n_pairs, seed=0)


# ------------------------------------------------------------------ classify

@pytest.mark.parametrize("g2,kind,expected", [
    (CLASS_A_BAND[0], "gaussian", "A"),
    (CLASS_A_BAND[1], "gaussian", "A"),
    (0.07, "gaussian", "A"),
    (np.nextafter(CLASS_A_BAND[0], 0.0), "gaussian", "unclassified"),
    (np.nextafter(CLASS_A_BAND[1], 1.0), "gaussian", "unclassified"),
    (0.07, "laplace", "unclassified"),
    (CLASS_B_BAND[0], "laplace", "B"),
    (CLASS_B_BAND[1], "laplace", "B"),
    (0.0025, "laplace", "B"),
    (np.nextafter(CLASS_B_BAND[0], 0.0), "laplace", "unclassified"),
    (np.nextafter(CLASS_B_BAND[1], 1.0), "laplace", "unclassified"),
    (0.0025, "gaussian", "unclassified"),
    (0.01, "gaussian", "unclassified"),
    (0.01, "laplace", "unclassified"),
])
def test_classify_bands(g2, kind, expected):
    assert classify(float(g2), kind) == expected


@pytest.mark.parametrize("kind", ["normal", "Gaussian", "", "exponential"])
def test_classify_rejects_unknown_kind(kind):
    with pytest.raises(ValueError, match="kind must be"):
        classify(0.05, kind)


# ------------------------------------------------------------------ argument validation

PSI = normalize_rows(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
P = np.full(5, 0.2)


@pytest.mark.parametrize("fn", [lambda p: born_gap(p, PSI, 0, 1), lambda p: purity(p, PSI)])
@pytest.mark.parametrize("p,match", [
    (np.full(4, 0.25), "p must have shape"),
    (np.full(6, 1 / 6), "p must have shape"),
    (np.full((2, 3, 5), 0.2), "p must have shape"),
    (np.array([0.5, 0.5, 0.2, -0.2, 0.0]), "finite and non-negative"),
    (np.array([0.5, np.nan, 0.5, 0.0, 0.0]), "finite and non-negative"),
    (np.array([0.5, np.inf, 0.5, 0.0, 0.0]), "finite and non-negative"),
    (np.array([[0.2] * 5, [0.5, 0.5, 0.2, -0.2, 0.0]]), "finite and non-negative"),
])
def test_bad_distribution_rejected(fn, p, match):
    with pytest.raises(ValueError, match=match):
        fn(p)


@pytest.mark.parametrize("g,c,match", [
    (2, 2, "g and c must differ"),
    (5, 0, r"g=5 is outside the vocabulary \[0, 5\)"),
    (-1, 0, "g=-1 is outside the vocabulary"),
    (0, 5, "c=5 is outside the vocabulary"),
    (0, -2, "c=-2 is outside the vocabulary"),
])
def test_bad_token_ids_rejected(g, c, match):
    with pytest.raises(ValueError, match=match):
        born_gap(P, PSI, g, c)


@pytest.mark.parametrize("psi", [
    torch.ones(5, dtype=torch.float64),           # 1-D
    torch.ones(1, 3, dtype=torch.float64),        # V = 1
    torch.ones(5, 3, 2, dtype=torch.float64),     # 3-D
    torch.ones(5, 3, dtype=torch.int64),          # not floating
])
@pytest.mark.parametrize("fn", [
    lambda psi: born_gap(P, psi, 0, 1), lambda psi: purity(P, psi), lambda psi: g2_mean(psi),
    lambda psi: normalize_rows(psi), lambda psi: sample_overlaps(psi, 10, 0),
])
def test_bad_psi_rejected(fn, psi):
    with pytest.raises(ValueError, match=r"psi must be a floating \(V, d\) matrix"):
        fn(psi)


# ------------------------------------------------------------------ no V×V matrix

def test_large_vocabulary_never_builds_overlap_matrix():
    """V = 200 000: a V×V float64 matrix would need 320 GB, far beyond this machine."""
    V, d = 200_000, 8
    rng = np.random.default_rng(12)
    psi = normalize_rows(torch.from_numpy(rng.standard_normal((V, d))))
    p = rng.dirichlet(np.full(V, 0.1))
    g, c = int(np.argmax(p)), 17
    gap = born_gap(p, psi, g, c)
    assert gap.phi == pytest.approx(gap.signal + gap.drag, abs=TOL)
    col_g, col_c = (psi @ psi[g]).numpy(), (psi @ psi[c]).numpy()
    assert gap.phi == pytest.approx(float(p @ col_g**2 - p @ col_c**2), abs=1e-12)
    gamma = purity(p, psi)
    rho = (psi * torch.from_numpy(p)[:, None]).T @ psi  # (d, d) density matrix
    assert gamma == pytest.approx(float((rho**2).sum()), rel=1e-10)
    assert 1.0 / d - 1e-12 <= gamma <= 1.0
    gammas = purity(np.stack([p, np.full(V, 1.0 / V)]), psi)
    assert float(gammas[0]) == pytest.approx(gamma, rel=1e-6)
    assert float(gammas[1]) == pytest.approx(1.0 / d, rel=0.05)  # isotropic cloud: ρ ≈ I/d
    assert g2_mean(psi) == pytest.approx(1.0 / d, rel=0.05)
