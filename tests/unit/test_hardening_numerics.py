"""Issue 10, item 2: purity's bound γ ≤ 1 follows from the arithmetic, and full fine-tuning at a
high learning rate records a trajectory or a divergence instead of raising."""
import json
import math

import numpy as np
import pytest
import tiny_models
import torch

from phantom import cli, dynamics, geometry, zoo
from phantom.trajectory import Trajectory


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


# ---------------------------------------------------------------- full FT at high LR: recorded, never raised

HIGH_LRS = (1.0, 10.0, 1e3)


def check_recorded(traj, steps: int) -> None:
    """A trajectory of every step, or one that stops just before its recorded divergence."""
    n = len(traj["phi"])
    if traj.diverged_at is None:
        assert n == steps + 1
    else:
        assert n == traj.diverged_at >= 1
    assert np.isfinite(np.stack([traj[k] for k in ("phi", "purity", "xi", "g_gc")])).all()
    assert not np.isnan(traj["burial"]).any()   # +inf when the pair collapsed onto one direction
    assert (traj["purity"] <= 1.0 + 1e-9).all()


@pytest.fixture(scope="module", params=tiny_models.ARCHS)
def tiny_loaded(request, tmp_path_factory):
    return zoo.load(str(tiny_models.build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")))


@pytest.mark.parametrize("lr", HIGH_LRS + (1e6, 1e30))
def test_full_ft_at_high_lr_records_a_trajectory_or_a_divergence(tiny_loaded, lr):
    traj = dynamics.run(tiny_loaded, "longing", mode="full", lr=lr, steps=6, observables="all")
    check_recorded(traj, 6)


def test_non_finite_embedding_is_a_recorded_divergence(tiny_loaded, monkeypatch):
    """A NaN in Ψ's rows (finite logits: the row is no context token's) ends the run as diverged."""
    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        for group in self.param_groups:
            for p in group["params"]:
                if p.shape[0] == len(tiny_loaded.tokenizer) and p.ndim == 2:
                    p.data[1, 0] = float("nan")   # <eos>: not in the context
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    traj = dynamics.run(tiny_loaded, "longing", mode="full", lr=1e-3, steps=4, observables="all")
    assert traj.diverged_at == 1
    assert len(traj["phi"]) == 1


@pytest.mark.slow
def test_smollm2_full_ft_at_high_lr_cli(tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    for lr in HIGH_LRS:
        code = cli.main(["run", "--model", "smollm2-135m", "--context", "longing", "--mode", "full",
                         "--lr", str(lr), "--steps", "3", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "phantom: error" not in err
        out = next((tmp_path / "out").glob(f"*_lr{cli.lr_tag(lr)}_T3.json"))
        check_recorded(Trajectory.from_dict(json.loads(out.read_text())), 3)


# ---------------------------------------------------------------- validate: bools out, numpy scalars in

@pytest.mark.parametrize("lr, steps, seed", [(True, 3, 0), (1e-3, True, 0), (1e-3, 3, True), (1e-3, 3, 2**64),
                                             (1e-3, 3, -1), (np.bool_(True), 3, 0), (1e-3, 3.0, 0)])
def test_validate_rejects_bools_and_out_of_range(lr, steps, seed):
    with pytest.raises(ValueError, match="lr must|steps must|seed must"):
        dynamics.validate("full", lr, steps, seed=seed)


def test_validate_accepts_numpy_scalars():
    lr, steps, seed = dynamics.validate("lora", np.float32(1e-3), np.int64(3), seed=np.uint64(2**64 - 1))
    assert (type(lr), type(steps), type(seed)) == (float, int, int)
    assert (lr, steps, seed) == (float(np.float32(1e-3)), 3, 2**64 - 1)
