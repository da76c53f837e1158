"""Unit tests of phantom.campaign: budgets, plans and the runs a Campaign requests.

No model is loaded and nothing is fine-tuned: ``runs.orientation`` and
``runs.trajectory`` are replaced by fakes that return synthetic data and record calls.
"""
import dataclasses
import re

import numpy as np
import pytest

from phantom import campaign, contexts, dryrun, plans, runs, store, zoo
from phantom.campaign import Campaign
from phantom.plans import Plan, parse_models, plan_for, zoo_models
from phantom.protocol import ETA_REF, LORA_REF
from phantom.trajectory import SERIES, Trajectory

SPEC_SWEEP = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5)
SPEC_EXTENDED = (2e-7, 5e-7, 1e-6)
SPEC_LORA = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
ALL_CONTEXTS = [c.id for c in contexts.CONTEXTS]

# Model facts as zoo.describe gives them (sizes of the real models; hashes are not read by plans).
SMOL = zoo.ModelInfo("smollm2-135m", "llama", 134_515_008, 49_152, 576, True, "0" * 64)
GEMMA = zoo.ModelInfo("gemma3-270m", "gemma3_text", 268_098_176, 262_144, 640, True, "1" * 64)
QWEN = zoo.ModelInfo("qwen2.5-0.5b", "qwen2", 630_167_424, 151_936, 896, False, "2" * 64)
TINY = zoo.ModelInfo("/some/local/dir", "llama", 50_000, 1_000, 32, False, "3" * 64)
ALL_INFOS = [SMOL, GEMMA, QWEN, TINY]


# --- zoo_models -------------------------------------------------------------------------

@pytest.mark.parametrize("zoo_name", sorted(plans.ZOOS))
def test_zoo_models_grow_with_the_budget(zoo_name):
    quick, standard, full = (zoo_models(zoo_name, b) for b in plans.BUDGETS)
    assert quick and set(quick) <= set(standard) <= set(full)
    assert all(zoo_models(zoo_name, b) == plans.ZOOS[zoo_name][b] for b in plans.BUDGETS)
    assert all(len(set(m)) == len(m) for m in (quick, standard, full))


def test_the_offline_zoo_is_read_from_the_zoo_entries():
    assert all(set(m.budgets) <= set(plans.BUDGETS) for m in zoo.OFFLINE.values())
    for b in plans.BUDGETS:
        assert zoo_models("offline", b) == tuple(n for n, m in zoo.OFFLINE.items() if b in m.budgets)
    assert set(zoo.OFFLINE) == {m for b in plans.BUDGETS for m in zoo_models("offline", b)}   # each in a budget


@pytest.mark.parametrize("zoo_name, budget", [("offline-full", "standard"), ("custom", "quick"), ("", "full"),
                                              ("Offline", "quick"), ("offline", "medium"), ("paper", ""),
                                              ("offline", "Full"), ("nope", "nope")])
def test_zoo_models_rejects_bad_zoo_or_budget(zoo_name, budget):
    with pytest.raises(ValueError):
        zoo_models(zoo_name, budget)


# --- Plan / plan_for --------------------------------------------------------------------

def test_default_plan_is_spec():
    p = Plan()
    assert p.sweep == SPEC_SWEEP and p.extended == SPEC_EXTENDED and p.lora == SPEC_LORA
    assert p.steps == 30 and p.eta_c is True and p.reductions == ()
    assert ETA_REF == 2e-5 and ETA_REF in p.sweep and LORA_REF == 1e-3 and LORA_REF in p.lora


@pytest.mark.parametrize("info", ALL_INFOS, ids=lambda i: i.name)
def test_full_budget_is_the_spec_plan(info):
    p = plan_for("full", info)
    assert p == Plan()
    assert p.sweep == SPEC_SWEEP and p.extended == SPEC_EXTENDED and p.lora == SPEC_LORA
    assert p.steps == 30 and p.eta_c is True and p.reductions == ()


def _departures(p: Plan) -> list[str]:
    spec = Plan()
    return [f.name for f in dataclasses.fields(Plan)
            if f.name != "reductions" and getattr(p, f.name) != getattr(spec, f.name)]


@pytest.mark.parametrize("budget", ["quick", "standard"])
@pytest.mark.parametrize("info", ALL_INFOS, ids=lambda i: i.name)
def test_reduced_plans_name_their_reductions(budget, info):
    p = plan_for(budget, info)
    if p != Plan():
        assert p.reductions, f"{budget}/{info.name} departs from SPEC in {_departures(p)} without naming it"
    assert len(p.reductions) >= len(_departures(p))
    assert all(isinstance(r, str) and r for r in p.reductions)
    # the reference LRs and the protocol length are never reduced away
    assert ETA_REF in p.sweep and LORA_REF in p.lora and p.steps == 30


