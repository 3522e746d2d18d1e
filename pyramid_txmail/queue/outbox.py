"""The shared outbox: the mail queue as a PostgreSQL table (``mail.queue_url``).

:class:`OutboxQueue` is a queue backend (the queue protocol of the
processor and the command line, as :class:`~pyramid_txmail.queue.MailQueue`
is): any number of processors on any number of hosts share one table. A
processor claims one due row at a time with ``SELECT ... FOR UPDATE SKIP
LOCKED`` and holds it under a lease (``lease_owner``, ``lease_until``); every
outcome is recorded only while the lease is still the claim's own, so a
processor whose lease expired and was taken over cannot overwrite the new
holder's outcome. A processor that dies loses its lease, and another takes
the row once it expires.

This module is the backend only. The producers that write committed mail
into the table (:class:`~pyramid_txmail.delivery.OutboxDelivery`, by
two-phase commit, and :class:`~pyramid_txmail.delivery.SessionOutboxDelivery`,
through the application's session) live in :mod:`pyramid_txmail.delivery`,
beside the queue directory's; they use :func:`connect`, :data:`CHANNEL`
and :data:`GID_PREFIX` from here.

Processors are woken at commit through ``LISTEN/NOTIFY`` on the channel
``txmail_outbox`` (:meth:`OutboxQueue.listen`); their interval poll stays the
fallback. psycopg 3 is used directly, one connection per thread; a dropped
connection (a restarted server) is replaced on next use.

Every round trip on the outbox's own connections has ``mail.timeout``
seconds (:func:`bounded`): a server that stops answering (a network
partition, a stalled proxy, a server blocked on I/O or a lock) fails the
call as :class:`Unanswered`, a broken connection, instead of holding a
commit or a processor. Connections also get TCP keepalives and
``tcp_user_timeout`` (:func:`connect`), so that one idle or waiting for
notifications notices a dead peer.

Logger: ``pyramid_txmail.outbox``.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.resources
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg

from ..deadline import Deadline, process_watchdog
from ..exceptions import QueueError, UnknownMessage
from ..message import Envelope
from ..settings import without_password
from .base import STATE_NAMES, Fault
from .base import Entry as Info

__all__ = [
    'CHANNEL',
    'GID_PREFIX',
    'Listener',
    'OutboxClaim',
    'OutboxPass',
    'OutboxQueue',
    'Unanswered',
    'bounded',
    'connect',
    'error_text',
    'schema_sql',
]

log = logging.getLogger('pyramid_txmail.outbox')

#: The NOTIFY channel a commit wakes processors on.
CHANNEL = 'txmail_outbox'
#: The states a row can be in, as ``counts()`` and ``list()`` name them:
#: the protocol's, and ``sent`` (kept for ``mail.keep_sent``, archival:
#: ``list()`` shows them only when asked).
STATES = (*STATE_NAMES, 'sent')
#: Prefix of the global transaction ids of :class:`OutboxDelivery`'s
#: prepared transactions (``pg_prepared_xacts.gid``).
GID_PREFIX = 'pyramid_txmail:'
SCHEMES = ('postgresql', 'postgres', 'postgresql+psycopg')
#: Seconds between the listener's attempts to reach a database that is down.
LISTEN_RETRY = 1.0
#: Seconds ``mail.timeout`` defaults to, for queues made without settings.
TIMEOUT = 30.0
#: Seconds the deadline thread waits for the next round trip before it ends
#: (one thread per round trip would cost more than the round trip).
WATCHDOG_LINGER = 10.0
#: Most sent rows one statement prunes (``mail.keep_sent``).
PRUNE_BATCH = 1000


def schema_sql() -> str:
    """The outbox's schema: ``pyramid_txmail/outbox.sql``, idempotent."""
    return (
        importlib.resources.files('pyramid_txmail.queue')
        .joinpath('outbox.sql')
        .read_text(encoding='utf-8')
    )


# -- URLs


def safe_name(url: str) -> str:
    """``url`` without its password: for logs, errors and the CLI."""
    return without_password(url)


