"""Content-addressed, process-safe cache of JSON-able results (SPEC §4 run store).

Every fine-tuning run (and any other expensive, deterministic computation) is
identified by a *key*: a JSON-able dict of everything that determines its result.
The key's SHA-256 over canonical JSON (sorted keys, no whitespace, ASCII) names
one entry file, so the store is shared safely by every process on the machine
(pytest-xdist workers, CLI runs) without any index or database.

File layout
-----------
::

    <root>/                      $PHANTOM_RUNS, else ~/.cache/phantom/runs
        <h[:2]>/                 fan-out directory: first two hex digits of h
            <h>.json             the entry (h = key_hash(key))
            <h>.lock             flock target serialising computes of this key

An entry is one human-readable JSON file::

    {"format": 1,
     "key": key, "key_sha256": h,
     "payload": payload, "payload_sha256": sha256(canonical JSON of payload),
     "provenance": {"created": ISO-8601 UTC, "wall_s": ..., "python": ...,
                    "host": ..., "pid": ...}}

Floats round-trip exactly (``repr``), and NaN / ±inf are written as JSON's
``NaN`` / ``Infinity`` extensions. Hashes are taken over canonical JSON *text*,
so a payload holding NaN still verifies although ``nan != nan``.

Signed entries
--------------
A checksum is not authentication: anyone who may write a shared store can put an entry
there whose hashes verify. With ``$PHANTOM_STORE_KEY`` set (a secret shared by everyone
trusted to write the store), every entry is written with ``"hmac_sha256"``, HMAC-SHA256 of
``"<format>:<key_sha256>:<payload_sha256>"`` under that secret, and only entries whose
signature verifies are served: an unsigned or mis-signed one is treated like a corrupt
one — a :class:`StoreWarning` names it, it is recomputed and overwritten signed (in a
read-only view it counts as absent). Without the variable, signatures are neither written
nor checked.

Read-only stores
----------------
A store directory this process cannot write (permissions, a read-only mount) still serves
the entries it holds; only a miss, which would need a write, fails, with one line
(:class:`phantom.files.UnusablePath`) before anything is computed.

Guarantees
----------
* Entries are written atomically (temporary file in the same directory, fsync,
  ``os.replace``): a reader never sees a half-written entry.
* Every read is verified; a corrupt entry (unparsable, wrong format, hash
  mismatch, another key's record, or a payload the caller's ``validate``
  rejects) raises a :class:`StoreWarning` and is recomputed.
* A computed result is never lost: if its entry cannot be written (say the
  entry path is a directory), a :class:`StoreWarning` says so and the result
  is returned uncached. An unusable store directory or lock file raises
  :class:`phantom.files.UnusablePath` naming it, before anything is computed.
* :meth:`RunStore.get_or_compute` computes each key at most once across
  processes: a verified entry is returned without locking, otherwise the key's
  lock file is taken with ``fcntl.flock`` and the entry re-checked before
  computing. Different keys have different locks and never block each other.
  Lock files are left in place: deleting them would race with waiting processes.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import pathlib
import platform
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .files import UnusablePath, ensure_dir, exclusive_lock, write_atomic

FORMAT = 1
"""Version of the entry file format written and accepted by :class:`RunStore`."""

KEY_ENV = "PHANTOM_STORE_KEY"
"""Environment variable holding the secret entries are signed and checked with (see Signed entries)."""

_RECORD_FIELDS = ("format", "key", "key_sha256", "payload", "payload_sha256", "provenance")


class StoreWarning(UserWarning):
    """A corrupt run-store entry was found and is recomputed, or a result could not be stored."""

Validator = Callable[[Any], Any]
"""``validate(payload)``: raises ValueError, TypeError or KeyError when a verified payload is unusable."""


class NotStored(LookupError):
    """A read-only :class:`RunStore` was asked for an entry it does not hold."""


class _Corrupt(Exception):
    """Internal: an entry file failed verification (the message is the reason)."""


def default_root() -> pathlib.Path:
    """Directory of the machine-wide run store.

    Returns
    -------
    pathlib.Path
        ``$PHANTOM_RUNS`` if set and non-empty, else ``~/.cache/phantom/runs``.
    """
    env = os.environ.get("PHANTOM_RUNS")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "phantom" / "runs"


def _reject(value: Any) -> Any:
    """``json.dumps`` fallback: refuse any value JSON cannot represent, naming it."""
    raise TypeError(f"{value!r} (type {type(value).__name__}) is not JSON-able")


def _canonical(obj: Any, what: str) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, no whitespace, ASCII).

    Parameters
    ----------
    obj : Any
        JSON-able value; NaN and ±inf are allowed.
    what : str
        Name of the value in error messages ("key", "payload").

    Raises
    ------
    TypeError
        If ``obj`` (or anything inside it) is not JSON-able; the message names it.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          default=_reject)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run-store {what} is not JSON-able: {exc}") from exc


def _sha256(text: str) -> str:
    """SHA-256 hex digest of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def key_hash(key: dict) -> str:
    """Content address of a run-store key.

    Parameters
    ----------
    key : dict
        JSON-able description of everything that determines the result.

    Returns
    -------
    str
        SHA-256 hex digest of the key's canonical JSON; independent of dict order.

    Raises
    ------
    TypeError
        If ``key`` is not a dict or holds a value JSON cannot represent.
    """
    if not isinstance(key, dict):
        raise TypeError(f"run-store key must be a dict, not {type(key).__name__}: {key!r}")
    return _sha256(_canonical(key, "key"))


