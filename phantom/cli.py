"""Command-line interface: ``phantom <command> …`` or ``python -m phantom <command> …``.

Each subcommand is one :class:`Command` in :data:`COMMANDS` (its name, help texts, a
function adding its options and a handler ``handler(args) -> int``); adding one is a
matter of writing those two functions and one entry.

Errors a user can cause (unknown model or context, bad numbers, an unusable context, a
missing weight package, a model that cannot load, an unusable run store, model cache or
output directory) end the program with one line ``phantom: error: …`` on stderr: exit status 2
for command-line usage errors, 1 for the others; Ctrl-C is ``interrupted``, status 130 (and, with
the ray executor, SIGTERM is ``terminated``, 143, after Ray is shut down: :mod:`phantom.cluster`).
Every directory a command writes to is checked before any model is loaded or fine-tuned.
Warnings (a run that could not be stored, a corrupt entry being recomputed) are one line
``phantom: warning: …``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import campaign, cluster, contexts, dryrun, dynamics, executor, files, plans, progress, runs, store, zoo
from .protocol import MODES, SEED, STEPS

PROG = "phantom"


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line ``phantom: error: …`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {_one_line(message)}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw descriptions/epilogs; option help wrapped without breaking ``--no-store`` at its hyphens."""

    def _split_lines(self, text, width):
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


ERROR_MAX = 2000   # characters of an error line: a message quoting a huge input is cut


def _error(message: str) -> None:
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in _one_line(message))
    if len(text) > ERROR_MAX:
        text = f"{text[:ERROR_MAX]}… ({len(text) - ERROR_MAX} more characters)"
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one line ``phantom: warning: …``."""
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


# --- argument types -------------------------------------------------------------------

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < dynamics.SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**64) (a torch seed), got {text!r}")
    return value


def _out_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("the output directory must not be empty")
    return Path(text)


def _models(text: str) -> tuple[str, ...]:
    try:
        return plans.parse_models(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _address(text: str) -> str:
    try:
        return cluster.parse_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_out(out: Path) -> None:
    """Create the output directory now, before any fine-tuning, proving it writable."""
    try:
        files.ensure_dir(out, "output directory (--out)")
    except files.UnusablePath as err:
        raise CliError(str(err)) from None


# --- progress -------------------------------------------------------------------------

class _Clock:
    """Stage lines on stderr, each with the time elapsed since the command started."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


class _Loader:
    """The store's model loader (one model per process), announcing each actual load."""

    def __init__(self, clock: _Clock, always: bool = False):
        self.clock, self.calls, self.always = clock, 0, always  # always: announce reuse too

    def __call__(self, name: str):
        self.calls += 1
        if runs.SLOT.name != name or self.always:
            self.clock(f"loading model {name} …")
            info = runs.SLOT(name).info
            self.clock(f"  loaded: {info.family}, {info.n_params / 1e6:.1f}M parameters, "
                       f"{'tied' if info.tied else 'untied'} head")
        return runs.SLOT(name)


# --- `run` ----------------------------------------------------------------------------

COLUMNS = (  # (header, series, kind)
    ("t", None, "t"), ("loss", "loss", "g"), ("p_g", "p_g", "g"), ("p_c", "p_c", "g"),
    ("Φ", "phi", "g"), ("S", "signal", "g"), ("D", "drag", "g"), ("γ", "purity", "g"),
    ("B", "burial", "g"), ("Δz", "dz", "g"), ("rank_g", "rank_g", "i"), ("rank_c", "rank_c", "i"),
)
WIDTH = {"t": 3, "g": 10, "i": 7}


