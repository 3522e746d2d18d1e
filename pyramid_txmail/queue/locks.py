"""Descriptor and lock lifetimes of the queue directory's files.

A queue file's ``flock`` belongs to its open file description: it ends when
the last descriptor of it is closed, in this process or in a forked child
that inherited it. This module keeps the descriptors that hold (or are
about to hold) such a lock, so that

* a forked child (gunicorn ``--preload``, uWSGI) closes its inherited copies
  at once (:func:`install_fork_hook`), instead of keeping its parent's
  messages locked, unclaimable, for its whole life; a descriptor opened
  while a fork happened is opened again, and one is unlocked before it is
  forgotten, so that none escapes, and a fork never waits for either (an
  open on a stalled NFS mount may take minutes);
* the descriptors of sent (removed) messages are closed off the sender's
  path: :func:`close_soon` hands them to a daemon thread named
  ``pyramid_txmail-closer``, started by the first such close (never at
  import). Closing the last descriptor of an unlinked file is when the file
  system frees it (about 70 µs on ext4, a quarter of a message's time in a
  drain); the file has no name by then, so nothing can find it and the
  moment its lock ends is moot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue as _queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ['close_soon', 'install_fork_hook']

# Descriptors holding (or about to hold) a queue file's flock in this process.
# A forked child inherits them, and with them the locks (a flock belongs to
# the open file, not the process): a message its parent then releases or
# defers would stay locked, unclaimable, for the child's lifetime. The child
# closes its copies at once; the parent's locks are unaffected.
_LOCK_FDS: set[int] = set()
# Replaced by each fork (see install_fork_hook): a descriptor opened while
# it changed may be in a child, unknown to the child's fork hook.
_fork_mark = object()


def _held(opener: Callable[..., int], *args: Any) -> int:
    """``opener(*args)``, a descriptor that is to hold a queue file's
    ``flock``, noted for forked children to close.

    A child forked between the open and the noting would keep, unknown to
    its hook, the open file the lock is then taken on: that descriptor is
    closed and the file opened again. A fork never waits for an open, which
    may block for minutes (a stalled NFS mount).
    """
    install_fork_hook()
    for _ in range(_REOPENS):
        mark = _fork_mark
        fd = opener(*args)
        _LOCK_FDS.add(fd)
        if mark is _fork_mark:
            return fd
        _LOCK_FDS.discard(fd)
        os.close(fd)
    # Forks without pause (a process forking in a loop): the last open is
    # kept, at worst in a child too, rather than claims stopping here.
    fd = opener(*args)
    _LOCK_FDS.add(fd)
    return fd


#: Opens again at most, while forks keep coming between open and noting.
_REOPENS = 8


def _unlock(fd: int) -> None:
    # Unlocked first: a child forked before the close then keeps an open
    # file that holds no lock. Forgotten before the close: a child forked
    # in between must not close a number another thread reused meanwhile.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    _LOCK_FDS.discard(fd)
    os.close(fd)


class _Closer:
    """Closes the descriptors of removed messages in a thread of its own.

    Closing the last descriptor of a removed file is when the file system
    frees it (about 70 µs on ext4, a quarter of a message's time in a
    drain); the processor need not wait for that. The file has no name by
    then, so nothing can find it and the moment its lock ends is moot.
    """

    #: Descriptors waiting for the thread beyond which the caller closes
    #: its own: a closer falling behind slows the caller down rather than
    #: letting descriptors pile up.
    LIMIT = 256

    def __init__(self) -> None:
        # SimpleQueue: a hand-over per message sent, which must not cost a
        # Python lock that the closer thread may hold.
        self._fds: _queue.SimpleQueue[int] = _queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def close(self, fd: int) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:  # pragma: no branch (else: another thread won)
                    self._thread = threading.Thread(
                        target=self._run, name='pyramid_txmail-closer', daemon=True
                    )
                    self._thread.start()
        if self._fds.qsize() >= self.LIMIT:
            _unlock(fd)
            return
        self._fds.put(fd)

    def _run(self) -> None:
        while True:
            fd = self._fds.get()
            # Never die: a dead closer would leave every later fd open.
            with contextlib.suppress(OSError):
                # Not unlocked first (a system call per message sent): a
                # child forked in between keeps only the descriptor of a
                # removed file, whose lock nobody can want.
                _LOCK_FDS.discard(fd)
                os.close(fd)


_CLOSER = _Closer()


def close_soon(fd: int) -> None:
    """Unlock and close ``fd`` (a removed file's) in the closer thread."""
    # Through the module global: a forked child has a closer of its own.
    _CLOSER.close(fd)


def _before_fork() -> None:
    global _fork_mark
    _fork_mark = object()


def _close_inherited_locks() -> None:
    global _CLOSER
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    # The parent's closer thread is not here; what it had queued is closed.
    _CLOSER = _Closer()


_fork_hook_installed = False
_fork_hook_lock = threading.Lock()


def install_fork_hook() -> None:
    """Have forked children close the lock descriptors they inherit.

    Registered once, when the first lock is taken or the first processor
    thread starts, never at import: an application with direct delivery
    gets no hook at all.
    """
    global _fork_hook_installed
    if _fork_hook_installed:  # also in a forked child, where the lock may be stale
        return
    with _fork_hook_lock:
        if not _fork_hook_installed:  # pragma: no branch (else: another thread won)
            os.register_at_fork(
                before=_before_fork, after_in_child=_close_inherited_locks
            )
            _fork_hook_installed = True
