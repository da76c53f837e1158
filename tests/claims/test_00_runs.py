"""The runs every claim reads, computed once into the shared run store (SPEC §4).

Listed first so that pytest-xdist spreads the expensive fine-tuning over the workers; the
claim tests then read the same runs from the store. Each item checks the run's integrity.
"""
import numpy as np
import pytest

from phantom import campaign as cmp
from phantom import contexts, laws
from phantom.trajectory import SERIES


def _models(config):
    return cmp.select_models(config.getoption("--models"), config.getoption("--zoo"),
                             config.getoption("--budget"))


def _planned(config):
    budget = config.getoption("--budget")
    for model in _models(config):
        plan = cmp.plan_for(budget, model)
        full = sorted(set(plan.sweep) | set(plan.saturation) | {cmp.ETA_REF})
        lora = sorted(set(plan.lora) | {cmp.LORA_REF})
        for mode, lrs in (("full", full), ("lora", lora)):
            for lr in lrs:
                for c in contexts.CONTEXTS:
                    yield pytest.param(model, mode, lr, c.id, id=f"{model}-{mode}-{lr:g}-{c.id}")


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_run":
        metafunc.parametrize("model_name,mode,lr,context", list(_planned(metafunc.config)))
    if metafunc.function.__name__ == "test_critical_lr":
        metafunc.parametrize("bisect_model", _bisected(metafunc.config))


def _bisected(config):
    return [m for m in _models(config) if cmp.plan_for(config.getoption("--budget"), m).eta_c]


def test_critical_lr(bisect_model, budget):
    """The critical-LR bisection (C13's slowest part), started first so it overlaps the runs."""
    result = laws.critical_lr_of(cmp.Campaign(bisect_model, cmp.plan_for(budget, bisect_model)))
    assert all(0.0 <= f <= 1.0 for _, f in result.probes)
    if result.converged:
        lo, hi = result.bracket
        assert hi / lo - 1 <= 0.01 and result.eta_c == hi


def test_run(model_name, mode, lr, context, budget):
    camp = cmp.Campaign(model_name, cmp.plan_for(budget, model_name))
    if context in camp.unusable:
        pytest.skip(camp.unusable[context])
    traj = camp.run(mode, lr, context)
    n = len(traj["phi"])
    assert traj.meta["context"] == context and traj.meta["mode"] == mode and traj.meta["lr"] == lr
    assert all(np.isfinite(traj[k]).all() for k in SERIES), "a recorded series is not finite"
    if traj.diverged_at is None and traj.meta["stopped_at"] is None:
        assert n == camp.plan.steps + 1
    else:
        assert n == (traj.diverged_at if traj.diverged_at is not None else traj.meta["stopped_at"] + 1)
    assert traj["phi"][0] < 0, "orientation: every run starts contested in Φ (SPEC §3)"
