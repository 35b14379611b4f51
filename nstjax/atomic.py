"""Atomic file writes: a reader sees the old file or the new one, never half of one.

:func:`write_with` writes a temporary file ``.<name>.<random>.tmp`` beside the target,
fsyncs it, renames it over the target and fsyncs the directory, so that after a crash
the target holds the old content or the whole new content. A new file gets the usual
mode (``0o666`` less the umask: the temporary file is created with mode ``0o666`` and
the kernel applies the umask, so the umask is never read or changed); a replaced file
keeps its mode.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nstjax.errors import NstError, UsageError


def check_writable(path: str | os.PathLike) -> Path:
    """Fails early (before any long computation) if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"output path {str(path)!r} is a directory")
    if not parent.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable")
    return path


def _create_temporary(path: Path, parent: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` in ``parent``, mode 0o666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(parent))


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in ``directory`` durable (where directories can be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows, where a directory cannot be opened (nor needs this)
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # unsupported
            raise
    finally:
        os.close(fd)


def _existing_mode(path: Path) -> int | None:
    """The permission bits of the regular file at ``path``, or None if there is none."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return stat.S_IMODE(mode) & 0o777 if stat.S_ISREG(mode) else None


def write_with(path: str | os.PathLike, writer: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``writer(file)`` on a temporary file beside ``path``, then renames it.

    The file is fsynced before the rename and its directory after it. A new file
    gets mode ``0o666`` less the umask; an existing one keeps its mode. On any
    failure before the rename the temporary file is removed and ``path`` is untouched.
    A temporary file that another process removed before the rename (a second sweep
    runner clearing what it took for a killed run's leftovers) is written again.
    """
    for attempt in range(3):
        try:
            return _write_once(path, writer)
        except _TemporaryVanished:
            if attempt == 2:
                raise NstError(f"cannot write {str(path)!r}: its temporary file "
                               "was removed by another process") from None  # fmt: skip
    raise AssertionError("unreachable")


class _TemporaryVanished(Exception):
    pass


def _write_once(path: str | os.PathLike, writer: Callable[[IO[bytes]], Any]) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = _create_temporary(path, parent)
    except OSError as e:
        raise NstError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            mode = _existing_mode(path)
            if mode is not None:  # a replaced file keeps its mode
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), mode)
                else:
                    os.chmod(tmp, mode)
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            if Path(tmp).exists() or not parent.is_dir():
                raise
            raise _TemporaryVanished from None
    except _TemporaryVanished:
        raise
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise NstError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise
    try:
        _fsync_directory(parent)
    except OSError as e:
        raise NstError(
            f"wrote {str(path)!r} but could not sync its directory: {e.strerror or e}"
        ) from None
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"
    return write_bytes(path, data.encode())


MAX_JSON_BYTES = 64 * 2**20


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file written by :func:`write_json`, or by hand, or by anyone: read only if
    it is a regular file (a FIFO would block the read forever) of at most ``max_bytes``.
    Raises OSError (missing, unreadable) or ValueError (not a regular file, too large,
    not JSON, nested too deeply), each with the path."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO: no writer needed
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{str(path)!r} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"{str(path)!r} is larger than {max_bytes:,} bytes")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not JSON: {e}") from None


def read_json_object(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """:func:`read_json` of a file that must hold a JSON object (ValueError otherwise)."""
    value = read_json(path, max_bytes)
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(value).__name__}, not an object")
    return value
