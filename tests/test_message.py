"""Messages as a user builds them, checked on the bytes that go on the wire."""

from __future__ import annotations

import email
import email.header
import email.policy
import io
import re
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

import pytest

from pyramid_txmail.message import Attachment, MailError, Message, prepare
from tests import email_message, message
from tests import parse_mail as parse


def prepared(msg, **kw):
    """``prepare(msg)`` with a fixed Message-ID domain."""
    kw.setdefault('message_id_domain', 'test.example')
    return prepare(msg, **kw)


def refusal(field, msg, **kw) -> MailError:
    """The MailError ``prepare`` raises for ``msg``, checked to name ``field``."""
    with pytest.raises(MailError) as info:
        prepared(msg, **kw)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    return info.value


def test_prepared_bytes_end_every_line_with_crlf():
    mail = prepared(message(body='a\nb\r\nc\rd', html='<p>x\ny</p>', subject='S'))
    assert re.search(rb'(?<!\r)\n|\r(?!\n)', mail.data) is None
    assert b'\r\n' in mail.data


def test_non_ascii_round_trips_and_is_utf8_labelled():
    mail = prepared(
        message(
            subject='Café ☕',
            sender='Zoë Ünal <zoe@example.com>',
            body='héllo wörld',
            html='<p>héllo</p>',
            attachments=[Attachment('résumé.pdf', 'application/pdf', b'%PDF')],
        )
    )
    assert mail.data.isascii()  # 7-bit safe on the wire
    parsed = parse(mail.data)
    assert parsed['Subject'] == 'Café ☕'
    assert parsed['From'].addresses[0].display_name == 'Zoë Ünal'
    text = parsed.get_body(('plain',))
    assert text.get_content_charset() == 'utf-8'
    assert text.get_content().rstrip('\n') == 'héllo wörld'
    assert parsed.get_body(('html',)).get_content_charset() == 'utf-8'
    (att,) = parsed.iter_attachments()
    assert att.get_filename() == 'résumé.pdf'
    assert att.get_content() == b'%PDF'


def test_display_name_with_comma_is_one_recipient():
    mail = prepared(message(recipients=['"Doe, John" <j@example.com>']))
    assert mail.envelope.recipients == ('j@example.com',)
    assert parse(mail.data)['To'].addresses[0].display_name == 'Doe, John'


def test_recipients_given_as_one_string_is_one_address():
    mail = prepared(message(recipients='to@example.com'))
    assert mail.envelope.recipients == ('to@example.com',)


def test_address_objects_are_accepted_as_recipients():
    mail = prepared(message(recipients=[Address('Ann', 'ann', 'example.com')]))
    assert mail.envelope.recipients == ('ann@example.com',)


def test_bcc_in_envelope_not_in_headers():
    mail = prepared(
        message(cc=['cc@example.com'], bcc=['secret@example.com', 'to@example.com'])
    )
    assert mail.envelope.recipients == (
        'to@example.com',
        'cc@example.com',
        'secret@example.com',
    )
    assert b'secret@example.com' not in mail.data
    assert b'Bcc' not in mail.data
    assert parse(mail.data)['Cc'] == 'cc@example.com'


def test_text_and_html_are_alternatives():
    parsed = parse(prepared(message(html='<p>hi</p>')).data)
    assert parsed.get_content_type() == 'multipart/alternative'
    assert parsed.get_body(('html',)).get_content() == '<p>hi</p>\n'


def test_html_only_is_a_single_text_html_part():
    parsed = parse(prepared(message(body=None, html='<p>hi</p>')).data)
    assert parsed.get_content_type() == 'text/html'


def test_no_body_at_all_is_an_empty_message():
    parsed = parse(prepared(message(body=None)).data)
    assert parsed.get_content() == '\n'


@pytest.mark.parametrize('body', ['text', None])
def test_inline_parts_go_in_multipart_related_with_a_content_id(body):
    logo = Attachment('logo.png', data=b'PNG', disposition='inline', content_id='logo')
    auto = Attachment('x.gif', data=b'GIF', disposition='inline')
    msg = message(body=body, html='<img src="cid:logo">', attachments=[logo, auto])
    parsed = parse(prepared(msg).data)
    related = next(
        p for p in parsed.walk() if p.get_content_type() == 'multipart/related'
    )
    parts = list(related.iter_parts())
    assert parts[1]['Content-ID'] == '<logo>'
    assert parts[1].get_content_type() == 'image/png'
    assert parts[2]['Content-ID'].startswith('<')


def test_attachment_data_as_file_str_or_none_and_its_guessed_type():
    parsed = parse(
        prepared(
            message(
                attachments=[
                    Attachment('a.bin', data=io.BytesIO(b'\x00\x01')),
                    Attachment('notes.txt', data='plain ü\n'),
                    Attachment(data=None),
                ]
            )
        ).data
    )
    a, b, c = parsed.iter_attachments()
    assert a.get_content() == b'\x00\x01'
    assert a.get_content_type() == 'application/octet-stream'
    assert b.get_content_type() == 'text/plain'
    assert b.get_content() == 'plain ü\n'
    assert c.get_content() == b''


def test_attach_adds_an_attachment():
    msg = message()
    msg.attach(Attachment('a.txt', data='x'))
    msg.attach(Attachment('b.txt', data='y'))
    assert len(list(parse(prepared(msg).data).iter_attachments())) == 2


def test_long_lines_are_encoded_within_998_characters():
    mail = prepared(message(body='x' * 2000))
    assert all(len(line) <= 998 for line in mail.data.split(b'\r\n'))
    assert parse(mail.data).get_content().rstrip('\n') == 'x' * 2000


def test_extra_headers_and_reply_to_are_written():
    parsed = parse(
        prepared(
            message(extra_headers={'X-Tag': 'a'}, reply_to='help@example.com')
        ).data
    )
    assert parsed['X-Tag'] == 'a'
    assert parsed['Reply-To'] == 'help@example.com'


def test_message_id_and_date_are_generated():
    mail = prepared(message())
    parsed = parse(mail.data)
    assert parsed['Message-ID'] == mail.message_id
    assert mail.message_id.endswith('@test.example>')
    assert parsed['Date']


def test_given_message_id_and_date_are_kept():
    mail = prepared(
        message(
            extra_headers={
                'Message-ID': '<mine@example.com>',
                'Date': 'Mon, 02 Nov 2026 10:00:00 +0000',
            }
        )
    )
    assert mail.message_id == '<mine@example.com>'
    assert b'Date: Mon, 02 Nov 2026 10:00:00 +0000' in mail.data


