"""The SMTP client, in two layers.

:mod:`.session`
    :class:`SMTPConnection`: one session with the relay over
    :mod:`smtplib` (connect, EHLO, STARTTLS, AUTH, deadlines, error
    translation) and lock-step sending of one message.
:mod:`.pipeline`
    :class:`Pipeline`: RFC 2920 pipelining of many messages over a session,
    pushed one at a time, each outcome returned as soon as it is known.
:mod:`.pool`
    :class:`SessionPool`: open sessions kept between transactions
    (``mail.pool_size``), checked before reuse, per process.

Every failure leaves this package as a :class:`DeliveryError`: a
:class:`TemporaryDeliveryError`, :class:`PermanentDeliveryError` or
:class:`ConfigurationFault` (see :mod:`pyramid_txmail.exceptions`).
Logger: ``pyramid_txmail.smtp``.
"""

from pyramid_txmail.exceptions import (
    ConfigurationFault,
    DeliveryError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)

from .pipeline import Outcome, Pipeline
from .pool import SessionPool
from .session import (
    AUTH_MECHANISMS,
    SHOWN_REFUSALS,
    Accepted,
    SMTPConnection,
    make_ssl_context,
)

__all__ = [
    'AUTH_MECHANISMS',
    'SHOWN_REFUSALS',
    'Accepted',
    'ConfigurationFault',
    'DeliveryError',
    'Outcome',
    'PermanentDeliveryError',
    'Pipeline',
    'SMTPConnection',
    'SessionPool',
    'TemporaryDeliveryError',
    'make_ssl_context',
]
