"""phantom.progress: drawn only on a terminal outside CI; counts engine forwards and store entries."""
from __future__ import annotations

import io
import re

import pytest
import tiny_models
import torch

from phantom import contexts, dynamics, progress


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, ci, shown", [(Tty(), None, True), (Tty(), "true", False),
                                               (io.StringIO(), None, False)])
def test_shown_only_on_a_terminal_outside_ci(monkeypatch, stream, ci, shown):
    monkeypatch.delenv("CI", raising=False)
    if ci:
        monkeypatch.setenv("CI", ci)
    with progress.Progress(3, "steps", stream=stream) as bar:
        bar.advance()
        bar.advance(2)
    text = stream.getvalue()
    assert bar.show is shown and (text != "") is shown
    if shown:
        lines = text.split("\r\033[K")[1:]
        assert lines[0].startswith("steps: 1/3 (33%), 0s elapsed, ETA ")
        assert lines[1].startswith("steps: 3/3 (100%)") and lines[1].endswith("ETA 0s\n")


def test_more_steps_than_planned_have_no_eta():
    bar = progress.Progress(1, "runs", stream=Tty(), show=True)
    bar.advance(2)
    assert bar.line().startswith("runs: 2 done, ") and bar.line().endswith("ETA ?")


def test_forwards_counts_each_step_of_the_engine(tmp_path):
    from phantom import zoo
    loaded = zoo.load(str(tiny_models.build_tiny("llama", tmp_path / "llama")))
    pair, stream = contexts.orient("longing", loaded), Tty()   # as the CLI: oriented before the run
    for mode in ("full", "lora"):
        bar = progress.Progress(4, f"{mode} steps", stream=stream, show=True)
        with progress.forwards(bar):
            dynamics.run(loaded, "longing", mode=mode, lr=1e-3, steps=3, pair=pair)
        assert bar.done == 4, mode                       # t = 0..3: one training forward each
    with progress.forwards(progress.Progress(4, "hidden", show=False)) as hidden:
        dynamics.run(loaded, "longing", mode="full", lr=1e-3, steps=3, pair=pair)
    assert hidden.done == 0 and not torch.nn.modules.module._global_forward_hooks


def test_counting_store_counts_distinct_entries_of_its_kind(tmp_path):
    bar = progress.Progress(2, "runs", show=False)
    store = progress.CountingStore(bar, tmp_path)
    for key in ({"kind": "trajectory", "lr": 1}, {"kind": "trajectory", "lr": 1}, {"kind": "bulk"},
                {"kind": "trajectory", "lr": 2}):
        assert store.get_or_compute(key, lambda: {"x": 1}) == {"x": 1}
    assert bar.done == 2 and store.root == tmp_path and store.get({"kind": "bulk"}) == {"x": 1}


@pytest.mark.parametrize("tty", [True, False])
def test_cli_run_shows_steps_on_a_terminal_only(tmp_path, monkeypatch, tty):
    import sys

    from phantom import cli
    monkeypatch.delenv("CI", raising=False)
    model = str(tiny_models.build_tiny("llama", tmp_path / "llama"))
    err = Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(["run", "--model", model, "--context", "longing", "--mode", "full", "--lr", "1e-3",
                     "--steps", "2", "--no-store", "--out", str(tmp_path / "out")]) == 0
    drawn = [line for line in err.getvalue().split("\r\033[K") if line.startswith("fine-tuning steps: ")]
    assert [line.split(" (")[0] for line in drawn] == (["fine-tuning steps: 1/3", "fine-tuning steps: 2/3",
                                                         "fine-tuning steps: 3/3"] if tty else [])


def test_cli_laws_counts_the_planned_grid_runs(tmp_path, monkeypatch):
    """`laws` serves its campaigns through a counting store; the total is the plans' grid runs."""
    import sys

    from phantom import campaign, cli
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    model = str(tiny_models.build_tiny("llama", tmp_path / "llama"))
    seen = []

    def table(campaigns):
        for c in campaigns:
            seen.append(c.plan)
            for lr in (1, 2, 1):                            # the repeated entry counts once
                c.store.get_or_compute({"kind": "trajectory", "lr": lr}, lambda: {"x": 1})
        return []

    monkeypatch.setattr(campaign, "laws_table", table)
    monkeypatch.setattr(campaign, "saturations", lambda c: {})            # the plots' runs: not this test's
    monkeypatch.setattr(campaign, "context_points", lambda cs: {})
    monkeypatch.setattr(sys, "stderr", Tty())
    assert cli.main(["laws", "--models", model, "--out", str(tmp_path / "out")]) == 0
    total = len(contexts.CONTEXTS) * (len(seen[0].full_lrs) + len(seen[0].lora_lrs))
    drawn = [re.search(r": (\d+/\d+) \(", line).group(1) for line in sys.stderr.getvalue().split("\r\033[K")[1:]]
    assert drawn == [f"1/{total}", f"2/{total}"]
