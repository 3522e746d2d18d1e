"""prepare() of a Message writes the bytes the stdlib's own construction does.

``reference()`` pins how prepare() built a :class:`Message` before it made
text parts itself: every part through ``set_content`` (text normalized to
``\\n`` line ends, 7bit where ASCII lines of at most 998 characters allow,
else quoted-printable), ``make_alternative``/``make_related``/``make_mixed``,
written by the generator. It builds the same message as an
:class:`EmailMessage`, whose path through prepare() is that construction.
"""

from __future__ import annotations

import re
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyramid_txmail.message import Attachment, Message, prepare

FIXED = {'Message-ID': '<1@test.example>', 'Date': 'Sat, 28 Nov 2026 12:00:00 +0000'}


def _normalize(text: str) -> str:
    return text.replace('\r\n', '\n').replace('\r', '\n')


def _cte(text: str) -> str:
    if text.isascii() and all(len(line) <= 998 for line in text.split('\n')):
        return '7bit'
    return 'quoted-printable'


def _set_text(part: MIMEPart, value: str, subtype: str) -> None:
    text = _normalize(value)
    part.set_content(text, subtype=subtype, cte=_cte(text))


def _set_attachment(part: MIMEPart, att: Attachment) -> None:
    # The corpus gives every attachment in full: type, file name,
    # disposition, transfer encoding, and a charset for text.
    maintype, subtype = att.content_type.split('/')
    data = att.data.encode(att.charset) if isinstance(att.data, str) else att.data
    params = {'name': att.filename}
    if att.charset:
        params['charset'] = att.charset
    cid = att.content_id
    if cid is not None and not cid.startswith('<'):
        cid = f'<{cid}>'
    part.set_content(
        data,
        maintype,
        subtype,
        cte=att.transfer_encoding,
        disposition=att.disposition,
        filename=att.filename,
        cid=cid,
        params=params,
    )


def reference(m: Message) -> EmailMessage:
    """``m`` built through set_content, as prepare() built it before."""
    msg = EmailMessage(policy=SMTP)
    msg['From'] = m.sender
    for name, values in (('To', m.recipients), ('Cc', m.cc), ('Bcc', m.bcc)):
        if values:
            msg[name] = ', '.join(values)
    if m.reply_to:
        msg['Reply-To'] = m.reply_to
    msg['Subject'] = m.subject
    for name, value in m.extra_headers.items():
        msg[name] = value
    if m.body is not None:
        _set_text(msg, m.body, 'plain')
        if m.html is not None:
            msg.make_alternative()
            part = MIMEPart(policy=SMTP)
            _set_text(part, m.html, 'html')
            msg.attach(part)
    elif m.html is not None:
        _set_text(msg, m.html, 'html')
    else:
        msg.set_content('', cte='7bit')
    related = [a for a in m.attachments if a.disposition == 'inline' and m.html]
    files = [a for a in m.attachments if a not in related]
    if related:
        html_part = msg if m.body is None else msg.get_payload()[-1]
        html_part.make_related()
        for att in related:
            part = MIMEPart(policy=SMTP)
            _set_attachment(part, att)
            html_part.attach(part)
    if files:
        msg.make_mixed()
        for att in files:
            part = MIMEPart(policy=SMTP)
            _set_attachment(part, att)
            msg.attach(part)
    return msg


def _numbered_boundaries(data: bytes) -> bytes:
    # Boundaries are random: each is renamed by its place of first use, to
    # a name of the same length (which keeps the header folding).
    for n, found in enumerate(dict.fromkeys(re.findall(rb'boundary="([^"]+)"', data))):
        data = data.replace(found, b'=#%0*d' % (len(found) - 2, n))
    return data


def assert_same_as_reference(m: Message) -> None:
    mail = prepare(m)
    expected = prepare(reference(m))
    assert mail.envelope == expected.envelope
    assert _numbered_boundaries(mail.data) == _numbered_boundaries(expected.data)


