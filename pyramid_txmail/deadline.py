"""Deadlines for calls blocked on a socket: a watchdog thread shuts it down.

A library call waiting on a socket (:mod:`smtplib` reading a reply a byte at
a time, libpq waiting for a result from a server that stopped answering)
cannot be interrupted from another thread, and a per-read timeout does not
bound a peer that trickles. The socket under it can be shut down, though:
that ends any read, write or TLS handshake waiting on it, and the call
fails as for a dropped connection.

:class:`Deadline` gives a phase (a ``with`` block) ``timeout`` seconds in
all; a :class:`Watchdog` (one thread for every deadline of its kind in the
process) shuts the watched socket down when the time is up. The SMTP
session (:mod:`pyramid_txmail.smtp.session`) and the shared outbox
(:mod:`pyramid_txmail.queue.outbox`) each have one; what a deadline that
fired means (which error) is theirs to say.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable

__all__ = ['Deadline', 'Watchdog', 'process_watchdog']


class Watchdog:
    """The one thread of a process that ends phases past their deadline.

    Every watched :class:`Deadline` costs no thread of its own, so that a
    pool of sessions, or many requests at once, cost one thread, not one
    each. The thread (named ``name``) starts with the first deadline watched
    and ends when none is left; with ``linger``, once none was watched for
    about that many seconds, for users that watch each round trip rather
    than a session (a thread per round trip would cost more than the round
    trip; a released deadline then does not wake the thread either).
    ``on_start`` is called when a thread is about to start (to install a
    fork hook, say).
    """

    def __init__(
        self,
        name: str,
        *,
        linger: float = 0.0,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.linger = linger
        self.on_start = on_start
        # Re-entrant: cut() may run in a signal handler that interrupted a
        # phase of the same thread. One lock for every session's deadline:
        # it is held for a few assignments per phase.
        self.cond = threading.Condition(threading.RLock())
        self.watched: set[Deadline] = set()
        self.wake_at = math.inf  # when the thread looks again
        self.thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> threading.Thread | None:
        """Watch ``deadline`` (held: ``cond``); a new thread to start, after
        ``cond`` is released, if none runs.

        Not started here: ``start()`` waits for the new thread, which may
        first collect garbage, and a finalizer that releases a deadline needs
        ``cond``. The thread, once started, sees whatever was watched by then.
        """
        self.watched.add(deadline)
        if self.thread is None:
            if self.on_start is not None:
                self.on_start()
            self.thread = threading.Thread(
                target=self._run, name=self.name, daemon=True
            )
            return self.thread
        self.soon(deadline.due())
        return None

    def soon(self, due: float) -> None:
        """Wake the thread if ``due`` comes before it looks again (held:
        ``cond``). Most phases end long before it wakes; it then sees the
        new deadline. Waking it for each phase would cost a switch."""
        if due < self.wake_at:
            self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while self.watched or self._linger():
                now = time.monotonic()
                soonest = math.inf
                for deadline in list(self.watched):
                    soonest = min(soonest, deadline.expire(now))
                self.wake_at = soonest
                self.cond.wait(None if soonest == math.inf else soonest - now)
            # Under the lock: the next watch() starts a new thread.
            self.thread = None
            self.wake_at = math.inf

    def _linger(self) -> bool:
        """Nothing is watched: wait up to ``linger`` seconds for a deadline
        (held: ``cond``); True if one came."""
        if self.linger <= 0:
            return False
        # Not woken by a deadline due after this: seen when the wait ends.
        self.wake_at = time.monotonic() + self.linger
        self.cond.wait(self.linger)
        return bool(self.watched)


def process_watchdog(name: str, *, linger: float = 0.0) -> Callable[[], Watchdog]:
    """A function giving this process's watchdog named ``name``: a forked
    child gets a new one (the parent's has no thread there, and its lock
    may have been held at the fork)."""
    # No lock: one held at a fork would never be released in the child.
    # setdefault() is atomic: threads racing to make the first one all get
    # the one kept (a deadline watched by one that was not kept would be
    # told of its phases by the other, and never fire).
    made: dict[int, Watchdog] = {}

    def get() -> Watchdog:
        pid = os.getpid()
        dog = made.get(pid)
        if dog is None:
            dog = made.setdefault(pid, Watchdog(name, linger=linger))
        return dog

    return get


class Deadline:
    """Shuts a socket down when a phase runs past its deadline.

    Used as a context manager, this gives the phase inside ``timeout``
    seconds in all: the watchdog (``watchdog()``, watching this deadline
    from :meth:`watch` to :meth:`release`) shuts the socket down at the
    deadline, which ends any read, write or TLS handshake waiting on it.
    :meth:`cut` sets a deadline for everything until :meth:`release`.
    :attr:`fired` then says why the socket was shut down; the caller turns
    that into its own error.

    The watchdog shuts down a duplicate of the socket, which only
    :meth:`release` closes: the library using the socket may close its own
    descriptor at any moment, and a shutdown by number could then reach
    whatever file the system gave that number next.
    """

    def __init__(self, timeout: float, watchdog: Callable[[], Watchdog]):
        self.timeout = timeout
        self.watchdog = watchdog
        # All guarded by the watchdog's lock.
        self._sock: socket.socket | None = None
        self._due = math.inf  # end of the current phase
        self._cutoff = math.inf  # end of the session (cut)
        #: Why the socket was shut down: ``'timeout'``, ``'cut'`` or None.
        self.fired: str | None = None

    def __enter__(self) -> None:
        due = time.monotonic() + self.timeout
        watchdog = self.watchdog()
        with watchdog.cond:
            self._due = due
            if self._sock is not None:
                watchdog.soon(due)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.end()

    def end(self) -> str | None:
        """End the phase; return :attr:`fired`."""
        with self.watchdog().cond:
            self._due = math.inf
            return self.fired

    def due(self) -> float:
        """The phase's deadline or the cut, whichever comes first."""
        return min(self._due, self._cutoff)

    def watch(self, sock: socket.socket, *, owned: bool = False) -> None:
        """Guard ``sock`` until :meth:`release`: a duplicate of it, or
        ``sock`` itself if ``owned`` (a duplicate made by the caller, which
        :meth:`release` closes). RuntimeError when the watchdog's thread
        cannot start (the process is at its limit of threads): the socket
        is then not guarded."""
        self.release()
        watchdog = self.watchdog()
        with watchdog.cond:
            self.fired = None
            self._sock = sock if owned else sock.dup()
            thread = watchdog.watch(self)
        if thread is None:
            return
        try:
            thread.start()
        except RuntimeError:
            # Else every later deadline would take the thread for running,
            # and none would ever fire again. (Only a thread that ran puts
            # another in its place.)
            with watchdog.cond:
                watchdog.thread = None
            raise

    def expire(self, now: float) -> float:
        """Shut the socket down if its time has come (the watchdog's
        thread, holding its lock); return when to look again."""
        if self.fired is not None or self._sock is None:
            return math.inf
        due = self.due()
        if now < due:
            return due
        self.fired = 'cut' if self._cutoff <= now else 'timeout'
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        return math.inf

    def left(self) -> float:
        """Seconds until the phase's deadline or the cut, whichever comes
        first (for a connect, which runs before there is a socket to
        watch); a cut whose time has come is marked as fired."""
        now = time.monotonic()
        with self.watchdog().cond:
            if now >= self._cutoff and self.fired is None:
                self.fired = 'cut'
            return max(0.0, self.due() - now)

    def cut(self, after: float) -> None:
        watchdog = self.watchdog()
        with watchdog.cond:
            self._cutoff = min(self._cutoff, time.monotonic() + after)
            if self._sock is not None:
                watchdog.soon(self._cutoff)

    def release(self) -> None:
        """Stop guarding; the watchdog forgets this deadline."""
        watchdog = self.watchdog()
        with watchdog.cond:
            sock, self._sock = self._sock, None
            if self in watchdog.watched:
                watchdog.watched.discard(self)
                if not watchdog.linger:
                    # Its thread ends once nothing is left to watch.
                    watchdog.cond.notify()
        if sock is not None:
            sock.close()
