"""The claim suite as a pytest plugin: claim × model items, verdicts across xdist, CLAIMS.md.

Loaded by the root ``conftest.py`` (``pytest_plugins``). Its options (``--zoo``, ``--models``,
``--budget``, ``--claims-md``, ``--verdicts``, ``--expected``) are validated once, in the
controller, before any worker starts. A test function asks for what it needs:

- ``claim_case`` — parametrised over the session's (claim × model) pairs, as scikit-learn's
  ``parametrize_with_checks`` does for estimators: ids ``C3-smollm2-135m`` or ``C9-zoo``. An
  entry of ``expected.toml`` becomes a strict ``xfail`` mark at collection, with its reason.
- ``planned_run`` — every run of :meth:`phantom.campaign.Campaign.planned` of every model, in
  :func:`phantom.campaign.schedule`'s order (solo full-FT runs first, then costliest first),
  so that pytest-xdist spreads the fine-tuning over the workers.
- ``searched_context`` — ``(model, context)`` of every usable context of a model whose plan
  has a saturation grid or a critical-LR search: its adaptive runs (A1, A2) are made there.
- ``searched_model`` — the models whose plan has the critical-LR search.
- ``session_model`` — every model of the session.
- ``claims`` — the :class:`ClaimsSession` (campaigns and run store of this process).
- ``judge`` — records a verdict and makes it the test's outcome: reproduced passes, not
  reproduced fails (an expected one is a strict xfail), not testable skips with the reason.

The controller gathers every verdict (xdist relays ``user_properties``) and the run-store
keys each worker read and computed. At the end it writes ``verdicts.json`` (every verdict
and the header facts) and renders CLAIMS.md from it — only from a complete session: one
that was not interrupted and has a verdict for every (claim, model) pair. Anything less
goes to ``<cache>/claims-partial/`` and the committed table is left untouched.
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import campaign as cmp
from . import claims as registry
from . import dryrun, plans, report, runs, zoo
from .store import NotStored, RunStore, default_root

EXPECTED = Path("tests") / "claims" / "expected.toml"
CLAIM_FIXTURES = {"claim_case", "planned_run"}   # a session with these items is a claims session


@dataclass(frozen=True)
class ClaimCase:
    """One (claim, model) item of the suite; ``model`` is ``"zoo"`` for cross-model claims."""

    claim: registry.Claim
    model: str

    @property
    def id(self) -> str:
        return f"{self.claim.id}-{self.model}"


def pytest_addoption(parser):
    group = parser.getgroup("phantom", "phantom claim suite")
    group.addoption("--zoo", default="offline", choices=tuple(plans.ZOOS),
                    help="model zoo of SPEC §7 (default: offline)")
    group.addoption("--models", default=None,
                    help="comma-separated zoo names, Hugging Face ids or local dirs (overrides --zoo)")
    group.addoption("--budget", default="standard", choices=plans.BUDGETS,
                    help="quick: SmolLM2 only; standard: SmolLM2 + Gemma-3; full: the SPEC protocol "
                         "on every model (Qwen included offline)")
    group.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                    help="torch device of the fine-tuning runs; CUDA runs are stored apart (default: cpu)")
    group.addoption("--executor", default="local", choices=("local", "ray"),
                    help="ray: compute the session's runs on a Ray cluster first (phantom campaign), "
                         "then judge the claims from the warm store (default: local, in the test items)")
    group.addoption("--address", default=None, help="Ray cluster address for --executor ray (default: a "
                    "private one-node cluster)")
    group.addoption("--claims-md", default=None,
                    help="where to write the verdict table (default: CLAIMS.md in the rootdir)")
    group.addoption("--verdicts", default=None, help="where to write the machine-readable verdicts, which "
                    "CI compares (default: verdicts.json in the rootdir)")
    group.addoption("--baseline", default=None, help="verdicts.json from before the SPEC §8 amendments, whose "
                    "replaced verdicts CLAIMS.md lists (default: docs/verdicts[-full]-pre-amendments.json)")
    group.addoption("--expected", default=None, help="TOML list of (claim, model) pairs expected not to "
                    f"reproduce (default: {EXPECTED} in the rootdir)")


def _path(config: pytest.Config, option: str, default: Path) -> Path:
    """An option's path: as given, relative to where pytest was invoked; else ``default`` in the rootdir."""
    given = config.getoption(option)
    return Path(config.invocation_params.dir) / given if given else Path(config.rootpath) / default


def figures_dir(root: Path, md: Path, complete: bool) -> Path:
    """Where a table's figures go, so that no table's figures overwrite another's.

    The repository's ``CLAIMS.md``: ``docs/figures``; any other complete table in the
    repository, e.g. ``docs/claims-full.md``: ``docs/figures/claims-full``; a partial table,
    or one outside the repository: its own ``docs/figures`` beside it.
    """
    if not complete or not md.resolve().is_relative_to(root.resolve()):
        return md.parent / "docs" / "figures"
    figures = root / "docs" / "figures"
    return figures if md.resolve() == (root / "CLAIMS.md").resolve() else figures / md.stem


