"""Tests of the command-line interface (``python -m phantom …``, :mod:`phantom.cli`).

Every test points ``$PHANTOM_RUNS`` at a tmp directory, so the real run store is never
touched. Fast tests use a tiny random GPT-2 from :mod:`tiny_models` (a local directory);
the ``slow`` ones fine-tune the real SmolLM2-135M for a few steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models

from phantom import cli, contexts, plans

RUN_OPTIONS = ("--model", "--context", "--mode", "--lr", "--steps", "--seed", "--out", "--no-store", "--observables",
               "--device")
HEADER = ("t", "loss", "p_g", "p_c", "Φ", "S", "D", "γ", "B", "Δz", "rank_g", "rank_c")
SUMMARY = ("pair", "G_max", "jump", "Born flip", "rank flip", "silent", "diverged_at", "source", "wrote")
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    """A private run store for every test."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("PHANTOM_RUNS", str(runs))
    return runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny random GPT-2 (tied head) saved as a local model directory."""
    return str(tiny_models.build_tiny("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2"))


def call(argv: list[str]) -> int:
    """``cli.main(argv)``'s exit status, whether returned or raised as SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the per-step table's rows."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == list(HEADER))
    assert set(lines[start + 1]) == {"-"}
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def check_outputs(out: Path, n_rows: int) -> dict:
    """The one JSON + PNG pair in ``out``; returns the parsed JSON."""
    (json_path,) = out.glob("*.json")
    (png_path,) = out.glob("*.png")
    assert png_path.stem == json_path.stem
    assert png_path.read_bytes()[:4] == PNG_MAGIC
    assert not list(out.glob(".*")), "temporary files left behind"
    data = json.loads(json_path.read_text())
    assert {k: len(v) for k, v in data["series"].items()} == {k: n_rows for k in data["series"]}
    assert {"jump", "jumps", "born_flip", "rank_flip", "silent", "modes", "diverged"} <= set(data["analysis"])
    return data


# --- help -------------------------------------------------------------------------------

