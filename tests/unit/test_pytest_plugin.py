"""The claims plugin (phantom.pytest_plugin) driven by pytester: outcomes, verdicts.json, CLAIMS.md.

Each test runs an inner pytest session in a subprocess, on a tiny local model, with a test file
that judges hand-made verdicts through the plugin's ``claim_case`` parametrisation and ``judge``
fixture: reproduced passes, not reproduced fails, an expected failure xfails (strictly), a
flipped expectation fails, not testable skips; the controller writes verdicts.json and CLAIMS.md
only from a complete session.
"""
import json
import re

import pytest
import tiny_models

from phantom import claims as registry
from phantom import report
from phantom.pytest_plugin import figures_dir, read_expected

pytest_plugins = ["pytester"]

FAKE_TEST = '''
import json, os
from phantom import claims as registry

STATUS = json.loads(os.environ.get("FAKE_STATUS", "{}"))

def test_claim(claim_case, judge):
    status = STATUS.get(claim_case.claim.id, "reproduced")
    judge(registry.Verdict(claim_case.claim.id, claim_case.model, status, f"fake {status}", 3))
'''
N_CASES = len(registry.CLAIMS)   # one model: one case per claim


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_models.build_tiny("llama", tmp_path_factory.mktemp("m") / "tiny-llama"))


@pytest.fixture
def inner(pytester, monkeypatch, tiny):
    """Run the inner claims session; returns (result, paths)."""
    monkeypatch.setenv("PHANTOM_RUNS", str(pytester.path / "cache" / "runs"))
    pytester.makepyfile(test_fake=FAKE_TEST)
    paths = {"md": pytester.path / "CLAIMS.md", "json": pytester.path / "verdicts.json",
             "partial": pytester.path / "cache" / "claims-partial"}

    def run(*args, status=None, expected=None):
        monkeypatch.setenv("FAKE_STATUS", json.dumps(status or {}))
        if expected is not None:
            (pytester.path / "expected.toml").write_text(expected)
        return pytester.runpytest_subprocess("-p", "phantom.pytest_plugin", "--models", tiny,
                                             "--expected", "expected.toml", "--claims-md", "CLAIMS.md",
                                             "--verdicts", "verdicts.json", "-p", "no:cacheprovider", *args)
    return run, paths


def _listed(claim, model, measured="0/3"):
    return f'[[not_reproduced]]\nclaim = "{claim}"\nmodel = "{model}"\nmeasured = "{measured}"\nreason = "why"\n'


def test_outcomes_follow_verdicts_and_a_complete_session_writes_both_files(inner, tiny):
    run, paths = inner
    status = {"C1": "not reproduced", "C2": "not reproduced", "C3": "reproduced", "C9": "not testable"}
    result = run(status=status, expected=_listed("C2", tiny))
    result.assert_outcomes(passed=N_CASES - 3, failed=1, xfailed=1, skipped=1)
    result.stdout.fnmatch_lines(["*C1 not reproduced on*fake not reproduced*"])
    verdicts, session = report.from_json(paths["json"].read_text())
    assert {(v.claim, v.status) for v in verdicts} >= {("C1", "not reproduced"), ("C2", "not reproduced"),
                                                       ("C3", "reproduced"), ("C9", "not testable")}
    assert len(verdicts) == N_CASES and session.models and list(session.models) == [tiny]
    md = paths["md"].read_text()
    assert "❌ not reproduced" in md and "⏭ not testable" in md and "fake reproduced" in md
    assert not paths["partial"].exists()


def test_each_table_has_its_own_figures(tmp_path):
    root = tmp_path / "repo"
    figures = root / "docs" / "figures"
    assert figures_dir(root, root / "CLAIMS.md", complete=True) == figures
    assert figures_dir(root, root / "docs" / "claims-full.md", complete=True) == figures / "claims-full"
    partial = root / "cache" / "claims-partial"
    assert figures_dir(root, partial / "CLAIMS.md", complete=False) == partial / "docs" / "figures"
    outside = tmp_path / "elsewhere"          # a complete table outside the repository: its figures beside it
    assert figures_dir(root, outside / "C.md", complete=True) == outside / "docs" / "figures"


def test_flipped_expectation_fails(inner, tiny):
    run, _ = inner
    result = run(status={"C5": "reproduced"}, expected=_listed("C5", tiny))
    result.assert_outcomes(passed=N_CASES - 1, failed=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*expected not reproduced*why*"])


def test_ids_are_claim_and_model(inner, tiny):
    run, _ = inner
    result = run("--collect-only", "-q")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "test_claim[" in line]
    escaped = lambda cid: cid.encode("unicode_escape").decode()      # pytest's ids: C3′ → C3\u2032  # noqa: E731
    assert ids == [f"{escaped(c.id)}-{tiny if c.scope == 'model' else 'zoo'}" for c in registry.CLAIMS]


