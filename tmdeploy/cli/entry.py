"""`tmdeploy`'s entry point: the parser built from the command modules, and one line per error."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from tmdeploy import __version__, signals
from tmdeploy.cli import _logging
from tmdeploy.cli._common import HelpFormatter
from tmdeploy.errors import TmdeployError, UsageError
from tmdeploy.sanitize import clean

# Command modules, in the order `tmdeploy --help` lists them. Each has register(subparsers) that
# adds its parser and sets ``func`` to a function taking the parsed args and returning an exit status.
COMMANDS = ("models", "train", "export", "info", "check", "bench", "optimize", "serve", "demo")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2, not a usage block, shows the
    API's defaults in help, and leaves the choices of options bound to the API to their ``validate()``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value) -> None:
        if getattr(action, "api", None) is None:
            super()._check_value(action, value)

    def error(self, message):
        command = self.prog.removeprefix("tmdeploy").strip()  # main() prints "tmdeploy: error: " before it
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = ArgumentParser(prog="tmdeploy", description="Template-matching CNNs from a PyTorch checkpoint to ONNX "
                            "and TensorRT, verified and benchmarked.")
    parser.add_argument("--version", action="version", version=f"tmdeploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tmdeploy.cli.{name}_cmd")
        except ModuleNotFoundError as err:
            if err.name != f"tmdeploy.cli.{name}_cmd":
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():  # --debug works after the command too: `tmdeploy export x.pt --debug`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _one_line(err: BaseException) -> str:
    """The error's message on one line, safe for a terminal: messages quoting files or other libraries may
    span several lines and carry control characters."""
    return clean(" ".join(line.strip() for line in str(err).splitlines() if line.strip()))


def main(argv=None) -> int:
    """Run one command; ``argv`` None: the process's own command line, which exits when this returns."""
    with signals.handled(exiting=argv is None):  # first: an interrupt from here on is one line, never a traceback
        return _main(sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    _logging.configure(debug)
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except TmdeployError as err:
        if debug:
            traceback.print_exc()
        print(f"tmdeploy: error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # signals.Interrupted, or Ctrl-C before the handler was installed
        code = getattr(err, "exit_code", 130)
        print(f"tmdeploy: error: interrupted by {signal.Signals(code - 128).name}", file=sys.stderr)
        return code
    except MemoryError:  # the machine's or a ulimit's: not a bug, and its message is empty
        print("tmdeploy: error: out of memory (a smaller --batch or input size needs less)", file=sys.stderr)
        return 1
    except Exception as err:  # a bug, not bad input: still one line, the traceback behind --debug
        if debug:
            traceback.print_exc()
        print(f"tmdeploy: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1

