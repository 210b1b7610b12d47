"""``python -m bench.scale``: see ``bench/scale/__init__.py``."""

from .cli import main

raise SystemExit(main())
