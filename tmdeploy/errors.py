"""One error type for everything tmdeploy refuses, so the CLI can print one line and pick the exit status."""


class TmdeployError(Exception):
    """A failure the user can act on (bad file, mismatch, missing dependency): exit status 1."""

    exit_code = 1


class UsageError(TmdeployError):
    """The command line or API call itself is wrong (bad option value): exit status 2."""

    exit_code = 2


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message cut to ``limit`` characters ("" when it has none): enough to
    quote another library's error in our one-line messages."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else ""


def check_choice(value, choices, option: str) -> None:
    """The one message for a value outside a fixed set of choices: a UsageError naming them."""
    if value not in choices:
        raise UsageError(f"unknown {option} '{value}'; choose one of: {', '.join(choices)}")
