"""phantom.monitor: probes on tiny models (batching, modes, errors, findings, report), then the
real SmolLM2 against the engine (SPEC §4 loop), inside ``transformers.Trainer`` (full and LoRA),
and the silent-failure finding of ``longing`` at 2e-6 (SPEC §5)."""
from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import tiny_models
import torch
import torch.nn.functional as F

from phantom import contexts, dynamics
from phantom.monitor import FIRST, LIVE, PhantomCallback, PhantomFinding, PhantomMonitor, Probe

TINY_PROBES = [("After twenty years abroad, she felt a deep sense of", "longing", "yearning"),
               ("He never found the", "purpose", "meaning", "purpose"),
               ("The old castle on the hill looked", "ancient", "old")]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.build_tokenizer()


@pytest.fixture(scope="module", params=tiny_models.ARCHS)
def tiny(request, tokenizer):
    return tiny_models.build_model(request.param, len(tokenizer))


# --- tiny models --------------------------------------------------------------------------

def test_batched_rows_equal_one_probe_at_a_time(tiny, tokenizer):
    """Padding never leaks: each probe's row from the batch equals its row observed alone."""
    batched = PhantomMonitor(tokenizer, TINY_PROBES).observe(tiny, 0)
    for probe, row in zip(TINY_PROBES, batched):
        alone = PhantomMonitor(tokenizer, [probe]).observe(tiny, 0)[0]
        for k in LIVE + ("g_gc", "burial"):
            assert row[k] == pytest.approx(alone[k], rel=1e-5, abs=1e-7), k
        assert row["r"] == pytest.approx(alone["r"], rel=1e-4)


