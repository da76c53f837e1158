"""The Ray connection of a campaign: a private cluster on loopback or a user's, closed once, its processes reaped.

:class:`phantom.executor.RayExecutor` runs its tasks through a :class:`Session` (README: Run on
a cluster, Securing a cluster):

- A private one-node cluster (no ``--address``) binds every listener to 127.0.0.1: the GCS,
  the raylet, the workers, the agents, the minimal dashboard head Ray keeps without its UI.
  Nothing on the network can reach it.
- ``--address HOST:PORT`` is probed first (a TCP connect within :data:`CONNECT_S`): an address
  where nothing answers is one line, not a hang. That cluster's network is the user's.
- Every Ray call of the driver's threads goes through :meth:`Session.call`, which refuses once
  the session is stopping: nothing calls Ray after :meth:`Session.close`, so nothing starts
  a second cluster on the way out.
- :func:`run_jobs` runs the driver's jobs (one per model) in threads while the main thread
  waits for them, so Ctrl-C and SIGTERM reach it: it stops the jobs, cancels the running
  tasks, closes the session within :data:`GRACE_S` and raises :class:`Terminated` (a
  :class:`KeyboardInterrupt`); every process the session started is gone by then.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

LOOPBACK = "127.0.0.1"
CONNECT_S = 10.0   # an --address whose GCS port does not accept a connection within this is refused
GRACE_S = 15.0     # after an interrupt: running tasks are cancelled and Ray is down within this
POLL_S = 0.1       # ray.wait's timeout: how often a driver thread looks at the stop flag
INSTALL = "pip install -c requirements/lock.txt -e '.[cluster]'"
_ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


class ExecutorError(Exception):
    """A task failed after its retries, or the cluster cannot run it (one-line message)."""


class Terminated(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a Ray campaign; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopped(Exception):
    """A driver thread asked Ray for something after its session began to stop (the thread ends)."""


def parse_address(text: str) -> str:
    """``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (port 1–65535), else ValueError naming it."""
    m = _ADDRESS.fullmatch(text)
    if text == "auto" or (m and 1 <= int(m["port"]) <= 65535):
        return text
    raise ValueError(f"not a Ray address (auto, HOST:PORT or ray://HOST:PORT): {text!r}")


def import_ray(private: bool = False):
    """The ``ray`` module; ``private``: its servers bind to loopback (:data:`LOOPBACK`).

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when imported; ``0`` makes the node's
    address, and so every server's listening address, 127.0.0.1. The variable is set for
    the processes the cluster starts too, and the constant patched if Ray was imported already.
    """
    if private:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"the ray executor needs Ray, an optional extra: {INSTALL}") from None
    if private:
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


def probe(address: str, timeout: float = CONNECT_S) -> None:
    """Raise :class:`ExecutorError` unless the GCS port of ``address`` accepts a TCP connection.

    ``auto`` is the address Ray would use ($RAY_ADDRESS, else the cluster ``ray start`` last
    recorded); when there is none, ``ray.init`` says so at once.
    """
    shown = address
    if address == "auto":
        try:
            from ray._private import services
            address = services.canonicalize_bootstrap_address("auto") or ""
        except Exception:  # noqa: BLE001 - no cluster recorded, or another Ray: ray.init reports it
            return
        if not address:
            return
        shown = f"auto ({address})"
    m = _ADDRESS.fullmatch(address)
    if m is None:
        raise ExecutorError(f"not a Ray address (auto, HOST:PORT or ray://HOST:PORT): {address!r}")
    host, port = m["host"].strip("[]"), int(m["port"])
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ExecutorError(f"no Ray cluster at {shown}: cannot connect to {host}:{port} within "
                            f"{timeout:g} s ({reason})") from None


def _descendants() -> list:
    """Every process this one started, directly or not (psutil; [] without it)."""
    try:
        import psutil
        return psutil.Process().children(recursive=True)
    except (ImportError, OSError):
        return []


def _reap(procs: list, timeout: float) -> None:
    """Wait ``timeout`` for ``procs`` to exit, then kill the survivors (orphaned agents included)."""
    if not procs:
        return
    import psutil
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


class Session:
    """This process's Ray connection; it starts a private loopback cluster when ``address`` is None.

    Parameters
    ----------
    address : str, optional
        A user's cluster (probed first). None: a private one-node cluster, unless Ray is
        initialised already (then that one is used and left running: the session does not own it).
    resources : dict
        Custom resources of the private cluster's node.
    """

    def __init__(self, address: str | None = None, resources: dict | None = None):
        ray = self.ray = import_ray(private=address is None)
        self.owned = not ray.is_initialized()
        self.stop, self.closed = threading.Event(), False
        self.cond, self.active = threading.Condition(), 0   # Ray calls in flight, guarded by cond
        self.pending: set = set()     # object refs of the tasks submitted and not yet collected
        if not self.owned:
            return
        self.before = {p.pid for p in _descendants()}   # processes that are not the session's to reap
        common = dict(log_to_driver=False, logging_level="WARNING")
        if address is not None:
            probe(address)
        caught: list[int] = []
        try:
            with _deferred(caught, ray):   # an exception raised inside ray.init could leave its locks held
                if address is None:
                    ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                             resources=resources or {}, **common)
                else:
                    ray.init(address=address, **common)
        except BaseException:
            self.closed = True
            self._shutdown()
            raise
        if caught:               # Ctrl-C or SIGTERM while Ray started: what it started goes too
            self.closed = True
            self._shutdown()
            raise Terminated(caught[0])

    def _shutdown(self, timeout: float = GRACE_S) -> None:
        procs = [p for p in _descendants() if p.pid not in self.before]
        if self.ray.is_initialized():
            self.ray.shutdown()
        _reap(procs, timeout / 3)

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` — a Ray call — unless the session is stopping (then :class:`Stopped`)."""
        with self.cond:
            if self.stop.is_set():
                raise Stopped()
            self.active += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def interrupt(self) -> int:
        """Refuse every further Ray call of the driver's threads and cancel the running tasks; their number."""
        with self.cond:
            self.stop.set()
            pending, self.pending = list(self.pending), set()
            if self.closed:
                return 0
        for ref in pending:
            try:
                self.ray.cancel(ref, force=True)   # kills the worker: its entry is written atomically or not
            except Exception:  # noqa: BLE001 - a task that already finished cannot be cancelled
                pass
        return len(pending)

    def close(self, timeout: float = GRACE_S) -> None:
        """Shut Ray down once (an owned session), after the Ray calls in flight, and reap every
        process it left; idempotent."""
        with self.cond:
            self.stop.set()
            if self.closed:
                return
            self.closed = True
            self.cond.wait_for(lambda: self.active == 0, timeout / 3)   # ray.wait returns within POLL_S
        if self.owned:
            self._shutdown(timeout)


