"""Hostile input: every field a user types, against a real SMTP server.

Each test either expects a :class:`MailError` naming the field, with nothing
sent, or checks the exact bytes the server received. The server records the
raw argument of every MAIL and RCPT command, which a test reads as RFC 5321
says (4.1.2), independently of the code under test.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.message import Message as LegacyMessage
from email.mime.text import MIMEText

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from pyramid_txmail import Attachment, MailError
from pyramid_txmail.mailer import Mailer
from tests import email_message, message, parse_mail
from tests.smtpserver import SMTPTestServer


class RecordingServer(SMTPTestServer):
    """The test server, also keeping the argument of each MAIL and RCPT."""

    def __init__(self, **options):
        super().__init__(**options)
        self.lines: list[tuple[str, str]] = []

    def _new_session(self, kwargs):
        session = super()._new_session(kwargs)
        for verb in ('MAIL', 'RCPT'):
            session._smtp_methods[verb] = self._recorder(
                verb, session._smtp_methods[verb]
            )
        return session

    def _recorder(self, verb, method):
        async def record(arg):
            with self._lock:
                self.lines.append((verb, arg))
            await method(arg)

        return record


@pytest.fixture
def server(smtp_ca):
    with RecordingServer(ca=smtp_ca) as server:
        yield server


@pytest.fixture
def mailer(server):
    return Mailer.from_settings(server.settings())


# RFC 5321, 4.1.2, with RFC 6531's UTF-8 (both only as far as tests need).
_QUOTED = r'"(?:[ !#-\[\]-~]|[^\x00-\x7f]|\\[ -~])*"'
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_PATH = re.compile(
    rf'(?P<kind>FROM|TO):<(?P<local>{_QUOTED}|{_ATOM}(?:\.{_ATOM})*)'
    r'@(?P<domain>[A-Za-z0-9.-]+|\[[0-9A-Za-z:.]+\])>(?P<params>(?: [!-~]+)*)',
    re.IGNORECASE,
)


def mailbox(argument: str) -> tuple[str, str, list[str]]:
    """``(local part, domain, parameters)`` of a MAIL or RCPT argument."""
    match = _PATH.fullmatch(argument)
    assert match, f'not an RFC 5321 path: {argument!r}'
    local = match['local']
    if local.startswith('"'):
        local = re.sub(r'\\(.)', r'\1', local[1:-1])
    return local, match['domain'], match['params'].split()


def arguments(server: RecordingServer, verb: str) -> list[str]:
    return [arg for v, arg in server.lines if v == verb]


def header_mailboxes(received, name: str) -> list[tuple[str, str]]:
    # Parsed from text: message_from_bytes would read UTF-8 (RFC 6532) as
    # surrogate escapes.
    message = email.message_from_string(
        received.data.decode('utf-8'), policy=email.policy.default
    )
    return [(a.username, a.domain) for a in message[name].addresses]


def mail_in_form(form: str, headers: dict[str, str]):
    """A message from s@example.com with ``headers`` (To, Cc, Bcc), in one
    of the forms an application hands over: ``parsed`` from bytes,
    ``object`` built through email.policy.default, or ``Message`` with the
    headers in ``extra_headers`` (Bcc as its keyword)."""
    if form == 'parsed':
        lines = ''.join(f'{name}: {value}\n' for name, value in headers.items())
        return parse_mail(f'From: s@example.com\n{lines}\nhi\n'.encode())
    if form == 'object':
        return email_message({'From': 's@example.com', **headers})
    extra = dict(headers)
    bcc = extra.pop('Bcc', None)
    return message(
        sender='s@example.com',
        recipients=[],
        bcc=[bcc] if bcc else [],
        extra_headers=extra,
    )


def assert_refused(mailer, server, msg, field):
    with pytest.raises(MailError) as info:
        mailer.send_immediately(msg)
    assert info.value.field == field, info.value
    assert server.lines == []  # nothing was sent
    return info.value


def sent(mailer, server, msg):
    before = len(server.messages)
    mailer.send_immediately(msg)
    return server.wait_for(before + 1)[before]


# -- the envelope names exactly the addresses the headers show


INJECTION = '"victim@attacker.example> ORCPT=rfc822;x"@example.com'


def test_recipient_cannot_add_an_envelope_address_or_parameter(mailer, server):
    received = sent(mailer, server, message(recipients=[INJECTION]))
    [rcpt] = arguments(server, 'RCPT')
    assert rcpt == 'TO:' + f'<{INJECTION}>'
    local, domain, params = mailbox(rcpt)
    assert (local, domain, params) == (
        'victim@attacker.example> ORCPT=rfc822;x',
        'example.com',
        [],
    )
    assert header_mailboxes(received, 'To') == [(local, domain)]
    assert received.rcpt_tos == [INJECTION]


def test_sender_cannot_add_an_envelope_parameter(mailer, server):
    received = sent(mailer, server, message(sender=INJECTION))
    [mail] = arguments(server, 'MAIL')
    local, domain, params = mailbox(mail)
    assert local == 'victim@attacker.example> ORCPT=rfc822;x'
    assert not any(p.upper().startswith('ORCPT') for p in params)
    assert header_mailboxes(received, 'From') == [(local, domain)]


def test_quoted_local_part_goes_out_quoted(mailer, server):
    received = sent(
        mailer,
        server,
        message(recipients=['"john doe"@example.com', '"a\\"b\\\\c"@example.com']),
    )
    assert arguments(server, 'RCPT') == [
        'TO:<"john doe"@example.com>',
        'TO:<"a\\"b\\\\c"@example.com>',
    ]
    assert header_mailboxes(received, 'To') == [
        ('john doe', 'example.com'),
        ('a"b\\c', 'example.com'),
    ]


def test_address_object_with_hostile_local_part_goes_out_quoted(mailer, server):
    hostile = Address('Eve', 'victim@attacker.example> NOTIFY=NEVER', 'example.com')
    received = sent(mailer, server, message(recipients=[hostile]))
    [rcpt] = arguments(server, 'RCPT')
    assert rcpt == 'TO:<"victim@attacker.example> NOTIFY=NEVER"@example.com>'
    assert header_mailboxes(received, 'To') == [mailbox(rcpt)[:2]]


def test_local_part_that_is_not_a_dot_string_is_quoted(mailer, server):
    sent(mailer, server, message(recipients=['"john..doe."@example.com']))
    assert arguments(server, 'RCPT') == ['TO:<"john..doe."@example.com>']


# Python's parser decodes an encoded word (RFC 2047) even in a local part,
# where RFC 2047 allows none: a header showing one names another mailbox.
ENCODED_LOCAL = '=?utf-8?q?victim=40attacker.example?='


@pytest.mark.parametrize(
    ('field', 'msg'),
    [
        ('recipients', message(recipients=[f'{ENCODED_LOCAL}@example.com'])),
        ('recipients', message(recipients=[f'Ann <{ENCODED_LOCAL}@example.com>'])),
        ('cc', message(cc=[Address('Ann', ENCODED_LOCAL, 'example.com')])),
        ('cc', message(cc=[Address('', '=?utf-8?q?a=0A?=', 'example.com')])),
        ('To', message(recipients=[], extra_headers={'To': f'{ENCODED_LOCAL}@x.com'})),
        (
            'To',
            email_message(
                {
                    'From': 'from@example.com',
                    'To': Address(username=ENCODED_LOCAL, domain='example.com'),
                }
            ),
        ),
        (
            'To',
            parse_mail(
                f'From: a@example.com\nTo: {ENCODED_LOCAL}@example.com\n\nhi\n'.encode()
            ),
        ),
        (
            # A header object whose local part decodes to an encoded word.
            'To',
            email_message(
                {
                    'From': 'from@example.com',
                    'To': '=?utf-8?q?=3D=3Futf-8=3Fq=3Fvictim=3F=3D?=@example.com',
                }
            ),
        ),
    ],
)
def test_local_part_that_a_reader_decodes_is_refused(mailer, server, field, msg):
    assert_refused(mailer, server, msg, field)


@pytest.mark.parametrize(
    'address',
    [
        # Followed by white space or a dot, the word left no defect, and
        # none in the parse tree (an obsolete local part is parsed again
        # from the decoded text): mail went to the decoded mailbox.
        f'{ENCODED_LOCAL} @example.com',
        f'{ENCODED_LOCAL}.x@example.com',
        f'a . {ENCODED_LOCAL} @example.com',
        f'Ann <{ENCODED_LOCAL} @example.com>',
    ],
)
@pytest.mark.parametrize('form', ['parsed', 'recipients', 'extra_headers'])
def test_local_part_that_a_reader_decodes_is_refused_before_a_space_or_a_dot(
    mailer, server, address, form
):
    if form == 'parsed':
        msg = parse_mail(f'From: a@example.com\nTo: {address}\n\nhi\n'.encode())
    elif form == 'recipients':
        msg = message(recipients=[address])
    else:
        msg = message(recipients=[], extra_headers={'To': address})
    assert_refused(mailer, server, msg, 'recipients' if form == 'recipients' else 'To')


@pytest.mark.parametrize(
    'value',
    [
        'victim@attacker.example> ORCPT=rfc822;x@example.com',
        'victim@attacker.example>@example.com',
        'john doe@example.com',
        'a@b.example c@d.example',
        '<a@b.example> NOTIFY=NEVER',
        '"a\x00b"@example.com',
        '"a\tb"@example.com',
        '"a\x7fb"@example.com',
        '"a\u2028b"@example.com',
        'a@exa mple.com',
        'a@exa_mple.com',
        'a@[300.1.1.1]',
        'a@[IPv6:nonsense]',
        'a@[127.0.0.1',
        'a@' + 'x' * 64 + '.example',
        'a@' + 'ü' * 64 + '.example',
        'a@' + 'abc.' * 64 + 'com',
        'x' * 65 + '@example.com',
    ],
)
def test_address_that_cannot_be_an_rfc5321_mailbox_is_refused(mailer, server, value):
    error = assert_refused(mailer, server, message(recipients=[value]), 'recipients')
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    ('field', 'address'),
    [
        ('recipients', Address(username='a b', domain='exa mple.com')),
        ('recipients', Address(username='', domain='example.com')),
        ('cc', Address(username='a\tb', domain='example.com')),
        ('bcc', Address(username='a', domain='example.com>')),
        ('sender', Address('Eve\x00Bcc: x@example.com', 'a', 'example.com')),
        ('reply_to', Address('Eve\x85', 'a', 'example.com')),
    ],
)
def test_address_objects_are_checked_too(mailer, server, field, address):
    kw = {field: [address] if field != 'sender' else address}
    assert_refused(mailer, server, message(**kw), field)


def test_address_literals_are_accepted(mailer, server):
    sent(mailer, server, message(recipients=['a@[127.0.0.1]', 'b@[IPv6:::1]']))
    assert arguments(server, 'RCPT') == ['TO:<a@[127.0.0.1]>', 'TO:<b@[IPv6:::1]>']


LOCAL_PART_CHARACTERS = st.sampled_from(
    [
        *'aZ09.!#$%&\'*+/=?^_`{|}~- "\\<>@,;:()[]',
        *'\r\n\x00\t\x0b\x7f\x85\u2028é中\xa0',
    ]
)


def test_header_and_envelope_agree_for_every_accepted_local_part(mailer, server):
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,  # nothing written into the work tree
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        local=st.text(LOCAL_PART_CHARACTERS, min_size=1, max_size=12),
        form=st.sampled_from(['typed', 'quoted', 'object', 'named']),
    )
    def check(local, form):
        # The stdlib's Address itself refuses CR and LF.
        assume(form != 'object' or not ('\r' in local or '\n' in local))
        quoted = '"' + local.replace('\\', '\\\\').replace('"', '\\"') + '"'
        if form == 'object':
            address = Address(username=local, domain='example.com')
        else:
            address = {
                'typed': f'{local}@example.com',
                'quoted': f'{quoted}@example.com',
                'named': f'Some One <{quoted}@example.com>',
            }[form]
        before = len(server.messages)
        server.lines.clear()
        try:
            mailer.send_immediately(message(recipients=[address]))
        except MailError as error:
            assert error.field == 'recipients'
            assert server.lines == []
            event(f'{form}: refused')
            return
        event(f'{form}: sent')
        received = server.wait_for(before + 1)[-1]
        [rcpt] = arguments(server, 'RCPT')
        local_part, domain, params = mailbox(rcpt)
        assert params == []
        assert header_mailboxes(received, 'To') == [(local_part, domain)]
        if form != 'typed':
            assert local_part == local  # and it is what the user meant

    check()


# -- header names and values


@pytest.mark.parametrize(
    'name', ['X A', 'X-A\x00', 'X:A', 'X-Ünï', '', 'X-A\n', 'X-A\t', 5, None]
)
def test_extra_header_name_must_be_an_rfc5322_field_name(mailer, server, name):
    field = name if isinstance(name, str) else repr(name)
    error = assert_refused(mailer, server, message(extra_headers={name: 'v'}), field)
    assert 'header name' in str(error)


def test_email_message_with_a_bad_header_name_is_refused(mailer, server):
    msg = email_message(
        {'From': 'from@example.com', 'To': 'to@example.com', 'X-Bad Name': 'v'}
    )
    assert_refused(mailer, server, msg, 'X-Bad Name')


LINE_BREAKS_AND_CONTROLS = [
    '\r',
    '\n',
    '\x00',
    '\x01',
    '\x0b',
    '\x0c',
    '\x1c',
    '\x1d',
    '\x1e',
    '\x1f',
    '\x7f',
    '\x85',
    '\x9f',
    '\u2028',
    '\u2029',
    '\ud800',
]


@pytest.mark.parametrize('char', LINE_BREAKS_AND_CONTROLS)
def test_line_breaks_and_controls_refused_in_subject_and_header_values(
    mailer, server, char
):
    error = assert_refused(mailer, server, message(subject=f'a{char}b'), 'subject')
    assert repr(char)[1:-1] in str(error)
    assert_refused(mailer, server, message(extra_headers={'X-A': f'a{char}b'}), 'X-A')
    if char != '\ud800':  # UTF-8 has no lone surrogate
        # The stdlib refuses to set these: a message read from bytes has them.
        encoded = ''.join(f'={b:02X}' for b in char.encode())
        msg = parse_mail(
            b'From: from@example.com\nTo: to@example.com\n'
            + f'X-B: =?utf-8?q?a{encoded}b?=\n\nhello\n'.encode()
        )
        assert_refused(mailer, server, msg, 'X-B')


@pytest.mark.parametrize(
    'value',
    [
        'plain',
        'a "quoted" <angle> & word',
        'tab\there',
        'Zoë Ünal ☕',
        'back\\slash',
        'double  space',
    ],
)
def test_typed_text_arrives_exactly_or_is_refused(mailer, server, value):
    for field, kw, read in [
        ('subject', {'subject': value}, lambda m: m['Subject']),
        ('X-Note', {'extra_headers': {'X-Note': value}}, lambda m: m['X-Note']),
        (
            'recipients',
            {'recipients': [Address(value, 'to', 'example.com')]},
            lambda m: m['To'].addresses[0].display_name,
        ),
        (
            'sender',
            {'sender': Address(value, 'from', 'example.com')},
            lambda m: m['From'].addresses[0].display_name,
        ),
        (
            'attachment filename',
            {'attachments': [Attachment(value, 'text/plain', 'x')]},
            lambda m: next(m.iter_attachments()).get_filename(),
        ),
    ]:
        server.lines.clear()
        try:
            received = sent(mailer, server, message(**kw))
        except MailError as error:
            assert error.field == field
            assert '\t' in value  # only a tab in a display name is refused
            continue
        assert read(received.message) == value, field


def test_display_name_with_specials_round_trips_through_the_wire(mailer, server):
    name = 'Doe, "Jo" <jo@evil.example> \\'
    received = sent(mailer, server, message(recipients=[Address(name, 'jo', 'ex.com')]))
    [address] = received.message['To'].addresses
    assert (address.display_name, address.username, address.domain) == (
        name,
        'jo',
        'ex.com',
    )
    assert received.rcpt_tos == ['jo@ex.com']


# -- fields extra_headers must not smuggle past the envelope


def test_bcc_in_extra_headers_goes_to_the_envelope_only(mailer, server):
    received = sent(
        mailer, server, message(extra_headers={'Bcc': 'hidden@example.com'})
    )
    assert received.rcpt_tos == ['to@example.com', 'hidden@example.com']
    assert b'hidden' not in received.data
    assert b'Bcc' not in received.data


def test_to_and_cc_in_extra_headers_are_recipients(mailer, server):
    received = sent(
        mailer,
        server,
        message(
            recipients=None,
            extra_headers={'To': 'a@example.com, B <b@example.com>', 'cc': 'c@ex.com'},
        ),
    )
    assert received.rcpt_tos == ['a@example.com', 'b@example.com', 'c@ex.com']
    assert header_mailboxes(received, 'To') == [
        ('a', 'example.com'),
        ('b', 'example.com'),
    ]
    assert received.message['Cc'] == 'c@ex.com'


def test_from_and_reply_to_in_extra_headers(mailer, server):
    received = sent(
        mailer,
        server,
        message(
            sender=None,
            extra_headers={'From': 'Shop <shop@example.com>', 'Reply-To': 'h@ex.com'},
        ),
    )
    assert received.mail_from == 'shop@example.com'
    assert received.message['From'] == 'Shop <shop@example.com>'
    assert received.message['Reply-To'] == 'h@ex.com'


def test_sender_in_extra_headers_is_the_envelope_sender(mailer, server):
    received = sent(mailer, server, message(extra_headers={'Sender': 'b@ex.com'}))
    assert received.mail_from == 'b@ex.com'
    assert received.message['Sender'] == 'b@ex.com'
    assert received.message['From'] == 'from@example.com'


@pytest.mark.parametrize(
    ('header', 'keyword'),
    [
        ('To', 'recipients'),
        ('Cc', 'cc'),
        ('BCC', 'bcc'),
        ('From', 'sender'),
        ('Reply-To', 'reply_to'),
        ('Subject', 'subject'),
    ],
)
def test_field_given_both_as_keyword_and_extra_header_is_refused(
    mailer, server, header, keyword
):
    value = 'Hi' if keyword == 'subject' else 'x@example.com'
    kw = {keyword: [value] if keyword in ('recipients', 'cc', 'bcc') else value}
    error = assert_refused(
        mailer, server, message(extra_headers={header: 'y@example.com'}, **kw), header
    )
    assert keyword in str(error)


def test_same_extra_header_twice_is_refused(mailer, server):
    msg = message(extra_headers={'X-Tag': 'a', 'x-tag': 'b'})
    assert_refused(mailer, server, msg, 'x-tag')


@pytest.mark.parametrize(
    'name', ['Content-Type', 'MIME-Version', 'content-disposition']
)
def test_mime_fields_in_extra_headers_are_refused(mailer, server, name):
    assert_refused(mailer, server, message(extra_headers={name: 'text/html'}), name)


@pytest.mark.parametrize(
    ('name', 'value'),
    [
        ('Message-ID', 'no angle brackets'),
        ('Message-ID', '<two@ats@example.com>'),
        ('Message-ID', '<a b@example.com>'),
        ('Date', 'yesterday'),
        ('Sender', 'a@example.com, b@example.com'),
        ('Bcc', 'not an address'),
        ('To', '"victim@attacker.example>"'),
        ('Cc', '"unterminated <a@b.c'),
        ('Cc', 'a@['),  # the stdlib's parser raises
        ('Reply-To', 'a@example.com\x00'),
    ],
)
def test_special_extra_headers_are_checked(mailer, server, name, value):
    assert_refused(mailer, server, message(extra_headers={name: value}), name)


def test_none_header_value_is_left_out(mailer, server):
    received = sent(
        mailer, server, message(extra_headers={'X-Tag': None, 'Reply-To': None})
    )
    assert 'X-Tag' not in received.message
    assert 'Reply-To' not in received.message
    assert b'None' not in received.data


def test_duplicate_fields_in_an_email_message_are_refused(mailer, server):
    for name in ('From', 'To'):
        msg = parse_mail(
            b'From: a@example.com\nTo: b@example.com\n'
            + f'{name}: c@example.com\n\nhello\n'.encode()
        )
        error = assert_refused(mailer, server, msg, name)
        assert 'at most one' in str(error)


def test_email_message_header_the_parser_cannot_read_is_a_mail_error(mailer, server):
    # An encoded word hiding a line break in a display name: the stdlib's
    # parser raises a plain ValueError when the header is read.
    msg = parse_mail(
        b'From: a@example.com\nTo: =?utf-8?q?a=0D=0A?= <b@example.com>\n\nhi\n'
    )
    assert_refused(mailer, server, msg, 'To')


@pytest.mark.parametrize(
    'value',
    [
        'Hi\nBcc: victim@attacker.example',
        'Hi\r\nTo: victim@attacker.example',
        'Hi\rX-Injected: yes',
        "Hi\n\nA body of the sender's choosing",
        'Hi\n\n',  # an empty line: the header block would end there
    ],
)
@pytest.mark.parametrize('policy', [email.policy.compat32, email.policy.default])
@pytest.mark.parametrize('where', ['message', 'part'])
def test_email_message_value_stored_unchecked_cannot_start_a_field(
    mailer, server, value, policy, where
):
    # compat32 stores any value, set_raw() does with any policy: a line break
    # that is no fold would have started another field, or the body.
    msg = EmailMessage(policy=policy)
    msg['From'] = 'from@example.com'
    msg['To'] = 'to@example.com'
    if where == 'message':
        msg.set_raw('Subject', value)
        msg.set_payload('hello\n')
    else:
        part = MIMEPart(policy=policy)
        part.set_raw('Content-Description', value)
        part.set_payload('hello\n')
        msg.set_raw('Content-Type', 'multipart/mixed')
        msg.set_payload([part])
    field = 'Subject' if where == 'message' else 'Content-Description'
    error = assert_refused(mailer, server, msg, field)
    assert 'line breaks' in str(error)


def test_email_message_value_folded_by_hand_is_written_as_folded(mailer, server):
    msg = parse_mail(
        b'From: from@example.com\nTo: to@example.com\n'
        b'Subject: folded\n \tby hand\nX-Note: \n starts on the next line\n\nhi\n'
    )
    received = sent(mailer, server, msg)
    assert b'Subject: folded\r\n \tby hand\r\n' in received.data
    assert b'X-Note: \r\n starts on the next line\r\n' in received.data


@pytest.mark.parametrize('policy', [email.policy.compat32, email.policy.default])
@pytest.mark.parametrize('value', ['Hi\n \n <b>there</b>', 'Hi\n\t\n there\n '])
def test_email_message_fold_onto_a_line_of_white_space_only_is_not_written(
    mailer, server, value, policy
):
    # Obsolete folding (RFC 5322, 4.2), which the parser keeps as given: a
    # line of white space only ends the header block for readers that take
    # it for the empty line, and what follows showed to them as the body.
    parsed = parse_mail(
        f'From: from@example.com\nTo: to@example.com\nSubject: {value}\n'
        'X-After: kept\n\nhi\n'.encode()
    )
    msg = EmailMessage(policy=policy)
    for name, raw in parsed.raw_items():
        msg.set_raw(name, raw)
    msg.set_payload('hi\n')
    received = sent(mailer, server, msg)
    head = received.data.split(b'\r\n\r\n', 1)[0].split(b'\r\n')
    assert all(line.strip() for line in head)
    shown = read_back(received.data)
    assert shown['X-After'] == 'kept'
    assert shown['Subject'].split() == value.split()


@pytest.mark.parametrize('policy', [email.policy.compat32, email.policy.default])
def test_header_object_stored_under_another_field_is_written_under_that_field(
    mailer, server, policy
):
    # A header object keeps the name it was made for, and the stdlib writes
    # it under that name when it folds it: a second To showing mailboxes
    # that are not in the envelope, a Bcc shown to every reader.
    original = EmailMessage()
    original['To'] = ', '.join(f'person{i}@example.com' for i in range(6))
    original['Bcc'] = ', '.join(f'blind{i}@example.com' for i in range(6))
    original['Subject'] = 'Grüße'
    msg = EmailMessage(policy=policy)
    msg['From'] = 'from@example.com'
    msg['To'] = 'to@example.com'
    for name in ('To', 'Bcc', 'Subject'):
        # compat32 stores any value as given; set_raw() does with any policy.
        msg.set_raw(f'X-Original-{name}', original[name])
    msg.set_payload('hello\n')
    received = sent(mailer, server, msg)
    assert arguments(server, 'RCPT') == ['TO:<to@example.com>']
    shown = received.message
    assert shown.get_all('To') == ['to@example.com']
    assert 'Bcc' not in shown and 'Subject' not in shown
    assert shown['X-Original-To'] == original['To']
    assert shown['X-Original-Bcc'] == original['Bcc']
    assert shown['X-Original-Subject'] == 'Grüße'


@pytest.mark.parametrize(
    'to',
    [
        'a@example.com b@example.org',  # no comma: b@ was dropped
        'a@example.com;b@example.org',
        'a@example.com <b@example.org>',  # went to a@, where a reader sees b@
        'Ann a@example.com <b@example.org>',  # went to "Ann a"@example.com
        '"Lee, Ann" <a@example.com> c@example.org',  # c@ was dropped
        # An encoded word decoded in a local part: the mailbox changes.
        '"=?utf-8?q?victim=40evil.example?="@example.com',
        'Ann <"=?utf-8?q?victim=40evil.example?="@example.com>',
    ],
)
@pytest.mark.parametrize('form', ['parsed', 'object'])
def test_address_list_the_parser_reads_only_in_part_is_refused(
    mailer, server, to, form
):
    # Python's parser skips what it cannot read (with an InvalidHeaderDefect);
    # reading again what it kept sent mail to part of the list, or elsewhere.
    error = assert_refused(mailer, server, mail_in_form(form, {'To': to}), 'To')
    assert 'not a valid address list' in str(error)
    if '=?' in to:
        assert 'A local part cannot hold an encoded word' in str(error)


@pytest.mark.parametrize(
    'to',
    [
        '"=?utf-8?q?Ann?=" <a@example.com>, b@example.org',  # as old mailers do
        '=?utf-8?q?Ann?=x <a@example.com>, b@example.org',
        '"=?utf-8?q?b=40example.org=2C?=" <a@example.com>, b@example.org',
    ],
)
@pytest.mark.parametrize('form', ['parsed', 'object'])
def test_encoded_word_where_rfc_2047_allows_none_in_a_display_name_is_read(
    mailer, server, to, form
):
    # The parser decodes it, with a defect; the mailboxes are those written.
    received = sent(mailer, server, mail_in_form(form, {'To': to}))
    rcpts = [mailbox(r)[:2] for r in arguments(server, 'RCPT')]
    assert rcpts == [('a', 'example.com'), ('b', 'example.org')]
    assert header_mailboxes(received, 'To') == rcpts


@pytest.mark.parametrize('field', ['To', 'Cc'])
@pytest.mark.parametrize('form', ['parsed', 'object', 'Message'])
def test_a_field_of_empty_groups_beside_a_bcc_names_nobody(mailer, server, field, form):
    # "To: undisclosed-recipients:;" (RFC 5322, 3.6.3): it names nobody.
    value = 'undisclosed-recipients:;'
    msg = mail_in_form(form, {field: value, 'Bcc': 'b@example.org'})
    received = sent(mailer, server, msg)
    assert [mailbox(r)[:2] for r in arguments(server, 'RCPT')] == [('b', 'example.org')]
    shown = email.message_from_bytes(received.data, policy=email.policy.default)
    assert shown.get_all(field) == [value]
    assert 'Bcc' not in shown


@pytest.mark.parametrize(
    'value, written',
    [
        # A comment: nobody to a reader of RFC 5322, a mailbox to one that
        # picks addresses out of the text (or drops only the parentheses).
        ('list:(bob@example.net);', 'list:;'),
        # A name that a reader decoding encoded words before parsing (as
        # many do) reads as a group and a mailbox.
        (
            '=?utf-8?q?x=3A=3B_bob=40example=2Enet=2C?= y:;',
            '"x:; bob@example.net, y":;',
        ),
    ],
)
@pytest.mark.parametrize('form', ['parsed', 'Message'])
def test_a_field_of_empty_groups_is_written_anew_from_their_names(
    mailer, server, value, written, form
):
    msg = mail_in_form(form, {'To': value, 'Bcc': 'b@example.org'})
    received = sent(mailer, server, msg)
    assert [mailbox(r)[:2] for r in arguments(server, 'RCPT')] == [('b', 'example.org')]
    assert f'\r\nTo: {written}\r\n'.encode() in received.data
    assert b'example.net' not in received.data.replace(written.encode(), b'')


@pytest.mark.parametrize('form', ['parsed', 'object'])
def test_an_empty_bcc_field_is_sent_without_it(mailer, server, form):
    # RFC 5322, 3.6.3: "Bcc:" may be empty, and mail programs write it so.
    msg = mail_in_form(form, {'To': 'a@example.com', 'Bcc': ''})
    received = sent(mailer, server, msg)
    assert arguments(server, 'RCPT') == ['TO:<a@example.com>']
    assert b'Bcc' not in received.data


@pytest.mark.parametrize(
    'headers, field',
    [
        ({'To': 'undisclosed-recipients:;'}, None),  # nobody at all
        ({'From': 'nobody:;', 'To': 'b@example.org'}, 'From'),
        ({'To': 'b@example.org', 'Reply-To': 'nobody:;'}, 'Reply-To'),
        ({'To': 'a:;', 'Cc': 'b:;'}, None),
    ],
)
def test_empty_groups_are_refused_where_a_mailbox_is_needed(
    mailer, server, headers, field
):
    msg = email_message({'From': 's@example.com', **headers})
    assert_refused(mailer, server, msg, field or 'recipients')


@pytest.mark.parametrize(
    'to',
    [
        'J.R. Smith <a@example.com>, b@example.org',  # an obsolete phrase
        ', a@example.com,, b@example.org',  # empty list elements
        '<@route.example:a@example.com>, b@example.org',  # an obsolete route
        'a . b@example.com, b@example.org',  # an obsolete local part
    ],
)
def test_address_list_in_obsolete_syntax_is_read_whole(mailer, server, to):
    received = sent(
        mailer, server, parse_mail(f'From: s@example.com\nTo: {to}\n\nhi\n'.encode())
    )
    rcpts = arguments(server, 'RCPT')
    assert [mailbox(r)[:2] for r in rcpts][1:] == [('b', 'example.org')]
    assert header_mailboxes(received, 'To') == [mailbox(r)[:2] for r in rcpts]


RESENT = (
    b'From: a@example.com\nTo: b@example.com\nResent-From: c@example.com\n'
    b'Resent-To: d@example.com\nResent-Bcc: blind@example.com\n'
    b'Resent-Date: Sat, 28 Nov 2026 12:00:00 +0000\n\nhi\n'
)


def test_a_resent_message_is_refused_not_sent_back_to_its_first_recipients(
    mailer, server
):
    # The envelope is taken from From, To, Cc and Bcc: this went back to
    # b@ (not to d@ and blind@, as smtplib's send_message() sends it), and
    # showed its Resent-Bcc to every reader.
    error = assert_refused(mailer, server, parse_mail(RESENT), 'Resent-From')
    assert 'resent messages are not supported' in str(error)


@pytest.mark.parametrize(
    'name', ['Resent-From', 'Resent-Sender', 'Resent-To', 'Resent-Cc', 'Resent-Bcc']
)
def test_resent_address_fields_are_refused(mailer, server, name):
    msg = parse_mail(
        b'From: a@example.com\nTo: b@example.com\n'
        + f'{name.upper()}: d@example.com\n\nhi\n'.encode()
    )
    assert_refused(mailer, server, msg, name.upper())
    assert_refused(mailer, server, message(extra_headers={name: 'd@example.com'}), name)


@pytest.mark.parametrize(
    'to',
    [b'caf\xe9@example.com', b'Ann <caf\xe9@example.com>', b'"caf\xe9"@example.com'],
)
def test_local_part_in_bytes_that_are_not_utf8_is_refused(mailer, server, to):
    # The parser reads such a byte as U+FFFD: mail went to "caf\ufffd@",
    # another mailbox than the one the bytes named.
    msg = parse_mail(b'From: a@example.com\nTo: ' + to + b'\n\nhi\n')
    error = assert_refused(mailer, server, msg, 'To')
    assert 'U+FFFD' in str(error)
    typed = message(recipients=['caf\ufffd@example.com'])
    assert_refused(mailer, server, typed, 'recipients')


def test_email_message_addresses_are_rewritten_as_the_envelope_names_them(
    mailer, server
):
    msg = email_message(
        {
            'From': 'Ann <ann@example.com>',
            'To': f'{INJECTION}, "john doe"@example.com',
            'Subject': 'Hi',
        }
    )
    received = sent(mailer, server, msg)
    rcpts = arguments(server, 'RCPT')
    assert rcpts == [f'TO:<{INJECTION}>', 'TO:<"john doe"@example.com>']
    assert header_mailboxes(received, 'To') == [mailbox(r)[:2] for r in rcpts]


def test_email_message_with_several_from_needs_a_sender(mailer, server):
    msg = email_message(
        {'From': 'a@example.com, b@example.com', 'To': 'to@example.com'}
    )
    assert_refused(mailer, server, msg, 'From')


# -- types


@pytest.mark.parametrize(
    ('kw', 'field'),
    [
        ({'recipients': 5}, 'recipients'),
        ({'recipients': b'to@example.com'}, 'recipients'),
        ({'cc': 5}, 'cc'),
        ({'subject': 5}, 'subject'),
        ({'subject': b'Hi'}, 'subject'),
        ({'extra_headers': {'X-A': 5}}, 'X-A'),
        ({'extra_headers': ['X-A: v']}, 'extra_headers'),
        ({'attachments': 5}, 'attachments'),
        ({'attachments': ['a.txt']}, 'attachments'),
        ({'attachments': [Attachment('a.bin', data=5)]}, 'attachments'),
        ({'attachments': [Attachment('a.bin', data={'a': 1})]}, 'attachments'),
        ({'attachments': [Attachment(5, data=b'x')]}, 'attachment filename'),
    ],
)
def test_wrong_types_are_refused_naming_the_field(mailer, server, kw, field):
    error = assert_refused(mailer, server, message(**kw), field)
    if "'a.bin'" in repr(kw):
        assert str(error).startswith("attachment 'a.bin': ")


def test_attachment_data_int_is_not_nul_bytes(mailer, server):
    error = assert_refused(
        mailer,
        server,
        message(attachments=[Attachment('r.pdf', data=5)]),
        'attachments',
    )
    assert str(error) == (
        "attachment 'r.pdf': data must be bytes, str or a file object, got int"
    )


@pytest.mark.parametrize('legacy', [LegacyMessage(), MIMEText('hello')])
def test_legacy_email_message_is_refused_clearly(mailer, server, legacy):
    legacy['From'] = 'from@example.com'
    legacy['To'] = 'to@example.com'
    error = assert_refused(mailer, server, legacy, 'message')
    assert 'EmailMessage' in str(error)


def test_something_that_is_no_message_is_refused(mailer, server):
    error = assert_refused(mailer, server, {'subject': 'Hi'}, 'message')
    assert 'got dict' in str(error)


def test_header_only_address_needing_smtputf8_is_refused(mailer, server):
    error = assert_refused(
        mailer, server, message(reply_to='zoë@example.com'), 'Reply-To'
    )
    assert 'SMTPUTF8' in str(error)


def test_non_ascii_local_part_in_the_envelope_arrives_with_smtputf8(mailer, server):
    received = sent(
        mailer,
        server,
        message(recipients=['"zoë ü"@example.com'], reply_to='zoë@example.com'),
    )
    assert received.smtputf8
    assert arguments(server, 'RCPT') == ['TO:<"zoë ü"@example.com>']
    assert header_mailboxes(received, 'To') == [('zoë ü', 'example.com')]
    assert received.message['Reply-To'] == 'zoë@example.com'


@pytest.mark.parametrize(
    'domain',
    [
        'faß.example',  # IDNA 2003: fass.example; IDNA 2008: xn--fa-hia.example
        '\u03c3\u03bf\u03c6\u03bf\u03c2.example',  # final sigma, not in IDNA 2003
        'pay\u200dpal.example',  # joiners vanish in IDNA 2003
        'ex\u00adample.com',  # a soft hyphen vanishes too
    ],
)
@pytest.mark.parametrize('local', ['a', 'zoë'])
def test_domain_that_idna_would_turn_into_another_domain_is_refused(
    mailer, server, domain, local
):
    # Python's codec is IDNA 2003, which maps these to a different name than
    # a relay's IDNA 2008 would (or the user typed): the mail could go to
    # someone else's domain, so the address is refused.
    error = assert_refused(
        mailer, server, message(recipients=[f'{local}@{domain}']), 'recipients'
    )
    assert 'domain' in str(error)
    msg = email_message({'From': 'from@example.com', 'To': f'{local}@{domain}'}, None)
    assert_refused(mailer, server, msg, 'To')


def test_international_domain_goes_out_as_the_name_typed(mailer, server):
    sent(
        mailer,
        server,
        message(
            recipients=[
                'a@Bücher.example',
                'b@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com',
                'c@bücher.xn--p1ai',  # a U-label beside an A-label
            ]
        ),
    )
    assert arguments(server, 'RCPT') == [
        'TO:<a@xn--bcher-kva.example>',
        'TO:<b@example.com>',
        'TO:<c@xn--bcher-kva.xn--p1ai>',
    ]


@pytest.mark.parametrize(
    'name',
    [
        'a"b\\c, <x@evil.example>' * 60,
        'é, <evil@x.example> "' * 80,
        'x' * 1000 + ' <evil@x.example>',
    ],
)
def test_display_name_too_long_to_fold_intact_is_refused(mailer, server, name):
    # Longer than a line, the header is folded by the stdlib, which used to
    # lose the quoting: To showed evil@x.example, never in the envelope.
    msg = message(recipients=[Address(name, 'to', 'example.com')])
    error = assert_refused(mailer, server, msg, 'To')
    assert 'display name' in str(error)


@pytest.mark.parametrize(
    'value',
    [
        'x' * 1000 + ' <to@example.com>',
        '"a' * 5000 + '@example.com',  # seconds, quadratic, in the stdlib parser
        'a.' * 5000 + '@example.com',
        '=?utf-8?q?a?= ' * 1000 + '<to@example.com>',
    ],
)
@pytest.mark.parametrize('field', ['recipients', 'sender', 'reply_to'])
def test_typed_address_longer_than_a_header_line_is_refused(
    mailer, server, field, value
):
    msg = message(**{field: [value] if field == 'recipients' else value})
    error = assert_refused(mailer, server, msg, field)
    assert 'longer than 998 characters' in str(error)
    assert len(str(error)) < 200  # the value is not quoted whole


@pytest.mark.parametrize(
    'domain',
    ['attacker.example>, <victim@attacker.example', 'exa mple.com', 'example.com>'],
)
def test_address_object_built_from_typed_parts_cannot_add_a_recipient(
    mailer, server, domain
):
    # An app may build an Address from form fields; its text, read again,
    # would name other mailboxes than the object does.
    msg = EmailMessage()
    msg['From'] = 'from@example.com'
    msg['To'] = Address('Ann', 'ann', domain)
    msg.set_content('hello')
    error = assert_refused(mailer, server, msg, 'To')
    assert 'domain' in str(error)


# -- what a reader of the bytes sees, against the envelope

# Items of address lists as hostile bytes may hold them.
FIELD_ITEMS = [
    'a@example.com',
    'Ann Lee <b@example.com>',
    '"Doe, John" <c@example.com>',
    '=?utf-8?q?x=40evil.example=2C?= <d@example.com>',  # decodes to specials
    '=?utf-8?q?e=40evil.example?=@example.com',  # decoded in the local part
    '<@evil.example:f@example.com>',  # an obsolete route
    'g@example.com (h@evil.example)',  # a comment
    'undisclosed-recipients:;',
    'Friends: i@example.com, j@example.org;',
    'zoë@example.com',
    '"k l"@example.com',
    'J.R. <m@example.com>',
    'n@[127.0.0.1]',
    '"o\\"@example.com',
    '<p@example.com',
    '',
]
ADDRESS_LISTS = st.builds(
    str.join,
    st.sampled_from([', ', ',\r\n ', ',']),
    st.lists(st.sampled_from(FIELD_ITEMS), min_size=1, max_size=3),
)
FIELD_NAMES = ['To', 'CC', 'Bcc', 'Sender', 'Reply-To', 'Resent-Bcc', 'From']


def read_back(data: bytes) -> EmailMessage:
    return email.message_from_string(data.decode('utf-8'), policy=email.policy.default)


def clean(header) -> bool:
    return all(type(d).__name__ == 'NonASCIILocalPartDefect' for d in header.defects)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(
    to=ADDRESS_LISTS,
    other=ADDRESS_LISTS,
    name=st.sampled_from(FIELD_NAMES),
)
@example(to='=?utf-8?q?e=40evil.example?=@example.com', other='a@x.com', name='CC')
@example(to='a@example.com', other='blind@example.com', name='Resent-Bcc')
def test_a_reader_of_the_bytes_sees_the_envelope(to, other, name):
    from pyramid_txmail.message import _addr_spec, prepare

    raw = f'From: s@example.com\r\nTo: {to}\r\n{name}: {other}\r\n\r\nhi\r\n'
    given_msg = email.message_from_bytes(raw.encode(), policy=email.policy.default)
    try:
        mail = prepare(given_msg)
    except MailError as error:
        assert error.field.lower() in {'to', name.lower(), 'recipients'}
        event('refused')
        return
    event('sent')
    envelope, data = mail.envelope, mail.data
    head = data.split(b'\r\n\r\n', 1)[0].split(b'\r\n')
    assert all(re.match(rb'[!-9;-~]+:|[ \t]', line) for line in head)
    shown_msg = read_back(data)
    assert not {key.lower() for key in shown_msg} & {'bcc', 'resent-bcc'}
    shown = []
    for field in ('To', 'Cc'):
        if shown_msg[field] is not None:
            assert clean(shown_msg[field]), data
            shown += [_addr_spec(a) for a in shown_msg[field].addresses]
    shown = list(dict.fromkeys(shown))
    assert list(envelope.recipients[: len(shown)]) == shown, data
    if name != 'Bcc':
        assert list(envelope.recipients) == shown
    [sender] = (shown_msg['Sender'] or shown_msg['From']).addresses
    assert _addr_spec(sender) == envelope.sender
    # Where the stdlib reads what was given cleanly, that is the envelope.
    fields = [given_msg[f] for f in ('To', 'Cc', 'Bcc') if given_msg[f] is not None]
    if all(clean(f) for f in fields):
        read = [_addr_spec(a) for f in fields for a in f.addresses]
        assert list(envelope.recipients) == list(dict.fromkeys(read))
