"""The batched LoRA grid (dynamics.run_lora_grid, runs.trajectory(batch=…)), on tiny local models.

A context's LoRA learning rates trained as one batch, one adapter per LR over one base forward:
each run of the grid equals its sequential run (dynamics.run) bit for bit in every series and
in meta (apart from timing and the batch it names), also when runs stop early or diverge at
different steps; the grid shares the context's step-0 state; bad grids are refused by name; the
run store computes a grid once, even when two threads ask for two of its runs at once, and keys
its entries apart from sequential runs. (The same equality on SmolLM2: test_dynamics.py.)
"""
import math
import threading
import time

import pytest
import tiny_models
import torch

from phantom import dynamics, geometry, runs, zoo
from phantom.store import RunStore
from phantom.trajectory import SERIES

GRID = (1e-3, 1e-2, 1e-1, 1.0)
T = 8

# One torch thread, as every claims worker: the bits of a multi-threaded product depend on how
# its rows are split among threads, so under 2 threads the grid's runs differ from sequential
# ones by float rounding (|ΔΦ| ≈ 1e-9 here, amplified by the highest LR to ≈ 1e-4).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=[("gpt2", True), ("gpt_neox", False), ("llama", False), ("llama", True)],
            ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}")
def loaded(request, tmp_path_factory):
    arch, tied = request.param
    return zoo.load(str(tiny_models.build_tiny(arch, tmp_path_factory.mktemp(arch) / "m", tied=tied)))


def assert_same_run(sequential, batched):
    """Bitwise equal series; equal meta apart from wall_s and the batch the grid's run names."""
    for k in SERIES:
        assert sequential[k].tobytes() == batched[k].tobytes(), f"series {k!r} differs"
    meta = {k: v for k, v in batched.meta.items() if k not in ("wall_s", "batch")}
    assert {k: v for k, v in sequential.meta.items() if k != "wall_s"} == meta


@pytest.mark.parametrize("stop", ["never", "saturated", "born_flip"])
def test_each_run_of_the_grid_equals_its_sequential_run_bit_for_bit(loaded, stop):
    grid = dynamics.run_lora_grid(loaded, "longing", lrs=GRID, steps=T, stop=stop)
    assert [r.meta["lr"] for r in grid] == list(GRID) and all(r.meta["batch"] == list(GRID) for r in grid)
    for lr, batched in zip(GRID, grid):
        assert_same_run(dynamics.run(loaded, "longing", mode="lora", lr=lr, steps=T, stop=stop), batched)
        assert all(batched["embed_equal"] == 1.0) and all(batched["head_equal"] == 1.0)   # C4, every step
    if stop == "born_flip":   # the runs ended at different steps, each on its own
        assert len({len(r["phi"]) for r in grid}) > 1 and any(r.meta["stopped_at"] for r in grid)


def test_a_run_that_diverges_leaves_the_grid_and_the_others_go_on(loaded, monkeypatch):
    """NaN written into one adapter after its first update: that run diverges at t = 1, as it does alone."""
    poisoned = GRID[1]
    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        for group in self.param_groups:
            if group["lr"] == poisoned:
                for p in group["params"]:
                    p.data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    grid = dynamics.run_lora_grid(loaded, "longing", lrs=GRID, steps=4)
    alone = dynamics.run(loaded, "longing", mode="lora", lr=poisoned, steps=4)
    monkeypatch.undo()
    assert alone.diverged_at == 1 and len(alone["phi"]) == 1
    for lr, batched in zip(GRID, grid):
        sequential = alone if lr == poisoned else dynamics.run(loaded, "longing", mode="lora", lr=lr, steps=4)
        assert_same_run(sequential, batched)
    assert [r.diverged_at for r in grid] == [1 if lr == poisoned else None for lr in GRID]


def test_the_grid_computes_the_step_zero_state_once_and_shares_it(loaded, monkeypatch):
    dynamics._SHARED.pop(loaded.model, None)
    calls = []
    real = geometry.purity
    monkeypatch.setattr(geometry, "purity", lambda *a: calls.append(1) or real(*a))
    grid = dynamics.run_lora_grid(loaded, "quiet", lrs=GRID, steps=2)
    assert len(calls) == 1 and len(dynamics._SHARED[loaded.model]) == 1
    assert len({r["purity"][0] for r in grid}) == 1 and not math.isnan(grid[0]["purity"][0])


@pytest.mark.parametrize("lrs, words", [((), "at least one"), ((1e-3, 1e-3), "distinct"),
                                        ((1e-3, -1.0), "lr must be a positive"),
                                        ((1e-3, float("nan")), "lr must be a positive")])
def test_a_bad_grid_is_refused_by_name(loaded, lrs, words):
    with pytest.raises(ValueError, match=words):
        dynamics.run_lora_grid(loaded, "longing", lrs=lrs, steps=2)


# --- the run store: a grid computed once, keyed apart -------------------------------------

@pytest.fixture
def llama(tmp_path_factory):
    path = tiny_models.build_tiny("llama", tmp_path_factory.mktemp("grid") / "tiny")
    return str(path), zoo.load(str(path))


def test_the_store_computes_a_grid_once_even_for_two_threads_at_once(llama, tmp_path, monkeypatch):
    name, model = llama
    store = RunStore(tmp_path / "runs")
    grids = []
    real = dynamics.run_lora_grid

    def slow_grid(*args, **kwargs):
        grids.append(kwargs["lrs"])
        time.sleep(0.5)                 # the other thread asks meanwhile, and waits on the grid's lock
        return real(*args, **kwargs)

    monkeypatch.setattr(dynamics, "run_lora_grid", slow_grid)
    runs.model_info(name)   # the weights hash of the keys, loaded here: two threads must not load at once
    got = {}

    def ask(lr):
        got[lr] = runs.trajectory(name, "longing", mode="lora", lr=lr, steps=T, batch=GRID, store=store,
                                  loader=lambda _: model)

    threads = [threading.Thread(target=ask, args=(lr,)) for lr in GRID[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grids == [list(GRID)]                                     # one grid, in ascending order
    assert sum(kind == "trajectory" for kind, _ in store.computed) == len(GRID)
    for lr in GRID:                                                  # every run of it is stored
        again = runs.trajectory(name, "longing", mode="lora", lr=lr, steps=T, batch=reversed(GRID), store=store,
                                loader=lambda _: pytest.fail("loaded for a stored run"))
        assert again.meta["batch"] == list(GRID)
        assert lr not in got or again["phi"].tobytes() == got[lr]["phi"].tobytes()


def test_a_grid_run_is_keyed_apart_from_the_sequential_run(llama, tmp_path):
    name, model = llama
    store = RunStore(tmp_path / "runs")
    args = dict(mode="lora", lr=GRID[0], steps=T, store=store, loader=lambda _: model)
    batched = runs.trajectory(name, "longing", batch=GRID, **args)
    alone = runs.trajectory(name, "longing", **args)
    assert "batch" not in alone.meta and sum(kind == "trajectory" for kind, _ in store.computed) == len(GRID) + 1
    assert_same_run(alone, batched)


@pytest.mark.parametrize("mode, lr, batch", [("full", 1e-3, GRID), ("lora", 5e-3, GRID)])
def test_a_batch_must_be_a_lora_grid_holding_the_run(llama, tmp_path, mode, lr, batch):
    name, model = llama
    with pytest.raises(ValueError, match="a batch is a LoRA grid that holds the run's LR"):
        runs.trajectory(name, "longing", mode=mode, lr=lr, steps=T, batch=batch, store=RunStore(tmp_path),
                        loader=lambda _: model)
