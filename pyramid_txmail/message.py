"""Messages: what a view hands to ``send()``, checked and made ready to send.

``prepare()`` is the one gate every message passes through: it validates,
builds a stdlib :class:`email.message.EmailMessage`, and serializes it once
to the exact bytes that go on the wire (CRLF line endings, no Bcc header).
"""

from __future__ import annotations

import copy
import email.message
import functools
import io
import ipaddress
import mimetypes
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.charset import Charset
from email.errors import NonASCIILocalPartDefect
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid, parsedate_to_datetime
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
        if isinstance(value, _AddressList) or (
            isinstance(value, str) and value.isascii() and value.isprintable()
        ):
            return (name, value)
        return super().header_store_parse(name, value)

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return _parsed(name, value)
        return super().header_fetch_parse(name, value)

    def _fold(self, name: str, value: Any, refold_binary: bool = False) -> str:
        if isinstance(value, _AddressList):
            return self._fold_list(name, value)
        text = str(value)
        if (
            text.isascii()
            and text.isprintable()
            and len(name) + 2 + len(text) <= self.max_line_length
        ):
            return f'{name}: {text}{self.linesep}'
        return super()._fold(name, value, refold_binary)

    def _fold_list(self, name: str, value: _AddressList) -> str:
        # The stdlib parses a header to fold it, in time quadratic in its
        # length (minutes for 60,000 recipients). Our own lists are made of
        # checked items, so a line may break after any comma.
        limit = self.max_line_length or 998
        lines, line = [], f'{name}:'
        last = len(value.items) - 1
        for i, item in enumerate(value.items):
            piece = item if i == last else item + ','
            if len(line) + 1 + len(piece) > limit and line != f'{name}:':
                lines.append(line)
                line = ''
            line = f'{line} {piece}'
        lines.append(line)
        if max(len(line) for line in lines) > 998:
            # A display name too long for one line: the stdlib folds inside it.
            return super()._fold(name, str.__str__(value))
        return self.linesep.join(lines) + self.linesep


class _AddressList(str):
    """An address header value built here from checked addresses.

    ``items`` are the addresses as the header shows them; the policy
    stores the value unparsed and folds it between items.
    """

    items: tuple[str, ...]

    def __new__(cls, items: Iterable[str]) -> _AddressList:
        items = tuple(items)
        self = super().__new__(cls, ', '.join(items))
        self.items = items
        return self


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
    """The SMTP envelope: ``MAIL FROM`` and ``RCPT TO`` mailboxes.

    Each is written as it goes between the angle brackets (RFC 5321,
    4.1.2): a local part that is not a Dot-string is a quoted-string.
    """

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


