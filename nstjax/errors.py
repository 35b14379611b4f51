"""The one exception type for errors a user can cause.

Library code raises :class:`NstError` (or :class:`UsageError`) with a one-line
message; only the command-line layer turns it into an exit code and a line on
stderr.
"""

from __future__ import annotations

import os
import sys

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


def guarded(fn, prog: str = "nstjax") -> int:
    """Runs ``fn() -> int`` for an entry point: errors become one line on stderr and an
    exit code (tracebacks only with ``NSTJAX_DEBUG=1``)."""
    try:
        return fn()
    except NstError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is our bug: still one line unless debugging
        if os.environ.get("NSTJAX_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        print(
            f"{prog}: internal error: {type(e).__name__}: {msg} (NSTJAX_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return RUNTIME