def test_help_lists_the_commands(capsys):
    assert call(["--help"]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "example:" in out and "python -m phantom run" in out


def test_run_help_documents_every_option_and_default(capsys):
    assert call(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())                      # help text is wrapped
    for option in RUN_OPTIONS:
        assert option in out, option
    for default in ("(default: 30)", "(default: 0)", "(default: ./out)", "(default: cpu)"):
        assert default in out, default
    for context in contexts.BY_ID:
        assert context in out
    assert "example:" in out


# --- bad input: one line, no traceback, before any work ---------------------------------

GOOD = {"--model": "smollm2-135m", "--context": "longing", "--mode": "full", "--lr": "2e-5"}


def argv_with(**changes) -> list[str]:
    opts = {**GOOD, **{f"--{k}": v for k, v in changes.items()}}
    return ["run"] + [x for k, v in opts.items() if v is not None for x in (k, v)]


@pytest.mark.parametrize("argv, needle", [
    (argv_with(model="no-such-model"), "unknown model 'no-such-model'"),
    (argv_with(model="no/such/dir"), "unknown model"),
    (argv_with(context="no-such-context"), "--context"),
    (argv_with(lr="-1"), "--lr"),
    (argv_with(lr="0"), "--lr"),
    (argv_with(lr="nan"), "--lr"),
    (argv_with(lr="inf"), "--lr"),
    (argv_with(lr="fast"), "--lr"),
    (argv_with(steps="0"), "--steps"),
    (argv_with(mode="half"), "--mode"),
    (argv_with(lr=None), "--lr"),
    (argv_with(device="no-such-device"), "device"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
], ids=["model", "model-path", "context", "lr-negative", "lr-zero", "lr-nan", "lr-inf", "lr-text",
        "steps-zero", "mode", "lr-missing", "device", "command", "no-command"])
def test_bad_input_is_one_line(capsys, argv, needle):
    status = call(argv)
    captured = capsys.readouterr()
    assert status in (1, 2)
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("phantom: error:") and needle in lines[0]
    assert "Traceback" not in captured.err


def test_unusable_context_is_one_line(capsys, monkeypatch, tiny, tmp_path):
    def split(tokenizer, word, context_id="?"):
        raise contexts.ContextUnusable(f"context {context_id!r} is unusable: ' {word}' is not a single token")

    monkeypatch.setattr(contexts, "token_id", split)
    for extra in ([], ["--no-store"]):
        status = call(["run", "--model", tiny, "--context", "shame", "--mode", "full", "--lr", "1e-3",
                       "--out", str(tmp_path / "out")] + extra)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("phantom: error:")]
        assert status == 1
        assert errors == [err.splitlines()[-1]] and "'shame' is unusable" in errors[0]
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_weight_package_is_one_line(capsys, monkeypatch):
    from phantom import runs, zoo

    def missing(name, **kwargs):
        raise zoo.MissingModelPackage(f"model {name!r} needs the package(s) x; install with: pip install x")

    monkeypatch.setattr(zoo, "describe", missing)
    runs.model_info.cache_clear()
    try:
        status = call(argv_with(model="qwen2.5-0.5b"))
    finally:
        runs.model_info.cache_clear()
    err = capsys.readouterr().err
    assert status == 1
    assert err.splitlines()[-1] == ("phantom: error: model 'qwen2.5-0.5b' needs the package(s) x; "
                                    "install with: pip install x")
    assert "Traceback" not in err


# --- helpers ----------------------------------------------------------------------------

def test_file_names():
    assert cli.lr_tag(2e-5) == "2e-5" and cli.lr_tag(1e-3) == "0.001" and cli.lr_tag(1e20) == "1e20"
    assert cli.output_stem("smollm2-135m", "longing", "full", 2e-5, 30, 0) == "smollm2-135m_longing_full_lr2e-5"
    assert cli.output_stem("smollm2-135m", "longing", "lora", 1e-3, 2, 1) == \
        "smollm2-135m_longing_lora_lr0.001_T2_seed1"
    assert cli.safe_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB_SmolLM2-135M"
    assert cli.safe_name("/tmp/x y/model") == "tmp_x_y_model"
    long_a, long_b = "/a" * 100 + "/model", "/b" * 100 + "/model"
    assert len(cli.safe_name(long_a)) <= 80 and cli.safe_name(long_a) != cli.safe_name(long_b)


# --- end to end -------------------------------------------------------------------------

def test_run_tiny_model_direct(capsys, tiny, tmp_path):
    out = tmp_path / "out"
    status = call(["run", "--model", tiny, "--context", "longing", "--mode", "full", "--lr", "1e-3",
                   "--steps", "2", "--out", str(out), "--no-store"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = table_rows(captured.out)
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(len(r) == len(HEADER) for r in rows)
    for label in SUMMARY:
        assert any(line.startswith(label) for line in captured.out.splitlines()), label
    assert "computed (--no-store)" in captured.out
    for stage in ("loading model", "orienting", "fine-tuning 2 steps (full, lr=0.001, seed=0)"):
        assert stage in captured.err
    data = check_outputs(out, 3)
    assert data["meta"]["mode"] == "full" and data["source"] == "computed (--no-store)"
    assert (out / f"{cli.safe_name(tiny)}_longing_full_lr0.001_T2.json").is_file()


def test_run_tiny_model_store_then_cached(capsys, tiny, tmp_path, private_store):
    argv = ["run", "--model", tiny, "--context", "tired", "--mode", "lora", "--lr", "1e-2",
            "--steps", "2", "--out", str(tmp_path / "out")]
    assert call(argv) == 0
    first = capsys.readouterr()
    assert "run store (computed now)" in first.out
    assert call(argv) == 0
    second = capsys.readouterr()
    assert "run store (cached)" in second.out and "from store" in second.err
    assert "loading model" not in second.err
    assert table_rows(first.out) == table_rows(second.out)
    assert any(private_store.rglob("*.json"))
    check_outputs(tmp_path / "out", 3)


@pytest.mark.slow
def test_run_smollm2_subprocess(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PHANTOM_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(
        [sys.executable, "-m", "phantom", "run", "--model", "smollm2-135m", "--context", "longing",
         "--mode", "full", "--lr", "2e-5", "--steps", "3", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(len(r) == len(HEADER) for r in rows)
    for label in SUMMARY:
        assert any(line.startswith(label) for line in proc.stdout.splitlines()), label
    assert "Traceback" not in proc.stderr
    data = check_outputs(out, 4)
    assert (out / "smollm2-135m_longing_full_lr2e-5_T3.json").is_file()
    assert data["meta"]["model"] == "smollm2-135m" and data["meta"]["steps"] == 3


@pytest.mark.slow
def test_run_smollm2_lora_direct(capsys, tmp_path):
    out = tmp_path / "out"
    status = call(["run", "--model", "smollm2-135m", "--context", "longing", "--mode", "lora",
                   "--lr", "1e-3", "--steps", "2", "--out", str(out), "--no-store"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert [r[0] for r in table_rows(captured.out)] == ["0", "1", "2"]
    data = check_outputs(out, 3)
    assert data["meta"]["mode"] == "lora" and data["meta"]["n_trainable"] < 1_000_000
    assert (out / "smollm2-135m_longing_lora_lr0.001_T2.json").is_file()


# --- `laws` -----------------------------------------------------------------------------

import dataclasses  # noqa: E402

from phantom import runs, zoo  # noqa: E402
from phantom.campaign import ModelLaws  # noqa: E402

LAWS_OPTIONS = ("--models", "--budget", "--out")
LAWS_FIELDS = [f.name for f in dataclasses.fields(ModelLaws)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    """A tiny random Llama (untied head) saved as a local model directory."""
    return str(tiny_models.build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama"))


def test_laws_help_documents_every_option(capsys):
    assert call(["laws", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())                      # help text is wrapped
    for option in LAWS_OPTIONS:
        assert option in out, option
    for budget in ("quick", "standard", "full"):
        assert budget in out, budget
    standard = ",".join(plans.zoo_models("offline", "standard"))
    for default in ("(default: standard)", "(default: ./out)", f"(default: {standard})"):
        assert default in out, default
    assert "laws.json" in out and "example:" in out and "python -m phantom laws" in out


def test_laws_tiny_models_quick(capsys, monkeypatch, tiny, tiny_llama, tmp_path, private_store, one_torch_thread):
    out = tmp_path / "laws"
    argv = ["laws", "--models", tiny_llama + "," + tiny, "--budget", "quick", "--out", str(out)]
    status = call(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Traceback" not in captured.err

    lines = captured.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "G²mean"])
    assert set(lines[start + 1]) == {"-"}
    table = [line.split() for line in lines[start + 2:start + 4]]
    assert [cells[0] for cells in table] == [tiny_llama, tiny]          # whole names, in order
    for cells in table:
        assert len(cells) == 11
        # quick budget: no saturation grid, no critical LR, no blind prediction
        assert cells[4:6] == ["—", "—"] and cells[8:] == ["—", "—", "—"]
    assert lines[start + 4].startswith("(η_sat and H_FT: a number when measured LRs bracket")   # A1
    assert not lines[start + 5].split() or lines[start + 5].startswith("wrote")
    assert f"wrote       {out / 'laws.json'}" in captured.out and str(out / "critical_lr.png") in captured.out

    rows = json.loads((out / "laws.json").read_text())
    assert [r["model"] for r in rows] == [tiny_llama, tiny]
    for r in rows:
        assert list(r) == LAWS_FIELDS
        assert 0.0 < r["g2mean"] < 1.0 and r["shape"] in ("gaussian", "laplace")
        assert r["cls"] in ("A", "B", "unclassified")
        assert r["b_ft"] > 0 and 0.0 <= r["lora_sufficiency"] <= 1.0
        assert r["lora_sufficiency"] * 10 == pytest.approx(round(r["lora_sufficiency"] * 10))   # k of 10 contexts
        assert all(r[k] is None for k in ("eta_sat", "h_ft", "q", "eta_c", "eta_hat", "rel_error"))
    assert (out / "critical_lr.png").read_bytes()[:4] == PNG_MAGIC
    assert sorted(p.name for p in out.iterdir()) == ["critical_lr.png", "laws.json"]   # no temporaries
    assert any(private_store.rglob("*.json"))

    # again: every number comes from the run store, no model may be loaded
    def refuse(name):
        raise AssertionError(f"model {name!r} loaded although every run is in the store")

    monkeypatch.setattr(runs.SLOT, "name", None)
    monkeypatch.setattr(runs.SLOT, "loaded", None)
    monkeypatch.setattr(zoo, "load", refuse)
    assert call(argv) == 0
    again = capsys.readouterr()
    assert json.loads((out / "laws.json").read_text()) == rows
    assert again.out.splitlines()[start:start + 4] == lines[start:start + 4]


@pytest.mark.parametrize("models", ["no-such-model", "{tiny},no-such-model"], ids=["alone", "after-a-good-one"])
def test_laws_unknown_model_is_one_line(capsys, tiny, tmp_path, private_store, models):
    out = tmp_path / "laws"
    status = call(["laws", "--models", models.format(tiny=tiny), "--budget", "quick", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("phantom: error: unknown model 'no-such-model'")
    assert not out.exists() and not private_store.exists()               # failed before any work


@pytest.mark.parametrize("models", [",,,", "a,,b", "", "{tiny},"], ids=["only-commas", "empty-item", "empty",
                                                                     "trailing-comma"])
def test_laws_bad_model_list_is_one_line(capsys, tiny, tmp_path, private_store, models):
    models = models.format(tiny=tiny)
    out = tmp_path / "laws"
    status = call(["laws", "--models", models, "--budget", "quick", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 2                                                      # a usage error
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"phantom: error: argument --models: the model list {models!r} ")
    assert not out.exists() and not private_store.exists()               # failed before any work


def test_laws_bad_budget_is_one_line(capsys):
    assert call(["laws", "--budget", "huge"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("phantom: error:") and "--budget" in captured.err