@pytest.mark.parametrize("budget", ["", "Standard", "medium", "nope"])
def test_plan_for_rejects_unknown_budget(budget):
    with pytest.raises(ValueError, match=repr(budget)):
        plan_for(budget, SMOL)


def test_quick_plan():
    p = plan_for("quick", SMOL)
    assert p.sweep == (ETA_REF,) and p.extended == () and p.lora == (LORA_REF,) and not p.eta_c
    assert p.saturation == () and len(p.reductions) == 4
    assert plan_for("quick", TINY) == p                            # the same for every model


@pytest.mark.parametrize("info, step_s, rel", [(SMOL, 0.45, 0.15), (GEMMA, 0.78, 0.01)], ids=["smollm2", "gemma3"])
def test_full_ft_seconds_matches_the_measured_steps(info, step_s, rel):
    """The cost model reproduces the measured single-thread full-FT steps (fitted on Gemma-3's)."""
    runs_per_lr = len(contexts.CONTEXTS)
    per_step = plans.full_ft_seconds(info) / (30 * len(Plan().full_lrs) * runs_per_lr)
    assert per_step == pytest.approx(step_s, rel=rel)
    reduced = Plan(sweep=(ETA_REF,), extended=())                   # one full-FT LR instead of eight
    assert plans.full_ft_seconds(info, reduced) == pytest.approx(plans.full_ft_seconds(info) / 8, rel=1e-12)


def test_standard_plans():
    assert plans.full_ft_seconds(GEMMA) < plans.STANDARD_FULL_FT_S < plans.full_ft_seconds(QWEN)
    for info in (SMOL, GEMMA, TINY):                  # the complete SPEC §4 protocol, nothing reduced
        assert plan_for("standard", info) == Plan() and not Plan().reductions
    qwen = plan_for("standard", QWEN)
    assert qwen.sweep == (ETA_REF,) and qwen.extended == () and qwen.lora == (LORA_REF,) and not qwen.eta_c
    assert len(qwen.reductions) == 4
    hours = f"≈{plans.full_ft_seconds(QWEN) / 3600:.1f} h"         # the reason states the estimate
    assert hours in qwen.reductions[0]


def test_standard_plan_follows_the_cost_not_the_name(monkeypatch):
    named_qwen = dataclasses.replace(SMOL, name="qwen2.5-0.5b")
    assert plan_for("standard", named_qwen) == plan_for("standard", SMOL)
    named_smol = dataclasses.replace(QWEN, name="smollm2-135m")
    assert plan_for("standard", named_smol) == plan_for("standard", QWEN)
    cost = plans.full_ft_seconds(SMOL)
    monkeypatch.setattr(plans, "STANDARD_FULL_FT_S", cost)          # at the ceiling: still the sweep
    assert plan_for("standard", SMOL).sweep == SPEC_SWEEP
    monkeypatch.setattr(plans, "STANDARD_FULL_FT_S", cost * (1 - 1e-9))
    assert plan_for("standard", SMOL).sweep == (ETA_REF,)


def test_for_budget_plans_from_the_model_info(monkeypatch, tmp_path):
    infos = {"smollm2-135m": SMOL, "gemma3-270m": GEMMA}
    monkeypatch.setattr(runs, "model_info", infos.__getitem__)
    rs = store.RunStore(tmp_path / "runs")
    for name, info in infos.items():
        camp = Campaign.for_budget(name, "standard", rs)
        assert camp.model == name and camp.plan == plan_for("standard", info) and camp.store is rs


def test_schedule_puts_the_solo_slots_runs_first_together(fake, monkeypatch, rs):
    infos = {"smol": SMOL, "qwen": QWEN}
    monkeypatch.setattr(runs, "model_info", infos.__getitem__)
    camps = [Campaign(m, store=rs, loader=never_load) for m in infos]
    order = campaign.schedule(camps)
    assert sorted(order) == sorted((c.model, *r) for c in camps for r in c.planned())   # every run, once
    solo = [r for r in order if runs.solo(infos[r[0]], r[1])]
    assert solo and {(m, mode) for m, mode, *_ in solo} == {("qwen", "full")}
    assert order[:len(solo)] == solo == [("qwen", *r) for r in camps[1].planned() if r[0] == "full"]
    assert order[len(solo):] == [(c.model, *r) for c in camps for r in c.planned()
                                  if (c.model, *r) not in solo]                        # the rest in plan order
    assert fake.trajectory_calls == []


