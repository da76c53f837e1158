"""The run layer: models, cache keys and the cached per-model computations (SPEC §3–§5).

Everything that loads a model or fine-tunes one goes through here, and every run-store
key is built by :func:`key`, the one key builder. A key holds everything that determines
its entry: the weights' sha256, the entry's own fields (context, orientation, mode, LR, …),
the versions of torch / transformers / peft / python, and a sha256 over the source of
every module that computes that kind of entry (:func:`sources`, derived from the imports),
so that changing, say, the critical-LR search is never served an old ``η_c``. The orientation is itself a
cached entry, so a warm store answers without loading any model.

Kinds of entry:

=============  ==========================================  ==================
kind           payload                                     computed by
=============  ==========================================  ==================
orientation    the context's :class:`~phantom.contexts.Pair`  :func:`orientation`
trajectory     a :class:`~phantom.trajectory.Trajectory`    :func:`trajectory`
blind_r        step-0 ``r`` and ``Φ_0`` of one context      :func:`blind_r`
bulk           ``G²mean``, bulk shape and class             :func:`bulk`
critical_lrs   per-context critical LRs of one model        :mod:`phantom.critical`
=============  ==========================================  ==================
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import pathlib
import platform
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from . import contexts, dynamics, geometry, zoo
from .files import exclusive_lock
from .protocol import SEED, STEPS
from .store import RunStore
from .trajectory import Trajectory

# The modules that compute each kind of entry; the key hashes them and the phantom modules
# they import, transitively (:func:`sources`), with this module, which orchestrates all. A
# critical_lrs entry summarises the trajectories its search read (their flips and responses),
# so it hashes the code that computed them too: a change to the fine-tuning never serves a
# critical LR found on the old runs.
ROOTS: dict[str, tuple[str, ...]] = {
    "orientation": ("contexts",),
    "trajectory": ("dynamics",),
    "blind_r": ("dynamics",),
    "bulk": ("geometry",),
    "critical_lrs": ("critical", "dynamics"),
}
PACKAGE = pathlib.Path(__file__).parent
SOLO_PARAMS = 400_000_000   # full FT above this (Qwen-0.5B: ≈14 GB) runs one at a time per machine


def solo(info: zoo.ModelInfo, mode: str) -> bool:
    """Whether a run of ``mode`` on this model is solo: a full FT too big to share its machine's memory,
    which takes the machine's one solo slot (runs one at a time)."""
    return mode == "full" and info.n_params > SOLO_PARAMS


def _imports(module: str, package: pathlib.Path) -> set[str]:
    """The phantom modules ``module``'s source imports (``from . import x``, ``from .x import y``)."""
    tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return {m for m in found if (package / f"{m}.py").is_file()}


def sources(kind: str, package: pathlib.Path = PACKAGE) -> tuple[str, ...]:
    """The modules whose source goes into the key of an entry of ``kind``, sorted.

    The computing modules of :data:`ROOTS` and every phantom module they import, transitively,
    derived from the code itself: a function moved to a new module brings that module in.
    The walk does not follow this module's (``runs``) own imports: the entries it reads
    (trajectories, orientations) carry keys of their own.
    """
    try:
        todo = list(ROOTS[kind])
    except KeyError:
        raise ValueError(f"unknown run-store entry kind {kind!r}; known: {', '.join(ROOTS)}") from None
    seen = {"runs"}
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module, package))
    return tuple(sorted(seen))


def code_sha256(kind: str, package: pathlib.Path = PACKAGE) -> str:
    """sha256 over the source of every module of :func:`sources` for entries of ``kind``."""
    digest = hashlib.sha256()
    for name in sources(kind, package):
        digest.update(name.encode() + b".py\0" + (package / f"{name}.py").read_bytes())
    return digest.hexdigest()


@functools.cache
def versions() -> dict:
    """Versions that can change a result's numbers."""
    import peft  # slow to import: imported when a key is first built, not with the module
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


@functools.cache
def _code(kind: str) -> str:
    return code_sha256(kind)


def key(kind: str, model: str, **fields) -> dict:
    """The run-store key of an entry of ``kind`` for ``model`` (the one key builder).

    Parameters
    ----------
    kind : str
        One of :data:`SOURCES`.
    model : str
        Zoo name, local directory or hub id; the key holds its weights' sha256, not its name.
    **fields
        JSON-able facts that determine the entry (context, mode, LR, …).
    """
    return {"kind": kind, "weights_sha256": weights_sha256(model), **fields,
            "code_sha256": _code(kind), "versions": versions()}


