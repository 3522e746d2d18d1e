"""Events: how the outcome of a delivery reaches the application.

Subscribe with ``config.add_subscriber(handler, MailSent)`` (or
``MailFailed``). Events are notified after the sending transaction has
finished, each inside a transaction of its own, so a subscriber may write to
the database. A subscriber that raises is logged and does not stop delivery.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable, Iterable, Mapping
from email.message import EmailMessage

import transaction

log = logging.getLogger('pyramid_txmail.events')


class MailEvent:
    """Base of :class:`MailSent` and :class:`MailFailed`.

    ``message_id`` is the Message-ID header value; ``message`` the
    :class:`~email.message.EmailMessage` as sent (without Bcc), parsed from
    the bytes on first access so that an event nobody reads costs nothing.
    ``transaction_manager`` is the manager whose transaction the subscriber
    runs in: use it (not the thread's default manager, which may still hold
    the finished sending transaction) to join database work to the event.
    """

    transaction_manager: transaction.TransactionManager | None = None

    def __init__(self, message_id: str, data: bytes):
        self.message_id = message_id
        self.data = data
        self._message: EmailMessage | None = None

    @property
    def message(self) -> EmailMessage:
        if self._message is None:
            # The bytes are as on the wire (CRLF); Python text uses '\n'.
            self._message = email.message_from_bytes(
                self.data.replace(b'\r\n', b'\n'), policy=email.policy.default
            )
        return self._message

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.message_id}>'


class MailSent(MailEvent):
    """The relay accepted the message (or the file/test delivery stored it).

    ``refused`` maps recipients the relay refused while accepting the others
    to ``(code, reply)``; it is empty when every recipient was accepted.
    """

    def __init__(
        self,
        message_id: str,
        data: bytes,
        refused: Mapping[str, tuple[int, str]] | None = None,
    ):
        super().__init__(message_id, data)
        self.refused = dict(refused or {})


class MailFailed(MailEvent):
    """A delivery attempt failed.

    ``error`` is the exception; ``permanent`` is true when the message will
    not be tried again (a 5xx reply, or ``mail.max_age`` passed), false
    when it stays queued for a retry.

    ``error`` and every exception in its ``__cause__``/``__context__`` chain
    have their ``__traceback__`` cleared: a traceback keeps every frame it
    passed through alive with all their local variables (a processor's
    listing of the whole queue, say), for as long as a subscriber keeps the
    event. The log record of the failure is where to look for the where.
    """

    def __init__(
        self,
        message_id: str,
        data: bytes,
        error: BaseException,
        *,
        permanent: bool,
    ) -> None:
        super().__init__(message_id, data)
        self.error = _without_tracebacks(error)
        self.permanent = permanent


def _without_tracebacks(error: BaseException) -> BaseException:
    """``error`` with no traceback on it or on any exception it links to."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        todo += [exc.__cause__, exc.__context__]
    return error


class Notifier:
    """Calls ``notify(event)`` for each event, each in a fresh transaction.

    A new :class:`transaction.TransactionManager` per event because this runs
    from after-commit hooks, while the sending manager still holds its
    committed transaction; a subscriber's failure aborts only its own
    transaction and is logged.
    """

    def __init__(
        self,
        notify: Callable[[object], object],
        manager_factory: Callable[
            [], transaction.TransactionManager
        ] = transaction.TransactionManager,
    ):
        self._notify = notify
        self._manager_factory = manager_factory

    def __call__(self, events: Iterable[MailEvent]) -> None:
        for event in events:
            manager = self._manager_factory()
            event.transaction_manager = manager
            try:
                with manager:
                    self._notify(event)
            except Exception:
                log.exception('subscriber failed for %r', event)
