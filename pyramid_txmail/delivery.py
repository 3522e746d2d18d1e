"""Deliveries: where committed mail goes.

Each class implements :class:`~pyramid_txmail.interfaces.IMailDelivery`:
``vote()`` does the risky part of the commit and returns a pending object
whose ``finish``/``abort``/``after_commit`` the data manager calls (see
:mod:`pyramid_txmail.datamanager`).

* :class:`DirectDelivery` sends over SMTP after the commit.
* :class:`QueuedDelivery` writes into the queue directory during the vote and
  publishes it in ``tpc_finish``; the processor sends.
* :class:`FileDelivery` writes one ``.eml`` file per message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from zope.interface import implementer

from .events import MailEvent, MailFailed, MailSent
from .exceptions import DeliveryError
from .interfaces import IMailDelivery, IPendingMail, IQueueDelivery
from .message import PreparedMail
from .queue import MailQueue
from .settings import MailSettings
from .smtp import SMTPConnection

log = logging.getLogger('pyramid_txmail.delivery')

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


@implementer(IMailDelivery)
class DirectDelivery:
    """SMTP after the commit, all of a transaction's mail on one connection.

    There is no retry: a failure is logged and notified as a permanent
    ``MailFailed``; it never reaches the request.
    """

    def __init__(
        self,
        settings: MailSettings,
        notify: Notify = ignore_events,
        connect: Callable[[], SMTPConnection] | None = None,
    ):
        self.settings = settings
        self.notify = notify
        self.connect = connect or (lambda: SMTPConnection(settings))

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        return PendingMail(after_commit=lambda: self.deliver(mails))

    def deliver(self, mails: Sequence[PreparedMail]) -> None:
        """Send ``mails`` over as few connections as failures allow.

        Over one connection they are pipelined (see
        :meth:`SMTPConnection.send_many`): one round trip per message while
        the request waits. A session that dies takes only the message it was
        sending; the rest go over a new one.
        """
        events: list[MailEvent] = []
        unsent = collections.deque(mails)
        # Ends: every session answers at least its first message.
        while unsent:
            conn = self.connect()
            try:
                conn.open()
            except DeliveryError as exc:
                # The relay is down or refuses us: trying again for every
                # message would only multiply the timeouts.
                for mail in unsent:
                    self._failed(mail, exc, events)
                break
            try:
                # In order, and never more outcomes than messages: each one
                # is the leftmost unsent message's.
                outcomes = conn.send_many([(m, m.envelope, m.data) for m in unsent])
                for mail, outcome in outcomes:
                    unsent.popleft()
                    if isinstance(outcome, DeliveryError):
                        self._failed(mail, outcome, events)
                    else:
                        self._sent(mail, outcome, events)
            finally:
                conn.close()
        self.notify(events)

    @staticmethod
    def _failed(
        mail: PreparedMail, exc: DeliveryError, events: list[MailEvent]
    ) -> None:
        log.error('mail %s not sent: %s', mail.message_id, exc)
        events.append(MailFailed(mail.message_id, mail.data, exc, True))

    @staticmethod
    def _sent(
        mail: PreparedMail,
        refused: dict[str, tuple[int, str]],
        events: list[MailEvent],
    ) -> None:
        if refused:
            log.warning(
                'mail %s refused for %s', mail.message_id, ', '.join(sorted(refused))
            )
        events.append(MailSent(mail.message_id, mail.data, refused))

    def send_now(self, mail: PreparedMail) -> dict[str, tuple[int, str]]:
        conn = self.connect()
        try:
            conn.open()
            refused = conn.send(mail.envelope, mail.data)
        except DeliveryError as exc:
            self.notify([MailFailed(mail.message_id, mail.data, exc, True)])
            raise
        finally:
            conn.close()
        self.notify([MailSent(mail.message_id, mail.data, refused)])
        return refused


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
            queue.sync_staged()
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

    def send_now(self, mail: PreparedMail) -> dict[str, tuple[int, str]]:
        raise TypeError('queued delivery cannot send immediately')


@implementer(IMailDelivery)
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