class ModelSlot:
    """Keeps at most one loaded model per process (memory: one model at a time)."""

    def __init__(self):
        self.name, self.loaded = None, None

    def __call__(self, name: str) -> zoo.Loaded:
        if name != self.name:
            self.release()   # free the old model before loading the next
            self.loaded, self.name = zoo.load(name), name
        return self.loaded

    def release(self) -> None:
        """Drop the loaded model (its memory is freed once nothing else holds it)."""
        self.name, self.loaded = None, None


SLOT = ModelSlot()


@functools.cache
def model_info(model: str) -> zoo.ModelInfo:
    """The model's facts (offline names: from the verified cache manifest, no load)."""
    if model in zoo.OFFLINE:
        return zoo.describe(model)
    return SLOT(model).info


def weights_sha256(model: str) -> str:
    """The model's weights hash (SPEC §7: recorded with every result and in every key)."""
    return model_info(model).weights_sha256


def device_type(device: str) -> str:
    """``"cuda:1"`` → ``"cuda"``: the part of a torch device that can change a run's numbers."""
    import torch
    try:
        return torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"not a torch device: {device!r} ({err})") from None


def _context_fields(context: contexts.Context) -> dict:
    return {"id": context.id, "text": context.text, "pair": list(context.pair)}


def orientation(model: str, context: contexts.Context | str, *, store: RunStore | None = None,
                loader: Callable = SLOT) -> contexts.Pair:
    """The cached :class:`phantom.contexts.Pair` of a context on a model (SPEC §3).

    An unusable context is cached too and raises :class:`phantom.contexts.ContextUnusable`.
    """
    context = contexts.get(context) if isinstance(context, str) else context

    def compute() -> dict:
        try:
            return dataclasses.asdict(contexts.orient(context, loader(model)))
        except contexts.ContextUnusable as err:
            return {"unusable": str(err)}

    payload = (store or RunStore()).get_or_compute(
        key("orientation", model, context=_context_fields(context)), compute, _pair_or_unusable)
    if "unusable" in payload:
        raise contexts.ContextUnusable(payload["unusable"])
    return contexts.Pair(**payload)


def _pair_or_unusable(payload: dict) -> None:
    """Store validator of an orientation entry: a :class:`~phantom.contexts.Pair` or ``{"unusable": why}``."""
    if set(payload) != {"unusable"}:
        contexts.Pair(**payload)   # TypeError on a missing or unknown field


def _trajectory_check(**expected) -> Callable[[dict], None]:
    """Store validator of a trajectory entry: a valid record (:meth:`Trajectory.from_dict`) of this run."""

    def check(payload: dict) -> None:
        meta = Trajectory.from_dict(payload).meta
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise ValueError(f"meta {wrong} does not match the run {expected}")

    return check


def _batch(mode: str, lr: float, batch: Sequence[float] | None) -> list[float] | None:
    """A LoRA grid's LRs, ascending, with ``lr`` among them (None: a run of its own)."""
    if batch is None:
        return None
    lrs = sorted({float(x) for x in batch})
    if mode != "lora" or lr not in lrs:
        raise ValueError(f"a batch is a LoRA grid that holds the run's LR; got mode {mode!r}, lr {lr!r}, "
                         f"batch {list(batch)!r}")
    return lrs


