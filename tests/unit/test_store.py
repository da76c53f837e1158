"""Tests of the run store (SPEC §4): round trips, verification, atomicity, locking."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import pathlib
import re
import shutil
import time
import warnings

import pytest

from phantom import files
from phantom.store import KEY_ENV, NotStored, RunStore, StoreWarning, default_root, key_hash

KEY = {"model": "tiny", "lr": 1e-3, "seed": 0, "steps": 30}
OTHER_KEY = {"model": "tiny", "lr": 1e-3, "seed": 1, "steps": 30}


class Counter:
    """A compute callable that counts its calls and returns a fixed payload."""

    def __init__(self, payload: dict):
        self.payload = payload
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.payload


def stray_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Files under ``root`` that are neither entries nor lock files (e.g. temp files)."""
    return [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".json", ".lock")]


# ---------------------------------------------------------------- round trip


def test_round_trip_computes_once(tmp_path):
    rs = RunStore(tmp_path)
    compute = Counter({"loss": [0.5, 0.25], "meta": {"diverged_at": None}})

    first = rs.get_or_compute(KEY, compute)
    second = rs.get_or_compute(KEY, compute)

    assert compute.calls == 1
    assert first == second == compute.payload
    assert rs.get(KEY) == compute.payload
    record = rs.entry(KEY)
    assert record["key"] == KEY
    assert record["key_sha256"] == key_hash(KEY)
    assert record["format"] == 1
    prov = record["provenance"]
    assert prov["wall_s"] >= 0
    assert prov["created"].endswith("+00:00")
    assert prov["pid"] == os.getpid()
    assert {"python", "host"} <= prov.keys()


def test_absent_key_and_lazy_root(tmp_path):
    root = tmp_path / "not-yet"
    rs = RunStore(root)
    assert rs.root == root
    assert rs.get(KEY) is None
    assert rs.entry(KEY) is None
    assert not root.exists()


def test_requested_and_computed_are_per_instance_sets_of_kind_and_hash(tmp_path):
    rs = RunStore(tmp_path)
    assert rs.requested == set() and rs.computed == set()
    kinded = {"kind": "bulk", **KEY}
    rs.get_or_compute(kinded, lambda: {"v": 1})
    rs.get_or_compute(kinded, lambda: {"v": 2})                # served: requested again, not computed
    rs.get_or_compute(OTHER_KEY, lambda: {"v": 3})             # no kind: ""
    assert rs.requested == rs.computed == {("bulk", key_hash(kinded)), ("", key_hash(OTHER_KEY))}
    rs.get(KEY)                                                  # plain reads are not requests
    assert len(rs.requested) == 2
    absent = {"kind": "trajectory", **OTHER_KEY}
    assert rs.get(absent, count=True) is None                   # a counted read is one, stored or not
    assert rs.get(kinded, count=True) == {"v": 1}
    assert rs.requested == {("bulk", key_hash(kinded)), ("", key_hash(OTHER_KEY)), ("trajectory", key_hash(absent))}

    warm = RunStore(tmp_path)                                    # same store, new instance: warm
    warm.get_or_compute(kinded, Counter({"v": 4}))
    assert warm.requested == {("bulk", key_hash(kinded))} and warm.computed == set()

    def boom():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        warm.get_or_compute(KEY, boom)                         # failed compute: requested only
    assert ("", key_hash(KEY)) in warm.requested and warm.computed == set()


def test_payload_is_returned_as_stored(tmp_path):
    rs = RunStore(tmp_path)
    computed = rs.get_or_compute(KEY, lambda: {"pair": (1, 2)})
    assert computed == rs.get(KEY) == {"pair": [1, 2]}


def test_floats_round_trip_exactly(tmp_path):
    values = [0.1 + 0.2, 1e-300, 5e-324, float("nan"), float("inf"), float("-inf"), -0.0,
              1 / 3, 2.0**53 + 2]
    rs = RunStore(tmp_path)
    rs.get_or_compute(KEY, lambda: {"series": values})

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = RunStore(tmp_path).get(KEY)["series"]

    assert json.dumps(got) == json.dumps(values)
    assert got[0] == 0.1 + 0.2 and got[1] == 1e-300 and got[2] == 5e-324
    assert math.isnan(got[3])
    assert got[4] == math.inf and got[5] == -math.inf
    assert got[6] == 0.0 and math.copysign(1.0, got[6]) == -1.0