def hide_password(text: str, url: str) -> str:
    """``text`` with the URL's password (wherever it appears) replaced."""
    parts = urlsplit(url)
    secrets = [parts.password] + [
        value for name, value in parse_qsl(parts.query) if name == 'password'
    ]
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return text


def _conninfo(url: str) -> str:
    """What libpq reads: the URL without SQLAlchemy's ``+driver``."""
    scheme, sep, rest = url.partition('://')
    return 'postgresql' + sep + rest if scheme in SCHEMES else url


def _engine_url(engine: Any) -> str:
    """The URL of a SQLAlchemy engine, password included (for libpq only)."""
    return str(engine.url.render_as_string(hide_password=False))


# -- connections


class _Connections:
    """One autocommit connection per thread, replaced when it broke.

    A connection made before a fork is never used (nor closed: closing it
    would end the parent's session) in the child.
    """

    def __init__(self, url: str, name: str, timeout: float = TIMEOUT):
        self.url = url
        self.name = name
        self.timeout = timeout
        self._local = threading.local()
        self._all: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._inherited: list[Any] = []

    def get(self) -> psycopg.Connection[Any]:
        conn = getattr(self._local, 'conn', None)
        pid = getattr(self._local, 'pid', None)
        if conn is not None and pid != os.getpid():  # pragma: no cover - forked
            self._inherited.append(conn)
            conn = None
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.url, self.name, timeout=self.timeout)
            self._local.conn, self._local.pid = conn, os.getpid()
            self._all.add(conn)
        return conn

    def drop(self) -> None:
        """Forget this thread's connection (it failed): the next use makes one."""
        # Only after a statement failed on it: made by get(), in this process.
        conn, self._local.conn = self._local.conn, None
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        for conn in list(self._all):
            with contextlib.suppress(Exception):
                conn.close()


def connect(
    url: str, name: str, *, autocommit: bool = True, timeout: float = TIMEOUT
) -> psycopg.Connection[Any]:
    """A new connection; QueueError naming ``mail.queue_url`` if none can be made.

    The connect itself has ``connect_timeout`` (10 seconds); TCP keepalives
    and ``tcp_user_timeout`` from ``timeout`` (``mail.timeout``) make a
    connection to a peer that vanished fail even while nothing is asked of
    it (a listener waiting for notifications). Each is a default: what the
    URL says wins.
    """
    try:
        conninfo = _conninfo(url)
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        defaults = {
            key: value
            for key, value in _connect_defaults(timeout).items()
            if key not in given
        }
        return psycopg.connect(conninfo, autocommit=autocommit, **defaults)
    except psycopg.Error as exc:
        raise QueueError(
            f'mail.queue_url: cannot connect to {name}: {error_text(exc, url)}'
        ) from None


def _connect_defaults(timeout: float) -> dict[str, Any]:
    """libpq's parameters for a connection bounded by ``timeout`` seconds."""
    seconds = max(1, math.ceil(timeout))
    defaults: dict[str, Any] = {
        'connect_timeout': 10,
        'application_name': 'pyramid_txmail',
        # A dead peer noticed within about twice mail.timeout when idle...
        'keepalives': 1,
        'keepalives_idle': seconds,
        'keepalives_interval': max(1, math.ceil(seconds / 3)),
        'keepalives_count': 3,
        # ... and within mail.timeout when what was sent is not acknowledged.
        'tcp_user_timeout': seconds * 1000,
    }
    if psycopg.pq.version() < 120000:  # pragma: no cover - libpq 11 and older
        del defaults['tcp_user_timeout']
    return defaults


class Unanswered(psycopg.OperationalError):
    """A round trip ran past its deadline (:func:`bounded`): the connection
    was shut down, and is broken."""