def test_saturation_grid():
    sat = Plan().saturation
    assert sat == tuple(sorted(SPEC_SWEEP + SPEC_EXTENDED)) and len(sat) == 8
    assert sat == (2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5)
    assert Plan(extended=()).saturation == ()
    assert Plan(sweep=(2e-5, 1e-6), extended=(1e-6, 2e-7)).saturation == (2e-7, 1e-6, 2e-5)   # union, sorted


def test_full_and_lora_lrs():
    assert Plan().full_lrs == (5e-5, 2e-5, 1e-5, 5e-6, 2e-6, 1e-6, 5e-7, 2e-7)   # costliest (largest) first
    assert Plan().lora_lrs == SPEC_LORA                                             # ascending
    neither = Plan(sweep=(1e-5,), extended=(), lora=(3e-4, 1e-4))   # neither reference LR in the grids
    assert neither.full_lrs == (ETA_REF, 1e-5) and neither.lora_lrs == (1e-4, 3e-4, LORA_REF)
    both = Plan(sweep=(ETA_REF, 1e-5), extended=(1e-6, 1e-5))           # overlaps counted once
    assert both.full_lrs == (ETA_REF, 1e-5, 1e-6)
    assert Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,)).full_lrs == (ETA_REF,)
    assert Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,)).lora_lrs == (LORA_REF,)


def test_plan_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Plan().steps = 10


# --- parse_models -----------------------------------------------------------------------

@pytest.mark.parametrize("text, models", [("a", ("a",)), (" a , b ", ("a", "b")), ("a,b,c", ("a", "b", "c")),
                                          ("smollm2-135m,/some/dir", ("smollm2-135m", "/some/dir"))])
def test_parse_models(text, models):
    assert parse_models(text) == models


@pytest.mark.parametrize("text", [",,,", "a,,b", "", " ", "a,", ",a", "a, ,b"])
def test_parse_models_rejects_empty_lists_and_items(text):
    with pytest.raises(ValueError, match=f"model list {re.escape(repr(text))}"):
        parse_models(text)


# --- Campaign with a faked run layer ----------------------------------------------------------

UNUSABLE = ("tired", "ancient")


class FakeRuns:
    """Stands in for ``phantom.runs.orientation`` / ``trajectory``; records every call."""

    def __init__(self, unusable=UNUSABLE):
        self.unusable = set(unusable)
        self.orientation_calls = []
        self.trajectory_calls = []

    def orientation(self, model, context, *, store, loader):
        self.orientation_calls.append((model, context.id, store, loader))
        if context.id in self.unusable:
            raise contexts.ContextUnusable(f"' {context.pair[0]}' is not a single token")
        return contexts.Pair(g_id=1, c_id=2, g_word=context.pair[0], c_word=context.pair[1], p_g0=0.1, p_c0=0.2)

    def trajectory(self, model, context, *, mode, lr, steps, stop, store, loader, seed=0, device="cpu", batch=None):
        assert isinstance(context, str) and context not in self.unusable
        self.trajectory_calls.append({"model": model, "context": context, "mode": mode, "lr": lr,
                                      "steps": steps, "stop": stop, "store": store, "loader": loader,
                                      "batch": batch})
        n = steps + 1
        series = {k: np.zeros(n) for k in SERIES}
        return Trajectory(series, {"model": model, "context": context, "mode": mode, "lr": lr, "steps": steps,
                                   "stop": stop, "g_max": 0.5, "rank_contested": True, "diverged_at": None,
                                   "stopped_at": None})

    def requested(self):
        return [(c["mode"], c["lr"], c["context"], c["steps"], c["stop"]) for c in self.trajectory_calls]


def never_load(name):
    raise AssertionError(f"the loader must not be called in these tests (asked for {name!r})")


@pytest.fixture
def fake(monkeypatch):
    f = FakeRuns()
    monkeypatch.setattr(runs, "orientation", f.orientation)
    monkeypatch.setattr(runs, "trajectory", f.trajectory)
    return f


@pytest.fixture
def rs(tmp_path):
    return store.RunStore(tmp_path / "runs")


USABLE = [c for c in ALL_CONTEXTS if c not in UNUSABLE]


