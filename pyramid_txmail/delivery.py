"""Deliveries: where committed mail goes.

Each class implements :class:`~pyramid_txmail.interfaces.IMailDelivery`:
``vote()`` does the risky part of the commit and returns a pending object
whose ``finish``/``abort``/``after_commit`` the data manager calls (see
:mod:`pyramid_txmail.datamanager`).

* :class:`DirectDelivery` sends over SMTP after the commit.
* :class:`QueuedDelivery` writes into the queue directory during the vote and
  publishes it in ``tpc_finish``; the processor sends.
* :class:`FileDelivery` writes one ``.eml`` file per message.
* :class:`OutboxDelivery` and :class:`SessionOutboxDelivery` write into the
  shared outbox (``mail.queue_url``, :mod:`pyramid_txmail.queue.outbox`):
  by PostgreSQL's two-phase commit over a connection of their own, or
  through the application's SQLAlchemy session (``mail.queue_session``).
  psycopg is imported only when one is made, never by an application
  without ``mail.queue_url``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.policy
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from .events import MailEvent, MailFailed, MailSent
from .exceptions import DeliveryError, QueueError, Refusals, TemporaryDeliveryError
from .interfaces import IImmediateDelivery, IPendingMail, IQueueDelivery
from .message import Envelope, PreparedMail
from .queue.maildir import MailQueue
from .settings import MailSettings, SettingsError
from .smtp import SHOWN_REFUSALS, Outcome, Pipeline, SessionPool, SMTPConnection

if TYPE_CHECKING:  # psycopg is optional: imported where an outbox is used
    import psycopg

    from .queue.outbox import OutboxQueue

log = logging.getLogger('pyramid_txmail.delivery')
#: The outbox producers' logger (the outbox backend's too).
outbox_log = logging.getLogger('pyramid_txmail.outbox')

#: Most transactions one message takes when the relay limits the recipients
#: of each (``452`` to the rest, RFC 5321, 4.5.3.1.10).
MAX_ROUNDS = 100

Notify = Callable[[Iterable[MailEvent]], None]


def ignore_events(events: Iterable[MailEvent]) -> None:
    """The notifier of a delivery nobody listens to."""


@implementer(IPendingMail)
class PendingMail:
    """A vote's result: what to do at finish, abort and after the commit."""

    def __init__(
        self,
        finish: Callable[[], None] = lambda: None,
        abort: Callable[[], None] = lambda: None,
        after_commit: Callable[[], None] = lambda: None,
    ):
        self.finish = finish
        self.abort = abort
        self.after_commit = after_commit


