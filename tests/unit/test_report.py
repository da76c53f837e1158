"""Unit tests of phantom.report: CLAIMS.md rendering, parsing, comparison and atomic write."""
import dataclasses
import os
import re
import subprocess
import sys

import pytest

from phantom import claims, report
from phantom.claims import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict

MODELS = {"smollm2-135m": "a" * 64, "gemma3-270m": "b" * 64}


def session(**kw):
    base = dict(zoo="offline", budget="standard", models=dict(MODELS),
                versions={"torch": "2.13.0", "python": "3.12.3"}, wall_s=750.0, computed=3,
                requested=10, reductions={"smollm2-135m": ("LoRA grid reduced to the reference LR 1e-3",),
                                           "gemma3-270m": ("full-FT sweep reduced to η_ref = 2e-5",
                                                           "no saturation grid (C9 without Gemma-3)")})
    base.update(kw)
    return report.Session(**base)


def sample():
    return [
        Verdict("C1", "smollm2-135m", REPRODUCED, "1/4 silent (longing@2e-05)", 4),
        Verdict("C1", "gemma3-270m", NOT_REPRODUCED, "0/3 silent", 3),
        Verdict("C2", "gemma3-270m", REPRODUCED, "max |Φ−S−D| = 3.0e-08", 12),
        Verdict("C2", "smollm2-135m", REPRODUCED, "max |Φ−S−D| = 1.0e-07", 20),
        Verdict("C3", "smollm2-135m", NOT_TESTABLE, "1 completed run(s) at η_ref", 1),
        Verdict("C5", "smollm2-135m", NOT_REPRODUCED, "0/8 jump", 8),
        Verdict("C5", "gemma3-270m", NOT_REPRODUCED, "1/8 jump", 8),
        Verdict("C5b", "smollm2-135m", REPRODUCED, "0/8 jump; ρ(G_max, J) = +0.10", 8),
        Verdict("C5b", "gemma3-270m", REPRODUCED, "0/8 jump; ρ(G_max, J) = -0.20", 8),
        Verdict("C8", "gemma3-270m", NOT_REPRODUCED, "a | b || c |", 5),    # pipes in a value
        Verdict("C9", "zoo", NOT_TESTABLE, "needs ≥2 models with H_FT, have 1", 1),
    ]


def expected(vs):
    return {(v.claim, v.model): v.status for v in vs}


def table_rows(text):
    return [line for line in text.splitlines() if re.match(r"\| C\d+(b|′)? \|", line)]