# Line breaks for str.splitlines() or for some receiver (NUL, VT, FF, FS,
# GS, RS, NEL, LS, PS), every other C0 and C1 control except TAB, DEL, and
# lone surrogates (which cannot be encoded): never in a header value.
_CONTROL = re.compile('[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
# RFC 5322, 2.2: printable US-ASCII except the colon.
_FIELD_NAME = re.compile('[!-9;-~]+')


def _header_value(field: str, value: object) -> str:
    """``value`` if it is a string that stays one header line, else MailError."""
    if not isinstance(value, str):
        raise MailError(
            f'{field}: expected a string, got {type(value).__name__} {value!r}',
            field=field,
            value=value,
        )
    bad = _CONTROL.search(value)
    if bad:
        raise MailError(
            f'{field}: a header value may not contain line breaks or control '
            f'characters, found {bad.group()!r} in {value!r}',
            field=field,
            value=value,
        )
    return value


def _field_name(name: object) -> str:
    """``name`` if it is an RFC 5322 field name, else MailError."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        field = name if isinstance(name, str) else repr(name)
        raise MailError(
            f'{field!r} is not a header name: printable ASCII without spaces '
            'or colons (RFC 5322)',
            field=field,
            value=name,
        )
    return name


def _parse_address(field: str, value: object) -> Address:
    """One checked address from a string or an :class:`Address`; never split
    on commas."""
    if isinstance(value, Address):
        return _checked(field, value, repr(value))
    if not isinstance(value, str):
        raise MailError(
            f'{field}: expected an address, got {value!r}', field=field, value=value
        )
    _header_value(field, value)
    simple = _SIMPLE_ADDRESS.fullmatch(value)
    if simple and len(simple['username']) <= 64 and len(simple['domain']) <= 255:
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
    if len(addresses) != 1 or defects:
        raise MailError(
            f'{field}: not one valid address: {value!r}', field=field, value=value
        )
    return _checked(field, addresses[0], repr(value))


def _checked(field: str, address: Address, shown: str) -> Address:
    """``address`` if it can be written into the envelope and a header
    exactly as it reads; else MailError naming ``field``."""
    username, domain, name = address.username, address.domain, address.display_name
    problem = None
    if not username or not domain:
        problem = 'not one valid address'
    elif not username.isprintable():
        # RFC 5321 has no way to send a control character or a line break.
        problem = 'the local part holds a control character or line break'
    elif not _valid_domain(domain):
        problem = 'not a valid domain'
    elif len(_local(username).encode()) > 64:
        problem = 'the local part is longer than 64 octets (RFC 5321)'
    elif _CONTROL.search(name) or '\t' in name:
        problem = 'the display name holds a control character or line break'
    if problem:
        raise MailError(f'{field}: {problem}: {shown}', field=field, value=address)
    return address


def _valid_domain(domain: str) -> bool:
    if domain.startswith('['):
        # RFC 5321, 4.1.3: an IPv4 or IPv6 address literal.
        literal = domain[1:-1] if domain.endswith(']') else ''
        try:
            if literal[:5].lower() == 'ipv6:':
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    if not domain.isascii():
        try:
            domain = domain.encode('idna').decode('ascii')
        except UnicodeError:
            return False
    return len(domain) <= 255 and _DOMAIN.fullmatch(domain) is not None


# The common forms, ``local@example.com`` and ``Some Name <local@example.com>``
# (dot-atom local part, host name, plain words), need no full RFC 5322 parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r'[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
_DOMAIN = re.compile(rf'{_LABEL}(?:\.{_LABEL})*')
_SIMPLE_ADDRESS = re.compile(
    r'(?:(?P<name>[A-Za-z0-9]+(?: [A-Za-z0-9]+)*) <)?'
    rf'(?P<username>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)'
    r'(?(name)>)'
)
# RFC 5321 Dot-string, with RFC 6531's non-ASCII characters.
_UTEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_DOT_STRING = re.compile(rf'{_UTEXT}(?:\.{_UTEXT})*')
_PHRASE = re.compile(rf'{_ATEXT}(?: {_ATEXT})*')
_QUOTED_PAIR = re.compile(r'(["\\])')
_UTF8 = Charset('utf-8')


def parse_address(value: object, field: str = 'address') -> Address:
    """Check that ``value`` is exactly one address (used for settings too)."""
    return _parse_address(field, value)


def _addresses(field: str, values: object) -> list[Address]:
    if values is None:
        return []
    if isinstance(values, (str, Address)):
        values = [values]  # a lone string is one address, not its characters
    elif isinstance(values, (bytes, bytearray)) or not isinstance(values, Iterable):
        raise MailError(
            f'{field}: expected an address or a list of addresses, '
            f'got {type(values).__name__} {values!r}',
            field=field,
            value=values,
        )
    return [_parse_address(field, v) for v in values]


def _local(username: str) -> str:
    """The local part as RFC 5321 writes it: a Dot-string, else quoted."""
    if _DOT_STRING.fullmatch(username):
        return username
    return '"' + _QUOTED_PAIR.sub(r'\\\1', username) + '"'


def _addr_spec(address: Address) -> str:
    """The mailbox for ``MAIL FROM``/``RCPT TO``, and for the headers too,
    so that what a header shows is where the relay delivers."""
    domain = address.domain
    if not domain.isascii() and address.username.isascii():
        domain = domain.encode('idna').decode('ascii')
    return f'{_local(address.username)}@{domain}'


def _shown(address: Address) -> str:
    """``address`` as an address header shows it."""
    spec = _addr_spec(address)
    name = address.display_name
    if not name:
        return spec
    if name.isascii() and '=?' not in name:
        if not _PHRASE.fullmatch(name):
            name = '"' + _QUOTED_PAIR.sub(r'\\\1', name) + '"'
    else:
        # One encoded word: Python's parser puts a space between two.
        name = _UTF8.header_encode(name)
    return f'{name} <{spec}>'


def is_mailbox(value: str) -> bool:
    """True if ``value`` is an RFC 5321 Mailbox (RFC 6531 with non-ASCII),
    safe between the angle brackets of ``MAIL FROM`` or ``RCPT TO``."""
    return _MAILBOX.fullmatch(value) is not None and value.isprintable()


_MAILBOX = re.compile(
    rf'(?:{_UTEXT}(?:\.{_UTEXT})*|"(?:[ !#-\[\]-~]|[^\x00-\x7f]|\\[ -~])*")'
    r'@(?:(?:[A-Za-z0-9]|[^\x00-\x7f])(?:[A-Za-z0-9-]|[^\x00-\x7f])*'
    r'(?:\.(?:[A-Za-z0-9]|[^\x00-\x7f])(?:[A-Za-z0-9-]|[^\x00-\x7f])*)*'
    r'|\[[0-9A-Za-z:.]+\])'
)


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


def _build(
    message: Message, default: Address | None
) -> tuple[EmailMessage, Address, list[Address]]:
    msg, sender, recipients = _headers(message, default)
    attachments = _checked_attachments(message.attachments)
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
    return msg, sender, recipients


# Fields a Message has a keyword for: in extra_headers instead of the keyword.
_KEYWORDS = {
    'from': 'sender',
    'to': 'recipients',
    'cc': 'cc',
    'bcc': 'bcc',
    'reply-to': 'reply_to',
    'subject': 'subject',
}


def _headers(
    message: Message, default: Address | None
) -> tuple[EmailMessage, Address, list[Address]]:
    """The message's header fields, its envelope sender and recipients."""
    extra = _extra_headers(message.extra_headers)

    def given(key: str) -> tuple[str, Any, bool]:
        # (field, value, whether it is a header string) from the keyword or
        # extra_headers; both would leave the reader guessing which counts.
        keyword = _KEYWORDS[key]
        value = getattr(message, keyword)
        if key not in extra:
            return keyword, value, False
        name, header = extra.pop(key)
        if value:
            raise MailError(
                f'{name}: given both as {keyword}= and in extra_headers; give one',
                field=name,
                value=header,
            )
        return name, header, True

    def address_list(key: str) -> list[Address]:
        field, value, header = given(key)
        return _header_addresses(field, value) if header else _addresses(field, value)

    field, value, _ = given('from')
    sender = _parse_address(field, value) if value else default
    if sender is None:
        raise MailError(
            'no sender: pass sender= or set mail.default_sender', field='sender'
        )
    to, cc, bcc = address_list('to'), address_list('cc'), address_list('bcc')
    reply_to = address_list('reply-to')
    field, subject, _ = given('subject')
    msg = EmailMessage(policy=_SMTP)
    msg['From'] = _AddressList([_shown(sender)])
    if 'sender' in extra:
        # As for an EmailMessage: Sender names the envelope sender.
        name, value = extra.pop('sender')
        sender = _parse_address(name, value)
        msg['Sender'] = _AddressList([_shown(sender)])
    if to:
        msg['To'] = _AddressList(map(_shown, to))
    if cc:
        msg['Cc'] = _AddressList(map(_shown, cc))
    if reply_to:
        msg['Reply-To'] = _AddressList(map(_shown, reply_to))
    msg['Subject'] = '' if subject is None else _header_value(field, subject)
    for name, value in extra.values():
        msg[name] = value
    return msg, sender, to + cc + bcc


def _extra_headers(extra: object) -> dict[str, tuple[str, str]]:
    """``extra_headers`` checked, as ``{lower-case name: (name, value)}``.

    A value of None leaves the field out, as a keyword left at None does.
    """
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise MailError(
            f'extra_headers: expected a dict of header names and values, '
            f'got {type(extra).__name__}',
            field='extra_headers',
            value=extra,
        )
    checked: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    for name, value in extra.items():
        key = _field_name(name).lower()
        if key in seen:
            raise MailError(
                f'{name}: given twice in extra_headers', field=name, value=value
            )
        seen.add(key)
        if key == 'mime-version' or key.startswith('content-'):
            raise MailError(
                f'{name}: set from body, html and attachments, not extra_headers',
                field=name,
                value=value,
            )
        if value is not None:
            checked[key] = (name, _header_value(name, value))
    return checked


def _checked_attachments(attachments: object) -> list[Attachment]:
    """The attachments, each checked for what would go out wrong."""
    if attachments is None:
        return []
    if not isinstance(attachments, Iterable):
        raise MailError(
            f'attachments: expected a list of Attachment, got {attachments!r}',
            field='attachments',
            value=attachments,
        )
    checked = list(attachments)
    for i, att in enumerate(checked):
        if not isinstance(att, Attachment):
            raise MailError(
                f'attachments[{i}]: expected an Attachment, got {att!r}',
                field='attachments',
                value=att,
            )
        named = f'attachments[{i}]' + (f' ({att.filename!r})' if att.filename else '')
        if att.filename is not None:
            try:
                _header_value('attachment filename', att.filename)
            except MailError as exc:
                raise MailError(
                    f'{named}: {exc}', field='attachment filename', value=att.filename
                ) from None
        data = att.data
        if not (
            data is None
            or isinstance(data, (bytes, bytearray, memoryview, str))
            or hasattr(data, 'read')
        ):
            raise MailError(
                f'{named}: data must be bytes, str or a file object, '
                f'got {type(data).__name__}',
                field='attachments',
                value=data,
            )
    return checked


def _cte(text: str) -> str:
    # 7-bit safe on the wire, so relays without 8BITMIME take it.
    if text.isascii() and all(len(line) <= 998 for line in text.split('\n')):
        return '7bit'
    return 'quoted-printable'


# RFC 5322, 3.6: at most one of each.
_ONCE = (
    'From',
    'Sender',
    'To',
    'Cc',
    'Bcc',
    'Reply-To',
    'Subject',
    'Message-ID',
    'Date',
)


def _from_email(
    message: EmailMessage, default: Address | None
) -> tuple[EmailMessage, Address, list[Address]]:
    msg = copy.deepcopy(message)
    msg.policy = _SMTP  # so that the address fields below stay as written
    for name, value in msg.items():
        _header_value(_field_name(name), str(value))
    for name in _ONCE:
        count = len(msg.get_all(name) or ())
        if count > 1:
            raise MailError(
                f'{name}: {count} {name} fields; a message has at most one',
                field=name,
            )
    found: dict[str, list[Address]] = {}
    for name in ('From', 'Sender', 'To', 'Cc', 'Bcc', 'Reply-To'):
        if name in msg:
            found[name] = addresses = _header_addresses(name, str(msg[name]))
            # Rewritten as the envelope names them, in place.
            msg.replace_header(name, _AddressList(map(_shown, addresses)))
    field = 'Sender' if 'Sender' in found else 'From'
    senders = found.get(field)
    if senders is not None and len(senders) != 1:
        raise MailError(
            f'{field}: the envelope sender must be one address, got {len(senders)}'
            + ('' if field == 'Sender' else '; add a Sender field'),
            field=field,
        )
    sender = senders[0] if senders else default
    if sender is None:
        raise MailError('no sender: set From or mail.default_sender', field='sender')
    if 'From' not in msg:
        msg['From'] = _AddressList([_shown(sender)])
    recipients = [a for name in ('To', 'Cc', 'Bcc') for a in found.get(name, ())]
    del msg['Bcc']
    return msg, sender, recipients


def _header_addresses(field: str, value: str) -> list[Address]:
    """The checked addresses of an address list header value."""
    _header_value(field, value)
    try:
        header = _HEADER_FACTORY(field, value)
        addresses = list(header.addresses)
        defects = [
            d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)
        ]
    except Exception:  # the parser raises assorted errors on garbage
        addresses, defects = [], ['unparsable']
    if not addresses or defects:
        raise MailError(
            f'{field}: unparsable address list {value!r}', field=field, value=value
        )
    return [_checked(field, a, repr(value)) for a in addresses]