def test_entry_file_layout(tmp_path):
    rs = RunStore(tmp_path)
    rs.get_or_compute(KEY, lambda: {"x": 1})
    h = key_hash(KEY)
    assert rs.path(KEY) == tmp_path / h[:2] / f"{h}.json"
    assert rs.path(KEY).is_file()
    assert json.loads(rs.path(KEY).read_text())["payload"] == {"x": 1}


# ---------------------------------------------------------------- keys


def test_key_hash_is_order_independent_sha256():
    a = {"a": 1, "b": {"x": 1.5, "y": [1, 2]}}
    b = {"b": {"y": [1, 2], "x": 1.5}, "a": 1}
    assert key_hash(a) == key_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", key_hash(a))


def test_different_keys_different_files(tmp_path):
    rs = RunStore(tmp_path)
    assert key_hash(KEY) != key_hash(OTHER_KEY)
    assert rs.path(KEY) != rs.path(OTHER_KEY)
    rs.get_or_compute(KEY, lambda: {"v": 1})
    rs.get_or_compute(OTHER_KEY, lambda: {"v": 2})
    assert rs.get(KEY) == {"v": 1}
    assert rs.get(OTHER_KEY) == {"v": 2}
    assert len(list(tmp_path.rglob("*.json"))) == 2


class Sentinel:
    """A value JSON cannot represent, with a recognisable repr."""

    def __repr__(self) -> str:
        return "Sentinel()"


def test_non_json_key_names_the_value(tmp_path):
    with pytest.raises(TypeError, match=re.escape("{1, 2}")):
        key_hash({"ok": 1, "bad": {1, 2}})
    with pytest.raises(TypeError, match="Sentinel"):
        RunStore(tmp_path).get_or_compute({"bad": Sentinel()}, lambda: {"x": 1})
    with pytest.raises(TypeError):
        key_hash(["not", "a", "dict"])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_non_json_payload_is_not_written(tmp_path):
    rs = RunStore(tmp_path)
    with pytest.raises(TypeError, match="payload"):
        rs.get_or_compute(KEY, lambda: {"bad": object()})
    with pytest.raises(TypeError, match="dict"):
        rs.get_or_compute(KEY, lambda: [1, 2])
    assert not rs.path(KEY).exists()
    assert stray_files(tmp_path) == []


# ---------------------------------------------------------------- corrupt entries


def _truncate(rs: RunStore) -> None:
    path = rs.path(KEY)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _garbage(rs: RunStore) -> None:
    rs.path(KEY).write_bytes(b"\x00\xff\xfe garbage \x80")


def _tamper_payload(rs: RunStore) -> None:
    path = rs.path(KEY)
    record = json.loads(path.read_text())
    record["payload"]["v"] = 999
    path.write_text(json.dumps(record))


def _wrong_format(rs: RunStore) -> None:
    path = rs.path(KEY)
    record = json.loads(path.read_text())
    record["format"] = 2
    path.write_text(json.dumps(record))


def _other_keys_entry(rs: RunStore) -> None:
    rs.get_or_compute(OTHER_KEY, lambda: {"v": "other"})
    shutil.copyfile(rs.path(OTHER_KEY), rs.path(KEY))


CORRUPTIONS = [_truncate, _garbage, _tamper_payload, _wrong_format, _other_keys_entry]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_entry_warns_and_recomputes(tmp_path, corrupt):
    rs = RunStore(tmp_path)
    rs.get_or_compute(KEY, lambda: {"v": 1})
    corrupt(rs)

    with pytest.warns(StoreWarning, match="corrupt run-store entry"):
        assert rs.get(KEY) is None
    compute = Counter({"v": 2})
    with pytest.warns(StoreWarning, match="recomputing") as record:
        assert rs.get_or_compute(KEY, compute) == {"v": 2}
    assert compute.calls == 1
    assert len([w for w in record if w.category is StoreWarning]) == 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rs.get(KEY) == {"v": 2}
        assert rs.entry(KEY)["key"] == KEY
    assert stray_files(tmp_path) == []


