"""Messages: what a view hands to ``send()``, checked and made ready to send.

``prepare()`` is the one gate every message passes through: it validates,
builds a stdlib :class:`email.message.EmailMessage`, and serializes it once
to the exact bytes that go on the wire (CRLF line endings, no Bcc header).
"""

from __future__ import annotations

import codecs
import copy
import email.message
import email.utils
import functools
import io
import mimetypes
import re
import secrets
from dataclasses import dataclass, replace
from email.errors import NonASCIILocalPartDefect
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid
from typing import Any

from .exceptions import BadHeaders, InvalidMessage, MailError


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
    """A file attached to a :class:`Message`, or a body given as one.

    The keywords are pyramid_mailer's, plus ``charset``. The bytes arrive
    exactly as given, whatever the type or charset: ``data`` (bytes, a
    ``str``, or a file object, read once) is sent as it is, without
    re-encoding text or touching its line endings. A ``str`` is encoded
    with ``charset`` (default UTF-8).

    ``content_type``
        e.g. ``'text/csv; charset=cp1252'``; guessed from the file name
        when not given, else ``application/octet-stream``.
    ``charset``
        labels a ``text/*`` part (overrides a ``charset`` in
        ``content_type``). Without one, UTF-8 bytes are labelled UTF-8 and
        other bytes get no label.
    ``disposition``
        ``'attachment'`` (the default for files) or ``'inline'``, with
        parameters if wanted (``'attachment; filename="r.pdf"'``). An
        inline part with an HTML body goes into multipart/related, where
        ``cid:<content_id>`` refers to it.
    ``transfer_encoding``
        ``'base64'`` (the default, as in pyramid_mailer),
        ``'quoted-printable'``, ``'7bit'`` or ``'8bit'``. The last two
        send the data as it is, so it must be lines of at most 998 bytes
        (7bit: ASCII), and its line endings become CRLF, as SMTP requires.
    ``content_id``
        the part's ``Content-ID``, with or without the angle brackets.
    """

    filename: str | None = None
    content_type: str | None = None
    data: bytes | str | object = None
    disposition: str | None = None
    transfer_encoding: str | None = None
    content_id: str | None = None
    charset: str | None = None

    def payload(self) -> bytes:
        """The bytes to send, reading a file object (once) if need be."""
        return _resolve(self, f'attachment {self.filename!r}', 'attachments').payload

    def mime_type(self) -> tuple[str, str]:
        """(maintype, subtype) of the part, given or guessed."""
        what = f'attachment {self.filename!r}'
        ctype, _ = _content_type(self, what, 'attachments', None)
        maintype, _, subtype = ctype.partition('/')
        return maintype, subtype


