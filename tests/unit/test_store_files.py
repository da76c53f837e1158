"""phantom.store and phantom.files on a hostile file system: unusable store/cache directories and lock files are
one clear error, an unwritable entry never loses a computed run, stale leftovers are swept, locks
are never followed through symlinks and a blocked process says what it waits for."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_models
from cli_helpers import run_cli

from phantom import files, runs, store, zoo
from phantom.store import RunStore, StoreWarning
from phantom.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[2]
KEY = {"kind": "test", "x": 1}
OLD = time.time() - 2 * files.STALE_S


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(tiny_models.build_tiny("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2"))


def tiny_run(model: str, out: Path, *extra) -> list[str]:
    return ["run", "--model", model, "--context", "longing", "--mode", "full", "--lr", "1e-3", "--steps", "2",
            "--out", str(out), *extra]


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


# ---------------------------------------------------------------- unusable roots: one line, up front

@pytest.mark.parametrize("where", ["proc", "file"])
@pytest.mark.parametrize("env, what", [("PHANTOM_RUNS", "run store"), ("PHANTOM_CACHE", "model cache")])
def test_unusable_store_or_cache_root_is_one_line(tmp_path, monkeypatch, capsys, where, env, what):
    root = Path("/proc/x") if where == "proc" else a_file(tmp_path)
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PHANTOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(env, str(root))
    monkeypatch.setattr(zoo, "describe", lambda *a, **k: pytest.fail("nothing may load before the check"))
    code, errors, _ = run_cli(tiny_run("smollm2-135m", tmp_path / "out"), capsys)
    shown = root / "models" if env == "PHANTOM_CACHE" else root
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(f"phantom: error: {what} {str(shown)!r} is not a writable directory: ")


def test_unusable_store_root_is_a_clear_exception_from_the_library(tmp_path):
    root = a_file(tmp_path)
    with pytest.raises(files.UnusablePath, match=f"run store '{root}' is not a writable directory"):
        RunStore(root).get_or_compute(KEY, lambda: pytest.fail("must not compute"))
    with pytest.raises(files.UnusablePath, match=f"model cache '{root}/models' is not a writable directory"):
        zoo.cached_entry("smollm2-135m", cache_dir=root)


def test_read_only_cache_directory_is_one_line(tmp_path, monkeypatch, capsys, read_only_view):
    """A cache directory the user may not write (as root, chmod 0500 would not stop us: a read-only
    bind mount does; without the privilege to mount, this case is covered by the file case above)."""
    base = tmp_path / "base"
    (base / "models").mkdir(parents=True)
    ro = read_only_view(base)
    monkeypatch.setenv("PHANTOM_CACHE", str(ro))
    code, errors, _ = run_cli(tiny_run("smollm2-135m", tmp_path / "out"), capsys)
    assert code == 1
    assert errors == [f"phantom: error: model cache '{ro}/models' is not a writable directory: "
                      "Read-only file system"]


# ---------------------------------------------------------------- an unwritable entry loses nothing

def test_entry_that_cannot_be_written_still_returns_the_result(tmp_path):
    rs = RunStore(tmp_path)
    rs.path(KEY).mkdir(parents=True)            # the entry path is a directory
    with pytest.warns(StoreWarning) as record:
        assert rs.get_or_compute(KEY, lambda: {"v": 1}) == {"v": 1}
    assert any("could not store run-store entry" in str(w.message) for w in record)
    assert rs.path(KEY).is_dir()


def test_cli_run_whose_entry_cannot_be_written_still_writes_out(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    assert run_cli(tiny_run(tiny, tmp_path / "first"), capsys)[0] == 0
    entries = [p for p in (tmp_path / "runs").glob("*/*.json")
               if json.loads(p.read_text())["key"]["kind"] == "trajectory"]
    assert len(entries) == 1
    entries[0].unlink()
    entries[0].mkdir()                          # the trajectory's entry path is now a directory
    code, errors, err = run_cli(tiny_run(tiny, tmp_path / "second"), capsys)
    assert code == 0 and errors == []
    warnings = [line for line in err.splitlines() if line.startswith("phantom: warning:")]
    stored = [line for line in warnings if f"could not store run-store entry {entries[0]}" in line]
    assert len(stored) == 1 and stored[0].endswith("Is a directory; the result is returned but not cached")
    first, second = (json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in ("first", "second"))
    assert second["series"] == first["series"]
    assert second["source"] == "run store (computed now)"


# ---------------------------------------------------------------- locks

def test_lock_path_that_is_a_directory_is_a_clear_error(tmp_path):
    rs = RunStore(tmp_path)
    lock = rs.path(KEY).with_suffix(".lock")
    lock.mkdir(parents=True)
    with pytest.raises(files.UnusablePath, match=f"cannot use the lock file '{lock}': Is a directory"):
        rs.get_or_compute(KEY, lambda: pytest.fail("must not compute"))


def test_model_cache_lock_that_is_a_directory_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHANTOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    runs.model_info.cache_clear()
    lock = tmp_path / "cache" / "models" / ".smollm2-135m.lock"
    lock.mkdir(parents=True)
    code, errors, _ = run_cli(tiny_run("smollm2-135m", tmp_path / "out"), capsys)
    assert code == 1
    assert errors == [f"phantom: error: cannot use the lock file '{lock}': Is a directory"]


def test_symlinked_lock_is_refused_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    lock = tmp_path / "x.lock"
    lock.symlink_to(target)
    with pytest.raises(files.UnusablePath, match=f"cannot use the lock file '{lock}': Too many levels"):
        with files.exclusive_lock(lock):
            pass
    assert target.read_text() == "precious"


HOLDER = """
import sys, time
from pathlib import Path
from phantom import files
with files.exclusive_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_blocked_process_says_once_what_it_waits_for(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "entry.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "2.0"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(files, "LOCK_NOTICE_S", 0.3)
        start = time.perf_counter()
        with files.exclusive_lock(lock, "the test entry"):
            waited = time.perf_counter() - start
    finally:
        holder.wait(timeout=30)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("phantom: waiting")]
    assert waited > 0.5
    assert notices == [f"phantom: waiting for the test entry (lock {lock}, held by pid {holder.pid}) …"]


