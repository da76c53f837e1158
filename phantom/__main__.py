"""``python -m phantom …``: the command-line interface (:mod:`phantom.cli`)."""
from .cli import main

raise SystemExit(main())
