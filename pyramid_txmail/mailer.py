"""The mailer: what ``request.mailer`` and ``get_mailer()`` return.

A :class:`Mailer` is bound to one transaction manager; ``bind()`` makes a
copy for another (each request's ``request.tm``) that shares everything else,
including the key under which a transaction keeps its one data manager.

It also takes pyramid_mailer's ways of making one, so that code written for
pyramid_mailer runs once the package name is changed: keyword options
(``Mailer(host=..., port=...)``), :meth:`Mailer.from_settings` on an .ini's
settings, and ``bind(default_sender=..., transaction_manager=...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import weakref
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import transaction
from pyramid.path import caller_package
from zope.interface import implementer

from .datamanager import MailDataManager
from .delivery import (
    DirectDelivery,
    FileDelivery,
    Notify,
    QueuedDelivery,
    delivery_from_settings,
    ignore_events,
)
from .exceptions import DeliveryError
from .interfaces import IImmediateDelivery, IMailDelivery, IMailer
from .message import Message, PreparedMail, parse_address, prepare
from .settings import (
    KEYS,
    PYRAMID_MAILER_ONLY,
    MailSettings,
    parse_settings,
)
from .templates import from_template

log = logging.getLogger('pyramid_txmail')

# What Mailer(**options) takes: every setting, under its name without the
# prefix, and the pyramid_mailer options that have no meaning here (warned
# about, as in the settings).
OPTIONS = frozenset(name for name, _ in KEYS) | frozenset(PYRAMID_MAILER_ONLY)
BIND_OPTIONS = ('default_sender', 'transaction_manager')


def _invalid(names: set[str]) -> ValueError:
    return ValueError('invalid options: ' + ', '.join(sorted(names)))


@implementer(IMailer)
class Mailer:
    """Sends mail through a transaction.

    Made by ``config.include('pyramid_txmail')`` from the settings, or by
    hand as pyramid_mailer's is: ``Mailer(host=..., port=...)`` or
    :meth:`from_settings`.

    ``delivery`` serves :meth:`send`; ``queue_delivery`` serves
    :meth:`send_to_queue` (None without ``mail.queue_path``); ``immediate``
    serves :meth:`send_immediately`. ``transaction_manager`` None means the
    thread's default :data:`transaction.manager`.
    """

    def __init__(
        self,
        settings: MailSettings | None = None,
        delivery: IMailDelivery | None = None,
        *,
        queue_delivery: IMailDelivery | None = None,
        immediate: IImmediateDelivery | None = None,
        transaction_manager: transaction.TransactionManager | None = None,
        notify: Notify = ignore_events,
        **options: Any,
    ):
        """Either ``settings`` (and optionally the deliveries), or options.

        ``Mailer(host='smtp.example.com', port=587, tls=True, ...)`` takes
        pyramid_mailer's keywords (and every other setting's name), checked
        like the ``mail.*`` settings: a bad value raises
        :class:`~pyramid_txmail.settings.SettingsError` naming the keyword,
        an unknown keyword :class:`ValueError`. Without ``delivery`` the
        deliveries are the ones the settings describe, their events going
        to ``notify``.
        """
        if settings is None:
            unknown = set(options) - OPTIONS
            if unknown:
                raise _invalid(unknown)
            # pyramid_mailer's defaults (None, debug=0) are not worth a warning.
            given = {
                name: value
                for name, value in options.items()
                if value is not None and (value or name not in PYRAMID_MAILER_ONLY)
            }
            settings = parse_settings(given, prefix='')
        elif options:
            raise TypeError('pass either settings or keyword options, not both')
        if delivery is None:
            direct = DirectDelivery(settings, notify)
            if settings.queue_path:
                queue_delivery = QueuedDelivery(settings.queue_path)
            elif settings.queue_url:
                queue_delivery = delivery_from_settings(settings)
            if settings.delivery == 'queued':
                delivery = queue_delivery
            elif settings.delivery == 'file':
                # parse_settings refuses 'file' without a file_path
                delivery = FileDelivery(settings.file_path, notify)  # type: ignore[arg-type]  # see above
            else:
                delivery = direct
            immediate = direct
        self.settings = settings
        # Never None here: parse_settings refuses 'queued' without queue_path.
        self.delivery: IMailDelivery = delivery  # type: ignore[assignment]  # see above
        self.queue_delivery = queue_delivery
        self.immediate = immediate or DirectDelivery(settings)
        self._transaction_manager = transaction_manager
        self._key: object = self
        self._request: weakref.ref[Any] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, object] | MailSettings | None,
        prefix: str = 'mail.',
        *,
        notify: Notify = ignore_events,
    ) -> Mailer:
        """The mailer an application's settings describe.

        ``settings`` is the settings dictionary (an .ini's ``[app:...]``
        section: the keys starting with ``prefix`` are read, as
        pyramid_mailer's ``from_settings`` does) or a parsed
        :class:`~pyramid_txmail.settings.MailSettings`. A bad value raises
        :class:`~pyramid_txmail.settings.SettingsError` naming the key.
        Events go to ``notify``; ``config.include('pyramid_txmail')`` sends
        them to the registry's subscribers.
        """
        if not isinstance(settings, MailSettings):
            settings = parse_settings(settings or {}, prefix=prefix)
        return cls(settings, notify=notify)

    @property
    def transaction_manager(self) -> transaction.TransactionManager:
        return self._transaction_manager or transaction.manager

    @property
    def default_sender(self) -> str | None:
        """The sender of messages that name none (``mail.default_sender``)."""
        return self.settings.default_sender

    @property
    def queue_path(self) -> str | None:
        """The queue directory (``mail.queue_path``), or None."""
        return self.settings.queue_path

    def bind(
        self,
        transaction_manager: transaction.TransactionManager | None = None,
        **options: Any,
    ) -> Mailer:
        """A copy of this mailer with some options replaced.

        As in pyramid_mailer, the options are ``transaction_manager`` (whose
        transactions :meth:`send` joins) and ``default_sender``; any other
        raises :class:`ValueError`. The copy shares the deliveries, and a
        transaction's one data manager, with this mailer.
        """
        unknown = set(options) - set(BIND_OPTIONS)
        if unknown:
            raise _invalid(unknown)
        bound = copy.copy(self)
        if transaction_manager is not None:
            bound._transaction_manager = transaction_manager
        if 'default_sender' in options:
            sender = options['default_sender'] or None
            if sender is not None:
                parse_address(sender, 'default_sender')
            bound.settings = dataclasses.replace(self.settings, default_sender=sender)
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

    @property
    def request(self) -> Any:
        """The request this mailer serves (``request.mailer``'s), or None."""
        return self._request() if self._request is not None else None

    def for_request(self, request: Any) -> Mailer:
        """A copy bound to ``request``'s transaction manager (``request.tm``),
        whose :meth:`send_template` renders with ``request``."""
        bound = self.bind(
            transaction_manager=getattr(request, 'tm', None) or transaction.manager
        )
        # Weak: request.mailer is reified on the request, and a strong
        # reference back would make every request a reference cycle.
        bound._request = weakref.ref(request)
        return bound

    def send_template(
        self,
        name: str,
        values: Mapping[str, Any] | None = None,
        *,
        recipients: list[Any] | None = None,
        locale: str | None = None,
        **kw: Any,
    ) -> str:
        """Render the template ``name`` with ``values`` and :meth:`send` it.

        Subject, text and HTML come from ``NAME.subject.*``, ``NAME.txt.*``
        and ``NAME.html.*`` through Pyramid's renderers (see
        :doc:`templates`), with the request (this mailer's, else the
        current one) and in ``locale`` when given. The other keywords are
        the :class:`~pyramid_txmail.Message`'s (``sender``, ``cc``,
        ``attachments``, ``subject`` instead of the subject template...),
        plus ``request`` and ``package`` (what a relative ``name`` is
        relative to; default: the caller's). Returns the Message-ID.

        A missing template, a renderer's error or a subject that is not one
        line raise :class:`MailError` naming the template, before anything
        joins the transaction.
        """
        kw.setdefault('package', caller_package())
        kw.setdefault('request', self.request)
        kw.setdefault('inline_css', self.settings.inline_css)
        message = from_template(
            name, values, recipients=recipients, locale=locale, **kw
        )
        return self.send(message)

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
        # The outbox through the application's session writes its row now,
        # in that session's transaction (mail.queue_session).
        enqueue = getattr(delivery, 'enqueue', None)
        if enqueue is not None:
            enqueue(mail, self.request)
        dm.add(delivery, mail)
        return mail.message_id


def __getattr__(name: str) -> Any:
    # pyramid_mailer documents its DummyMailer in pyramid_mailer.mailer; ours
    # lives in pyramid_txmail.testing (a layer above), imported on demand.
    if name == 'DummyMailer':
        from .testing import DummyMailer

        return DummyMailer
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
