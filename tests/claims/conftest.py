"""Claim × model machinery (scikit-learn's ``parametrize_with_checks`` for SPEC §6).

- ``model`` / ``campaign``: per-model claims are parametrised over the session's models.
- ``zoo``: the campaigns of every model, for the cross-model claims.
- ``judge(verdict)``: records the verdict and turns it into the test outcome —
  reproduced → pass; not reproduced → fail, unless ``expected.toml`` lists that
  (claim, model) as not reproduced (then a strict xfail: a flip either way fails);
  not testable → skip with the reason.
- The controller collects the verdicts from every xdist worker (``user_properties``) and
  writes CLAIMS.md once at the end (``pytest_sessionfinish``).
"""
from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from phantom import campaign as cmp
from phantom import claims, plots, store, zoo as zoo_mod
from phantom import report as claims_md

EXPECTED = Path(__file__).with_name("expected.toml")
_VERDICTS: list[claims.Verdict] = []
_KEYS = {"requested": set(), "computed": set()}   # store keys, gathered from every worker
_START = time.time()


def session_models(config) -> tuple[str, ...]:
    return cmp.select_models(config.getoption("--models"), config.getoption("--zoo"),
                             config.getoption("--budget"))


def expected_not_reproduced() -> dict[tuple[str, str], dict]:
    """(claim, model) → entry of expected.toml (measured value and reason)."""
    entries = tomllib.loads(EXPECTED.read_text(encoding="utf-8")).get("not_reproduced", [])
    out = {}
    for e in entries:
        if e.get("claim") not in claims.BY_ID or not e.get("model") or not e.get("reason"):
            raise pytest.UsageError(f"{EXPECTED.name}: every entry needs a known claim, a model and a reason: {e}")
        out[(e["claim"], e["model"])] = e
    return out


def pytest_collection_modifyitems(session, config, items):
    for model in session_models(config):
        try:
            zoo_mod.check_name(model)
        except zoo_mod.UnknownModel as err:
            raise pytest.UsageError(str(err)) from None


def pytest_generate_tests(metafunc):
    if "model" in metafunc.fixturenames:
        metafunc.parametrize("model", session_models(metafunc.config), scope="session")


@pytest.fixture(scope="session")
def budget(request) -> str:
    return request.config.getoption("--budget")


@pytest.fixture(scope="session")
def campaign(model, budget) -> cmp.Campaign:
    return cmp.Campaign(model, cmp.plan_for(budget, model))


@pytest.fixture(scope="session")
def zoo(request, budget) -> list[cmp.Campaign]:
    return [cmp.Campaign(m, cmp.plan_for(budget, m)) for m in session_models(request.config)]


@pytest.fixture
def judge(record_property):
    """Record a verdict and make it the test's outcome (see module docstring)."""
    expected = expected_not_reproduced()

    def _judge(verdict: claims.Verdict) -> None:
        record_property("verdict", json.dumps(verdict.__dict__, default=str))
        listed = expected.get((verdict.claim, verdict.model))
        if verdict.status == claims.NOT_TESTABLE:
            pytest.skip(f"{verdict.claim} not testable on {verdict.model}: {verdict.value}")
        if listed and verdict.status == claims.NOT_REPRODUCED:
            pytest.xfail(f"not reproduced, as expected: {verdict.value} — {listed['reason']}")
        if listed:
            pytest.fail(f"verdict flipped: {verdict.claim} on {verdict.model} is listed as not reproduced "
                        f"in expected.toml but now reproduces: {verdict.value}")
        if verdict.status == claims.NOT_REPRODUCED:
            pytest.fail(f"{verdict.claim} not reproduced on {verdict.model}: {verdict.value}")

    return _judge


def pytest_runtest_logreport(report) -> None:
    """Runs in the controller for every report, including those relayed from xdist workers."""
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "verdict":
            d = json.loads(value)
            _VERDICTS.append(claims.Verdict(d["claim"], d["model"], d["status"], d["value"], int(d["n"]),
                                            d.get("details") or {}))


def pytest_testnodedown(node, error):
    """Controller side: gather the store keys a worker asked for and computed."""
    for kind, keys in node.workeroutput.get("store_keys", {}).items():
        _KEYS[kind] |= {tuple(k) for k in keys}


def _session_log(entry: dict | None = None) -> list[dict]:
    """Earlier claims sessions on this machine (kept beside the run store); append ``entry``."""
    path = store.default_root().parent / "claims-sessions.jsonl"
    history = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if entry is not None:
        store.write_atomic(path, "".join(json.dumps(h) + "\n" for h in history + [entry]))
    return history


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):     # a worker: hand its store keys to the controller
        session.config.workeroutput["store_keys"] = {"requested": sorted(store.REQUESTED),
                                                     "computed": sorted(store.COMPUTED)}
        return
    _KEYS["requested"] |= store.REQUESTED          # without xdist, the controller did the work
    _KEYS["computed"] |= store.COMPUTED
    if not _VERDICTS:
        return            # unit-test sessions write nothing
    config = session.config
    models = session_models(config)
    budget = config.getoption("--budget")
    try:
        figures = plots.claims_figures(cmp.Campaign(models[0], cmp.plan_for(budget, models[0])),
                                       Path(config.rootpath) / "docs" / "figures")
    except Exception as err:  # a figure problem must not hide the verdict table
        figures = {f"figures failed: {err}": ""}
    meta = claims_md.Session(
        zoo=config.getoption("--models") and "custom" or config.getoption("--zoo"),
        budget=budget,
        models={m: store.weights_sha256(m) for m in models}, versions=store.versions(),
        wall_s=time.time() - _START, computed=len(_KEYS["computed"]), requested=len(_KEYS["requested"]),
        reductions={m: cmp.plan_for(budget, m).reductions for m in models},
        figures={k: str(Path(v).relative_to(config.rootpath)) if v else v for k, v in figures.items()},
        history=_session_log(),
        workers=f"-n {config.option.numprocesses}" if getattr(config.option, "numprocesses", None) else "no xdist")
    _session_log(meta.record())
    claims_md.write(Path(config.rootpath) / config.getoption("--claims-md"), _VERDICTS, meta)
