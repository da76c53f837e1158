"""Tests of the fine-tuning engine :mod:`phantom.dynamics` (SPEC §4).

The real SmolLM2-135M (tied Llama) is loaded once for the module; every run on it is 3 steps
(T = 3), so the whole module stays within seconds of fine-tuning. Architecture coverage
(GPT-2, GPT-NeoX, Llama; tied and untied heads) uses the tiny random models of
``tiny_models``. The LoRA base run is the first run of the module (a fresh process state),
so the no-leakage test can compare a rerun made after other runs against it.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import tiny_models
import torch
import torch.nn.functional as F

from phantom import contexts, dynamics, zoo
from phantom.protocol import LORA_RANK, MODES, PROTOCOL_VERSION
from phantom.trajectory import SERIES

SMOL = "smollm2-135m"
CONTEXT = contexts.get("quiet")   # short text; rank-contested on SmolLM2 (p_quiet ≪ p_soft)
T = 3
LR_FULL, LR_LORA = 2e-5, 1e-3
META_VOLATILE = ("wall_s",)       # the only meta entry that may differ between identical runs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_same_run(a, b):
    """Bitwise equal series (every one of SERIES) and equal meta apart from timing."""
    assert set(a.series) == set(b.series) == set(SERIES)
    for name in SERIES:
        assert np.array_equal(a[name], b[name], equal_nan=True), f"series {name!r} differs: {a[name]} vs {b[name]}"
        # np.array_equal treats -0.0 == 0.0: compare the bits too
        assert a[name].tobytes() == b[name].tobytes(), f"series {name!r} differs in its bits"
    strip = lambda m: {k: v for k, v in m.items() if k not in META_VOLATILE}  # noqa: E731
    assert strip(a.meta) == strip(b.meta)


# --------------------------------------------------------------------------------------
# The real SmolLM2: one load per module, base runs computed once (LoRA first).
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol_sha(smol):
    """state_sha256 of ``loaded.model`` before any run touched it."""
    return zoo.state_sha256(smol.model)


@pytest.fixture(scope="module")
def pair(smol):
    return contexts.orient(CONTEXT, smol)


@pytest.fixture(scope="module")
def base(smol, smol_sha, pair):
    """The reference runs: LoRA first (fresh process state), then full FT."""
    lora = dynamics.run(smol, CONTEXT, mode="lora", lr=LR_LORA, steps=T, observables="all")
    full = dynamics.run(smol, CONTEXT, mode="full", lr=LR_FULL, steps=T, observables="all")
    return {"lora": lora, "full": full}


@pytest.mark.slow
class TestSmolLM2:
    def test_full_series_shape_and_identities(self, base, smol):
        traj = base["full"]
        assert traj.steps == T and traj.diverged_at is None
        for name in SERIES:
            assert traj[name].dtype == np.float64
            assert traj[name].shape == (T + 1,), name
            assert np.isfinite(traj[name]).all(), name
        assert traj["loss"][-1] < traj["loss"][0]
        # Φ = S + D at every step (SPEC §2 identity)
        np.testing.assert_allclose(traj["phi"], traj["signal"] + traj["drag"], rtol=0, atol=1e-6)
        assert (traj["purity"] > 0).all() and (traj["purity"] <= 1 + 1e-12).all()
        assert np.array_equal(traj["pr"], 1.0 / traj["purity"])
        np.testing.assert_allclose(traj["xi"], np.arccos(np.sqrt(traj["purity"])), rtol=1e-12)
        assert (traj["rank_g"] >= 1).all() and (traj["rank_c"] >= 1).all()
        assert np.array_equal(traj["rank_g"], np.round(traj["rank_g"]))
        vocab = smol.info.vocab_size
        assert (traj["rank_g"] <= vocab).all() and (traj["rank_c"] <= vocab).all()
        # rank and probability order agree
        assert np.array_equal(traj["p_g"] > traj["p_c"], traj["rank_g"] < traj["rank_c"])

    def test_full_meta_and_orientation(self, base, smol, pair):
        traj, meta = base["full"], base["full"].meta
        assert {meta["g_word"], meta["c_word"]} == set(CONTEXT.pair)
        assert (meta["g_word"], meta["c_word"], meta["g_id"], meta["c_id"]) == (
            pair.g_word, pair.c_word, pair.g_id, pair.c_id)
        assert meta["g_id"] == contexts.token_id(smol.tokenizer, meta["g_word"])
        assert meta["c_id"] == contexts.token_id(smol.tokenizer, meta["c_word"])
        assert (meta["model"], meta["context"], meta["text"]) == (SMOL, CONTEXT.id, CONTEXT.text)
        assert (meta["mode"], meta["lr"], meta["steps"], meta["seed"]) == ("full", LR_FULL, T, 0)
        assert meta["weights_sha256"] == smol.info.weights_sha256
        assert meta["protocol_version"] == PROTOCOL_VERSION
        assert meta["n_trainable"] == smol.info.n_params      # every parameter (tied: counted once)
        # G_max is the step-0 G_gc; max_{j≠g} G_gj includes j = c
        assert meta["g_max"] == pytest.approx(traj["g_gc"][0], abs=1e-6)
        assert traj.g_max == meta["g_max"]
        assert meta["g_max_other"] >= meta["g_max"] - 1e-6
        # orientation (SPEC §3): g has the lower step-0 Born score, so Φ_0 < 0
        assert traj["phi"][0] < 0
        assert meta["rank_contested"] == bool(traj["p_g"][0] < traj["p_c"][0])
        assert meta["rank_contested"] is True                   # "quiet" on SmolLM2
        # the step-0 record is the orientation's state
        assert traj["p_g"][0] == pytest.approx(meta["p_g0"], rel=1e-4)
        assert traj["p_c"][0] == pytest.approx(meta["p_c0"], rel=1e-4)

    def test_full_moves_the_embedding(self, base):
        traj = base["full"]
        assert np.array_equal(traj["embed_equal"], [1.0] + [0.0] * T)
        assert np.array_equal(traj["head_equal"], traj["embed_equal"])     # tied
        assert traj["max_de"][0] == 0.0
        assert (traj["max_de"][1:] > 0).all()
        # Adam's first update moves every element with a non-zero gradient by ≈ lr
        assert traj["max_de"][1] == pytest.approx(LR_FULL, rel=1e-2)
        assert (np.diff(traj["g_gc"]) != 0).any()       # Ψ is recomputed from the live E

    def test_lora_freezes_embedding_and_head(self, base, smol, smol_sha):
        traj = base["lora"]
        assert traj.diverged_at is None
        for name in SERIES:
            assert traj[name].shape == (T + 1,) and np.isfinite(traj[name]).all(), name
        assert np.array_equal(traj["embed_equal"], np.ones(T + 1))
        assert np.array_equal(traj["head_equal"], np.ones(T + 1))
        assert np.array_equal(traj["max_de"], np.zeros(T + 1))
        assert np.array_equal(traj["g_gc"], np.full(T + 1, traj["g_gc"][0]))   # fixed Ψ
        assert traj["loss"][-1] < traj["loss"][0]
        np.testing.assert_allclose(traj["phi"], traj["signal"] + traj["drag"], rtol=0, atol=1e-6)
        # r·(d_in + d_out) per adapted projection: q (d → H·hd) and v (d → kv·hd), every layer
        cfg = smol.model.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        q_out, v_out = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
        per_layer = LORA_RANK * ((cfg.hidden_size + q_out) + (cfg.hidden_size + v_out))
        assert traj.meta["n_trainable"] == cfg.num_hidden_layers * per_layer
        # the loaded model itself is never touched
        assert zoo.state_sha256(smol.model) == smol_sha
        assert not smol.model.training

    def test_full_and_lora_share_step_zero(self, base):
        """LoRA starts at B = 0: the t = 0 state is the pristine model's in both modes."""
        for name in ("loss", "p_g", "p_c", "phi", "signal", "drag", "purity", "dz", "a_g", "a_c"):
            assert base["full"][name][0] == pytest.approx(base["lora"][name][0], rel=1e-5, abs=1e-9), name

    @pytest.mark.parametrize("mode", MODES)
    def test_deterministic(self, base, smol, mode):
        lr = LR_FULL if mode == "full" else LR_LORA
        again = dynamics.run(smol, CONTEXT, mode=mode, lr=lr, steps=T, observables="all")
        assert_same_run(again, base[mode])

    def test_no_leakage_between_runs(self, base, smol, smol_sha):
        """A full run at another LR, then the LoRA run: identical to the LoRA run made first."""
        other = dynamics.run(smol, CONTEXT, mode="full", lr=5e-5, steps=1)
        assert other.meta["lr"] == 5e-5 and len(other["loss"]) == 2
        torch.manual_seed(12345)                        # a dirty global RNG must not matter either
        torch.rand(17)
        after = dynamics.run(smol, CONTEXT, mode="lora", lr=LR_LORA, steps=T, observables="all")
        assert_same_run(after, base["lora"])
        assert zoo.state_sha256(smol.model) == smol_sha
        assert not smol.model.training

    def test_instrumentation_does_not_perturb_training(self, base, smol, pair):
        """A bare loop (no hook, no probe) gives the trajectory's loss series bit for bit."""
        model = dynamics.prepare(smol, "full", seed=0)
        opt = dynamics.optimizer(model, LR_FULL)
        ids = contexts.encode(CONTEXT, smol.tokenizer)
        target = torch.tensor([pair.g_id])
        losses = []
        for t in range(T + 1):
            with torch.set_grad_enabled(t < T):
                z = model(ids, logits_to_keep=1).logits[0, -1]
                loss = F.cross_entropy(z[None].float(), target)
            losses.append(float(loss.detach()))
            if t < T:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        assert np.asarray(losses, dtype=np.float64).tobytes() == base["full"]["loss"].tobytes()

    def test_lora_grid_runs_are_the_sequential_runs_bit_for_bit(self, base, smol, smol_sha, pair):
        """The claims' batched LoRA grid (dynamics.run_lora_grid) on the real model, one torch thread
        ("quiet": its batched products keep the sequential ones' kernels)."""
        lrs = (1e-4, LR_LORA, 1e-2)
        grid = dynamics.run_lora_grid(smol, CONTEXT, lrs=lrs, steps=T, pair=pair, observables="all")
        for lr, batched in zip(lrs, grid):
            alone = base["lora"] if lr == LR_LORA else \
                dynamics.run(smol, CONTEXT, mode="lora", lr=lr, steps=T, pair=pair, observables="all")
            assert batched.meta.pop("batch") == list(lrs)
            assert_same_run(alone, batched)
        assert zoo.state_sha256(smol.model) == smol_sha

    def test_a_grid_first_shares_the_sequential_step_zero_state(self, smol):
        """On "begin" (3 tokens) the grid's batched rows round differently from a run's own forward;
        the step-0 state it shares, and its runs' step-0 series, are still the sequential bits."""
        dynamics._SHARED.pop(smol.model, None)
        lrs = (1e-4, 1e-2)
        grid = dynamics.run_lora_grid(smol, "begin", lrs=lrs, steps=1)
        shared = dynamics._SHARED.pop(smol.model)
        alone = dynamics.run(smol, "begin", mode="lora", lr=lrs[0], steps=1)
        assert dynamics._SHARED[smol.model] == shared                    # the same state, however it came
        for k in dynamics.STEP_ZERO:
            assert grid[0][k][0] == grid[1][k][0] == alone[k][0], k
        assert grid[0]["phi"][1] != alone["phi"][1]   # this context's batched rows do round differently


