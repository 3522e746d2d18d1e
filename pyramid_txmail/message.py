"""Messages: what a view hands to ``send()``, checked and made ready to send.

``prepare()`` is the one gate every message passes through: it validates,
builds a stdlib :class:`email.message.EmailMessage`, and serializes it once
to the exact bytes that go on the wire (CRLF line endings, no Bcc header).
"""

from __future__ import annotations

import copy
import functools
import io
import mimetypes
import re
import secrets
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid
from typing import Any

from .exceptions import MailError


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, remembering the classes it builds.

    :class:`HeaderRegistry` creates a new class on every lookup, which was a
    quarter of the time spent building a message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


class _WirePolicy(EmailPolicy):
    """``email.policy.SMTP``, minus work whose result is known in advance.

    The stdlib parses a header value when it is set, again each time it is
    read, and refolds it when the message is written. Here a value that is
    printable ASCII is stored as given; reading it parses it once per
    distinct value (the MIME machinery rereads ``Content-Type`` many times,
    and the same few values recur in every message); and a header that fits
    on one line is written as it reads, since folding cannot change it.
    Everything else takes the stdlib's path.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return (name, value)
        return super().header_store_parse(name, value)

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return _parsed(name, value)
        return super().header_fetch_parse(name, value)

    def _fold(self, name: str, value: Any, refold_binary: bool = False) -> str:
        text = str(value)
        if (
            text.isascii()
            and text.isprintable()
            and len(name) + 2 + len(text) <= self.max_line_length
        ):
            return f'{name}: {text}{self.linesep}'
        return super()._fold(name, value, refold_binary)


@functools.lru_cache(maxsize=512)
def _parsed(name: str, value: str) -> BaseHeader:
    # Header objects are immutable: one may serve every message.
    return _HEADERS(name, value)


_HEADERS = _HeaderClasses()
_SMTP = _WirePolicy(linesep='\r\n', header_factory=_HEADERS)
_SMTPUTF8 = _SMTP.clone(utf8=True)
_HEADER_FACTORY = _HEADERS


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: ``MAIL FROM`` and ``RCPT TO`` addr-specs."""

    sender: str
    recipients: tuple[str, ...]

    @property
    def smtputf8(self) -> bool:
        """True when an address needs the SMTPUTF8 extension."""
        return not all(a.isascii() for a in (self.sender, *self.recipients))


@dataclass(frozen=True, slots=True)
class PreparedMail:
    """A validated message, serialized once, as it travels to a delivery."""

    message_id: str
    envelope: Envelope
    data: bytes
    original: object = None


def _one_line(name: str, value: str) -> str:
    if '\r' in value or '\n' in value:
        raise MailError(
            f'{name}: a header value may not contain CR or LF', field=name, value=value
        )
    return value


def _parse_address(field: str, value: object) -> Address:
    """One address from a string or an :class:`Address`; never split on commas."""
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise MailError(
            f'{field}: expected an address, got {value!r}', field=field, value=value
        )
    _one_line(field, value)
    simple = _SIMPLE_ADDRESS.fullmatch(value)
    if simple:
        name, username, domain = simple.group('name', 'username', 'domain')
        return Address(name or '', username, domain)
    try:
        header = _HEADER_FACTORY('To', value)
        addresses = header.addresses
        # A non-ASCII local part is legal with SMTPUTF8, which we use for it.
        defects = [
            d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)
        ]
    except Exception:  # the parser raises assorted errors on garbage
        addresses, defects = (), ('unparsable',)
    if (
        len(addresses) != 1
        or defects
        or not addresses[0].domain
        or not addresses[0].username
    ):
        raise MailError(
            f'{field}: not one valid address: {value!r}', field=field, value=value
        )
    return addresses[0]


# The common forms, ``local@example.com`` and ``Some Name <local@example.com>``
# (dot-atom local part, host name, plain words), need no full RFC 5322 parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r'[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?'
_SIMPLE_ADDRESS = re.compile(
    r'(?:(?P<name>[A-Za-z0-9]+(?: [A-Za-z0-9]+)*) <)?'
    rf'(?P<username>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)'
    r'(?(name)>)'
)