def format_table(traj) -> str:
    """The per-step table: fixed-width columns, floats to 4 significant digits."""
    head = " ".join(f"{h:>{WIDTH[kind]}}" for h, _, kind in COLUMNS)
    lines = [head, "-" * len(head)]
    for t in range(len(traj["phi"])):
        cells = []
        for _, name, kind in COLUMNS:
            if kind == "t":
                cells.append(f"{t:>{WIDTH[kind]}d}")
            elif kind == "i":
                cells.append(f"{int(traj[name][t]):>{WIDTH[kind]}d}")
            else:
                cells.append(f"{traj[name][t]:>{WIDTH[kind]}.4g}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def format_summary(traj, analysis) -> str:
    """The SPEC §5 read-outs of a run, one per line."""
    from . import transitions
    m, j = traj.meta, analysis.jump
    g_max = traj.g_max
    contested = "rank-contested (p_g < p_c at t = 0)" if m.get("rank_contested") else "not rank-contested"
    verdict = "JUMPS" if analysis.jumps else "no jump"
    size_min = transitions.JUMP_SIZE * (1.0 - g_max ** 2)
    if analysis.silent:
        silent = "yes" + (f" ({', '.join(sorted(analysis.modes))})" if analysis.modes else " (no failure mode)")
    else:
        silent = "no"

    def step(t):
        return "never" if t is None else f"t = {t}"

    rows = [
        ("pair", f"g = {m['g_word']!r} (p_g0 = {m['p_g0']:.4g}), c = {m['c_word']!r} "
                 f"(p_c0 = {m['p_c0']:.4g}); {contested}"),
        ("G_max", f"{g_max:.4g} (G_gc at t = 0; max_(j≠g) G_gj = {m['g_max_other']:.4g})"),
        ("jump", f"J = {j.ratio:.4g} at t* = {j.t_star}, |ΔΦ_t*| = {j.size:.4g} → {verdict} "
                 f"(needs J ≥ {transitions.JUMP_RATIO:g}, |ΔΦ_t*| ≥ {size_min:.4g}, t* < {traj.steps - 1})"),
        ("Born flip", step(analysis.born_flip)),
        ("rank flip", step(analysis.rank_flip)),
        ("silent", silent),
        ("diverged_at", "none" if traj.diverged_at is None else str(traj.diverged_at)),
    ]
    if m.get("stopped_at") is not None:  # an early-stop policy of dynamics.run ended the run
        rows.append(("stopped_at", f"t = {m['stopped_at']} (stop = {m.get('stop')!r})"))
    return "\n".join(f"{k:<12}{v}" for k, v in rows)


def analysis_dict(analysis) -> dict:
    """JSON-able form of a :class:`phantom.transitions.Analysis`."""
    d = dataclasses.asdict(analysis)
    d["modes"] = sorted(analysis.modes)
    return d


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name fragment of a model name, hub id or path ('/' and other odd characters → '_')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "model"
    if len(safe) > limit:  # long paths: keep the informative end, stay unique with a short hash
        safe = safe[-(limit - 9):].lstrip("._-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


def lr_tag(lr: float) -> str:
    """Lossless, compact learning-rate tag: 2e-05 → '2e-5', 0.001 → '0.001'."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(float(lr))).replace("e+", "e")


def output_stem(model: str, context: str, mode: str, lr: float, steps: int, seed: int) -> str:
    """``<model>_<context>_<mode>_lr<lr>``, plus ``_T<steps>`` / ``_seed<seed>`` when not the defaults."""
    stem = f"{safe_name(model)}_{context}_{mode}_lr{lr_tag(lr)}"
    if steps != STEPS:
        stem += f"_T{steps}"
    if seed != SEED:
        stem += f"_seed{seed}"
    return stem


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (:func:`phantom.files.write_atomic`)."""
    files.write_atomic(path, json.dumps(obj, indent=1) + "\n")


def check_device(device: str) -> None:
    """Fail with one line unless ``device`` is a torch device usable on this machine."""
    import torch
    try:
        torch.ones(1, device=torch.device(device)).cpu()   # a device that holds data ("meta" does not)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, AssertionError, NotImplementedError, …
        raise CliError(f"device {device!r} is not usable: {err}") from None


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"offline zoo name ({', '.join(zoo.OFFLINE)}), a local model directory, "
                        "or a Hugging Face id already in the local cache (required)")
    p.add_argument("--context", required=True, choices=list(contexts.BY_ID), metavar="ID",
                   help=f"context id, one of: {', '.join(contexts.BY_ID)} (required)")
    p.add_argument("--mode", required=True, choices=MODES,
                   help="full fine-tuning or LoRA (rank 8, query/value projections) (required)")
    p.add_argument("--lr", required=True, type=_positive_float, metavar="LR",
                   help="constant AdamW learning rate, a positive finite number (required)")
    p.add_argument("--steps", type=_positive_int, default=STEPS, metavar="T",
                   help="number of updates T, at least 1 (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=SEED,
                   help="torch seed, in [0, 2**64) (default: %(default)s)")
    p.add_argument("--out", type=_out_dir, default="out", metavar="DIR",
                   help="directory for the JSON and PNG outputs (default: ./%(default)s)")
    p.add_argument("--no-store", action="store_true",
                   help="fine-tune directly instead of reading/writing the shared run store "
                        "($PHANTOM_RUNS, else ~/.cache/phantom/runs) (default: use the store)")
    p.add_argument("--observables", default="all", choices=dynamics.OBSERVABLES,
                   help="all: every series at every step; claims: purity, PR, ξ and B at t = 0 only and "
                        "the embedding check under LoRA only, as the claim suite records them "
                        "(default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device of the run; the run store keeps runs of each device type apart "
                        "(default: %(default)s)")


def _run_trajectory(args: argparse.Namespace, context, clock: _Clock) -> tuple:
    """``(trajectory, source, computed)`` of the run ``args`` names: computed here (``--no-store``)
    or served by the run store, computing it there on a miss."""
    what = f"fine-tuning {args.steps} steps ({args.mode}, lr={args.lr:g}, seed={args.seed})"
    bar = progress.forwards(progress.Progress(args.steps + 1, "fine-tuning steps"))
    if args.no_store:
        loaded = _Loader(clock, always=True)(args.model)
        clock(f"orienting {context.id!r} …")
        pair = contexts.orient(context, loaded)
        clock(f"{what} on {args.device} …")
        with bar:
            traj = dynamics.run(loaded, context, mode=args.mode, lr=args.lr, steps=args.steps,
                                seed=args.seed, device=args.device, pair=pair, observables=args.observables)
        return traj, "computed (--no-store)", True
    clock(f"checking model {args.model} (run store: {store.default_root()}) …")
    runs.weights_sha256(args.model)
    loader = _Loader(clock)
    clock(f"orienting {context.id!r} …")
    runs.orientation(args.model, context, loader=loader)  # cached; an unusable context fails here
    clock(f"{what} on {args.device}, unless already in the run store …")
    before = loader.calls
    with bar:
        traj = runs.trajectory(args.model, context, mode=args.mode, lr=args.lr, steps=args.steps,
                               seed=args.seed, observables=args.observables, device=args.device, loader=loader)
    computed = loader.calls > before
    return traj, "run store (computed now)" if computed else "run store (cached)", computed


def format_run(traj, analysis, source: str) -> str:
    """The table of every step, the summary and where the run came from (what ``run`` prints)."""
    return "\n".join([format_table(traj), "", format_summary(traj, analysis), f"{'source':<12}{source}"])


def cmd_run(args: argparse.Namespace) -> int:
    from . import transitions
    from .plots import plot_trajectory

    clock = _Clock()
    context = contexts.get(args.context)
    check_device(args.device)
    zoo.check_name(args.model)
    if args.model in zoo.OFFLINE:
        zoo.check_cache()
    if not args.no_store:
        store.RunStore().check()
    check_out(args.out)
    traj, source, computed = _run_trajectory(args, context, clock)
    clock(f"done: fine-tuning took {traj.meta.get('wall_s', float('nan')):.1f}s" if computed else "done: from store")
    analysis = transitions.analyse(traj)
    print(format_run(traj, analysis, source))
    stem = output_stem(args.model, context.id, args.mode, args.lr, args.steps, args.seed)
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, {**traj.to_dict(), "analysis": analysis_dict(analysis), "source": source})
        plot_trajectory(traj, png_path, analysis)
    except OSError as err:
        raise CliError(f"cannot write the outputs to {args.out}: {err}") from None
    print(f"{'wrote':<12}{json_path}")
    print(f"{'':<12}{png_path}", flush=True)
    return 0


