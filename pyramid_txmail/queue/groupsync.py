"""Group commit: concurrent callers share one fsync of a directory.

A committed message costs an fsync of its file (at the vote) and of
``new/`` (at the finish, once it is renamed there). The file's is its own,
but a directory's fsync makes every entry made before it durable, so threads that
commit at the same moment need only one between them: the first caller
syncs, and those who arrive meanwhile wait and then sync once together for
all of them (the leader/follower scheme of database group commit). Each
caller still returns only after an fsync that *began after its call*, so its
own change is durable when it returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class GroupSync:
    """fsync of one directory, shared by the callers of :meth:`sync` that
    overlap in time. ``fsync`` takes a descriptor (the queue's seam)."""

    def __init__(self, path: str, fsync: Callable[[int], None]):
        self.path = path
        self._fsync = fsync
        self._cond = threading.Condition()
        self._asked = 0  # tickets handed out
        self._synced = 0  # every ticket up to this one is durable
        self._busy = False  # a leader is syncing

    def sync(self) -> None:
        """Return once an fsync of the directory that began after this call
        has succeeded; raise :class:`OSError` if the one made for this call
        failed (a later caller tries again for itself)."""
        with self._cond:
            self._asked += 1
            ticket = self._asked
            # Bounded: each turn either ends with our ticket synced, or makes
            # us the leader, which syncs it or raises.
            while self._synced < ticket:
                if not self._busy:
                    self._lead()
                else:
                    self._cond.wait()

    def _lead(self) -> None:
        """Sync for every ticket handed out so far. Called holding the
        condition; releases it for the fsync itself."""
        upto = self._asked
        self._busy = True
        self._cond.release()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            self._cond.acquire()
            self._busy = False
            self._cond.notify_all()  # a follower takes the lead and tries again
            raise
        self._cond.acquire()
        self._busy = False
        self._synced = max(self._synced, upto)
        self._cond.notify_all()
