"""A lock per run folder so that two sweep processes never run the same run; stale locks are recovered.

The lock is a file created with ``O_EXCL`` holding the owner's host and pid. A lock whose process no longer
exists on this host is stale and taken over.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from ..io import pid_alive


class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """``with RunLock(folder): ...`` -- raises :class:`RunLocked` when a live process holds the folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        from .folder import FILES

        self.path = Path(folder) / FILES["lock"]
        self.held = False

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        # The lock appears with its content in one step (hard link of a written temp file), so another
        # process never reads an empty lock and mistakes it for a stale one.
        tmp = self.path.with_name(f"{self.path.name}.{me['host']}.{me['pid']}")
        tmp.write_text(json.dumps(me))
        try:
            self._acquire(me, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _acquire(self, me: dict, tmp: Path) -> None:
        for _ in range(2):
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                same_host = owner.get("host") == me["host"]
                pid = owner.get("pid")
                if same_host and isinstance(pid, int) and pid != me["pid"] and pid_alive(pid):
                    raise RunLocked(f"{self.path.parent} is being run by pid {pid} on {owner['host']}")
                if owner and not same_host:
                    raise RunLocked(f"{self.path.parent} is locked by {owner}; remove {self.path} if that "
                                    f"process is gone")
                self.path.unlink(missing_ok=True)  # stale: its process is dead (or the file is unreadable)
                continue
            self.held = True
            return
        raise RunLocked(f"could not lock {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