@implementer(IImmediateDelivery)
class DirectDelivery:
    """SMTP after the commit, all of a transaction's mail on one connection.

    With ``mail.pool_size``, sessions are kept open between transactions
    (see :class:`~pyramid_txmail.smtp.SessionPool`); a session that had an
    error is never kept.

    There is no retry: a failure of any kind is logged and notified as a
    permanent ``MailFailed`` for each message it cost; it never reaches the
    request. Recipients beyond the relay's limit per transaction (refused
    with ``452`` while others were accepted) get the message in another
    transaction over the same session, up to :data:`MAX_ROUNDS` in all.
    """

    def __init__(
        self,
        settings: MailSettings,
        notify: Notify = ignore_events,
        connect: Callable[[], SMTPConnection] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.notify = notify
        self.connect = connect or (lambda: SMTPConnection(settings))
        #: The sessions kept between transactions (``mail.pool_size``), or
        #: None: a session per transaction. ``clock`` times their idleness.
        self.pool: SessionPool | None = None
        if settings.pool_size:
            self.pool = SessionPool(
                self.connect, settings.pool_size, settings.pool_idle, clock=clock
            )

    def close(self) -> None:
        """Close the sessions kept open (QUIT); done at interpreter exit too."""
        if self.pool is not None:
            self.pool.close()

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        return PendingMail(after_commit=lambda: self.deliver(mails))

    def deliver(self, mails: Sequence[PreparedMail]) -> None:
        """Send ``mails`` over as few connections as failures allow.

        Over one connection they are pipelined (see
        :class:`~pyramid_txmail.smtp.Pipeline`): one round trip per message
        while the request waits. A session that dies takes only the message
        it was sending; the rest go over a new one, unless the relay stopped
        answering in time (each phase is bounded by ``mail.timeout``; trying
        again would only multiply the wait). Events go out in the order of
        ``mails``, one per message, whatever happened.
        """
        events: dict[int, MailEvent] = {}
        unsent = dict(enumerate(mails))
        fresh = False
        try:
            # Ends: every session answers at least its first message, or
            # fails them all; a session from the pool whose relay ended it
            # with 421 gives its messages back once, to new sessions.
            while unsent:
                opened = self._open(unsent, events, fresh=fresh)
                if opened is None:
                    break
                conn, reused = opened
                clean = False
                try:
                    clean = self._session(conn, unsent, events, retry=reused)
                finally:
                    self._release(conn, clean)
                if reused:
                    fresh = True
                    unsent = dict(sorted(unsent.items()))
                if conn.timed_out:
                    for i, mail in unsent.items():
                        events[i] = self._failed(mail, _timed_out(conn))
                    unsent.clear()
        except Exception as exc:
            # A bug, or an error nobody foresaw: the messages without an
            # outcome are still owed one.
            log.exception('direct delivery failed')
            for i, mail in enumerate(mails):
                if i not in events:
                    events[i] = self._failed(mail, exc)
        finally:
            self.notify([events[i] for i in sorted(events)])

    def _open(
        self,
        unsent: dict[int, PreparedMail],
        events: dict[int, MailEvent],
        *,
        fresh: bool,
    ) -> tuple[SMTPConnection, bool] | None:
        """An open session and whether it was reused (see :meth:`_acquire`),
        or None when none could be opened: then every message in ``unsent``
        failed."""
        try:
            return self._acquire(fresh=fresh)
        except DeliveryError as exc:
            # The relay is down or refuses us: trying again for every
            # message would only multiply the timeouts.
            for i, mail in unsent.items():
                events[i] = self._failed(mail, exc)
            unsent.clear()
            return None

    def _acquire(self, *, fresh: bool = False) -> tuple[SMTPConnection, bool]:
        """An open session, and whether it was kept from earlier use: from
        the pool if there is one (unless ``fresh``), else a new one."""
        if self.pool is not None and not fresh:
            conn = self.pool.reuse()
            if conn is not None:
                return conn, True
        conn = self.connect()
        conn.open()
        return conn, False

    def _release(self, conn: SMTPConnection, clean: bool) -> None:
        """Done with ``conn``: back to the pool if there is one, else closed."""
        if self.pool is not None:
            self.pool.release(conn, clean=clean)
        else:
            conn.close()

    def _session(
        self,
        conn: SMTPConnection,
        unsent: dict[int, PreparedMail],
        events: dict[int, MailEvent],
        *,
        retry: bool = False,
    ) -> bool:
        """Send ``unsent`` over the open ``conn``; each message with an
        outcome leaves ``unsent`` for ``events``. True when nothing failed
        (the session may be kept). With ``retry``, a message the relay
        answered with ``421`` (closing: nothing accepted) stays in
        ``unsent``."""
        more: list[tuple[int, PreparedMail, Refusals]] = []
        failed = False

        def record(outcomes: list[tuple[int, Outcome]]) -> None:
            nonlocal failed
            for i, outcome in outcomes:
                mail = unsent.pop(i)
                if isinstance(outcome, DeliveryError):
                    failed = True
                    if retry and outcome.code == 421:
                        log.info(
                            'mail %s: %s; sending it over a new session',
                            mail.message_id,
                            outcome,
                        )
                        unsent[i] = mail
                        continue
                    events[i] = self._failed(mail, outcome)
                elif _over_limit(outcome):
                    more.append((i, mail, outcome))
                else:
                    events[i] = self._sent(mail, outcome)

        pipeline = Pipeline[int](conn)
        for i, mail in list(unsent.items()):
            record(pipeline.submit(i, mail.envelope, mail.data))
            if not conn.alive:
                break  # the rest go over a new session
        record(pipeline.finish())
        final, rounds_clean = self._rounds(conn, more)
        for i, mail, refused in final:
            events[i] = self._sent(mail, refused)
        return not failed and rounds_clean

    @staticmethod
    def _rounds(
        conn: SMTPConnection, more: list[tuple[int, PreparedMail, Refusals]]
    ) -> tuple[list[tuple[int, PreparedMail, Refusals]], bool]:
        """Send each message again to the recipients refused for being over
        the relay's limit, until none is left; return the final refusals,
        and whether no round failed.

        Bounded: each round delivers to at least one recipient (else it
        fails, and the refusals stand), and there are at most
        :data:`MAX_ROUNDS`.
        """
        final: dict[int, tuple[PreparedMail, Refusals]] = {
            i: (mail, refused) for i, mail, refused in more
        }
        rounds = 1
        clean = True
        while more and conn.alive and rounds < MAX_ROUNDS:
            rounds += 1
            jobs = [
                (
                    i,
                    dataclasses.replace(mail.envelope, recipients=_over_limit(refused)),
                    mail.data,
                )
                for i, mail, refused in more
            ]
            outcomes = _send_all(conn, jobs)
            this_round, more = more, []
            for i, mail, refused in this_round:
                outcome = outcomes[i]
                if isinstance(outcome, DeliveryError):
                    # This round failed: the earlier refusals stand.
                    clean = False
                    log.warning(
                        'mail %s: sending to the rest of its recipients failed: %s',
                        mail.message_id,
                        outcome,
                    )
                    continue
                rest = _over_limit(refused)
                refused = {r: v for r, v in refused.items() if r not in rest}
                refused.update(outcome)
                final[i] = (mail, refused)
                if _over_limit(outcome):
                    more.append((i, mail, refused))
        return [(i, mail, refused) for i, (mail, refused) in final.items()], clean

    @staticmethod
    def _failed(mail: PreparedMail, exc: BaseException) -> MailEvent:
        log.error('mail %s not sent: %s', mail.message_id, exc)
        return MailFailed(mail.message_id, mail.data, exc, permanent=True)

    @staticmethod
    def _sent(mail: PreparedMail, refused: Refusals) -> MailEvent:
        if refused:
            log.warning(
                'mail %s refused for %d of %d recipient(s): %s',
                mail.message_id,
                len(refused),
                len(mail.envelope.recipients),
                _summary(refused),
            )
        return MailSent(mail.message_id, mail.data, refused)

    def send_now(self, mail: PreparedMail) -> Refusals:
        try:
            conn, reused = self._acquire()
            try:
                refused = self._send_now(conn, mail)
            except DeliveryError as error:
                # A session kept from earlier use, ended by its relay: 421
                # means nothing was accepted (see deliver()).
                if not (reused and error.code == 421):
                    raise
                conn, _ = self._acquire(fresh=True)
                refused = self._send_now(conn, mail)
        except Exception as exc:
            # MailFailed drops the traceback (see events): the caller gets
            # the error raised from here.
            self.notify([MailFailed(mail.message_id, mail.data, exc, permanent=True)])
            raise
        self.notify([MailSent(mail.message_id, mail.data, refused)])
        return refused

    def _send_now(self, conn: SMTPConnection, mail: PreparedMail) -> Refusals:
        # Kept only once every round has returned: an exception raised in
        # one (a signal handler's time limit) may leave a transaction in
        # flight, whose replies the next caller would read as its own.
        clean = False
        try:
            refused: Refusals = conn.send(mail.envelope, mail.data)
            rounds_clean = True
            if _over_limit(refused):
                [(_, _, refused)], rounds_clean = self._rounds(
                    conn, [(0, mail, refused)]
                )
            clean = rounds_clean
            return refused
        finally:
            self._release(conn, clean)


def _send_all(
    conn: SMTPConnection, jobs: Iterable[tuple[int, Envelope, bytes]]
) -> dict[int, Outcome]:
    """Pipeline ``jobs`` (``(key, envelope, data)``) over ``conn``; their
    outcomes by key, one for each."""
    pipeline = Pipeline[int](conn)
    outcomes: dict[int, Outcome] = {}
    for key, envelope, data in jobs:
        outcomes.update(pipeline.submit(key, envelope, data))
    outcomes.update(pipeline.finish())
    for key in pipeline.abandon():
        outcomes[key] = TemporaryDeliveryError(
            f'not sent: the session with {conn.where} ended first'
        )
    return outcomes


def _over_limit(refused: Refusals) -> tuple[str, ...]:
    """Recipients refused with 452, "too many recipients" once others were
    accepted (RFC 5321, 4.5.3.1.10): for another transaction."""
    return tuple(r for r, (code, _) in refused.items() if code == 452)


def _summary(refused: Refusals) -> str:
    """The first few refusals in full, then how many more: one log line
    stays readable when a relay refuses thousands."""
    shown = ', '.join(
        f'{r} ({code} {reply})'
        for r, (code, reply) in sorted(refused.items())[:SHOWN_REFUSALS]
    )
    more = len(refused) - SHOWN_REFUSALS
    return f'{shown} and {more} more' if more > 0 else shown


def _timed_out(conn: SMTPConnection) -> DeliveryError:
    return TemporaryDeliveryError(
        f'not tried: {conn.where} did not answer in time '
        f'(mail.timeout = {conn.settings.timeout:g}s) for an earlier message'
    )


@implementer(IQueueDelivery)
class QueuedDelivery:
    """Durable in the queue before the commit completes, sent by a processor.

    The queue directory is created on first use, not at configuration time,
    so that ``includeme`` touches no file. ``wake`` is set by the processor
    running in this process, to start a pass as soon as a commit publishes.
    """

    def __init__(
        self,
        path: str,
        queue_factory: Callable[[str], MailQueue] = MailQueue,
    ):
        self.path = path
        self.wake: Callable[[], None] | None = None
        self._queue_factory = queue_factory
        self._queue: MailQueue | None = None
        self._lock = threading.Lock()

    @property
    def queue(self) -> MailQueue:
        with self._lock:
            if self._queue is None:
                self._queue = self._queue_factory(self.path)
            return self._queue

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        queue = self.queue
        ids: list[str] = []
        try:
            for mail in mails:
                ids.append(queue.stage(mail))
        except BaseException:
            queue.discard(ids)
            raise
        return PendingMail(
            finish=lambda: queue.publish(ids),
            abort=lambda: queue.discard(ids),
            after_commit=self._wake,
        )

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()


@implementer(IImmediateDelivery)
class FileDelivery:
    """One ``.eml`` file per committed message, for development and tests.

    Files are written under a hidden temporary name during the vote and
    renamed in ``tpc_finish``, so a reader never sees half a message.
    """

    def __init__(self, path: str, notify: Notify = ignore_events):
        self.path = path
        self.notify = notify

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        written: list[tuple[str, str]] = []
        try:
            for mail in mails:
                written.append(self._write(mail))
        except BaseException:
            self._unlink(tmp for tmp, _ in written)
            raise

        def finish() -> None:
            for tmp, final in written:
                os.rename(tmp, final)

        return PendingMail(
            finish=finish,
            abort=lambda: self._unlink(tmp for tmp, _ in written),
            after_commit=lambda: self.notify(
                [MailSent(m.message_id, m.data) for m in mails]
            ),
        )

    def send_now(self, mail: PreparedMail) -> dict[str, tuple[int, str]]:
        tmp, final = self._write(mail)
        os.rename(tmp, final)
        self.notify([MailSent(mail.message_id, mail.data)])
        return {}

    def _write(self, mail: PreparedMail) -> tuple[str, str]:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        name = f'{time.time_ns() // 1000:016d}-{uuid.uuid4().hex[:12]}.eml'
        tmp = os.path.join(self.path, f'.{name}.tmp')
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, 'wb') as f:
                f.write(mail.data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self._unlink([tmp])
            raise
        return tmp, os.path.join(self.path, name)

    @staticmethod
    def _unlink(paths: Iterable[str]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


# -- the shared outbox (mail.queue_url): psycopg only when one is configured


_BACKEND_START = (
    'SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()'
)
_INSERT = (
    'INSERT INTO txmail_outbox (message_id, sender, recipients, subject, data) '
    'VALUES (%s, %s, %s, %s, %s)'
)


def _subject(mail: PreparedMail) -> str | None:
    """The decoded Subject, stored for ``list`` (None without one)."""
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(mail.data)
    subject = headers['subject']
    return None if subject is None else str(subject)


def _row(mail: PreparedMail) -> tuple[Any, ...]:
    return (
        mail.message_id,
        mail.envelope.sender,
        list(mail.envelope.recipients),
        _subject(mail),
        mail.data,
    )


class _Producer:
    """What both producers share: the queue and the in-process wake."""

    def __init__(self, queue: OutboxQueue):
        self.queue = queue
        self.wake: Callable[[], None] | None = None

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()


@implementer(IQueueDelivery)
class OutboxDelivery(_Producer):
    """Rows written with a connection of the outbox's own, by two-phase commit.

    ``tpc_vote`` inserts the transaction's rows and runs ``PREPARE
    TRANSACTION``: they are durable, and invisible to processors.
    ``tpc_finish`` commits them (``COMMIT PREPARED``), ``tpc_abort`` rolls
    them back. After the commit, ``NOTIFY`` wakes the processors (a prepared
    transaction may not notify). Needs ``max_prepared_transactions`` > 0 on
    the server.

    Each round trip has ``mail.timeout`` seconds (the queue's ``timeout``,
    see :func:`~pyramid_txmail.queue.outbox.bounded`): a vote the server
    does not answer in time fails the commit; a ``COMMIT PREPARED`` not
    answered in time is logged and ended over a new connection after the
    commit, as when the connection is lost.
    """

    def __init__(self, queue: OutboxQueue):
        super().__init__(queue)
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # Each connection's server process, as (pid, backend_start): a pid
        # alone may be another session's by the time it is ended.
        self._backends: weakref.WeakKeyDictionary[
            psycopg.Connection[Any], tuple[int, Any]
        ] = weakref.WeakKeyDictionary()

    def _get(self) -> tuple[psycopg.Connection[Any], bool]:
        """An idle connection (and True), else a new one (and False)."""
        with self._lock:
            if self._pid != os.getpid():  # pragma: no cover - forked
                self._idle, self._pid = [], os.getpid()  # the parent's
            if self._idle:
                return self._idle.pop(), True
        import psycopg

        from .queue.outbox import bounded, connect

        queue = self.queue
        conn = connect(queue.url, queue.name, autocommit=False, timeout=queue.timeout)
        try:
            conn.autocommit = True  # no transaction to end after the query
            with bounded(conn, queue.timeout):
                [(started,)] = conn.execute(_BACKEND_START).fetchall()
            conn.autocommit = False
        except psycopg.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise QueueError(
                f'mail.queue_url: cannot write the outbox at {queue.name}: '
                f'{_vote_cause(exc, queue.url)}'
            ) from None
        self._backends[conn] = (conn.info.backend_pid, started)
        return conn, False

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        # As many as threads commit at once, at most.
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections (a later commit makes new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        import psycopg

        from .queue.outbox import GID_PREFIX, Unanswered, bounded, error_text

        queue = self.queue
        timeout = queue.timeout
        rows = [_row(mail) for mail in mails]
        gid = f'{GID_PREFIX}{uuid.uuid4()}'
        while True:
            conn, reused = self._get()
            # The server process, for _resolve() to end if its answer is lost.
            backend = self._backends[conn]
            preparing = False
            try:
                with bounded(conn, timeout):
                    conn.tpc_begin(gid)
                with bounded(conn, timeout), conn.cursor() as cur:
                    cur.executemany(_INSERT, rows)
                preparing = True
                with bounded(conn, timeout):
                    conn.tpc_prepare()
                break
            except psycopg.Error as exc:
                with contextlib.suppress(Exception):
                    conn.close()
                lost = isinstance(exc, psycopg.OperationalError)
                if (
                    reused
                    and lost
                    and not preparing
                    and not isinstance(exc, Unanswered)
                ):
                    # An idle connection the server dropped: a new one. Not
                    # after a deadline: a server that did not answer in
                    # mail.timeout would hold the commit twice as long.
                    continue
                if preparing and lost:
                    # The server may have prepared it, only the answer lost.
                    self._resolve(gid, commit=False, stalled=backend)
                raise QueueError(
                    f'mail.queue_url: cannot write the outbox at {queue.name}: '
                    f'{_vote_cause(exc, queue.url)}'
                ) from None
        state = {'committed': False}

        def finish() -> None:
            try:
                with bounded(conn, timeout):
                    conn.tpc_commit()
            except Exception as exc:
                # The decision is commit: after_commit tries again.
                outbox_log.error(
                    'outbox %s: COMMIT PREPARED %r failed: %s',
                    queue.name,
                    gid,
                    error_text(exc, queue.url),
                )
                with contextlib.suppress(Exception):
                    conn.close()
                return
            state['committed'] = True
            self._put(conn)

        def abort() -> None:
            try:
                with bounded(conn, timeout):
                    conn.tpc_rollback()
            except Exception:
                with contextlib.suppress(Exception):
                    conn.close()
                self._resolve(gid, commit=False, stalled=backend)
                return
            self._put(conn)

        def after_commit() -> None:
            if not state['committed']:
                self._resolve(gid, commit=True, stalled=backend)
            self._notify()
            self._wake()

        return PendingMail(finish=finish, abort=abort, after_commit=after_commit)

    def _resolve(self, gid: str, *, commit: bool, stalled: tuple[int, Any]) -> None:
        """End the prepared transaction ``gid`` over a new connection; if
        that fails too, say what the operator must do.

        ``stalled`` is the server process of the connection whose call
        failed, as (pid, backend_start). It may still be running that call
        (its answer lost, or not yet given): it is ended first, so that it
        cannot prepare or commit after this. ``gid`` not found then was
        ended by that call (or, for a vote, never prepared).
        """
        import psycopg

        from .queue.outbox import bounded, connect, error_text

        queue = self.queue
        verb = 'COMMIT' if commit else 'ROLLBACK'
        try:
            with connect(queue.url, queue.name, timeout=queue.timeout) as conn:
                # Waits (half of mail.timeout at most) for it to be gone.
                # That process only: its pid may be another session's by
                # now, but not with the same start. Refused to a role that
                # may not end it: tried anyway.
                end = (
                    'SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity '
                    'WHERE pid = %s AND backend_start = %s'
                )
                wait_ms = int(queue.timeout * 500)
                with (
                    contextlib.suppress(psycopg.ProgrammingError),
                    bounded(conn, queue.timeout),
                ):
                    conn.execute(end, (wait_ms, *stalled))
                with bounded(conn, queue.timeout):
                    if commit:
                        conn.tpc_commit(gid)
                    else:
                        conn.tpc_rollback(gid)
        except psycopg.errors.UndefinedObject:
            outbox_log.info(
                'outbox %s: the prepared transaction %r was ended already',
                queue.name,
                gid,
            )
        except Exception as exc:
            outbox_log.critical(
                'outbox %s: the prepared transaction %r is left: run '
                '"%s PREPARED \'%s\'" on the database (%s)',
                self.queue.name,
                gid,
                verb,
                gid,
                error_text(exc, self.queue.url),
            )

    def _notify(self) -> None:
        from .queue.outbox import CHANNEL, bounded, error_text

        conn: psycopg.Connection[Any] | None = None
        try:
            conn, _ = self._get()
            with bounded(conn, self.queue.timeout):
                conn.execute(f'NOTIFY {CHANNEL}')
                conn.commit()
        except Exception as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            # The processors' interval poll finds the rows anyway.
            outbox_log.warning(
                'outbox %s: NOTIFY failed: %s',
                self.queue.name,
                error_text(exc, self.queue.url),
            )
            return
        self._put(conn)


def _vote_cause(exc: psycopg.Error, url: str) -> str:
    from .queue.outbox import error_text

    cause = error_text(exc, url)
    if 'prepared transactions are disabled' in cause:
        cause = (
            'the server does not allow prepared transactions '
            '(max_prepared_transactions = 0): raise it, or write the '
            "outbox through the application's session (mail.queue_session)"
        )
    return cause


@implementer(IQueueDelivery)
class SessionOutboxDelivery(_Producer):
    """Rows written through the application's SQLAlchemy session.

    ``session`` is a session or ``scoped_session`` (used as it is), or a
    callable taking the request (None outside one) and returning the
    session (``request.dbsession``, say). :meth:`enqueue` runs the INSERT
    at ``send()``, in the session's open transaction, which zope.sqlalchemy
    commits or rolls back with the request's: the row and the
    application's own rows commit together or not at all. The session's
    ``NOTIFY`` is delivered by PostgreSQL at that commit (after it, through
    the outbox's own connection, for a two-phase session, which may not
    notify).
    """

    def __init__(self, queue: OutboxQueue, session: Any):
        super().__init__(queue)
        self.session = session
        self._notifier = OutboxDelivery(queue)
        self._local = threading.local()

    def _session(self, request: Any) -> Any:
        source = self.session
        session = source if hasattr(source, 'execute') else source(request)
        # A scoped_session: the thread's session (its twophase flag).
        registry = getattr(session, 'registry', None)
        return registry() if callable(registry) else session

    def enqueue(self, mail: PreparedMail, request: Any) -> None:
        """Insert ``mail``'s row through the application's session now."""
        from sqlalchemy import text

        from .queue.outbox import CHANNEL

        session = self._session(request)
        sender, recipients, subject, data = _row(mail)[1:]
        insert = (
            'INSERT INTO txmail_outbox '
            '(message_id, sender, recipients, subject, data) '
            'VALUES (:message_id, :sender, :recipients, :subject, :data)'
        )
        if getattr(session, 'twophase', False):
            # PREPARE TRANSACTION refuses a transaction that notified.
            self._local.notify_after = True
        else:
            # One round trip; PostgreSQL delivers the notification at commit.
            insert = (
                f'WITH row AS ({insert} RETURNING id) '
                f"SELECT pg_notify('{CHANNEL}', '') FROM row"
            )
        session.execute(
            text(insert),
            {
                'message_id': mail.message_id,
                'sender': sender,
                'recipients': recipients,
                'subject': subject,
                'data': data,
            },
        )
        _mark_changed(session)

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        # The rows are in the session already; it commits them. vote runs
        # in the thread that sent them.
        notify = getattr(self._local, 'notify_after', False)
        self._local.notify_after = False

        def after_commit() -> None:
            if notify:
                self._notifier._notify()
            self._wake()

        return PendingMail(abort=self._forget, after_commit=after_commit)

    def _forget(self) -> None:
        self._local.notify_after = False


def _mark_changed(session: Any) -> None:
    """Tell zope.sqlalchemy that the session wrote (it rolls back a session
    that only ran SQL statements otherwise)."""
    try:
        from zope.sqlalchemy import mark_changed  # type: ignore[import-untyped]  # no stubs
    except ImportError:  # pragma: no cover - the app commits its session itself
        return
    mark_changed(session)


def delivery_from_settings(
    settings: MailSettings,
) -> OutboxDelivery | SessionOutboxDelivery:
    """The outbox delivery ``mail.queue_url`` and ``mail.queue_session``
    describe; :class:`~pyramid_txmail.settings.SettingsError` naming what to
    install when psycopg is missing."""
    try:
        from .queue.outbox import OutboxQueue
    except ImportError:
        raise SettingsError(
            'mail.queue_url',
            None,
            "needs psycopg 3: pip install 'pyramid_txmail[postgresql]'",
        ) from None
    queue = OutboxQueue(
        settings.queue_url, keep_sent=settings.keep_sent, timeout=settings.timeout
    )
    if settings.queue_session is not None:
        return SessionOutboxDelivery(queue, settings.queue_session)
    return OutboxDelivery(queue)
