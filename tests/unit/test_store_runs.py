"""Tests of the trajectory part of the run store (:func:`phantom.store.trajectory`, SPEC §4).

A run's key holds everything that determines it; a warm store answers without loading any
model; a run asked for by several processes is computed once. Every run here is a SmolLM2
LoRA run of 2–3 steps; the module loads SmolLM2 once and hands it to ``trajectory`` through
a counting loader, so "a model load" is a loader call.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from phantom import contexts, dynamics, store, zoo
from phantom.store import RunStore
from phantom.trajectory import SERIES, Trajectory

SMOL = "smollm2-135m"
CONTEXT = "quiet"
BASE = dict(mode="lora", lr=1e-3, steps=3, seed=0)
HEX64 = re.compile(r"[0-9a-f]{64}")
UNUSABLE = contexts.Context("odd", "We need to", ("begin", "antidisestablishmentarianism"))

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]




class LoaderCalled(Exception):
    """Raised by :class:`NoLoad`: the store tried to load a model."""


class NoLoad:
    """A loader that must not be called (a warm store needs no model)."""

    def __call__(self, name):
        raise LoaderCalled(name)


class Counting:
    """A loader handing out an already loaded model and counting the calls."""

    def __init__(self, loaded):
        self.loaded, self.calls = loaded, []

    def __call__(self, name):
        self.calls.append(name)
        return self.loaded


class SpyStore(RunStore):
    """A RunStore recording every key asked for."""

    def __init__(self, root):
        super().__init__(root)
        self.keys = []

    def get_or_compute(self, key, compute):
        self.keys.append(key)
        return super().get_or_compute(key, compute)


def assert_same_trajectory(a: Trajectory, b: Trajectory):
    assert set(a.series) == set(b.series)
    for name in SERIES:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert a.meta == b.meta


def entries(root: Path, kind: str) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(Path(root).rglob("*.json"))]
    return [r for r in records if r["key"]["kind"] == kind]


@pytest.fixture(scope="module")
def smol():
    return zoo.load(SMOL)


@pytest.fixture(scope="module")
def cold(smol, tmp_path_factory):
    """The base run computed once into a fresh store, counting loads and computes."""
    root = tmp_path_factory.mktemp("runs")
    loader, runs = Counting(smol), []
    real_run = dynamics.run

    def counted_run(*args, **kwargs):
        runs.append(real_run(*args, **kwargs))
        return runs[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamics, "run", counted_run)
        traj = store.trajectory(SMOL, CONTEXT, **BASE, store=RunStore(root), loader=loader)
    return {"root": root, "traj": traj, "loader": loader, "runs": runs}


def test_cold_store_computes_once(cold, smol):
    assert len(cold["runs"]) == 1
    assert cold["loader"].calls and set(cold["loader"].calls) == {SMOL}
    traj = cold["traj"]
    assert isinstance(traj, Trajectory)
    assert traj.steps == BASE["steps"] and len(traj["loss"]) == BASE["steps"] + 1
    # the stored trajectory is the computed one, exactly (floats survive JSON)
    assert_same_trajectory(traj, cold["runs"][0])
    assert traj.meta["weights_sha256"] == smol.info.weights_sha256
    assert (traj.meta["mode"], traj.meta["lr"], traj.meta["seed"]) == ("lora", BASE["lr"], BASE["seed"])


def test_warm_store_answers_without_loading(cold, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a warm store must not load a model")

    monkeypatch.setattr(zoo, "load", no_load)
    monkeypatch.setattr(dynamics, "run", no_load)
    again = store.trajectory(SMOL, CONTEXT, **BASE, store=RunStore(cold["root"]), loader=NoLoad())
    assert_same_trajectory(again, cold["traj"])
    # the same run spelled differently is the same key
    spelled = store.trajectory(SMOL, contexts.get(CONTEXT), mode="lora", lr=np.float64(1e-3), steps=3,
                               store=RunStore(cold["root"]), loader=NoLoad())
    assert_same_trajectory(spelled, cold["traj"])


@pytest.mark.parametrize("change", [
    {"lr": 3e-4}, {"mode": "full"}, {"steps": 2}, {"seed": 1}, {"context": "begin"},
])
def test_changed_argument_is_a_new_key(cold, smol, change):
    """Each changed argument misses the warm store (the loader is asked for the model)."""
    spy = SpyStore(cold["root"])
    before = sorted(Path(cold["root"]).rglob("*.json"))
    args = {"context": CONTEXT, **BASE, **change}
    context = args.pop("context")
    if "context" in change:
        # a new context misses the orientation first
        with pytest.raises(LoaderCalled):
            store.trajectory(SMOL, context, **args, store=spy, loader=NoLoad())
        assert spy.keys[-1]["kind"] == "orientation" and spy.keys[-1]["context"]["id"] == context
    else:
        with pytest.raises(LoaderCalled):
            store.trajectory(SMOL, context, **args, store=spy, loader=NoLoad())
        orient_key, key = spy.keys
        assert orient_key["kind"] == "orientation" and key["kind"] == "trajectory"
        base_key = entries(cold["root"], "trajectory")[0]["key"]
        (name, value), = change.items()
        assert {k for k in key if key[k] != base_key[k]} == {name}
        assert key[name] == value
        assert store.key_hash(key) != store.key_hash(base_key)
    assert sorted(Path(cold["root"]).rglob("*.json")) == before   # a failed compute writes nothing


def test_entry_on_disk(cold, smol):
    records = entries(cold["root"], "trajectory")
    assert len(records) == 1
    record = records[0]
    key, pair = record["key"], cold["runs"][0].meta
    assert key["weights_sha256"] == smol.info.weights_sha256 == store.weights_sha256(SMOL)
    assert HEX64.fullmatch(key["weights_sha256"])
    assert key["orientation"] == [pair["g_word"], pair["c_word"]]
    assert key["context"] == {"id": CONTEXT, "text": contexts.get(CONTEXT).text,
                              "pair": list(contexts.get(CONTEXT).pair)}
    assert (key["mode"], key["lr"], key["steps"], key["seed"]) == ("lora", 1e-3, 3, 0)
    assert key["protocol_version"] == dynamics.PROTOCOL_VERSION
    assert key["code_sha256"] == store.code_sha256() and HEX64.fullmatch(key["code_sha256"])
    import peft
    import torch
    import transformers
    assert {k: key["versions"][k] for k in ("torch", "transformers", "peft")} == {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    assert key["versions"] == store.versions()
    prov = record["provenance"]
    assert {"created", "wall_s", "python", "host", "pid"} <= set(prov)
    assert prov["pid"] == os.getpid() and prov["wall_s"] > 0
    assert record["key_sha256"] == store.key_hash(key)
    assert Trajectory.from_dict(record["payload"]).meta == cold["traj"].meta
    # the orientation is its own cached entry
    orient = entries(cold["root"], "orientation")
    assert len(orient) == 1
    assert orient[0]["key"]["weights_sha256"] == key["weights_sha256"]
    assert (orient[0]["payload"]["g_word"], orient[0]["payload"]["c_word"]) == tuple(key["orientation"])


def test_code_sha256_tracks_the_sources():
    digest = store.code_sha256()
    assert HEX64.fullmatch(digest) and digest == store.code_sha256()
    assert set(store._CODE) >= {"dynamics.py", "geometry.py", "contexts.py", "trajectory.py"}


def test_orientation_is_cached(smol, tmp_path):
    rs = RunStore(tmp_path)
    loader = Counting(smol)
    pair = store.orientation(SMOL, contexts.get(CONTEXT), store=rs, loader=loader)
    assert loader.calls == [SMOL]
    assert pair == contexts.orient(CONTEXT, smol)
    assert pair.p_g0 < pair.p_c0                       # "quiet" is rank-contested on SmolLM2
    assert store.orientation(SMOL, contexts.get(CONTEXT), store=rs, loader=NoLoad()) == pair


def test_unusable_context_is_cached(smol, tmp_path):
    rs = RunStore(tmp_path)
    loader = Counting(smol)
    with pytest.raises(contexts.ContextUnusable, match="antidisestablishmentarianism") as first:
        store.orientation(SMOL, UNUSABLE, store=rs, loader=loader)
    assert loader.calls == [SMOL]
    (record,) = entries(tmp_path, "orientation")
    assert record["payload"] == {"unusable": str(first.value)}
    with pytest.raises(contexts.ContextUnusable) as second:
        store.orientation(SMOL, UNUSABLE, store=rs, loader=NoLoad())
    assert str(second.value) == str(first.value)
    with pytest.raises(contexts.ContextUnusable):           # a run of it fails the same way, unloaded
        store.trajectory(SMOL, UNUSABLE, **BASE, store=rs, loader=NoLoad())
    assert entries(tmp_path, "trajectory") == []


# --------------------------------------------------------------------------------------
# Two processes, one computation
# --------------------------------------------------------------------------------------

MP_RUN = dict(mode="lora", lr=1e-3, steps=2, seed=0)


class LoggingLoader:
    """Loads through the zoo (once per process), appending ``load <pid>`` to a log."""

    def __init__(self, log):
        self.log, self.loaded = log, None

    def __call__(self, name):
        with open(self.log, "a") as f:
            f.write(f"load {os.getpid()}\n")
        if self.loaded is None:
            self.loaded = zoo.load(name)
        return self.loaded


def _child(root, log, barrier, out):
    """One process asking the store for the run; it logs each compute and each load."""
    real_run = dynamics.run

    def logged_run(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"run {os.getpid()}\n")
        return real_run(*args, **kwargs)

    dynamics.run = logged_run
    torch.set_num_threads(1)
    barrier.wait(timeout=300)
    traj = store.trajectory(SMOL, CONTEXT, **MP_RUN, store=RunStore(root), loader=LoggingLoader(log))
    Path(out).write_text(json.dumps(traj.to_dict()))


def test_two_processes_compute_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root, log = tmp_path / "runs", tmp_path / "log.txt"
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_child, args=(str(root), str(log), barrier, str(out))) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=500)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2]))
    assert sum(e[0] == "run" for e in events) == 1               # computed once
    assert 1 <= sum(e[0] == "load" for e in events) <= 2          # orientation + run, at most
    a, b = (Trajectory.from_dict(json.loads(out.read_text())) for out in outs)
    assert_same_trajectory(a, b)
    assert len(a["loss"]) == MP_RUN["steps"] + 1 and a.diverged_at is None
    assert len(entries(root, "trajectory")) == 1 and len(entries(root, "orientation")) == 1


@pytest.mark.parametrize("mode, heavy", [("full", True), ("lora", False)])
def test_heavy_full_ft_runs_one_at_a_time(tmp_path, monkeypatch, mode, heavy):
    """Full FT of a model above HEAVY_PARAMS holds the machine-wide heavy lock while it runs."""
    import fcntl

    import tiny_models
    model_dir = str(tiny_models.build_tiny("llama", tmp_path / "tiny"))
    runs = store.RunStore(tmp_path / "runs")
    monkeypatch.setattr(store, "HEAVY_PARAMS", 0)
    seen = []
    real_run = dynamics.run

    def probing_run(*args, **kwargs):
        with open(runs.root / ".heavy-full-ft.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(dynamics, "run", probing_run)
    store.trajectory(model_dir, "tired", mode=mode, lr=1e-3, steps=1, store=runs, loader=zoo.load)
    assert seen == [heavy]