# ---------------------------------------------------------------- failures and atomicity


def test_compute_raising_writes_nothing_and_releases_lock(tmp_path):
    rs = RunStore(tmp_path)

    def boom() -> dict:
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError, match="compute failed"):
        rs.get_or_compute(KEY, boom)
    assert not rs.path(KEY).exists()
    assert stray_files(tmp_path) == []

    lock = rs.path(KEY).with_suffix(".lock")
    with open(lock, "rb") as fh:  # the lock is free: a non-blocking flock succeeds
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert rs.get_or_compute(KEY, lambda: {"v": 1}) == {"v": 1}


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    rs = RunStore(tmp_path)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.warns(StoreWarning, match="could not store .*disk full"):
        assert rs.get_or_compute(KEY, lambda: {"v": 1}) == {"v": 1}   # the result is not lost
    monkeypatch.undo()

    assert not rs.path(KEY).exists()
    assert stray_files(tmp_path) == []
    assert rs.get_or_compute(KEY, lambda: {"v": 1}) == {"v": 1}
    assert stray_files(tmp_path) == []


# ---------------------------------------------------------------- concurrency (real processes)


def slow_compute(counter: str, tag: str) -> dict:
    """Record the call in ``counter``, then take about a second."""
    with open(counter, "a") as fh:
        fh.write(f"{tag} {os.getpid()}\n")
    time.sleep(1.0)
    return {"tag": tag, "pid": os.getpid()}


def _worker(root: str, key: dict, counter: str, barrier, results) -> None:
    """Process body: wait for the other worker, then look ``key`` up in the store."""
    compute = functools.partial(slow_compute, counter, key["tag"])
    barrier.wait()
    results.put(RunStore(root).get_or_compute(key, compute))


def _run_two(tmp_path: pathlib.Path, keys: list[dict]) -> tuple[list[dict], list[str], float]:
    """Run ``get_or_compute`` for each key in its own process, all at once."""
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "counter.txt"
    counter.touch()
    barrier = ctx.Barrier(len(keys))
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker,
                         args=(str(tmp_path / "store"), key, str(counter), barrier, results))
             for key in keys]
    start = time.perf_counter()
    for p in procs:
        p.start()
    payloads = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    wall = time.perf_counter() - start
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return payloads, counter.read_text().splitlines(), wall


def test_same_key_is_computed_once_across_processes(tmp_path):
    key = {"tag": "same"}
    payloads, calls, _ = _run_two(tmp_path, [key, key])
    assert len(calls) == 1
    assert payloads[0] == payloads[1]
    assert payloads[0]["pid"] == int(calls[0].split()[1])
    assert RunStore(tmp_path / "store").get(key) == payloads[0]


def test_different_keys_compute_concurrently(tmp_path):
    keys = [{"tag": "a"}, {"tag": "b"}]
    payloads, calls, wall = _run_two(tmp_path, keys)
    assert sorted(line.split()[0] for line in calls) == ["a", "b"]
    assert sorted(p["tag"] for p in payloads) == ["a", "b"]
    assert wall < 1.9, f"two 1 s computes of different keys took {wall:.2f} s: serialised?"


# ---------------------------------------------------------------- default root


def test_default_root_honours_phantom_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    assert default_root() == tmp_path / "runs"
    assert RunStore().root == tmp_path / "runs"


def test_default_root_falls_back_to_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PHANTOM_RUNS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_root() == tmp_path / ".cache" / "phantom" / "runs"


# --- issue 20: signed entries (a checksum is not authentication) -----------------------------

SECRET = b"shared secret of the store's writers"


