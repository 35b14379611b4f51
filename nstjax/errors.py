"""The one exception type for errors a user can cause.

Library code raises :class:`NstError` (or :class:`UsageError`) with a one-line
message; only the command-line layer turns it into an exit code and a line on
stderr.
"""

from __future__ import annotations

import contextlib
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
    except Exception as e:  # a bug in user code (a loss term, a config) or ours
        if os.environ.get("NSTJAX_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        where = _user_frame(e)
        what = f"error in {where}" if where else "internal error"
        print(
            f"{prog}: {what}: {type(e).__name__}: {msg} (NSTJAX_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return RUNTIME


def _user_frame(e: BaseException) -> str | None:
    """``file.py:line (function)`` when the innermost frame of ``e``'s traceback that is
    neither an installed library's nor Python's own is not nstjax's either: a registered
    loss term or a config file raised it (through JAX, say). None when it is nstjax's
    (recognised by its module name, wherever nstjax is installed)."""
    import site  # noqa: PLC0415
    import sysconfig  # noqa: PLC0415

    paths = sysconfig.get_paths()
    theirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(AttributeError):  # a virtualenv's old site module
        theirs |= {*site.getsitepackages(), site.getusersitepackages()}
    theirs = tuple(os.path.abspath(t) + os.sep for t in theirs)
    found = None
    tb = e.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        path = os.path.abspath(frame.f_code.co_filename)
        if module == "nstjax" or module.startswith("nstjax."):
            found = None
        elif not (frame.f_code.co_filename.startswith("<") or path.startswith(theirs)):
            found = f"{os.path.basename(path)}:{tb.tb_lineno} ({frame.f_code.co_name})"
        tb = tb.tb_next
    return found