@dataclass
class Message:
    """An email, with pyramid_mailer's keyword names (and their order).

    ``body`` and ``html`` are text, or an :class:`Attachment` whose data,
    charset and transfer encoding are used as they are.
    """

    subject: str | None = None
    recipients: list[Any] | None = None
    body: str | Attachment | None = None
    html: str | Attachment | None = None
    sender: str | None = None
    cc: list[Any] | None = None
    bcc: list[Any] | None = None
    extra_headers: dict[str, str] | None = None
    attachments: list[Attachment] | None = None
    reply_to: str | None = None

    @property
    def send_to(self) -> set[str]:
        """Every recipient: ``recipients``, ``cc`` and ``bcc``, as given."""
        return {
            str(a)
            for field in (self.recipients, self.cc, self.bcc)
            for a in _as_list(field)
        }

    def add_recipient(self, recipient: Any) -> None:
        """Add an address to ``recipients`` (the To header)."""
        self.recipients = _appended(self.recipients, recipient)

    def add_cc(self, recipient: Any) -> None:
        """Add an address to ``cc``."""
        self.cc = _appended(self.cc, recipient)

    def add_bcc(self, recipient: Any) -> None:
        """Add an address to ``bcc`` (the envelope only, never a header)."""
        self.bcc = _appended(self.bcc, recipient)

    def attach(self, attachment: Attachment) -> None:
        """Add an :class:`Attachment`."""
        self.attachments = _appended(self.attachments, attachment)

    def is_bad_headers(self) -> bool:
        """True if a header value has a CR or LF (pyramid_mailer's check)."""
        return self._bad_header() is not None

    def _bad_header(self) -> tuple[str, str] | None:
        values: list[tuple[str, object]] = [
            ('subject', self.subject),
            ('sender', self.sender),
            ('reply_to', self.reply_to),
        ]
        values += [('recipients', a) for a in sorted(self.send_to)]
        values += list((self.extra_headers or {}).items())
        for field, value in values:
            if value is not None and ('\r' in str(value) or '\n' in str(value)):
                return field, str(value)
        return None

    def validate(self, *, default_sender: str | None = None) -> None:
        """Raise what :meth:`send() <pyramid_txmail.mailer.Mailer.send>` would
        raise for this message; nothing if it would be sent.

        The errors are pyramid_mailer's names, :class:`~.exceptions.BadHeaders`
        for a CR or LF in a header and :class:`~.exceptions.InvalidMessage`
        for anything else; both are a :class:`MailError` (a ``ValueError``)
        and a ``RuntimeError`` (what pyramid_mailer's are). Without a
        ``sender`` the message is invalid unless ``default_sender`` is
        given, as in pyramid_mailer, whose mailer fills it in before
        validating. Unlike pyramid_mailer, a message without body is valid
        (``send()`` sends it).
        """
        self.to_message(default_sender=default_sender)

    def to_message(self, *, default_sender: str | None = None) -> EmailMessage:
        """The :class:`email.message.EmailMessage` that ``send()`` would send.

        Validated first, as :meth:`validate` does. It has the headers and
        parts that ``send()`` sends, never a Bcc header (as in
        pyramid_mailer); ``send()`` adds Message-ID and Date when absent.
        Attachments' file objects are read here (once, for this and later
        sends).
        """
        bad = self._bad_header()
        if bad is not None:
            field, value = bad
            raise BadHeaders(
                f'{field}: a header value may not contain CR or LF',
                field=field,
                value=value,
            )
        default = (
            parse_address(default_sender, 'default_sender') if default_sender else None
        )
        try:
            msg, _, _ = _checked(self, default)
        except MailError as exc:
            raise InvalidMessage(str(exc), field=exc.field, value=exc.value) from exc
        return msg


def _as_list(values: object) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, (str, Address)):
        return [values]  # a lone string is one address, not its characters
    return list(values)  # type: ignore[call-overload]


def _appended(values: Any, item: Any) -> list[Any]:
    # In place when it is a list, as pyramid_mailer does.
    if isinstance(values, list):
        values.append(item)
        return values
    return [*_as_list(values), item]


@dataclass(frozen=True, slots=True)
class _Part:
    """An :class:`Attachment` checked and resolved into what its part says."""

    maintype: str
    subtype: str
    payload: bytes
    cte: str
    params: dict[str, str]
    disposition: str | None
    disposition_params: dict[str, str]
    filename: str | None
    cid: str | None


_CTES = ('base64', 'quoted-printable', '7bit', '8bit')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LINES = re.compile(rb'\r\n|\r|\n')


def _params(field: str, value: str) -> tuple[str, dict[str, str]]:
    """Split a ``type; key=value`` header value leniently, as
    pyramid_mailer's ``cgi.parse_header`` did (quotes optional)."""
    holder = email.message.Message()  # compat32: tolerant of sloppy params
    holder[field] = value
    first, *rest = holder.get_params(header=field) or [('', '')]
    params = {}
    for key, raw in rest:
        text = email.utils.collapse_rfc2231_value(raw)
        if len(text) > 1 and text[0] == text[-1] == "'":
            text = text[1:-1]  # pyramid_mailer's docs write charset='utf-8'
        params[key.lower()] = text
    return first[0].strip().lower(), params


