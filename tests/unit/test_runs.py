"""Tests of the run layer (:mod:`phantom.runs`, SPEC §4): its key builder and its cached runs.

The key builder and the layering are checked without any model: every kind's code hash
follows exactly the sources listed for it, and the maths layer imports no model layer.

Then the runs themselves (``slow``): a run's key holds everything that determines it; a warm
store answers without loading any model; a run asked for by several processes is computed
once. Every run there is a SmolLM2 LoRA run of 2–3 steps; the module loads SmolLM2 once and
hands it to ``trajectory`` through a counting loader, so "a model load" is a loader call.
"""
from __future__ import annotations

import ast
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from phantom import contexts, dynamics, runs, store, zoo
from phantom.protocol import PROTOCOL_VERSION
from phantom.store import RunStore
from phantom.trajectory import SERIES, Trajectory

SMOL = "smollm2-135m"
CONTEXT = "quiet"
BASE = dict(mode="lora", lr=1e-3, steps=3, seed=0)
HEX64 = re.compile(r"[0-9a-f]{64}")
UNUSABLE = contexts.Context("odd", "We need to", ("begin", "antidisestablishmentarianism"))


def slow(test):
    """Mark a test that loads SmolLM2 or fine-tunes a model (one torch thread for the module)."""
    return pytest.mark.slow(pytest.mark.usefixtures("one_torch_thread")(test))


# --- the key builder ---------------------------------------------------------------------

MODULES = sorted(p.name for p in runs.PACKAGE.glob("*.py"))


@pytest.fixture
def package(tmp_path):
    """A copy of the phantom package's sources (no bytecode), to edit freely."""
    copy = tmp_path / "phantom"
    shutil.copytree(runs.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize("kind", list(runs.ROOTS))
def test_code_sha256_covers_exactly_the_derived_sources(package, kind):
    listed = {f"{m}.py" for m in runs.sources(kind)}
    assert listed <= set(MODULES), f"{kind} derives modules that do not exist"
    base = runs.code_sha256(kind, package=package)
    assert HEX64.fullmatch(base) and base == runs.code_sha256(kind)      # the copy hashes as the package
    for module in MODULES:
        path = package / module
        source = path.read_bytes()
        path.write_bytes(source + b"\n# an edit\n")
        try:
            changed = runs.code_sha256(kind, package=package)
        finally:
            path.write_bytes(source)
        if module in listed:
            assert changed != base, f"editing {module} leaves the {kind} hash unchanged"
        else:
            assert changed == base, f"editing {module} (not a {kind} source) changes the {kind} hash"
    assert runs.code_sha256(kind, package=package) == base


def test_sources_are_the_transitive_imports_of_the_computing_module():
    assert runs.sources("trajectory") == ("contexts", "dynamics", "geometry", "heap", "protocol", "runs",
                                          "trajectory")
    assert {"critical", "search", "laws"} <= set(runs.sources("critical_lrs"))   # the η_i search's code
    # a critical_lrs entry is served without reading its runs again: the code that made them is in its key
    assert set(runs.sources("trajectory")) <= set(runs.sources("critical_lrs"))
    assert "store" not in runs.sources("trajectory") and "zoo" not in runs.sources("trajectory")


def test_moving_a_function_to_a_new_module_changes_the_key(package):
    """The bisection's kind of bug: code moved to a new file must not serve stale entries."""
    before = {kind: runs.code_sha256(kind, package=package) for kind in runs.ROOTS}
    dynamics = package / "dynamics.py"
    text = dynamics.read_text()
    body = text[text.index("def lora_targets("):text.index("def _real(")]
    (package / "targets.py").write_text("from .protocol import STEPS  # noqa: F401\n\n\n" + body)
    imports = "from . import geometry, heap"
    dynamics.write_text(text.replace(body, "").replace(imports, imports + "\nfrom .targets import lora_targets"))
    assert "targets" in runs.sources("trajectory", package)
    moved = {kind: runs.code_sha256(kind, package=package) for kind in runs.ROOTS}
    assert all(moved[k] != before[k] for k in ("trajectory", "blind_r", "critical_lrs"))
    assert moved["bulk"] == before["bulk"] and moved["orientation"] == before["orientation"]
    (package / "targets.py").write_text((package / "targets.py").read_text() + "\n# an edit\n")
    assert runs.code_sha256("trajectory", package=package) != moved["trajectory"]


@pytest.mark.parametrize("kind", ["", "Trajectory", "runs", "critical-lr", "laws"])
def test_unknown_kind_is_refused_by_name(kind, monkeypatch):
    monkeypatch.setattr(runs, "weights_sha256", lambda model: "w" * 64)
    with pytest.raises(ValueError, match=f"unknown run-store entry kind {re.escape(repr(kind))}"):
        runs.code_sha256(kind)
    with pytest.raises(ValueError, match=re.escape(repr(kind))):
        runs.key(kind, "some-model")


def test_key_holds_kind_weights_fields_code_and_versions(monkeypatch):
    monkeypatch.setattr(runs, "weights_sha256", lambda model: f"weights-of-{model}")
    key = runs.key("blind_r", "m", context="quiet", orientation=["g", "c"])
    assert key == {"kind": "blind_r", "weights_sha256": "weights-of-m", "context": "quiet",
                   "orientation": ["g", "c"], "code_sha256": runs.code_sha256("blind_r"),
                   "versions": runs.versions()}
    import peft
    import transformers
    assert runs.versions() == {"torch": torch.__version__, "transformers": transformers.__version__,
                               "peft": peft.__version__, "python": sys.version.split()[0]}
    assert store.key_hash(key) != store.key_hash(runs.key("blind_r", "n", context="quiet", orientation=["g", "c"]))
    bulk = runs.key("bulk", "m")
    assert bulk["code_sha256"] == runs.code_sha256("bulk") != key["code_sha256"]


# --- layering ------------------------------------------------------------------------------

def module_imports(path: Path) -> set[str]:
    """The phantom modules ``path`` imports when it is imported (not inside functions)."""
    found = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("phantom"):
                found.update([node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("phantom."))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", [])
                      + [s for h in getattr(node, "handlers", []) for s in h.body])

    visit(ast.parse(path.read_text()).body)
    return found


def test_no_import_cycle():
    graph = {p.stem: module_imports(p) for p in runs.PACKAGE.glob("*.py")}
    assert graph["laws"] == {"protocol"} and graph["files"] == set() and graph["protocol"] == set()
    assert "runs" in graph["campaign"] and "campaign" not in graph["runs"]
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(f"import cycle: {' → '.join(path[path.index(module):] + [module])}")
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


MODEL_LAYER = ("phantom.zoo", "phantom.dynamics", "phantom.store", "phantom.runs", "phantom.campaign",
         "transformers", "peft")


def test_the_maths_layer_imports_no_model_layer():
    code = ("import json, sys; import phantom.laws, phantom.geometry, phantom.transitions; "
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=runs.PACKAGE.parent, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(runs.PACKAGE.parent)})
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert {"phantom.laws", "phantom.geometry", "phantom.transitions", "phantom.protocol"} <= loaded
    assert [m for m in MODEL_LAYER if m in loaded] == []


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

    def get_or_compute(self, key, compute, validate=None):
        self.keys.append(key)
        return super().get_or_compute(key, compute, validate)


