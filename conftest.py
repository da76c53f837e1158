"""Session-wide settings: hypothesis profiles, one torch thread per xdist worker, and the
claim suite's options (``--zoo``, ``--models``, ``--budget``; see tests/claims/conftest.py)."""
import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # workers share 2 cores: oversubscription only slows every run


def pytest_addoption(parser):
    group = parser.getgroup("phantom", "phantom claim suite")
    group.addoption("--zoo", default="offline", choices=("offline", "paper"),
                    help="model zoo of SPEC §7 (default: offline)")
    group.addoption("--models", default=None,
                    help="comma-separated zoo names, Hugging Face ids or local dirs (overrides --zoo)")
    group.addoption("--budget", default="standard", choices=("quick", "standard", "full"),
                    help="quick: SmolLM2 only; standard: SmolLM2 + Gemma-3; full: the SPEC protocol "
                         "on every model (Qwen included offline)")
    group.addoption("--claims-md", default="CLAIMS.md", help="where to write the verdict table")


def pytest_configure(config):
    # Claim runs differ in cost by 10×: work stealing keeps both workers busy, and contiguous
    # chunks keep each worker on one model (one model in memory per process).
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "worksteal"