# Pieces of text that each take a path of their own through the encoders.
PIECES = [
    'a',
    'Hello, world.',
    ' ',
    '\t',
    '  \n',  # trailing white space
    '\t\n',
    '\n',
    '\r',
    '\r\n',
    '\n\r',
    '.',
    '.\n',
    '\n.\n',
    'From ',
    '\nFrom me\n',
    '>From ',
    '=',
    '=\n',
    '=20',
    '=?utf-8?q?x?=',
    'x' * 77,
    'x' * 78,
    'y' * 79,
    'z' * 998,
    'w' * 999,
    'é',  # Latin-1
    'ÿ\xa0',
    'Grüße',
    '€',
    '中文',
    '😀',  # outside the BMP
    '\U0001f468\u200d\U0001f469',
    '\x0b',
    '\x0c',
    '\x1c',
    '\x85',
    '\u2028',
    '\x00',
]
TEXT = st.lists(st.sampled_from(PIECES), max_size=14).map(''.join)
# What 8bit may carry: no NUL, lines of at most 998 bytes.
LINES = st.lists(
    st.sampled_from([p for p in PIECES if '\x00' not in p and len(p) < 900]),
    max_size=8,
).map(''.join)
ADDRESSES = st.sampled_from(
    ['b@example.com', 'Cé Dé <c@example.com>', 'D E <d@example.com>', 'e@example.org']
)
ATTACHMENTS = st.builds(
    Attachment,
    filename=st.sampled_from(['a.bin', 'résumé.pdf', 'notes.txt', 'x' * 90 + '.pdf']),
    content_type=st.sampled_from(
        ['application/octet-stream', 'application/pdf', 'image/png']
    ),
    data=st.binary(max_size=300),
    disposition=st.sampled_from(['attachment', 'inline']),
    transfer_encoding=st.sampled_from(['base64', 'quoted-printable']),
    # Given: prepare() makes a random one for an inline part without.
    content_id=st.sampled_from(['part1@test.example', '<part2@test.example>']),
) | st.builds(
    Attachment,
    filename=st.sampled_from(['notes.txt', 'données.csv']),
    content_type=st.sampled_from(['text/plain', 'text/csv']),
    data=LINES,
    disposition=st.sampled_from(['attachment', 'inline']),
    transfer_encoding=st.sampled_from(['base64', 'quoted-printable', '8bit']),
    content_id=st.just('text1@test.example'),
    charset=st.just('utf-8'),
)
EXTRA = st.sampled_from(
    [
        {},
        {'X-Mailer': 'pyramid_txmail'},
        {'X-Note': 'Grüße aus Köln', 'Keywords': 'alpha, beta, ' * 10},
        {'List-Unsubscribe': '<https://example.com/unsubscribe?id=' + '0' * 70 + '>'},
    ]
)


def messages(**fixed: object) -> st.SearchStrategy[Message]:
    kw: dict[str, object] = {
        'subject': st.sampled_from(['Hi', '', 'Café ☕', 'Your order ' * 10]),
        'sender': st.sampled_from(['a@example.com', 'Zoë Ünal <zoe@example.com>']),
        'recipients': st.lists(ADDRESSES, min_size=1, max_size=2, unique=True),
        'cc': st.lists(ADDRESSES, max_size=1),
        'bcc': st.lists(ADDRESSES, max_size=2, unique=True),
        'reply_to': st.sampled_from([None, 'r@example.com']),
        'body': st.none() | TEXT,
        'html': st.none() | TEXT.map(lambda t: f'<p>{t}</p>'),
        'attachments': st.lists(ATTACHMENTS, max_size=3),
        'extra_headers': EXTRA.map(lambda extra: {**extra, **FIXED}),
    }
    kw.update({name: st.just(value) for name, value in fixed.items()})
    return st.builds(Message, **kw)


def plain(body: str | None, html: str | None = None) -> Message:
    return Message(
        subject='S',
        sender='a@example.com',
        recipients=['b@example.com'],
        body=body,
        html=html,
        extra_headers=dict(FIXED),
    )


@settings(max_examples=250, deadline=None, derandomize=True, database=None)
@given(messages())
@example(plain('Your order is on its way. ' * 30, '<p>' + 'On its way. ' * 30))
@example(plain(None, None))  # neither: an empty text part
@example(plain(''))
@example(plain('', ''))
@example(plain(None, '<p>only html</p>'))
@example(plain('x' * 79 + '\n' + 'y' * 999 + '\n' + 'z' * 998))
@example(plain('From here\n.\n..\nFrom\n'))
@example(plain('bare\rCR\r\nand CRLF\nand LF\r'))
@example(plain('trailing  \nwhite\t\n \n'))
@example(plain('Latin-1: é ÿ ñ', 'non-BMP: 😀 \U00010348'))
@example(plain('\n\n\n'))
def test_prepared_bytes_are_those_of_the_set_content_construction(m):
    assert_same_as_reference(m)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(messages(attachments=[]))
def test_text_and_html_bytes_are_those_of_the_set_content_construction(m):
    assert_same_as_reference(m)