def test_default_sender_is_the_envelope_sender_of_a_message_without_one():
    mail = prepared(message(sender=None), default_sender='App <app@example.com>')
    assert mail.envelope.sender == 'app@example.com'


def test_prepared_mail_keeps_the_original_message():
    msg = message()
    assert prepared(msg).original is msg


def test_idn_domain_is_punycoded_in_the_envelope():
    mail = prepared(message(recipients=['a@bücher.example']))
    assert mail.envelope.recipients == ('a@xn--bcher-kva.example',)
    assert not mail.envelope.smtputf8


def test_non_ascii_local_part_needs_smtputf8():
    mail = prepared(message(recipients=['zoë@example.com']))
    assert mail.envelope.smtputf8
    assert 'zoë@example.com'.encode() in mail.data


def test_no_recipients_is_refused():
    refusal('recipients', message(recipients=[]))


def test_no_sender_is_refused():
    refusal('sender', message(sender=None))


@pytest.mark.parametrize(
    'bad', ['not an address', 'a@', '@b.example', 'a@b.example, c@d.example']
)
def test_unparsable_recipient_is_refused_quoting_it(bad):
    error = refusal('recipients', message(recipients=[bad]))
    assert repr(bad) in str(error)


def test_unparsable_cc_and_sender_are_refused():
    refusal('cc', message(cc=[42]))
    refusal('sender', message(sender='nobody'))


def test_address_the_stdlib_parser_chokes_on_is_refused():
    refusal('recipients', message(recipients=['"unterminated <a@b.c']))


def test_crlf_in_headers_is_refused():
    refusal('subject', message(subject='Hi\r\nBcc: victim@example.com'))
    refusal('X-A', message(extra_headers={'X-A': 'v\nInjected: 1'}))
    refusal('X-B\n', message(extra_headers={'X-B\n': 'v'}))
    refusal('recipients', message(recipients=['a@example.com\r\nX: y']))
    refusal(
        'attachment filename',
        message(attachments=[Attachment('a\r\n.txt', data=b'x')]),
    )


# -- an EmailMessage given to prepare()


def an_email_message():
    return email_message(
        {
            'From': 'Ann <ann@example.com>',
            'To': 'b@example.com, "Doe, John" <j@example.com>',
            'Cc': 'c@example.com',
            'Bcc': 'hidden@example.com',
            'Subject': 'Hi',
        }
    )


def test_email_message_envelope_from_headers_bcc_removed_caller_untouched():
    original = an_email_message()
    mail = prepared(original)
    assert mail.envelope.sender == 'ann@example.com'
    assert mail.envelope.recipients == (
        'b@example.com',
        'j@example.com',
        'c@example.com',
        'hidden@example.com',
    )
    assert b'hidden' not in mail.data
    assert original['Bcc'] == 'hidden@example.com'
    assert 'Message-ID' not in original


def test_email_message_sender_header_wins_for_envelope():
    msg = an_email_message()
    msg['Sender'] = 'bounce@example.com'
    assert prepared(msg).envelope.sender == 'bounce@example.com'


def test_email_message_default_sender_sets_from():
    msg = an_email_message()
    del msg['From']
    mail = prepared(msg, default_sender='app@example.com')
    assert parse(mail.data)['From'] == 'app@example.com'


def test_email_message_without_from_is_refused():
    msg = an_email_message()
    del msg['From']
    refusal('sender', msg)


def test_email_message_with_a_bad_address_header_is_refused():
    msg = email_message({'From': 'a@example.com', 'To': 'undisclosed'})
    refusal('To', msg)


def test_email_message_without_recipients_is_refused():
    msg = email_message({'From': 'a@example.com'})
    refusal('recipients', msg)


def test_envelope_needs_smtputf8_only_for_a_non_ascii_local_part():
    from pyramid_txmail.message import Envelope

    assert not Envelope('a@b.c', ('d@e.f',)).smtputf8
    assert Envelope('a@b.c', ('ü@e.f',)).smtputf8


# -- the policy of to_message()'s output: email.policy.SMTP, faster

HEADERS = [
    ('Subject', 'Hello'),
    ('Subject', 'Your order ' * 12),  # longer than a line: folded
    ('Subject', 'Grüße aus Köln'),  # encoded
    ('Subject', 'a\ttab'),  # not printable: the stdlib's path
    ('To', 'Jörg <jorg@example.com>, plain@example.com'),
    ('To', '"Doe, John" <john@example.com>'),
    ('From', 'Shop <shop@example.com>'),
    ('Content-Type', 'text/plain; charset="utf-8"'),
    ('Message-ID', '<1.2@example.com>'),
]
STDLIB = email.policy.SMTP.clone(linesep='\n')


def wire_policy():
    """The policy of the EmailMessage ``to_message()`` gives the user."""
    return message().to_message().policy


@pytest.mark.parametrize(('name', 'value'), HEADERS)
def test_wire_policy_folds_like_the_stdlib(name, value):
    ours = wire_policy()
    expected = STDLIB.fold(name, STDLIB.header_store_parse(name, value)[1])
    assert ours.fold(name, ours.header_store_parse(name, value)[1]) == expected


@pytest.mark.parametrize(('name', 'value'), HEADERS)
def test_wire_policy_reads_like_the_stdlib(name, value):
    ours = wire_policy()
    expected = STDLIB.header_fetch_parse(name, value)
    got = ours.header_fetch_parse(name, value)
    assert str(got) == str(expected)
    assert type(got).__mro__[1:] == type(expected).__mro__[1:]


def test_wire_policy_keeps_printable_ascii_unparsed_until_read():
    ours = wire_policy()
    assert ours.header_store_parse('Subject', 'Hi') == ('Subject', 'Hi')
    _, parsed = ours.header_store_parse('Subject', 'Grüße')
    assert parsed.name == 'Subject'  # a header object
    with pytest.raises(ValueError):
        ours.header_store_parse('Subject', 'two\nlines')


def test_wire_policy_builds_a_header_class_per_name_once():
    factory = wire_policy().header_factory
    assert factory['X-Custom'] is factory['x-custom']


# -- parse_address, the one-address check settings use too

FULL_PARSER = email.policy.default.header_factory


