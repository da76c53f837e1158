"""``phantom predict``: the blind critical LR of user probes (SPEC §5), k read from the run store only.

The store is a temporary ``PHANTOM_RUNS``. Its η_c and blind-r entries are written by the real
code paths (:func:`phantom.campaign.critical_lr_of`, :func:`phantom.runs.blind_r`, real
orientations) with the bisection and the gradients replaced by known values, so the expected
``k`` and ``η̂_c`` follow from the formula."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import tiny_models

from phantom import campaign, cli, dynamics, plans, predict, runs, search
from phantom.predict import NO_K, blind_constant, blind_lr
from phantom.store import RunStore

LONGING = "After twenty years abroad, she felt a deep sense of"
KNOWN = {"smollm2-135m": (2e-6, -0.3), "tiny": (5e-6, -0.6)}   # model → (η_c, Φ_0 with r = 1): q = −Φ_0/30


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


def _measure(model: str, store: RunStore, monkeypatch, eta_c: float, phi0: float) -> None:
    """Store every context's η_i search and blind-r entry of ``model`` under the keys the laws build:
    each context flips at η_c (not at 0.995 η_c), so η_i = η_c and q_i = −Φ_0/30 everywhere."""
    def searched(camp, context, rtols, prefetch):
        return search.ContextCritical(context, {eta_c * 0.995: (False, -0.1), eta_c: (True, 0.1)})

    with monkeypatch.context() as m:
        m.setattr(dynamics, "blind_r", lambda loaded, context, pair: {"r": 1.0, "phi0": phi0})
        m.setattr(search, "context_critical", searched)
        c = campaign.Campaign(model, plans.Plan(), store)
        assert campaign.blind_statistic(c).q == pytest.approx(-phi0 / 30)
        assert campaign.critical_lr_of(c).eta_c == eta_c and campaign.critical_lr_of(c).converged


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
    assert const.k is None and const.ratios == {} and const.loo == {} and const.models == (tiny_dir,)
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


def test_csv_utf8_with_a_bom_is_read(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("context,target,competitor\nHe never found the,purpose,meaning\n".encode("utf-8-sig"))
    (probe,) = cli.read_probes(path)
    assert (probe.context, probe.target, probe.competitor) == ("He never found the", "purpose", "meaning")


@pytest.mark.parametrize("text, match", [
    ("context,target,competitor\nHe never found the, sad,purpose,meaning\n",
     re.escape("line 2: 4 fields, but the header has 3 (quote a context that contains a comma)")),
    ("context,target,competitor\n\x1b[2J\x00evil\n,x,\n", r"line 2: empty target, competitor"),
    ("con\x1b]0;pwned\x07text,target,competitor\n", r"got con\\x1b\]0;pwned\\x07text,target,competitor"),
    ("context,target,competitor\n" + "He never found the,purpose,meaning\n" * 1001, "has 1001 probes, more than 1000"),
])
def test_csv_rows_are_checked_and_their_text_escaped(tmp_path, capsys, text, match):
    status = cli.main(["predict", "--model", "smollm2-135m", "--probes", _csv(tmp_path / "p.csv", text),
                       "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and re.search(match, err) and len(err.strip().splitlines()) == 1
    assert "\x1b" not in err and "\x00" not in err and "\x07" not in err


def test_huge_inputs_fail_fast_and_bounded(tmp_path, capsys):
    """A 200k-row file fails on its size in well under a second; /dev/zero is read only up to the bound."""
    import time
    big = _csv(tmp_path / "big.csv", "context,target,competitor\n" + "He never found the,purpose,meaning\n" * 200_000)
    for path, match in ((big, "is larger than 1 MiB"), ("/dev/zero", "/dev/zero is larger than 1 MiB")):
        start = time.perf_counter()
        assert cli.main(["predict", "--model", "smollm2-135m", "--probes", path, "--out", str(tmp_path)]) == 1
        assert time.perf_counter() - start < 5 and match in capsys.readouterr().err
    cli._error("x" * 3_600_000)
    line = capsys.readouterr().err
    assert len(line) < cli.ERROR_MAX + 100 and line.rstrip().endswith("(3598000 more characters)")


def test_unwritable_out_is_reported_before_the_csv_is_read(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cli, "read_probes", lambda path: pytest.fail("read before --out was checked"))
    assert cli.main(["predict", "--model", "smollm2-135m", "--probes", "p.csv",
                     "--out", str(tmp_path / "file" / "out")]) == 1
    assert "output directory (--out)" in capsys.readouterr().err


def test_missing_csv_file(tmp_path, capsys):
    assert cli.main(["predict", "--model", "smollm2-135m", "--probes", str(tmp_path / "nope.csv")]) == 1
    assert "cannot read the probes file" in capsys.readouterr().err


def test_no_k_exits_1_before_loading_with_the_cheapest_installed_remedy(store, tiny_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """k needs every --k-models model; without it predict fails before any model loads, and the remedy
    names installed models only, cheapest first, each with a time estimate."""
    monkeypatch.setattr(predict, "installed", lambda m: m != "qwen2.5-0.5b")
    monkeypatch.setattr(cli._Loader, "__call__", lambda *a: pytest.fail("no model may load without k"))
    _measure(tiny_dir, store, monkeypatch, *KNOWN["tiny"])
    csv = _csv(tmp_path / "p.csv", "context,target,competitor,name\nHe never found the,purpose,meaning,found\n")
    status = cli.main(["predict", "--model", tiny_dir, "--probes", csv, "--out", str(tmp_path / "o"),
                       "--k-models", f"gemma3-270m,{tiny_dir},smollm2-135m,qwen2.5-0.5b"])
    out, err = capsys.readouterr()
    assert status == 1 and not (tmp_path / "o").exists()
    assert err.strip().splitlines()[-1] == ("phantom: error: no k: 3 of the 4 --k-models not measured "
                                            "(gemma3-270m, smollm2-135m, qwen2.5-0.5b); see the remedy above")
    remedy = [line for line in out.splitlines() if line.startswith("remedy")]
    smol, gemma = predict.measure_minutes("smollm2-135m"), predict.measure_minutes("gemma3-270m")
    assert 0 < smol < gemma
    assert remedy == [
        f"remedy      cheapest: python -m phantom laws --models smollm2-135m (up to ≈{smol:.0f} min on one CPU "
        "thread), then --k-models smollm2-135m (k from one model: its accuracy is then unmeasured)",
        "remedy      not installed here: qwen2.5-0.5b (leave out of --k-models, or install: README Set-up)"]
    monkeypatch.setattr(predict, "installed", lambda m: True)
    const = blind_constant(["gemma3-270m", "smollm2-135m"], store)
    assert predict.remedy(const)[0].startswith("measure: python -m phantom laws --models smollm2-135m,gemma3-270m  "
                                               f"(smollm2-135m: up to ≈{smol:.0f} min")


def constant(log_ratios: list[float], k: float = 10.0) -> predict.BlindConstant:
    """A k over models a and b whose contexts were predicted off by exp(log_ratios)."""
    per_context = {f"{'ab'[i % 2]}/c{i}": v for i, v in enumerate(log_ratios)}
    return predict.BlindConstant(("a", "b"), k, {}, {}, {}, per_context)


def test_accuracy_range_and_unreliable_flag():
    """SPEC §5 A3: the per-context errors become a ×factor range (their 90th percentile); beyond ×2, unreliable."""
    logs = [math.log(x) for x in (1.1, 1 / 1.2, 1.3, 1 / 1.4, 1.5, 1.05, 1 / 1.15, 1.25, 1.35, 1 / 1.45)]
    acc = predict.measured_accuracy(constant(logs))
    assert acc.factor == pytest.approx(math.exp(np.percentile(np.abs(logs), 90))) and acc.reliable is True
    assert acc.log_errors["a/c0"] == pytest.approx(math.log(1.1)) and len(acc.log_errors) == 10
    assert "10 contexts of a, b" in acc.source
    bad = predict.measured_accuracy(constant([math.log(5.0), 0.0]))
    assert bad.factor == pytest.approx(5.0 ** 0.9) and bad.reliable is False
    assert predict.measured_accuracy(predict.BlindConstant(("a",), 1.0, {}, {}, {}, {})).factor is None
    results = cli._predict_rows([predict_probe("x\x1b[31mred\nline")], [ROW], constant([0.1]), bad, 30)
    f = bad.factor
    assert results[0]["eta_hat_range"] == pytest.approx([results[0]["eta_hat"] / f, results[0]["eta_hat"] * f])
    assert results[0]["reliable"] is False


def predict_probe(name: str):
    from phantom.monitor import Probe
    return Probe("He never found the", "purpose", "meaning", name)


ROW = {"G_gc": 0.5, "B": 1.0, "phi": -0.2, "dz": -2.0, "r": 100.0, "p_target": 0.1, "p_competitor": 0.3}


def test_printed_table_escapes_csv_text():
    const = predict.BlindConstant(("a", "b"), 10.0, {"a": (1e-6, 1e-7), "b": (2e-6, 1e-7)}, {},
                                  {"a": (5e-6, 1e-6), "b": (1, 1)}, {"a/c": math.log(5.0), "b/c": 0.0})
    acc = predict.measured_accuracy(const)
    results = cli._predict_rows([predict_probe("x\x1b[31mred\nline\x00")], [dict(ROW, r=-1.0)], const, acc, 30)
    out = cli.format_predictions(results, const, acc, 30)
    assert "\x1b" not in out and "\x00" not in out and "x\\x1b[31mred\\nline\\x00" in out
    assert "UNRELIABLE: beyond ×2" in out and "unpredictable: r = -1 ≤ 0" in out


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
    # SPEC §5 A3 on SmolLM2: r > 0 for "purpose", r < 0 for "longing" (Adam's first step lowers its Φ)
    pair = runs.orientation("smollm2-135m", "purpose", store=store)
    csv = _csv(tmp_path / "p.csv", f"context,target,competitor,name\nHe never found the,{pair.g_word.strip()},"
                                   f'{pair.c_word.strip()},purpose\n"{LONGING}",yearning,longing,longing\n')
    status = cli.main(["predict", "--model", "smollm2-135m", "--probes", csv, "--k-models",
                       f"smollm2-135m,{tiny_dir}", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    doc = json.loads((tmp_path / "predict_smollm2-135m.json").read_text())
    ratios = {m: e / (-phi0 / 30) for m, (e, phi0) in KNOWN.items()}             # η_c / q
    k = math.sqrt(ratios["smollm2-135m"] * ratios["tiny"])
    assert doc["k"] == pytest.approx(k, rel=1e-12) and doc["k_models_used"] == ["smollm2-135m", tiny_dir]
    assert set(doc["k_models"]) == {"smollm2-135m", tiny_dir}
    # each context predicted with k from the other model alone: 2.5e-6 for 2e-6, 4e-6 for 5e-6 (A3)
    acc = doc["measured_accuracy"]
    assert set(acc["log_errors"]) == {f"{m}/{c}" for m in ("smollm2-135m", tiny_dir) for c in usable(m, store)}
    assert all(v == pytest.approx(math.log(1.25)) for v in acc["log_errors"].values())
    assert acc["factor"] == pytest.approx(1.25) and acc["reliable"] is True
    probe, longing = doc["probes"]
    assert longing["r"] < 0 and longing["eta_hat"] is None and longing["unpredictable"].startswith("r = ")
    assert probe["phi0"] < 0 < probe["r"] and probe["unpredictable"] is None and probe["reliable"] is True
    assert probe["eta_hat"] == pytest.approx(k * -probe["phi0"] / (30 * probe["r"]), rel=1e-12)
    assert probe["eta_hat_range"] == pytest.approx([probe["eta_hat"] / 1.25, probe["eta_hat"] * 1.25])
    assert longing["g_gc"] == pytest.approx(0.9053, abs=1e-4) and longing["p_g0"] < longing["p_c0"]
    assert f"k           {k:.4g} from --k-models smollm2-135m,{tiny_dir}: geometric mean of η_c/q" in out
    assert f"{probe['eta_hat']:.3g}   {probe['eta_hat'] / 1.25:.2g} – {probe['eta_hat'] * 1.25:.2g}" in out
    assert "η̂_i/η_i within ×1.25 for 90% of the" in out and "(median ×1.25); within ×2" in out
    assert runs.orientation("smollm2-135m", "longing", store=store).g_word == "yearning"


def usable(model: str, store: RunStore) -> list[str]:
    return campaign.Campaign(model, plans.Plan(), store).usable


def test_many_probes_announce_their_total_time(tiny_dir, capsys, monkeypatch):
    """After the first probe, a run that will take over a minute says how long, from the measured probe."""
    from phantom import zoo
    loaded = zoo.load(tiny_dir)
    ticks = iter(range(0, 10_000, 40))                        # every clock read (any reader's) is 40 s later
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(ticks))
    probes = [predict_probe(f"p{i}") for i in range(3)]
    rows = cli._observe_probes(loaded, probes, cli._Clock())
    assert len(rows) == 3 and all(r["r"] is not None for r in rows)
    per, total = re.search(r"3 probes at (\d+\.\d) s each: about (\d+) min", capsys.readouterr().err).groups()
    assert float(per) >= 40 and int(total) == round(3 * float(per) / 60)
