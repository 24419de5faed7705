"""One error type for everything tmdeploy refuses, so the CLI can print one line and pick the exit status."""


class TmdeployError(Exception):
    """A failure the user can act on (bad file, mismatch, missing dependency): exit status 1."""

    exit_code = 1


class UsageError(TmdeployError):
    """The command line or API call itself is wrong (bad option value): exit status 2."""

    exit_code = 2
