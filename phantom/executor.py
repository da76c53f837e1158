"""Executors: compute a claims session's run-store entries in this process or on a Ray cluster.

A campaign's work is a list of :class:`Task` — ``(model, kind, args, resources)``, one
cached computation of :mod:`phantom.runs` each — run by an executor into the run store:

- :class:`LocalExecutor` runs them one after another in this process, costliest first
  (:meth:`phantom.campaign.Campaign.planned`): what ``pytest tests/claims`` does on a cold store.
- :class:`RayExecutor` submits them as plain Ray tasks. Each asks for ``num_cpus``, the
  ``memory`` of its measured peak RSS (:data:`PEAK_RSS`), ``num_gpus`` on CUDA (a fraction
  for LoRA) and, for full fine-tuning above :data:`phantom.runs.SOLO_PARAMS`, one unit of
  the per-node resource :data:`SOLO` (instead of the store's lock file, which on shared
  storage would serialise the whole cluster). A worker refuses, in one line, to compute for
  a driver whose environment fingerprint differs (its keys would silently differ); a task
  that raises or dies is retried, and the store's atomic writes leave no partial entry.
  Its Ray session (:mod:`phantom.cluster`) binds a private cluster to loopback, refuses an
  address where nothing answers, and stops on Ctrl-C or SIGTERM without restarting Ray.

The adaptive runs (saturation brackets, critical-LR searches, the operating point: SPEC
§5 A1–A2, §6 A4) are placed on the driver (:mod:`phantom.search`), each step's runs computed
in parallel through its ``prefetch``; they are the entries the local executor writes.
The store must be one POSIX directory at the same path on every node (``flock`` and ``os.replace`` are atomic on NFS).

``compute(campaigns, executor="local" | "ray", address=None, progress=None)`` is the API.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass

from . import campaign as cmp
from . import cluster, contexts, runs, search, store, zoo
from .cluster import INSTALL, ExecutorError, import_ray  # noqa: F401 - this module's API too
from .store import RunStore

EXECUTORS = ("local", "ray")
SOLO = "phantom_solo_ft"      # custom per-node Ray resource: one solo full fine-tune at a time

# Peak RSS of one task process (resource.getrusage ru_maxrss, 1 torch thread), measured
# 2026-12-01 on SmolLM2-135M (134.5M parameters, fp32), one fresh process per figure:
# "base" is Python with torch, transformers and peft imported; "forward" loads the model and
# orients a context (orientations, bulk statistics); "blind" is blind_r's step-0 gradients;
# "full" and "lora" are 3 fine-tuning steps (AdamW's state is allocated at the first).
# Other models are estimated from their parameter count, not measured:
# base + (SmolLM2's figure − base) × n_params / 134.5M — e.g. full FT of Qwen2.5-0.5B
# (630M parameters, untied) ≈ 15.5 GB, near the ≈ 14 GB observed there.
# The request is the estimate itself: Ray's `memory` resource (70% of RAM by default) already
# leaves the rest of the node's memory free.
SMOLLM2_PARAMS = 134_515_008
PEAK_RSS = {"base": 361_164_800, "forward": 1_062_260_736, "blind": 3_250_573_312,
            "full": 3_592_261_632, "lora": 1_856_962_560}
GPU_SHARE = {"full": 1.0, "lora": 0.25}   # num_gpus of a run with --device cuda


class EnvironmentMismatch(ExecutorError):
    """A worker's environment fingerprint differs from the driver's: it refused to compute."""


@dataclass(frozen=True)
class Task:
    """One cached computation of :mod:`phantom.runs` (one or more run-store entries)."""

    model: str
    kind: str          # the run-store kind it computes (:data:`KINDS`): every context's "orientation",
                       # "bulk", one context's "blind_r" or one "trajectory"
    args: dict         # the kind's arguments (context, mode, lr, steps, stop, device, batch)
    resources: dict    # the Ray resource request: num_cpus, memory, num_gpus, resources

    def __str__(self) -> str:
        return " ".join([self.kind, self.model, *(f"{k}={v}" for k, v in self.args.items())])


@dataclass(frozen=True)
class Done:
    """A finished task: whether it computed anything, when and where it ran."""

    task: Task
    computed: bool     # False: every entry was already in the store
    start: float       # time.time() on the machine that ran it
    end: float
    node: str          # Ray node id, or "local"
    pid: int


@dataclass(frozen=True)
class ModelProgress:
    """One model's progress, handed to the ``progress`` callback of :func:`compute`."""

    model: str
    stage: str          # what runs now: "orientations", "runs", "adaptive runs", "done"
    done: int           # fine-tuning runs finished (computed or found in the store)
    planned: int        # runs planned so far (each adaptive step adds its runs)
    computed: int
    cached: int
    elapsed_s: float
    eta_s: float | None  # remaining planned runs at the rate so far; None before the first
    finished: bool


