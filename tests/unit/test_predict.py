"""``phantom predict``: the blind critical LR of user probes (SPEC §5), k read from the run store only.

The store is a temporary ``PHANTOM_RUNS``. Its η_c and blind-r entries are written by the real
code paths (:func:`phantom.campaign.critical_lr_of`, :func:`phantom.runs.blind_r`, real
orientations) with the bisection and the gradients replaced by known values, so the expected
``k`` and ``η̂_c`` follow from the formula."""
from __future__ import annotations

import json
import math
import re

import pytest
import tiny_models

from phantom import campaign, cli, dynamics, laws, runs
from phantom.monitor import NO_K, blind_constant, blind_lr
from phantom.store import RunStore

LONGING = "After twenty years abroad, she felt a deep sense of"
KNOWN = {"smollm2-135m": (2e-6, -3.0), "tiny": (5e-6, -6.0)}   # model → (η_c, Δz_0 with r = 1): q = −Δz_0/30


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    return RunStore(tmp_path / "runs")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tiny_models.build_tiny("llama", tmp_path_factory.mktemp("tiny_predict") / "llama"))


def _csv(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _measure(model: str, store: RunStore, monkeypatch, eta_c: float, dz0: float) -> None:
    """Store η_c and blind-r entries of ``model`` under the keys the laws build (known values)."""
    with monkeypatch.context() as m:
        m.setattr(dynamics, "blind_r", lambda loaded, context, pair: {"r": 1.0, "dz0": dz0})
        m.setattr(laws, "critical_lr", lambda f, grid, rtol: laws.CriticalLR(eta_c, (eta_c * 0.99, eta_c),
                                                                              ((eta_c, 0.5),), True))
        c = campaign.Campaign(model, campaign.Plan(), store)
        assert campaign.blind_statistic(c).q == pytest.approx(-dz0 / 30)
        assert campaign.critical_lr_of(c).eta_c == eta_c


def test_blind_lr_formula_and_reasons():
    assert blind_lr(2e-4, -3.0, 1e4, 30) == (pytest.approx(2e-4 * 3.0 / (30 * 1e4)), None)
    assert blind_lr(2e-4, -3.0, 1e4, 10)[0] == pytest.approx(2e-4 * 3.0 / (10 * 1e4))
    eta, why = blind_lr(2e-4, -3.0, -5.0)
    assert eta is None and "r = -5 ≤ 0" in why
    assert blind_lr(2e-4, -3.0, 0.0)[1].startswith("r = 0 ≤ 0")
    assert "already leads" in blind_lr(2e-4, 0.5, 1.0)[1]
    assert blind_lr(None, -3.0, 1.0) == (None, NO_K)
    assert "not computed" in blind_lr(2e-4, -3.0, None)[1]


def test_blind_constant_reads_only(store, tiny_dir, monkeypatch):
    """Missing entries are named, never computed: the store stays empty."""
    def boom(*a, **k):
        raise AssertionError("blind_constant computed something")
    monkeypatch.setattr(dynamics, "blind_r", boom)
    monkeypatch.setattr(dynamics, "run", boom)
    const = blind_constant([tiny_dir], store)
    assert const.k is None and const.ratios == {} and const.loo == {}
    assert const.missing == {tiny_dir: f"not measured: its orientation entry is not in the run store {store.root}"}
    assert not any(p.suffix == ".json" for p in store.root.rglob("*"))


@pytest.mark.parametrize("text, match", [
    ("context,target\nHe never found the,purpose\n", r"lacks the column\(s\) competitor"),
    ("context,target,competitor\nHe never found the,,meaning\n", "line 2: empty target"),
    ("context,target,competitor\n\n", "has a header but no probe"),
    ("", r"lacks the column\(s\) context, target, competitor"),
])
def test_bad_csv_is_one_line_error(tmp_path, capsys, text, match):
    status = cli.main(["predict", "--model", "smollm2-135m", "--probes", _csv(tmp_path / "p.csv", text),
                       "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith("phantom: error: probes file") and "\n" not in err
    assert re.search(match, err)


def test_missing_csv_file(tmp_path, capsys):
    assert cli.main(["predict", "--model", "smollm2-135m", "--probes", str(tmp_path / "nope.csv")]) == 1
    assert "cannot read the probes file" in capsys.readouterr().err


def test_nothing_measured_names_the_laws_command(store, tiny_dir, tmp_path, capsys):
    csv = _csv(tmp_path / "p.csv", "context,target,competitor,name\nHe never found the,purpose,meaning,found\n")
    assert cli.main(["predict", "--model", tiny_dir, "--probes", csv, "--k-models", f"{tiny_dir},qwen2.5-0.5b",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "k           none: no model has η_c and q in the run store" in out
    assert f"measure them with: python -m phantom laws --models {tiny_dir},qwen2.5-0.5b" in out
    doc = json.loads((tmp_path / f"predict_{cli.safe_name(tiny_dir)}.json").read_text())
    assert doc["k"] is None and set(doc["k_missing"]) == {tiny_dir, "qwen2.5-0.5b"}
    (probe,) = doc["probes"]
    assert probe["name"] == "found" and probe["eta_hat"] is None and probe["unpredictable"] == NO_K
    assert probe["r"] is not None and -1 < probe["g_gc"] < 1 and probe["burial"] > 0


@pytest.mark.slow
def test_splitting_word_on_smollm2(tmp_path, capsys):
    csv = _csv(tmp_path / "p.csv", "context,target,competitor\nHe never found the,purpose,antidisestablishment\n")
    assert cli.main(["predict", "--model", "smollm2-135m", "--probes", csv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "' antidisestablishment' is not a single token (splits into [" in err
    assert not list(tmp_path.glob("predict_*.json"))


@pytest.mark.slow
def test_predict_smollm2_with_a_warm_store(store, tiny_dir, tmp_path, monkeypatch, capsys, one_torch_thread):
    _measure(tiny_dir, store, monkeypatch, *KNOWN["tiny"])
    _measure("smollm2-135m", store, monkeypatch, *KNOWN["smollm2-135m"])
    csv = _csv(tmp_path / "p.csv", f'context,target,competitor,name\n"{LONGING}",yearning,longing,longing\n')
    status = cli.main(["predict", "--model", "smollm2-135m", "--probes", csv, "--k-models",
                       f"smollm2-135m,{tiny_dir},qwen2.5-0.5b", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    doc = json.loads((tmp_path / "predict_smollm2-135m.json").read_text())
    ratios = {m: e / (-dz / 30) for m, (e, dz) in KNOWN.items()}                 # η_c / q
    k = math.sqrt(ratios["smollm2-135m"] * ratios["tiny"])
    assert doc["k"] == pytest.approx(k, rel=1e-12)
    assert set(doc["k_models"]) == {"smollm2-135m", tiny_dir} and set(doc["k_missing"]) == {"qwen2.5-0.5b"}
    # leave-one-out: each model predicted with k from the other one alone
    assert doc["loo_rel_error"]["smollm2-135m"] == pytest.approx(abs(ratios["tiny"] * 0.1 - 2e-6) / 2e-6)
    assert doc["loo_rel_error"][tiny_dir] == pytest.approx(abs(ratios["smollm2-135m"] * 0.2 - 5e-6) / 5e-6)
    (probe,) = doc["probes"]
    assert probe["dz0"] < 0 < probe["r"] and probe["unpredictable"] is None
    assert probe["eta_hat"] == pytest.approx(k * -probe["dz0"] / (30 * probe["r"]), rel=1e-12)
    assert probe["g_gc"] == pytest.approx(0.9053, abs=1e-4) and probe["p_g0"] < probe["p_c0"]
    assert f"k           {k:.4g} = geometric mean of η_c/q over smollm2-135m" in out
    assert f"{probe['eta_hat']:.3g}" in out and "LOO error   smollm2-135m 25.0%, " in out
    assert runs.orientation("smollm2-135m", "longing", store=store).g_word == "yearning"
