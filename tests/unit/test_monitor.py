"""phantom.monitor and phantom.callback: probes on tiny models (batching, modes, errors, steps,
findings, report), the real SmolLM2 against the engine (SPEC §4 loop), inside
``transformers.Trainer`` (full and LoRA; TensorBoard and a stub integration on a tiny model),
and the silent failure trend of ``longing`` at 2e-6 (SPEC §5)."""
from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from phantom import contexts, dynamics
from phantom.callback import PhantomCallback
from phantom.monitor import FIRST, LIVE, PhantomFinding, PhantomMonitor, PhantomStop, Probe, UnsupportedModel

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
    batched = PhantomMonitor(tokenizer, TINY_PROBES, blind=True).observe(tiny, 0)
    for probe, row in zip(TINY_PROBES, batched):
        alone = PhantomMonitor(tokenizer, [probe], blind=True).observe(tiny, 0)[0]
        for k in LIVE + ("G_gc", "B"):
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
    assert row["p_target"] == pytest.approx(float(p[g]), rel=1e-5)
    assert row["p_competitor"] == pytest.approx(float(p[c]), rel=1e-5)
    assert row["dz"] == pytest.approx(float(z[g] - z[c]), abs=1e-5)
    assert row["loss"] == pytest.approx(-math.log(float(p[g])), rel=1e-5)
    assert row["rank_target"] == int((z > z[g]).sum()) + 1
    assert row["phi"] == pytest.approx(row["S"] + row["D"], abs=1e-12)
    assert row["S"] == pytest.approx((row["p_target"] - row["p_competitor"]) * (1 - row["G_gc"] ** 2), rel=1e-9)


def test_observe_keeps_modes_grads_and_first_only_fields(tiny, tokenizer):
    model = copy.deepcopy(tiny).train()
    sub = next(m for m in model.modules() if m is not model)
    sub.eval()                                             # a mixed state must come back as it was
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
    before = [(m.training, m) for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    monitor = PhantomMonitor(tokenizer, TINY_PROBES, blind=True)
    first, second = monitor.observe(model, 0), monitor.observe(model, 1)
    assert [m.training for _, m in before] == [t for t, _ in before]
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(set(FIRST) <= set(r) and r["r"] is not None for r in first)
    assert not any(set(FIRST) & set(r) for r in second)
    assert monitor.history == first + second


def test_blind_optional_and_none_without_trainable_parameters(tiny, tokenizer):
    model = copy.deepcopy(tiny).requires_grad_(False)
    assert PhantomMonitor(tokenizer, TINY_PROBES[:1], blind=True).observe(model, 0)[0]["r"] is None
    assert PhantomMonitor(tokenizer, TINY_PROBES[:1]).observe(tiny, 0)[0]["r"] is None      # off by default


@pytest.mark.parametrize("probes, kw, error, match", [
    ([("He never found the", "deep sense", "meaning")], {}, contexts.ContextUnusable, r"splits into \[\d+, \d+\]"),
    ([("He never found the", "purpose", "purpose")], {}, ValueError, "same token"),
    ([("  ", "purpose", "meaning")], {}, ValueError, "empty context"),
    ([("a", "purpose", "meaning", "x"), ("b", "longing", "yearning", "x")], {}, ValueError, "unique"),
    ([], {}, ValueError, "probes is empty"),
    ([("He never found the", "purpose")], {}, TypeError, "a probe is"),
    (TINY_PROBES, {"every": 0}, ValueError, "every must be a positive integer"),
    (TINY_PROBES, {"window": 2.5}, ValueError, "window must be a positive integer"),
    (TINY_PROBES, {"tolerance": 1.0}, ValueError, r"tolerance must be a number in \[0, 1\)"),
    (TINY_PROBES, {"stop_on": {"silent_failure"}}, ValueError, r"unknown finding kind\(s\) \['silent_failure'\]"),
])
def test_bad_arguments_are_named(tokenizer, probes, kw, error, match):
    with pytest.raises(error, match=match):
        PhantomMonitor(tokenizer, probes, **kw)


def test_many_duplicate_names_give_a_short_error(tokenizer):
    with pytest.raises(ValueError, match="1 repeated") as err:
        PhantomMonitor(tokenizer, [TINY_PROBES[0]] * 200_000)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("steps, match", [
    ([2.7], "non-negative integer"), ([True], "non-negative integer"), ([-1], "non-negative integer"),
    ([3, 3], "not after the last observed step 3"), ([3, 2], "not after the last observed step 3"),
])
def test_bad_steps_are_rejected(tiny, tokenizer, steps, match):
    monitor = PhantomMonitor(tokenizer, TINY_PROBES[:1])
    with pytest.raises(ValueError, match=match):
        for step in steps:
            monitor.observe(tiny, step)
    assert [r["step"] for r in monitor.history] == steps[:-1]


def _tiny_other(kind: str, tokenizer):
    import transformers as tf
    if kind == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
    if kind == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8,
                                                         num_layers=1, num_heads=2))
    if kind == "meta":
        with torch.device("meta"):
            return tiny_models.build_model("llama", len(tokenizer))
    return tiny_models.build_model("llama", 8)                     # "small": fewer rows than the tokenizer's ids