def read_expected(path: Path, budget: str) -> dict[tuple[str, str], dict]:
    """(claim, model) → entry of an expected.toml that applies under ``budget``.

    An entry with a ``budget`` field applies under that budget only (a zoo-level claim's
    value depends on which models the budget runs); one without applies under every budget.
    A malformed file, or two entries for one (claim, model, budget), is one usage error.
    """
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("not_reproduced", [])
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise pytest.UsageError(f"{path}: not a readable TOML file ({err})") from None
    out = {}
    for e in entries if isinstance(entries, list) else [entries]:
        if not isinstance(e, dict) or e.get("claim") not in registry.BY_ID or not e.get("model") \
                or not e.get("reason") or e.get("budget", budget) not in plans.BUDGETS:
            raise pytest.UsageError(f"{path}: every [[not_reproduced]] entry needs a known claim, "
                                    f"a model, a reason and, if any, a budget in {plans.BUDGETS}; got {e!r}")
        if e.get("budget", budget) != budget:
            continue
        if (e["claim"], e["model"]) in out:
            raise pytest.UsageError(f"{path}: two [[not_reproduced]] entries for {e['claim']} on "
                                    f"{e['model']} under budget {budget!r}")
        out[(e["claim"], e["model"])] = e
    return out


class ClaimsSession:
    """Everything one pytest process knows about its claims session (no module-global state)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.models = plans.select_models(config.getoption("--models"), config.getoption("--zoo"),
                                        config.getoption("--budget"))
        self.budget = config.getoption("--budget")
        self.device = config.getoption("--device")
        self.expected = read_expected(_path(config, "--expected", EXPECTED), self.budget)
        self.store = RunStore()
        self.start = time.time()
        self.verdicts: list[registry.Verdict] = []
        self.keys = {"requested": set(), "computed": set()}
        self._campaigns: dict[str, cmp.Campaign] = {}

    def campaign(self, model: str) -> cmp.Campaign:
        if model not in self._campaigns:
            self._campaigns[model] = cmp.Campaign.for_budget(model, self.budget, self.store, device=self.device)
        return self._campaigns[model]

    def zoo(self) -> list[cmp.Campaign]:
        return [self.campaign(m) for m in self.models]

    def cases(self) -> list[ClaimCase]:
        """Every (claim, model) pair of the session, in registry order."""
        return [ClaimCase(c, m) for c in registry.CLAIMS
                for m in (self.models if c.scope == "model" else ("zoo",))]

    def check(self, case: ClaimCase) -> registry.Verdict:
        """The claim's verdict on its model (or on the zoo), read through the run layer."""
        subject = self.campaign(case.model) if case.claim.scope == "model" else self.zoo()
        return case.claim.check(subject)

    def param(self, case: ClaimCase):
        listed = self.expected.get((case.claim.id, case.model))
        marks = [pytest.mark.xfail(strict=True, raises=NotReproduced, reason=f"expected not reproduced "
                                   f"({listed['measured']}): {listed['reason']}")] if listed else []
        return pytest.param(case, id=case.id, marks=marks)

    # --- hooks ---------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc):
        if "claim_case" in metafunc.fixturenames:
            metafunc.parametrize("claim_case", [self.param(c) for c in self.cases()])
        if "planned_run" in metafunc.fixturenames:
            metafunc.parametrize("planned_run", [pytest.param(r, id="{}-{}-{:g}-{}".format(*r))
                                                 for r in cmp.schedule(self.zoo())])
        if "searched_context" in metafunc.fixturenames:
            metafunc.parametrize("searched_context", [
                pytest.param((m, c), id=f"{m}-{c}") for m in self.models
                if self.campaign(m).plan.saturation or self.campaign(m).plan.eta_c for c in self.campaign(m).usable])
        if "searched_model" in metafunc.fixturenames:
            metafunc.parametrize("searched_model", [m for m in self.models if self.campaign(m).plan.eta_c])
        if "session_model" in metafunc.fixturenames:
            metafunc.parametrize("session_model", self.models)

    def pytest_sessionstart(self, session):
        """With ``--executor ray``, the controller computes every entry of the session first."""
        if self.config.getoption("--executor") == "ray" and not hasattr(self.config, "workerinput"):
            from . import cluster, executor  # Ray: an optional extra
            address = self.config.getoption("--address")
            try:
                if address is not None:
                    cluster.parse_address(address)
                executor.compute(self.zoo(), "ray", address)
            except (executor.ExecutorError, ValueError) as err:
                raise pytest.UsageError(f"--address: {err}" if isinstance(err, ValueError) else str(err)) from None
            except KeyboardInterrupt as err:   # Ctrl-C or SIGTERM: Ray is down, its tasks cancelled
                signum = getattr(err, "signum", 2)
                pytest.exit(f"{'terminated' if signum == 15 else 'interrupted'} while computing the session's "
                            "runs on Ray; the entries written so far are kept", returncode=128 + signum)

    def pytest_collection_finish(self, session):
        """Controller only (a ``--collect-only`` session too): the planned runs and their estimated cost."""
        if not hasattr(self.config, "workerinput") and any(
                CLAIM_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items):
            self.announce_plan()

    @pytest.hookimpl(optionalhook=True)          # an xdist hook: the controller of -n N collects nothing
    def pytest_xdist_node_collection_finished(self, node, ids):
        if any(i.split("::")[-1].startswith(("test_claim[", "test_run[")) for i in ids):
            self.announce_plan()

    def announce_plan(self) -> None:
        """Write :func:`phantom.dryrun.format_dry_run` of the session once, from the store (nothing computed)."""
        if getattr(self, "_announced", False):
            return
        self._announced = True
        n = getattr(self.config.option, "numprocesses", None)
        workers = n if isinstance(n, int) and n > 0 else 1
        try:
            text = dryrun.format_dry_run(dryrun.dry_run(self.models, self.budget, self.store), self.budget, workers)
        except Exception as err:  # noqa: BLE001 - a header never stops the session; its runs will say why
            text = f"phantom: the session's runs not estimated ({type(err).__name__}: {err})"
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for line in text.splitlines():
            if reporter is not None:
                reporter.write_line(f"phantom plan: {line}")

    def pytest_runtest_logreport(self, report):
        """Controller side: every report, including those relayed from xdist workers."""
        if report.when == "call":
            for name, value in report.user_properties:
                if name == "verdict":
                    self.verdicts.append(registry.Verdict.from_dict(json.loads(value)))

    @pytest.hookimpl(optionalhook=True)          # an xdist hook: absent under -p no:xdist
    def pytest_testnodedown(self, node, error):
        """Controller side: the store keys a worker asked for and computed."""
        for kind, keys in node.workeroutput.get("store_keys", {}).items():
            self.keys[kind] |= {tuple(k) for k in keys}

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(session.config, "workerinput"):     # a worker: hand its store keys to the controller
            session.config.workeroutput["store_keys"] = {"requested": sorted(self.store.requested),
                                                         "computed": sorted(self.store.computed)}
            return
        self.keys["requested"] |= self.store.requested   # without xdist, this process did the work
        self.keys["computed"] |= self.store.computed
        if self.verdicts:
            self.outcome = self.publish(exitstatus)

    def pytest_terminal_summary(self, terminalreporter):
        if getattr(self, "outcome", None):
            terminalreporter.write_line(self.outcome)

    # --- writing -------------------------------------------------------------------------

    def baseline(self) -> dict:
        """``{"claim model": [status, value]}`` before the SPEC §8 amendments ({} without the file)."""
        name = "verdicts-full-pre-amendments.json" if self.budget == "full" else "verdicts-pre-amendments.json"
        path = _path(self.config, "--baseline", Path("docs") / name)
        try:
            old, _ = report.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {f"{v.claim} {v.model}": [v.status, v.value] for v in old}

    def missing(self) -> list[str]:
        """The (claim, model) pairs without a verdict."""
        have = {(v.claim, v.model) for v in self.verdicts}
        return [c.id for c in self.cases() if (c.claim.id, c.model) not in have]

    def publish(self, exitstatus) -> str:
        """Write verdicts.json and CLAIMS.md (complete session) or their partial copies; say where."""
        missing = self.missing()
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        complete = not missing and not interrupted
        final_md = _path(self.config, "--claims-md", Path("CLAIMS.md"))
        if complete:
            md, js = final_md, _path(self.config, "--verdicts", Path("verdicts.json"))
        else:
            partial = default_root().parent / "claims-partial"
            md, js = partial / "CLAIMS.md", partial / "verdicts.json"
        session = self.session_facts(figures_dir(Path(self.config.rootpath), md, complete), md.parent)
        report.publish(self.verdicts, session, verdicts_path=js, claims_md=md,
                       log_dir=default_root().parent if complete else None)
        if complete:
            return f"phantom: wrote {md} and {js} ({len(self.verdicts)} verdicts)"
        why = "interrupted" if interrupted else f"no verdict for {', '.join(missing[:6])}" \
            + ("…" if len(missing) > 6 else "")
        return f"phantom: session incomplete ({why}): {final_md} left untouched; the partial table is in {md}"

    def session_facts(self, figures_dir: Path, relative_to: Path) -> report.Session:
        first = self.models[0]
        figures = {**draw_figures(self.campaign(first), figures_dir), **draw_law_figures(self.zoo(), figures_dir)}
        return report.Session(
            zoo="custom" if self.config.getoption("--models") else self.config.getoption("--zoo"),
            budget=self.budget, models={m: runs.weights_sha256(m) for m in self.models},
            versions=runs.versions(), wall_s=time.time() - self.start,
            computed=len(self.keys["computed"]), requested=len(self.keys["requested"]),
            reductions={m: self.campaign(m).plan.reductions for m in self.models},
            bisections={m: search_report(self.campaign(m)) for m in self.models if self.campaign(m).plan.eta_c},
            figures={k: os.path.relpath(v, relative_to) if v else v for k, v in figures.items()},
            history=report.session_log(default_root().parent), baseline=self.baseline(),
            workers=f"-n {self.config.option.numprocesses}" if getattr(self.config.option, "numprocesses", None)
            else "no xdist")