@contextlib.contextmanager
def bounded(conn: psycopg.Connection[Any], timeout: float) -> Iterator[None]:
    """Give the calls on ``conn`` inside ``timeout`` seconds in all.

    libpq waits for the server without a limit once connected. The
    outbox's deadline thread shuts the connection's socket down at the
    deadline, which ends the wait; the psycopg error that follows is
    raised as :class:`Unanswered` (an ``OperationalError``: the connection
    is broken, as when the server drops it). A call that ended just as the
    deadline fired has its whole answer; the next one finds the connection
    broken.
    """
    deadline = Deadline(timeout, _watchdog)
    try:
        # A duplicate of libpq's descriptor, made so and not by
        # socket.dup(), which would make the descriptor (libpq's too)
        # blocking; closed by release().
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
        except OSError as exc:  # out of descriptors: as a broken connection
            raise psycopg.OperationalError(
                f'cannot watch the outbox connection ({exc})'
            ) from None
        try:
            deadline.watch(sock, owned=True)
        except RuntimeError as exc:  # the process is at its limit of threads
            raise psycopg.OperationalError(
                f'cannot start the thread that bounds each outbox round trip ({exc})'
            ) from None
        with deadline:
            yield
    except psycopg.Error:
        if deadline.fired is None:
            raise
        raise Unanswered(_no_answer(timeout)) from None
    finally:
        deadline.release()


def _no_answer(timeout: float) -> str:
    return f'no answer within {timeout:g}s (mail.timeout)'


#: The deadline thread of the outbox's round trips, one per process.
_watchdog = process_watchdog('pyramid_txmail-outbox-deadline', linger=WATCHDOG_LINGER)


def error_text(exc: BaseException, url: str) -> str:
    """The first line of a database error, the URL's password hidden."""
    text = str(exc).strip().splitlines()
    return hide_password(text[0] if text else type(exc).__name__, url)


_ENTRY_COLUMNS = """
    id, state, extract(epoch from {now} - queued_at), attempts, recipients,
    last_error, extract(epoch from due), message_id, subject, sender,
    extract(epoch from queued_at), extract(epoch from sent_at), relay_reply
"""


def _entry(row: Sequence[Any]) -> Info:
    (
        id_,
        state,
        age,
        attempts,
        recipients,
        last_error,
        due,
        message_id,
        subject,
        sender,
        queued_at,
        sent_at,
        reply,
    ) = row
    if state == 'sent':
        # What support asks about a sent message: when, and what the relay said.
        when = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(sent_at)))
        last_error = f'sent {when}' + (f': {reply}' if reply else '')
    return Info(
        str(id_),
        state,
        float(age),
        attempts,
        tuple(recipients),
        last_error,
        due=float(due) if state == 'deferred' else None,
        message_id=message_id,
        subject=subject,
        sender=sender,
        queued_at=float(queued_at),
    )


def _ids(ids: Iterable[str]) -> list[int]:
    """Row ids from the command line; UnknownMessage for one that is not."""
    found = []
    for mail_id in ids:
        if not mail_id.isdigit() or len(mail_id) > 18:
            raise UnknownMessage(f'no message {mail_id!r} in the outbox')
        found.append(int(mail_id))
    return found


