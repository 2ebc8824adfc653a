"""`python -m attnbench.gpt train|sample` (see reference_model/cli.py)."""

from .cli import main

raise SystemExit(main())