def _read_only(campaign: cmp.Campaign) -> cmp.Campaign:
    """The same campaign on a read-only view of its store: a missing entry raises NotStored."""
    return cmp.Campaign(campaign.model, campaign.plan, RunStore(campaign.store.root, read_only=True),
                        device=campaign.device)


def search_report(campaign: cmp.Campaign) -> str:
    """The adaptive runs' cost line from the store (nothing is computed for the header)."""
    stored = _read_only(campaign)
    try:
        return cmp.search_report(stored)
    except NotStored as err:
        return f"not in the store ({err})"


def draw_figures(campaign: cmp.Campaign, outdir: Path) -> dict[str, str]:
    """CLAIMS.md's figures from runs already in the store (nothing is computed for a figure)."""
    from . import plots  # matplotlib, for a claims session only: unit-test sessions load this plugin too
    stored = _read_only(campaign)
    try:
        reference, lora = stored.reference(), stored.lora_reference()
    except NotStored as err:
        return {f"figures not drawn: {err}": ""}
    if not reference:
        return {}
    return {k: str(v) for k, v in plots.claims_figures(campaign.model, reference, lora, outdir).items()}


def draw_law_figures(zoo: list[cmp.Campaign], outdir: Path) -> dict[str, str]:
    """The laws' figures from the store: saturation curves per model (A1), η̂_i against η_i (A3)."""
    from . import plots
    stored = [_read_only(c) for c in zoo]
    out = {}
    try:
        for c in stored:
            if c.plan.saturation:
                out[f"{c.model}: saturation R(η) per context, fit, measured LRs and η_sat (bracketed or bound)"] = str(
                    plots.plot_saturation(c.model, cmp.saturations(c),
                                          outdir / f"saturation_{c.model.replace('/', '_')}.png"))
        searched = [c for c in stored if c.plan.eta_c]
        if len(searched) >= 2:
            points = cmp.context_points(searched)
            eta_c = {c.model: cmp.critical_lr_of(c).eta_c for c in searched}
            out["blind prediction per context: η̂_i = k q_i against the measured η_i (log-log)"] = str(
                plots.plot_context_prediction(points, eta_c, outdir / "critical_lr_contexts.png"))
    except NotStored as err:
        out[f"law figures not drawn: {err}"] = ""
    return out


