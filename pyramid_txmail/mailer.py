"""The mailer: what ``request.mailer`` and ``get_mailer()`` return.

A :class:`Mailer` is bound to one transaction manager; ``bind()`` makes a
copy for another (each request's ``request.tm``) that shares everything else,
including the key under which a transaction keeps its one data manager.
"""

from __future__ import annotations

import copy
import logging
from email.message import EmailMessage

import transaction
from zope.interface import implementer

from .datamanager import MailDataManager
from .delivery import (
    DirectDelivery,
    FileDelivery,
    Notify,
    QueuedDelivery,
    ignore_events,
)
from .exceptions import DeliveryError
from .interfaces import IMailDelivery, IMailer
from .message import Message, PreparedMail, prepare
from .settings import MailSettings

log = logging.getLogger('pyramid_txmail')


@implementer(IMailer)
class Mailer:
    """Sends mail through a transaction.

    ``delivery`` serves :meth:`send`; ``queue_delivery`` serves
    :meth:`send_to_queue` (None without ``mail.queue_path``); ``immediate``
    serves :meth:`send_immediately`. ``transaction_manager`` None means the
    thread's default :data:`transaction.manager`.
    """

    def __init__(
        self,
        settings: MailSettings,
        delivery: IMailDelivery,
        *,
        queue_delivery: IMailDelivery | None = None,
        immediate: IMailDelivery | None = None,
        transaction_manager: transaction.TransactionManager | None = None,
    ):
        self.settings = settings
        self.delivery = delivery
        self.queue_delivery = queue_delivery
        self.immediate = immediate or DirectDelivery(settings)
        self._transaction_manager = transaction_manager
        self._key: object = self

    @classmethod
    def from_settings(
        cls, settings: MailSettings, notify: Notify = ignore_events
    ) -> Mailer:
        """The mailer ``settings`` describe, its events going to ``notify``."""
        direct = DirectDelivery(settings, notify)
        queued = QueuedDelivery(settings.queue_path) if settings.queue_path else None
        if settings.delivery == 'queued':
            delivery: IMailDelivery = queued  # type: ignore[assignment]
        elif settings.delivery == 'file':
            delivery = FileDelivery(settings.file_path, notify)  # type: ignore[arg-type]
        else:
            delivery = direct
        return cls(settings, delivery, queue_delivery=queued, immediate=direct)

    @property
    def transaction_manager(self) -> transaction.TransactionManager:
        return self._transaction_manager or transaction.manager

    def bind(self, transaction_manager: transaction.TransactionManager) -> Mailer:
        """This mailer, sending through ``transaction_manager``."""
        bound = copy.copy(self)
        bound._transaction_manager = transaction_manager
        return bound

    def prepare(self, message: Message | EmailMessage) -> PreparedMail:
        """Check and serialize ``message``; raise :class:`MailError` if bad."""
        return prepare(
            message,
            default_sender=self.settings.default_sender,
            message_id_domain=self.settings.message_id_domain,
        )

    def send(self, message: Message | EmailMessage) -> str:
        """Send ``message`` when the current transaction commits.

        Returns its Message-ID. Raises :class:`MailError` at once for a
        message that cannot be sent; nothing is kept for it.
        """
        return self._join(self.delivery, message)

    def send_to_queue(self, message: Message | EmailMessage) -> str:
        """Queue ``message`` when the transaction commits, whatever
        ``mail.delivery`` says. Needs ``mail.queue_path``."""
        if self.queue_delivery is None:
            raise RuntimeError('send_to_queue() needs mail.queue_path to be set')
        return self._join(self.queue_delivery, message)

    def send_immediately(
        self, message: Message | EmailMessage, fail_silently: bool = False
    ) -> str:
        """Send ``message`` now, outside the transaction.

        Raises the delivery error unless ``fail_silently``, in which case the
        failure is only logged (pyramid_mailer's escape hatch).
        """
        mail = self.prepare(message)
        try:
            self.immediate.send_now(mail)
        except DeliveryError:
            if not fail_silently:
                raise
            log.exception('mail %s not sent', mail.message_id)
        return mail.message_id

    def _join(self, delivery: IMailDelivery, message: Message | EmailMessage) -> str:
        mail = self.prepare(message)
        dm = MailDataManager.join(self.transaction_manager, self._key)
        dm.add(delivery, mail)
        return mail.message_id