def trajectory(model: str, context: contexts.Context | str, *, mode: str, lr: float, steps: int = STEPS,
               seed: int = SEED, stop: str = "never", observables: str = "claims", device: str = "cpu",
               batch: Sequence[float] | None = None, store: RunStore | None = None, loader: Callable = SLOT,
               solo_lock: bool = True) -> Trajectory:
    """A run from the store, computed (once across all processes) on a miss (SPEC §4).

    The key holds the observable set; a request for ``"claims"`` is served by an ``"all"``
    entry of the same run when one is stored (it records a superset).

    Parameters
    ----------
    model : str
        Zoo name, local directory or hub id (loaded through ``loader`` only on a miss).
    context : phantom.contexts.Context or str
    mode, lr, steps, seed, stop, observables, device
        As :func:`phantom.dynamics.run`. The key holds the device type and the dtype (float32),
        so a CUDA run is cached apart from the CPU one and never served for it.
    batch : sequence of float, optional
        A LoRA grid holding ``lr``: on a miss, every run of the grid is computed as one batched
        training (:func:`phantom.dynamics.run_lora_grid`) and stored, under the grid's lock, so
        the grid is computed once across processes. The key names the grid.
    solo_lock : bool
        Full FT of a model above :data:`SOLO_PARAMS` takes the machine-wide lock file in the
        store root (default). A scheduler that already allows one such run per node (the Ray
        executor's ``phantom_solo_ft`` resource) passes False.
    """
    lr, steps, seed = dynamics.validate(mode, lr, steps, stop, seed, observables)   # before any model is loaded
    batch = _batch(mode, lr, batch)
    context = contexts.get(context) if isinstance(context, str) else context
    store = store or RunStore()
    pair = orientation(model, context, store=store, loader=loader)

    def run_key(obs: str, lr: float | None = lr) -> dict:
        return key("trajectory", model, context=_context_fields(context), orientation=[pair.g_word, pair.c_word],
                   mode=mode, lr=lr, steps=steps, seed=seed, stop=stop, observables=obs,
                   device=device_type(device), dtype="float32", protocol_version=dynamics.PROTOCOL_VERSION,
                   **({"batch": batch} if batch else {}))

    def check(lr: float = lr) -> Callable[[dict], None]:
        return _trajectory_check(mode=mode, lr=lr, steps=steps, seed=seed, g_word=pair.g_word, c_word=pair.c_word,
                                 **({"batch": batch} if batch else {}))

    if observables != "all" and (wider := store.get(run_key("all"), check())) is not None:
        return Trajectory.from_dict(wider)
    if batch:
        return _grid_run(store, run_key, check, lr, lambda: dynamics.run_lora_grid(
            loader(model), context, lrs=batch, steps=steps, seed=seed, pair=pair, stop=stop,
            observables=observables, device=device), observables)

    def compute() -> dict:
        loaded = loader(model)
        slot = exclusive_lock(store.root / ".solo-full-ft.lock", "the machine-wide full fine-tuning slot "
                              f"(models above {SOLO_PARAMS / 1e6:.0f}M parameters)") \
            if solo_lock and solo(loaded.info, mode) else nullcontext()
        with slot:
            traj = dynamics.run(loaded, context, mode=mode, lr=lr, steps=steps, seed=seed, pair=pair,
                                stop=stop, observables=observables, device=device)
        return traj.to_dict()

    return Trajectory.from_dict(store.get_or_compute(run_key(observables), compute, check()))


def _grid_run(store: RunStore, run_key: Callable, check: Callable, lr: float,
              grid: Callable[[], list[Trajectory]], observables: str) -> Trajectory:
    """One run of a batched LoRA grid from the store; on a miss the grid is computed and stored.

    The grid's lock is taken before any of its entries' locks (in every process), so two
    processes never wait on each other, and whoever takes it first computes the grid once.
    """
    this = run_key(observables)

    def compute() -> dict:
        runs = {t.meta["lr"]: t for t in grid()}
        for other, t in runs.items():
            if other != lr:
                store.get_or_compute(run_key(observables, other), t.to_dict, check(other))
        return runs[lr].to_dict()

    if (payload := store.get(this, check(), count=True)) is None:
        with nullcontext() if store.read_only else store.lock(run_key(observables, None), "the batched LoRA grid"):
            payload = store.get_or_compute(this, compute, check())
    return Trajectory.from_dict(payload)


def blind_r(model: str, context: str, pair: contexts.Pair, *, store: RunStore | None = None,
            loader: Callable = SLOT) -> dict[str, float]:
    """Cached step-0 ``{"r": r, "phi0": Φ_0}`` of one context (SPEC §5 blind predictor, A3)."""
    k = key("blind_r", model, context=context, orientation=[pair.g_word, pair.c_word])
    return (store or RunStore()).get_or_compute(k, lambda: dynamics.blind_r(loader(model), context, pair))


def bulk(model: str, *, store: RunStore | None = None, loader: Callable = SLOT) -> dict:
    """Cached bulk statistics of the model's input embedding (SPEC §2): G²mean, shape, class."""

    def compute() -> dict:
        E = loader(model).model.get_input_embeddings().weight.detach()
        psi = geometry.normalize_rows(E)
        g2 = geometry.g2_mean(psi)
        shape = geometry.bulk_shape(psi)
        return {"g2mean": g2, **shape._asdict(), "cls": geometry.classify(g2, shape.kind)}

    return (store or RunStore()).get_or_compute(key("bulk", model), compute)
