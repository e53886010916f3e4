"""Errors every floor may raise and the command line reports (one line, exit code 2)."""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""