# --- `laws` ---------------------------------------------------------------------------

def configure_laws(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=_models, default=",".join(plans.zoo_models("offline", "standard")),
                   help="comma-separated zoo names, hub ids or local dirs (default: %(default)s)")
    p.add_argument("--budget", default="standard", choices=plans.BUDGETS,
                   help="which runs each model gets, as in the claim suite (default: %(default)s)")
    p.add_argument("--out", type=_out_dir, default="out", metavar="DIR",
                   help="directory for laws.json and the PNG plots (default: ./%(default)s)")


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _estimate(e) -> str:
    """An :class:`phantom.laws.Estimate` in a table cell: ``2.2e-06``, ``< 2e-07``, ``> 100``."""
    return "—" if e is None else e.text("", ".3g").strip().lstrip("= ").replace("∈ ", "")


def cmd_laws(args: argparse.Namespace) -> int:
    clock = _Clock()
    models = args.models
    for m in models:
        zoo.check_name(m)
    if any(m in zoo.OFFLINE for m in models):
        zoo.check_cache()
    store.RunStore().check()
    check_out(args.out)
    bar = progress.Progress(0, "runs (grid; the adaptive runs of SPEC §5 A1–A2 come on top)")
    counting = progress.CountingStore(bar)
    campaigns = [campaign.Campaign.for_budget(m, args.budget, counting) for m in models]
    bar.total = sum(len(contexts.CONTEXTS) * (len(c.plan.full_lrs) + len(c.plan.lora_lrs)) for c in campaigns)
    clock(f"laws of {', '.join(models)} (budget {args.budget}; missing runs are computed into the store) …")
    with bar:
        rows = campaign.laws_table(campaigns)
    clock("done")
    print(format_laws(rows))
    written = _write_laws(args.out, rows, campaigns)
    print(f"{'wrote':<12}" + f"\n{'':<12}".join(map(str, written)), flush=True)
    return 0


