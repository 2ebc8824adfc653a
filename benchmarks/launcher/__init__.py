"""The `attnbench` console script's first step: import the command line (torch with it), and turn a Ctrl-C during
that import into one line and exit 130 instead of a traceback.

It is its own top-level package (`attnbench_launcher`) because importing anything inside `attnbench` imports
torch first, before any handler of ours could run.
"""

import sys


def main(argv=None) -> int:
    try:
        from attnbench.bench.cli import main as cli_main
    except KeyboardInterrupt:
        print("attnbench: stopped by Ctrl-C while starting (nothing done)", file=sys.stderr)
        return 130
    return cli_main(argv)