# --- environment fingerprint -------------------------------------------------------------

PACKAGES = ("numpy", "tokenizers", "safetensors", "gguf")   # beyond runs.versions(): torch, transformers, peft
MODULES = ("heap", "zoo", "store", "files", "cluster", "executor")   # beyond the keys' (runs.sources)


def _imported_sources() -> dict[str, bytes]:
    """The source of every module a result depends on, read when this module is imported.

    Each module is imported here, so its bytes are read at the moment its code is loaded
    (a worker imports this module to unpickle its first task): a file edited on disk later
    changes neither this process's code nor its fingerprint.
    """
    names = sorted({m for kind in runs.ROOTS for m in runs.sources(kind)} | set(MODULES))
    out = {}
    for name in names:
        module = sys.modules.get(f"{__package__}.{name}") or importlib.import_module(f".{name}", __package__)
        out[name] = module.__loader__.get_data(module.__file__)
    return out


def _package_versions() -> dict[str, str]:
    """Versions of :data:`PACKAGES` ("absent" if not installed) and the BLAS NumPy was built with."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    import numpy
    with suppress(Exception):   # the build configuration's layout is NumPy's, not an API
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["numpy_blas"] = f"{blas['name']} {blas['version']}"
    return out


def fingerprint() -> dict[str, str]:
    """What must agree between driver and workers for their keys and results to agree.

    The versions of torch, transformers, peft, Python (:func:`phantom.runs.versions`) and of
    :data:`PACKAGES` with NumPy's BLAS; ``code_sha256[kind]`` of every run-store kind, as
    :func:`phantom.runs.code_sha256` computes it but over the sources as imported
    (:data:`IMPORTED`); ``source_sha256[module]`` of :data:`MODULES`; and the public name of
    the store's signing secret (:func:`phantom.store.secret_id`), so that a worker never writes
    entries its driver would refuse.
    """
    code = {}
    for kind in runs.ROOTS:
        digest = hashlib.sha256()
        for name in runs.sources(kind):
            digest.update(name.encode() + b".py\0" + IMPORTED[name])
        code[f"code_sha256[{kind}]"] = digest.hexdigest()
    sources = {f"source_sha256[{m}]": hashlib.sha256(IMPORTED[m]).hexdigest() for m in MODULES}
    return {**runs.versions(), **_package_versions(), **code, **sources,
            "store_key": store.secret_id(store.secret_from_env())}


def differences(driver: dict[str, str], worker: dict[str, str]) -> str:
    """``"torch 2.13.0 (driver) ≠ 2.12.0 (worker); …"``, or "" when they agree."""
    return "; ".join(f"{k} {driver.get(k)} (driver) ≠ {worker.get(k)} (worker)"
                     for k in sorted(set(driver) | set(worker)) if driver.get(k) != worker.get(k))


# --- resources -----------------------------------------------------------------------------

def peak_rss(n_params: int, work: str) -> int:
    """Estimated peak RSS (bytes) of one task process of ``work`` on a model (:data:`PEAK_RSS`)."""
    base = PEAK_RSS["base"]
    return int(base + (PEAK_RSS[work] - base) * n_params / SMOLLM2_PARAMS)


def resources(info: zoo.ModelInfo, kind: str, mode: str | None = None, device: str = "cpu") -> dict:
    """The Ray resource request of a task of ``kind`` (and ``mode``) on the model ``info``."""
    work = _kind(kind).work or mode
    request = {"num_cpus": 1, "memory": peak_rss(info.n_params, work)}
    if kind == "trajectory" and runs.device_type(device) != "cpu":
        request["num_gpus"] = GPU_SHARE[mode]
    if kind == "trajectory" and runs.solo(info, mode):
        request["resources"] = {SOLO: 1}
    return request


# --- tasks of a campaign -------------------------------------------------------------------

def _task(c: cmp.Campaign, kind: str, **args) -> Task:
    return Task(c.model, kind, args, resources(runs.model_info(c.model), kind, args.get("mode"), c.device))


def orientations_task(c: cmp.Campaign) -> Task:
    """The task of every context's orientation on the campaign's model."""
    return _task(c, "orientation")


def run_task(c: cmp.Campaign, mode: str, lr: float, context: str, stop: str | None = None) -> Task:
    """The task of one fine-tuning run of a campaign (its plan's steps and stop policy)."""
    return _task(c, "trajectory", context=context, mode=mode, lr=lr, steps=c.plan.steps,
                 stop=c.plan.stop if stop is None else stop, device=c.device, batch=c.plan.batch(mode, lr))


def statistic_tasks(c: cmp.Campaign) -> list[Task]:
    """Bulk statistics, and the step-0 blind ``r`` of each usable context when the plan has η_c."""
    return [_task(c, "bulk")] + ([_task(c, "blind_r", context=u) for u in c.usable] if c.plan.eta_c else [])


def _orientations(model: str, a: dict, store: RunStore, loader: Callable, solo_lock: bool) -> None:
    for context in contexts.CONTEXTS:
        with suppress(contexts.ContextUnusable):   # cached as unusable, like Campaign.orientations
            runs.orientation(model, context, store=store, loader=loader)


def _bulk(model: str, a: dict, store: RunStore, loader: Callable, solo_lock: bool) -> None:
    runs.bulk(model, store=store, loader=loader)


def _blind_r(model: str, a: dict, store: RunStore, loader: Callable, solo_lock: bool) -> None:
    pair = runs.orientation(model, a["context"], store=store, loader=loader)
    runs.blind_r(model, a["context"], pair, store=store, loader=loader)


def _trajectory(model: str, a: dict, store: RunStore, loader: Callable, solo_lock: bool) -> None:
    runs.trajectory(model, a["context"], mode=a["mode"], lr=a["lr"], steps=a["steps"], stop=a["stop"],
                    device=a["device"], batch=a["batch"], store=store, loader=loader, solo_lock=solo_lock)


@dataclass(frozen=True)
class Kind:
    """What computes a task kind, and its work for the memory estimate (:data:`PEAK_RSS`)."""

    compute: Callable       # (model, args, store, loader, solo_lock) -> None
    work: str | None        # None: a trajectory's work is its mode


# task kind (a run-store entry kind of phantom.runs.ROOTS) → what computes it
KINDS: dict[str, Kind] = {
    "orientation": Kind(_orientations, "forward"),
    "bulk": Kind(_bulk, "forward"),
    "blind_r": Kind(_blind_r, "blind"),
    "trajectory": Kind(_trajectory, None),
}


def _kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(KINDS)}") from None