def test_rows_follow_spec_definitions(tiny, tokenizer):
    """A row against a direct computation: unpadded forward, SPEC §2 formulas, Φ = S + D."""
    text, target, competitor = TINY_PROBES[0]
    row = PhantomMonitor(tokenizer, [TINY_PROBES[0]]).observe(tiny, 7)[0]
    g, c = (contexts.token_id(tokenizer, w) for w in (target, competitor))
    with torch.no_grad():
        z = tiny(tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
    p = torch.softmax(z.double(), -1)
    assert row["step"] == 7 and row["probe"] == "longing-yearning"
    assert row["p_g"] == pytest.approx(float(p[g]), rel=1e-5) and row["p_c"] == pytest.approx(float(p[c]), rel=1e-5)
    assert row["dz"] == pytest.approx(float(z[g] - z[c]), abs=1e-5)
    assert row["loss"] == pytest.approx(-math.log(float(p[g])), rel=1e-5)
    assert row["rank_g"] == int((z > z[g]).sum()) + 1
    assert row["phi"] == pytest.approx(row["signal"] + row["drag"], abs=1e-12)
    assert row["signal"] == pytest.approx((row["p_g"] - row["p_c"]) * (1 - row["g_gc"] ** 2), rel=1e-9)


def test_observe_keeps_modes_grads_and_first_only_fields(tiny, tokenizer):
    model = copy.deepcopy(tiny).train()
    sub = next(m for m in model.modules() if m is not model)
    sub.eval()                                             # a mixed state must come back as it was
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
    before = [(m.training, m) for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    monitor = PhantomMonitor(tokenizer, TINY_PROBES)
    first, second = monitor.observe(model, 0), monitor.observe(model, 1)
    assert [m.training for _, m in before] == [t for t, _ in before]
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(set(FIRST) <= set(r) and r["r"] is not None for r in first)
    assert not any(set(FIRST) & set(r) for r in second)
    assert monitor.history == first + second


def test_blind_optional_and_none_without_trainable_parameters(tiny, tokenizer):
    model = copy.deepcopy(tiny).requires_grad_(False)
    assert PhantomMonitor(tokenizer, TINY_PROBES[:1]).observe(model, 0)[0]["r"] is None
    assert PhantomMonitor(tokenizer, TINY_PROBES[:1], blind=False).observe(tiny, 0)[0]["r"] is None


@pytest.mark.parametrize("probes, every, silent_after, error, match", [
    ([("He never found the", "deep sense", "meaning")], 1, 31, contexts.ContextUnusable, r"splits into \[\d+, \d+\]"),
    ([("He never found the", "purpose", "purpose")], 1, 31, ValueError, "same token"),
    ([("  ", "purpose", "meaning")], 1, 31, ValueError, "empty context"),
    ([("a", "purpose", "meaning", "x"), ("b", "longing", "yearning", "x")], 1, 31, ValueError, "unique"),
    ([], 1, 31, ValueError, "probes is empty"),
    ([("He never found the", "purpose")], 1, 31, TypeError, "a probe is"),
    (TINY_PROBES, 0, 31, ValueError, "every must be a positive integer, got 0"),
    (TINY_PROBES, 1, 1, ValueError, "silent_after must be an integer >= 2"),
])
def test_bad_arguments_are_named(tokenizer, probes, every, silent_after, error, match):
    with pytest.raises(error, match=match):
        PhantomMonitor(tokenizer, probes, every=every, silent_after=silent_after)


def test_flips_found_once_warned_logged_and_reported(tokenizer, tmp_path, caplog):
    """Fine-tuning a tiny Llama hard toward a word flips it; each finding comes exactly once."""
    model = tiny_models.build_model("llama", len(tokenizer))
    probe = Probe("He never found the", "purpose", "meaning", name="purpose")
    monitor = PhantomMonitor(tokenizer, [probe], silent_after=3)
    before = monitor.observe(model, 0)[0]
    g, c = monitor.pairs[0]
    assert before["p_g"] < before["p_c"] or before["phi"] < 0, "the tiny model must start contested"
    ids = tokenizer(probe.context, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", "phantom.monitor"):
        warnings.simplefilter("always")
        for step in range(1, 16):
            F.cross_entropy(model(ids).logits[0, -1:], torch.tensor([g])).backward()
            opt.step()
            opt.zero_grad()
            monitor.observe(model, step)
    kinds = [f["kind"] for f in monitor.findings]
    assert {"born_flip", "rank_flip"} <= set(kinds) and len(kinds) == len(set(kinds))
    assert "silent_failure" not in kinds
    assert sorted(str(w.message) for w in caught if w.category is PhantomFinding) == \
        sorted(f"phantom: probe 'purpose': {f['message']}" for f in monitor.findings)
    assert len([r for r in caplog.records if r.name == "phantom.monitor"]) == len(kinds)
    assert sorted(k for r in monitor.history for k in r["findings"]) == sorted(kinds)
    born = next(f for f in monitor.findings if f["kind"] == "born_flip")
    assert "born_flip" in next(r for r in monitor.history if r["step"] == born["step"])["findings"]
    steps, phi = monitor.series("purpose", "phi")
    assert phi[list(steps).index(born["step"])] > 0 and all(phi[steps < born["step"]] <= 0)

    json_path, png_path = monitor.report(tmp_path / "out" / "run.json")
    doc = json.loads(json_path.read_text())
    assert doc["history"] == monitor.history and doc["findings"] == monitor.findings
    assert doc["probes"][0] == {"name": "purpose", "context": probe.context, "target": "purpose",
                                "competitor": "meaning", "g_id": g, "c_id": c}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.name == "run.png"


# --- SmolLM2 --------------------------------------------------------------------------------

STEPS = 4
MODE_LR = {"full": 2e-5, "lora": 1e-3}


@pytest.fixture(scope="module")
def longing(smol):
    return contexts.get("longing"), contexts.orient("longing", smol)


def _spec_loop(smol, longing, mode: str, lr: float, steps: int, **monitor_kw) -> PhantomMonitor:
    """SPEC §4 by hand (AdamW of dynamics.optimizer, CE of g at the last position) with a monitor."""
    context, pair = longing
    model = dynamics.prepare(smol, mode, seed=0)
    opt = dynamics.optimizer(model, lr)
    monitor = PhantomMonitor(smol.tokenizer, [(context.text, pair.g_word, pair.c_word)], **monitor_kw)
    ids, target = contexts.encode(context, smol.tokenizer), torch.tensor([pair.g_id])
    for t in range(steps + 1):
        monitor.observe(model, t)
        if t < steps:
            F.cross_entropy(model(ids, logits_to_keep=1).logits[0, -1:].float(), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return monitor


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_plain_loop_agrees_with_engine(smol, longing, mode, one_torch_thread):
    """A SPEC §4 loop with a monitor logs the engine's Φ, S, D, p_g, p_c at every step (1e-6)."""
    context, pair = longing
    traj = dynamics.run(smol, context, mode=mode, lr=MODE_LR[mode], steps=STEPS, pair=pair)
    monitor = _spec_loop(smol, longing, mode, MODE_LR[mode], STEPS)
    for k in ("phi", "signal", "drag", "p_g", "p_c", "dz", "loss", "rank_g", "rank_c"):
        _, got = monitor.series("yearning-longing", k)
        assert got == pytest.approx(traj[k], abs=1e-6), k
    first = monitor.history[0]
    assert first["g_gc"] == pytest.approx(traj.g_max, abs=1e-12)
    assert first["burial"] == pytest.approx(traj["burial"][0], rel=1e-9)
    if mode == "full":   # the engine's blind r is the full-FT one
        assert first["r"] == pytest.approx(dynamics.blind_r(smol, context, pair)["r"], rel=1e-6)


def _dataset(tokenizer, text: str, word: str, n: int = 4) -> list[dict]:
    ids = tokenizer(text + " " + word, return_tensors="pt").input_ids[0]
    return [{"input_ids": ids, "labels": ids.clone()} for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainer_callback_logs_series_and_writes_report(smol, longing, mode, tmp_path, one_torch_thread):
    from transformers import Trainer, TrainingArguments
    context, pair = longing
    model = dynamics.prepare(smol, mode, seed=0).train()
    monitor = PhantomMonitor(smol.tokenizer, [Probe(context.text, pair.g_word, pair.c_word, name="longing"),
                                              ("The movie was really", "funny", "hilarious")], every=2, blind=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=1,
                             learning_rate=MODE_LR[mode], logging_steps=3, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(smol.tokenizer, context.text, pair.g_word))
    callback = PhantomCallback(monitor).attach(trainer)
    trainer.train()
    history = trainer.state.log_history
    logged = {(h["step"], k): v for h in history for k, v in h.items() if k.startswith("phantom/")}
    assert sorted({s for s, _ in logged}) == [0, 2, 4]
    for row in monitor.history:
        for k in LIVE:
            assert logged[(row["step"], f"phantom/{row['probe']}/{k}")] == row[k]
    assert ("phantom/longing/burial" in {k for _, k in logged}) and (0, "phantom/longing/r") not in logged
    assert any("loss" in h and "phantom/longing/phi" in h for h in history)   # joined the Trainer's own log
    assert [p.name for p in (tmp_path / "phantom.json", tmp_path / "phantom.png") if p.exists()] == \
        ["phantom.json", "phantom.png"] and callback.written == (tmp_path / "phantom.json", tmp_path / "phantom.png")
    _, phi = monitor.series("longing", "phi")
    assert phi[-1] != phi[0]                       # it watched training move the model
    if mode == "lora":
        assert torch.equal(model.get_input_embeddings().weight, smol.model.get_input_embeddings().weight)


SILENT_AFTER = 6   # observations t = 0..5: by t = 4 the 2e-5 run has rank-flipped (measured: t = 4)


@pytest.mark.slow
def test_silent_failure_flagged_at_2e6_not_on_a_flipping_run(smol, longing, one_torch_thread):
    """``longing`` full FT (g = the lower-Born word, SPEC §3): a silent failure at 2e-6 (SPEC §4 run,
    measured over all 30 steps: loss 8.28 → 1.25, no rank flip), flagged after 6 observations;
    at 2e-5 the same window flips and nothing silent is flagged. 5 updates instead of 30: the
    shared 2-core CPU takes 70–135 s for a 30-step full-FT run."""
    silent = _spec_loop(smol, longing, "full", 2e-6, SILENT_AFTER - 1, silent_after=SILENT_AFTER, blind=False)
    assert [(f["kind"], f["step"]) for f in silent.findings] == [("silent_failure", SILENT_AFTER - 1)]
    _, loss = silent.series("yearning-longing", "loss")
    assert loss[-1] < loss[0]
    flips = _spec_loop(smol, longing, "full", 2e-5, SILENT_AFTER - 1, silent_after=SILENT_AFTER, blind=False)
    kinds = {f["kind"] for f in flips.findings}
    assert "rank_flip" in kinds and "silent_failure" not in kinds