def combos(mode, lrs, steps=30, stop="saturated", ctxs=USABLE):
    return [(mode, lr, c, steps, stop) for lr in lrs for c in ctxs]


def test_usable_and_unusable_split(fake, rs):
    camp = Campaign("smollm2-135m", Plan(), store=rs, loader=never_load)
    assert camp.usable == USABLE
    assert set(camp.unusable) == set(UNUSABLE)
    assert camp.unusable["tired"] == "' tired' is not a single token"
    assert isinstance(camp.orientations["longing"], contexts.Pair)
    _ = camp.usable, camp.unusable, camp.orientations          # cached: no second pass
    assert [c[1] for c in fake.orientation_calls] == ALL_CONTEXTS
    assert all(m == "smollm2-135m" and s is rs and ld is never_load for m, _, s, ld in fake.orientation_calls)
    assert not rs.root.exists()                          # nothing written to the real store


def test_all_contexts_usable(monkeypatch, rs):
    f = FakeRuns(unusable=())
    monkeypatch.setattr(runs, "orientation", f.orientation)
    camp = Campaign("m", store=rs, loader=never_load)
    assert camp.usable == ALL_CONTEXTS and camp.unusable == {}


def test_default_store_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "shared"))
    camp = Campaign("m")
    assert isinstance(camp.store, store.RunStore) and camp.store.root == tmp_path / "shared"
    assert camp.plan == Plan() and camp.loader is runs.SLOT


def test_run_passes_plan_steps_stop_store_and_loader(fake, rs):
    plan = Plan(steps=12, stop="never")
    camp = Campaign("m", plan, store=rs, loader=never_load)
    t = camp.run("full", 5e-6, "longing")
    assert t.meta["context"] == "longing"
    camp.run("lora", 1e-3, "purpose", stop="born_flip")
    assert fake.requested() == [("full", 5e-6, "longing", 12, "never"), ("lora", 1e-3, "purpose", 12, "born_flip")]
    assert all(c["store"] is rs and c["loader"] is never_load and c["model"] == "m"
               for c in fake.trajectory_calls)
    assert [c["batch"] for c in fake.trajectory_calls] == [None, plan.lora_lrs]   # LoRA: the plan's grid


@pytest.mark.parametrize("plan, lr, grid", [(Plan(), 1e-3, Plan().lora_lrs), (Plan(), 7e-4, None),
                                            (Plan(batch_lora=False), 1e-3, None),
                                            (Plan(lora=(LORA_REF,)), LORA_REF, None)])
def test_a_lora_run_of_the_grid_is_computed_in_its_batch(plan, lr, grid):
    assert plan.batch("lora", lr) == grid
    assert plan.batch("full", lr) is None


def test_runs_one_per_usable_context(fake, rs):
    camp = Campaign("m", store=rs, loader=never_load)
    out = camp.runs("full", 1e-5)
    assert [t.meta["context"] for t in out] == USABLE
    assert fake.requested() == combos("full", [1e-5])


@pytest.mark.parametrize("plan", [Plan(), plan_for("quick", SMOL), plan_for("standard", SMOL),
                                  plan_for("standard", GEMMA)])
def test_accessors_request_exactly_the_planned_runs(fake, rs, plan):
    camp = Campaign("m", plan, store=rs, loader=never_load)

    def requested(method):
        fake.trajectory_calls.clear()
        out = getattr(camp, method)()
        assert len(out) == len(fake.trajectory_calls)
        return fake.requested()

    assert requested("sweep") == combos("full", plan.sweep)
    assert requested("reference") == combos("full", [ETA_REF])
    assert requested("lora_runs") == combos("lora", plan.lora)
    assert requested("lora_reference") == combos("lora", [LORA_REF])
    full_lrs = sorted(set(plan.sweep) | set(plan.saturation))
    assert requested("all_runs") == combos("full", full_lrs) + combos("lora", plan.lora)


def test_all_runs_of_the_spec_plan(fake, rs):
    camp = Campaign("m", store=rs, loader=never_load)
    out = camp.all_runs()
    assert len(out) == (8 + 5) * len(USABLE)
    assert sorted({lr for mode, lr, *_ in fake.requested() if mode == "full"}) == list(Plan().saturation)
    assert sorted({lr for mode, lr, *_ in fake.requested() if mode == "lora"}) == list(SPEC_LORA)