class OutboxQueue:
    """The outbox table at ``url_or_engine`` (a URL, or a SQLAlchemy engine).

    ``keep_sent`` seconds: how long sent rows are kept (``mail.keep_sent``);
    0 deletes a row once the relay accepted it. ``timeout`` seconds
    (``mail.timeout``) bound each round trip to the database.

    Due times, leases, sent times and ages are the database's clock
    (``now()``), so that processors on hosts whose clocks differ agree;
    :meth:`clock` is then this host's wall clock (``time.time``), which the
    command line shows times against and the processor's due times are
    converted from. Given a ``clock``, the queue stamps and compares with it
    instead, in every statement (the protocol tests drive it with a fake
    clock, as they drive the queue directory).
    """

    def __init__(
        self,
        url_or_engine: Any,
        *,
        keep_sent: float = 0.0,
        clock: Callable[[], float] | None = None,
        timeout: float = TIMEOUT,
    ):
        url = url_or_engine if isinstance(url_or_engine, str) else None
        if url is None:
            url = _engine_url(url_or_engine)
        self.url = url
        #: The URL without its password: for logs, the CLI, the processor registry.
        self.name = safe_name(url)
        self.keep_sent = keep_sent
        self.timeout = timeout
        self.clock = time.time if clock is None else clock
        self._given_clock = clock
        self._conns = _Connections(url, self.name, timeout)
        self._fault_maybe = True
        self._listener: Listener | None = None

    def __repr__(self) -> str:
        return f'<OutboxQueue {self.name}>'

    # -- plumbing

    def _now(self) -> str:
        """The SQL for "now": the database's clock, or the given one."""
        if self._given_clock is None:
            return 'now()'
        # A float, formatted here: nothing a user typed.
        return f'to_timestamp({float(self._given_clock())!r})'

    def _execute(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, what: str
    ) -> psycopg.Cursor[Any]:
        """Run one statement (its own transaction); QueueError on failure."""
        try:
            conn = self._conns.get()
            with bounded(conn, self.timeout):
                return conn.execute(sql, params)
        except QueueError:
            raise
        except psycopg.Error as exc:
            self._failed(exc)
            raise QueueError(
                f'outbox {self.name}: cannot {what}: {error_text(exc, self.url)}'
            ) from None

    def _failed(self, exc: psycopg.Error) -> None:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            self._conns.drop()

    def _columns(self) -> str:
        return _ENTRY_COLUMNS.format(now=self._now())

    def close(self) -> None:
        """Close this queue's connections and stop its listener."""
        if self._listener is not None:
            self._listener.stop()
        self._conns.close()

    def create(self) -> None:
        """Create the outbox tables if missing (``pyramid-txmail initdb``)."""
        self._execute(schema_sql(), what='create the outbox tables')

    # -- the processor

    def start_pass(
        self, *, stale_after: float, horizon: float | None = None
    ) -> OutboxPass:
        """Begin a processor's pass: prune sent rows older than
        ``keep_sent``; the pass then claims due rows one by one.

        Nothing else up front: a row whose lease expired is due again by
        itself. ``horizon`` (the Maildir queue's guard against a clock that
        went back) has no use here: due times are the database's.
        """
        if self.keep_sent > 0:
            # In batches, skipping rows another session holds: each round
            # trip has mail.timeout, and one DELETE of a backlog (keep_sent
            # lowered, a long outage) or one waiting for a lock would fail
            # every pass before it sends anything.
            pruned = PRUNE_BATCH
            while pruned == PRUNE_BATCH:
                pruned = self._execute(
                    # ARRAY(): the batch is chosen once (an IN would let
                    # the planner scan it again, and SKIP LOCKED differ).
                    'DELETE FROM txmail_outbox WHERE id = ANY(ARRAY(SELECT id '
                    "FROM txmail_outbox WHERE state = 'sent' AND sent_at < "
                    f'{self._now()} - make_interval(secs => %s) '
                    'LIMIT %s FOR UPDATE SKIP LOCKED))',
                    (self.keep_sent, PRUNE_BATCH),
                    what='prune sent messages',
                ).rowcount
        return OutboxPass(self, stale_after)

    def _claim(self, stale_after: float) -> OutboxClaim | None:
        owner = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}'
        now = self._now()
        row = self._execute(
            f"""
            UPDATE txmail_outbox SET
                state = 'sending',
                lease_owner = %(owner)s,
                lease_until = {now} + make_interval(secs => %(stale)s),
                due = {now} + make_interval(secs => %(stale)s)
            WHERE id = (
                SELECT id FROM txmail_outbox
                WHERE state IN ('queued', 'deferred', 'sending') AND due <= {now}
                ORDER BY due, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, message_id, sender, recipients, data, attempts,
                extract(epoch from queued_at), last_error
            """,
            {'owner': owner, 'stale': stale_after},
            what='claim a message',
        ).fetchone()
        if row is None:
            return None
        return OutboxClaim(self, owner, *row)

    def _outcome(self, claim: OutboxClaim, sets: str, params: dict[str, Any]) -> None:
        """Record an outcome, while the lease is still ``claim``'s own."""
        cur = self._execute(
            f'UPDATE txmail_outbox SET {sets}, lease_owner = NULL, '
            'lease_until = NULL '
            "WHERE id = %(id)s AND lease_owner = %(owner)s AND state = 'sending'",
            {**params, 'id': int(claim.id), 'owner': claim.owner},
            what=f'record the outcome of {claim.id}',
        )
        if cur.rowcount == 0:
            # Its lease expired and another processor took it over (or it
            # was deleted by hand): that processor records the outcome.
            log.warning(
                'mail %s (%s): the lease was lost before its outcome was '
                'recorded; left to whoever holds it now',
                claim.id,
                claim.message_id,
            )

    def _done(self, claim: OutboxClaim, reply: str | None) -> None:
        if self.keep_sent > 0:
            self._outcome(
                claim,
                f"state = 'sent', sent_at = {self._now()}, relay_reply = %(reply)s",
                {'reply': reply},
            )
            return
        cur = self._execute(
            'DELETE FROM txmail_outbox WHERE id = %s AND lease_owner = %s',
            (int(claim.id), claim.owner),
            what=f'record that {claim.id} was sent',
        )
        if cur.rowcount == 0:
            log.warning(
                'mail %s (%s): the lease was lost before it was recorded as sent',
                claim.id,
                claim.message_id,
            )

    # -- the standing configuration fault

    def record_fault(self, reason: str) -> None:
        """Note that sending is paused by a configuration fault (for every
        processor and ``status`` to see); never raises."""
        self._fault_maybe = True
        try:
            self._execute(
                'INSERT INTO txmail_outbox_fault (id, reason, since) '
                f'VALUES (1, %s, {self._now()}) '
                'ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason',
                (reason,),
                what='record the configuration fault',
            )
        except QueueError as exc:
            log.warning('%s', exc)

    def clear_fault(self) -> None:
        """Sending works again: forget the fault. Never raises.

        Called after every message sent: only this queue's first call and
        those after a :meth:`record_fault` reach the database.
        """
        if not self._fault_maybe:
            return
        try:
            self._execute('DELETE FROM txmail_outbox_fault', what='clear the fault')
        except QueueError as exc:
            log.warning('%s', exc)
            return
        self._fault_maybe = False

    def read_fault(self) -> Fault | None:
        """The standing fault, or None."""
        row = self._execute(
            'SELECT reason, extract(epoch from since) FROM txmail_outbox_fault',
            what='read the configuration fault',
        ).fetchone()
        if row is None:
            return None
        return Fault(reason=row[0], since=float(row[1]))

    # -- the command line

    def counts(self) -> dict[str, int]:
        """How many rows are in each state: every state of :data:`STATES`,
        0 for none (as the queue directory's counts), ``sent`` included."""
        rows = self._execute(
            'SELECT state, count(*) FROM txmail_outbox GROUP BY state',
            what='count messages',
        ).fetchall()
        found = dict.fromkeys(STATES, 0)
        found.update({state: count for state, count in rows})
        return found

    def in_doubt(self) -> list[tuple[str, float]]:
        """The prepared transactions holding rows of this outbox's table
        that are older than ``mail.timeout``, oldest first: each one's
        ``gid`` and age in seconds (the database's clock).

        The own-connection mode's (``pyramid_txmail:...``), or an
        application's two-phase session (SQLAlchemy's ``twophase=True``)
        that wrote mail. Each holds rows that no processor can see until an
        operator runs ``COMMIT PREPARED`` or ``ROLLBACK PREPARED``: its
        process died between the vote and the finish, or could not finish.
        A younger one may be a commit still under way. Found by their lock
        on this outbox's table, so that another application's outbox in
        another schema of the same database is not listed.
        """
        rows = self._execute(
            'SELECT p.gid, extract(epoch FROM now() - p.prepared)::float8 '
            'FROM pg_prepared_xacts p WHERE p.database = current_database() '
            'AND p.prepared < now() - make_interval(secs => %s) '
            # Its locks are those of the holder of its transaction id lock.
            'AND EXISTS (SELECT FROM pg_locks x JOIN pg_locks r '
            'USING (virtualtransaction) '
            "WHERE x.locktype = 'transactionid' AND x.transactionid = p.transaction "
            "AND r.locktype = 'relation' "
            "AND r.relation = 'txmail_outbox'::regclass) "
            'ORDER BY p.prepared, p.gid',
            (self.timeout,),
            what='look for prepared transactions',
        ).fetchall()
        return [(gid, age) for gid, age in rows]

    def list(
        self, states: Iterable[str] | None = None, *, failed: bool = False
    ) -> list[Info]:
        """Rows in ``states`` (default: every state but ``sent``; ``failed``:
        failed) in claim order (due time, then id); sent ones newest first."""
        if states is None:
            states = ('failed',) if failed else [s for s in STATES if s != 'sent']
        rows = self._execute(
            f'SELECT {self._columns()} FROM txmail_outbox WHERE state = ANY(%s) '
            "ORDER BY state = 'sent', sent_at DESC, due, id",
            (list(states),),
            what='list messages',
        ).fetchall()
        return [_entry(row) for row in rows]

    def read(self, mail_id: str) -> tuple[Info, bytes]:
        """One row: its :class:`Info` and its bytes; UnknownMessage if none."""
        [row_id] = _ids([mail_id])
        row = self._execute(
            f'SELECT {self._columns()}, data FROM txmail_outbox WHERE id = %s',
            (row_id,),
            what=f'read {mail_id}',
        ).fetchone()
        if row is None:
            raise UnknownMessage(f'no message {mail_id!r} in the outbox')
        return _entry(row[:-1]), bytes(row[-1])

    def _resolve(
        self, ids: Iterable[str], states: tuple[str, ...]
    ) -> builtins.list[int]:
        """Check that every id is in one of ``states``, before anything
        changes: UnknownMessage, or QueueError for one being sent."""
        wanted = _ids(ids)
        rows = dict(
            self._execute(
                'SELECT id, state FROM txmail_outbox WHERE id = ANY(%s)',
                (wanted,),
                what='look up messages',
            ).fetchall()
        )
        for row_id in wanted:
            state = rows.get(row_id)
            if state == 'sending' and 'sending' not in states:
                raise QueueError(f'{row_id} is being sent now; try again later')
            if state not in states:
                raise UnknownMessage(
                    f'no message {str(row_id)!r} in the outbox ({" or ".join(states)})'
                )
        return wanted

    def _update(self, sql: str, params: Sequence[Any], what: str) -> int:
        return int(self._execute(sql, params, what=what).rowcount)

    def flush(self) -> int:
        """Make every deferred message due now; return how many."""
        return self._update(
            f"UPDATE txmail_outbox SET state = 'queued', due = {self._now()} "
            "WHERE state = 'deferred'",
            (),
            'flush',
        )

    def retry(self, ids: Iterable[str] | None = None) -> int:
        """Failed and deferred messages due now; return how many.

        A failed one starts afresh (attempts 0, ``max_age`` counted from
        now, the last error kept); one with no recipient left is deleted.
        """
        where = "state IN ('failed', 'deferred')"
        params: list[Any] = []
        if ids is not None:
            params.append(self._resolve(ids, ('failed', 'deferred')))
            where += ' AND id = ANY(%s)'
        self._update(
            f'DELETE FROM txmail_outbox WHERE {where} AND cardinality(recipients) = 0',
            params,
            'retry',
        )
        now = self._now()
        return self._update(
            f'UPDATE txmail_outbox SET due = {now}, attempts = CASE WHEN '
            "state = 'failed' THEN 0 ELSE attempts END, queued_at = CASE WHEN "
            f"state = 'failed' THEN {now} ELSE queued_at END, state = 'queued' "
            f'WHERE {where}',
            params,
            'retry',
        )

    def hold(self, ids: Iterable[str]) -> int:
        """Queued or deferred messages are never sent until released."""
        wanted = self._resolve(ids, ('queued', 'deferred', 'held'))
        return self._update(
            "UPDATE txmail_outbox SET state = 'held' "
            "WHERE id = ANY(%s) AND state IN ('queued', 'deferred')",
            (wanted,),
            'hold',
        )

    def release(self, ids: Iterable[str]) -> int:
        """Held messages back to queued, due now."""
        wanted = self._resolve(ids, ('held',))
        return self._update(
            f"UPDATE txmail_outbox SET state = 'queued', due = {self._now()} "
            "WHERE id = ANY(%s) AND state = 'held'",
            (wanted,),
            'release',
        )

    def purge(self, ids: Iterable[str] | None = None, *, failed: bool = False) -> int:
        """Delete messages (any state but sending); ``failed=True`` with no
        ids: every failed one."""
        if ids is None and not failed:
            raise ValueError('purge: give message ids, or failed=True')
        states = (
            ('failed',) if failed else ('queued', 'deferred', 'held', 'failed', 'sent')
        )
        if ids is None:
            return self._update(
                "DELETE FROM txmail_outbox WHERE state = 'failed'", (), 'purge'
            )
        wanted = self._resolve(ids, states)
        return self._update(
            'DELETE FROM txmail_outbox WHERE id = ANY(%s) AND state = ANY(%s)',
            (wanted, list(states)),
            'purge',
        )

    # -- waking processors

    def listen(self, callback: Callable[[], None]) -> Listener:
        """Call ``callback`` on each commit's NOTIFY, from a daemon thread
        (started once per queue object; again in a forked child)."""
        if self._listener is None or self._listener.stopped:
            self._listener = Listener(
                self.url, self.name, callback, timeout=self.timeout
            )
            self._listener.start()
        return self._listener


