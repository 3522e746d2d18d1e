"""Messages: what a view hands to ``send()``, checked and made ready to send.

``prepare()`` is the one gate every message passes through: it validates,
builds a stdlib :class:`email.message.EmailMessage`, and serializes it once
to the exact bytes that go on the wire (CRLF line endings, no Bcc header).
"""

from __future__ import annotations

import codecs
import email.message
import email.utils
import functools
import io
import ipaddress
import mimetypes
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from email import quoprimime
from email.charset import Charset
from email.errors import (
    NonASCIILocalPartDefect,
    ObsoleteHeaderDefect,
    UndecodableBytesDefect,
)
from email.generator import BytesGenerator
from email.headerregistry import Address, AddressHeader, BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid, parsedate_to_datetime
from typing import Any, TypeVar, cast

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
        if isinstance(value, _AddressList) or (
            isinstance(value, str) and value.isascii() and value.isprintable()
        ):
            return (name, value)
        return super().header_store_parse(name, value)

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return _parsed(name, value)
        return super().header_fetch_parse(name, value)

    def clone(self: _Policy_T, **kw: Any) -> _Policy_T:
        # The generator clones its policy for each part it writes, to set
        # the line end the policy already has. A policy cannot change: that
        # clone may be the policy itself.
        if kw.keys() == {'linesep'} and kw['linesep'] == self.linesep:
            return self
        return super().clone(**kw)

    def fold_binary(self, name: str, value: Any) -> bytes:
        # The generator's call for each header: its commonest case at once.
        limit = self.max_line_length
        if (
            type(value) is str
            and value.isascii()
            and value.isprintable()
            and (limit is None or len(name) + 2 + len(value) <= limit)
        ):
            line = f'{name}: {value}{self.linesep}'
            return line.encode('utf8' if self.utf8 else 'ascii', 'surrogateescape')
        return super().fold_binary(name, value)

    def _fold(self, name: str, value: Any, refold_binary: bool = False) -> str:
        if isinstance(value, _AddressList):
            return self._fold_list(name, value)
        text = str(value)
        limit = self.max_line_length
        if (
            text.isascii()
            and text.isprintable()
            and (limit is None or len(name) + 2 + len(text) <= limit)
        ):
            return f'{name}: {text}{self.linesep}'
        if not hasattr(value, 'name'):
            # Text stored as given (compat32, set_raw(), the parser), which
            # the stdlib writes line by line.
            lines = text.splitlines()
            if not all(line.startswith((' ', '\t')) for line in lines[1:]):
                # A line break that is no fold: it would start another
                # field, or the body.
                raise MailError(
                    f'{name}: a header value may not contain line breaks, '
                    f'found one in {text!r}',
                    field=name,
                    value=text,
                )
            if any(line.isspace() for line in lines[1:]):
                # Obsolete folding (RFC 5322, 4.2): a line of white space
                # only is the end of the header block to some readers.
                lines = lines[:1] + [line for line in lines[1:] if not line.isspace()]
                value = text = '\n'.join(lines)
            if not (self.utf8 or text.isascii() or _UNDECODED.search(text)):
                # Only UTF-8 could carry it as it is (message_from_string(),
                # compat32): written as the header object the default
                # policy makes of it, in RFC 2047 words.
                value = self.header_factory(name, ''.join(lines))
        # EmailPolicy's folding hook is private, so typeshed does not know it.
        return super()._fold(name, value, refold_binary)  # type: ignore[misc,no-any-return]

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
            # A display name too long for one line: the stdlib folds inside it,
            # and may lose its quoting on the way (a name holding "<x@y>" then
            # shows as that address), so the result is checked.
            text = str.__str__(value)
            folded: str = super()._fold(name, text)  # type: ignore[misc]  # private hook
            if not _folds_intact(name, text, folded):
                raise MailError(
                    f'{name}: a display name too long for one line cannot be '
                    'folded without changing what the header shows; shorten it',
                    field=name,
                    value=text,
                )
            return folded
        return self.linesep.join(lines) + self.linesep


_Policy_T = TypeVar('_Policy_T', bound=_WirePolicy)
# Bytes the parser could not decode, kept as surrogate escapes.
_UNDECODED = re.compile('[\udc80-\udcff]')