# --------------------------------------------------------------------------------------
# Argument validation (before anything is loaded or copied)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="half", lr=1e-3, steps=3), "mode must be one of"),
    (dict(mode="full", lr=-1.0, steps=3), "lr must be a positive finite number"),
    (dict(mode="full", lr=0.0, steps=3), "lr must be a positive finite number"),
    (dict(mode="full", lr=math.nan, steps=3), "lr must be a positive finite number"),
    (dict(mode="full", lr=math.inf, steps=3), "lr must be a positive finite number"),
    (dict(mode="full", lr="1e-3", steps=3), "lr must be a positive finite number"),
    (dict(mode="lora", lr=1e-3, steps=0), "steps must be a positive integer"),
    (dict(mode="lora", lr=1e-3, steps=-2), "steps must be a positive integer"),
    (dict(mode="lora", lr=1e-3, steps=2.0), "steps must be a positive integer"),
])
def test_run_validates_arguments(kwargs, match):
    # `loaded=None`: validation must come before any use of the model
    with pytest.raises(ValueError, match=match):
        dynamics.run(None, CONTEXT, **kwargs)


def test_lora_targets():
    assert dynamics.lora_targets("llama") == ("q_proj", "v_proj")
    assert dynamics.lora_targets("gpt2") == ("c_attn",)
    assert dynamics.lora_targets("gpt_neox") == ("query_key_value",)
    with pytest.raises(ValueError, match=r"'bert'.*known: .*gpt2.*gpt_neox.*llama") as err:
        dynamics.lora_targets("bert")
    for known in dynamics.LORA_TARGETS:
        assert known in str(err.value)