@pytest.mark.parametrize(
    'value',
    [
        'a@example.com',
        'first.last+tag@mail.example.co.uk',
        "o'hara@example.com",
        'Shop <shop@example.com>',
        'Some Shop 2 <shop@example.com>',
        'Shop  Two <shop@example.com>',  # two spaces: the full parser
        '"Doe, John" <john@example.com>',  # quoted: the full parser
        'Jörg <jorg@example.com>',
    ],
)
def test_parse_address_reads_common_forms_as_the_full_parser_does(value):
    from pyramid_txmail.message import parse_address

    [expected] = FULL_PARSER('To', value).addresses
    assert parse_address(value) == expected


@pytest.mark.parametrize(
    'value', ['Shop shop@example.com', 'a@', '@example.com', 'a@b@c']
)
def test_parse_address_refuses_near_misses(value):
    from pyramid_txmail.message import parse_address

    with pytest.raises(MailError):
        parse_address(value)


# -- pyramid_mailer parity (issue 10), checked at a real SMTP server


def send(server, msg, **kw):
    """Send ``msg`` to ``server`` as send_immediately() does; what arrived."""
    from pyramid_txmail.delivery import DirectDelivery

    before = len(server.messages)
    DirectDelivery(server.settings()).send_now(prepared(msg, **kw))
    return server.wait_for(before + 1)[before]


def only_attachment(received):
    (part,) = received.message.iter_attachments()
    return part


# A cp1252 CSV: CRLF lines, a bare LF line, non-UTF-8 bytes, and a last
# line without a newline that ends in a byte (0x80, the euro sign) which is
# not valid UTF-8 either.
CSV = 'name;price\r\nCafé;3\r\nthé;2\nlast;10€'.encode('cp1252')


def test_send_to_is_every_recipient_cc_and_bcc():
    msg = message(
        recipients=['a@example.com', 'b@example.com'],
        cc=['c@example.com'],
        bcc=['d@example.com', 'a@example.com'],
    )
    assert msg.send_to == {
        'a@example.com',
        'b@example.com',
        'c@example.com',
        'd@example.com',
    }
    assert message(recipients=None).send_to == set()
    assert message(recipients='a@example.com').send_to == {'a@example.com'}


def test_add_recipient_cc_and_bcc_reach_the_envelope_bcc_no_header(smtp_server):
    given = ['to@example.com']
    msg = Message(subject='Hi', sender='from@example.com', body='x', recipients=given)
    msg.add_recipient('to2@example.com')
    msg.add_cc('cc@example.com')
    msg.add_bcc('hidden@example.com')
    msg.add_bcc('hidden2@example.com')
    assert given == ['to@example.com', 'to2@example.com']  # in place, as there
    received = send(smtp_server, msg)
    assert received.rcpt_tos == [
        'to@example.com',
        'to2@example.com',
        'cc@example.com',
        'hidden@example.com',
        'hidden2@example.com',
    ]
    assert received.message['To'] == 'to@example.com, to2@example.com'
    assert received.message['Cc'] == 'cc@example.com'
    assert b'hidden' not in received.data


def test_add_recipient_to_a_message_without_any():
    msg = Message(subject='Hi', sender='from@example.com', body='x')
    msg.add_recipient('to@example.com')
    msg.attach(Attachment('a.txt', data=b'a'))
    assert msg.send_to == {'to@example.com'}
    msg.validate()


def test_a_new_message_has_pyramid_mailers_empty_lists_to_fill_in(smtp_server):
    # pyramid_mailer apps fill a message in after making it.
    msg = Message(sender='from@example.com', body='x')
    assert (msg.subject, msg.recipients, msg.cc, msg.bcc) == ('', [], [], [])
    assert (msg.extra_headers, msg.attachments) == ({}, [])
    msg.recipients.append('to@example.com')
    msg.cc += ['cc@example.com']
    msg.bcc.append('hidden@example.com')
    msg.extra_headers['X-Tag'] = 'a'
    msg.attachments.append(Attachment('a.txt', data=b'a'))
    received = send(smtp_server, msg)
    assert received.rcpt_tos == [
        'to@example.com',
        'cc@example.com',
        'hidden@example.com',
    ]
    assert received.message['X-Tag'] == 'a'
    assert only_attachment(received).get_payload(decode=True) == b'a'


def test_fields_set_to_none_later_read_as_empty(smtp_server):
    # pyramid_mailer tolerated None in cc, bcc and extra_headers set later.
    msg = message()
    msg.cc = msg.bcc = msg.extra_headers = msg.attachments = None
    assert msg.send_to == {'to@example.com'}
    assert not msg.is_bad_headers()
    msg.recipients = None
    msg.add_recipient('again@example.com')
    assert send(smtp_server, msg).rcpt_tos == ['again@example.com']


def test_messages_and_attachments_are_hashable_and_equal_only_to_themselves():
    # As pyramid_mailer's plain objects: usable in sets and as dict keys.
    first, second = message(), message()
    assert len({first, second, first}) == 2
    assert first != second
    att = Attachment('a.txt', data=b'a')
    assert {att: 1}[att] == 1
    assert att != Attachment('a.txt', data=b'a')


def test_extra_headers_as_pairs_as_pyramid_mailer_took_them(smtp_server):
    msg = message(extra_headers=[('X-Tag', 'a'), ('X-Other', 'b')])
    assert not msg.is_bad_headers()
    received = send(smtp_server, msg)
    assert (received.message['X-Tag'], received.message['X-Other']) == ('a', 'b')
    assert message(extra_headers=[('X-A', 'v\nInjected: 1')]).is_bad_headers()


def test_extra_headers_neither_mapping_nor_pairs_is_refused():
    from pyramid_txmail.exceptions import InvalidMessage

    with pytest.raises(InvalidMessage, match='extra_headers: expected') as info:
        message(extra_headers=['X-Tag: a']).validate()
    assert info.value.field == 'extra_headers'


def test_positional_arguments_in_pyramid_mailers_order():
    msg = Message('Hi', ['to@example.com'], 'text', '<p>html</p>', 'from@example.com')
    assert (msg.subject, msg.recipients, msg.body, msg.html, msg.sender) == (
        'Hi',
        ['to@example.com'],
        'text',
        '<p>html</p>',
        'from@example.com',
    )