class OutboxPass:
    """One processor pass: :meth:`claim` takes the next due row, or None."""

    def __init__(self, queue: OutboxQueue, stale_after: float):
        self.queue = queue
        self.stale_after = stale_after

    def claim(self) -> OutboxClaim | None:
        return self.queue._claim(self.stale_after)


class OutboxClaim:
    """A row taken for sending under a lease, until one outcome is recorded.

    Each outcome raises :class:`QueueError` when it cannot be recorded (the
    database is unreachable); the row then stays leased, and another
    processor takes it once the lease expires.
    """

    def __init__(
        self,
        queue: OutboxQueue,
        owner: str,
        row_id: int,
        message_id: str,
        sender: str,
        recipients: list[str],
        data: bytes,
        attempts: int,
        queued_at: Any,
        last_error: str | None,
    ):
        self.queue = queue
        self.owner = owner
        self.id = str(row_id)
        self.message_id = message_id
        self.envelope = Envelope(sender, tuple(recipients))
        self.data = bytes(data)
        self.attempts = attempts
        self.queued_at = float(queued_at)
        self.last_error = last_error
        self._open = True

    def __repr__(self) -> str:
        return f'<OutboxClaim {self.id} {self.message_id}>'

    def _check(self) -> None:
        if not self._open:
            raise QueueError(f'the outcome of {self.id} is already recorded')

    def _record(self, sets: str, params: dict[str, Any]) -> None:
        self._check()
        self.queue._outcome(self, sets, params)
        self._open = False

    def done(self, *, reply: str | None = None) -> None:
        """The relay accepted it: deleted, or kept as ``sent`` with the
        relay's ``reply`` when ``mail.keep_sent`` is set."""
        self._check()
        self.queue._done(self, reply)
        self._open = False

    def defer(
        self, error: str, due: float, *, recipients: Iterable[str] | None = None
    ) -> None:
        """A temporary failure: due again ``due - clock()`` seconds from now
        (by the database's clock), the attempt counted."""
        delay = max(0.0, due - self.queue.clock())
        rcpts = list(self.envelope.recipients if recipients is None else recipients)
        self._record(
            "state = 'deferred', attempts = attempts + 1, last_error = %(error)s, "
            f'due = {self.queue._now()} + make_interval(secs => %(delay)s), '
            'recipients = %(rcpts)s',
            {'error': error, 'delay': delay, 'rcpts': rcpts},
        )

    def fail(self, error: str) -> None:
        """A permanent failure: failed, ``error`` kept."""
        self._record(
            "state = 'failed', attempts = attempts + 1, last_error = %(error)s, "
            f'due = {self.queue._now()}',
            {'error': error},
        )

    def set_aside(self, reason: str, *, delivered: Iterable[str] = ()) -> None:
        """Failed without counting an attempt, ``reason`` kept; the
        recipients in ``delivered`` have it and are dropped from the row, so
        that a retry does not send it to them again."""
        have = set(delivered)
        rest = [r for r in self.envelope.recipients if r not in have]
        self._record(
            f"state = 'failed', last_error = %(reason)s, due = {self.queue._now()}, "
            'recipients = %(rcpts)s',
            {'reason': reason, 'rcpts': rest},
        )

    def release(self) -> None:
        """Back to queued, unchanged and due now."""
        self._record(f"state = 'queued', due = {self.queue._now()}", {})

    def abandon(self) -> None:
        """Leave it leased: due again when the lease expires. No I/O, so it
        works while the database is unreachable."""
        self._open = False