def execute(task: Task, store: RunStore, loader: Callable = runs.SLOT, solo_lock: bool = True) -> None:
    """Compute ``task``'s entries into ``store`` (nothing when they are there already)."""
    _kind(task.kind).compute(task.model, task.args, store, loader, solo_lock)


# --- executors -----------------------------------------------------------------------------

class LocalExecutor:
    """Runs tasks one after another in this process, in the order given."""

    parallel = False

    def run(self, c: cmp.Campaign, tasks: Sequence[Task]) -> Iterator[Done]:
        for task in tasks:
            before, start = len(c.store.computed), time.time()
            execute(task, c.store, c.loader)
            yield Done(task, len(c.store.computed) > before, start, time.time(), "local", os.getpid())


def _worker(task: Task, driver: dict[str, str], weights_sha256: str, root: str) -> dict:
    """A Ray task: check the environment, set torch threads, compute ``task`` into the store."""
    import ray
    import torch

    where = f"worker {socket.gethostname()} (pid {os.getpid()})"
    diff = differences(driver, fingerprint())
    if diff:
        return {"refused": f"{where} refuses: its environment differs from the driver's: {diff}"}
    if not os.path.isdir(root):
        return {"refused": f"{where} refuses: no run store at {root}; mount the shared store at the "
                           "same path on every node"}
    if runs.weights_sha256(task.model) != weights_sha256:
        return {"refused": f"{where} refuses: its weights of {task.model} have sha256 "
                           f"{runs.weights_sha256(task.model)}, the driver's {weights_sha256}"}
    context = ray.get_runtime_context()
    torch.set_num_threads(max(1, int(context.get_assigned_resources().get("CPU", 1))))
    store, start = RunStore(root), time.time()
    try:
        execute(task, store, solo_lock=False)   # the SOLO resource allows one solo run per node
    finally:
        runs.SLOT.release()   # an idle worker holds no model: `memory` counts running tasks only
    return {"computed": bool(store.computed), "start": start, "end": time.time(),
            "node": context.get_node_id(), "pid": os.getpid()}