def _planned_sets(camp):
    planned = camp.planned()
    assert len(planned) == len(set(planned))                        # no run twice
    modes = [m for m, _, _ in planned]
    assert modes == sorted(modes)                                   # every full-FT run before LoRA ("full" < "lora")
    full = {(lr, c) for m, lr, c in planned if m == "full"}
    lora = {(lr, c) for m, lr, c in planned if m == "lora"}
    return full, lora


def test_planned_full_plan(fake, rs):
    camp = Campaign("m", store=rs, loader=never_load)
    full, lora = _planned_sets(camp)
    assert full == {(lr, c) for lr in set(SPEC_SWEEP) | set(SPEC_EXTENDED) | {ETA_REF} for c in USABLE}
    assert lora == {(lr, c) for lr in SPEC_LORA for c in USABLE}
    assert len(camp.planned()) == (8 + 5) * len(USABLE)
    assert fake.trajectory_calls == []                              # planning computes nothing


@pytest.mark.parametrize("budget, info", [("quick", SMOL), ("standard", QWEN)],
                         ids=["quick-smollm2", "standard-qwen"])
def test_planned_reduced_plans(fake, rs, budget, info):
    plan = plan_for(budget, info)
    camp = Campaign(info.name, plan, store=rs, loader=never_load)
    full, lora = _planned_sets(camp)
    assert full == {(lr, c) for lr in set(plan.sweep) | set(plan.saturation) | {ETA_REF} for c in USABLE}
    assert lora == {(LORA_REF, c) for c in USABLE}


def test_planned_adds_reference_lrs_and_covers_every_accessor(fake, rs):
    plan = Plan(sweep=(1e-5,), extended=(), lora=(3e-4,))          # neither reference LR in the grids
    camp = Campaign("m", plan, store=rs, loader=never_load)
    full, lora = _planned_sets(camp)
    assert full == {(lr, c) for lr in (1e-5, ETA_REF) for c in USABLE}
    assert lora == {(lr, c) for lr in (3e-4, LORA_REF) for c in USABLE}
    for method in ("sweep", "reference", "lora_runs", "lora_reference", "all_runs"):
        getattr(camp, method)()
    requested = {(mode, lr, c) for mode, lr, c, _, _ in fake.requested()}
    assert requested == set(camp.planned())


# --- dry run: estimate, wall_seconds, dry_run, `phantom campaign --dry-run` -----------------

def test_estimate_counts_the_grids_exactly_and_the_adaptive_runs_by_the_rule():
    e = dryrun.estimate(Plan(), SMOL, 9)
    by = {k.kind: k for k in e.kinds}
    assert by["full-FT grid"].runs == 9 * 8 and by["LoRA grid"].runs == 9 * 5
    assert not by["full-FT grid"].estimated and not by["LoRA grid"].estimated
    for name, per in dryrun.ADAPTIVE_PER_CONTEXT.items():
        assert by[name].runs == 9 * per and by[name].estimated and by[name].mode == "full"
    assert all(k.steps == k.runs * 30 for k in e.kinds)                  # the upper bound: T each
    assert e.runs == sum(k.runs for k in e.kinds) and e.steps == e.runs * 30
    assert e.contexts == 9 and not e.contexts_known and not e.solo


def test_estimate_without_saturation_or_search_has_no_adaptive_runs():
    e = dryrun.estimate(plan_for("quick", SMOL), SMOL)
    assert [k.kind for k in e.kinds] == ["full-FT grid", "LoRA grid"]
    assert e.contexts == len(contexts.CONTEXTS) and e.runs == 2 * len(contexts.CONTEXTS)


def test_estimate_seconds_follow_the_costs():
    costs = dryrun.Costs(step_s_per_param={"full": 1e-8, "lora": 2e-9}, t0_s_per_param={"full": 1e-8, "lora": 0.0},
                           copy_s_per_param=1e-8, kept={"full": 0.5, "lora": 1.0})
    info = dataclasses.replace(SMOL, n_params=100_000_000)
    e = dryrun.estimate(Plan(sweep=(ETA_REF,), extended=(), lora=(LORA_REF,), eta_c=False), info, 1, costs)
    full, lora = e.kinds
    assert full.seconds == pytest.approx(1 + 1 + 15 * 1.0)                # copy + t = 0 + 15 kept updates
    assert lora.seconds == pytest.approx(1 + 30 * 0.2)
    assert e.seconds == pytest.approx(full.seconds + lora.seconds)