def test_an_incomplete_session_leaves_claims_md_untouched(inner):
    run, paths = inner
    paths["md"].write_text("committed\n")
    result = run("-k", "C1- or C2-")
    result.assert_outcomes(passed=2)
    assert paths["md"].read_text() == "committed\n" and not paths["json"].exists()
    partial = paths["partial"] / "verdicts.json"
    assert len(report.from_json(partial.read_text())[0]) == 2
    result.stdout.fnmatch_lines(["*session incomplete (no verdict for C3-*CLAIMS.md left untouched*"])


def test_xdist_session_gathers_every_workers_verdicts(inner):
    run, paths = inner
    result = run("-n", "2")
    result.assert_outcomes(passed=N_CASES)
    assert len(report.from_json(paths["json"].read_text())[0]) == N_CASES


@pytest.mark.parametrize("models, words", [(",,,", "names no model"), ("a,,b", "empty item"),
                                           ("nonexistent-model", "unknown model")])
@pytest.mark.parametrize("xdist", [(), ("-n", "2")])
def test_bad_model_lists_are_one_usage_error_in_the_controller(pytester, monkeypatch, models, words, xdist):
    monkeypatch.setenv("PHANTOM_RUNS", str(pytester.path / "runs"))
    pytester.makepyfile(test_fake=FAKE_TEST)
    result = pytester.runpytest_subprocess("-p", "phantom.pytest_plugin", "--models", models, *xdist)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str() and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "CLAIMS.md").exists()


def test_malformed_expected_toml_is_one_usage_error(inner):
    run, paths = inner
    result = run(expected='[[not_reproduced]]\nclaim = "C99"\nmodel = "m"\n')
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.str().count("needs a known claim") == 1
    assert not paths["md"].exists()


def test_an_expected_entry_with_a_budget_applies_under_that_budget_only(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(_listed("C2", "m", "any budget") + _listed("C9", "zoo", "n=2") + 'budget = "standard"\n'
                    + _listed("C9", "zoo", "n=3") + 'budget = "full"\n')
    assert {k: e["measured"] for k, e in read_expected(path, "standard").items()} == \
        {("C2", "m"): "any budget", ("C9", "zoo"): "n=2"}
    assert {k: e["measured"] for k, e in read_expected(path, "full").items()} == \
        {("C2", "m"): "any budget", ("C9", "zoo"): "n=3"}
    assert read_expected(path, "quick").keys() == {("C2", "m")}


@pytest.mark.parametrize("entries, words", [
    (_listed("C9", "zoo") + 'budget = "huge"\n', "a budget in"),
    (_listed("C9", "zoo") * 2, "two [[not_reproduced]] entries for C9 on zoo under budget 'standard'"),
    (_listed("C9", "zoo") + _listed("C9", "zoo") + 'budget = "standard"\n', "two [[not_reproduced]]"),
])
def test_a_bad_or_doubled_expected_entry_is_one_usage_error(tmp_path, entries, words):
    path = tmp_path / "expected.toml"
    path.write_text(entries)
    with pytest.raises(pytest.UsageError, match=re.escape(words)):
        read_expected(path, "standard")
    assert read_expected(tmp_path / "absent.toml", "standard") == {}


def test_a_session_without_xdist_loaded_works(inner):
    run, paths = inner
    result = run("-p", "no:xdist")
    result.assert_outcomes(passed=N_CASES)
    assert len(report.from_json(paths["json"].read_text())[0]) == N_CASES


@pytest.mark.ray
@pytest.mark.parametrize("address, words", [("head:0", "--address: not a Ray address"),
                                            ("127.0.0.1:1", "no Ray cluster at 127.0.0.1:1: cannot connect")])
def test_a_bad_or_dead_ray_address_is_one_usage_error(inner, tiny, address, words):
    run, paths = inner
    result = run("--executor", "ray", "--address", address)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count(words) == 1 and "INTERNALERROR" not in result.stdout.str() + err
    assert not paths["md"].exists()


def test_collect_only_prints_the_sessions_plan_once_from_the_controller(inner, tiny):
    """The header: one block for the model (a line per kind of run) and one total, nothing computed."""
    run, paths = inner
    result = run("--collect-only", "-q", "-n", "2")
    plan = [line for line in result.stdout.lines if line.startswith("phantom plan: ")]
    assert sum(line.startswith(f"phantom plan: {tiny} (") for line in plan) == 1
    assert any("full-FT grid" in line for line in plan) and any("LoRA grid" in line for line in plan)
    totals = [line for line in plan if line.startswith("phantom plan: total: ")]
    assert len(totals) == 1 and "(xdist -n 2)" in totals[0]
    assert not paths["json"].exists()
