"""phantom.dynamics at any learning rate: full fine-tuning at a high one records a trajectory or a
divergence instead of raising; run arguments are validated by name."""
import json

import numpy as np
import pytest
import tiny_models
import torch

from phantom import cli, dynamics, zoo
from phantom.trajectory import Trajectory

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