def _content_type(
    att: Attachment, what: str, field: str, default: str | None
) -> tuple[str, dict[str, str]]:
    ctype = att.content_type
    if ctype is None:
        ctype = default
    if ctype is None and att.filename:
        ctype = mimetypes.guess_type(att.filename)[0]
    if ctype is None:
        return 'application/octet-stream', {}
    _one_line(field, ctype)
    main, params = _params('Content-Type', ctype)
    maintype, _, subtype = main.partition('/')
    if not _TOKEN.fullmatch(maintype) or not _TOKEN.fullmatch(subtype):
        raise MailError(
            f'{what}: content_type must be type/subtype, got {ctype!r}',
            field=field,
            value=ctype,
        )
    return main, params


def _data(att: Attachment, what: str, field: str) -> bytes | str:
    data = att.data
    if hasattr(data, 'read'):
        try:
            data = data.read()
        except (OSError, ValueError) as exc:  # closed, unreadable
            raise MailError(
                f'{what}: cannot read its data: {exc}', field=field, value=att.filename
            ) from exc
        # Read once: building the message again (to_message(), then send())
        # must see the same bytes, not an exhausted file.
        att.data = data
    if data is None:
        return b''
    if isinstance(data, (str, bytes)):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise MailError(
        f'{what}: data must be bytes, str or a file object, got {type(data).__name__}',
        field=field,
        value=att.filename,
    )


def _charset(name: str, what: str, field: str) -> str:
    _one_line(field, name)
    try:
        codecs.lookup(name)
    except LookupError:
        raise MailError(
            f'{what}: unknown charset {name!r}', field=field, value=name
        ) from None
    return name


def _resolve(
    att: Attachment,
    what: str,
    field: str,
    *,
    default_type: str | None = None,
    default_disposition: str | None = 'attachment',
) -> _Part:
    """Check ``att`` and work out its part, raising :class:`MailError`
    (naming the attachment) for anything that cannot be sent as given."""
    ctype, params = _content_type(att, what, field, default_type)
    maintype, _, subtype = ctype.partition('/')
    if maintype == 'multipart':
        raise MailError(
            f'{what}: a multipart content_type cannot be given as data',
            field=field,
            value=ctype,
        )
    disposition, dparams = default_disposition, {}
    if att.disposition:
        _one_line(field, att.disposition)
        disposition, dparams = _params('Content-Disposition', att.disposition)
        if not _TOKEN.fullmatch(disposition):
            raise MailError(
                f'{what}: disposition must be a word such as attachment or '
                f'inline, got {att.disposition!r}',
                field=field,
                value=att.disposition,
            )
    filename = att.filename or dparams.pop('filename', None) or params.get('name')
    dparams.pop('filename', None)
    if filename:
        _one_line('attachment filename', filename)
        filename = filename.rsplit('/', 1)[-1]  # a path's directories are private
        params['name'] = filename  # for mail readers that ignore filename=
    charset = att.charset or params.pop('charset', None)
    if charset:
        charset = _charset(charset, what, field)
    data = _data(att, what, field)
    if isinstance(data, str):
        charset = charset or 'utf-8'
        try:
            payload = data.encode(charset)
        except UnicodeEncodeError as exc:
            raise MailError(
                f'{what}: its text cannot be encoded as {charset}: {exc}',
                field=field,
                value=att.filename,
            ) from None
    else:
        payload = data
        if charset is None and maintype == 'text':
            try:
                payload.decode('utf-8')
            except UnicodeDecodeError:
                pass  # unknown: better no label than a wrong one
            else:
                charset = 'utf-8'
    if charset:
        params['charset'] = charset
    cte = (att.transfer_encoding or 'base64').lower()
    if cte not in _CTES:
        raise MailError(
            f'{what}: transfer_encoding must be one of {", ".join(_CTES)}, '
            f'got {att.transfer_encoding!r}',
            field=field,
            value=att.transfer_encoding,
        )
    if cte in ('7bit', '8bit'):
        problem = None
        if cte == '7bit' and not payload.isascii():
            problem = 'it has non-ASCII bytes'
        elif b'\0' in payload:
            problem = 'it has NUL bytes'
        elif any(len(line) > 998 for line in _LINES.split(payload)):
            problem = 'it has a line longer than 998 bytes'
        if problem:
            raise MailError(
                f'{what}: cannot be sent as {cte}: {problem}; '
                'use base64 or quoted-printable',
                field=field,
                value=att.transfer_encoding,
            )
    cid = att.content_id
    if cid is not None:
        _one_line(field, cid)
        cid = cid if cid.startswith('<') else f'<{cid}>'
    return _Part(
        maintype, subtype, payload, cte, params, disposition, dparams, filename, cid
    )