def _message_id(stored: object) -> str:
    # ``stored`` as the message holds it: the text given, or for an
    # EmailMessage maybe a parsed header, whose str() drops what it could
    # not parse.
    value = str(stored).strip()
    if getattr(stored, 'defects', None) or not (
        value.isascii() and _MSG_ID.fullmatch(value)
    ):
        raise MailError(
            f'Message-ID: expected <left@right> in printable ASCII, got {value!r}',
            field='Message-ID',
            value=value,
        )
    return value


_MSG_ID = re.compile(r'<[^\s<>@"\\]+@[^\s<>@"\\]+>')


def _check_date(value: str) -> None:
    try:
        parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        raise MailError(
            f'Date: not an RFC 5322 date: {value!r}', field='Date', value=value
        ) from None


def prepare(
    message: Message | EmailMessage,
    *,
    default_sender: str | None = None,
    message_id_domain: str | None = None,
) -> PreparedMail:
    """Validate ``message`` and serialize it once, as it will be sent.

    Raises :class:`MailError`, naming the field, for anything that would not
    go out exactly as given: no recipients or sender, an address that does
    not parse or cannot be written into the envelope as the header shows
    it, a header name that is not an RFC 5322 field name, a line break or
    control character in a header value, a value of the wrong type. Adds
    Message-ID and Date when absent; the Bcc recipients go into the
    envelope only.
    """
    default = (
        parse_address(default_sender, 'mail.default_sender') if default_sender else None
    )
    if isinstance(message, EmailMessage):
        msg, sender, recipients = _from_email(message, default)
    elif isinstance(message, email.message.Message):
        raise MailError(
            'a legacy email.message.Message cannot be sent: build an '
            'email.message.EmailMessage (policy email.policy.default) or a '
            'pyramid_txmail.Message',
            field='message',
            value=message,
        )
    elif isinstance(message, Message):
        msg, sender, recipients = _build(message, default)
    else:
        raise MailError(
            'expected a pyramid_txmail.Message or an email.message.EmailMessage, '
            f'got {type(message).__name__}',
            field='message',
            value=message,
        )
    if not recipients:
        raise MailError('no recipients', field='recipients')
    stored = {name.lower(): value for name, value in reversed(list(msg.raw_items()))}
    if 'message-id' in stored:
        message_id = _message_id(stored['message-id'])
    else:
        message_id = make_msgid(domain=message_id_domain)
        msg['Message-ID'] = message_id
    if 'date' in stored:
        _check_date(str(stored['date']))
    else:
        msg['Date'] = formatdate(localtime=True)
    seen: dict[str, None] = {}
    for address in recipients:
        seen.setdefault(_addr_spec(address), None)
    envelope = Envelope(_addr_spec(sender), tuple(seen))
    policy = _SMTPUTF8 if envelope.smtputf8 else _SMTP
    if not envelope.smtputf8:
        for name, value in msg.raw_items():
            if isinstance(value, _AddressList) and not value.isascii():
                raise MailError(
                    f'{name}: an address with a non-ASCII local part needs '
                    'SMTPUTF8, used only when the sender or a recipient needs it',
                    field=name,
                    value=str(value),
                )
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
