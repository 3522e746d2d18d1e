"""In-memory delivery for an application's own tests.

``config.include('pyramid_txmail.testing')`` replaces the real delivery:
``request.mailer.outbox`` collects the messages of committed transactions (in
order) and ``request.mailer.queue`` those sent with ``send_to_queue()``.
Messages are still validated, and events still fire, exactly as in
production; an aborted transaction leaves both lists as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyramid.config import Configurator
from zope.interface import implementer

from .delivery import Notify, PendingMail, ignore_events
from .events import MailSent, Notifier
from .interfaces import IMailDelivery, IMailer, IMailSettings, IPendingMail
from .mailer import Mailer
from .message import PreparedMail
from .settings import MailSettings

__all__ = ['DummyDelivery', 'DummyMailer', 'includeme']


@implementer(IMailDelivery)
class DummyDelivery:
    """Appends the messages the user passed to ``box`` when they commit."""

    def __init__(self, box: list[Any], notify: Notify = ignore_events):
        self.box = box
        self.notify = notify

    def vote(self, mails: Sequence[PreparedMail]) -> IPendingMail:
        return PendingMail(
            finish=lambda: self.box.extend(m.original for m in mails),
            after_commit=lambda: self.notify(
                [MailSent(m.message_id, m.data) for m in mails]
            ),
        )

    def send_now(self, mail: PreparedMail) -> dict[str, tuple[int, str]]:
        self.box.append(mail.original)
        self.notify([MailSent(mail.message_id, mail.data)])
        return {}


class DummyMailer(Mailer):
    """A :class:`~pyramid_txmail.mailer.Mailer` that delivers to two lists.

    ``outbox``: messages sent with ``send()`` (after commit) or
    ``send_immediately()``; ``queue``: messages sent with ``send_to_queue()``.
    Both are shared by every request of the application.
    """

    def __init__(self, settings: MailSettings, notify: Notify = ignore_events):
        self.outbox: list[Any] = []
        self.queue: list[Any] = []
        outbox = DummyDelivery(self.outbox, notify)
        super().__init__(
            settings,
            outbox,
            queue_delivery=DummyDelivery(self.queue, notify),
            immediate=outbox,
        )


def includeme(config: Configurator) -> None:
    """Use :class:`DummyMailer` in place of the real delivery.

    It includes ``pyramid_txmail`` first (a later include of it is then
    skipped), then registers the dummy in an action ordered after the real
    one, so it wins in either include order, with or without autocommit.
    """
    config.include('pyramid_txmail')
    registry = config.registry
    mailer = DummyMailer(registry.getUtility(IMailSettings), Notifier(registry.notify))
    config.action(None, lambda: registry.registerUtility(mailer, IMailer), order=1)
