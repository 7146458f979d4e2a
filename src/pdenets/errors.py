"""Errors that the command line turns into one-line messages instead of tracebacks: :class:`UsageError`
(bad input, exit code 2) and :class:`RunFailed` (a run that could not finish, exit code 1)."""


class UsageError(ValueError):
    """Bad input from the user: a path, a name or a value. The message says what was expected."""


class RunFailed(RuntimeError):
    """A run that ended without its result (e.g. training diverged); the message says what was kept and how
    to continue."""
