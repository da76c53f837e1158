"""Benchmarks of one fine-tuning step of :func:`phantom.dynamics.run` (SPEC §4), SmolLM2 and Gemma-3.

Per (model, mode) one benchmark times, on one prepared copy and optimizer, round by round:

* ``bare``: forward (last position only) + cross-entropy + backward + fused AdamW step, with
  ``run``'s memory settings (the reused heap; a tied embedding's sparse lookup gradient);
* ``instrumented``: the body of ``run``'s loop with the claim suite's observables
  (``observables="claims"``) at a step ``t > 0``: the same step plus the finiteness check, the
  LM-head input hook and :meth:`_Probe.record`;
* ``c4``: under LoRA, the bitwise embedding comparison of C4 alone.

``extra_info`` holds, from that one run:

* ``ratio``: instrumented / bare (target ≤ 1.10), the median over rounds of each round's
  instrumented step over the bare step timed just before it (pairing cancels the shared
  machine's drifts, which move both by ±10%); under LoRA ``ratio_without_c4`` leaves the
  C4 comparison out, and ``c4_stream_fraction`` = its streaming rate / the machine's measured
  copy bandwidth (target ≥ 0.70);
* ``floor_ratio`` (full FT): bare step / memory-traffic floor, the floor being AdamW's 28 bytes
  per parameter (read p, g, m, v; write p, m, v) at the measured bandwidth.

``test_bench_run_setup`` times a run's fixed cost before its first update, and
``test_bench_lora_grid`` a context's LoRA grid batched (``run_lora_grid``) against its runs one
by one (``ratio``: batched / sequential seconds per run-step; the runs equal bit for bit).

Timing is never asserted, only that each step ran. Under ``--benchmark-disable`` each step
runs once. One torch thread: on the shared 2-core machine two OpenMP threads competing with
other jobs make the timings meaningless.
"""
from __future__ import annotations

import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from phantom import contexts, dynamics, heap, plans, zoo
from phantom.protocol import MODES

MODELS = ("smollm2-135m", "gemma3-270m")
CONTEXT = contexts.get("quiet")
LR = {"full": 2e-5, "lora": 1e-3}
TARGET_RATIO, TARGET_STREAM = 1.10, 0.70
ADAMW_BYTES_PER_PARAM = 28
ROUNDS = 9
GRID_STEPS = 5    # updates of each run of the LoRA-grid benchmark (no early stop)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bandwidth() -> float:
    """Bytes per second one thread moves in a large copy (read + write), best of 5."""
    src = torch.ones(64 * 2 ** 20)           # 256 MiB
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