# ---------------------------------------------------------------- stale leftovers are swept

def test_stale_temp_files_are_swept_by_the_next_write(tmp_path):
    stale, fresh = tmp_path / ".x.json.phantom-abc.tmp", tmp_path / ".x.json.phantom-def.tmp"
    foreign = tmp_path / ".notes.tmp"           # an old hidden .tmp file that is not phantom's
    for path in (stale, fresh, foreign):
        path.write_text("partial")
    os.utime(stale, (OLD, OLD))
    os.utime(foreign, (OLD, OLD))
    files.write_atomic(tmp_path / "x.json", "{}")
    assert not stale.exists()
    assert fresh.exists()                       # may belong to a live writer
    assert foreign.exists()
    assert (tmp_path / "x.json").read_text() == "{}"


@pytest.fixture
def fake_offline(tmp_path, monkeypatch, tiny):
    """An offline zoo entry ``fake`` whose "GGUF conversion" loads the tiny model (no weights package)."""
    loaded = zoo.load(tiny)
    monkeypatch.setitem(zoo.OFFLINE, "fake", zoo.OfflineModel((), "", lambda scratch: scratch / "fake.gguf"))
    monkeypatch.setattr(zoo, "_from_pretrained", lambda *a, **k: (loaded.model, loaded.tokenizer))
    return tmp_path / "cache"


def test_stale_build_folders_are_swept_by_the_next_build(fake_offline):
    models = fake_offline / "models"
    stale, fresh = models / ".fake.build-dead", models / ".other.build-live"
    for folder in (stale, fresh):
        (folder / "entry").mkdir(parents=True)
        (folder / "entry" / "model.safetensors").write_bytes(b"\0" * 1024)
    os.utime(stale, (OLD, OLD))
    entry, info = zoo.cached_entry("fake", cache_dir=fake_offline)
    assert not stale.exists()
    assert fresh.exists()
    assert (entry / zoo.MANIFEST).is_file() and info.name == "fake"


def test_symlinked_cache_entry_is_rebuilt_without_touching_its_target(fake_offline, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the cache's")
    entry = fake_offline / "models" / "fake"
    entry.parent.mkdir(parents=True)
    entry.symlink_to(elsewhere)
    built, _ = zoo.cached_entry("fake", cache_dir=fake_offline)
    assert built == entry and entry.is_dir() and not entry.is_symlink()
    assert (elsewhere / "keep.txt").read_text() == "not the cache's"


# ---------------------------------------------------------------- a verified but invalid payload

@pytest.mark.parametrize("payload", [{}, "drop g_max", "diverged soon"])
def test_entry_with_fresh_hash_but_invalid_payload_is_recomputed(tiny, tmp_path, payload):
    rs = RunStore(tmp_path / "runs")
    traj = runs.trajectory(tiny, "longing", mode="full", lr=1e-3, steps=2, store=rs)
    path = next(p for p in rs.root.glob("*/*.json") if json.loads(p.read_text())["key"]["kind"] == "trajectory")
    record = json.loads(path.read_text())
    if payload == "drop g_max":
        del record["payload"]["meta"]["g_max"]
    elif payload == "diverged soon":
        record["payload"]["meta"]["diverged_at"] = "soon"
    else:
        record["payload"] = payload
    record["payload_sha256"] = store._sha256(store._canonical(record["payload"], "payload"))  # a tamperer's
    path.write_text(json.dumps(record))
    with pytest.warns(StoreWarning, match="invalid payload"):
        again = runs.trajectory(tiny, "longing", mode="full", lr=1e-3, steps=2, store=rs,
                                loader=lambda name: zoo.load(name))
    assert json.dumps(again.to_dict()["series"]) == json.dumps(traj.to_dict()["series"])   # NaN-safe
    assert Trajectory.from_dict(json.loads(path.read_text())["payload"]).g_max == traj.g_max