def test_to_message_is_what_send_sends_without_bcc(smtp_server):
    msg = message(
        cc=['cc@example.com'],
        bcc=['hidden@example.com'],
        html='<p>hi</p>',
        extra_headers={'X-Tag': 'a'},
        attachments=[Attachment('r.csv', 'text/csv', CSV, charset='cp1252')],
    )
    built = msg.to_message()
    assert isinstance(built, EmailMessage)
    assert 'Bcc' not in built
    assert 'Message-ID' not in built  # send() adds it, a new one each time
    received = send(smtp_server, msg).message
    for name in ('From', 'To', 'Cc', 'Subject', 'X-Tag', 'MIME-Version'):
        assert str(built[name]) == str(received[name])
    assert [p.get_content_type() for p in built.walk()] == [
        p.get_content_type() for p in received.walk()
    ]
    (part,) = built.iter_attachments()
    assert part.get_payload(decode=True) == CSV


def test_to_message_ends_lines_with_newline_as_pyramid_mailers_did(smtp_server):
    # Apps write it to .eml files, log it, or look for lines in it.
    msg = message(body='one\ntwo', attachments=[Attachment('a.txt', data=b'a')])
    text = msg.to_message().as_string()
    assert '\r' not in text
    assert 'Subject: Hi\n' in text
    assert 'one\ntwo\n' in text
    assert b'\r' not in msg.to_message().as_bytes()
    # Sent, it is CRLF on the wire, and so is it given back to send().
    for sent in (msg, msg.to_message()):
        received = send(smtp_server, sent)
        assert b'Subject: Hi\r\n' in received.data
        assert b'one\r\ntwo\r\n' in received.data


def test_to_message_output_with_a_header_added_can_be_sent(smtp_server):
    built = message(cc=['cc@example.com']).to_message()
    built['X-Campaign'] = 'spring'
    received = send(smtp_server, built)
    assert received.rcpt_tos == ['to@example.com', 'cc@example.com']
    assert received.message['X-Campaign'] == 'spring'
    assert received.message['Cc'] == 'cc@example.com'


def test_to_message_uses_default_sender_when_given():
    built = message(sender=None).to_message(default_sender='App <app@example.com>')
    assert built['From'] == 'App <app@example.com>'


def test_validate_passes_a_message_send_would_send():
    assert message().validate() is None
    assert message(sender=None).validate(default_sender='app@example.com') is None
    assert message(body=None).validate() is None  # send() sends it, too


@pytest.mark.parametrize(
    ('kw', 'field'),
    [
        ({'recipients': []}, 'recipients'),
        ({'sender': None}, 'sender'),
        ({'recipients': ['not an address']}, 'recipients'),
        (
            {'attachments': [Attachment('a.txt', data=b'x', charset='nope')]},
            'attachments',
        ),
    ],
)
def test_validate_raises_invalid_message_caught_as_pyramid_mailer_did(kw, field):
    from pyramid_txmail.exceptions import InvalidMessage

    for call in (message(**kw).validate, message(**kw).to_message):
        with pytest.raises(InvalidMessage) as info:
            call()
        assert info.value.field == field
        # pyramid_mailer's InvalidMessage is a RuntimeError; ours also is
        # our MailError, a ValueError.
        assert isinstance(info.value, RuntimeError)
        assert isinstance(info.value, MailError)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ('kw', 'field'),
    [
        ({'subject': 'Hi\r\nBcc: victim@example.com'}, 'subject'),
        ({'sender': 'a@example.com\nX: y'}, 'sender'),
        ({'bcc': ['a@example.com\r\nX: y']}, 'recipients'),
        ({'extra_headers': {'X-A': 'v\nInjected: 1'}}, 'X-A'),
    ],
)
def test_validate_raises_bad_headers_for_cr_or_lf(kw, field):
    from pyramid_txmail.exceptions import BadHeaders

    msg = message(**kw)
    assert msg.is_bad_headers()
    with pytest.raises(BadHeaders) as info:
        msg.validate()
    assert info.value.field == field
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, MailError)
    assert not message().is_bad_headers()


def test_pyramid_mailer_exception_names_take_no_arguments():
    from pyramid_txmail.exceptions import BadHeaders, InvalidMessage

    assert str(BadHeaders()) == str(InvalidMessage()) == ''


def test_pyramid_mailer_encoding_error_is_importable():
    # pyramid_mailer.exceptions has it (never raised); apps may import it.
    from pyramid_txmail.exceptions import EncodingError

    assert issubclass(EncodingError, Exception)


def test_body_and_html_given_as_attachments_are_sent_as_given(smtp_server):
    text = 'Grüße\r\naus Köln\n'.encode('latin-1')
    html = '<p>Grüße</p>'
    msg = message(
        body=Attachment(
            data=text, charset='latin-1', transfer_encoding='quoted-printable'
        ),
        html=Attachment(data=html, charset='utf-8', transfer_encoding='base64'),
    )
    received = send(smtp_server, msg).message
    assert received.get_content_type() == 'multipart/alternative'
    plain, rich = received.iter_parts()
    assert plain.get_content_type() == 'text/plain'
    assert plain.get_content_charset() == 'latin-1'
    assert plain['Content-Transfer-Encoding'] == 'quoted-printable'
    assert plain.get_payload(decode=True) == text
    assert 'Content-Disposition' not in plain  # a body, not a file
    assert rich.get_content_type() == 'text/html'
    assert rich['Content-Transfer-Encoding'] == 'base64'
    assert rich.get_payload(decode=True) == html.encode()


def test_body_attachment_alone_and_html_attachment_alone(smtp_server):
    # 7bit as the whole message: it ends with a line end, as SMTP data must.
    msg = message(
        body=None, html=Attachment(data=b'<p>x</p>\r\n', transfer_encoding='7bit')
    )
    received = send(smtp_server, msg).message
    assert received.get_content_type() == 'text/html'
    assert received['Content-Transfer-Encoding'] == '7bit'
    assert received.get_payload(decode=True) == b'<p>x</p>\r\n'
    built = message(
        body=Attachment(data='x', content_type='text/markdown')
    ).to_message()
    assert built.get_content_type() == 'text/markdown'


def test_html_attachment_with_inline_images_in_related(smtp_server):
    msg = message(
        html=Attachment(data='<img src="cid:logo">', transfer_encoding='7bit'),
        attachments=[
            Attachment(
                'logo.png', data=b'PNG\r\n\x00', disposition='inline', content_id='logo'
            )
        ],
    )
    received = send(smtp_server, msg).message
    related = next(
        p for p in received.walk() if p.get_content_type() == 'multipart/related'
    )
    html_part, logo = related.iter_parts()
    assert html_part.get_payload(decode=True) == b'<img src="cid:logo">'
    assert logo['Content-ID'] == '<logo>'
    assert logo.get_payload(decode=True) == b'PNG\r\n\x00'


