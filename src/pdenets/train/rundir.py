"""The run directory's guards: one run per directory (a lock), nothing deleted without ``overwrite``, and the
choice of the checkpoint ``--resume auto`` continues from (docs/design.md §9).

* :class:`RunLock` — ``RUN/.lock``, held with ``fcntl.flock`` for the whole run, so a crashed run never
  leaves a stale lock (the kernel drops it with the process); the file also names the holder (pid, host,
  start time, command) for the refusal message. Where ``flock`` is unavailable (Windows, some network file
  systems) the lock is the file itself, stale when its process no longer exists on this host.
* :func:`existing_run` — what of an earlier run a directory holds (checkpoints, epoch rows, a summary).
* :func:`auto_resume_checkpoint` — the newest *complete* 'last' checkpoint (``last``, else ``last.old``
  left by a kill between the two renames of a swap); a run without one is an error, never a fresh start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pdenets.errors import UsageError
from pdenets.train import checkpoint as ckpt

LOCK = ".lock"
RUN_FILES = ("metrics.csv", "metrics.jsonl", "summary.json", "report.md", "curves.png", "confusion.png")


class RunLock:
    """Exclusive lock on a run directory; :meth:`acquire` raises a one-line :class:`UsageError` when another
    live process holds it. Use as a context manager or call :meth:`release`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
            if locked is None:  # no flock here: the file's pid decides
                locked = not _held_by_live_process(self.path)
            if not locked:
                raise UsageError(f"{self.path.parent} is in use by another run ({_holder(self.path)}); wait for "
                                 f"it to end or choose another --out")
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                                         argv=sys.argv)).encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _flock(fd: int) -> bool | None:
    """True: locked; False: held by someone else; None: this platform or file system has no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def _held_by_live_process(path: Path) -> bool:
    info = _read_holder(path)
    pid = info.get("pid")
    if not pid:
        return False
    if info.get("host") != socket.gethostname():
        return True  # another host: its processes cannot be checked from here, assume it is alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> str:
    info = _read_holder(path)
    if not info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {since}"


def existing_run(run_dir: str | os.PathLike) -> list[str]:
    """The parts of an earlier run ``run_dir`` holds: checkpoint directories, a metrics.csv with epoch rows,
    a summary.json (empty for a new directory or one killed before its first epoch ended)."""
    d = Path(run_dir)
    found = [f"checkpoints/{p.name}" for p in sorted((d / "checkpoints").glob("*")) if p.is_dir()
             and ".tmp-" not in p.name]
    csv = d / "metrics.csv"
    if csv.is_file() and len(csv.read_text().splitlines()) > 1:
        found.append("metrics.csv")
    if (d / "summary.json").is_file():
        found.append("summary.json")
    return found


def clear_run(run_dir: str | os.PathLike) -> None:
    """Delete an earlier run's results in ``run_dir`` (``overwrite``): checkpoints, metrics, summary, report."""
    d = Path(run_dir)
    shutil.rmtree(d / "checkpoints", ignore_errors=True)
    shutil.rmtree(d / "tb", ignore_errors=True)
    for f in RUN_FILES:
        (d / f).unlink(missing_ok=True)


def auto_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``--resume auto``: the newest complete 'last' checkpoint of ``run_dir``; None for a directory without
    an earlier run (a fresh start loses nothing); a one-line error for a run none of whose checkpoints is
    complete (nothing is deleted)."""
    base = Path(run_dir) / "checkpoints"
    problems = []
    for name in ("last", "last.old"):
        if (base / name).is_dir():
            problem = ckpt.checkpoint_problem(base / name)
            if problem is None:
                return base / name
            problems.append(problem)
    found = existing_run(run_dir)
    if not found:
        return None
    why = problems[0] if problems else "no checkpoints/last"
    raise UsageError(f"--resume auto: {run_dir} holds a run ({', '.join(found)}) but no complete checkpoint "
                     f"({why}); nothing was changed: resume from another checkpoint with --resume PATH, or "
                     f"start over with --overwrite")