def format_laws(rows) -> str:
    """The laws table, one row per model (what ``laws`` prints)."""
    width = max([16] + [len(r.model) for r in rows])   # whole names: pythia-70m ≠ pythia-410m
    head = f"{'model':<{width}}{'G²mean':>9}{'shape':>10}{'class':>14}{'η_sat':>12}{'H_FT':>10}{'B_FT':>7}" \
           f"{'LoRA':>6}{'η_c':>10}{'η̂_c':>10}{'error':>8}"
    lines = [head, "-" * len(head)]
    lines += [f"{r.model:<{width}}{r.g2mean:>9.4f}{r.shape:>10}{r.cls:>14}{_estimate(r.eta_sat):>12}"
              f"{_estimate(r.h_ft):>10}{r.b_ft:>7.3f}{r.lora_sufficiency:>6.0%}{_fmt(r.eta_c, '.3g'):>10}"
              f"{_fmt(r.eta_hat, '.3g'):>10}{_fmt(r.rel_error, '.1%'):>8}" for r in rows]
    lines.append("(η_sat and H_FT: a number when measured LRs bracket every middle context's η_sat, else a bound: "
                 "SPEC §5 A1)")
    return "\n".join(lines)


def _write_laws(out: Path, rows, campaigns) -> list[Path]:
    """laws.json and the figures (saturation curves per model, predicted vs measured η_i)."""
    from . import plots
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "laws.json", [dataclasses.asdict(r) for r in rows])   # Estimate → {lo, hi}
        written = [out / "laws.json"]
        for c in campaigns:
            if c.plan.saturation:
                written.append(plots.plot_saturation(c.model, campaign.saturations(c),
                                                     out / f"saturation_{safe_name(c.model)}.png"))
        written.append(plots.plot_context_prediction(
            campaign.context_points(campaigns), {r.model: r.eta_c for r in rows}, out / "critical_lr.png"))
    except OSError as err:
        raise CliError(f"cannot write the outputs to {out}: {err}") from None
    return written


# --- `predict` ------------------------------------------------------------------------

PROBE_COLUMNS = ("context", "target", "competitor")
PROBES_MAX_BYTES = 1 << 20      # a probes CSV larger than 1 MiB is refused before parsing
PROBES_MAX = 1000               # and so is one with more probes (each costs two backward passes)
SHOWN_MAX = 60                  # characters of a CSV field shown in a table or an error


