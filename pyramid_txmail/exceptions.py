"""Every error pyramid_txmail raises on purpose, in one place.

``MailError``
    a message that cannot be sent as given (a ``ValueError``), raised by
    ``send()`` before anything is queued. ``Message.validate()`` raises its
    kinds ``InvalidMessage`` and ``BadHeaders``, pyramid_mailer's names,
    which are also a ``RuntimeError``, as there.
``DeliveryError`` and its kinds
    a message the relay did not take. They subclass
    :class:`smtplib.SMTPException` (itself an :class:`OSError`), so code
    written for pyramid_mailer, whose ``send_immediately`` raises smtplib's
    errors, still catches them.
``QueueError``
    the queue directory cannot be used.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping

__all__ = [
    'BadHeaders',
    'ConfigurationFault',
    'DeliveryError',
    'EncodingError',
    'InvalidMessage',
    'MailError',
    'PermanentDeliveryError',
    'QueueError',
    'TemporaryDeliveryError',
    'UnknownMessage',
]

Refusals = dict[str, tuple[int, str]]


class MailError(ValueError):
    """A message that cannot be sent as given.

    Raised by ``send()`` before anything is queued. ``field`` names the part
    of the message at fault (``'recipients'``, ``'sender'``, a header name)
    and ``value`` the offending value.
    """

    def __init__(self, msg: str, *, field: str | None = None, value: object = None):
        super().__init__(msg)
        self.field = field
        self.value = value


class DeliveryError(smtplib.SMTPException):
    """A message could not be handed to the relay.

    ``code`` is the SMTP reply code, when there was one; ``recipients``
    maps each refused recipient to its ``(code, reply)``; ``permanent``
    says whether trying again can help.
    """

    permanent: bool = False

    def __init__(
        self,
        msg: str,
        *,
        code: int | None = None,
        recipients: Mapping[str, tuple[int, str]] | None = None,
    ):
        super().__init__(msg)
        self.code = code
        self.recipients: Refusals = dict(recipients or {})

    def __str__(self) -> str:  # OSError's str() would show an errno tuple
        return str(self.args[0]) if self.args else ''


class TemporaryDeliveryError(DeliveryError):
    """4xx, refused or dropped connection, timeout: retry later."""

    permanent = False


class PermanentDeliveryError(DeliveryError):
    """5xx for this message, or SMTPUTF8 needed but not offered: give up."""

    permanent = True


class ConfigurationFault(DeliveryError):
    """The connection cannot work as configured; the message is not at fault.

    Login refused (530/534/535/538), STARTTLS not offered while
    ``mail.tls`` is on, a certificate that fails verification, an unreadable
    client certificate or CA file, a relay refusing us at the greeting or
    EHLO.
    """

    permanent = False


class QueueError(Exception):
    """The queue directory cannot be used: the message names path and cause."""


class UnknownMessage(QueueError, KeyError):
    """No message with this id is in the part of the queue asked about."""

    def __str__(self) -> str:  # KeyError would show the repr
        return str(self.args[0]) if self.args else ''


class InvalidMessage(MailError, RuntimeError):
    """pyramid_mailer's name for a message that cannot be sent.

    Raised by :meth:`Message.validate <pyramid_txmail.Message.validate>` and
    ``to_message()``. A :class:`MailError` (a ``ValueError``) and, as in
    pyramid_mailer, a ``RuntimeError``, so either ``except`` catches it.
    """

    def __init__(
        self, msg: str = '', *, field: str | None = None, value: object = None
    ):
        super().__init__(msg, field=field, value=value)


class BadHeaders(MailError, RuntimeError):
    """pyramid_mailer's name for a CR or LF in a header value.

    Raised by :meth:`Message.validate <pyramid_txmail.Message.validate>` and
    ``to_message()``; a :class:`MailError` and a ``RuntimeError``.
    """

    def __init__(
        self, msg: str = '', *, field: str | None = None, value: object = None
    ):
        super().__init__(msg, field=field, value=value)


class EncodingError(Exception):
    """pyramid_mailer's name, kept so that its imports still work.

    Never raised: text that cannot be encoded is a :class:`MailError`.
    """