def _verify(record: Any, expected_hash: str) -> dict:
    """Check a parsed entry against the hash it was looked up by.

    Returns
    -------
    dict
        ``record``, unchanged, when it is a valid entry for ``expected_hash``.

    Raises
    ------
    _Corrupt
        With the reason, when any check fails.
    """
    if not isinstance(record, dict):
        raise _Corrupt(f"top level is {type(record).__name__}, not an object")
    missing = [name for name in _RECORD_FIELDS if name not in record]
    if missing:
        raise _Corrupt(f"missing fields {missing}")
    if record["format"] != FORMAT:
        raise _Corrupt(f"format {record['format']!r}, expected {FORMAT}")
    if not isinstance(record["key"], dict) or key_hash(record["key"]) != record["key_sha256"]:
        raise _Corrupt("key_sha256 does not match the stored key")
    if record["key_sha256"] != expected_hash:
        raise _Corrupt(f"entry belongs to key {record['key_sha256']}, not {expected_hash}")
    if _sha256(_canonical(record["payload"], "payload")) != record["payload_sha256"]:
        raise _Corrupt("payload_sha256 does not match the stored payload")
    return record


def secret_from_env() -> bytes | None:
    """The signing secret, ``$PHANTOM_STORE_KEY`` as UTF-8 bytes, or None when unset or empty."""
    value = os.environ.get(KEY_ENV)
    return value.encode("utf-8") if value else None


def signature(secret: bytes, record: dict) -> str:
    """HMAC-SHA256 (hex) of an entry's format, key hash and payload hash under ``secret``."""
    message = f"{record['format']}:{record['key_sha256']}:{record['payload_sha256']}".encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def secret_id(secret: bytes | None) -> str:
    """A public name of ``secret`` (its HMAC of a fixed text, 16 hex digits), or "none"."""
    return "none" if secret is None else hmac.new(secret, b"phantom run store", hashlib.sha256).hexdigest()[:16]


def _check_signature(record: dict, secret: bytes | None) -> None:
    """Raise :class:`_Corrupt` unless ``record`` is signed under ``secret`` (nothing to check without one)."""
    if secret is None:
        return
    given = record.get("hmac_sha256")
    if not isinstance(given, str):
        raise _Corrupt(f"unsigned entry (${KEY_ENV} is set: only signed entries are served)")
    if not hmac.compare_digest(given, signature(secret, record)):
        raise _Corrupt(f"its signature does not verify under ${KEY_ENV}")


