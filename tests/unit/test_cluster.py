"""Issue 20: the Ray session of `phantom campaign --executor ray` (phantom.cluster).

The ``ray`` tests run the real command in a subprocess on a tiny model, each starting its
own private cluster: Ctrl-C and SIGTERM stop it within a bound, exit 128 + signal with one
line, and leave no process behind (none of those it had started, and no second cluster);
every socket its processes listen on is bound to loopback; an --address where nothing
listens is one line within seconds.
"""
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import tiny_models

from phantom import cluster

ROOT = Path(__file__).resolve().parents[2]
STOP_S = cluster.GRACE_S + 10     # the bound on exiting after a signal (interpreter exit included)


def closed_port() -> int:
    """A TCP port of 127.0.0.1 on which nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text", ["auto", "127.0.0.1:6379", "head-node.example:1", "ray://10.0.0.2:10001",
                                  "[::1]:6379"])
def test_parse_address_accepts_ray_addresses(text):
    assert cluster.parse_address(text) == text


@pytest.mark.parametrize("text", ["", "local", "host", "host:", ":6379", "host:0", "host:65536", "host:6379 ",
                                  "a b:1", "http://host:1", "host:12a"])
def test_parse_address_rejects_anything_else_in_one_line(text):
    with pytest.raises(ValueError, match="not a Ray address") as err:
        cluster.parse_address(text)
    assert "\n" not in str(err.value)


def test_probe_names_an_address_where_nothing_listens_at_once():
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(cluster.ExecutorError, match=f"no Ray cluster at 127.0.0.1:{port}: cannot connect"):
        cluster.probe(f"127.0.0.1:{port}")
    assert time.monotonic() - start < cluster.CONNECT_S


@pytest.mark.ray
def test_probe_of_auto_follows_ray_address(monkeypatch):
    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(cluster.ExecutorError, match=rf"no Ray cluster at auto \([0-9.]+:{port}\): cannot connect"):
        cluster.probe("auto")


def test_probe_passes_a_listening_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cluster.probe(f"127.0.0.1:{s.getsockname()[1]}")


# --- the real command, in a subprocess --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(tiny_models.build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="module")
def tiny_models_list(tiny_model, tmp_path_factory) -> str:
    """Two tiny models, ``a,b``: the driver runs one thread per model."""
    return f"{tiny_model},{tiny_models.build_tiny('gpt2', tmp_path_factory.mktemp('tiny') / 'gpt2')}"


def _env(root: Path) -> dict:
    return {**os.environ, "PHANTOM_RUNS": str(root), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _campaign(model: str, root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phantom", "campaign", "--models", model, "--budget",
                             "standard", "--executor", "ray", *extra], env=_env(root), cwd=root.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _descendants_once(proc: subprocess.Popen, prefix: str, timeout: float = 180.0) -> list[psutil.Process]:
    """Every descendant of ``proc`` once one's command line starts with ``prefix``: ``gcs_server``
    (Ray is starting) or ``ray::_worker`` (a worker runs a task)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        procs = psutil.Process(proc.pid).children(recursive=True)
        names = []
        for p in procs:
            try:
                names += [p.name(), " ".join(p.cmdline())]
            except psutil.Error:
                pass
        if any(n.startswith(prefix) for n in names):
            return procs
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {prefix} process within {timeout:g} s: {proc.communicate()[1][-2000:]}")


def _non_loopback_listeners(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr)
            ip = ipaddress.ip_address(c.laddr.ip.split("%")[0]) if c.laddr else None
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if listening and not ip.is_loopback:
                out.append(f"{p.name()} (pid {p.pid}) listens on {c.laddr.ip}:{c.laddr.port}")
    return out


def _started_by(root: Path) -> list[str]:
    """Every live process whose environment names this test's store: the campaign and all it started."""
    out = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get("PHANTOM_RUNS") == str(root) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.info['name']} (pid {p.pid}, parent {p.ppid()})")
        except psutil.Error:
            pass
    return out


@pytest.mark.ray
@pytest.mark.parametrize("phase", ["running", "starting"])
@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_the_campaign_and_every_process_it_started(signum, status, word, phase, tiny_models_list,
                                                                  tmp_path):
    """While tasks run, or while ``ray.init`` starts the cluster (its GCS is up, the rest not yet)."""
    root = tmp_path / "runs"
    proc = _campaign(tiny_models_list, root)
    procs = _descendants_once(proc, "ray::_worker" if phase == "running" else "gcs_server")
    if phase == "running":    # the private cluster: loopback only
        assert _non_loopback_listeners([psutil.Process(proc.pid), *procs]) == []
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {STOP_S:g} s after {signum.name}: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == status, err[-2000:]
    assert time.monotonic() - sent < STOP_S
    lines = err.strip().splitlines()
    assert lines[-1] == f"phantom: error: {word}", err[-2000:]
    cancelling = [line for line in lines if line.startswith(f"phantom: {signum.name}: cancelling")]
    assert len(cancelling) == (phase == "running"), err[-2000:]
    assert "SIGTERM handler is not set" not in err and "Traceback" not in err
    gone, alive = psutil.wait_procs(procs, timeout=5)
    assert alive == [], [f"{p.pid} {p.name()}" for p in alive]
    assert _started_by(root) == []        # nothing started afterwards either (no second Ray cluster)


@pytest.mark.ray
def test_an_address_where_nothing_listens_is_one_line_within_seconds(tiny_model, tmp_path):
    port = closed_port()
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "phantom", "campaign", "--models", tiny_model, "--budget", "quick",
                           "--executor", "ray", "--address", f"127.0.0.1:{port}"], env=_env(tmp_path / "runs"),
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    errors = [line for line in done.stderr.splitlines() if line.startswith("phantom: error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert f"no Ray cluster at 127.0.0.1:{port}: cannot connect" in errors[0]
    assert "Traceback" not in done.stderr
