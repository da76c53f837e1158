"""Per-step record of one fine-tuning run (SPEC §4, §5).

A :class:`Trajectory` is plain data: named float64 series of length ``T_rec + 1``
(``t = 0..T_rec``; ``T_rec < steps`` only for a diverged run) plus JSON-able
metadata. It round-trips exactly through :meth:`to_dict` / :meth:`from_dict`,
which is what the run store writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Every series a run records, in SPEC §2 / §4 notation (one value per recorded step t).
SERIES = (
    "loss",        # cross-entropy of g at the last position
    "p_g", "p_c",  # softmax probabilities of g and c
    "rank_g", "rank_c",  # 1-based rank in the full vocabulary (1 = top token)
    "phi",         # Φ = b_g − b_c (Born gap)
    "signal",      # S = (p_g − p_c)(1 − G_gc²)
    "drag",        # D = Σ_{j∉{g,c}} p_j (G_gj² − G_cj²)
    "purity",      # γ = Tr ρ²
    "pr",          # participation ratio 1/γ
    "xi",          # localisation length arccos(√γ)
    "burial",      # B = ξ / arccos(G_max)
    "dz",          # Δz = z_g − z_c
    "a_g", "a_c",  # ψ_g·h and ψ_c·h, h = LM-head input at the last position
    "g_gc",        # current G_gc
    "max_de",      # max |E_t − E_0|
    "embed_equal",  # 1.0 iff the input embedding is bitwise equal to step 0
    "head_equal",  # 1.0 iff the (untied) output matrix is bitwise equal to step 0 (tied: = embed_equal)
)


@dataclass(frozen=True)
class Trajectory:
    """One run's recorded series and metadata.

    Attributes
    ----------
    series : dict[str, np.ndarray]
        Each name of :data:`SERIES` mapped to a float64 array of length ``n_recorded``.
    meta : dict
        JSON-able facts: ``model``, ``context``, ``g_word``, ``c_word``, ``mode``, ``lr``,
        ``steps`` (the protocol's T), ``seed``, ``g_max`` (step-0 G_gc), ``g_max_other``
        (step-0 max_{j≠g} G_gj), ``rank_contested``, ``diverged_at`` (None or the first
        step whose state was non-finite), provenance.
    """

    series: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [k for k in SERIES if k not in self.series]
        if missing:
            raise ValueError(f"Trajectory is missing series {missing}")
        lengths = {k: len(v) for k, v in self.series.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Trajectory series differ in length: {lengths}")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.series[name]

    @property
    def steps(self) -> int:
        """The protocol's number of updates T (not the number recorded)."""
        return int(self.meta["steps"])

    @property
    def diverged_at(self) -> int | None:
        return self.meta.get("diverged_at")

    @property
    def g_max(self) -> float:
        return float(self.meta["g_max"])

    def to_dict(self) -> dict:
        """JSON-able form; floats survive ``json`` exactly (repr round trip)."""
        return {"meta": self.meta,
                "series": {k: [float(x) for x in v] for k, v in self.series.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        """Inverse of :meth:`to_dict`, checking the record's schema.

        Raises
        ------
        ValueError
            Naming the defect: not a ``{"meta", "series"}`` record, a missing or non-numeric
            series, series of unequal length or longer than ``steps + 1``, or a ``steps``,
            ``g_max`` or ``diverged_at`` that is missing or out of range.
        """
        if not (isinstance(d, dict) and isinstance(d.get("meta"), dict) and isinstance(d.get("series"), dict)):
            raise ValueError("a trajectory record is an object with a 'meta' and a 'series' object")
        meta = dict(d["meta"])
        steps, g_max, diverged_at = meta.get("steps"), meta.get("g_max"), meta.get("diverged_at", "missing")
        if not (type(steps) is int and steps >= 1):
            raise ValueError(f"meta.steps must be a positive integer, got {steps!r}")
        if not (type(g_max) in (int, float) and -1.0 <= g_max <= 1.0):
            raise ValueError(f"meta.g_max must be a cosine in [-1, 1], got {g_max!r}")
        if not (diverged_at is None or (type(diverged_at) is int and 0 <= diverged_at <= steps)):
            raise ValueError(f"meta.diverged_at must be null or a step in [0, {steps}], got {diverged_at!r}")
        try:
            series = {k: np.asarray(v, dtype=np.float64) for k, v in d["series"].items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"a series is not a list of numbers ({err})") from None
        if any(v.ndim != 1 for v in series.values()):
            raise ValueError("every series must be a flat list of numbers")
        traj = cls(series=series, meta=meta)
        n = len(traj.series["phi"])
        if n > steps + 1:
            raise ValueError(f"{n} recorded steps exceed steps + 1 = {steps + 1}")
        return traj