def assert_same_trajectory(a: Trajectory, b: Trajectory):
    assert set(a.series) == set(b.series)
    for name in SERIES:
        assert a[name].tobytes() == b[name].tobytes(), name
    assert a.meta == b.meta


def entries(root: Path, kind: str) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(Path(root).rglob("*.json"))]
    return [r for r in records if r["key"]["kind"] == kind]


@pytest.fixture(scope="module")
def cold(smol, tmp_path_factory):
    """The base run computed once into a fresh store, counting loads and computes."""
    root = tmp_path_factory.mktemp("runs")
    loader, computed = Counting(smol), []
    real_run = dynamics.run

    def counted_run(*args, **kwargs):
        computed.append(real_run(*args, **kwargs))
        return computed[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamics, "run", counted_run)
        traj = runs.trajectory(SMOL, CONTEXT, **BASE, store=RunStore(root), loader=loader)
    return {"root": root, "traj": traj, "loader": loader, "runs": computed}


@slow
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


@slow
def test_warm_store_answers_without_loading(cold, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("a warm store must not load a model")

    monkeypatch.setattr(zoo, "load", no_load)
    monkeypatch.setattr(dynamics, "run", no_load)
    again = runs.trajectory(SMOL, CONTEXT, **BASE, store=RunStore(cold["root"]), loader=NoLoad())
    assert_same_trajectory(again, cold["traj"])
    # the same run spelled differently is the same key
    spelled = runs.trajectory(SMOL, contexts.get(CONTEXT), mode="lora", lr=np.float64(1e-3), steps=3,
                               store=RunStore(cold["root"]), loader=NoLoad())
    assert_same_trajectory(spelled, cold["traj"])


@slow
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
            runs.trajectory(SMOL, context, **args, store=spy, loader=NoLoad())
        assert spy.keys[-1]["kind"] == "orientation" and spy.keys[-1]["context"]["id"] == context
    else:
        with pytest.raises(LoaderCalled):
            runs.trajectory(SMOL, context, **args, store=spy, loader=NoLoad())
        orient_key, key = spy.keys
        assert orient_key["kind"] == "orientation" and key["kind"] == "trajectory"
        base_key = entries(cold["root"], "trajectory")[0]["key"]
        (name, value), = change.items()
        assert {k for k in key if key[k] != base_key[k]} == {name}
        assert key[name] == value
        assert store.key_hash(key) != store.key_hash(base_key)
    assert sorted(Path(cold["root"]).rglob("*.json")) == before   # a failed compute writes nothing


@slow
def test_entry_on_disk(cold, smol):
    records = entries(cold["root"], "trajectory")
    assert len(records) == 1
    record = records[0]
    key, pair = record["key"], cold["runs"][0].meta
    assert key["weights_sha256"] == smol.info.weights_sha256 == runs.weights_sha256(SMOL)
    assert HEX64.fullmatch(key["weights_sha256"])
    assert key["orientation"] == [pair["g_word"], pair["c_word"]]
    assert key["context"] == {"id": CONTEXT, "text": contexts.get(CONTEXT).text,
                              "pair": list(contexts.get(CONTEXT).pair)}
    assert (key["mode"], key["lr"], key["steps"], key["seed"]) == ("lora", 1e-3, 3, 0)
    assert key["protocol_version"] == PROTOCOL_VERSION
    assert key["code_sha256"] == runs.code_sha256("trajectory") and HEX64.fullmatch(key["code_sha256"])
    import peft
    import torch
    import transformers
    assert {k: key["versions"][k] for k in ("torch", "transformers", "peft")} == {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    assert key["versions"] == runs.versions()
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


@slow
def test_orientation_is_cached(smol, tmp_path):
    rs = RunStore(tmp_path)
    loader = Counting(smol)
    pair = runs.orientation(SMOL, contexts.get(CONTEXT), store=rs, loader=loader)
    assert loader.calls == [SMOL]
    assert pair == contexts.orient(CONTEXT, smol)
    assert pair.p_g0 < pair.p_c0                       # "quiet" is rank-contested on SmolLM2
    assert runs.orientation(SMOL, contexts.get(CONTEXT), store=rs, loader=NoLoad()) == pair


@slow
def test_unusable_context_is_cached(smol, tmp_path):
    rs = RunStore(tmp_path)
    loader = Counting(smol)
    with pytest.raises(contexts.ContextUnusable, match="antidisestablishmentarianism") as first:
        runs.orientation(SMOL, UNUSABLE, store=rs, loader=loader)
    assert loader.calls == [SMOL]
    (record,) = entries(tmp_path, "orientation")
    assert record["payload"] == {"unusable": str(first.value)}
    with pytest.raises(contexts.ContextUnusable) as second:
        runs.orientation(SMOL, UNUSABLE, store=rs, loader=NoLoad())
    assert str(second.value) == str(first.value)
    with pytest.raises(contexts.ContextUnusable):           # a run of it fails the same way, unloaded
        runs.trajectory(SMOL, UNUSABLE, **BASE, store=rs, loader=NoLoad())
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
    traj = runs.trajectory(SMOL, CONTEXT, **MP_RUN, store=RunStore(root), loader=LoggingLoader(log))
    Path(out).write_text(json.dumps(traj.to_dict()))


@slow
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


@slow
@pytest.mark.parametrize("mode, solo", [("full", True), ("lora", False)])
def test_solo_full_ft_runs_one_at_a_time(tmp_path, monkeypatch, mode, solo):
    """Full FT of a model above SOLO_PARAMS holds the machine-wide solo lock while it runs."""
    import fcntl

    import tiny_models
    model_dir = str(tiny_models.build_tiny("llama", tmp_path / "tiny"))
    rs = RunStore(tmp_path / "runs")
    monkeypatch.setattr(runs, "SOLO_PARAMS", 0)
    seen = []
    real_run = dynamics.run

    def probing_run(*args, **kwargs):
        with open(rs.root / ".solo-full-ft.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(dynamics, "run", probing_run)
    runs.trajectory(model_dir, "tired", mode=mode, lr=1e-3, steps=1, store=rs, loader=zoo.load)
    assert seen == [solo]