def printable(text: str, limit: int = SHOWN_MAX) -> str:
    """``text`` safe for a terminal: control characters escaped (``\\x1b``, ``\\n``), cut at ``limit``."""
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _read_bounded(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(PROBES_MAX_BYTES + 1)
    except OSError as err:
        raise CliError(f"cannot read the probes file {printable(str(path), 200)}: {err.strerror or err}") from None
    if len(data) > PROBES_MAX_BYTES:
        raise CliError(f"probes file {printable(str(path), 200)} is larger than {PROBES_MAX_BYTES >> 20} MiB: "
                       f"give at most {PROBES_MAX} probes")
    try:
        return data.decode("utf-8-sig")           # "CSV UTF-8" from spreadsheets starts with a BOM
    except UnicodeDecodeError as err:
        raise CliError(f"probes file {printable(str(path), 200)} is not UTF-8 text: {err.reason} at byte "
                       f"{err.start}") from None


def read_probes(path: Path) -> list:
    """Probes from a CSV with a header row: columns context, target, competitor (and name, optional).

    At most :data:`PROBES_MAX_BYTES` are read and :data:`PROBES_MAX` probes accepted; a row with
    more fields than the header, an empty required field or an unreadable file is one error line
    naming the row, with CSV text escaped (:func:`printable`).
    """
    import csv
    import io

    from .monitor import Probe
    shown = printable(str(path), 200)
    try:
        table = list(csv.reader(io.StringIO(_read_bounded(path), newline="")))
    except csv.Error as err:
        raise CliError(f"probes file {shown} is not valid CSV: {err}") from None
    header = [h.strip() for h in table[0]] if table else []
    missing = [c for c in PROBE_COLUMNS if c not in header]
    if missing:
        raise CliError(f"probes file {shown} lacks the column(s) {', '.join(missing)} in its header row "
                       f"(got {printable(','.join(header))}); expected: context,target,competitor[,name]")
    rows = [(line, row) for line, row in enumerate(table[1:], start=2) if any(v.strip() for v in row)]
    if len(rows) > PROBES_MAX:
        raise CliError(f"probes file {shown} has {len(rows)} probes, more than {PROBES_MAX}: split it")
    probes = []
    for line, row in rows:
        if len(row) > len(header):
            raise CliError(f"probes file {shown} line {line}: {len(row)} fields, but the header has {len(header)} "
                           "(quote a context that contains a comma)")
        fields = dict(zip(header, (v.strip() for v in row)))
        empty = [c for c in PROBE_COLUMNS if not fields.get(c)]
        if empty:
            raise CliError(f"probes file {shown} line {line}: empty {', '.join(empty)}")
        probes.append(Probe(fields["context"], fields["target"], fields["competitor"], fields.get("name") or None))
    if not probes:
        raise CliError(f"probes file {shown} has a header but no probe")
    return probes


def configure_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"offline zoo name ({', '.join(zoo.OFFLINE)}), a local model directory, "
                        "or a Hugging Face id already in the local cache (required)")
    p.add_argument("--probes", required=True, type=Path, metavar="CSV",
                   help=f"CSV with a header row: context,target,competitor[,name]; each word must be a "
                        f"single token with its leading space; at most {PROBES_MAX} probes (required)")
    p.add_argument("--steps", type=_positive_int, default=STEPS, metavar="T",
                   help="the number of updates T the critical LR is for (default: %(default)s)")
    p.add_argument("--k-models", default=",".join(plans.zoo_models("offline", "standard")), metavar="MODELS",
                   help="comma-separated models whose stored η_c and q give k; every one must be measured "
                        "(read from the run store, never computed) (default: the standard zoo, %(default)s)")
    p.add_argument("--out", type=_out_dir, default="out", metavar="DIR",
                   help="directory for predict_<model>.json (default: ./%(default)s)")


def _predict_k(k_models) -> tuple:
    """``(BlindConstant, Accuracy)``, or a CliError after the remedy when k cannot be computed."""
    from . import predict
    const = predict.blind_constant(k_models)
    if const.k is None:
        print(f"{'k':<12}cannot be computed: k is fixed by --k-models {','.join(k_models)} and needs each "
              f"one's η_c and q in the run store ({store.default_root()}):")
        for m, why in const.missing.items():
            print(f"{'':<12}{printable(m)}: {why}")
        for line in predict.remedy(const):
            print(f"{'remedy':<12}{line}")
        raise CliError(f"no k: {len(const.missing)} of the {len(k_models)} --k-models not measured "
                       f"({', '.join(printable(m) for m in const.missing)}); see the remedy above")
    return const, predict.measured_accuracy(const)


def _observe_probes(loaded, probes, clock: _Clock) -> list[dict]:
    """Each probe's step-0 row with its blind r, one probe at a time; the total time is announced
    after the first probe when it exceeds a minute."""
    from .monitor import PhantomMonitor
    loaded.model.requires_grad_(True)                                  # r over every parameter, as q (full FT)
    rows, start = [], time.perf_counter()
    with progress.Progress(len(probes), "probes (step-0 r: 2 backward passes each)") as bar:
        for i, probe in enumerate(probes):
            rows.extend(PhantomMonitor(loaded.tokenizer, [probe], blind=True).observe(loaded.model, 0))
            bar.advance()
            if i == 0 and len(probes) > 1 and (per := time.perf_counter() - start) * len(probes) > 60:
                clock(f"{len(probes)} probes at {per:.1f} s each: about {per * len(probes) / 60:.0f} min")
    return rows