def test_body_that_is_neither_text_nor_attachment_is_refused():
    with pytest.raises(MailError) as info:
        message(body=b'bytes').to_message()
    assert info.value.field == 'body'


@pytest.mark.parametrize('cte', [None, 'base64', 'quoted-printable', 'BASE64'])
@pytest.mark.parametrize('charset', ['cp1252', None])
def test_text_attachment_bytes_arrive_exactly(smtp_server, cte, charset):
    msg = message(
        attachments=[
            Attachment(
                'prices.csv',
                'text/csv',
                CSV,
                transfer_encoding=cte,
                charset=charset,
            )
        ]
    )
    part = only_attachment(send(smtp_server, msg))
    assert part.get_payload(decode=True) == CSV
    assert part['Content-Transfer-Encoding'] == (cte or 'base64').lower()
    assert part.get_content_type() == 'text/csv'
    # Labelled as given; unknown bytes get no label rather than a wrong one.
    assert part.get_param('charset') == charset
    assert part.get_filename() == 'prices.csv'


def test_charset_in_content_type_is_honoured(smtp_server):
    msg = message(
        attachments=[
            Attachment(
                'a.txt', "text/plain; charset='cp1252'", CSV
            ),  # pyramid_mailer's form
            Attachment('b.txt', 'text/plain; charset=latin-1; format=flowed', CSV),
        ]
    )
    a, b = send(smtp_server, msg).message.iter_attachments()
    assert a.get_param('charset') == 'cp1252'
    assert b.get_param('charset') == 'latin-1'
    assert b.get_param('format') == 'flowed'
    assert a.get_payload(decode=True) == b.get_payload(decode=True) == CSV


def test_text_given_as_str_is_encoded_with_the_charset(smtp_server):
    msg = message(
        attachments=[
            Attachment('a.txt', data='Café\n', charset='cp1252'),
            Attachment('b.txt', data='Café\r\n'),
            Attachment('c.json', 'application/json', data='{"a": "é"}'),
        ]
    )
    a, b, c = send(smtp_server, msg).message.iter_attachments()
    assert a.get_payload(decode=True) == 'Café\n'.encode('cp1252')
    assert a.get_param('charset') == 'cp1252'
    assert b.get_payload(decode=True) == 'Café\r\n'.encode()
    assert b.get_param('charset') == 'utf-8'
    assert c.get_payload(decode=True) == '{"a": "é"}'.encode()
    assert c.get_param('charset') == 'utf-8'  # encoded so: labelled so


def test_utf8_bytes_in_text_attachment_are_labelled_utf8(smtp_server):
    data = 'é\n'.encode()
    part = only_attachment(
        send(smtp_server, message(attachments=[Attachment('a.txt', data=data)]))
    )
    assert part.get_param('charset') == 'utf-8'
    assert part.get_payload(decode=True) == data


def test_7bit_and_8bit_send_the_bytes_themselves(smtp_server):
    ascii_data = b'a,b\r\n' + b'x' * 990 + b'\r\nlast'
    latin = 'é,ü\r\nlast'.encode('latin-1')
    msg = message(
        attachments=[
            Attachment('a.csv', 'text/csv', ascii_data, transfer_encoding='7bit'),
            Attachment(
                'b.csv', 'text/csv', latin, transfer_encoding='8bit', charset='latin-1'
            ),
        ]
    )
    received = send(smtp_server, msg)
    a, b = received.message.iter_attachments()
    assert a['Content-Transfer-Encoding'] == '7bit'
    assert a.get_payload(decode=True) == ascii_data
    assert b['Content-Transfer-Encoding'] == '8bit'
    assert b.get_payload(decode=True) == latin
    assert 'BODY=8BITMIME' in received.mail_options
    assert ascii_data in received.data  # not encoded on the way


def test_7bit_turns_bare_line_ends_into_crlf_as_smtp_requires(smtp_server):
    msg = message(
        attachments=[Attachment('a.txt', data=b'a\nb\rc', transfer_encoding='7bit')]
    )
    part = only_attachment(send(smtp_server, msg))
    assert part.get_payload(decode=True) == b'a\r\nb\r\nc'


def test_file_object_is_read_once_and_its_bytes_arrive(smtp_server, tmp_path):
    # One line of 2,000 bytes: read twice, the second (empty) read used to
    # choose the encoding, and the line went out as 7bit.
    data = b'x' * 2000 + b'\n\xe9'
    path = tmp_path / 'big.txt'
    path.write_bytes(data)
    with open(path, 'rb') as f:
        att = Attachment('big.txt', 'text/plain', f, charset='latin-1')
        msg = message(attachments=[att])
        msg.to_message()  # reads it
        received = send(smtp_server, msg)  # and the bytes are still there
    assert att.data == data
    assert only_attachment(received).get_payload(decode=True) == data
    assert all(len(line) <= 998 for line in received.data.split(b'\r\n'))


def test_disposition_content_id_and_filename_are_honoured(smtp_server):
    msg = message(
        attachments=[
            Attachment(
                content_type='application/pdf',
                data=b'%PDF',
                disposition='attachment; filename="fred.pdf"; size=4',
                content_id='<r1@example.com>',
            ),
            Attachment(
                '/srv/private/plan.pdf',
                data=b'%PDF',
                disposition='inline',
                content_id='p',
            ),
            Attachment('x.bin', data=b'\x00', disposition='INLINE'),
        ]
    )
    fred, plan, x = send(smtp_server, msg).message.iter_attachments()
    assert fred.get_filename() == 'fred.pdf'
    assert fred.get_content_disposition() == 'attachment'
    assert fred.get_param('size', header='Content-Disposition') == '4'
    assert fred['Content-ID'] == '<r1@example.com>'
    assert plan.get_filename() == 'plan.pdf'  # the directories stay private
    assert plan.get_content_disposition() == 'inline'  # no html: no related
    assert plan['Content-ID'] == '<p>'
    assert x.get_content_disposition() == 'inline'
    assert x.get_content_type() == 'application/octet-stream'


def test_attachment_mime_type_and_payload_read_a_file_once_and_keep_it():
    att = Attachment('a.pdf', data=io.BytesIO(b'%PDF'))
    assert att.mime_type() == ('application', 'pdf')
    assert att.payload() == b'%PDF'
    assert att.payload() == b'%PDF'
    assert Attachment(data=bytearray(b'ab')).payload() == b'ab'
    assert Attachment(data=memoryview(b'ab')).mime_type() == (
        'application',
        'octet-stream',
    )


