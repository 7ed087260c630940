"""The console script's entry point: ``anomaly-vae`` and ``python -m anomaly_vae``.

It imports the command line (typer, pydantic: a few tenths of a second) inside its own
``try``, so a Ctrl-C that lands while those load is the same one line and exit status 130
as one during a command, not a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from anomaly_vae.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run()