def _predict_rows(probes, rows, const, accuracy, steps: int) -> list[dict]:
    from . import predict
    results = []
    for probe, row in zip(probes, rows):
        eta, why = predict.estimate(const.k, row, steps)
        span = [eta / accuracy.factor, eta * accuracy.factor] if eta is not None and accuracy.factor else None
        results.append({"name": probe.label, "context": probe.context, "target": probe.target,
                        "competitor": probe.competitor, "g_gc": row["G_gc"], "burial": row["B"],
                        "phi0": row["phi"], "r": row["r"], "p_g0": row["p_target"], "p_c0": row["p_competitor"],
                        "eta_hat": eta, "eta_hat_range": span,
                        "reliable": accuracy.reliable if eta is not None else None, "unpredictable": why})
    return results


def format_predictions(results, const, accuracy, steps: int) -> str:
    """The table of predictions, k with the models it rests on, the measured accuracy (``predict``)."""
    from . import predict
    width = max([8] + [len(printable(r["name"], 24)) for r in results])
    head = f"{'probe':<{width}}{'G_gc':>8}{'B_0':>8}{'Φ_0':>10}{'r':>11}{'η̂_c':>11}   measured range"
    lines = [head, "-" * len(head)]
    for r in results:
        span = (f"   {r['eta_hat_range'][0]:.2g} – {r['eta_hat_range'][1]:.2g}" if r["eta_hat_range"] else
                "   —" if r["eta_hat"] is None else "   unmeasured")
        flag = "  UNRELIABLE" if r["reliable"] is False else ""
        lines.append(f"{printable(r['name'], 24):<{width}}{r['g_gc']:>8.4f}{r['burial']:>8.3f}{r['phi0']:>10.4f}"
                     f"{_fmt(r['r'], '.4g'):>11}{_fmt(r['eta_hat'], '.3g'):>11}{span}{flag}")
    used = ", ".join(f"{m} (η_c {e:.3g}, q {q:.3g})" for m, (e, q) in const.ratios.items())
    lines += ["", f"{'k':<12}{const.k:.4g} from --k-models {','.join(const.models)}: geometric mean of η_c/q "
              f"over {used}"]
    if accuracy.factor is None:
        lines.append(f"{'accuracy':<12}{accuracy.source}")
    else:
        median = math.exp(float(np.median(list(accuracy.log_errors.values()))))
        verdict = f"{'within' if accuracy.reliable else 'UNRELIABLE: beyond'} ×{predict.UNRELIABLE_FACTOR:g}"
        lines.append(f"{'accuracy':<12}η̂_i/η_i within ×{accuracy.factor:.3g} for {accuracy.source} "
                     f"(median ×{median:.3g}); {verdict}")
    lines.append(f"{'η̂_c':<12}k · (−Φ_0)/(T·r), T = {steps}: the full-FT AdamW LR at which Φ would Born-flip "
                 "by step T")
    lines += [f"{printable(r['name'], 24):<12}unpredictable: {r['unpredictable']}"
              for r in results if r["unpredictable"]]
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    clock = _Clock()
    check_out(Path(args.out))
    probes = read_probes(args.probes)
    k_models = plans.parse_models(args.k_models)
    zoo.check_name(args.model)
    from .monitor import PhantomMonitor
    PhantomMonitor(zoo.load_tokenizer(args.model), probes)            # every word checked before k and the model
    clock(f"k from the run store ({store.default_root()}), nothing computed …")
    const, accuracy = _predict_k(k_models)
    loaded = _Loader(clock, always=True)(args.model)
    rows = _observe_probes(loaded, probes, clock)
    clock("done")
    results = _predict_rows(probes, rows, const, accuracy, args.steps)
    print(format_predictions(results, const, accuracy, args.steps))
    out = Path(args.out) / f"predict_{safe_name(args.model)}.json"
    try:
        write_json_atomic(out, {"model": args.model, "weights_sha256": loaded.info.weights_sha256,
                                "steps": args.steps, "k": const.k, "k_models_used": list(const.models),
                                "k_models": {m: {"eta_c": e, "q": q} for m, (e, q) in const.ratios.items()},
                                "measured_accuracy": dataclasses.asdict(accuracy), "probes": results})
    except OSError as err:
        raise CliError(f"cannot write the outputs to {out.parent}: {err}") from None
    print(f"{'wrote':<12}{out}", flush=True)
    return 0


# --- `campaign` -----------------------------------------------------------------------

