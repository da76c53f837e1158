"""Session-wide settings: hypothesis profiles, one torch thread per xdist worker, and the
claim suite's plugin (options ``--zoo``, ``--models``, ``--budget``: phantom/pytest_plugin.py)."""
import os

import torch
from hypothesis import HealthCheck, settings

pytest_plugins = ["phantom.pytest_plugin"]

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # workers share 2 cores: oversubscription only slows every run
