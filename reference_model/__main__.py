"""`python -m attnbench.gpt train|sample` (see reference_model/cli.py)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still importing
    print("stopped by Ctrl-C (nothing saved)", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