def configure_campaign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=_models, default=None,
                   help="comma-separated zoo names, hub ids or local dirs (default: the claim suite's "
                        "offline zoo under --budget)")
    p.add_argument("--budget", default="standard", choices=plans.BUDGETS,
                   help="which runs each model gets, as in the claim suite (default: %(default)s)")
    p.add_argument("--executor", default="local", choices=executor.EXECUTORS,
                   help="local: one run after another in this process; ray: Ray tasks on a cluster "
                        f"(needs the optional extra: {executor.INSTALL}) (default: %(default)s)")
    p.add_argument("--address", type=_address, default=None, metavar="ADDR",
                   help="Ray cluster address: auto, HOST:PORT or ray://HOST:PORT (only with --executor ray; "
                        "default: a private one-node cluster bound to 127.0.0.1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="torch device of the fine-tuning runs (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs each model would get per kind (grids, estimated adaptive runs), "
                        "their steps and the estimated wall time; compute nothing, load no model")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                   help="workers the --dry-run wall time assumes, as xdist -n N (default: %(default)s)")


def progress_line(p: executor.ModelProgress, width: int = 20) -> str:
    """One model's progress: bar, runs done/planned, computed vs cached, stage, time and ETA."""
    filled = round(width * p.done / p.planned) if p.planned else 0
    eta = f", ETA {progress.duration(p.eta_s)}" if p.eta_s is not None and not p.finished else ""
    return (f"{p.model}  [{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.planned} runs "
            f"({p.computed} computed, {p.cached} cached)  {p.stage}  {progress.duration(p.elapsed_s)}{eta}")


class ProgressDisplay:
    """On a terminal, one line per model redrawn in place; in pipes and CI, one line per model
    when it is done."""

    def __init__(self, stream, live: bool):
        self.stream, self.live, self.lines, self.drawn = stream, live, {}, 0

    def __call__(self, p: executor.ModelProgress) -> None:
        if not self.live:
            if p.finished:
                print(progress_line(p), file=self.stream, flush=True)
            return
        import shutil
        self.lines[p.model] = progress_line(p)[:shutil.get_terminal_size().columns - 1]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in self.lines.values()))
        self.stream.flush()
        self.drawn = len(self.lines)


def cmd_campaign(args: argparse.Namespace) -> int:
    clock = _Clock()
    models = args.models or plans.select_models(None, "offline", args.budget)
    for m in models:
        zoo.check_name(m)
    if args.address is not None and args.executor != "ray":
        raise CliError(f"--address {args.address} needs --executor ray")
    if args.dry_run:
        print(dryrun.format_dry_run(dryrun.dry_run(models, args.budget), args.budget, args.workers),
              flush=True)
        return 0
    if args.executor == "local":
        check_device(args.device)   # ray: each worker's device is its own
    else:
        executor.import_ray(private=args.address is None)   # fail now, with the install command, if Ray is missing
    where = "this process" if args.executor == "local" else f"Ray ({args.address or 'a private cluster'})"
    clock(f"campaign of {', '.join(models)} (budget {args.budget}) on {where}, device {args.device}; "
          f"run store {store.default_root()} …")
    campaigns = [campaign.Campaign.for_budget(m, args.budget, device=args.device) for m in models]
    live = progress.wanted(sys.stdout)
    done = executor.compute(campaigns, args.executor, args.address, ProgressDisplay(sys.stdout, live))
    clock(f"done: {sum(p.computed for p in done)} runs computed, {sum(p.cached for p in done)} "
          "already in the store")
    return 0


