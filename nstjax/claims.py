"""Cooperative sweep runners: each variant is claimed before it runs, by one runner only.

Any number of ``nstjax run`` processes may share a workdir (two shells, a SLURM job
array, several machines on a shared filesystem): each claims variants with an atomic
claim file ``claims/<variant>.json`` (created with ``O_CREAT | O_EXCL``; it names the
holder's host, pid and start time), runs them, writes their results and removes the
claim. A claim whose holder is gone is taken over: on the same host when its process
no longer exists, on another host when the holder has not touched it for
``stale_after`` seconds (a heartbeat thread touches its claims every quarter of that
time). Taking over renames the stale claim away first, so of two runners racing for it
exactly one wins. Temporary files in a variant's
directory belong to its claim holder, and only the runner that takes a claim over (or
makes a fresh claim) removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from nstjax import atomic
from nstjax.errors import NstError

STALE_AFTER = 600.0  # seconds without a heartbeat before another host's claim is stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ticks(pid: int | str) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux /proc), else None:
    a pid and these ticks name one process, whatever the wall clock does."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None


def _namespace() -> str | None:
    """This boot and PID namespace (two containers may share a hostname and both be PID
    1): same-host claims are judged by pid only within it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _holder_alive(holder: dict, me: dict) -> bool:
    """Whether the process a same-host claim names still runs: a pid that is a positive
    int, not this process's (its own claims are held in memory), alive, and the process
    that made the claim (its start ticks; not a later process given the same pid)."""
    pid, ticks = holder.get("pid"), holder.get("ticks")
    if type(pid) is not int or not 0 < pid < 2**22 or pid == me["pid"] or not _alive(pid):
        return False
    return not (isinstance(ticks, int) and _ticks(pid) not in (None, ticks))


class Claims:
    """The claim files of one workdir, as seen by this process."""

    def __init__(self, workdir: str | Path, stale_after: float = STALE_AFTER):
        self.dir = Path(workdir) / "claims"
        self.stale_after = stale_after
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   "ticks": _ticks("self"), "ns": _namespace()}  # fmt: skip
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _read(self, path: Path) -> dict | None:
        try:
            return atomic.read_json_object(path, max_bytes=4096)
        except (OSError, ValueError):
            return None

    def is_stale(self, path: Path) -> bool:
        """A claim whose holder is gone (or that cannot be read after a grace period: a
        claim is being written, or garbage, a directory, a FIFO)."""
        holder = self._read(path)
        try:
            age = time.time() - path.lstat().st_mtime  # a dangling link: garbage, not gone
        except FileNotFoundError:
            return False  # released meanwhile
        if holder is None:
            return age > 5.0
        if holder == self.me:
            return False
        if holder.get("host") == self.me["host"] and holder.get("ns") == self.me["ns"]:
            return not _holder_alive(holder, self.me)
        return age > self.stale_after  # another host (or container): its heartbeat decides

    def _bury(self, path: Path) -> bool:
        """Renames a stale claim away and deletes it; False if another runner was first."""
        grave = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.stale")
        try:
            os.rename(path, grave)  # exactly one taker wins this rename
        except FileNotFoundError:
            return False
        except OSError as e:
            raise NstError(f"cannot remove the stale claim {str(path)!r}: {e.strerror}") from None
        if grave.is_dir() and not grave.is_symlink():
            shutil.rmtree(grave, ignore_errors=True)
        else:
            grave.unlink(missing_ok=True)
        return True

    def reap(self) -> list[str]:
        """Removes every stale claim; returns their variants' names.

        A runner killed between writing a variant's results and releasing its claim
        leaves a claim on a finished variant, which no later runner claims again.
        """
        if not self.dir.is_dir():
            return []
        paths = sorted(self.dir.glob("*.json"))
        return [p.stem for p in paths if self.is_stale(p) and self._bury(p)]

    def try_claim(self, name: str) -> bool:
        """Claims variant ``name``; False if another live runner holds it."""
        path = self.path(name)
        for _ in range(3):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self.dir.is_dir():
                    raise NstError(f"cannot claim variant {name}: {str(self.dir)!r} is not a "
                                   "directory") from None  # fmt: skip
                if not self.is_stale(path):
                    return False
                self._bury(path)
                continue
            except OSError as e:
                raise NstError(f"cannot claim variant {name} in {str(self.dir)!r}: "
                               f"{e.strerror}") from None  # fmt: skip
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held.add(name)
            self._start_beating()
            return True
        return False

    def heartbeat(self, name: str) -> None:
        if name in self.held:
            try:
                os.utime(self.path(name))
            except FileNotFoundError:
                raise NstError(
                    f"the claim of variant {name} was taken over by another runner "
                    f"(no heartbeat for {self.stale_after:.0f} s?)"
                ) from None

    def release(self, name: str) -> None:
        if name in self.held:
            self.held.discard(name)
            holder = self._read(self.path(name))
            if holder == self.me:
                self.path(name).unlink(missing_ok=True)

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)
        self._stop.set()

    def _start_beating(self) -> None:
        """Touches every held claim each quarter of ``stale_after`` from a thread, so that
        a claim stays fresh while its runner compiles, scores the panel or writes (only
        chunks of steps beat before: a cold compile longer than ``stale_after`` let
        another host take a live runner's claim)."""
        if self._beating is None:
            self._beating = threading.Thread(target=self._beat, name="nstjax-claims",
                                             daemon=True)  # fmt: skip
            self._beating.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            for name in list(self.held):
                with contextlib.suppress(OSError):  # released meanwhile, or taken over
                    os.utime(self.path(name))

    def live_others(self) -> list[dict]:
        """Claims held by other runners that are still alive."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            holder = self._read(path)
            if holder != self.me and not self.is_stale(path):
                out.append({"variant": path.stem, **(holder or {})})
        return out
