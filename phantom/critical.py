"""Per-context critical learning rates and η_c (SPEC §5, amendment A2)."""
from __future__ import annotations