def test_default_costs_reproduce_the_measured_steps():
    """The per-parameter fit gives each model's own per-update seconds, measured in the cold store of
    2026-12-06 11:13 UTC (2 workers, contention, LoRA grids batched), to 25%: one coefficient per
    mode for every model."""
    c = dryrun.COSTS
    for mode, measured in {"full": {SMOL: 0.41, GEMMA: 0.79}, "lora": {SMOL: 0.135, GEMMA: 0.254}}.items():
        for info, seconds in measured.items():
            assert c.step_s_per_param[mode] * info.n_params == pytest.approx(seconds, rel=0.25), (mode, info.name)
    assert 0 < c.kept["lora"] <= c.kept["full"] <= 1


def test_wall_seconds_spreads_over_workers_but_solo_full_ft_is_serial():
    light, big = dryrun.estimate(Plan(), SMOL), dryrun.estimate(Plan(), QWEN)
    big_full = sum(k.seconds for k in big.kinds if k.mode == "full")
    assert big.solo and big.serial_seconds == pytest.approx(big_full)
    assert dryrun.wall_seconds([light], 2) == pytest.approx(light.seconds / 2)
    assert dryrun.wall_seconds([light], 1) == pytest.approx(light.seconds)
    assert dryrun.wall_seconds([light, big], 8) == pytest.approx(big.serial_seconds)
    with pytest.raises(ValueError):
        dryrun.wall_seconds([light], 0)


def _no_load(name):
    raise AssertionError(f"a dry run loaded {name}")


def test_dry_run_reads_usable_contexts_from_the_store_and_computes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "model_info", {"smollm2-135m": SMOL, "gemma3-270m": GEMMA}.__getitem__)
    monkeypatch.setattr(runs, "SLOT", _no_load)
    monkeypatch.setattr(zoo, "load", _no_load)
    rs = store.RunStore(tmp_path / "runs")
    cold = dryrun.dry_run(["smollm2-135m"], "standard", rs)[0]
    assert cold.contexts == len(contexts.CONTEXTS) and not cold.contexts_known
    assert not (tmp_path / "runs").exists()                              # nothing written
    pair = {"g_word": "a", "c_word": "b", "g_id": 1, "c_id": 2, "p_g0": 0.1, "p_c0": 0.2}
    for i, c in enumerate(contexts.CONTEXTS):                             # a warm store: one context unusable
        payload = {"unusable": "no pair"} if i == 0 else pair
        rs.get_or_compute(runs.key("orientation", "smollm2-135m", context=runs._context_fields(c)),
                          lambda p=payload: p)
    warm = dryrun.dry_run(["smollm2-135m", "gemma3-270m"], "standard", rs)
    assert warm[0].contexts == len(contexts.CONTEXTS) - 1 and warm[0].contexts_known
    assert warm[1].contexts == len(contexts.CONTEXTS) and not warm[1].contexts_known


def test_format_dry_run_prints_a_block_per_model_and_a_total():
    text = dryrun.format_dry_run([dryrun.estimate(Plan(), SMOL), dryrun.estimate(Plan(), GEMMA, 7)],
                                   "standard", 2)
    lines = text.splitlines()
    assert sum(line.startswith(("smollm2-135m (", "gemma3-270m (")) for line in lines) == 2
    assert sum(line.strip().startswith("total ") for line in lines) == 2      # one per model
    assert lines[-1].startswith("total: ") and "2 workers (xdist -n 2)" in lines[-1]
    assert "7 usable contexts" in text and "A2 critical-LR probes" in text and "T = 30" in text


def test_cli_campaign_dry_run_prints_the_plan_and_computes_nothing(monkeypatch, tmp_path, capsys):
    from phantom import cli, executor
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    infos = {"smollm2-135m": SMOL, "gemma3-270m": GEMMA}
    monkeypatch.setattr(runs, "model_info", lambda name: infos.get(name, dataclasses.replace(SMOL, name=name)))
    monkeypatch.setattr(runs, "SLOT", _no_load)
    monkeypatch.setattr(zoo, "load", _no_load)
    monkeypatch.setattr(executor, "compute", lambda *a, **k: pytest.fail("a dry run computed"))
    code = cli.main(["campaign", "--budget", "standard", "--dry-run", "--workers", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and "error" not in err
    standard = zoo_models("offline", "standard")
    blocks = [line for line in out.splitlines() if line.startswith(tuple(f"{m} (" for m in standard))]
    assert len(blocks) == len(standard) and out.splitlines()[-1].startswith("total: ")
    assert "full-FT grid" in out and "LoRA grid" in out and "A4 η_H runs" in out
    assert not (tmp_path / "runs").exists()