class _GeneratorPolicy(_WirePolicy):
    """:class:`_WirePolicy` for the generator's pass over a finished message.

    The generator reads a part's ``Content-Type`` and
    ``Content-Transfer-Encoding`` only as strings (split at ``;`` and
    ``/``, parameters read by the compat32 helpers), never through a parsed
    header's attributes. So a value stored as printable ASCII text is
    handed back as it is: parsing it would give the same string, and the
    multipart ``Content-Type`` carrying a message's own random boundary
    would be parsed once per message, in vain.
    """

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return value
        return super().header_fetch_parse(name, value)


def _folds_intact(name: str, text: str, folded: str) -> bool:
    """Whether ``folded`` (``Name: ...`` with line breaks) has lines of at
    most 998 characters and names the same mailboxes as ``text``."""
    if max(len(line) for line in folded.splitlines()) > 998:
        return False
    unfolded = re.sub(r'\r?\n(?=[ \t])', '', folded).rstrip('\r\n')
    written = unfolded.split(':', 1)[1]

    def read(value: str) -> list[tuple[str, str]]:
        # The mailboxes only: the stdlib may change a long name's spaces.
        header = cast(AddressHeader, _HEADER_FACTORY(name, value))
        return [(a.username, a.domain) for a in header.addresses]

    return read(written) == read(text)


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

    def __getnewargs__(self) -> tuple[tuple[str, ...]]:  # type: ignore[override]
        # copy and pickle remake it from its items, not from its characters.
        return (self.items,)


@functools.lru_cache(maxsize=512)
def _parsed(name: str, value: str) -> BaseHeader:
    # Header objects are immutable: one may serve every message.
    return _HEADERS(name, value)


_HEADERS = _HeaderClasses()
_SMTP = _WirePolicy(linesep='\r\n', header_factory=_HEADERS)
_WRITE = _GeneratorPolicy(linesep='\r\n', header_factory=_HEADERS)
_WRITE_UTF8 = _WRITE.clone(utf8=True)
_HEADER_FACTORY = _HEADERS


class _WireGenerator(BytesGenerator):
    """:class:`BytesGenerator`, writing the same bytes with less work.

    It writes a payload's lines in one piece, where the stdlib writes each
    line and each line end apart (a tenth of the time spent serializing a
    message): every line end becomes the policy's all the same. It reads a
    part's type once to choose how to write it, and gives a multipart part
    without a boundary one of a short random form.
    """

    def _dispatch(self, msg: email.message.Message) -> None:
        # The stdlib's, reading the part's Content-Type once where it reads
        # it twice (main type, then subtype).
        kind = msg.get_content_type().split('/')
        main, sub = kind[0], kind[1]
        meth = getattr(self, '_handle_' + f'{main}_{sub}'.replace('-', '_'), None)
        if meth is None:
            meth = getattr(self, '_handle_' + main.replace('-', '_'), None)
            if meth is None:
                meth = self._writeBody  # type: ignore[attr-defined]
        meth(msg)

    @classmethod
    def _make_boundary(cls, text: str | None = None) -> str:
        # For a multipart part that has none. The stdlib's way compiles a
        # regular expression per boundary to check it against the body; 128
        # random bits cannot be guessed by whoever wrote the body, "=_" never
        # occurs in quoted-printable or base64, and the short form keeps
        # Content-Type on one line.
        return '=_' + secrets.token_urlsafe(16)

    def _write_lines(self, lines: str) -> None:
        if lines:
            # The generator's own attribute: the line end being written.
            nl: str = self._NL  # type: ignore[attr-defined]
            # Text parts built here, base64 and quoted-printable have \n line
            # ends only, for which a replace does what the regular expression
            # does, at a tenth of the cost.
            self.write(
                lines.replace('\n', nl)
                if '\r' not in lines
                else _ANY_EOL.sub(nl, lines)
            )


_ANY_EOL = re.compile(r'\r\n|\r|\n')  # as the generator splits lines


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
    """A validated message, serialized once, as it travels to a delivery.

    ``subject`` is the Subject as a reader of ``data`` sees it, where
    :func:`prepare` could tell without reading ``data`` (else None).
    """

    message_id: str
    envelope: Envelope
    data: bytes
    original: object = None
    subject: str | None = None


