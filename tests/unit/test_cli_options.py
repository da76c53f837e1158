"""phantom.cli's options: bad values are caught at parse time or before any fine-tuning, as one line
``phantom: error: …``; and a hypothesis fuzz of every option of ``run`` and ``laws``."""
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from phantom import cli, contexts, dynamics, executor, plans, runs, zoo
from phantom.protocol import MODES


def no_model(*args, **kwargs):
    raise zoo.ModelLoadError("cannot load model: the test loads none")


@pytest.fixture(autouse=True)
def nothing_runs(tmp_path, monkeypatch):
    """A private store and cache; no model may load and nothing may be fine-tuned."""
    monkeypatch.setenv("PHANTOM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PHANTOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "load", no_model)
    monkeypatch.setattr(zoo, "describe", no_model)
    monkeypatch.setattr(dynamics, "run", lambda *a, **k: pytest.fail("nothing may be fine-tuned"))
    runs.model_info.cache_clear()


def run_cli(argv) -> tuple[int, list[str], str]:
    """Exit status, the ``phantom: error:`` lines and stderr (captured here, for hypothesis)."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue()
    assert "Traceback" not in text
    return code, [line for line in text.splitlines() if line.startswith("phantom: error:")], text


def run_argv(**changes) -> list[str]:
    opts = {"model": "smollm2-135m", "context": "longing", "mode": "full", "lr": "1e-3", "steps": "2"} | changes
    return ["run"] + [f"--{k}={v}" for k, v in opts.items()]


def test_empty_out_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, errors, _ = run_cli(run_argv(out=""))
    assert code == 2
    assert errors == ["phantom: error: argument --out: the output directory must not be empty"]
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("under", ["", "sub"])
def test_unwritable_out_is_reported_before_any_model_loads(tmp_path, monkeypatch, under):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = a_file / under if under else a_file
    loads = []
    monkeypatch.setattr(runs, "weights_sha256", lambda model: loads.append(model))
    code, errors, _ = run_cli(run_argv(out=out))
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(f"phantom: error: output directory (--out) '{out}' is not a writable directory:")
    assert loads == []


@pytest.mark.parametrize("seed", [str(10**26), str(2**64), "-1"])
def test_seed_out_of_torch_range_is_a_usage_error(seed):
    code, errors, _ = run_cli(run_argv(seed=seed))
    assert code == 2
    assert errors == [f"phantom: error: argument --seed: must lie in [0, 2**64) (a torch seed), got {seed!r}"]


def test_largest_torch_seed_is_accepted_by_the_parser():
    args = cli.build_parser().parse_args(run_argv(seed=str(2**64 - 1)))
    assert args.seed == 2**64 - 1


@pytest.mark.parametrize("no_store", [[], ["--no-store"]])
def test_meta_device_is_one_line(no_store):
    code, errors, _ = run_cli(run_argv(device="meta") + no_store)
    assert code == 1
    assert len(errors) == 1 and errors[0].startswith("phantom: error: device 'meta' is not usable:")


@pytest.mark.parametrize("models, why", [(",,,", "names no model"), ("smollm2-135m,,gemma3-270m", "has an empty item"),
                                          ("", "names no model")])
def test_empty_model_list_is_a_usage_error(tmp_path, models, why):
    code, errors, _ = run_cli(["laws", f"--models={models}", f"--out={tmp_path / 'out'}"])
    assert code == 2
    assert errors == [f"phantom: error: argument --models: the model list {models!r} {why}"]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- fuzz

def _out():
    """Arbitrary text kept inside the sandbox: relative, no '..' (anything else is the same code path)."""
    return st.text(max_size=30).filter(lambda s: not s.startswith("/") and ".." not in s)


RUN_VALID = {
    "model": ["smollm2-135m", "gemma3-270m", ".", "no-such-model"],
    "context": list(contexts.BY_ID),
    "mode": list(MODES),
    "lr": ["1e-3", "2e-5", "10"],
    "steps": ["1", "30"],
    "seed": ["0", "18446744073709551615"],
    "device": ["cpu", "meta"],
    "out": ["out", "a/b"],
}
LAWS_VALID = {
    "models": ["smollm2-135m", "smollm2-135m,gemma3-270m", "."],
    "budget": list(plans.BUDGETS),
    "out": ["out", "a/b"],
}


@st.composite
def options(draw, valid: dict) -> dict:
    """Every option given: a valid value, except for a few (0 to 3) given arbitrary text."""
    opts = {k: draw(st.sampled_from(v)) for k, v in valid.items()}
    for k in draw(st.lists(st.sampled_from(sorted(valid)), max_size=3, unique=True)):
        opts[k] = draw(_out() if k == "out" else st.text(max_size=40))
    return opts


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def snapshot(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def check_fuzzed(command: str, opts: dict, no_store: bool) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="fuzz-"))
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        argv = [command] + [f"--{k}={v}" for k, v in opts.items()] + (["--no-store"] if no_store else [])
        code, errors, stderr = run_cli(argv)
    finally:
        os.chdir(cwd)
    assert code in (0, 1, 2), stderr
    if code:
        assert len(errors) == 1, stderr
        event(f"exit {code}: {errors[0].split(':')[2].split(chr(39))[0].strip()}")
    out = Path(opts["out"]) if opts["out"].strip() else None
    for path in snapshot(sandbox):   # nothing but --out (and its parents) appears in the working directory
        assert out is not None and (path == out or out in path.parents or path in out.parents), (path, argv)


@FUZZ
@given(opts=options(RUN_VALID), no_store=st.booleans())
def test_fuzz_run_options(opts, no_store):
    check_fuzzed("run", opts, no_store)


@FUZZ
@given(opts=options(LAWS_VALID))
def test_fuzz_laws_options(opts):
    check_fuzzed("laws", opts, False)



# ---------------------------------------------------------------- issue 20: `campaign` options

CAMPAIGN_VALID = {
    "models": ["smollm2-135m", "smollm2-135m,gemma3-270m", ".", "no-such-model"],
    "budget": list(plans.BUDGETS),
    "executor": list(executor.EXECUTORS),
    "address": ["auto", "127.0.0.1:6379", "ray://head:10001"],
    "device": ["cpu", "cuda"],
}


@pytest.fixture
def no_cluster(monkeypatch):
    """Nothing reaches Ray: importing it is a no-op and computing is one line, exit 1."""
    def reached(*args, **kwargs):
        raise executor.ExecutorError("the fuzz reached executor.compute")

    monkeypatch.setattr(executor, "import_ray", lambda private=False: None)
    monkeypatch.setattr(executor, "compute", reached)


@pytest.mark.parametrize("option, value", [
    ("address", ""), ("address", "local"), ("address", "head"), ("address", "head:"), ("address", ":6379"),
    ("address", "head:0"), ("address", "head:65536"), ("address", "a b:1"), ("address", "http://head:1"),
    ("models", ""), ("models", ",,"), ("models", "a,,b"), ("budget", "huge"), ("budget", ""),
    ("executor", "dask"), ("executor", "Ray"), ("device", "cuda:0"), ("device", "meta"), ("device", ""),
])
def test_a_bad_campaign_option_is_a_one_line_usage_error(option, value, no_cluster):
    opts = {"models": "smollm2-135m", "executor": "ray"} | {option: value}
    code, errors, stderr = run_cli(["campaign"] + [f"--{k}={v}" for k, v in opts.items()])
    assert code == 2, stderr
    assert len(errors) == 1 and errors[0].startswith(f"phantom: error: argument --{option}: "), stderr


@FUZZ
@given(opts=options(CAMPAIGN_VALID))
def test_fuzz_campaign_options(opts):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(executor, "import_ray", lambda private=False: None)
        m.setattr(executor, "compute", lambda *a, **k: (_ for _ in ()).throw(executor.ExecutorError("reached")))
        code, errors, stderr = run_cli(["campaign"] + [f"--{k}={v}" for k, v in opts.items()])
    assert code in (1, 2), stderr          # never 0: computing is refused above; never a traceback
    assert len(errors) == 1, stderr
    event(f"exit {code}: {errors[0].split(':')[2].strip()[:40]}")


def test_any_other_file_system_fault_is_one_line(tmp_path, monkeypatch):
    def disk_full(model):
        raise OSError(28, "No space left on device", str(tmp_path / "cache" / "x"))

    monkeypatch.setattr(runs, "weights_sha256", disk_full)
    code, errors, _ = run_cli(run_argv(out=tmp_path / "out"))
    assert code == 1
    assert errors == [f"phantom: error: No space left on device: {tmp_path / 'cache' / 'x'}"]


# ---------------------------------------------------------------- fuzz: predict's CSV contents

_FIELD = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Z", "Cc", "S")), max_size=25)


@st.composite
def probes_csv(draw) -> bytes:
    """A header (usually the right one) and rows of arbitrary fields, quoted or not, sometimes with a BOM."""
    header = draw(st.sampled_from(["context,target,competitor", "context,target,competitor,name",
                                   "target,context", ""]) | _FIELD)
    words = st.sampled_from(["He never found the", "purpose", "meaning", "longing", " yearning", "x\x1b[2Jy"])
    rows = draw(st.lists(st.lists(words | _FIELD, max_size=5), max_size=5))
    quote = draw(st.booleans())
    lines = [header] + [",".join(f'"{f.replace(chr(34), chr(34) * 2)}"' if quote else f for f in row) for row in rows]
    text = "\n".join(lines)
    return ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode("utf-8", "surrogatepass")


@pytest.fixture
def tiny_tokenizer(monkeypatch):
    import tiny_models
    tokenizer = tiny_models.build_tokenizer()
    monkeypatch.setattr(zoo, "load_tokenizer", lambda name: tokenizer)


@FUZZ
@given(data=probes_csv())
def test_fuzz_predict_csv_contents(tiny_tokenizer, data):
    """Whatever the CSV holds: exit 1 with one bounded error line, nothing printed raw that a terminal
    would interpret (words are checked on a tiny tokenizer; no model loads, so a valid file ends at 'no k')."""
    import contextlib
    import io
    sandbox = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (sandbox / "p.csv").write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(["predict", "--model", "smollm2-135m", "--probes", str(sandbox / "p.csv"),
                         "--k-models", "smollm2-135m", "--out", str(sandbox / "out")])
    errors = [line for line in err.getvalue().splitlines() if line.startswith("phantom: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert len(errors[0]) <= cli.ERROR_MAX + 100
    printed = out.getvalue() + err.getvalue()
    assert not any(ch in printed for ch in "\x00\x1b\x07\r\x08"), printed
    event(errors[0].replace(str(sandbox / "p.csv"), "P")[:45])