def _fill(part: MIMEPart, spec: _Part) -> None:
    """Make ``part`` (a new part, or the message itself) hold ``spec``."""
    # The stdlib's bytes handler encodes exactly: base64, or quoted-printable
    # with CR and LF escaped, or the bytes themselves for 7bit/8bit.
    part.set_content(
        spec.payload,
        spec.maintype,
        spec.subtype,
        cte=spec.cte,
        disposition=spec.disposition,
        filename=spec.filename,
        cid=spec.cid,
        params=spec.params,
    )
    for key, value in spec.disposition_params.items():
        part.set_param(key, value, header='Content-Disposition')


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
    # Resolved first: every attachment is checked (and its file read, once)
    # before any part is built.
    related: list[_Part] = []
    files: list[_Part] = []
    for number, att in enumerate(message.attachments or [], 1):
        spec = _resolve(att, _describe(att, number), 'attachments')
        if spec.disposition == 'inline' and message.html:
            related.append(spec if spec.cid else replace(spec, cid=make_msgid()))
        else:
            files.append(spec)
    if message.body is not None:
        _set_body(msg, message.body, 'body', 'plain')
        if message.html is not None:
            msg.make_alternative()
            part = MIMEPart(policy=_SMTP)
            _set_body(part, message.html, 'html', 'html')
            msg.attach(part)
    elif message.html is not None:
        _set_body(msg, message.html, 'html', 'html')
    else:
        msg.set_content('', cte='7bit')
    if related:
        html_part = msg if message.body is None else msg.get_payload()[-1]
        html_part.make_related()
        for spec in related:
            part = MIMEPart(policy=_SMTP)
            _fill(part, spec)
            html_part.attach(part)
    if files:
        msg.make_mixed()  # never mixed yet: an Attachment cannot be multipart
        for spec in files:
            part = MIMEPart(policy=_SMTP)
            _fill(part, spec)
            msg.attach(part)
    return msg, to + cc + bcc


def _describe(att: Attachment, number: int) -> str:
    """How an error names an attachment: its file name, else its position."""
    if att.filename:
        return f'attachment {att.filename!r}'
    return f'attachment {number}'


def _set_body(part: MIMEPart, value: object, field: str, subtype: str) -> None:
    """``body`` or ``html``: text, or an Attachment sent as it is."""
    if isinstance(value, Attachment):
        spec = _resolve(
            value,
            f'{field} (an Attachment)',
            field,
            default_type=f'text/{subtype}',
            default_disposition=None,
        )
        _fill(part, spec)
        return
    if not isinstance(value, str):
        raise MailError(
            f'{field}: expected text or an Attachment, got {type(value).__name__}',
            field=field,
            value=value,
        )
    text = _normalize(value)
    part.set_content(text, subtype=subtype, cte=_cte(text))


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


def _checked(
    message: Message, default: Address | None
) -> tuple[EmailMessage, list[Address], Address]:
    """Build ``message``, checking that it has a sender and recipients."""
    sender = _parse_address('sender', message.sender) if message.sender else default
    if sender is None:
        raise MailError(
            'no sender: pass sender= or set mail.default_sender', field='sender'
        )
    msg, recipients = _build(message, sender)
    if not recipients:
        raise MailError('no recipients', field='recipients')
    return msg, recipients, sender


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
        msg, recipients, sender = _checked(message, default)
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