def _load(path: pathlib.Path, expected_hash: str, validate: Validator | None = None,
          secret: bytes | None = None) -> dict | None:
    """Read and verify the entry at ``path`` (and its payload with ``validate``, if given).

    With ``secret``, the entry must also carry its valid signature (:func:`signature`).

    Returns
    -------
    dict or None
        The verified record, or None if there is no file.

    Raises
    ------
    _Corrupt
        If the file exists but is not a valid entry for ``expected_hash``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Corrupt(f"unreadable ({exc})") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Corrupt(f"invalid JSON ({exc})") from exc
    record = _verify(record, expected_hash)
    _check_signature(record, secret)
    if validate is not None:
        try:
            validate(record["payload"])
        except (ValueError, TypeError, KeyError) as exc:
            raise _Corrupt(f"invalid payload ({type(exc).__name__}: {exc})") from exc
    return record


def _warn_corrupt(path: pathlib.Path, reason: str) -> None:
    """Emit the :class:`StoreWarning` for a corrupt entry."""
    warnings.warn(f"ignoring corrupt run-store entry {path}: {reason}; recomputing",
                  StoreWarning, stacklevel=3)


def _provenance(wall_s: float) -> dict:
    """Where, when and how fast an entry was computed."""
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


class RunStore:
    """Content-addressed cache of JSON-able results, safe across processes.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Store directory; defaults to :func:`default_root`. It is created on the
        first write, not here.

    Attributes
    ----------
    root : pathlib.Path
        The store directory.
    requested, computed : set of (str, str)
        ``(kind, key hash)`` of every entry asked for / computed through this instance.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, read_only: bool = False,
                 secret: bytes | None = None):
        self.root = pathlib.Path(root) if root is not None else default_root()
        self.read_only = read_only   # serve verified entries only: a miss raises NotStored
        self.secret = secret if secret is not None else secret_from_env()   # sign and check entries
        self.unwritable: str | None = None   # why the directory cannot be written (check() found out)
        # (kind, key hash) of every entry asked for / computed through this instance: a claims
        # session reports them to tell a cold store (everything computed) from a warm one.
        self.requested: set[tuple[str, str]] = set()
        self.computed: set[tuple[str, str]] = set()
        self._checked = False

    def check(self) -> None:
        """Create the store directory if needed and find out whether it is writable.

        An existing directory this process may read but not write is usable, read-only: its
        entries are served and :attr:`unwritable` says why a miss cannot be stored.

        Raises
        ------
        phantom.files.UnusablePath
            Naming the directory and the reason (a file, ``/proc``, not creatable, …).
        """
        try:
            ensure_dir(self.root, "run store")
            self.unwritable = None
        except UnusablePath as err:
            if not (self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)):
                raise
            self.unwritable = str(err)
        self._checked = True

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def path(self, key: dict) -> pathlib.Path:
        """Entry file of ``key``: ``<root>/<h[:2]>/<h>.json`` with ``h = key_hash(key)``."""
        return self._path(key_hash(key), ".json")

    def _path(self, h: str, suffix: str) -> pathlib.Path:
        """File ``<root>/<h[:2]>/<h><suffix>``."""
        return self.root / h[:2] / f"{h}{suffix}"

    def entry(self, key: dict, validate: Validator | None = None) -> dict | None:
        """The whole verified record of ``key`` (key, payload, provenance).

        ``validate(payload)``, if given, must raise ValueError, TypeError or KeyError on a
        payload that verifies but is unusable (an entry rewritten with a fresh hash); such an
        entry counts as corrupt.

        Returns
        -------
        dict or None
            The record, or None if absent or corrupt (a corrupt entry also emits
            a :class:`StoreWarning` and is left to be overwritten).
        """
        h = key_hash(key)
        path = self._path(h, ".json")
        try:
            return _load(path, h, validate, self.secret)
        except _Corrupt as exc:
            _warn_corrupt(path, str(exc))
            return None

    def lock(self, key: dict, what: str):
        """An exclusive lock named by ``key`` (its own, not an entry's) for work that spans entries."""
        return exclusive_lock(self._path(key_hash(key), ".lock"), f"{what} {key_hash(key)[:12]}…")

    def _request(self, key: dict) -> str:
        """Count a request for ``key``'s entry in :attr:`requested`; its hash."""
        h = key_hash(key)
        self.requested.add((key.get("kind", ""), h))
        return h

    def get(self, key: dict, validate: Validator | None = None, *, count: bool = False) -> dict | None:
        """Verified payload of ``key``, or None if absent or corrupt (see :meth:`entry`).

        ``count``: the read is a request for the entry, counted in :attr:`requested` as
        :meth:`get_or_compute` counts it (a caller that computes on a miss by other means).
        """
        if count:
            self._request(key)
        record = self.entry(key, validate)
        return None if record is None else record["payload"]

    def get_or_compute(self, key: dict, compute: Callable[[], dict], validate: Validator | None = None) -> dict:
        """Payload of ``key``, computing and storing it first if needed.

        A verified entry is returned without locking. Otherwise the key's lock is
        taken, the entry re-checked (another process may have written it while
        we waited) and, only if still absent or corrupt, ``compute()`` is called
        and its result written atomically.

        Parameters
        ----------
        key : dict
            JSON-able description of the computation.
        compute : callable
            Called with no arguments; returns a JSON-able dict payload.
        validate : callable, optional
            As in :meth:`entry`: a stored payload it rejects is recomputed.

        Returns
        -------
        dict
            The payload as stored (i.e. as a later :meth:`get` returns it: tuples
            become lists, and so on).

        Raises
        ------
        TypeError
            If ``key`` or the computed payload is not JSON-able.
        phantom.files.UnusablePath
            If the store directory or the key's lock file is unusable (checked before computing).
        Exception
            Whatever ``compute`` raises; nothing is written and the lock is released.
        """
        h = self._request(key)
        path = self._path(h, ".json")
        with suppress(_Corrupt):  # reported below, under the lock, if still corrupt
            record = _load(path, h, validate, self.secret)
            if record is not None:
                return record["payload"]
        if self.read_only:
            raise NotStored(f"its {key.get('kind', 'entry')} entry is not in the run store {self.root}")
        if not self._checked:
            self.check()
        if self.unwritable:
            raise UnusablePath(f"{self.unwritable}: its {key.get('kind', 'entry')} entry is missing and "
                               "cannot be stored")
        with exclusive_lock(self._path(h, ".lock"), f"run-store entry {h[:12]}… ({key.get('kind', 'entry')})"):
            try:
                record = _load(path, h, validate, self.secret)
            except _Corrupt as exc:
                _warn_corrupt(path, str(exc))
                record = None
            if record is None:
                record = self._compute_and_write(key, h, compute, path)
        return record["payload"]

    def _compute_and_write(self, key: dict, h: str, compute: Callable[[], dict],
                           path: pathlib.Path) -> dict:
        """Run ``compute``, write the verified-format record to ``path`` and return it.

        A record that cannot be written is returned all the same, with a :class:`StoreWarning`.
        """
        start = time.perf_counter()
        payload = compute()
        wall_s = time.perf_counter() - start
        if not isinstance(payload, dict):
            raise TypeError(f"run-store payload must be a dict, not {type(payload).__name__}")
        payload_text = _canonical(payload, "payload")
        record = {
            "format": FORMAT,
            "key": json.loads(_canonical(key, "key")),
            "key_sha256": h,
            "payload": json.loads(payload_text),
            "payload_sha256": _sha256(payload_text),
            "provenance": _provenance(wall_s),
        }
        if self.secret is not None:
            record["hmac_sha256"] = signature(self.secret, record)
        try:
            write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            warnings.warn(f"could not store run-store entry {path}: {exc.strerror or exc}; "
                          f"the result is returned but not cached", StoreWarning, stacklevel=3)
        self.computed.add((key.get("kind", ""), h))
        return record