class Unreadable(io.RawIOBase):
    def read(self, size=-1):
        raise OSError(5, 'Input/output error')


@pytest.mark.parametrize(
    ('att', 'says'),
    [
        (
            Attachment('a.csv', 'text/csv', CSV, charset='no-such-charset'),
            "unknown charset 'no-such-charset'",
        ),
        (
            Attachment('a.txt', data='€', charset='latin-1'),
            'cannot be encoded as latin-1',
        ),
        (Attachment('a.txt', data=b'x', transfer_encoding='binary'), "got 'binary'"),
        (Attachment('a.txt', data=CSV, transfer_encoding='7bit'), 'non-ASCII'),
        (
            Attachment('a.txt', data=b'x' * 999, transfer_encoding='8bit'),
            'longer than 998',
        ),
        (Attachment('a.bin', data=b'\x00', transfer_encoding='8bit'), 'NUL'),
        (Attachment('a.txt', data=42), 'got int'),
        (Attachment('a.txt', data=Unreadable()), 'cannot read its data'),
        (Attachment('a.pdf', 'pdf', b'x'), "got 'pdf'"),
        (Attachment('a.eml', 'multipart/mixed', b'x'), 'multipart'),
        (Attachment('a.txt', data=b'x', disposition='at tachment'), 'disposition'),
        (
            Attachment('a.txt', data=b'x', content_id='a\r\nBcc: x@example.com'),
            'line breaks',
        ),
        (Attachment('a.txt', data=b'x', charset='utf-8\nX: y'), 'line breaks'),
    ],
)
def test_unusable_attachment_is_a_mail_error_naming_it(att, says):
    with pytest.raises(MailError) as info:
        prepare(message(attachments=[Attachment('ok.txt', data=b'ok'), att]))
    assert says in str(info.value)
    assert str(info.value).startswith("attachment 'a.")
    assert info.value.field == 'attachments'


def test_unnamed_attachment_is_named_by_its_position():
    with pytest.raises(MailError, match=r'^attachment 2: unknown charset'):
        prepare(
            message(
                attachments=[Attachment(data=b'x'), Attachment(data=b'x', charset='?')]
            )
        )


def test_closed_file_is_a_mail_error():
    f = io.BytesIO(b'x')
    f.close()
    with pytest.raises(MailError, match=r"attachment 'a\.txt': cannot read its data"):
        message(attachments=[Attachment('a.txt', data=f)]).to_message()


# -- many recipients


def test_twenty_thousand_recipients_in_envelope_and_header():
    addresses = [f'user{i}@example.com' for i in range(20_000)]
    mail = prepare(message(recipients=addresses, cc=['Ann <ann@example.com>']))
    assert mail.envelope.recipients == (*addresses, 'ann@example.com')
    head = mail.data.split(b'\r\n\r\n')[0]
    assert max(len(line) for line in head.split(b'\r\n')) <= 78
    # Unfolded by hand: the stdlib's parser takes quadratic time for this.
    [to] = re.findall(rb'^To: (.*?)\r\n(?! )', head, re.MULTILINE | re.DOTALL)
    assert to.replace(b'\r\n', b'').decode().split(', ') == addresses


def test_address_list_with_a_display_name_longer_than_a_line():
    name = ' '.join(['word'] * 300)
    mail = prepare(message(recipients=[Address(name, 'a', 'example.com'), 'b@ex.com']))
    lines = mail.data.split(b'\r\n\r\n')[0].split(b'\r\n')
    assert max(len(line) for line in lines) <= 998
    [first, second] = parse(mail.data)['To'].addresses
    assert (first.display_name, first.addr_spec) == (name, 'a@example.com')
    assert second.addr_spec == 'b@ex.com'


def test_message_id_and_date_of_an_email_message_are_checked():
    for name, value in (('Message-ID', '<a@b@c>'), ('Date', 'soon')):
        msg = parse(
            f'From: a@example.com\nTo: b@example.com\n{name}: {value}\n\nhi\n'.encode()
        )
        try:
            prepare(msg)
        except MailError as error:
            assert error.field == name
        else:
            raise AssertionError(f'{name}: {value!r} accepted')


# -- an EmailMessage is read, never changed


def multipart_email():
    msg = EmailMessage()
    msg['From'] = 'Shop <shop@example.com>'
    msg['To'] = 'Ann <ann@example.com>, bob@example.com'
    msg['Bcc'] = 'audit@example.com'
    msg['Subject'] = 'Your order'
    msg.set_content('Hello\n')
    msg.add_alternative('<p>Hello</p>\n', subtype='html')
    msg.add_attachment(b'%PDF' * 100, 'application', 'pdf', filename='r.pdf')
    return msg


def shape(msg):
    """Everything a caller could see change: every part's fields and
    boundary, and the payloads."""
    return [
        (part.items(), part.get_boundary(), part.get_payload(decode=True))
        for part in msg.walk()
    ]


def test_prepare_leaves_the_callers_email_message_unchanged():
    msg = multipart_email()
    before = shape(msg)
    mail = prepare(msg, message_id_domain='test.example')
    assert shape(msg) == before  # no Message-ID, Date, boundary; Bcc kept
    assert msg['Bcc'] == 'audit@example.com' and 'Message-ID' not in msg
    assert mail.envelope.recipients[-1] == 'audit@example.com'
    assert b'audit@example.com' not in mail.data


def test_prepared_bytes_are_what_the_stdlib_generator_writes():
    msg = multipart_email()
    del msg['Bcc']
    msg['Message-ID'] = '<1@test.example>'
    msg['Date'] = 'Sat, 28 Nov 2026 12:00:00 +0000'
    for n, part in enumerate(p for p in msg.walk() if p.is_multipart()):
        part.set_boundary(f'=_boundary{n}')
    expected = msg.as_bytes(policy=email.policy.SMTP)
    assert prepare(msg).data == expected