class _Job(threading.Thread):
    """A daemon thread running ``fn()``, keeping its result or exception."""

    def __init__(self, fn: Callable):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err


@contextlib.contextmanager
def _deferred(caught: list[int], ray) -> Iterator[None]:
    """In the main thread, SIGINT and SIGTERM are only recorded in ``caught`` for the block, and
    ``ray.init`` may not install its SIGTERM handler (``sys.exit`` from wherever init is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    setter = getattr(utils, "set_sigterm_handler", None)
    if setter is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if setter is not None:
            utils.set_sigterm_handler = setter
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def signals() -> Iterator[None]:
    """In the main thread, SIGINT and SIGTERM raise :class:`Terminated` for the block (Ray's own
    SIGTERM handler, set by ``ray.init``, would exit without a word); elsewhere, nothing."""
    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _wait(jobs: Sequence[_Job]) -> None:
    """Until every job ends or one fails; Ctrl-C and SIGTERM raise :class:`Terminated` here."""
    while any(j.is_alive() for j in jobs):
        if any(j.error is not None and not isinstance(j.error, Stopped) for j in jobs):
            return
        for j in jobs:
            j.join(POLL_S)


def run_jobs(session: Session, jobs: Sequence[Callable]) -> list:
    """Run ``jobs`` (each calling Ray through ``session``) in threads; their results, in order.

    A failing job stops the others and its exception is raised. SIGINT or SIGTERM (in the
    main thread) stops the jobs, cancels the running tasks, closes the session within
    :data:`GRACE_S` (saying so on stderr) and raises :class:`Terminated`. The session is
    closed when this returns or raises.
    """
    threads = [_Job(fn) for fn in jobs]
    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        with signals():      # again: ray.init has set its own SIGTERM handler since
            for t in threads:
                t.start()
            _wait(threads)
    except KeyboardInterrupt as err:
        for s in before:     # a second Ctrl-C must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        try:
            n = session.interrupt()
            print(f"phantom: {signal.Signals(signum).name}: cancelling {n} running Ray task{'' if n == 1 else 's'} "
                  f"and shutting Ray down (at most {GRACE_S:g} s) …", file=sys.stderr, flush=True)
            _finish(session, threads)
        finally:
            for s, handler in before.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
        raise Terminated(signum) from None
    finally:
        _finish(session, threads)
    failed = [t.error for t in threads if t.error is not None and not isinstance(t.error, Stopped)]
    if failed:
        raise failed[0]
    return [t.result for t in threads]


def _finish(session: Session, threads: Sequence[_Job]) -> None:
    """Stop the jobs, give them :data:`GRACE_S` / 3 to return, close the session."""
    session.interrupt()
    deadline = time.monotonic() + GRACE_S / 3
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    session.close()
