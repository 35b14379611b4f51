"""The one exception type for errors a user can cause.

Library code raises :class:`NstError` (or :class:`UsageError`) with a one-line
message; only the command-line layer turns it into an exit code and a line on
stderr.
"""

from __future__ import annotations

USAGE = 2  # bad arguments, unknown names, unreadable inputs
RUNTIME = 1  # the run itself failed (non-finite loss, write failure, ...)


class NstError(Exception):
    """An error with a one-line, user-facing message and an exit code."""

    exit_code: int = RUNTIME

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(NstError):
    """The user asked for something that cannot be done (exit code 2)."""

    exit_code = USAGE