def parse_address(value: object, field: str = 'address') -> Address:
    """Check that ``value`` is exactly one address (used for settings too)."""
    return _parse_address(field, value)


def _addresses(field: str, values: object) -> list[Address]:
    if values is None:
        return []
    if isinstance(values, (str, Address)):
        values = [values]  # a lone string is one address, not its characters
    return [_parse_address(field, v) for v in values]  # type: ignore[union-attr]


def _addr_spec(address: Address) -> str:
    domain = address.domain
    if not domain.isascii() and address.username.isascii():
        domain = domain.encode('idna').decode('ascii')
    return f'{address.username}@{domain}'


@dataclass
class Attachment:
    """A file attached to a :class:`Message` (pyramid_mailer's names).

    ``disposition='inline'`` with an HTML body puts the part in
    multipart/related, where ``cid:<content_id>`` refers to it.
    """

    filename: str | None = None
    content_type: str | None = None
    data: bytes | str | object = None
    disposition: str | None = None
    transfer_encoding: str | None = None
    content_id: str | None = None

    def payload(self) -> bytes:
        data = self.data
        if hasattr(data, 'read'):
            data = data.read()  # type: ignore[union-attr]
        if isinstance(data, str):
            data = data.encode('utf-8')
        return bytes(data or b'')  # type: ignore[arg-type]

    def mime_type(self) -> tuple[str, str]:
        ctype = self.content_type
        if not ctype and self.filename:
            ctype = mimetypes.guess_type(self.filename)[0]
        maintype, _, subtype = (ctype or 'application/octet-stream').partition('/')
        return maintype, subtype or 'octet-stream'


@dataclass
class Message:
    """An email, with pyramid_mailer's keyword names."""

    subject: str | None = None
    sender: str | None = None
    recipients: list[Any] | None = None
    body: str | None = None
    html: str | None = None
    cc: list[Any] | None = None
    bcc: list[Any] | None = None
    extra_headers: dict[str, str] | None = None
    attachments: list[Attachment] | None = None
    reply_to: str | None = None

    def attach(self, attachment: Attachment) -> None:
        if self.attachments is None:
            self.attachments = []
        self.attachments.append(attachment)


def _normalize(text: str) -> str:
    return text.replace('\r\n', '\n').replace('\r', '\n')


def _build(message: Message, sender: Address) -> tuple[EmailMessage, list[Address]]:
    to = _addresses('recipients', message.recipients)
    cc = _addresses('cc', message.cc)
    bcc = _addresses('bcc', message.bcc)
    msg = EmailMessage(policy=_SMTP)
    msg['From'] = _header([sender])
    if to:
        msg['To'] = _header(to)
    if cc:
        msg['Cc'] = _header(cc)
    if message.reply_to:
        msg['Reply-To'] = _header(_addresses('reply_to', message.reply_to))
    msg['Subject'] = _one_line('subject', message.subject or '')
    for name, value in (message.extra_headers or {}).items():
        _one_line(name, name)
        msg[name] = _one_line(name, str(value))
    attachments = list(message.attachments or [])
    for att in attachments:
        if att.filename:
            _one_line('attachment filename', att.filename)
    inline = [a for a in attachments if a.disposition == 'inline' and message.html]
    files = [a for a in attachments if a not in inline]
    text = _normalize(message.body) if message.body is not None else None
    html = _normalize(message.html) if message.html is not None else None
    if text is not None:
        msg.set_content(text, cte=_cte(text))
        if html is not None:
            msg.add_alternative(html, subtype='html', cte=_cte(html))
    elif html is not None:
        msg.set_content(html, subtype='html', cte=_cte(html))
    else:
        msg.set_content('', cte='7bit')
    if inline:
        html_part = msg if text is None else msg.get_payload()[-1]
        for att in inline:
            maintype, subtype = att.mime_type()
            cid = att.content_id or make_msgid()
            html_part.add_related(
                att.payload(),
                maintype,
                subtype,
                cid=cid if cid.startswith('<') else f'<{cid}>',
                filename=att.filename,
                disposition='inline',
            )
    for att in files:
        maintype, subtype = att.mime_type()
        kw: dict[str, Any] = {
            'filename': att.filename,
            'disposition': att.disposition or 'attachment',
        }
        if maintype == 'text':
            msg.add_attachment(
                _normalize(att.payload().decode('utf-8')),
                subtype=subtype,
                cte=_cte(att.payload().decode('utf-8')),
                **kw,
            )
        else:
            msg.add_attachment(att.payload(), maintype, subtype, **kw)
    return msg, to + cc + bcc


