"""The protocols between the layers (zope.interface, as Pyramid does)."""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IMailer(Interface):
    """The application's mailer, registered as a utility by ``includeme``."""

    def send(message: Any) -> str:
        """Send ``message`` if and when the current transaction commits."""

    def send_immediately(message: Any, fail_silently: bool = False) -> str | None:
        """Send ``message`` now, outside the transaction."""

    def send_to_queue(message: Any) -> str:
        """Queue ``message`` when the transaction commits."""


class IPendingMail(Interface):
    """One transaction's messages for one delivery, after a successful vote."""

    def finish() -> None:
        """``tpc_finish``: make the messages visible. Cannot fail, no network."""

    def abort() -> None:
        """``tpc_abort``: undo what the vote did. Cannot fail."""

    def after_commit() -> None:
        """After the transaction has finished: network I/O and events.

        Failures are logged and notified, never raised."""


class IMailDelivery(Interface):
    """Where committed mail goes: SMTP, the queue, files, or a list."""

    def vote(mails: Any) -> IPendingMail:
        """``tpc_vote``: do the risky work for ``mails`` and return an
        :class:`IPendingMail`. Raising vetoes the whole transaction and
        must leave nothing behind."""


class IImmediateDelivery(IMailDelivery):
    """A delivery that can also send one message at once, outside any
    transaction (``send_immediately()``): SMTP, files, the test record."""

    def send_now(mail: Any) -> dict[str, tuple[int, str]]:
        """Deliver one prepared message at once; raise on failure.

        Returns the recipients refused while others were accepted."""


class IQueueDelivery(IMailDelivery):
    """A delivery whose messages wait in a queue drained by a processor;
    it cannot send at once."""

    queue = Attribute('The queue its commits write to, which a processor drains')
    wake = Attribute(
        'Callable run after a commit published messages, or None; set by the '
        'processor started in this process, which is made after the delivery'
    )


class IMailSettings(Interface):
    """The parsed :class:`~pyramid_txmail.settings.MailSettings`, a utility."""
