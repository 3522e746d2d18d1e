"""In-memory delivery for an application's own tests.

``config.include('pyramid_txmail.testing')`` replaces the real delivery with
a :class:`DummyMailer`, which ``request.mailer`` and ``get_mailer()`` (also
for a :class:`pyramid.testing.DummyRequest`) then return. It keeps two
records of what the application sent:

``outbox`` and ``queue``
    pyramid_mailer's: every message passed to ``send()`` (and
    ``send_immediately()``) or ``send_to_queue()``, at the call, whether or
    not its transaction later commits.
``sent`` and ``sent_to_queue``
    what would have left the process: the messages whose transaction
    committed, in commit order (``send_immediately()``'s at once); an
    aborted transaction adds nothing. This is the record to assert on.

Messages are still validated (except that none needs a sender) and events
still fire at commit, exactly as in production.

A message sent with ``send_template()`` is recorded as the
:class:`~pyramid_txmail.templates.TemplatedMessage` it rendered, which
carries ``template`` (the name given), ``template_values`` (a copy of the
values given) and ``locale`` beside the rendered subject, body and HTML, so
a test asserts ``mailer.sent[0].template_values['link']`` without parsing
MIME.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from pyramid.config import Configurator
from zope.interface import implementer

from .delivery import Notify, PendingMail, ignore_events
from .events import MailSent, Notifier
from .interfaces import IImmediateDelivery, IMailer, IMailSettings, IPendingMail
from .mailer import Mailer
from .message import Message, PreparedMail, prepare
from .settings import MailSettings

__all__ = ['DummyDelivery', 'DummyMailer', 'includeme']

# The envelope sender of a test message that names none, where
# pyramid_mailer's DummyMailer asks for no sender at all.
NO_SENDER = 'nobody@localhost'


@implementer(IImmediateDelivery)
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
    """A :class:`~pyramid_txmail.mailer.Mailer` that delivers to lists.

    ``DummyMailer()`` needs no arguments, as pyramid_mailer's does.

    ``outbox``: every message passed to ``send()`` or ``send_immediately()``,
    at the call; ``queue``: every message passed to ``send_to_queue()``, at
    the call (pyramid_mailer's lists).

    ``sent``: the messages of ``send()`` whose transaction committed, in
    order, and those of ``send_immediately()`` at once; ``sent_to_queue``:
    those of ``send_to_queue()`` whose transaction committed. An abort adds
    nothing to either.

    The lists hold the objects passed in and are shared by every copy
    ``bind()`` makes, so by every request of the application.
    """

    def __init__(
        self, settings: MailSettings | None = None, notify: Notify = ignore_events
    ):
        self.outbox: list[Any] = []
        self.queue: list[Any] = []
        self.sent: list[Any] = []
        self.sent_to_queue: list[Any] = []
        sent = DummyDelivery(self.sent, notify)
        super().__init__(
            settings or MailSettings(),
            sent,
            queue_delivery=DummyDelivery(self.sent_to_queue, notify),
            immediate=sent,
        )

    def prepare(self, message: Message | EmailMessage) -> PreparedMail:
        """As the real mailer's, but a message needs no sender."""
        return prepare(
            message,
            default_sender=self.settings.default_sender or NO_SENDER,
            message_id_domain=self.settings.message_id_domain,
        )

    def send(self, message: Message | EmailMessage) -> str:
        """Append ``message`` to ``outbox`` now, to ``sent`` at commit."""
        message_id = super().send(message)
        self.outbox.append(message)
        return message_id

    def send_immediately(
        self, message: Message | EmailMessage, fail_silently: bool = False
    ) -> str:
        """Append ``message`` to ``outbox`` and ``sent`` now."""
        message_id = super().send_immediately(message, fail_silently)
        self.outbox.append(message)
        return message_id

    def send_to_queue(self, message: Message | EmailMessage) -> str:
        """Append ``message`` to ``queue`` now, to ``sent_to_queue`` at commit."""
        message_id = super().send_to_queue(message)
        self.queue.append(message)
        return message_id


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
