"""phantom.zoo's loading: no model folder runs its own code, and every failure to load a model
is one line ``phantom: error: cannot load model <name>: <reason>`` (or ``unknown model``)."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models
from cli_helpers import run_cli

from phantom import zoo

ROOT = Path(__file__).resolve().parents[2]
RUN = ["run", "--context", "longing", "--mode", "full", "--lr", "1e-3", "--steps", "1", "--no-store"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_models.build_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def copy_of(tiny_dir: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / name))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def remote_code_folder(tiny_dir: Path, tmp_path: Path, marker: Path, *, model_type="evil") -> Path:
    """A model folder whose config asks for its own module, which writes ``marker`` when imported."""
    folder = copy_of(tiny_dir, tmp_path, "remote")
    edit_json(folder / "config.json", model_type=model_type,
              auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import LlamaConfig\n"
                                    "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    return folder


def test_remote_code_never_runs_even_when_stdin_says_yes(tiny_dir, tmp_path):
    marker = tmp_path / "MARKER"
    folder = remote_code_folder(tiny_dir, tmp_path, marker)
    env = {**os.environ, "PHANTOM_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    cmd = " ".join([f"yes y | {sys.executable} -m phantom run --model {folder}", *RUN[1:],
                    "--out", str(tmp_path / "out")])
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("phantom: error:")]
    assert not marker.exists()
    assert proc.returncode == 1, proc.stderr
    assert errors == [f"phantom: error: cannot load model {str(folder)!r}: its config.json asks for custom code "
                      "(auto_map), which phantom never runs (trust_remote_code=False)"]
    assert "Traceback" not in proc.stderr and "[y/N]" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", ["evil", "llama"])
def test_loader_itself_never_trusts_remote_code(tiny_dir, tmp_path, monkeypatch, model_type):
    """Past the up-front auto_map check, transformers is still told trust_remote_code=False: it
    refuses a folder with only custom code, and ignores the auto_map of a known architecture."""
    marker = tmp_path / "MARKER"
    folder = remote_code_folder(tiny_dir, tmp_path, marker, model_type=model_type)
    monkeypatch.setattr(zoo, "_custom_code", lambda name: None)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers prompted for remote code"))
    if model_type == "evil":
        with pytest.raises(zoo.ModelLoadError, match="cannot load model .*custom code"):
            zoo.load(str(folder))
    else:
        assert zoo.load(str(folder)).info.family == "llama"
    assert not marker.exists()


def test_tokenizer_auto_map_is_refused(tiny_dir, tmp_path):
    folder = copy_of(tiny_dir, tmp_path, "tok")
    edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.Tok", None]})
    with pytest.raises(zoo.ModelLoadError, match="its tokenizer_config.json asks for custom code"):
        zoo.check_name(str(folder))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_one_line(tiny_dir, tmp_path, capsys):
    marker = str(tmp_path / "PICKLE_RAN")
    folder = copy_of(tiny_dir, tmp_path, "pickle")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": Evil(marker)}, f)
    code, errors, _ = run_cli([RUN[0], "--model", str(folder), *RUN[1:], "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert errors == [f"phantom: error: cannot load model {str(folder)!r}: its pickled weights hold objects "
                      "other than tensors and are refused (torch.load(weights_only=True))"]
    assert not Path(marker).exists()


def test_very_long_model_name_is_one_line(tmp_path, capsys):
    name = "x" * 5000   # ENAMETOOLONG from Path.is_dir()
    code, errors, _ = run_cli([RUN[0], "--model", name, *RUN[1:], "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(f"phantom: error: unknown model {'x' * 80!r}… (5000 characters): ")
    assert len(errors[0]) < 400


@pytest.mark.parametrize("case", ["unknown model_type", "auto_map class missing"])
def test_config_naming_a_missing_class_is_one_line(tiny_dir, tmp_path, capsys, case):
    folder = copy_of(tiny_dir, tmp_path, "cls")
    if case == "unknown model_type":
        edit_json(folder / "config.json", model_type="nosuchtype", architectures=["NoSuchForCausalLM"])
        reason = "ValueError: The checkpoint you are trying to load has model type `nosuchtype`"
    else:   # the class named by auto_map does not exist in its module: refused before any import
        (folder / "evil.py").write_text("")
        edit_json(folder / "config.json", model_type="evil", auto_map={"AutoModelForCausalLM": "evil.Missing"})
        reason = "its config.json asks for custom code"
    code, errors, _ = run_cli([RUN[0], "--model", str(folder), *RUN[1:], "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(f"phantom: error: cannot load model {str(folder)!r}: {reason}")


def test_sentencepiece_hint_only_when_sentencepiece_is_the_cause(tiny_dir, tmp_path, capsys):
    folder = copy_of(tiny_dir, tmp_path, "notok")
    (folder / "tokenizer.json").unlink()   # transformers' message then says "You need to have sentencepiece"
    code, errors, _ = run_cli([RUN[0], "--model", str(folder), *RUN[1:], "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert errors == [f"phantom: error: cannot load model {str(folder)!r}: no usable tokenizer "
                      "(no tokenizer.json, and no slow tokenizer that could be converted)"]
    # a sentencepiece model file in the folder, and the package missing: then the hint is right
    (folder / "tokenizer.model").write_bytes(b"\0")
    err = ValueError("You need to have sentencepiece or tiktoken installed to convert a slow tokenizer")
    spm_installed = __import__("importlib.util").util.find_spec("sentencepiece") is not None
    reason = zoo._load_reason(str(folder), err)
    assert ("sentencepiece" in reason) is (not spm_installed)
