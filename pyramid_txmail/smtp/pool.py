"""A small pool of open SMTP sessions, kept between transactions.

Direct delivery opens a session per transaction unless ``mail.pool_size``
is set: then up to that many sessions are kept open after use, and the next
transaction takes one instead of connecting, greeting, securing and logging
in again. A burst of transactions then costs one setup, not one each.

The rules, each guarding against a session that cannot be trusted:

* A session taken from the pool is checked first (RSET, see
  :meth:`SMTPConnection.check <.session.SMTPConnection.check>`). The relay
  may have closed it while it was idle, or answer ``421``: such a session is
  dropped and a new one opened, and no message is failed for it.
* Except a session given back less than a second ago (``recent``) with
  nothing to read on it (:meth:`SMTPConnection.quiet
  <.session.SMTPConnection.quiet>`): a relay that ends a session closes the
  connection or says ``421``, which leaves something to read, and then the
  session is checked as above. Within a second, what RSET would catch
  beyond that is a connection lost without a word (no FIN, no RST), which a
  relay's idle timeout or restart does not cause. A burst of transactions
  (a worker sending one mail per request) so saves a round trip each. A relay
  that limits the messages of one connection answers RSET and refuses the
  next MAIL with ``421``: direct delivery then sends that message over a
  new session, as ``421`` means nothing was accepted.
* A check the relay does not answer within ``mail.timeout`` ends the
  checks: the other idle sessions are dropped unchecked (each check would
  cost as long), and a new session is opened.
* A session idle for more than ``mail.pool_idle`` seconds is closed (QUIT)
  instead of reused: relays close idle sessions themselves (Postfix after
  300 seconds), and a session that old is more likely gone than not. Its
  QUIT's answer is not awaited, here or when the pool is closed: a relay
  that stopped answering would hold the caller ``mail.timeout`` per session.
* A session that had any error during use is closed, never kept: its state
  is not worth a guess.
* At most ``mail.pool_size`` idle sessions are kept. A thread that finds
  none idle opens a new one and never waits for another thread's: sending
  mail after a commit must not queue behind other requests. Once used, a
  session beyond the ``pool_size`` kept is closed.
* Sessions are per process: a forked child (gunicorn ``--preload``, uWSGI)
  never uses, nor says QUIT on, a session its parent opened; it opens its
  own. Idle sessions are closed (QUIT) at interpreter exit.

Each thread gets a session of its own: a session is in the pool or in the
hands of one caller, never both.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from .session import SMTPConnection

__all__ = ['SessionPool']

log = logging.getLogger('pyramid_txmail.smtp')


class SessionPool:
    """Up to ``size`` open sessions made by ``connect``, each kept for at
    most ``idle`` seconds between uses.

    ``connect`` returns a new, unopened :class:`SMTPConnection`; ``clock``
    (seconds, monotonic) is replaceable for tests. A session given back
    within ``recent`` seconds is reused unchecked while it is quiet.
    :meth:`acquire` gives a session, :meth:`release` takes it back,
    :meth:`close` closes the idle ones. Thread-safe; see the module's
    docstring for the rules.
    """

    def __init__(
        self,
        connect: Callable[[], SMTPConnection],
        size: int,
        idle: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        recent: float = 1.0,
    ):
        self.connect = connect
        self.size = size
        self.idle = idle
        self.clock = clock
        self.recent = recent
        self._lock = threading.Lock()
        # (when it was given back, session), the most recently used last.
        self._idle: list[tuple[float, SMTPConnection]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f'<SessionPool size={self.size} idle={len(self._idle)}>'

    def acquire(self) -> SMTPConnection:
        """An open session: the most recently used idle one that passes its
        check, else a new one. Raises the :class:`DeliveryError` of opening
        a new one."""
        conn = self.reuse()
        if conn is None:
            conn = self.connect()
            conn.open()
        return conn

    def reuse(self) -> SMTPConnection | None:
        """The most recently used idle session that passes its check (or
        is recent and quiet), or None. A reused session can still be refused
        with ``421`` at its next MAIL (a relay's limit of messages per
        connection): its caller sends that message again over a new
        session."""
        while True:
            taken = self._take()
            if taken is None:
                return None
            since, conn = taken
            if self.clock() - since <= self.recent and conn.quiet():
                return conn
            if conn.check():
                return conn
            if conn.unanswered:
                # The relay did not answer in time: each other check would
                # cost as long, before a new session is even tried.
                self._drop_idle()
                return None

    def _drop_idle(self) -> None:
        """Close every idle session without a word (QUIT would wait too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.drop()

    def release(self, conn: SMTPConnection, *, clean: bool) -> None:
        """Take back a session after use: kept for the next caller if it was
        ``clean`` (no error of any kind during the use), is still alive and
        fewer than ``size`` are idle; else closed."""
        if clean and conn.alive:
            _track(self)
            with self._lock:
                if not self._closed and len(self._idle) < self.size:
                    self._idle.append((self.clock(), conn))
                    return
        conn.close()

    def close(self) -> None:
        """Close every idle session (QUIT, its answer not awaited); keep
        none from now on."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close(wait=False)

    def _take(self) -> tuple[float, SMTPConnection] | None:
        """The most recently used idle session, with when it was given
        back; those idle too long are closed on the way (the least recently
        used age out first)."""
        now = self.clock()
        with self._lock:
            stale = [c for t, c in self._idle if now - t > self.idle]
            self._idle = [(t, c) for t, c in self._idle if now - t <= self.idle]
            taken = self._idle.pop() if self._idle else None
        for old in stale:
            log.debug('closing the session with %s: idle too long', old.where)
            old.close(wait=False)
        return taken

    def _after_fork_in_child(self) -> None:
        """Forget the parent's sessions without a word to its relay; the
        lock may have been held at the fork by a thread the child lacks."""
        self._lock = threading.Lock()
        inherited, self._idle = self._idle, []
        for _, conn in inherited:
            conn.drop()


# Pools that have held a session: closed at exit, emptied in a forked child.
_POOLS: weakref.WeakSet[SessionPool] = weakref.WeakSet()
_pools_lock = threading.Lock()
_hooks_installed = False


def _track(pool: SessionPool) -> None:
    """Remember ``pool`` for the exit and fork hooks, installed when the
    first pool keeps a session, never at import."""
    global _hooks_installed
    if pool in _POOLS:
        return
    with _pools_lock:
        _POOLS.add(pool)
        if not _hooks_installed:
            atexit.register(_close_all)
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True


def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close()


def _after_fork_in_child() -> None:
    # Runs after the watchdog's own hook (session.py), registered earlier:
    # a pool keeps only sessions that were opened, which started the
    # watchdog. drop() then finds the child's watchdog, not the parent's.
    global _pools_lock
    _pools_lock = threading.Lock()
    for pool in list(_POOLS):
        pool._after_fork_in_child()