# Line breaks for str.splitlines() or for some receiver (NUL, VT, FF, FS,
# GS, RS, NEL, LS, PS), every other C0 and C1 control except TAB, DEL, and
# lone surrogates (which cannot be encoded): never in a header value.
_CONTROL = re.compile('[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
# RFC 5322, 2.2: printable US-ASCII except the colon.
_FIELD_NAME = re.compile('[!-9;-~]+')


def _header_value(field: str, value: object, *, what: str | None = None) -> str:
    """``value`` if it is a string that stays one header line, else MailError.

    ``what`` names the thing at fault in the message when ``field`` alone
    would not (an attachment among several).
    """
    named = what or field
    if not isinstance(value, str):
        raise MailError(
            f'{named}: expected a string, got {type(value).__name__} {value!r}',
            field=field,
            value=value,
        )
    bad = _CONTROL.search(value)
    if bad:
        raise MailError(
            f'{named}: a header value may not contain line breaks or control '
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
    if len(value) > _MAX_ADDRESS:
        # The stdlib's parser takes minutes for some 100 kB strings (quoted
        # strings, dots): a typed value this long is no address anyway.
        raise MailError(
            f'{field}: not one valid address: longer than {_MAX_ADDRESS} '
            f'characters ({len(value)}): {value[:40]!r}...',
            field=field,
            value=value,
        )
    # Not where the stdlib's parser would decode an encoded word.
    simple = None if '=?' in value else _SIMPLE_ADDRESS.fullmatch(value)
    if simple and len(simple['username']) <= 64 and len(simple['domain']) <= 255:
        name, username, domain = simple.group('name', 'username', 'domain')
        return Address(name or '', username, domain)
    defects: list[object]
    try:
        header = _HEADER_FACTORY('To', value)
        addresses = cast(AddressHeader, header).addresses
        # A non-ASCII local part is legal with SMTPUTF8, which we use for it.
        defects = [
            d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)
        ]
        if _word_decoded_in_local_part(value, addresses):
            defects.append('an encoded word in a local part')
    except Exception:  # the parser raises assorted errors on garbage
        addresses, defects = (), ['unparsable']
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
    elif '\ufffd' in username:
        # What the parser reads for bytes that are not UTF-8: mail would go
        # to a mailbox named with it, not to the one the bytes named.
        problem = 'the local part holds U+FFFD, the mark of bytes that are not UTF-8'
    elif not _valid_domain(domain):
        problem = 'not a valid domain'
    elif len(_local(username).encode()) > 64:
        problem = 'the local part is longer than 64 octets (RFC 5321)'
    elif '=?' in username and not _reads_back(username):
        problem = (
            'the local part holds an encoded word (RFC 2047), which a reader '
            'decodes to another mailbox than the one mail is sent to'
        )
    elif _CONTROL.search(name) or '\t' in name:
        problem = 'the display name holds a control character or line break'
    if problem:
        raise MailError(f'{field}: {problem}: {shown}', field=field, value=address)
    return address


def _reads_back(username: str) -> bool:
    """Whether ``username``, written into a header, reads back as itself:
    the stdlib's parser decodes an encoded word even in a local part."""
    try:
        header = _HEADER_FACTORY('To', f'{_local(username)}@example.com')
        addresses = cast(AddressHeader, header).addresses
    except Exception:  # the parser raises assorted errors on garbage
        return False
    return [a.username for a in addresses] == [username] and not _defects(header)


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
        # Python's codec is IDNA 2003, which maps some names (ß, final
        # sigma, joiners, soft hyphens) to another domain than IDNA 2008, the
        # relays' rules, would: mail could reach a stranger's domain. So each
        # label must come back from its A-label as typed.
        typed = unicodedata.normalize('NFKC', domain).lower().split('.')
        try:
            ascii_domain = domain.encode('idna').decode('ascii')
            if any(
                label.encode('idna').decode('idna') != label
                for label in typed
                if not label.isascii()
            ):
                return False
        except UnicodeError:
            return False
        domain = ascii_domain
    return len(domain) <= 255 and _DOMAIN.fullmatch(domain) is not None


# The longest address string parsed: one header line. (An Address object,
# never parsed, may have a longer display name.)
_MAX_ADDRESS = 998
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
    return f'{_phrase(name)} <{spec}>'


def _phrase(name: str) -> str:
    """The display name ``name`` as a header shows it."""
    if name.isascii() and name.isprintable() and '=?' not in name:
        if not _PHRASE.fullmatch(name):
            name = '"' + _QUOTED_PAIR.sub(r'\\\1', name) + '"'
        return name
    # One encoded word: Python's parser puts a space between two.
    return _UTF8.header_encode(name)


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


@dataclass(eq=False)  # pyramid_mailer's: hashable, equal only to itself
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


@dataclass(eq=False)  # pyramid_mailer's: hashable, equal only to itself
class Message:
    """An email, with pyramid_mailer's keyword names (and their order).

    ``body`` and ``html`` are text, or an :class:`Attachment` whose data,
    charset and transfer encoding are used as they are. As in
    pyramid_mailer, ``subject`` left out is ``''``, and ``recipients``,
    ``cc``, ``bcc``, ``attachments`` and ``extra_headers`` left out are a
    new empty list or dict, to fill in after making the message.
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

    def __post_init__(self) -> None:
        if self.subject is None:
            self.subject = ''
        for name in ('recipients', 'cc', 'bcc', 'attachments'):
            if getattr(self, name) is None:
                setattr(self, name, [])
        if self.extra_headers is None:
            self.extra_headers = {}

    @classmethod
    def from_template(
        cls,
        name: str,
        values: Mapping[str, Any] | None = None,
        request: Any = None,
        **kw: Any,
    ) -> Message:
        """A message whose subject, text and HTML are rendered from ``name``.

        See :func:`pyramid_txmail.templates.from_template`, which this is;
        for scripts, where there is no ``request.mailer.send_template()``.
        """
        from pyramid.path import caller_package

        from .templates import from_template

        kw.setdefault('package', caller_package())
        return from_template(name, values, request=request, **kw)

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
        values += _header_pairs(self.extra_headers)
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
        sends). ``as_string()`` ends its lines with ``\\n``.
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
            msg, _, recipients = _build(self, default)
            if not recipients:
                raise MailError('no recipients', field='recipients')
        except MailError as exc:
            raise InvalidMessage(str(exc), field=exc.field, value=exc.value) from exc
        # as_string() and as_bytes() end lines with \n, as the email package's
        # (and pyramid_mailer's) messages do; send() writes CRLF all the same.
        msg.policy = _SMTP.clone(linesep='\n')
        return msg


def _as_list(values: object) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, (str, Address)):
        return [values]  # a lone string is one address, not its characters
    return list(cast(Iterable[Any], values))


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
    _header_value(field, ctype, what=what)
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
    _header_value(field, name, what=what)
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
    if att.filename is not None:
        _header_value('attachment filename', att.filename, what=what)
    ctype, params = _content_type(att, what, field, default_type)
    maintype, _, subtype = ctype.partition('/')
    if maintype == 'multipart':
        raise MailError(
            f'{what}: a multipart content_type cannot be given as data',
            field=field,
            value=ctype,
        )
    disposition, dparams = default_disposition, dict[str, str]()
    if att.disposition:
        _header_value(field, att.disposition, what=what)
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
        _header_value('attachment filename', filename, what=what)
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
        _header_value(field, cid, what=what)
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


def _build(
    message: Message, default: Address | None
) -> tuple[EmailMessage, Address, list[Address]]:
    msg, sender, recipients = _headers(message, default)
    # Resolved first: every attachment is checked (and its file read, once)
    # before any part is built.
    related: list[_Part] = []
    files: list[_Part] = []
    for number, att in enumerate(_checked_attachments(message.attachments), 1):
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
            msg.attach(part)  # type: ignore[arg-type]  # typeshed wants an EmailMessage; any part works
    elif message.html is not None:
        _set_body(msg, message.html, 'html', 'html')
    else:
        _set_text(msg, '', 'plain', '7bit')
    if related:
        html_part = (
            msg if message.body is None else cast(list[MIMEPart], msg.get_payload())[-1]
        )
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
            msg.attach(part)  # type: ignore[arg-type]  # typeshed wants an EmailMessage; any part works
    return msg, sender, recipients


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
    _set_text(part, text, subtype, _cte(text))


def _set_text(part: MIMEPart, text: str, subtype: str, cte: str) -> None:
    """What ``part.set_content(text, subtype=subtype, cte=cte)`` makes of a
    new part, in UTF-8, for ``text`` with ``\\n`` line ends only.

    The content manager's way costs a fifth of preparing a message: it
    dispatches on the type, and builds ``Content-Type`` by reparsing it to
    add the charset. Its headers do not depend on the text, so the ones it
    made for a sample part are copied; the payload is encoded as its text
    handler encodes it (one ``\\n`` after the last line, then the stdlib's
    quoted-printable where asked).
    """
    for name, value in _text_headers(isinstance(part, EmailMessage), subtype, cte):
        part.set_raw(name, value)
    body = text if text.endswith('\n') else text + '\n'
    if cte == 'quoted-printable':
        # The line length set_content passes: the part's policy's (78).
        width = cast(int, part.policy.max_line_length)
        body = quoprimime.body_encode(body.encode('utf-8').decode('latin-1'), width)
    part.set_payload(body)


@functools.cache
def _text_headers(message: bool, subtype: str, cte: str) -> tuple[tuple[str, Any], ...]:
    # Made by set_content itself, once per subtype, transfer encoding, and
    # kind of part: on an EmailMessage it also adds MIME-Version.
    sample = (EmailMessage if message else MIMEPart)(policy=_SMTP)
    sample.set_content('', subtype=subtype, cte=cte)
    return tuple(sample.raw_items())


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

    groups: dict[str, tuple[str, str]] = {}  # To or Cc of empty groups only

    def address_list(key: str) -> list[Address]:
        field, value, header = given(key)
        if not header:
            return _addresses(field, value)
        addresses = _header_addresses(field, value, _simple_list(value))
        if not addresses:
            groups[key] = (field, value)
        return addresses

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
    for key, addresses in (('to', to), ('cc', cc)):
        if addresses:
            msg[key.title()] = _AddressList(map(_shown, addresses))
        elif key in groups:
            msg[groups[key][0]] = _groups_shown(*groups[key])
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
    checked: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    for name, value in _header_pairs(extra):
        key = _field_name(name).lower()
        _not_resent(name, key, value)
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


def _header_pairs(extra: object) -> list[tuple[Any, Any]]:
    """``extra_headers`` as (name, value) pairs: a dict, or pairs as
    pyramid_mailer's ``dict(extra_headers)`` took them."""
    if extra is None:
        return []
    if isinstance(extra, Mapping):
        return list(extra.items())
    try:
        return list(dict(extra).items())  # type: ignore[call-overload]
    except (TypeError, ValueError):
        # InvalidMessage: also what validate() and to_message() must raise.
        raise InvalidMessage(
            f'extra_headers: expected a dict of header names and values, '
            f'got {type(extra).__name__}',
            field='extra_headers',
            value=extra,
        ) from None


def _checked_attachments(attachments: object) -> list[Attachment]:
    """``attachments`` as a list of :class:`Attachment`; each one's content is
    checked when it is resolved (:func:`_resolve`)."""
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


# The fields whose addresses make the envelope; written anew from them.
_ADDRESS_FIELDS = ('From', 'Sender', 'To', 'Cc', 'Bcc', 'Reply-To')
_ADDRESS_KEYS = frozenset(name.lower() for name in _ADDRESS_FIELDS)
# A resent message's envelope would be these (RFC 5322, 3.6.6; smtplib's
# send_message() takes it from them): never only shown.
_RESENT_KEYS = frozenset(
    f'resent-{name}' for name in ('from', 'sender', 'to', 'cc', 'bcc')
)


def _not_resent(name: str, key: str, value: object) -> None:
    if key in _RESENT_KEYS:
        raise MailError(
            f'{name}: resent messages are not supported: the envelope is taken '
            f'from Sender or From, To, Cc and Bcc, never from {name}; remove '
            'the Resent- fields',
            field=name,
            value=value,
        )


def _from_email(
    message: EmailMessage, default: Address | None
) -> tuple[EmailMessage, Address, list[Address]]:
    # Each field is read once. Address fields are parsed at most once: a
    # header object that the message's policy made already holds its
    # addresses, and the field is then written from the very addresses the
    # envelope is made of.
    fields: list[tuple[str, str, Any]] = []
    parsed: dict[str, tuple[str, AddressHeader | list[Address]]] = {}
    counts: dict[str, int] = {}
    for name, raw in message.raw_items():
        key = _field_name(name).lower()
        _not_resent(name, key, raw)
        if getattr(raw, 'name', name).lower() != key:
            # A header object made for another field (set_raw(), compat32):
            # folded, it would show under that field's name.
            raw = _SMTP.header_store_parse(name, _header_value(name, str(raw)))[1]
        counts[key] = counts.get(key, 0) + 1
        fields.append((name, key, raw))
        if key in _ADDRESS_KEYS:
            simple = _simple_list(raw) if type(raw) is str else None
            if simple is not None:
                parsed[key] = (raw, simple)
                continue
        try:
            if key in _ADDRESS_KEYS and isinstance(raw, AddressHeader):
                header = raw
            else:
                header = _SMTP.header_fetch_parse(name, raw)
            value = str(header)
            # Read from the text as it is: a header object holds it decoded.
            word = (
                key in _ADDRESS_KEYS
                and type(raw) is str
                and _word_decoded_in_local_part(raw, header.addresses)
            )
        except Exception:  # the parser raises assorted errors on garbage
            raise MailError(
                f'{name}: unparsable value {raw!r}', field=name, value=raw
            ) from None
        _header_value(name, value)
        if key in _ADDRESS_KEYS:
            if word or not all(map(_obsolete, _defects(header))):
                # Invalid syntax: the parser skipped or misread some of it
                # ("a@x.example b@y.example" reads as a@x.example), so what
                # it read is not what the field shows.
                text = str(raw)
                given = '' if text == value else f' from {text!r}'
                advice = (
                    'A local part cannot hold an encoded word (RFC 2047)'
                    if word or _word_in_local_part(header)
                    else 'Separate addresses with commas, and quote a display '
                    'name holding specials'
                )
                raise MailError(
                    f'{name}: not a valid address list; the parser reads only '
                    f'{value!r}{given}. {advice}',
                    field=name,
                    value=text,
                )
            parsed[key] = (value, header)
    for name in _ONCE:
        count = counts.get(name.lower(), 0)
        if count > 1:
            raise MailError(
                f'{name}: {count} {name} fields; a message has at most one',
                field=name,
            )
    found: dict[str, list[Address]] = {}
    for name in _ADDRESS_FIELDS:
        key = name.lower()
        if key in parsed:
            found[name] = _header_addresses(name, *parsed[key])
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
    # Rewritten as the envelope names them; Bcc only in the envelope.
    shown = {
        name.lower(): _AddressList(map(_shown, addresses))
        if addresses
        else _groups_shown(name, parsed[name.lower()][0])
        for name, addresses in found.items()
    }
    headers = [(name, shown.get(key, raw)) for name, key, raw in fields if key != 'bcc']
    if 'from' not in counts:
        headers.append(('From', _AddressList([_shown(sender)])))
    msg = _copy(message, headers)
    recipients = [a for name in ('To', 'Cc', 'Bcc') for a in found.get(name, ())]
    return msg, sender, recipients


def _copy(part: _Part_T, headers: list[tuple[str, Any]] | None = None) -> _Part_T:
    """A copy of ``part`` that ``prepare()`` may change without touching the
    caller's object, with ``headers`` as its header fields if given, and
    the wire policy: each (sub)part gets its own header list (a missing
    boundary is set here, and the generator sets each part's policy while
    it writes), while header values and payload strings, which nothing
    changes in place, are shared.

    ``copy.deepcopy`` did the same at four times the cost: it also copies
    every string, policy and header object.
    """
    new = part.__class__.__new__(part.__class__)
    # What copy.copy does, without its protocol lookups.
    state = vars(new)
    state.update(vars(part))
    state['_headers'] = list(state['_headers'] if headers is None else headers)
    state['policy'] = _SMTP
    if isinstance(state['_payload'], list):
        state['_payload'] = [_copy(sub) for sub in state['_payload']]
    return new


_Part_T = TypeVar('_Part_T', bound=email.message.Message)


def _simple_list(value: str) -> list[Address] | None:
    """The addresses of an address list written in the common forms only
    (``a@example.com, Ann Lee <ann@example.com>``), as the stdlib's parser
    reads them; None for anything else, which takes the full parse."""
    if not value.isascii() or '"' in value or '(' in value or '=?' in value:
        return None
    addresses = []
    for item in value.split(','):
        simple = _SIMPLE_ADDRESS.fullmatch(item.strip(' '))
        if simple is None:
            return None
        name, username, domain = simple.group('name', 'username', 'domain')
        addresses.append(Address(name or '', username, domain))
    return addresses


def _header_addresses(
    field: str, value: str, parsed: AddressHeader | list[Address] | None = None
) -> list[Address]:
    """The checked addresses of the address list header value ``value``:
    from ``parsed`` when given (its header object, or what
    :func:`_simple_list` read), else parsed here."""
    defects: list[object] = []
    header: AddressHeader | None = None
    if isinstance(parsed, list):
        addresses = parsed
    else:
        addresses = []
        if parsed is not None:
            header, addresses, defects = (
                parsed,
                list(parsed.addresses),
                _defects(parsed),
            )
        if parsed is None or defects:
            # Read from the text as it shows: where the first reading found
            # defects, this one may still read all of it (a leading comma, an
            # obsolete phrase such as "J.R. Smith", undecodable bytes).
            _header_value(field, value)
            try:
                header = cast(AddressHeader, _HEADER_FACTORY(field, value))
                addresses, defects = list(header.addresses), _defects(header)
                if _word_decoded_in_local_part(value, addresses):
                    defects.append('an encoded word in a local part')
            except Exception:  # the parser raises assorted errors on garbage
                header, addresses, defects = None, [], ['unparsable']
    if not addresses and not defects and _empty_groups(field, header):
        return []
    if field.lower() == 'bcc' and not value.strip():
        return []  # "Bcc:" alone (RFC 5322, 3.6.3), as mail programs write it
    if not addresses or defects:
        raise MailError(
            f'{field}: unparsable address list {value!r}', field=field, value=value
        )
    return [_checked(field, a, repr(value)) for a in addresses]


def _empty_groups(field: str, header: AddressHeader | None) -> bool:
    """Whether ``header`` is a destination field of empty groups only, such
    as ``To: undisclosed-recipients:;`` beside a Bcc (RFC 5322, 3.6.3): it
    names no mailbox, and is written as it is."""
    return (
        field.lower() in _DESTINATIONS
        and header is not None
        and bool(header.groups)
        and all(g.display_name and not g.addresses for g in header.groups)
    )


_DESTINATIONS = frozenset({'to', 'cc', 'bcc'})


def _groups_shown(field: str, value: str) -> _AddressList:
    """The empty groups of ``value`` written anew from their names: a
    comment (``x:(bob@example.com);``) or an encoded word kept as given
    shows an address to a reader that reads it otherwise."""
    header = cast(AddressHeader, _HEADER_FACTORY(field, value))
    return _AddressList(f'{_phrase(g.display_name or "")}:;' for g in header.groups)


def _word_decoded_in_local_part(text: str, addresses: Sequence[Address]) -> bool:
    """Whether the stdlib's parser decoded an RFC 2047 word in a local part
    of the address list ``text``, which it read as ``addresses``: read with
    the words left undecoded, the local parts differ. (Its parse tree cannot
    tell when the word is followed by white space or a dot: an obsolete
    local part is parsed again from the decoded text.)"""
    if '=?' not in text:
        return False
    undecoded = ''.join(text.splitlines()).replace('=?', '=_?')
    read = cast(AddressHeader, _HEADER_FACTORY('To', undecoded)).addresses
    return [a.username for a in read] != [
        a.username.replace('=?', '=_?') for a in addresses
    ]


def _obsolete(defect: object) -> bool:
    # Obsolete syntax (RFC 5322, 4) and bytes that are not UTF-8: read whole.
    return isinstance(defect, (ObsoleteHeaderDefect, UndecodableBytesDefect))


def _defects(header: BaseHeader | AddressHeader) -> list[object]:
    # A non-ASCII local part is legal with SMTPUTF8, which we use for it.
    # (typeshed declares AddressHeader apart from BaseHeader, its base.)
    found: list[object] = [
        d
        for d in cast(BaseHeader, header).defects
        if not isinstance(d, NonASCIILocalPartDefect)
    ]
    if any(str(d) in _WORD_DEFECTS for d in found) and not _word_in_local_part(header):
        # An encoded word in a display name, even a quoted one, as old
        # mailers write it ("=?utf-8?q?Ann?=" <ann@example.com>): the
        # mailboxes read are those written, and the field is written anew
        # from them. In a local part it would change the mailbox: refused.
        found = [d for d in found if str(d) not in _WORD_DEFECTS]
    return found


# The parser's defects for RFC 2047 words where RFC 2047 allows none.
_WORD_DEFECTS = frozenset(
    {
        'encoded word inside quoted string',
        'missing trailing whitespace after encoded-word',
    }
)


def _word_in_local_part(header: BaseHeader | AddressHeader) -> bool:
    """Whether an RFC 2047 word was decoded inside a local part of
    ``header`` (True when that cannot be told: the stdlib's parse tree is
    not public)."""
    tree = getattr(header, '_parse_tree', None)
    if not isinstance(tree, list):
        return True
    stack: list[Any] = [(tree, False)]
    while stack:
        token, inside = stack.pop()
        kind = getattr(token, 'token_type', None)
        if kind == 'encoded-word' and inside:
            return True
        if isinstance(token, list):
            inside = inside or kind == 'local-part'
            stack.extend((child, inside) for child in token)
    return False


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


@functools.lru_cache(maxsize=16)
def _default_sender(value: str) -> Address:
    # Parsed once per setting, not once per message (Address is immutable).
    return parse_address(value, 'mail.default_sender')


def prepare(
    message: Message | EmailMessage,
    *,
    default_sender: str | None = None,
    message_id_domain: str | None = None,
) -> PreparedMail:
    """Validate ``message`` and serialize it once, as it will be sent.

    Raises :class:`MailError`, naming the field, for anything that would not
    go out exactly as given (for a :class:`Message`, its kinds
    ``BadHeaders`` for a CR or LF, else ``InvalidMessage``, as
    pyramid_mailer raised): no recipients or sender, an address that does
    not parse or cannot be written into the envelope as the header shows
    it, a header name that is not an RFC 5322 field name, a line break or
    control character in a header value, a value of the wrong type. Adds
    Message-ID and Date when absent; the Bcc recipients go into the
    envelope only.
    """
    default = _default_sender(default_sender) if default_sender else None
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
        try:
            msg, sender, recipients = _build(message, default)
            if not recipients:
                raise MailError('no recipients', field='recipients')
        except (BadHeaders, InvalidMessage):
            raise
        except MailError as exc:
            # pyramid_mailer's kinds, which apps catch around send().
            value = exc.value
            crlf = isinstance(value, str) and ('\r' in value or '\n' in value)
            kind = BadHeaders if crlf else InvalidMessage
            raise kind(str(exc), field=exc.field, value=exc.value) from exc
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
        msg['Date'] = _date()
    seen: dict[str, None] = {}
    for address in recipients:
        seen.setdefault(_addr_spec(address), None)
    envelope = Envelope(_addr_spec(sender), tuple(seen))
    policy = _WRITE_UTF8 if envelope.smtputf8 else _WRITE
    if not envelope.smtputf8:
        for name, value in msg.raw_items():
            if isinstance(value, _AddressList) and not value.isascii():
                raise MailError(
                    f'{name}: an address with a non-ASCII local part needs '
                    'SMTPUTF8, used only when the sender or a recipient needs it',
                    field=name,
                    value=str(value),
                )
    out = io.BytesIO()
    _WireGenerator(out, policy=policy).flatten(msg)
    data = out.getvalue()
    pairs = data.count(b'\r\n')
    if data.count(b'\r') != pairs or data.count(b'\n') != pairs:
        # A bare CR or LF from a payload the generator writes as it is.
        data = _CRLF.sub(b'\r\n', data)
    return PreparedMail(message_id, envelope, data, message, _listed_subject(stored))


def _date() -> str:
    """``formatdate(localtime=True)``, made once a second: it writes whole
    seconds, and a second's local offset is one."""
    second = int(time.time())
    made = _DATE[0]
    if made[0] != second:
        made = _DATE[0] = (second, formatdate(second, localtime=True))
    return made[1]


_DATE = [(-1, '')]


def _listed_subject(stored: dict[str, Any]) -> str | None:
    """The Subject a reader sees, for the queue's listings, where it is
    written as it is stored: printable ASCII on one line, no encoded word."""
    value = stored.get('subject')
    if value is None:
        return None
    text = str(value)
    if (
        text.isascii()
        and text.isprintable()
        and '=?' not in text
        and len('Subject: ') + len(text) <= (_SMTP.max_line_length or 998)
    ):
        return text.strip()
    return None


_CRLF = re.compile(rb'\r\n|\r|\n')