# --------------------------------------------------------------------------------------
# Tiny random models: GPT-2 (tied), GPT-NeoX and Llama (untied)
# --------------------------------------------------------------------------------------

TINY_CONTEXT = contexts.get("begin")
TINY_LR = 1e-2
EXPECTED_TARGET = {"gpt2": "c_attn", "gpt_neox": "query_key_value", "llama": "q_proj"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_dynamics")
    return {arch: zoo.load(str(tiny_models.build_tiny(arch, root / arch))) for arch in tiny_models.ARCHS}


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_tiny_lora_targets_and_frozen_embeddings(tiny, arch):
    loaded = tiny[arch]
    targets = dynamics.lora_targets(loaded.model.config.model_type)
    model = dynamics.prepare(loaded, "lora", seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(any(f".{t}." in n for t in targets) for n in trainable)
    assert any(EXPECTED_TARGET[arch] in n for n in trainable)
    # every target projection of every layer is adapted (one A and one B each)
    n_targets = sum(1 for n, _ in loaded.model.named_modules() if n.split(".")[-1] in targets)
    assert n_targets == loaded.model.config.num_hidden_layers * len(targets)
    assert len(trainable) == 2 * n_targets
    assert not model.get_input_embeddings().weight.requires_grad
    assert not model.get_output_embeddings().weight.requires_grad

    traj = dynamics.run(loaded, TINY_CONTEXT, mode="lora", lr=TINY_LR, steps=T, observables="all")
    assert traj.diverged_at is None and len(traj["loss"]) == T + 1
    assert traj["loss"][-1] < traj["loss"][0]
    assert np.array_equal(traj["embed_equal"], np.ones(T + 1))
    assert np.array_equal(traj["head_equal"], np.ones(T + 1))
    assert np.array_equal(traj["max_de"], np.zeros(T + 1))


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_tiny_full_changes_embedding_and_untied_head(tiny, arch):
    loaded = tiny[arch]
    sha = zoo.state_sha256(loaded.model)
    traj = dynamics.run(loaded, TINY_CONTEXT, mode="full", lr=TINY_LR, steps=T, observables="all")
    assert traj.diverged_at is None and len(traj["loss"]) == T + 1
    assert traj["loss"][-1] < traj["loss"][0]
    assert np.array_equal(traj["embed_equal"], [1.0] + [0.0] * T)
    assert (traj["max_de"][1:] > 0).all()
    if loaded.info.tied:
        assert np.array_equal(traj["head_equal"], traj["embed_equal"])
    else:
        assert np.array_equal(traj["head_equal"], [1.0] + [0.0] * T)
    assert zoo.state_sha256(loaded.model) == sha
    np.testing.assert_allclose(traj["phi"], traj["signal"] + traj["drag"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_tiny_full_ft_lookup_gradient_is_sparse_only_when_tied(tiny, arch):
    """A tied embedding's lookup gradient is sparse; an untied one stays dense (fused AdamW)."""
    model = dynamics.prepare(tiny[arch], "full", seed=0)
    dynamics._sparse_lookup(model)
    assert model.get_input_embeddings().sparse == tiny[arch].info.tied


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_tiny_full_ft_speedups_leave_every_bit(tiny, arch, monkeypatch):
    """The sparse lookup gradient and the reused heap change no bit of a trajectory whose
    context has no repeated token (every SPEC §3 context on the offline zoo); a repeated token's
    gradient rows are summed in another order, which moves only the float rounding."""
    loaded = tiny[arch]
    repeated = contexts.Context("twice", "the the the the", ("the", "a"))
    fast = [dynamics.run(loaded, c, mode="full", lr=TINY_LR, steps=T) for c in (TINY_CONTEXT, repeated)]
    monkeypatch.setattr(dynamics, "_sparse_lookup", lambda model: None)
    monkeypatch.setattr(dynamics.heap, "reused", contextlib.nullcontext)
    plain = [dynamics.run(loaded, c, mode="full", lr=TINY_LR, steps=T) for c in (TINY_CONTEXT, repeated)]
    assert_same_run(fast[0], plain[0])
    for name in ("loss", "phi", "signal", "drag", "p_g", "p_c"):
        np.testing.assert_allclose(fast[1][name], plain[1][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_tiny_tied_flags():
    assert tiny_models.DEFAULT_TIED == {"gpt2": True, "gpt_neox": False, "llama": False}


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_tiny_step_zero_is_the_oriented_state(tiny, arch):
    """t = 0 records the pristine model: the orientation's p_g, p_c and Φ_0 < 0, in both modes.

    GPT-2 configs carry dropout 0.1: a forward in training mode would record a random
    dropout sample instead of the state (and the two modes would disagree at t = 0).
    """
    loaded = tiny[arch]
    pair = contexts.orient(TINY_CONTEXT, loaded)
    runs = {mode: dynamics.run(loaded, TINY_CONTEXT, mode=mode, lr=TINY_LR, steps=1, pair=pair)
            for mode in MODES}
    for traj in runs.values():
        assert traj["p_g"][0] == pytest.approx(pair.p_g0, rel=1e-5)
        assert traj["p_c"][0] == pytest.approx(pair.p_c0, rel=1e-5)
        assert traj["phi"][0] < 0
    for name in ("loss", "p_g", "p_c", "phi", "dz", "a_g", "a_c"):
        assert runs["full"][name][0] == pytest.approx(runs["lora"][name][0], rel=1e-6, abs=1e-12), name


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------

def test_divergence_huge_lr(tiny):
    loaded = tiny["llama"]
    traj = dynamics.run(loaded, TINY_CONTEXT, mode="full", lr=1e38, steps=T)
    assert isinstance(traj.diverged_at, int) and traj.diverged_at == 1
    assert traj.meta["diverged_at"] == 1
    for name in SERIES:
        assert traj[name].shape == (1,)
    assert np.isfinite(traj["loss"]).all()
    assert traj.steps == T                      # the protocol's T, not the number recorded


@pytest.mark.parametrize("at", [1, 2, 3])
def test_divergence_nan_weight(tiny, monkeypatch, at):
    """A NaN written into the LM head by the ``at``-th update ends the run at t = at."""
    loaded = tiny["gpt_neox"]
    real_optimizer = dynamics.optimizer

    def poisoned(model, lr):
        opt = real_optimizer(model, lr)
        real_step, calls = opt.step, []

        def step(*args, **kwargs):
            out = real_step(*args, **kwargs)
            calls.append(None)
            if len(calls) == at:
                with torch.no_grad():
                    model.get_output_embeddings().weight[0, 0] = math.nan
            return out

        opt.step = step
        return opt

    monkeypatch.setattr(dynamics, "optimizer", poisoned)
    traj = dynamics.run(loaded, TINY_CONTEXT, mode="full", lr=1e-3, steps=T, observables="all")
    assert traj.diverged_at == at and isinstance(traj.diverged_at, int)
    for name in SERIES:
        assert len(traj[name]) == at
        assert np.isfinite(traj[name]).all()
    assert traj.to_dict()["meta"]["diverged_at"] == at
