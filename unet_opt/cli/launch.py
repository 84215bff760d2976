"""The `unet-opt` console script. Importing the commands takes a tenth of a second, before `app.main`
handles Ctrl-C: a Ctrl-C in that time ends the command as a later one does (`interrupted`, exit code 130),
not in Python's traceback. Only the standard library is imported here."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as `options.EXIT_INTERRUPTED`, which is imported with the commands


def entry() -> None:
    try:
        from unet_opt.cli.app import entry as run_command
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    run_command()
