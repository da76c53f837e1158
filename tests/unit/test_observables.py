"""Observables by need (dynamics.run(observables=…)): what "claims" records, and the store key.

On tiny local models: a ``"claims"`` run records the cheap series at every step with the same
bits as an ``"all"`` run, the O(V·d²) series at t = 0 only, the embedding check at every step
of a LoRA run only, and NaN (never a number) for what it does not record; ``meta`` says what
was recorded. In the run store the observable set is part of the key, and an ``"all"`` entry
serves a ``"claims"`` request.
"""
import math

import numpy as np
import pytest
import tiny_models
import torch

from phantom import dynamics, geometry, runs, zoo
from phantom.store import RunStore
from phantom.trajectory import SERIES

CHEAP = [k for k in SERIES if k not in dynamics.STEP_ZERO + dynamics.EMBEDDING]
T = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_models.build_tiny("llama", tmp_path_factory.mktemp("obs") / "tiny")
    return str(path), zoo.load(str(path))


@pytest.fixture(scope="module")
def pairs(tiny):
    _, loaded = tiny
    return {obs: {mode: dynamics.run(loaded, "longing", mode=mode, lr=1e-2 if mode == "full" else 1e-1,
                                     steps=T, observables=obs)
                  for mode in dynamics.MODES} for obs in dynamics.OBSERVABLES}


@pytest.mark.parametrize("mode", dynamics.MODES)
def test_claims_records_the_cheap_series_bit_for_bit(pairs, mode):
    a, c = pairs["all"][mode], pairs["claims"][mode]
    for k in CHEAP:
        assert c[k].tobytes() == a[k].tobytes(), k


@pytest.mark.parametrize("mode", dynamics.MODES)
def test_step_zero_series_at_step_zero_only(pairs, mode):
    a, c = pairs["all"][mode], pairs["claims"][mode]
    for k in dynamics.STEP_ZERO:
        assert c[k][0] == a[k][0] and np.isfinite(a[k]).all(), k
        assert np.isnan(c[k][1:]).all(), k
    assert c.meta["recorded"]["purity"] == "t = 0" and a.meta["recorded"]["purity"] == "every step"
    assert (c.meta["observables"], a.meta["observables"]) == ("claims", "all")


def test_embedding_check_every_lora_step_and_only_on_request_under_full_ft(pairs):
    lora, full = pairs["claims"]["lora"], pairs["claims"]["full"]
    assert np.array_equal(lora["embed_equal"], np.ones(T + 1)) and np.array_equal(lora["max_de"], np.zeros(T + 1))
    assert lora.meta["recorded"]["embed_equal"] == "every step"
    assert all(np.isnan(full[k]).all() for k in dynamics.EMBEDDING)
    assert full.meta["recorded"]["embed_equal"] == "never"
    assert pairs["all"]["full"]["embed_equal"][1:].sum() == 0          # full FT moves the embedding


def test_unknown_observables_are_refused_by_name(tiny):
    with pytest.raises(ValueError, match="observables must be one of"):
        dynamics.run(tiny[1], "longing", mode="lora", lr=1e-3, steps=1, observables="some")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int8])
def test_bitwise_equal_sees_one_flipped_bit_and_signed_zeros(dtype):
    a = torch.zeros(7, 5, dtype=dtype) if dtype == torch.int8 else torch.randn(7, 5, dtype=dtype)
    assert dynamics._bitwise_equal(a, a.clone())
    b = a.clone()
    b.view(torch.uint8).view(-1)[-1] ^= 1
    assert not dynamics._bitwise_equal(a, b)
    if dtype.is_floating_point:
        z = torch.zeros(3, dtype=dtype)
        assert torch.equal(z, -z) and not dynamics._bitwise_equal(z, -z)
    assert not dynamics._bitwise_equal(a, a[:6]) and not dynamics._bitwise_equal(a, a.to(torch.int16))


def test_store_keys_the_observable_set_and_all_serves_claims(tiny, tmp_path):
    name, loaded = tiny
    store = RunStore(tmp_path / "runs")
    calls = []

    def loader(model):
        calls.append(model)
        return loaded

    args = dict(mode="full", lr=1e-2, steps=T, store=store, loader=loader)
    full = runs.trajectory(name, "longing", observables="all", **args)
    computed = len(store.computed)
    served = runs.trajectory(name, "longing", observables="claims", **args)
    assert len(store.computed) == computed                       # served by the "all" entry
    assert served.meta["observables"] == "all" and served["phi"].tobytes() == full["phi"].tobytes()
    other = RunStore(tmp_path / "other")
    narrow = runs.trajectory(name, "longing", observables="claims", **{**args, "store": other})
    assert narrow.meta["observables"] == "claims" and math.isnan(narrow["purity"][1])
    assert {k for k, _ in other.computed} == {"orientation", "trajectory"}