# -- waking processors


class Listener:
    """``LISTEN txmail_outbox`` in a daemon thread, calling ``callback`` for
    each notification. A lost connection is made again (every
    :data:`LISTEN_RETRY` seconds while the database is down), and
    ``callback`` is called once after, for what may have been missed.

    ``LISTEN`` has ``timeout`` seconds. The wait for notifications has
    none, but after every ``timeout`` seconds of it a ``SELECT 1`` (with
    ``timeout`` seconds) checks that the server still answers, and a peer
    that vanished is noticed by the connection's keepalives too (see
    :func:`connect`): a listener whose database stopped answering
    reconnects within about twice ``timeout``."""

    def __init__(
        self,
        url: str,
        name: str,
        callback: Callable[[], None],
        *,
        timeout: float = TIMEOUT,
    ):
        self.url = url
        self.name = name
        self.callback = callback
        self.timeout = timeout
        self.stopped = False
        self._stop = threading.Event()
        self._thread = self._new_thread()
        _LISTENERS.add(self)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(
            target=self._run, name='pyramid_txmail-listener', daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        _install_fork_hook()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        missed = False
        while not self._stop.is_set():
            try:
                conn = connect(self.url, self.name, timeout=self.timeout)
            except QueueError as exc:
                log.warning('cannot listen for new mail: %s', exc)
                missed = True
                self._stop.wait(LISTEN_RETRY)
                continue
            try:
                with bounded(conn, self.timeout):
                    conn.execute(f'LISTEN {CHANNEL}')
                if missed:
                    self._call()
                    missed = False
                check_at = time.monotonic() + self.timeout
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=0.5):
                        self._call()
                    if time.monotonic() >= check_at:
                        # A path that stalls keeps the connection open, and
                        # silence is what a listener expects: ask.
                        with bounded(conn, self.timeout):
                            conn.execute('SELECT 1')
                        check_at = time.monotonic() + self.timeout
            except psycopg.Error as exc:
                log.warning(
                    'listening for new mail on %s: %s',
                    self.name,
                    error_text(exc, self.url),
                )
                missed = True
                self._stop.wait(LISTEN_RETRY)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _call(self) -> None:
        try:
            self.callback()
        except Exception:
            log.exception('waking the processor failed')

    def _after_fork_in_child(self) -> None:  # pragma: no cover - in a forked child
        # The parent's thread is gone here, and its connection is the
        # parent's: keep it unused (never closed) and listen anew.
        self._thread = self._new_thread()
        if not self.stopped:
            self.start()


_LISTENERS: weakref.WeakSet[Listener] = weakref.WeakSet()
_fork_hook = False


def _install_fork_hook() -> None:
    global _fork_hook
    if not _fork_hook:
        _fork_hook = True
        os.register_at_fork(after_in_child=_restart_listeners)


def _restart_listeners() -> None:  # pragma: no cover - in a forked child
    for listener in list(_LISTENERS):
        listener._after_fork_in_child()
