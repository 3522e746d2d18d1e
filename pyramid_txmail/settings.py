"""Settings: the ``mail.*`` keys of an .ini file, parsed once.

:func:`parse_settings` turns them into a frozen :class:`MailSettings`; nothing
else reads raw ``mail.*`` strings. ``KEYS`` is the one table of keys.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from pyramid.path import DottedNameResolver
from pyramid.settings import falsey, truthy

from .exceptions import MailError
from .message import parse_address

log = logging.getLogger('pyramid_txmail')


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Every ``mail.*`` setting, converted and checked."""

    delivery: str = 'direct'  # 'direct' | 'queued' | 'file'
    host: str = 'localhost'
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ssl: bool = False
    keyfile: str | None = None
    certfile: str | None = None
    tls_verify: bool = True
    cafile: str | None = None
    timeout: float = 30.0
    pipelining: bool = True
    pool_size: int = 0
    pool_idle: float = 60.0
    default_sender: str | None = None
    message_id_domain: str = 'localhost'
    queue_path: str | None = None
    queue_processor: bool = True
    queue_interval: float = 3.0
    queue_batch: int = 100
    queue_rate: float = 0.0
    retry_min: float = 300.0
    retry_max: float = 4000.0
    max_age: float = 432000.0
    file_path: str | None = None
    inline_css: bool = True
    queue_url: str | None = field(default=None, repr=False)
    queue_session: Any = None
    keep_sent: float = 0.0


class SettingsError(ConfigurationError):  # type: ignore[misc]  # pyramid is untyped
    """A bad ``mail.*`` setting; ``key`` and ``value`` name it."""

    def __init__(self, key: str, value: object, problem: str):
        if key.endswith('queue_url') and isinstance(value, str):
            value = without_password(value)
        shown = '<hidden>' if key.endswith('password') else repr(value)
        super().__init__(
            f'{key}: {problem}, got {shown}'
            if value is not None
            else f'{key}: {problem}'
        )
        self.key = key
        self.value = None if key.endswith('password') else value


def _bool(value: object) -> bool:
    # The words pyramid.settings.asbool knows, so an .ini written for
    # pyramid_mailer reads the same; asbool turns any other word (a typo such
    # as 'ture') into False, which is refused here instead.
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in truthy:
        return True
    if text in falsey:
        return False
    raise ValueError('expected t/true, y/yes, on or 1, or f/false, n/no, off or 0')


def _str(value: object) -> str:
    return str(value)


def _delivery(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ('direct', 'queued', 'file'):
        raise ValueError("expected 'direct', 'queued' or 'file'")
    return text


def _number(
    kind: Callable[[str], float], ok: Callable[[float], bool], problem: str
) -> Callable[[object], float]:
    """A converter to ``kind`` that accepts only values where ``ok`` holds."""

    def convert(value: object) -> float:
        try:
            number = kind(str(value).strip())
        except ValueError:
            raise ValueError(problem) from None
        if not ok(number):  # NaN fails every comparison, so it lands here
            raise ValueError(problem)
        return number

    return convert


_port = _number(int, lambda n: 1 <= n <= 65535, 'expected an integer from 1 to 65535')
_positive_int = _number(int, lambda n: n >= 1, 'expected a positive integer')
_non_negative_int = _number(int, lambda n: n >= 0, 'expected an integer, 0 or more')
#: The longest span of time a setting takes: beyond it the waits and socket
#: timeouts below overflow (``threading.TIMEOUT_MAX`` is about 292 years).
MAX_SECONDS = 365 * 86400.0
_positive_float = _number(
    float,
    lambda n: 0 < n <= MAX_SECONDS,
    'expected a positive number of seconds, at most a year (31536000)',
)
_non_negative_float = _number(
    float, lambda n: 0 <= n < math.inf, 'expected a number, 0 or more'
)


_URL_SCHEMES = ('postgresql', 'postgres', 'postgresql+psycopg')


_USERINFO_PASSWORD = re.compile(r'^([^:/?#]*://[^:/?#@]*):[^@/?#]*@')
_QUERY_PASSWORD = re.compile(r'([?&]password=)[^&#]*', re.IGNORECASE)


def without_password(url: str) -> str:
    """``url`` with its password shown as ``***``, whether it is in the
    user info (``user:secret@host``) or a ``password=`` parameter."""
    url = _USERINFO_PASSWORD.sub(r'\1:***@', url)
    return _QUERY_PASSWORD.sub(r'\1***', url)


def _queue_url(value: object) -> str:
    text = str(value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError('expected a postgresql:// URL') from None
    if parts.scheme not in _URL_SCHEMES:
        raise ValueError('expected a postgresql:// URL')
    return text


def _dotted(value: object) -> object:
    if not isinstance(value, str):
        return value  # given as an object (Mailer(queue_session=...))
    try:
        return DottedNameResolver().resolve(value)
    except (ImportError, ValueError) as exc:
        raise ValueError(f'cannot import it ({exc})') from None


_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400}


def _duration(value: object) -> float:
    """Seconds, or a number with a unit: ``90``, ``30m``, ``12h``, ``7d``."""
    problem = 'expected a duration: seconds, or a number and s, m, h or d (7d)'
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], 0)
    try:
        number = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise ValueError(problem) from None
    if not 0 <= number < math.inf:
        raise ValueError(problem)
    return number