@pytest.mark.parametrize("shape", [(300, 16), (5000, 24)])
def test_unit_pair_columns_are_pair_columns_of_psi_to_float32_rounding(shape):
    torch.manual_seed(0)
    E = torch.randn(*shape) * torch.rand(shape[0], 1) * 3
    psi = geometry.normalize_rows(E)
    for g, c in ((0, 1), (shape[0] - 1, 7), (42, 41)):
        cols, pair = geometry.unit_pair_columns(E, g, c, chunk=128)
        ref = geometry.pair_columns(psi, g, c)
        assert torch.equal(pair, psi[[g, c]]) and torch.equal(cols[[g, c]], ref[[g, c]])
        assert (cols - ref).abs().max() <= 8 * torch.finfo(torch.float32).eps
        assert torch.equal(cols, geometry.unit_pair_columns(E, g, c, chunk=shape[0])[0])   # chunk-free bits


def test_unit_pair_columns_take_torch_ops_where_numpy_cannot():
    """A non-contiguous or bfloat16 ``E`` skips the CPU's chunked NumPy path: same columns to rounding."""
    torch.manual_seed(1)
    E = torch.randn(300, 16)
    cols, _ = geometry.unit_pair_columns(E, 3, 5)
    strided, _ = geometry.unit_pair_columns(E.T.contiguous().T, 3, 5)
    assert (strided - cols).abs().max() <= 8 * torch.finfo(torch.float32).eps
    half, _ = geometry.unit_pair_columns(E.to(torch.bfloat16), 3, 5)
    assert half.dtype == torch.float64 and (half - cols).abs().max() <= 8 * torch.finfo(torch.bfloat16).eps


# --- the step-0 state, shared by every run of a context (dynamics.StepZero) -----------------

@pytest.fixture
def fresh_state(tiny):
    """The tiny model with no step-0 state shared yet in this process."""
    _, loaded = tiny
    dynamics._SHARED.pop(loaded.model, None)
    return loaded


def _step_zero(run) -> tuple:
    return (run.meta["g_max"], run.meta["g_max_other"], *(run[k][0] for k in dynamics.STEP_ZERO))


@pytest.mark.parametrize("mode", dynamics.MODES)
def test_a_run_served_the_shared_step_zero_state_equals_one_that_computes_it(fresh_state, mode, monkeypatch):
    other = "lora" if mode == "full" else "full"
    first = dynamics.run(fresh_state, "longing", mode=other, lr=3e-2, steps=2)         # computes and shares
    assert len(dynamics._SHARED[fresh_state.model]) == 1
    monkeypatch.setattr(geometry, "purity", lambda *a: pytest.fail("step-0 purity recomputed"))
    shared = dynamics.run(fresh_state, "longing", mode=mode, lr=1e-2, steps=T)
    monkeypatch.undo()
    dynamics._SHARED.pop(fresh_state.model)
    own = dynamics.run(fresh_state, "longing", mode=mode, lr=1e-2, steps=T)             # computes it itself
    assert _step_zero(shared) == _step_zero(own) == _step_zero(first)
    for k in SERIES:
        assert shared[k].tobytes() == own[k].tobytes(), k
    untimed = [{k: v for k, v in r.meta.items() if k != "wall_s"} for r in (shared, own)]
    assert untimed[0] == untimed[1]


def test_the_shared_state_is_one_per_context(fresh_state):
    a = dynamics.run(fresh_state, "longing", mode="full", lr=1e-2, steps=1)
    b = dynamics.run(fresh_state, "quiet", mode="full", lr=1e-2, steps=1)
    assert len(dynamics._SHARED[fresh_state.model]) == 2 and _step_zero(a) != _step_zero(b)


def test_observables_all_reads_the_shared_step_zero_and_computes_every_later_step(fresh_state):
    dynamics.run(fresh_state, "longing", mode="lora", lr=1e-1, steps=1)
    every = dynamics.run(fresh_state, "longing", mode="full", lr=1e-2, steps=T, observables="all")
    assert np.isfinite(every["purity"]).all() and len(set(every["purity"].tolist())) > 1
