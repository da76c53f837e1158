"""phantom: executable tests of the claims of "Phantom transitions in language model fine-tuning".

The public API, by layer (SPEC sections in each module's docstring)::

    maths        geometry (born_gap, purity, …), transitions (analyse, jump, …), laws (fits, bounds, η_c from η_i,
                 blind predictor, statistics), protocol (every SPEC constant)
    models       zoo.load / zoo.ModelInfo, contexts (CONTEXTS, orient), dynamics.run (the engine)
    run layer    store.RunStore, runs (keys, orientation, trajectory), campaign (Plan, Campaign, laws_table)
    claims       claims.CLAIMS (the registry), report (verdicts.json, CLAIMS.md)
    your run     monitor (PhantomMonitor, Probe), callback (PhantomCallback for Trainer), predict (blind η̂_c)

Names are imported lazily (PEP 562), so ``import phantom.laws`` stays free of torch and models.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "born_gap": "geometry", "purity": "geometry", "normalize_rows": "geometry", "burial_depth": "geometry",
    "analyse": "transitions", "jump": "transitions",
    "fit_saturation": "laws", "critical_lr": "laws", "leave_one_out": "laws",
    "load": "zoo", "ModelInfo": "zoo", "CONTEXTS": "contexts", "orient": "contexts",
    "run": "dynamics", "Trajectory": "trajectory", "RunStore": "store",
    "trajectory": "runs", "orientation": "runs",
    "Plan": "campaign", "Campaign": "campaign", "laws_table": "campaign",
    "CLAIMS": "claims", "Verdict": "claims",
    "PhantomMonitor": "monitor", "Probe": "monitor", "PhantomCallback": "callback",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'phantom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