# One entry per key: (name, converter). Defaults live on MailSettings.
KEYS: tuple[tuple[str, Callable[[object], object]], ...] = (
    ('delivery', _delivery),
    ('host', _str),
    ('port', _port),
    ('username', _str),
    ('password', _str),
    ('tls', _bool),
    ('ssl', _bool),
    ('keyfile', _str),
    ('certfile', _str),
    ('tls_verify', _bool),
    ('cafile', _str),
    ('timeout', _positive_float),
    ('pipelining', _bool),
    ('pool_size', _non_negative_int),
    ('pool_idle', _positive_float),
    ('default_sender', _str),
    ('message_id_domain', _str),
    ('queue_path', _str),
    ('queue_processor', _bool),
    ('queue_interval', _positive_float),
    ('queue_batch', _positive_int),
    ('queue_rate', _non_negative_float),
    ('retry_min', _positive_float),
    ('retry_max', _positive_float),
    ('max_age', _positive_float),
    ('file_path', _str),
    ('inline_css', _bool),
    ('queue_url', _queue_url),
    ('queue_session', _dotted),
    ('keep_sent', _duration),
)
PYRAMID_MAILER_ONLY = ('debug', 'sendmail_app', 'sendmail_template')


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` (any case, a
    trailing dot allowed) or a loopback address (127.0.0.0/8, ``::1``, also
    in brackets). The one rule for where credentials may go without TLS."""
    if host.rstrip('.').lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


PREFIX_KEYS = ('pyramid_txmail.prefix', 'pyramid_mailer.prefix')


def settings_prefix(settings: Mapping[str, object]) -> str:
    """The prefix of the mail settings: ``mail.`` unless a prefix key says.

    ``pyramid_txmail.prefix`` is read, and ``pyramid_mailer.prefix`` too, so
    an .ini written for pyramid_mailer keeps its prefix. Both set to
    different values is a :class:`SettingsError`.
    """
    given = {}
    for key in PREFIX_KEYS:
        value = str(settings.get(key) or '').strip()
        if value:
            given[key] = value
    if len(set(given.values())) > 1:
        raise SettingsError(
            PREFIX_KEYS[1],
            given[PREFIX_KEYS[1]],
            f'differs from {PREFIX_KEYS[0]} ({given[PREFIX_KEYS[0]]!r}); set one',
        )
    return next(iter(given.values()), 'mail.')


def parse_settings(
    settings: Mapping[str, object], prefix: str = 'mail.'
) -> MailSettings:
    """The ``mail.*`` keys of ``settings`` as a checked :class:`MailSettings`.

    Raises :class:`SettingsError` (a ``ConfigurationError``) naming the key
    and the value; warns about keys it does not know.
    """
    values: dict[str, Any] = {}
    known = {name for name, _ in KEYS}
    for name, convert in KEYS:
        raw = settings.get(prefix + name)
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == '':
            continue
        try:
            values[name] = convert(raw)
        except ValueError as exc:
            raise SettingsError(prefix + name, raw, str(exc)) from None
    for key in sorted(k for k in settings if k.startswith(prefix)):
        name = key[len(prefix) :]
        if name in PYRAMID_MAILER_ONLY:
            log.warning(
                '%s is a pyramid_mailer setting; pyramid_txmail ignores it', key
            )
        elif name not in known:
            log.warning('unknown setting %s is ignored', key)
    queued = values.get('queue_path') or values.get('queue_url')
    values.setdefault('delivery', 'queued' if queued else 'direct')
    if 'message_id_domain' not in values:
        values['message_id_domain'] = _fqdn()
    result = MailSettings(**values)
    _check(result, prefix)
    return result


def _check(s: MailSettings, prefix: str) -> None:
    if s.tls and s.ssl:
        raise SettingsError(
            f'{prefix}tls', None, f'{prefix}tls and {prefix}ssl are both on; choose one'
        )
    if s.delivery == 'queued' and not (s.queue_path or s.queue_url):
        raise SettingsError(
            f'{prefix}delivery',
            s.delivery,
            f'needs {prefix}queue_path (or {prefix}queue_url)',
        )
    if s.queue_path and s.queue_url:
        raise SettingsError(
            f'{prefix}queue_url',
            None,
            f'{prefix}queue_path and {prefix}queue_url are both set; choose one',
        )
    if s.queue_session is not None and not s.queue_url:
        raise SettingsError(f'{prefix}queue_session', None, f'needs {prefix}queue_url')
    if s.delivery == 'file' and not s.file_path:
        raise SettingsError(f'{prefix}delivery', s.delivery, f'needs {prefix}file_path')
    if s.keyfile and not s.certfile:
        raise SettingsError(
            f'{prefix}keyfile', s.keyfile, f'needs {prefix}certfile too'
        )
    if bool(s.username) != bool(s.password):
        raise SettingsError(
            f'{prefix}username',
            None,
            f'{prefix}username and {prefix}password go together; set both or neither',
        )
    if s.retry_min > s.retry_max:
        raise SettingsError(
            f'{prefix}retry_min',
            s.retry_min,
            f'must not exceed {prefix}retry_max ({s.retry_max:g})',
        )
    if s.username and not (s.tls or s.ssl) and not is_loopback(s.host):
        raise SettingsError(
            f'{prefix}username',
            None,
            f'is set but neither {prefix}tls nor {prefix}ssl is on: '
            f'the password would be sent in clear to {s.host}',
        )
    if s.default_sender:
        try:
            parse_address(s.default_sender, prefix + 'default_sender')
        except MailError as exc:
            raise SettingsError(
                prefix + 'default_sender',
                s.default_sender,
                'expected one email address',
            ) from exc


_fqdn = socket.getfqdn