def gfm_cells(line):
    """Cells of a GitHub-flavoured-markdown table row (``\\|`` does not split a cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


# --- render -----------------------------------------------------------------------------

def test_render_has_one_row_per_claim():
    text = report.render(sample(), session())
    rows = table_rows(text)
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [c.id for c in claims.CLAIMS]
    by_id = {r.split(" | ")[0].lstrip("| "): r for r in rows}
    for c in claims.CLAIMS:
        assert c.name in by_id[c.id] and c.paper in by_id[c.id]
    assert by_id["C4"].endswith("| — | not run |")          # no verdict for C4
    assert "`smollm2-135m`: ✅ reproduced<br>`gemma3-270m`: ❌ not reproduced" in by_id["C1"]
    assert "`smollm2-135m`: 1/4 silent (longing@2e-05) (n=4)" in by_id["C1"]
    assert "`zoo`: ⏭ not testable" in by_id["C9"]


def test_render_rows_are_well_formed_markdown():
    text = report.render(sample(), session())
    assert "| id | claim | paper | measured | verdict |" in text
    for row in table_rows(text):
        assert len(gfm_cells(row)) == 5, row


def test_render_orders_verdicts_by_session_model_order():
    row = {r.split(" | ")[0].lstrip("| "): r for r in table_rows(report.render(sample(), session()))}["C2"]
    assert row.index("`smollm2-135m`") < row.index("`gemma3-270m`")


def test_render_header_facts():
    text = report.render(sample(), session())
    assert text.startswith("# CLAIMS — phantom verdicts\n")
    assert "- **zoo**: offline; **budget**: standard" in text
    assert "12.5 min (partly warm store: 3 of the 10 run-store entries it read were computed in this session)" in text
    assert "- **versions**: torch 2.13.0, python 3.12.3" in text
    for m, h in MODELS.items():
        assert f"  - `{m}`: `{h}`" in text
    assert "- **protocol reductions** (SPEC §4 otherwise):\n" in text
    assert "  - `smollm2-135m`: LoRA grid reduced to the reference LR 1e-3" in text
    assert "  - `gemma3-270m`: full-FT sweep reduced to η_ref = 2e-5" in text
    assert "  - `gemma3-270m`: no saturation grid (C9 without Gemma-3)" in text
    assert re.search(r"- \*\*date\*\*: \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert text.endswith("\n") and "## Figures" not in text


@pytest.mark.parametrize("computed, total, words", [(10, 10, "cold store"), (0, 10, "warm store"),
                                                    (4, 10, "partly warm store"), (0, 0, "warm store")])
def test_render_store_temperature(computed, total, words):
    text = report.render([], session(computed=computed, requested=total))
    assert f"({words}: {computed} of the {total} run-store entries" in text


def test_render_lists_the_latest_wall_time_of_each_store_temperature():
    def logged(date, wall_s, computed, requested=10, budget="standard"):
        return {"date": f"2026-12-0{date}T00:00:00+00:00", "zoo": "offline", "budget": budget,
                "models": sorted(MODELS), "wall_s": wall_s, "computed": computed, "requested": requested,
                "workers": "-n 2", "cores": 2}
    history = [logged(1, 600, 10), logged(2, 300, 10), logged(3, 120, 4), logged(4, 60, 0),
               logged(5, 9999, 10, budget="full"), logged(6, 9999, 0, requested=0)]
    text = report.render([], session(history=history, computed=0, requested=10, wall_s=30))
    timings = text.split("(latest of each kind):\n")[1].split("\n- **versions**")[0].splitlines()
    assert timings[:2] == ["  - cold store: 5.0 min (2026-12-02T00:00 UTC, -n 2 on 2 cores)",
                           "  - partly warm store: 2.0 min (2026-12-03T00:00 UTC, -n 2 on 2 cores, "
                           "4 of 10 entries computed)"]
    assert len(timings) == 3 and timings[2].startswith("  - warm store: 0.5 min (")   # this session: the latest warm


def test_render_without_reductions_and_with_figures():
    text = report.render([], session(reductions={"smollm2-135m": (), "gemma3-270m": ()},
                                     figures={"Fig. 3": "docs/figures/fig3.png"}))
    assert "- **protocol reductions** (SPEC §4 otherwise): none" in text
    assert "## Figures" in text and "- [Fig. 3](docs/figures/fig3.png)" in text
    assert len(table_rows(text)) == len(claims.CLAIMS)
    assert all(r.endswith("| — | not run |") for r in table_rows(text))


def test_render_adaptive_runs_one_line_per_model_only_when_given():
    lines = {"smollm2-135m": "η_c = 6.6e-07; η_i of 10 contexts: 9 probe runs", "gemma3-270m": "not in the store (x)"}
    text = report.render([], session(bisections=lines))
    assert "- **adaptive runs** (SPEC §5 A1–A2" in text
    assert all(f"  - `{m}`: {line}\n" in text for m, line in lines.items())
    assert text.index("adaptive runs") < text.index("protocol reductions")
    assert "adaptive runs" not in report.render([], session())


def test_render_marks_consistency_checks_and_fragile_verdicts():
    """SPEC §6 A5: C2 and C4 say they are consistency checks; A6: stability, intervals, fragile."""
    vs = [Verdict("C2", "smollm2-135m", REPRODUCED, "max |Φ−S−D| = 1e-13", 4, {}, 1.0, {}),
          Verdict("C3", "smollm2-135m", NOT_REPRODUCED, "1/10 jump; ρ(G_max, J) = -0.14 (p = 0.71)", 10,
                  {}, 0.69, {"n_jump": (0.0, 3.0), "spearman": (-0.61, 0.48)})]
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table_rows(report.render(vs, session()))}
    assert "✅ reproduced (consistency check)" in rows["C2"] and "consistency check" not in rows["C3"]
    assert "stability 1.00" in rows["C2"] and "fragile" not in rows["C2"]
    assert "stability 0.69 **fragile**; 95% CI: n_jump [0, 3], spearman [-0.61, 0.48]" in rows["C3"]
    assert "❌ not reproduced ⚠ fragile" in rows["C3"] and "(p = 0.71)" in rows["C3"]


def test_render_lists_the_amendments_with_the_verdicts_they_replaced():
    vs = [Verdict("C9", "zoo", NOT_TESTABLE, "CV ∈ [80%, 141%] straddles 10%", 2),
          Verdict("C13", "zoo", NOT_REPRODUCED, "err 50%", 2)]
    base = {"C9 zoo": ["not reproduced", "CV = 99.4%"], "C13 zoo": ["not reproduced", "err 92%"]}
    text = report.render(vs, session(baseline=base))
    section = text[text.index("## Deviations and amendments"):]
    assert "- **A1**" in section and "C9 `zoo`: not reproduced (CV = 99.4%) → not testable" in section
    assert "- **A3** §5 blind predictor: r and q_i from Φ instead of Δz: C13 `zoo` still not reproduced, its value " \
           "moved: err 92% → err 50%" in section
    assert all(f"- **A{i}**" in section for i in range(1, 7))
    assert "bootstrap: B = 1000 resamples of the contexts, seed 0" in section


@pytest.mark.parametrize("c5, c5b, words", [
    ((NOT_REPRODUCED, NOT_REPRODUCED), (REPRODUCED, REPRODUCED),
     "C5 reproduces on no model and C5b on `smollm2-135m`, `gemma3-270m`"),
    ((REPRODUCED, REPRODUCED), (NOT_REPRODUCED, NOT_TESTABLE),
     "C5 reproduces on `smollm2-135m`, `gemma3-270m` and C5b on no model"),
    ((REPRODUCED, NOT_REPRODUCED), (NOT_REPRODUCED, NOT_REPRODUCED),
     "C5 reproduces on `smollm2-135m` and C5b on no model"),
    (None, None, "C5 reproduces on no model and C5b on no model"),
])
def test_render_c5_note(c5, c5b, words):
    vs = []
    for claim, statuses in (("C5", c5), ("C5b", c5b)):
        vs += [Verdict(claim, m, s, "x", 1) for m, s in zip(MODELS, statuses or ())]
    text = report.render(vs, session())
    assert "**C5 vs C5b.**" in text and f"Measured here, {words}." in text


def test_render_sample_note_names_c5b():
    assert "C5 reproduces on no model and C5b on `smollm2-135m`, `gemma3-270m`." in report.render(sample(), session())


# --- verdicts.json / compare ----------------------------------------------------------------

def as_json(vs, **kw):
    return report.to_json(vs, session(**kw))


def test_json_round_trips_verdicts_and_session():
    vs = sample() + [Verdict("C3", "gemma3-270m", REPRODUCED, "x", 2, {"ratios": {"a": float("inf")}, "rho": 0.5})]
    back, facts = report.from_json(as_json(vs))
    assert sorted(back, key=lambda v: (v.claim, v.model)) == sorted(vs, key=lambda v: (v.claim, v.model))
    assert facts == dataclasses.replace(session(), history=[], date=facts.date,
                                        reductions={m: list(r) for m, r in session().reductions.items()})
    assert report.verdicts(as_json(vs)) == expected(vs)


def test_json_is_stable_under_verdict_order():
    assert as_json(sample()) == as_json(list(reversed(sample())))


@pytest.mark.parametrize("text, words", [("", "not JSON"), ("[]", "not a verdicts.json"),
                                         ('{"format": 2, "verdicts": []}', "not a verdicts.json"),
                                         ('{"format": 1, "verdicts": [{"claim": "C1"}], "session": {}}',
                                          "bad session facts"),
                                         ('{"format": 1, "verdicts": [], "session": {"zoo": 1}}', "bad session")])
def test_from_json_rejects_bad_files_naming_the_problem(text, words):
    with pytest.raises(ValueError, match=words):
        report.from_json(text)


def test_compare_identical_is_empty():
    text = as_json(sample())
    assert report.compare(text, text) == []
    assert report.compare(text, as_json(list(reversed(sample())), wall_s=1.0)) == []


def test_compare_lists_flipped_absent_and_new_verdicts():
    old_vs = sample()
    new_vs = [Verdict(v.claim, v.model, REPRODUCED, v.value, v.n)
              if (v.claim, v.model) == ("C1", "gemma3-270m") else v for v in old_vs[:-1]]
    new_vs.append(Verdict("C4", "smollm2-135m", REPRODUCED, "3/3 runs bitwise frozen", 3))
    diff = report.compare(as_json(old_vs), as_json(new_vs))
    assert diff == ["C1 gemma3-270m: not reproduced → reproduced",
                    "C4 smollm2-135m: absent → reproduced",
                    "C9 zoo: not testable → absent"]


# --- main -------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    old, flipped, empty = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "empty.json"
    old.write_text(as_json(sample()), encoding="utf-8")
    vs = [Verdict(v.claim, v.model, NOT_REPRODUCED, v.value, v.n) if v.claim == "C2" else v for v in sample()]
    flipped.write_text(as_json(vs), encoding="utf-8")
    empty.write_text(as_json([]), encoding="utf-8")
    return str(old), str(flipped), str(empty)


def test_main_identical_returns_0(files, capsys):
    old, _, _ = files
    assert report.main(["compare", old, old]) == 0
    out = capsys.readouterr().out
    assert f"{len(sample())} verdicts compared, 0 changed" in out and "verdict changed" not in out


def test_main_flipped_returns_1(files, capsys):
    old, new, _ = files
    assert report.main(["compare", old, new]) == 1
    out = capsys.readouterr().out
    assert "verdict changed: C2 gemma3-270m: reproduced → not reproduced" in out
    assert "verdict changed: C2 smollm2-135m: reproduced → not reproduced" in out
    assert f"{len(sample())} verdicts compared, 2 changed" in out


@pytest.mark.parametrize("argv", [[], ["compare"], ["compare", "a.json"], ["diff", "a.json", "b.json"],
                                  ["compare", "a.json", "b.json", "c.json"]])
def test_main_bad_usage_returns_2(argv, capsys):
    assert report.main(argv) == 2
    assert "usage: python -m phantom.report compare OLD.json NEW.json" in capsys.readouterr().err


def test_main_old_without_verdicts_is_an_error(files, capsys):
    old, _, empty = files
    assert report.main(["compare", empty, old]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "no verdicts found" in err and empty in err


def test_main_new_without_verdicts_flips_everything(files, capsys):
    old, _, empty = files
    assert report.main(["compare", old, empty]) == 1
    assert f"0 verdicts compared, {len(sample())} changed" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["# CLAIMS\n\nno table\n", None])
def test_main_unreadable_or_markdown_file_is_one_error_line(tmp_path, files, capsys, content):
    old, _, _ = files
    bad = tmp_path / "bad.md"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    assert report.main(["compare", old, str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phantom: error:")


def test_module_entry_point(files):
    old, new, _ = files
    run = lambda *a: subprocess.run([sys.executable, "-m", "phantom.report", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    assert run("compare", old, old).returncode == 0
    flipped = run("compare", old, new)
    assert flipped.returncode == 1 and "verdict changed: C2" in flipped.stdout
    assert run("compare").returncode == 2


# --- publish / session log ------------------------------------------------------------------

def test_publish_writes_json_then_markdown_rendered_from_it(tmp_path):
    js, md = tmp_path / "verdicts.json", tmp_path / "CLAIMS.md"
    report.publish(sample(), session(), verdicts_path=js, claims_md=md, log_dir=tmp_path / "log")
    assert sorted(os.listdir(tmp_path)) == ["CLAIMS.md", "log", "verdicts.json"]   # no temp files left
    stored, facts = report.from_json(js.read_text(encoding="utf-8"))
    assert md.read_text(encoding="utf-8") == report.render(stored, facts)
    assert report.verdicts(js.read_text(encoding="utf-8")) == expected(sample())
    assert [h["budget"] for h in report.session_log(tmp_path / "log")] == ["standard"]


def test_publish_replaces_atomically(tmp_path, monkeypatch):
    js, md = tmp_path / "verdicts.json", tmp_path / "CLAIMS.md"
    md.write_text("old\n", encoding="utf-8")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        # the new text is complete in a sibling temp file; the target still holds the old text
        seen.append((os.path.dirname(src), os.path.basename(dst),
                     open(dst, encoding="utf-8").read() if os.path.exists(dst) else None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    report.publish(sample(), session(), verdicts_path=js, claims_md=md)
    assert [(os.path.samefile(d, tmp_path), name) for d, name, _ in seen] == [(True, "verdicts.json"),
                                                                               (True, "CLAIMS.md")]
    assert seen[1][2] == "old\n"


def test_session_log_skips_a_damaged_line(tmp_path):
    (tmp_path / "claims-sessions.jsonl").write_text('{"budget": "quick"}\nnot json\n', encoding="utf-8")
    assert report.session_log(tmp_path, {"budget": "standard"}) == [{"budget": "quick"}]
    assert [h["budget"] for h in report.session_log(tmp_path)] == ["quick", "standard"]


def test_session_log_keeps_every_line_of_sessions_ending_together(tmp_path, monkeypatch):
    """Appends from concurrent processes each keep their line (the rewrite runs under a lock).

    Each rewrite is slowed down, so without the lock every process would read the empty log
    before any writes it, and only one line would survive.
    """
    import multiprocessing
    import time
    write = report.write_atomic
    monkeypatch.setattr(report, "write_atomic", lambda *a: (time.sleep(0.1), write(*a)))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=report.session_log, args=(tmp_path, {"budget": "quick", "n": i}))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(h["n"] for h in report.session_log(tmp_path)) == list(range(4))