def _one_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err   # RayTaskError wraps the worker's exception
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text[:300]}"


class RayExecutor:
    """Submits tasks as plain Ray tasks and yields them as they finish.

    Parameters
    ----------
    address : str, optional
        Ray cluster address (``"auto"``: the cluster this node belongs to). None starts a
        private one-node cluster with one :data:`SOLO` unit (even when this node runs one),
        unless Ray is initialised already.
    max_retries : int
        Retries of a task that raises or whose worker dies.
    """

    parallel = True

    def __init__(self, address: str | None = None, *, max_retries: int = 2):
        self.session = cluster.Session(address, resources={SOLO: 1})
        ray = self.ray = self.session.ray
        self.max_retries = max_retries
        self.remote = ray.remote(max_retries=max_retries, retry_exceptions=True)(_worker)
        self.fingerprint = fingerprint()

    def check_feasible(self, tasks: Iterable[Task]) -> None:
        """Raise :class:`ExecutorError` when no live node can ever run one of ``tasks``."""
        nodes = [n["Resources"] for n in self.session.call(self.ray.nodes) if n["Alive"]]
        for task in tasks:
            need = {"CPU": task.resources["num_cpus"], "memory": task.resources["memory"],
                    "GPU": task.resources.get("num_gpus", 0), **task.resources.get("resources", {})}
            if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
                have = ", ".join(f"{k}: {max((n.get(k, 0) for n in nodes), default=0):g}" for k in need)
                hint = f"; start each node with --resources '{{\"{SOLO}\": 1}}'" if SOLO in need else ""
                raise ExecutorError(f"no node of the Ray cluster can run {task}: it needs "
                                    f"{', '.join(f'{k}: {v:g}' for k, v in need.items())}, the largest "
                                    f"node offers {have}{hint}")

    def run(self, c: cmp.Campaign, tasks: Sequence[Task]) -> Iterator[Done]:
        ray, call = self.ray, self.session.call
        self.check_feasible(tasks)
        c.store.root.mkdir(parents=True, exist_ok=True)
        weights = runs.weights_sha256(c.model)
        refs = {}
        try:
            for task in tasks:   # each submission, like every Ray call, refused once the session stops
                ref = call(self.submit, task, weights, str(c.store.root))
                refs[ref] = task
            pending = list(refs)
            while pending:
                ready, pending = call(ray.wait, pending, num_returns=1, timeout=cluster.POLL_S)
                if ready:
                    yield self._done(refs[ready[0]], ready[0])
        finally:
            with suppress(cluster.Stopped):
                call(self._cancel, [ref for ref in refs if ref in self.session.pending])

    def submit(self, task: Task, weights: str, root: str):
        """Submit ``task`` (a Ray call: through :meth:`phantom.cluster.Session.call`); its object ref."""
        ref = self.remote.options(**task.resources).remote(task, self.fingerprint, weights, root)
        self.session.pending.add(ref)
        return ref

    def _done(self, task: Task, ref) -> Done:
        try:
            out = self.session.call(self.ray.get, ref)
        except self.ray.exceptions.RayError as err:
            raise ExecutorError(f"{task} failed after {self.max_retries} retries: {_one_line(err)}") from None
        finally:
            self.session.pending.discard(ref)
        if "refused" in out:
            raise EnvironmentMismatch(out["refused"])
        return Done(task, out["computed"], out["start"], out["end"], out["node"], out["pid"])

    def _cancel(self, refs: list) -> None:
        for ref in refs:
            self.ray.cancel(ref)
            self.session.pending.discard(ref)

    def close(self) -> None:
        """Shut down the Ray session this executor opened (see :class:`phantom.cluster.Session`)."""
        self.session.close()


