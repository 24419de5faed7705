"""The thin command line over tmdeploy's Python API: one module per command, each with ``register``.

Every error reaches the user as one line on stderr with exit status 2 (usage) or 1 (failure);
``--debug`` shows the traceback.
"""

from tmdeploy.cli.entry import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
