"""Unit tests of phantom.executor and `phantom campaign`, on tiny local models.

Tests marked ``ray`` share one local Ray cluster (2 CPUs, 100 MB object store, every server
bound to 127.0.0.1), started once per session. xdist workers would each start one, so there
they skip with the command to run them: ``pytest tests/unit -m ray -p no:xdist``. Ray
missing is an error, not a skip.
"""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_models

from phantom import campaign as cmp
from phantom import claims, cli, cluster, dynamics, executor, files, plans, runs, store, zoo

ROOT = Path(__file__).resolve().parents[2]
# Small enough for seconds per model, large enough for saturation fits and an η_c bisection.
PLAN = plans.Plan(sweep=(2e-5, 2e-4), extended=(5e-6,), lora=(1e-3,), steps=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """Two tiny models (untied Llama, tied GPT-2) as local directories."""
    folder = tmp_path_factory.mktemp("tiny")
    return [str(tiny_models.build_tiny(arch, folder / arch)) for arch in ("llama", "gpt2")]


@pytest.fixture(scope="module")
def local(tiny, tmp_path_factory, one_torch_thread):
    """Both tiny campaigns computed by the local executor: (store root, progress events, results)."""
    root, events = tmp_path_factory.mktemp("local"), []
    done = executor.compute([cmp.Campaign(m, PLAN, store.RunStore(root)) for m in tiny], "local",
                            progress=events.append)
    return root, events, done


def refuse(model):
    raise AssertionError(f"{model} was loaded: the store lacks an entry")


def reader(models, root) -> list[cmp.Campaign]:
    """Campaigns over a store that must hold everything: they never load a model."""
    return [cmp.Campaign(m, PLAN, store.RunStore(root), loader=refuse) for m in models]


def payloads(root: Path) -> dict[str, str]:
    """key sha256 → canonical payload of every entry, the run's own wall time left out."""
    out = {}
    for path in sorted(root.glob("*/*.json")):
        record = json.loads(path.read_text())
        payload = record["payload"]
        payload.get("meta", {}).pop("wall_s", None)   # dynamics.run's timing: the one varying field
        out[record["key_sha256"]] = json.dumps(payload, sort_keys=True)
    return out


def verdicts(campaigns) -> list[str]:
    """Every claim verdict the claim suite reaches on these campaigns (as text), and the laws table."""
    out = [c.check(camp) for c in claims.CLAIMS if c.scope == "model" for camp in campaigns]
    out += [c.check(campaigns) for c in claims.CLAIMS if c.scope == "zoo"]
    return [repr(v) for v in out] + [repr(cmp.laws_table(campaigns))]


# --- resources, fingerprint, executor choice ---------------------------------------------------

def _info(n_params: int) -> zoo.ModelInfo:
    return zoo.ModelInfo("m", "llama", n_params, 1000, 64, False, "0" * 64)


def test_resources_of_smollm2_are_its_measured_peaks():
    smol = _info(executor.SMOLLM2_PARAMS)
    for kind, mode, work in [("trajectory", "full", "full"), ("trajectory", "lora", "lora"),
                             ("blind_r", None, "blind"), ("orientation", None, "forward"), ("bulk", None, "forward")]:
        assert executor.resources(smol, kind, mode) == {"num_cpus": 1, "memory": executor.PEAK_RSS[work]}


def test_resources_scale_with_parameters_and_ask_for_gpus_and_the_solo_unit():
    qwen = _info(630_167_424)
    full = executor.resources(qwen, "trajectory", "full", "cuda:0")
    assert full["num_gpus"] == 1 and full["resources"] == {executor.SOLO: 1}
    assert 14e9 < full["memory"] < 17e9                       # ≈ 14 GB observed on Qwen2.5-0.5B
    lora = executor.resources(qwen, "trajectory", "lora", "cuda")
    assert 0 < lora["num_gpus"] < 1 and "resources" not in lora
    assert "num_gpus" not in executor.resources(qwen, "trajectory", "full", "cpu")
    assert "resources" not in executor.resources(_info(runs.SOLO_PARAMS), "trajectory", "full")
    assert "resources" in executor.resources(_info(runs.SOLO_PARAMS + 1), "trajectory", "full")
    assert "num_gpus" not in executor.resources(qwen, "bulk", None, "cuda")   # statistics stay on CPU


def test_every_task_kind_is_a_run_store_kind_with_a_known_work():
    assert set(executor.KINDS) <= set(runs.ROOTS)
    assert {k.work for k in executor.KINDS.values()} - {None} <= set(executor.PEAK_RSS)
    assert [name for name, k in executor.KINDS.items() if k.work is None] == ["trajectory"]   # its mode
    with pytest.raises(ValueError, match="unknown task kind 'orientations'; known: orientation, bulk"):
        executor.resources(_info(executor.SMOLLM2_PARAMS), "orientations")
    with pytest.raises(ValueError, match="unknown task kind 'orientations'; known: orientation, bulk"):
        executor.execute(executor.Task("m", "orientations", {}, {}), store=None)


def test_a_grids_later_runs_come_in_the_second_wave(tiny, tmp_path):
    c = cmp.Campaign(tiny[0], plans.Plan(lora=(1e-4, 1e-3)), store.RunStore(tmp_path))
    tasks = [executor.run_task(c, mode, lr, context) for mode, lr, context in c.planned()]
    first, later = executor.waves(tasks)
    assert sorted(map(str, first + later)) == sorted(map(str, tasks))
    assert [(t.args["lr"], t.args["batch"]) for t in later] == [(1e-3, (1e-4, 1e-3))] * len(c.usable)
    assert all(t.args["batch"] is None or t.args["lr"] == 1e-4 for t in first)


def test_a_cold_grid_counts_every_run_computed(tiny, tmp_path, one_torch_thread):
    """Its first run computes the whole grid: its later runs, found stored, were computed here too."""
    plan = plans.Plan(sweep=(2e-5,), extended=(), lora=(1e-4, 1e-3), eta_c=False, steps=2)
    (cold,) = executor.compute([cmp.Campaign(tiny[0], plan, store.RunStore(tmp_path))], "local")
    contexts_n = len(cmp.Campaign(tiny[0], plan, store.RunStore(tmp_path)).usable)
    assert cold.computed == cold.done == cold.planned == (1 + 2) * contexts_n    # η_ref; the 2 LoRA LRs
    (warm,) = executor.compute([cmp.Campaign(tiny[0], plan, store.RunStore(tmp_path))], "local")
    assert warm.computed == 0 and warm.cached == cold.planned


def test_fingerprint_differences_name_each_field():
    here = executor.fingerprint()
    assert set(here) >= {"torch", "transformers", "peft", "python"} | {f"code_sha256[{k}]" for k in runs.ROOTS}
    assert set(here) >= {"numpy", "numpy_blas", "tokenizers", "safetensors", "gguf", "store_key"} | \
        {f"source_sha256[{m}]" for m in ("heap", "zoo", "store", "executor")}
    assert all(here[f"code_sha256[{k}]"] == runs.code_sha256(k) for k in runs.ROOTS)   # the store keys' hashes
    assert executor.differences(here, dict(here)) == ""
    other = {**here, "torch": "0.0.1", "code_sha256[bulk]": "f" * 64}
    diff = executor.differences(here, other)
    assert f"torch {here['torch']} (driver) ≠ 0.0.1 (worker)" in diff and "code_sha256[bulk]" in diff
    assert "peft" not in diff and "\n" not in diff


def test_make_executor_rejects_unknown_names_and_an_address_without_ray():
    with pytest.raises(ValueError, match="'dask'"):
        executor.make_executor("dask")
    with pytest.raises(ValueError, match="needs the ray executor"):
        executor.make_executor("local", "auto")
    assert isinstance(executor.make_executor("local"), executor.LocalExecutor)


def test_ray_executor_without_ray_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    with pytest.raises(executor.ExecutorError, match=r"\[cluster\]") as err:
        executor.make_executor("ray")
    assert executor.INSTALL in str(err.value)


# --- the run key holds the device ---------------------------------------------------------------

def test_a_cpu_run_is_never_served_for_another_device(tmp_path, tiny, one_torch_thread):
    s = store.RunStore(tmp_path)
    cpu = runs.trajectory(tiny[0], "longing", mode="lora", lr=1e-3, steps=2, store=s)
    cpu.meta.pop("wall_s")
    (entry,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/*.json")
                if json.loads(p.read_text())["key"]["kind"] == "trajectory"]
    assert entry["key"]["device"] == "cpu" and entry["key"]["dtype"] == "float32"
    again = runs.trajectory(tiny[0], "longing", mode="lora", lr=1e-3, steps=2, device="cpu:0", store=s)
    again.meta.pop("wall_s")
    assert json.dumps(again.to_dict()) == json.dumps(cpu.to_dict())   # same device type: served
    with pytest.raises((RuntimeError, AssertionError)):   # not served: computed on "meta" and failing
        runs.trajectory(tiny[0], "longing", mode="lora", lr=1e-3, steps=2, device="meta", store=s)
    with pytest.raises(ValueError, match="'nope'"):
        runs.trajectory(tiny[0], "longing", mode="lora", lr=1e-3, steps=2, device="nope", store=s)


def test_check_device_accepts_cpu_and_names_an_unusable_device():
    cli.check_device("cpu")
    for device in ("no-such-device", "meta"):
        with pytest.raises(cli.CliError, match=f"device '{device}' is not usable"):
            cli.check_device(device)


# --- the local executor -------------------------------------------------------------------------

def test_local_compute_fills_the_store_with_everything_a_claims_session_reads(local, tiny):
    root, events, done = local
    for model, final in zip(tiny, done):
        planned = len(cmp.Campaign(model, PLAN, store.RunStore(root)).planned())
        assert final.model == model and final.finished and final.stage == "done"
        assert final.done == final.planned == final.computed > planned   # the adaptive runs count too
        mine = [e for e in events if e.model == model]
        assert [e.done for e in mine] == sorted(e.done for e in mine)
        assert any(e.eta_s is not None and e.eta_s > 0 for e in mine)
    assert [e.model for e in events] == sorted((e.model for e in events), key=tiny.index)   # one after another
    entries = {p.stem: json.loads(p.read_text())["key"]["kind"] for p in root.glob("*/*.json")}
    assert sorted(set(entries.values())) == ["blind_r", "bulk", "critical_lrs", "orientation", "trajectory"]
    verdicts(reader(tiny, root))                     # every claim input is there: nothing is loaded
    again = executor.compute([cmp.Campaign(m, PLAN, store.RunStore(root)) for m in tiny], "local")
    assert [a.computed for a in again] == [0, 0]                        # η_i entries cached: no probe
    assert all(a.cached >= len(cmp.Campaign(m, PLAN, store.RunStore(root)).planned()) for a, m in zip(again, tiny))
    assert {p.stem for p in root.glob("*/*.json")} == set(entries)


def test_an_interrupted_campaign_resumes_where_it_stopped(local, tiny, tmp_path, monkeypatch):
    """Ctrl-C in the 7th run: the next session computes only what is missing, to the same bits."""
    real, made = dynamics.run, []

    def interrupted(*args, **kwargs):
        if len(made) == 6:
            raise KeyboardInterrupt
        made.append(real(*args, **kwargs))
        return made[-1]

    root = tmp_path / "runs"
    with monkeypatch.context() as m:
        m.setattr(dynamics, "run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            executor.compute([cmp.Campaign(t, PLAN, store.RunStore(root)) for t in tiny], "local")
    assert not list(root.rglob("*.tmp"))                       # nothing half-written
    stored = {p.stem for p in root.glob("*/*.json")}
    resumed = executor.compute([cmp.Campaign(t, PLAN, store.RunStore(root)) for t in tiny], "local")
    assert resumed[0].cached == 6                              # the six runs made before are read back
    assert sum(p.computed for p in resumed) == sum(p.computed for p in local[2]) - 6
    assert stored <= {p.stem for p in root.glob("*/*.json")}
    assert payloads(root) == payloads(local[0])                # the whole store, as if never interrupted


def test_campaign_command_in_a_pipe_prints_one_line_per_model(local, tiny, monkeypatch, capsys):
    root, _, done = local
    monkeypatch.setenv("PHANTOM_RUNS", str(root))
    monkeypatch.setattr(cmp, "plan_for", lambda budget, info: PLAN)
    assert cli.main(["campaign", "--models", ",".join(tiny), "--budget", "quick"]) == 0
    out = capsys.readouterr().out          # not a terminal: one line per model, when it is done
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert len(lines) == 2
    for line, model in zip(lines, tiny):
        n = re.match(rf"{re.escape(model)}  \[#{{20}}\] (\d+)/\1 runs \(0 computed, \1 cached\)  done", line)
        assert n and int(n.group(1)) >= len(cmp.Campaign(model, PLAN).planned())   # adaptive runs read too


@pytest.mark.parametrize("argv, message", [
    (["--executor", "local", "--address", "auto"], "--address auto needs --executor ray"),
    (["--models", "no-such-model"], "no-such-model"),
])
def test_campaign_command_usage_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path))
    assert cli.main(["campaign", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("phantom: error:") and message in err


def test_campaign_command_without_ray_names_the_install_command(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path))
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["campaign", "--models", tiny[0], "--budget", "quick", "--executor", "ray"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and executor.INSTALL in err


def test_live_display_redraws_one_line_per_model(capsys):
    display = cli.ProgressDisplay(sys.stdout, live=True)
    p = executor.ModelProgress("a", "runs", 1, 4, 1, 0, 10.0, 30.0, False)
    display(p)
    display(dataclasses.replace(p, model="b"))
    display(dataclasses.replace(p, done=4, computed=4, stage="done", finished=True))
    out = capsys.readouterr().out
    assert re.findall(r"\x1b\[(\d+)F", out) == ["1", "2"]            # back over a; then over a and b
    frames = re.split(r"\x1b\[\d+F", out)
    assert [f.count("\n") for f in frames] == [1, 2, 2]
    last = frames[-1].split("\n")
    assert "a  [####################] 4/4 runs (4 computed, 0 cached)  done" in last[0]
    assert "b  [#####...............] 1/4 runs" in last[1] and "ETA 30s" in last[1]


# --- on a local Ray cluster ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster per session, bound to 127.0.0.1, with one solo-run unit."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("Ray tests start one cluster per session: run them apart, without xdist: "
                    "pytest tests/unit -m ray -p no:xdist")
    ray = cluster.import_ray(private=True)   # every server on loopback, even if Ray was imported already
    ray.init(address="local", _node_ip_address=cluster.LOOPBACK, num_cpus=2, object_store_memory=100 * 2**20,
             include_dashboard=False, resources={executor.SOLO: 1}, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'unit'}"}})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_the_cluster_binds_only_on_loopback(ray_cluster):
    nodes = ray_cluster.nodes()
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")


@pytest.mark.ray
def test_ray_campaign_writes_the_local_executor_entries_and_verdicts(ray_cluster, tiny, local, tmp_path):
    local, remote = local[0], tmp_path / "ray"
    done = executor.compute([cmp.Campaign(m, PLAN, store.RunStore(remote)) for m in tiny], "ray")
    assert all(p.finished and p.computed == p.done == p.planned for p in done)
    ours, theirs = payloads(local), payloads(remote)
    planned = sum(len(cmp.Campaign(m, PLAN, store.RunStore(local)).planned()) for m in tiny)
    assert len(ours) > planned and set(theirs) == set(ours)    # every run, and the entries beside them
    assert [k for k in ours if ours[k] != theirs[k]] == []
    searches = [json.loads(ours[k]) for k in ours if '"seen"' in ours[k]]       # each context's η_i search (A2)
    grid = set(PLAN.sweep) | set(PLAN.extended)
    usable = sum(len(cmp.Campaign(m, PLAN, store.RunStore(local)).usable) for m in tiny)
    assert len(searches) >= usable and all(lr not in grid for e in searches for lr in e["probes"])
    assert sum(len(e["probes"]) for e in searches) >= usable      # the searches ran probes on the workers
    assert verdicts(reader(tiny, remote)) == verdicts(reader(tiny, local))
    provenance = {json.loads(p.read_text())["provenance"]["pid"] for p in remote.glob("*/*.json")}
    assert os.getpid() in provenance and len(provenance) >= 3   # η_c here; runs on ≥ 2 workers


def _one_run(tiny, root) -> tuple[cmp.Campaign, executor.Task]:
    """A campaign with its orientations in the store, and the task of one of its runs."""
    c = cmp.Campaign(tiny[0], plans.Plan(steps=10), store.RunStore(root))
    list(executor.LocalExecutor().run(c, [executor.orientations_task(c)]))
    return c, executor.run_task(c, "full", 2e-5, "longing")


def _faulty(ray, name: str, retries: int = 0) -> executor.RayExecutor:
    """A Ray executor whose workers run :mod:`ray_faults`' ``name``."""
    import ray_faults
    ex = executor.RayExecutor(max_retries=retries)
    ex.remote = ray.remote(max_retries=retries, retry_exceptions=True)(getattr(ray_faults, name))
    return ex


def _entries_verify(root: Path) -> None:
    for path in root.glob("*/*.json"):
        assert store._load(path, path.stem) is not None     # raises on a partial or corrupt entry


@pytest.mark.ray
@pytest.mark.parametrize("fault", ["raise_mid_run", "die_mid_write"])
def test_a_failing_task_is_retried_and_stores_nothing_partial(fault, ray_cluster, tiny, tmp_path,
                                                             one_torch_thread):
    c, task = _one_run(tiny, tmp_path / "runs")
    (done,) = _faulty(ray_cluster, fault, 1).run(c, [task])
    attempts = (tmp_path / "attempts").read_text().split()
    assert done.computed and len(attempts) == 2 and (tmp_path / "first").exists()
    if fault == "die_mid_write":
        assert len(set(attempts)) == 2                         # the first worker process died
        assert list((tmp_path / "runs").glob("*/.*.tmp"))      # … leaving its temporary file
    _entries_verify(tmp_path / "runs")
    reference = runs.trajectory(c.model, "longing", mode="full", lr=2e-5, steps=10, stop=c.plan.stop,
                                store=store.RunStore(tmp_path / "local"))
    served = c.run("full", 2e-5, "longing")
    reference.meta.pop("wall_s"), served.meta.pop("wall_s")
    assert json.dumps(served.to_dict()) == json.dumps(reference.to_dict())


@pytest.mark.ray
def test_a_task_failing_every_attempt_stores_nothing(ray_cluster, tiny, tmp_path):
    c, task = _one_run(tiny, tmp_path / "runs")
    before = set((tmp_path / "runs").glob("*/*"))
    with pytest.raises(executor.ExecutorError, match="failed after 0 retries: RuntimeError: injected fault"):
        list(_faulty(ray_cluster, "raise_mid_run").run(c, [task]))
    assert {p for p in (tmp_path / "runs").glob("*/*") if p.suffix != ".lock"} == \
        {p for p in before if p.suffix != ".lock"}


@pytest.mark.ray
def test_a_worker_with_other_code_refuses(ray_cluster, tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ROOT / "phantom", other)
    files.write_atomic(other / "dynamics.py", (ROOT / "phantom" / "dynamics.py").read_text() + "\n# changed\n")
    c, task = _one_run(tiny, tmp_path / "runs")
    before = set((tmp_path / "runs").glob("*/*.json"))
    with pytest.raises(executor.EnvironmentMismatch) as err:
        list(_faulty(ray_cluster, "other_code").run(c, [task]))
    message = str(err.value)
    assert "\n" not in message and "refuses" in message and "code_sha256[trajectory]" in message
    assert "code_sha256[bulk]" not in message and "torch" not in message   # same versions, other code
    assert set((tmp_path / "runs").glob("*/*.json")) == before


def _warm_worker() -> int:
    """Occupy a worker for a second after its first-task imports (fingerprint: peft, transformers)."""
    executor.fingerprint()
    time.sleep(1.0)
    return os.getpid()


@pytest.mark.ray
def test_solo_runs_never_overlap_on_a_node(ray_cluster, tiny, tmp_path, monkeypatch):
    plan = plans.Plan(steps=15, stop="never", batch_lora=False)   # the LoRA runs: 4 tasks of their own
    c = cmp.Campaign(tiny[0], plan, store.RunStore(tmp_path))
    list(executor.LocalExecutor().run(c, [executor.orientations_task(c)]))
    monkeypatch.setattr(runs, "SOLO_PARAMS", 0)            # every full fine-tune is solo (driver side)
    solo = [executor.run_task(c, "full", lr, "longing") for lr in (1e-5, 2e-5, 3e-5, 4e-5)]
    light = [executor.run_task(c, "lora", lr, "longing") for lr in (1e-4, 2e-4, 3e-4, 4e-4)]
    assert all(t.resources.get("resources") == {executor.SOLO: 1} for t in solo)
    warm = ray_cluster.remote(num_cpus=1)(_warm_worker)
    assert len(set(ray_cluster.get([warm.remote(), warm.remote()]))) == 2   # two workers, imports done
    done = list(executor.RayExecutor().run(c, [t for pair in zip(solo, light) for t in pair]))
    assert all(d.computed for d in done)
    spans = sorted((d.start, d.end, d.node) for d in done if d.task in solo)
    assert len(spans) == 4
    for (_, end, node), (start, _, other) in zip(spans, spans[1:]):
        assert node != other or end <= start, f"solo runs overlap: {spans}"
    every = sorted((d.start, d.end) for d in done)
    assert any(b[0] < a[1] for a, b in zip(every, every[1:])), f"no two tasks ever ran at once: {every}"


@pytest.mark.ray
def test_a_task_no_node_can_run_is_reported_at_once(ray_cluster, tiny, tmp_path):
    c, task = _one_run(tiny, tmp_path / "runs")
    ex = executor.RayExecutor()
    on_gpu = executor.run_task(cmp.Campaign(c.model, c.plan, c.store, device="cuda"), "lora", 1e-3, "longing")
    huge = dataclasses.replace(task, resources={**task.resources, "memory": 10**15})
    for bad, needs in [(on_gpu, "GPU: 0.25"), (huge, "memory: 1e+15")]:
        with pytest.raises(executor.ExecutorError, match="no node of the Ray cluster can run") as err:
            list(ex.run(c, [task, bad]))
        assert needs in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "runs").glob("*/*.json")) or all(
        json.loads(p.read_text())["key"]["kind"] == "orientation" for p in (tmp_path / "runs").glob("*/*.json"))