@pytest.mark.parametrize('to', ['b@example.com', 'zoë@example.com'])
def test_non_ascii_text_stored_as_given_is_written_as_the_default_policy_writes_it(
    to,
):
    # message_from_string() and compat32 keep such text as it is, which the
    # stdlib's generator could not write without SMTPUTF8 (it raised
    # UnicodeEncodeError); with SMTPUTF8 it goes out in UTF-8, as it does.
    fields = {
        'From': 'a@example.com',
        'To': to,
        **_FIXED,
        'Subject': 'Grüße aus Köln',
        'X-Note': 'wörd ' * 30 + 'end',
    }
    text = ''.join(f'{name}: {value}\n' for name, value in fields.items())
    parsed = email.message_from_string(text + '\nhi\n', policy=email.policy.default)
    legacy = EmailMessage(policy=email.policy.compat32)
    as_objects = EmailMessage()
    for name, value in fields.items():
        legacy[name] = value
        as_objects[name] = value
    for msg in (legacy, as_objects):
        msg.set_payload('hi\n')
    expected = as_objects.as_bytes(
        policy=email.policy.SMTP if to.isascii() else email.policy.SMTPUTF8
    )
    assert _prepared(parsed)[1] == _prepared(legacy)[1] == expected
    assert parse(expected)['Subject'] == 'Grüße aus Köln'
    if to.isascii():
        assert expected.isascii()


@pytest.mark.parametrize(
    'text',
    [
        'one\ntwo\n',
        'one\r\ntwo\r\n',
        'one\rtwo\r',
        'mixed\r\nends\rhere\nand none at the end',
        '\n\nblank lines first\n\n',
    ],
)
def test_prepared_bytes_keep_every_line_end_as_the_stdlib_writes_it(text):
    # Payloads, preamble and epilogue with each kind of line end, or none.
    msg = EmailMessage()
    msg['From'] = 'a@example.com'
    msg['To'] = 'b@example.com'
    for name, value in _FIXED.items():
        msg[name] = value
    msg.set_content(text, cte='8bit')
    msg.add_attachment(text.encode(), 'application', 'octet-stream')
    msg.preamble, msg.epilogue = text, text
    msg.set_boundary('=_b')
    expected = msg.as_bytes(policy=email.policy.SMTP)
    assert prepare(msg).data == expected
    assert re.search(rb'(?<!\r)\n|\r(?!\n)', expected) is None


def test_a_signed_message_is_written_as_the_stdlib_writes_it():
    # multipart/signed has a writer of its own, which never refolds the
    # signed part's headers: that would break the signature (RFC 1847).
    signed = MIMEPart()
    signed.set_content('signed text\n')
    signed['X-Note'] = 'a long header value that would be folded elsewhere ' * 2
    signature = MIMEPart()
    signature.set_content(b'signature', 'application', 'pgp-signature', cte='7bit')
    msg = EmailMessage()
    msg['From'] = 'a@example.com'
    msg['To'] = 'b@example.com'
    for name, value in _FIXED.items():
        msg[name] = value
    msg['MIME-Version'] = '1.0'
    msg['Content-Type'] = 'multipart/signed; protocol="application/pgp-signature"'
    msg.set_payload([signed, signature])
    msg.set_boundary('=_s')
    expected = msg.as_bytes(policy=email.policy.SMTP)
    assert prepare(msg).data == expected
    assert b'\r\nX-Note: ' + signed['X-Note'].encode() + b'\r\n' in expected


def test_an_attached_message_is_written_as_the_stdlib_writes_it():
    # message/rfc822 holds its message as a list, as a multipart does, but
    # has no boundary: its Content-Type gets none.
    inner = EmailMessage()
    inner['Subject'] = 'forwarded'
    inner.set_content('inner text\n')
    inner.add_attachment(b'data', 'application', 'octet-stream')
    inner.set_boundary('=_inner')
    msg = EmailMessage()
    msg['From'] = 'a@example.com'
    msg['To'] = 'b@example.com'
    for name, value in _FIXED.items():
        msg[name] = value
    msg.set_content('see the attached message\n')
    msg.add_attachment(inner)
    msg.set_boundary('=_outer')
    data = prepare(msg).data
    assert data == msg.as_bytes(policy=email.policy.SMTP)
    assert b'Content-Type: message/rfc822\r\n' in data


def test_the_date_added_is_the_local_time_of_preparing_in_whole_seconds():
    import time
    from email.utils import formatdate

    before = int(time.time())
    headers = {'From': 'a@example.com', 'To': 'b@example.com'}
    dates = [parse(prepare(email_message(headers)).data)['Date'] for _ in range(3)]
    after = int(time.time())
    written = {formatdate(t, localtime=True) for t in range(before, after + 1)}
    assert all(str(date) in written for date in dates)


def test_a_boundary_named_only_inside_another_parameter_is_not_taken():
    msg = EmailMessage()
    msg['From'] = 'a@example.com'
    msg['To'] = 'b@example.com'
    for name, value in _FIXED.items():
        msg[name] = value
    msg.set_content('text')
    msg.add_alternative('<p>html</p>', subtype='html')
    msg.set_param('x-note', 'no boundary here')
    data = prepare(msg).data
    boundary = parse(data).get_boundary()
    assert boundary and boundary.startswith('=_')
    assert data.count(f'--{boundary}'.encode()) == 3


def test_to_message_output_survives_deepcopy():
    import copy

    msg = Message(
        subject='Hi', sender='a@example.com', recipients=['b@example.com', 'c@ex.com']
    ).to_message()
    again = copy.deepcopy(msg)
    assert again['To'] == 'b@example.com, c@ex.com'
    assert again.as_bytes() == msg.as_bytes()


# -- prepare() reads each field once: every input form, the same bytes

_FIXED = {'Message-ID': '<1@test.example>', 'Date': 'Sat, 28 Nov 2026 12:00:00 +0000'}


def _email(policy=email.policy.default, **fields):
    msg = EmailMessage(policy=policy)
    for name, value in {**_FIXED, **fields}.items():
        msg[name] = value
    if policy is email.policy.compat32:  # no content manager: the same fields
        msg['Content-Type'] = 'text/plain; charset="utf-8"'
        msg['Content-Transfer-Encoding'] = '7bit'
        msg['MIME-Version'] = '1.0'
        msg.set_payload('Hello\n')
    else:
        msg.set_content('Hello\n')
    return msg


def _prepared(msg):
    from pyramid_txmail.message import prepare

    mail = prepare(msg, message_id_domain='test.example')
    return mail.envelope, mail.data


