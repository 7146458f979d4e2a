"""Errors that the command line turns into one-line messages (exit code 2) instead of tracebacks."""


class UsageError(ValueError):
    """Bad input from the user: a path, a name or a value. The message says what was expected."""
