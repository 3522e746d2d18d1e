"""pyramid_txmail: transactional email for Pyramid.

``config.include('pyramid_txmail')`` reads the ``mail.*`` settings, includes
pyramid_tm, and gives every request a ``request.mailer`` whose ``send()``
joins the request's transaction. This module only wires; the behaviour lives
in plain classes (see :doc:`internals`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import transaction
from pyramid.config import Configurator
from pyramid.events import ApplicationCreated
from pyramid.interfaces import IRequest

from .events import Notifier
from .exceptions import DeliveryError, MailError
from .interfaces import IMailer, IMailSettings, IQueueDelivery
from .mailer import Mailer
from .message import Attachment, Message
from .previews import add_mail_previews
from .processor import ensure_processor
from .settings import parse_settings, settings_prefix

__all__ = [
    'Attachment',
    'DeliveryError',
    'MailError',
    'Message',
    'get_mailer',
    'includeme',
    'mailer_factory_from_settings',
]


def includeme(config: Configurator) -> None:
    """Configure mail from the ``mail.*`` settings.

    ``pyramid_txmail.prefix`` (or pyramid_mailer's ``pyramid_mailer.prefix``)
    replaces the ``mail.`` prefix. Raises
    :class:`pyramid.exceptions.ConfigurationError` naming the key for a bad
    setting. The queue processor (queued delivery) starts when the
    application is created, never here.
    """
    raw = config.registry.settings or {}
    settings = parse_settings(raw, prefix=settings_prefix(raw))
    config.registry.registerUtility(settings, IMailSettings)
    config.include('pyramid_tm')
    mailer = Mailer.from_settings(settings, notify=Notifier(config.registry.notify))
    config.action(
        ('pyramid_txmail', 'mailer'),
        lambda: config.registry.registerUtility(mailer, IMailer),
    )
    config.add_request_method(_request_mailer, 'mailer', reify=True)
    config.add_directive('add_mail_previews', add_mail_previews)
    config.add_subscriber(_start_processor, ApplicationCreated)


def get_mailer(request_or_registry: Any) -> Mailer:
    """The mailer for a request, or for a registry outside any request.

    Given a request, it is ``request.mailer`` (bound to ``request.tm``); given
    a registry, a mailer bound to the thread's default
    :data:`transaction.manager`, for scripts and workers. A
    :class:`pyramid.testing.DummyRequest`, which has no ``request.mailer``,
    gets its registry's mailer bound to its ``tm`` if it has one, else to
    the thread's default manager, as with pyramid_mailer.
    """
    if IRequest.providedBy(request_or_registry):
        request = request_or_registry
        bound: Mailer | None = getattr(request, 'mailer', None)
        if bound is not None:
            return bound
        registry = request.registry
    else:
        registry, request = request_or_registry, None
    mailer: Mailer = registry.getUtility(IMailer)
    if request is not None and isinstance(mailer, Mailer):
        return mailer.for_request(request)
    # By keyword, as pyramid_mailer does: an app's own IMailer may take no other.
    tm = getattr(request, 'tm', None)
    return mailer.bind(transaction_manager=tm or transaction.manager)


def mailer_factory_from_settings(
    settings: Mapping[str, object] | None, prefix: str = 'mail.'
) -> Mailer:
    """pyramid_mailer's name for :meth:`Mailer.from_settings
    <pyramid_txmail.mailer.Mailer.from_settings>`: a mailer from an
    application's settings, outside ``config.include``."""
    return Mailer.from_settings(settings, prefix)


_autostart: ContextVar[bool] = ContextVar('pyramid_txmail_autostart', default=True)


@contextmanager
def suppress_processor() -> Iterator[None]:
    """Within this block, creating an app starts no queue processor thread.

    ``pyramid-txmail process`` loads the application for its event
    subscribers and runs the processor itself, in the foreground.
    """
    token = _autostart.set(False)
    try:
        yield
    finally:
        _autostart.reset(token)


def _request_mailer(request: Any) -> Mailer:
    mailer: Mailer = request.registry.getUtility(IMailer)
    if isinstance(mailer, Mailer):
        return mailer.for_request(request)
    # An app's own IMailer, bound by keyword as pyramid_mailer does.
    return mailer.bind(transaction_manager=request.tm)


def _start_processor(event: ApplicationCreated) -> None:
    registry = event.app.registry
    mailer: Mailer = registry.getUtility(IMailer)
    # An app may have registered a mailer of its own, with no queue.
    queued: IQueueDelivery | None = getattr(mailer, 'queue_delivery', None)
    if (
        _autostart.get()
        and queued is not None
        and IQueueDelivery.providedBy(queued)
        and mailer.settings.queue_processor
    ):
        thread = ensure_processor(
            queued.queue, mailer.settings, Notifier(registry.notify)
        )
        queued.wake = thread.wake
        # The shared outbox: other hosts' commits wake it too (LISTEN/NOTIFY).
        listen = getattr(queued.queue, 'listen', None)
        if listen is not None:
            listen(thread.wake)