@pytest.mark.parametrize('name', ['Ann Lee', 'Zoë Ünal'])
def test_address_fields_as_strings_objects_or_parsed_text_give_the_same_bytes(name):
    encoded = email.header.Header(name, 'utf-8').encode()
    to = f'{name} <zoe@example.com>, "Lee, Ann" <ann@example.com>, b@example.com'
    as_text = _email(From='Shop <shop@example.com>', To=to, Cc='c@example.com')
    expected = _prepared(as_text)
    objects = (
        Address(name, 'zoe', 'example.com'),
        Address('Lee, Ann', addr_spec='ann@example.com'),
        Address(addr_spec='b@example.com'),
    )
    as_objects = _email(
        From=Address('Shop', 'shop', 'example.com'),
        To=objects,
        Cc=Address(addr_spec='c@example.com'),
    )
    other = _email(To=to)
    as_header_objects = _email(
        From='Shop <shop@example.com>', To=other['To'], Cc='c@example.com'
    )
    from_bytes = email.message_from_bytes(
        as_text.as_bytes(policy=email.policy.SMTPUTF8), policy=email.policy.default
    )
    legacy_policy = _email(
        email.policy.compat32,
        From='Shop <shop@example.com>',
        To=to.replace(name, encoded),
        Cc='c@example.com',
    )
    for msg in (as_objects, as_header_objects, from_bytes, legacy_policy):
        assert _prepared(msg) == expected
    assert expected[0].recipients == (
        'zoe@example.com',
        'ann@example.com',
        'b@example.com',
        'c@example.com',
    )
    if name.isascii():
        # What the stdlib writes for the message as given (it encodes a
        # non-ASCII name as quoted-printable, prepare() as base64).
        assert expected[1] == as_text.as_bytes(policy=email.policy.SMTP)
    assert parse(expected[1])['To'].addresses[0].display_name == name


def test_non_ascii_display_names_arrive_as_given():
    names = ['Zoë Ünal', 'Ünal, Zoë', '李小龙', 'Ann "the" Lee']
    msg = _email(
        From='shop@example.com',
        To=[Address(n, f'u{i}', 'example.com') for i, n in enumerate(names)],
    )
    envelope, data = _prepared(msg)
    assert data.isascii()
    assert [a.display_name for a in parse(data)['To'].addresses] == names
    assert envelope.recipients == tuple(f'u{i}@example.com' for i in range(4))


def test_groups_arrive_as_their_addresses_and_all_are_recipients():
    as_group = _email(
        From='shop@example.com',
        To='friends: a@example.com, Bo <b@example.com>;, c@example.com',
    )
    as_list = _email(
        From='shop@example.com', To='a@example.com, Bo <b@example.com>, c@example.com'
    )
    envelope, data = _prepared(as_group)
    assert (envelope, data) == _prepared(as_list)
    assert envelope.recipients == ('a@example.com', 'b@example.com', 'c@example.com')
    assert b'friends' not in data


@pytest.mark.parametrize(
    'value',
    [
        'J.R. Smith <jr@example.com>',  # an obsolete phrase: parsed with a defect
        ', jr@example.com',  # a leading comma: parsed with a defect
    ],
)
def test_address_fields_the_parser_reads_with_defects_are_read_as_before(value):
    msg = _email(From='shop@example.com', To=value)
    envelope, data = _prepared(msg)
    assert envelope.recipients == ('jr@example.com',)
    assert parse(data)['To'].addresses[0].addr_spec == 'jr@example.com'


def test_address_list_given_as_a_raw_header_string_in_extra_headers():
    from pyramid_txmail.message import prepare

    raw = 'Ann Lee <ann@example.com>, bob@example.com,"Zoë" <zoe@example.com>'
    given = prepare(message(recipients=[], extra_headers={'To': raw, **_FIXED}))
    typed = prepare(
        message(
            recipients=[
                'Ann Lee <ann@example.com>',
                'bob@example.com',
                'Zoë <zoe@example.com>',
            ],
            extra_headers=_FIXED,
        )
    )
    assert (given.envelope, given.data) == (typed.envelope, typed.data)
    assert given.envelope.recipients == (
        'ann@example.com',
        'bob@example.com',
        'zoe@example.com',
    )


def test_display_name_that_reads_like_an_encoded_word_arrives_as_given():
    # The name is the text the caller gave, not what decoding it would show.
    name = '=?utf-8?q?x?='
    msg = _email(From='shop@example.com', To=Address(name, 'a', 'example.com'))
    _, data = _prepared(msg)
    assert parse(data)['To'].addresses[0].display_name == name


def test_prepare_leaves_a_callers_compat32_email_message_unchanged():
    msg = _email(
        email.policy.compat32,
        From='shop@example.com',
        To='a@example.com',
        Bcc='audit@example.com',
    )
    del msg['Message-ID']
    msg.make_mixed()
    before = shape(msg)
    envelope, data = _prepared(msg)
    assert shape(msg) == before
    assert envelope.recipients == ('a@example.com', 'audit@example.com')
    assert b'audit' not in data


@pytest.mark.parametrize(
    'subject',
    ['Your order', '', '  spaced  out  ', 'x' * 100, 'Grüße', '=?utf-8?q?a?='],
)
def test_the_queue_lists_the_subject_a_reader_sees(tmp_path, subject):
    import dataclasses

    from pyramid_txmail.message import prepare
    from pyramid_txmail.queue import MailQueue

    mail = prepare(message(subject=subject))
    queue = MailQueue(str(tmp_path / 'q'))
    # The same bytes, without the Subject that prepare() passes along.
    ids = [queue.stage(mail), queue.stage(dataclasses.replace(mail, subject=None))]
    queue.publish(ids)
    listed = {i.id: i.subject for i in queue.list()}
    assert listed[ids[0]] == listed[ids[1]]
    assert listed[ids[0]] is not None


def test_multipart_body_without_its_boundary_goes_out_with_crlf_only():
    # The parser keeps such a body as text, which the generator writes as it
    # is, with the line ends it was read with.
    msg = email.message_from_bytes(
        b'From: a@example.com\nTo: b@example.com\n'
        b'Content-Type: multipart/mixed; boundary="x"\n\nno parts\nhere\n',
        policy=email.policy.default,
    )
    _, data = _prepared(msg)
    assert data.endswith(b'\r\n\r\nno parts\r\nhere\r\n')
    assert re.search(rb'(?<!\r)\n|\r(?!\n)', data) is None


def test_encoded_word_defects_count_where_the_parse_tree_cannot_be_read():
    # Whether a decoded word sits in a display name or in a local part is
    # read from the stdlib's parse tree; without it, the defect counts.
    from pyramid_txmail.message import _defects

    header = email.policy.default.header_factory(
        'To', '"=?utf-8?q?Ann?=" <a@example.com>'
    )
    assert _defects(header) == []
    del header._parse_tree
    assert 'encoded word inside quoted string' in map(str, _defects(header))