def make_executor(name: str, address: str | None = None, **options) -> LocalExecutor | RayExecutor:
    """``"local"`` or ``"ray"`` (``address`` and ``options`` go to :class:`RayExecutor`)."""
    if name not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {name!r}")
    if name == "local":
        if address is not None:
            raise ValueError(f"--address {address} needs the ray executor")
        return LocalExecutor()
    return RayExecutor(address, **options)


# --- the session's computation ---------------------------------------------------------------

class _Tracker:
    """Counts one model's runs and reports them (thread-safe across models)."""

    def __init__(self, model: str, report: Callable[[ModelProgress], None] | None, lock: threading.Lock):
        self.model, self.report, self.lock = model, report, lock
        self.start, self.first = time.time(), None
        self.stage, self.planned, self.computed, self.cached = "orientations", 0, 0, 0
        self.seen: set[str] = set()     # runs counted: a search replayed asks for its runs again
        self.grids: set[tuple] = set()  # batched LoRA grids computed here: their later runs were too
        self.send()

    def progress(self, finished: bool = False) -> ModelProgress:
        done, now = self.computed + self.cached, time.time()
        eta = None
        if self.computed and self.first is not None:
            eta = (now - self.first) / self.computed * (self.planned - done)
        return ModelProgress(self.model, self.stage, done, self.planned, self.computed, self.cached,
                        now - self.start, eta, finished)

    def send(self, finished: bool = False) -> None:
        if self.report is not None:
            with self.lock:
                self.report(self.progress(finished))

    def begin(self, stage: str, tasks: Sequence[Task] = ()) -> set[str]:
        """Enter ``stage`` with ``tasks``; returns the runs among them not counted before."""
        new = {str(t) for t in tasks if t.kind == "trajectory"} - self.seen
        self.seen |= new
        self.stage, self.planned = stage, self.planned + len(new)
        self.first = self.first or (time.time() if new else None)
        self.send()
        return new

    def finished(self, done: Done, counted: bool = True) -> None:
        if done.task.kind == "trajectory" and counted:
            a = done.task.args
            grid = (a["context"], a["batch"]) if a.get("batch") else None
            computed = done.computed or grid in self.grids   # a grid's first run computed this one
            if done.computed and grid:
                self.grids.add(grid)
            self.computed += computed
            self.cached += not computed
            self.send()


def _refuse(model: str):
    raise ExecutorError(f"the driver would load {model} to compute an entry the workers computed: "
                        "their keys differ from the driver's")


def waves(tasks: Sequence[Task]) -> tuple[list[Task], list[Task]]:
    """``tasks`` in two waves: a batched LoRA grid's later runs after everything else.

    A grid's first run computes the whole grid (:func:`phantom.runs.trajectory` with ``batch``);
    run beside it, its other runs would only hold a worker while waiting on the grid's lock.
    """
    def later(t: Task) -> bool:
        return bool(t.args.get("batch")) and t.args["lr"] != t.args["batch"][0]
    return [t for t in tasks if not later(t)], [t for t in tasks if later(t)]