# --- the command table ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``configure(parser)`` adds its options, ``handler(args)`` runs it."""

    help: str
    description: str
    epilog: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "run": Command(
        help="fine-tune a model on one context and report its trajectory",
        description="Fine-tune a pristine copy of a model on one context (SPEC §4) and print the\n"
                    "per-step table (t, loss, p_g, p_c, Φ, S, D, γ, B, Δz, ranks) and the SPEC §5\n"
                    "read-outs (jump ratio J, Born and rank flips, silent failure, divergence).\n"
                    "The run comes from the shared run store (computed once, then reused) unless\n"
                    "--no-store is given. Writes <out>/<model>_<context>_<mode>_lr<lr>.json (the\n"
                    "trajectory and its analysis; _T<steps>/_seed<seed> are appended when not the\n"
                    "defaults) and a PNG plot next to it. Stage lines go to stderr.",
        epilog="example:\n  python -m phantom run --model smollm2-135m --context longing --mode full --lr 2e-5",
        configure=configure_run,
        handler=cmd_run,
    ),
    "laws": Command(
        help="the cross-model laws: bulk class, saturation, H_FT, B_FT, LoRA sufficiency, critical LR",
        description="Per model: bulk density G²mean, its shape and class (SPEC §2), the saturation\n"
                    "fit η_sat and reduced field H_FT, the burial depth B_FT, LoRA sufficiency, the\n"
                    "critical LR η_c and its leave-one-out blind prediction η̂_c (SPEC §5). Runs come\n"
                    "from the shared run store under the claim suite's budgets (missing ones are\n"
                    "computed: minutes to hours on a CPU). Writes <out>/laws.json, the saturation fits\n"
                    "and η̂_c against η_c as PNG.",
        epilog="example:\n  python -m phantom laws --models smollm2-135m,gemma3-270m",
        configure=configure_laws,
        handler=cmd_laws,
    ),
    "predict": Command(
        help="blind critical learning rate of your own probes, before any training",
        description="For each probe of a CSV (context,target,competitor[,name]) on a model: the pair\n"
                    "overlap G_gc, the step-0 burial depth B, the Born gap Φ_0, the blind statistic\n"
                    "r = ∇Φ · sign(−∇L) over every parameter (SPEC §5 A3), and the blind critical LR\n"
                    "η̂_c = k·(−Φ_0)/(T·r), with k the geometric mean of η_c/q over --k-models (the\n"
                    "standard zoo), each measured in the run store (read only; `phantom laws` measures\n"
                    "them; without them predict exits 1 with the cheapest remedy). Each η̂_c comes with\n"
                    "its measured range and is flagged UNRELIABLE when that is wider than ×2. A probe\n"
                    "with r ≤ 0 is unpredictable. Writes <out>/predict_<model>.json.",
        epilog="example:\n  python -m phantom predict --model smollm2-135m --probes probes.csv",
        configure=configure_predict,
        handler=cmd_predict,
    ),
    "campaign": Command(
        help="compute a claims session's runs into the run store, here or on a Ray cluster",
        description="Computes every run-store entry a claims session reads: the orientations, the\n"
                    "planned full-FT and LoRA runs, the bulk and blind statistics and the adaptive runs\n"
                    "(SPEC §5 A1–A2, §6 A4) of each model under --budget. `pytest tests/claims` then reads a warm\n"
                    "store. --executor ray spreads the runs over a Ray cluster (README: Run on a\n"
                    "cluster); the entries, and so the verdicts, are those of the local executor.\n"
                    "Progress: one live line per model on a terminal, one line per finished model\n"
                    "in pipes and CI.",
        epilog="examples:\n  python -m phantom campaign --budget quick\n"
               "  python -m phantom campaign --models smollm2-135m,gemma3-270m --executor ray --address auto",
        configure=configure_campaign,
        handler=cmd_campaign,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Phantom transitions in language-model fine-tuning: executable tests on real\n"
                    "pretrained LMs. Run `phantom <command> --help` for a command's options.",
        epilog="example:\n  python -m phantom run --model smollm2-135m --context longing --mode full --lr 2e-5")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="<command>", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description, epilog=cmd.epilog,
                           formatter_class=_Formatter)
        cmd.configure(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (usage errors and --help raise SystemExit)."""
    if (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("-", "") != "utf8" \
            and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # Φ, γ, Δz on a non-UTF-8 terminal
    args = build_parser().parse_args(argv)
    out = Path(args.out) if getattr(args, "out", None) else None
    fresh_out = out is not None and not out.exists()
    status = 1
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning
            status = args.handler(args)
            return status
    except (CliError, executor.ExecutorError, zoo.UnknownModel, zoo.MissingModelPackage, contexts.ContextUnusable,
            ValueError, files.UnusablePath) as err:
        _error(str(err))
        return 1
    except OSError as err:   # any other file-system fault (disk full, I/O error): one line too
        _error(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
        return 1
    except KeyboardInterrupt as err:   # Ctrl-C; with the ray executor also SIGTERM (phantom.cluster)
        signum = getattr(err, "signum", 2)
        _error("terminated" if signum == 15 else "interrupted")
        return 128 + signum
    finally:
        if fresh_out and status != 0:     # a failed command leaves no empty --out behind
            with contextlib.suppress(OSError, ValueError):   # ValueError: a NUL in the path
                out.rmdir()
