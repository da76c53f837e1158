"""Benchmarks of one fine-tuning step of :func:`phantom.dynamics.run` on SmolLM2-135M (SPEC §4).

For each mode (full, LoRA) two benchmarks share one prepared model and optimizer:

* ``bare``: forward (last position only) + cross-entropy + backward + AdamW step;
* ``instrumented``: exactly the body of ``run``'s loop — the same step plus the finiteness
  check, the LM-head input hook and :meth:`_Probe.record` of every SPEC §2 quantity.

Target: instrumented ≤ 1.10 × bare (``extra_info["target_ratio"]``). The instrumented benchmark
also times a bare step before each of its rounds (pedantic ``setup``, not timed by the
benchmark, so both kinds see the same machine load) and records the measured ratio
``instrumented median / bare median`` in ``extra_info["ratio"]``. Timing is never asserted,
only that the step ran. Under ``--benchmark-disable`` each benchmark runs its step once.

One torch thread: on the shared 2-core machine two OpenMP threads competing with other jobs
make a step 5–20× slower and the timings meaningless.
"""
from __future__ import annotations

import gc
import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from phantom import contexts, dynamics, zoo
from phantom.protocol import MODES

SMOL = "smollm2-135m"
CONTEXT = contexts.get("quiet")
LR = {"full": 2e-5, "lora": 1e-3}
TARGET_RATIO = 1.10
THREADS = 1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol():
    return zoo.load(SMOL)


class Trainer:
    """One prepared run (``run``'s set-up), steppable bare or instrumented."""

    def __init__(self, loaded, mode: str):
        pair = contexts.orient(CONTEXT, loaded)
        self.model = dynamics.prepare(loaded, mode, seed=0)
        self.opt = dynamics.optimizer(self.model, LR[mode])
        self.probe = dynamics._probe(self.model, mode, pair.g_id, pair.c_id)
        self.ids = contexts.encode(CONTEXT, loaded.tokenizer)
        self.target = torch.tensor([pair.g_id])
        self.hook = None

    def bare_step(self) -> float:
        z = self.model(self.ids, logits_to_keep=1).logits[0, -1]
        loss = F.cross_entropy(z[None].float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def instrumented_step(self) -> float:
        """The body of ``dynamics.run``'s loop for ``t < steps`` (hook registered by the caller)."""
        with torch.set_grad_enabled(True):
            z = self.model(self.ids, logits_to_keep=1).logits[0, -1]
            loss = F.cross_entropy(z[None].float(), self.target)
        if not (torch.isfinite(loss) and torch.isfinite(z).all()):
            return math.nan
        with torch.no_grad():
            row = self.probe.record(z.detach(), self.hook.h, float(loss))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return row["loss"]

    def hook_on(self):
        if self.hook is None:
            self.hook = dynamics._HeadInput(self.model.get_output_embeddings())

    def hook_off(self):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


@pytest.fixture(scope="module")
def trainers(smol):
    made = {}

    def get(mode: str) -> Trainer:
        if mode not in made:
            made.clear()            # one prepared copy at a time (full FT holds ~2 GB)
            gc.collect()
            made[mode] = Trainer(smol, mode)
        return made[mode]

    yield get
    made.clear()
    gc.collect()


@pytest.mark.parametrize("kind", ["bare", "instrumented"])
@pytest.mark.parametrize("mode", MODES)
def test_bench_step(benchmark, trainers, mode, kind):
    trainer = trainers(mode)
    info = benchmark.extra_info
    info.update(mode=mode, kind=kind, model=SMOL, context=CONTEXT.id, lr=LR[mode],
                torch_threads=torch.get_num_threads(), target_ratio=TARGET_RATIO,
                target="instrumented step <= 1.10 x bare step")
    if kind == "bare":
        trainer.hook_off()
        loss = benchmark.pedantic(trainer.bare_step, rounds=5, iterations=1, warmup_rounds=1)
        assert math.isfinite(loss)
        return

    bare_s, inst_s = [], []

    def setup():
        """Untimed by the benchmark: one bare step (hook off) timed here, then the hook on."""
        trainer.hook_off()
        start = time.perf_counter()
        trainer.bare_step()
        bare_s.append(time.perf_counter() - start)
        trainer.hook_on()

    def step():
        start = time.perf_counter()
        out = trainer.instrumented_step()
        inst_s.append(time.perf_counter() - start)
        return out

    try:
        loss = benchmark.pedantic(step, setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    finally:
        trainer.hook_off()
    assert math.isfinite(loss)

    bare = bare_s[1:] or bare_s                 # drop the warm-up round's bare step
    bare_median = statistics.median(bare)
    stats = getattr(benchmark, "stats", None)
    inst_median = stats.stats.median if stats is not None else statistics.median(inst_s[-5:])
    ratio = inst_median / bare_median
    info.update(bare_median_s=bare_median, instrumented_median_s=inst_median, ratio=ratio,
                bare_samples=len(bare))
    print(f"\n{mode}: instrumented {inst_median * 1e3:.1f} ms / bare {bare_median * 1e3:.1f} ms "
          f"= {ratio:.3f} (target <= {TARGET_RATIO})")