def compute_campaign(c: cmp.Campaign, executor: LocalExecutor | RayExecutor,
                     report: Callable[[ModelProgress], None] | None = None,
                     lock: threading.Lock | None = None) -> ModelProgress:
    """Every entry a claims session reads of one campaign: orientations, planned runs, bulk and
    blind statistics, then the adaptive runs (placed on this process, each step's runs in parallel)."""
    track = _Tracker(c.model, report, lock or threading.Lock())
    if executor.parallel:   # this process never fine-tunes: workers compute every entry
        c = cmp.Campaign(c.model, c.plan, c.store, loader=_refuse, device=c.device)

    def run(stage: str, tasks: list[Task]) -> None:
        new = track.begin(stage, tasks)      # a run asked for again (a search replayed) counts once
        for wave in waves(tasks):
            for done in executor.run(c, wave):
                track.finished(done, counted=str(done.task) in new)

    run("orientations", [orientations_task(c)])
    run("runs", [run_task(c, mode, lr, context) for mode, lr, context in c.planned()] + statistic_tasks(c))
    if c.plan.saturation or c.plan.eta_c:
        def prefetch(specs: list[tuple[str, float, str, str]]) -> None:
            run("adaptive runs", [run_task(c, *spec) for spec in specs])

        for context in c.usable:
            search.saturation(c, context, prefetch)
        if c.plan.eta_c:
            cmp.critical_lrs(c, prefetch)
        if (lr := cmp.operating_lr(c)) is not None:
            prefetch([("full", lr, context, c.plan.stop) for context in c.usable])
    track.stage = "done"
    track.send(finished=True)
    return track.progress(finished=True)


def compute(campaigns: Sequence[cmp.Campaign], executor: str = "local", address: str | None = None,
            progress: Callable[[ModelProgress], None] | None = None, **options) -> list[ModelProgress]:
    """Compute every run-store entry a claims session reads of ``campaigns``.

    Parameters
    ----------
    campaigns : sequence of Campaign
        Their stores, plans and devices say what to compute (``Campaign.for_budget``).
    executor : {"local", "ray"}
        ``local``: one model after another in this process. ``ray``: every model at once, on
        the Ray cluster at ``address`` (see :class:`RayExecutor`).
    address : str, optional
        Ray address (``"auto"``); only with ``executor="ray"``.
    progress : callable, optional
        Called with a :class:`ModelProgress` whenever a model's counts change (from several
        threads with ``ray``, never two calls at once).
    **options
        ``max_retries`` of :class:`RayExecutor`.

    Returns
    -------
    list of ModelProgress
        Each model's final counts, in the order of ``campaigns``.

    Raises
    ------
    ExecutorError
        Ray missing, a task failing after its retries, a task no node can run, or a worker
        refusing (:class:`EnvironmentMismatch`), an ``address`` where no cluster answers.
    phantom.cluster.Terminated
        With ``ray``, Ctrl-C or SIGTERM: the running tasks were cancelled and Ray shut down
        (:func:`phantom.cluster.run_jobs`). ``compute`` closes the Ray session it opened
        whichever way it ends.
    """
    lock = threading.Lock()
    if executor != "ray":
        ex = make_executor(executor, address, **options)
        return [compute_campaign(c, ex, progress, lock) for c in campaigns]
    with cluster.signals():   # SIGTERM while Ray starts: Terminated, and what it started goes too
        ex = make_executor(executor, address, **options)
        try:
            for c in campaigns:   # before the threads: a local model's facts come from loading it into runs.SLOT
                runs.model_info(c.model)
        except BaseException:
            ex.close()
            raise
        return cluster.run_jobs(ex.session, [functools.partial(compute_campaign, c, ex, progress, lock)
                                             for c in campaigns])


IMPORTED: dict[str, bytes] = _imported_sources()
"""File name → source bytes of every module the fingerprint covers, read as this module is imported."""