_FINGERPRINT = """
import json, sys
from pathlib import Path
from phantom import executor
before = executor.fingerprint()
if len(sys.argv) > 1:
    path = Path(executor.__file__).parent / "dynamics.py"
    path.write_text(path.read_text() + "\\n# edited after import\\n")
print(json.dumps([before, executor.fingerprint()]))
"""


def test_fingerprint_hashes_the_code_as_imported_not_as_on_disk_now(tmp_path):
    """Editing a module after import changes neither the process's code nor its fingerprint; the
    next process, which imports the edited file, has another."""
    shutil.copytree(ROOT / "phantom", tmp_path / "phantom")

    def run(*argv) -> list[dict]:
        out = subprocess.run([sys.executable, "-c", _FINGERPRINT, *argv], capture_output=True, text=True,
                             check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
        return json.loads(out.stdout)

    before, after_edit = run("edit")
    assert after_edit == before
    (fresh, _) = run()
    assert executor.differences(before, fresh).startswith("code_sha256[blind_r]")
    assert {k for k in before if before[k] != fresh[k]} == {f"code_sha256[{k}]" for k in
                                                          ("blind_r", "critical_lrs", "trajectory")}


def test_a_worker_refuses_a_driver_with_another_store_key(monkeypatch):
    driver = executor.fingerprint()
    monkeypatch.setenv(store.KEY_ENV, "a secret the driver lacks")
    diff = executor.differences(driver, executor.fingerprint())
    assert diff.startswith("store_key none (driver) ≠ ") and "secret" not in diff