@pytest.mark.parametrize("kind, match", [
    ("bert", "BertForMaskedLM is not a causal language model"), ("t5", "is an encoder-decoder model"),
    ("meta", "on the meta device"), ("small", r"embedding has 8 rows: the tokenizer does not belong"),
])
def test_unsupported_models_are_one_clear_error(tokenizer, kind, match):
    monitor = PhantomMonitor(tokenizer, TINY_PROBES[:1])
    with pytest.raises(UnsupportedModel, match=match):
        monitor.observe(_tiny_other(kind, tokenizer), 0)
    assert monitor.history == []


def _train_hard(tokenizer, monitor, steps: int, lr: float = 3e-2, every: int = 1):
    """Fine-tune a tiny Llama toward ``purpose``, observing every ``every`` steps and closing at the end."""
    model = tiny_models.build_model("llama", len(tokenizer))
    probe = monitor.probes[0]
    g, _ = monitor.pairs[0]
    ids = tokenizer(probe.context, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    monitor.observe(model, 0)
    for step in range(1, steps + 1):
        F.cross_entropy(model(ids).logits[0, -1:], torch.tensor([g])).backward()
        opt.step()
        opt.zero_grad()
        if step % every == 0:
            monitor.observe(model, step)
    monitor.close(model, steps)
    return model


def test_good_news_logged_once_never_warned_and_reported(tokenizer, tmp_path, caplog):
    """Fine-tuning a tiny Llama hard toward a word flips it: each finding once, as an INFO log line."""
    probe = Probe("He never found the", "purpose", "meaning", name="purpose")
    monitor = PhantomMonitor(tokenizer, [probe], window=3)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", "phantom.monitor"):
        warnings.simplefilter("always")
        _train_hard(tokenizer, monitor, 15)
    first = monitor.history[0]
    assert first["p_target"] < first["p_competitor"] or first["phi"] < 0, "the tiny model must start contested"
    kinds = [f["kind"] for f in monitor.findings]
    assert {"born_flip", "rank_flip"} <= set(kinds) and len(kinds) == len(set(kinds))
    assert "silent_failure_trend" not in kinds and not any(f["bad"] for f in monitor.findings)
    assert [w for w in caught if w.category is PhantomFinding] == []
    assert sorted(r.getMessage() for r in caplog.records if r.name == "phantom.monitor") == \
        sorted(f"phantom: probe 'purpose': {f['message']}" for f in monitor.findings)
    assert all(r.levelname == "INFO" for r in caplog.records if r.name == "phantom.monitor")
    assert sorted(k for r in monitor.history for k in r["findings"]) == sorted(kinds)
    born = next(f for f in monitor.findings if f["kind"] == "born_flip")
    steps, phi = monitor.series("purpose", "phi")
    assert phi[list(steps).index(born["step"])] > 0 and all(phi[steps < born["step"]] <= 0)

    json_path, png_path = monitor.report(tmp_path / "out" / "run.json")
    doc = json.loads(json_path.read_text())
    assert doc["history"] == monitor.history and doc["findings"] == monitor.findings
    g, c = monitor.pairs[0]
    assert doc["probes"][0] == {"name": "purpose", "context": probe.context, "target": "purpose",
                                "competitor": "meaning", "g_id": g, "c_id": c}
    assert set(doc["series"]) == set(LIVE + FIRST)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.name == "run.png"


def _fake(monitor, step, loss, p_t=0.1, p_c=0.3):
    """Feed the findings rules one observation of given values (no model)."""
    row = {"step": step, "probe": monitor.probes[0].label, "phi": -0.1, "S": -0.1, "D": 0.0, "p_target": p_t,
           "p_competitor": p_c, "loss": loss}
    monitor._g_gc.setdefault(row["probe"], 0.5)
    monitor.history.append(row)
    monitor._rows[row["probe"]].append(row)
    return monitor._check(row["probe"])


def test_silent_failure_trend_is_judged_over_steps_with_a_tolerance(tokenizer):
    """Observed every 10 steps, a 30-step run is judged once closed; a 0.1 % rise is noise (1 % tolerance),
    a 5 % rise is not; the SPEC rule (transitions.silent_failure) would reject the 0.1 % rise."""
    from phantom import transitions
    noisy = [6.659, 6.665, 4.0, 2.25]
    monitor = PhantomMonitor(tokenizer, TINY_PROBES[:1], every=10)
    kinds = [_fake(monitor, step, loss) for step, loss in zip((0, 10, 20), noisy)]
    assert kinds == [[], [], []]                             # steps 0–20 cover less than the 30-step window
    trend = "silent failure trend: the target's loss fell 6.659 → 2.25 over steps 0–30"
    with pytest.warns(PhantomFinding, match=trend):
        assert _fake(monitor, 30, noisy[3]) == ["silent_failure_trend"]
    assert not transitions.silent_failure(noisy, [0.1] * 4, [0.3] * 4)
    rising = PhantomMonitor(tokenizer, TINY_PROBES[:1], every=10)
    assert [_fake(rising, s, loss) for s, loss in zip((0, 10, 20, 30), (6.6, 7.0, 4.0, 2.2))][-1] == []
    flipped = PhantomMonitor(tokenizer, TINY_PROBES[:1], every=10)
    for s, loss in zip((0, 10, 20), (6.6, 5.0, 4.0)):
        _fake(flipped, s, loss, p_t=0.4 if s == 10 else 0.1)
    assert _fake(flipped, 30, 2.2) == []                      # a rank flip inside the window


def test_bad_news_warns_at_the_callers_line_and_can_stop_or_raise(tokenizer):
    monitor = PhantomMonitor(tokenizer, TINY_PROBES[:1], window=2, stop_on={"silent_failure_trend"})
    _fake(monitor, 0, 3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fake(monitor, 2, 2.0)                                # the warning must point here, not into phantom
    (w,) = [w for w in caught if w.category is PhantomFinding]
    assert w.filename == __file__
    assert monitor.stop is not None and monitor.stop["kind"] == "silent_failure_trend"
    raising = PhantomMonitor(tokenizer, TINY_PROBES[:1], window=1, raise_on="born_flip")
    with pytest.raises(PhantomStop, match="Born flip"):
        _train_hard(tokenizer, raising, 15)
    assert any(f["kind"] == "born_flip" for f in raising.findings)


def test_close_observes_the_final_state_once(tiny, tokenizer):
    monitor = PhantomMonitor(tokenizer, TINY_PROBES[:1])
    monitor.observe(tiny, 0)
    assert len(monitor.close(tiny, 3)) == 1 and monitor.close(tiny, 3) == []
    assert [r["step"] for r in monitor.history] == [0, 3]


def test_moved_names_are_reexported():
    import phantom
    from phantom import callback, monitor, plots, predict
    assert monitor.PhantomCallback is callback.PhantomCallback and monitor.plot is plots.plot_monitor
    assert monitor.blind_lr is predict.blind_lr and monitor.BlindConstant is predict.BlindConstant
    assert phantom.PhantomMonitor is monitor.PhantomMonitor and phantom.PhantomCallback is callback.PhantomCallback


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
    for t in range(steps):                       # the README's loop: observe before each update …
        monitor.observe(model, t)
        F.cross_entropy(model(ids, logits_to_keep=1).logits[0, -1:].float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    monitor.close(model, steps)                  # … and close: t = 0..T, as SPEC §4
    return monitor


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_plain_loop_agrees_with_engine(smol, longing, mode, one_torch_thread):
    """A SPEC §4 loop with a monitor logs the engine's Φ, S, D, p_g, p_c at every step (1e-6)."""
    context, pair = longing
    traj = dynamics.run(smol, context, mode=mode, lr=MODE_LR[mode], steps=STEPS, pair=pair)
    monitor = _spec_loop(smol, longing, mode, MODE_LR[mode], STEPS, blind=True)
    for k, engine in (("phi", "phi"), ("S", "signal"), ("D", "drag"), ("p_target", "p_g"), ("p_competitor", "p_c"),
                      ("dz", "dz"), ("loss", "loss"), ("rank_target", "rank_g"), ("rank_competitor", "rank_c")):
        _, got = monitor.series("yearning-longing", k)
        assert got == pytest.approx(traj[engine], abs=1e-6), k
    first = monitor.history[0]
    assert first["G_gc"] == pytest.approx(traj.g_max, abs=1e-12)
    assert first["B"] == pytest.approx(traj["burial"][0], rel=1e-9)
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
    assert ("phantom/longing/B" in {k for _, k in logged}) and (0, "phantom/longing/r") not in logged
    assert [h["step"] for h in history if "loss" in h] == [3]                  # the Trainer's own logging_steps
    assert [p.name for p in (tmp_path / "phantom.json", tmp_path / "phantom.png") if p.exists()] == \
        ["phantom.json", "phantom.png"] and callback.written == (tmp_path / "phantom.json", tmp_path / "phantom.png")
    _, phi = monitor.series("longing", "phi")
    assert phi[-1] != phi[0]                       # it watched training move the model
    if mode == "lora":
        assert torch.equal(model.get_input_embeddings().weight, smol.model.get_input_embeddings().weight)


WINDOW = 5   # steps t = 0..5: by t = 4 the 2e-5 run has rank-flipped (measured: t = 4)


@pytest.mark.slow
def test_silent_failure_flagged_at_2e6_not_on_a_flipping_run(smol, longing, one_torch_thread):
    """``longing`` full FT (g = the lower-Born word, SPEC §3): a silent failure at 2e-6 (SPEC §4 run,
    measured over all 30 steps: loss 8.28 → 1.25, no rank flip), flagged as a trend once the
    5-step window is closed; at 2e-5 the same window flips and nothing silent is flagged. 5
    updates instead of 30: the shared 2-core CPU takes 70–135 s for a 30-step full-FT run."""
    with pytest.warns(PhantomFinding, match="silent failure trend"):
        silent = _spec_loop(smol, longing, "full", 2e-6, WINDOW, window=WINDOW)
    assert [(f["kind"], f["step"]) for f in silent.findings] == [("silent_failure_trend", WINDOW)]
    _, loss = silent.series("yearning-longing", "loss")
    assert loss[-1] < loss[0]
    flips = _spec_loop(smol, longing, "full", 2e-5, WINDOW, window=WINDOW)
    kinds = {f["kind"] for f in flips.findings}
    assert "rank_flip" in kinds and "silent_failure_trend" not in kinds


# --- transformers.Trainer on a tiny model ----------------------------------------------------

class Recorder(TrainerCallback):
    """A stub report_to integration: records what each on_log receives, at which step."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def _tiny_trainer(tokenizer, tmp_path, monitor, *, attach: bool, max_steps: int = 12, lr: float = 1e-3,
                  report_to=("tensorboard",)):
    from transformers import Trainer, TrainingArguments
    model = tiny_models.build_model("llama", len(tokenizer))
    ids = tokenizer("He never found the purpose", return_tensors="pt").input_ids[0]
    recorder = Recorder()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=1,
                             learning_rate=lr, logging_steps=5, save_strategy="no", report_to=list(report_to),
                             use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False)
    callback = PhantomCallback(monitor)
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": ids, "labels": ids.clone()}] * 4,
                      callbacks=[recorder] if attach else [recorder, callback])
    if attach:
        callback.attach(trainer)
    return trainer, callback, recorder


def _tensorboard_scalars(logdir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    steps: dict[str, list[int]] = {}
    for events in logdir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return steps


@pytest.mark.parametrize("attach", [True, False])
def test_trainer_integrations_receive_every_observation_and_finding(tokenizer, tmp_path, attach):
    """callbacks=[...] and attach alike: step 0, every 5th step and the final step 12 reach TensorBoard's
    event files and a stub integration, with the first-only values at step 0 and the findings; the
    Trainer's own logging_steps=5 is untouched and the report is written."""
    monitor = PhantomMonitor(tokenizer, [Probe("He never found the", "purpose", "meaning", name="purpose")],
                             every=5, window=3)
    trainer, callback, recorder = _tiny_trainer(tokenizer, tmp_path, monitor, attach=attach, lr=3e-2)
    trainer.train()
    assert [r["step"] for r in monitor.history] == [0, 5, 10, 12]
    ours = [(step, logs) for step, logs in recorder.logs if any(k.startswith("phantom/") for k in logs)]
    assert [s for s, _ in ours] == [0, 5, 10, 12]
    assert {"phantom/purpose/G_gc", "phantom/purpose/B", "phantom/purpose/phi"} <= set(ours[0][1])
    assert all("phantom/purpose/B" not in logs for _, logs in ours[1:])
    assert [s for s, logs in recorder.logs if "loss" in logs] == [5, 10]         # logging_steps, not every step
    found = {f"phantom/purpose/{f['kind']}": f["step"] for f in monitor.findings}
    assert {"phantom/purpose/born_flip", "phantom/purpose/rank_flip"} <= set(found)
    assert {k: v for _, logs in ours for k, v in logs.items() if k in found} == found
    scalars = _tensorboard_scalars(tmp_path)
    assert sorted(scalars["train/phantom/purpose/phi"]) == [0, 5, 10, 12]
    assert scalars["train/phantom/purpose/G_gc"] == [0] and "train/phantom/purpose/r" not in scalars   # blind off
    assert {f"train/{k}" for k in found} <= set(scalars)
    assert [h["step"] for h in trainer.state.log_history if "phantom/purpose/phi" in h] == [0, 5, 10, 12]
    assert callback.written == (tmp_path / "phantom.json", tmp_path / "phantom.png")
    assert trainer.callback_handler.callbacks[0] is callback


def test_trainer_stops_on_a_finding_and_never_raises_at_the_end(tokenizer, tmp_path, monkeypatch, caplog):
    monitor = PhantomMonitor(tokenizer, [("He never found the", "purpose", "meaning")], stop_on={"born_flip"})
    trainer, callback, _ = _tiny_trainer(tokenizer, tmp_path, monitor, attach=False, max_steps=40, lr=3e-2,
                                         report_to=())
    monkeypatch.setattr(monitor, "report", lambda path: (_ for _ in ()).throw(PermissionError("read-only disk")))
    with caplog.at_level("ERROR", "phantom.callback"):
        trainer.train()                                      # returns: the user's save_model() would run
    born = monitor.stop["step"]
    assert trainer.state.global_step == born < 40 and monitor.history[-1]["step"] == born
    assert callback.written is None and "read-only disk" in caplog.text and "training itself finished" in caplog.text


def test_unwritable_report_path_fails_before_training(tokenizer, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="monitor report directory .* is not a writable directory"):
        PhantomCallback(PhantomMonitor(tokenizer, TINY_PROBES[:1]), path=tmp_path / "file" / "phantom")