class NotReproduced(AssertionError):
    """A claim's verdict is *not reproduced* (the test fails, or xfails when expected)."""


_SESSION = pytest.StashKey[ClaimsSession]()


def pytest_configure(config):
    """Validate the session's options once, in the controller too, and register the session."""
    try:
        session = ClaimsSession(config)
    except ValueError as err:           # an empty model list, an empty item
        raise pytest.UsageError(str(err)) from None
    if config.getoption("--models") is not None and not hasattr(config, "workerinput"):
        for model in session.models:
            try:
                zoo.check_name(model)
            except zoo.UnknownModel as err:
                raise pytest.UsageError(str(err)) from None
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "phantom-claims-session")
    # Claim runs differ in cost by 10×: work stealing keeps both workers busy.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "worksteal"


@pytest.fixture(scope="session")
def claims(request) -> ClaimsSession:
    return request.config.stash[_SESSION]


@pytest.fixture
def judge(record_property, claims) -> Callable[[registry.Verdict], None]:
    """Record a verdict and make it the test's outcome (see the module docstring)."""

    def _judge(verdict: registry.Verdict) -> None:
        record_property("verdict", json.dumps(verdict.to_dict()))
        if verdict.status == registry.NOT_TESTABLE:
            pytest.skip(f"{verdict.claim} not testable on {verdict.model}: {verdict.value}")
        if verdict.status == registry.NOT_REPRODUCED:
            raise NotReproduced(f"{verdict.claim} not reproduced on {verdict.model}: {verdict.value}")

    return _judge
