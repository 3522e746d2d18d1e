"""The protocols between the layers (zope.interface, as Pyramid does)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMailer(Interface):
    """The application's mailer, registered as a utility by ``includeme``."""

    def send(message):
        """Send ``message`` if and when the current transaction commits."""

    def send_immediately(message, fail_silently=False):
        """Send ``message`` now, outside the transaction."""

    def send_to_queue(message):
        """Queue ``message`` when the transaction commits."""


class IPendingMail(Interface):
    """One transaction's messages for one delivery, after a successful vote."""

    def finish():
        """``tpc_finish``: make the messages visible. Cannot fail, no network."""

    def abort():
        """``tpc_abort``: undo what the vote did. Cannot fail."""

    def after_commit():
        """After the transaction has finished: network I/O and events.

        Failures are logged and notified, never raised."""


class IMailDelivery(Interface):
    """Where committed mail goes: SMTP, the queue, files, or a list."""

    def vote(mails):
        """``tpc_vote``: do the risky work for ``mails`` and return an
        :class:`IPendingMail`. Raising vetoes the whole transaction and
        must leave nothing behind."""

    def send_now(mail):
        """Deliver one prepared message at once; raise on failure.

        Returns the recipients refused while others were accepted."""


class IQueueDelivery(IMailDelivery):
    """A delivery whose messages wait in a queue drained by a processor."""

    wake = Attribute('Callable run after a commit published messages, or None')


class IMailSettings(Interface):
    """The parsed :class:`~pyramid_txmail.settings.MailSettings`, a utility."""