def _header(addresses: list[Address]) -> str:
    # A string, not the objects, so that _WirePolicy can keep it unparsed.
    return ', '.join(str(a) for a in addresses)


def _cte(text: str) -> str:
    # 7-bit safe on the wire, so relays without 8BITMIME take it.
    if text.isascii() and all(len(line) <= 998 for line in text.split('\n')):
        return '7bit'
    return 'quoted-printable'


def _from_email(
    message: EmailMessage,
) -> tuple[EmailMessage, list[Address], Address | None]:
    msg = copy.deepcopy(message)
    for name, value in msg.items():
        _one_line(name, str(value))
    sender_value = msg['Sender'] or msg['From']
    sender = _parse_address('sender', str(sender_value)) if sender_value else None
    recipients: list[Address] = []
    for name in ('To', 'Cc', 'Bcc'):
        for value in msg.get_all(name) or []:
            recipients.extend(_header_addresses(name, str(value)))
    del msg['Bcc']
    return msg, recipients, sender


def _header_addresses(field: str, value: str) -> list[Address]:
    addresses = list(_HEADER_FACTORY(field, value).addresses)
    if not addresses or any(not a.domain for a in addresses):
        raise MailError(
            f'{field}: unparsable address list {value!r}', field=field, value=value
        )
    return addresses


def prepare(
    message: Message | EmailMessage,
    *,
    default_sender: str | None = None,
    message_id_domain: str | None = None,
) -> PreparedMail:
    """Validate ``message`` and serialize it once, as it will be sent.

    Raises :class:`MailError` for no recipients, no sender, an address that
    does not parse, or a CR/LF in a header. Adds Message-ID and Date when
    absent; the Bcc recipients go into the envelope only.
    """
    default = (
        parse_address(default_sender, 'mail.default_sender') if default_sender else None
    )
    if isinstance(message, EmailMessage):
        msg, recipients, sender = _from_email(message)
        sender = sender or default
        if sender is None:
            raise MailError(
                'no sender: set From or mail.default_sender', field='sender'
            )
        if 'From' not in msg:
            msg['From'] = sender
    else:
        sender = _parse_address('sender', message.sender) if message.sender else default
        if sender is None:
            raise MailError(
                'no sender: pass sender= or set mail.default_sender', field='sender'
            )
        msg, recipients = _build(message, sender)
    if not recipients:
        raise MailError('no recipients', field='recipients')
    if 'Message-ID' in msg:
        message_id = str(msg['Message-ID']).strip()
    else:
        message_id = make_msgid(domain=message_id_domain)
        msg['Message-ID'] = message_id
    if 'Date' not in msg:
        msg['Date'] = formatdate(localtime=True)
    seen: dict[str, None] = {}
    for address in recipients:
        seen.setdefault(_addr_spec(address), None)
    envelope = Envelope(_addr_spec(sender), tuple(seen))
    policy = _SMTPUTF8 if envelope.smtputf8 else _SMTP
    for part in msg.walk():
        if part.is_multipart() and part.get_boundary() is None:
            # Chosen here rather than by the generator, which compiles a
            # regular expression per boundary to check it against the body.
            # 128 random bits cannot be guessed by whoever wrote the body,
            # "=_" never occurs in quoted-printable or base64, and the short
            # form keeps Content-Type on one line.
            part.set_boundary('=_' + secrets.token_urlsafe(16))
    out = io.BytesIO()
    BytesGenerator(out, policy=policy).flatten(msg)
    data = _CRLF.sub(b'\r\n', out.getvalue())
    return PreparedMail(message_id, envelope, data, message)


_CRLF = re.compile(rb'\r\n|\r|\n')