class Trainer:
    """One prepared run (``run``'s set-up), steppable bare or instrumented."""

    def __init__(self, loaded, mode: str):
        pair = contexts.orient(CONTEXT, loaded)
        self.model = dynamics.prepare(loaded, mode, seed=0)
        if mode == "full":
            dynamics._sparse_lookup(self.model)          # as run() does
        self.opt = dynamics.optimizer(self.model, LR[mode])
        self.probe = dynamics._probe(self.model, mode, pair.g_id, pair.c_id, "claims")
        self.ids = contexts.encode(CONTEXT, loaded.tokenizer)
        self.target = torch.tensor([pair.g_id])
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.hook = dynamics._HeadInput(self.model.get_output_embeddings())

    def bare_step(self) -> float:
        z = self.model(self.ids, logits_to_keep=1).logits[0, -1]
        loss = F.cross_entropy(z[None].float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def instrumented_step(self) -> float:
        """The body of ``dynamics.run``'s loop for ``0 < t < steps``."""
        z = self.model(self.ids, logits_to_keep=1).logits[0, -1]
        loss = F.cross_entropy(z[None].float(), self.target)
        if not (torch.isfinite(loss) and torch.isfinite(z).all()):
            return math.nan
        with torch.no_grad():
            row = self.probe.record(z.detach(), self.hook.h[0], float(loss), t=1)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return row["loss"]

    def c4_check(self) -> bool:
        return dynamics._bitwise_equal(self.probe.E.detach(), self.probe.E0)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_bench_step(benchmark, bandwidth, model, mode):
    with heap.reused():                                 # as run() does
        _bench_step(benchmark, bandwidth, zoo.load(model), mode)


def _bench_step(benchmark, bandwidth, loaded, mode):
    trainer = Trainer(loaded, mode)
    bare_s, c4_s = [], []
    model = loaded.info.name

    def setup():
        """Untimed by the benchmark: a bare step (and the C4 comparison) timed here, same load."""
        bare_s.append(_timed(trainer.bare_step))
        if mode == "lora":
            c4_s.append(_timed(trainer.c4_check))

    try:
        loss = benchmark.pedantic(trainer.instrumented_step, setup=setup, rounds=ROUNDS, iterations=1,
                                  warmup_rounds=1)
        assert math.isfinite(loss)
        if mode == "lora":
            assert trainer.c4_check(), "LoRA moved the embedding"
    finally:
        trainer.hook.remove()
    stats = getattr(benchmark, "stats", None)
    bare_s, c4_s = bare_s[-ROUNDS:], c4_s[-ROUNDS:]   # the warm-up round's are not paired
    inst_s = stats.stats.data if stats is not None else bare_s   # --benchmark-disable: no timing
    pairs = list(zip(inst_s, bare_s))              # round i: its bare step, then its instrumented one
    bare, inst = statistics.median(bare_s), statistics.median(inst_s)
    info = benchmark.extra_info
    info.update(model=model, mode=mode, context=CONTEXT.id, lr=LR[mode], torch_threads=torch.get_num_threads(),
                bare_median_s=bare, instrumented_median_s=inst, ratio=statistics.median(i / b for i, b in pairs),
                target_ratio=TARGET_RATIO, bandwidth_gb_s=bandwidth / 1e9)
    if mode == "lora":
        c4 = statistics.median(c4_s)
        e = trainer.probe.E
        info.update(c4_median_s=c4, ratio_without_c4=statistics.median((i - k) / b for (i, b), k in zip(pairs, c4_s)),
                    c4_stream_fraction=2 * e.numel() * e.element_size() / c4 / bandwidth,
                    target_stream_fraction=TARGET_STREAM)
    else:
        floor = ADAMW_BYTES_PER_PARAM * trainer.n_params / bandwidth
        info.update(floor_s=floor, floor_ratio=bare / floor)
    print(f"\n{model} {mode}: " + ", ".join(f"{k} {v:.3g}" for k, v in info.items() if isinstance(v, float)))


def _setup_run(loaded, step_zero=None) -> tuple[float, dynamics.StepZero]:
    """A run's fixed cost before its first update: the model copy and the step-0 observables.

    With ``step_zero`` (every run of a context but its first in a process) those come from the
    shared :class:`~phantom.dynamics.StepZero`, as in ``run``.
    """
    model = dynamics.prepare(loaded, "full", 0)
    dynamics._sparse_lookup(model)
    pair = contexts.orient(CONTEXT, loaded)
    probe = dynamics._probe(model, "full", pair.g_id, pair.c_id, "claims", step_zero)
    g_max = probe.g_max()
    hook = dynamics._HeadInput(model.get_output_embeddings())
    try:
        with torch.no_grad():
            z = model(contexts.encode(CONTEXT, loaded.tokenizer), logits_to_keep=1).logits[0, -1]
            row = probe.record(z, hook.h[0], 0.0, t=0)     # t = 0: purity, PR, ξ, B
    finally:
        hook.remove()
    return row["phi"], dynamics.StepZero(*g_max, {k: row[k] for k in dynamics.STEP_ZERO})


@pytest.mark.parametrize("model", MODELS)
def test_bench_run_setup(benchmark, model):
    """Per-run fixed cost (full FT) with the shared step-0 state: ``extra_info["ratio_to_step"]``
    = set-up / one instrumented step; ``first_setup_s`` is the first run of a context's, which
    computes that state."""
    with heap.reused():
        loaded = zoo.load(model)
        first = _timed(lambda: _setup_run(loaded))
        phi, shared = _setup_run(loaded)
        phi_shared, again = benchmark.pedantic(_setup_run, args=(loaded, shared), rounds=3, iterations=1,
                                               warmup_rounds=1)
        assert math.isfinite(phi) and phi < 0 and phi_shared == phi and again == shared
        trainer = Trainer(loaded, "full")
        try:
            trainer.instrumented_step()                   # warm-up
            step = statistics.median(_timed(trainer.instrumented_step) for _ in range(3))
        finally:
            trainer.hook.remove()
    stats = getattr(benchmark, "stats", None)
    setup = statistics.median(stats.stats.data) if stats is not None else _timed(lambda: _setup_run(loaded, shared))
    info = benchmark.extra_info
    info.update(model=model, n_params=loaded.info.n_params, setup_s=setup, first_setup_s=first, step_s=step,
                ratio_to_step=setup / step, first_ratio_to_step=first / step,
                setup_s_per_param=setup / loaded.info.n_params, torch_threads=torch.get_num_threads())
    print(f"\n{model} run set-up: " + ", ".join(f"{k} {v:.3g}" for k, v in info.items() if isinstance(v, float)))


@pytest.mark.parametrize("model", MODELS)
def test_bench_lora_grid(benchmark, model):
    """The claims' LoRA grid of one context batched vs run one by one, per run-step (no early stop)."""
    lrs = plans.Plan().lora_lrs
    with heap.reused():
        loaded = zoo.load(model)
        pair = contexts.orient(CONTEXT, loaded)
        dynamics.run(loaded, CONTEXT, mode="lora", lr=lrs[0], steps=1, pair=pair)   # the shared step-0 state
        alone = []
        sequential = _timed(lambda: alone.extend(dynamics.run(loaded, CONTEXT, mode="lora", lr=lr, steps=GRID_STEPS,
                                                              pair=pair) for lr in lrs))
        grid = benchmark.pedantic(dynamics.run_lora_grid, args=(loaded, CONTEXT),
                                  kwargs=dict(lrs=lrs, steps=GRID_STEPS, pair=pair), rounds=1, iterations=1)
    assert all(a["phi"].tobytes() == b["phi"].tobytes() for a, b in zip(alone, grid))
    stats = getattr(benchmark, "stats", None)
    batched = stats.stats.data[0] if stats is not None else sum(r.meta["wall_s"] for r in grid)
    run_steps = len(lrs) * (GRID_STEPS + 1)
    info = benchmark.extra_info
    info.update(model=model, lrs=list(lrs), steps=GRID_STEPS, sequential_s_per_run_step=sequential / run_steps,
                batched_s_per_run_step=batched / run_steps, ratio=batched / sequential,
                torch_threads=torch.get_num_threads())
    print(f"\n{model} LoRA grid: " + ", ".join(f"{k} {v:.3g}" for k, v in info.items() if isinstance(v, float)))