def _forge(rs: RunStore, payload: dict) -> None:
    """What anyone who may write the store can do: replace the payload and recompute its checksum."""
    path = rs.path(KEY)
    record = json.loads(path.read_text())
    record["payload"] = payload
    record["payload_sha256"] = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"))
                                              .encode()).hexdigest()
    path.write_text(json.dumps(record))


def test_a_forged_entry_verifies_without_a_key(tmp_path):
    rs = RunStore(tmp_path)
    rs.get_or_compute(KEY, Counter({"x": 1}))
    _forge(rs, {"x": 666})
    assert RunStore(tmp_path).get(KEY) == {"x": 666}     # the checksum alone cannot tell


def test_with_a_key_a_forged_entry_is_refused_recomputed_and_signed_again(tmp_path):
    signed = RunStore(tmp_path, secret=SECRET)
    signed.get_or_compute(KEY, Counter({"x": 1}))
    assert "hmac_sha256" in json.loads(signed.path(KEY).read_text())
    _forge(signed, {"x": 666})
    again = Counter({"x": 1})
    with pytest.warns(StoreWarning, match="signature does not verify under \\$PHANTOM_STORE_KEY"):
        assert RunStore(tmp_path, secret=SECRET).get_or_compute(KEY, again) == {"x": 1}
    assert again.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RunStore(tmp_path, secret=SECRET).get(KEY) == {"x": 1}   # re-signed: served quietly


@pytest.mark.parametrize("writer", [None, b"another secret"], ids=["unsigned", "other-key"])
def test_with_a_key_an_entry_not_signed_with_it_is_not_served(tmp_path, writer):
    RunStore(tmp_path, secret=writer).get_or_compute(KEY, Counter({"x": 1}))
    reader = RunStore(tmp_path, secret=SECRET)
    with pytest.warns(StoreWarning, match="unsigned entry" if writer is None else "does not verify"):
        assert reader.get(KEY) is None
    with pytest.raises(NotStored):   # a read-only view (the claim suite's) counts it as absent
        RunStore(tmp_path, read_only=True, secret=SECRET).get_or_compute(KEY, Counter({}))
    assert RunStore(tmp_path).get(KEY) == {"x": 1}   # without a key, signatures are not checked


def test_the_key_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET.decode())
    RunStore(tmp_path).get_or_compute(KEY, Counter({"x": 1}))
    record = json.loads(RunStore(tmp_path).path(KEY).read_text())
    assert record["hmac_sha256"] == hmac.new(SECRET, f"1:{key_hash(KEY)}:{record['payload_sha256']}".encode(),
                                             hashlib.sha256).hexdigest()
    monkeypatch.setenv(KEY_ENV, "")
    assert RunStore(tmp_path).secret is None


# --- issue 20: a read-only store serves what it holds ----------------------------------------

@pytest.fixture
def read_only_store(tmp_path, read_only_view):
    """A store holding KEY's entry whose directory this process cannot write: a read-only bind
    mount as root (permission bits do not stop root), ``chmod a-w`` otherwise."""
    base = tmp_path / "base"
    RunStore(base).get_or_compute(KEY, Counter({"x": 1}))
    if os.geteuid() == 0:
        yield read_only_view(base)
        return
    for path in [base, *base.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield base
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_store_serves_its_entries_and_refuses_a_miss_in_one_line(read_only_store):
    rs = RunStore(read_only_store)
    rs.check()                                            # usable: no error up front
    assert rs.unwritable and "not a writable directory" in rs.unwritable
    assert rs.get_or_compute(KEY, Counter({"x": 2})) == {"x": 1}
    missing = Counter({"y": 1})
    with pytest.raises(files.UnusablePath) as err:
        RunStore(read_only_store).get_or_compute(OTHER_KEY, missing)
    message = str(err.value)
    assert missing.calls == 0 and "\n" not in message
    assert message.startswith(f"run store '{read_only_store}' is not a writable directory: ")
    assert message.endswith("its entry entry is missing and cannot be stored")   # KEY has no "kind"


def test_a_store_root_that_is_a_file_is_still_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(files.UnusablePath, match="is not a writable directory"):
        RunStore(tmp_path / "f").check()
