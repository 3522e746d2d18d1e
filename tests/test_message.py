"""Messages as a user builds them, checked on the bytes that go on the wire."""

from __future__ import annotations

import email
import email.policy
import io
import re
import unittest
from email.headerregistry import Address
from email.message import EmailMessage

from pyramid_txmail.message import Attachment, MailError, Message


def parse(data: bytes) -> EmailMessage:
    # Python text uses '\n'; the wire uses CRLF.
    return email.message_from_bytes(
        data.replace(b'\r\n', b'\n'), policy=email.policy.default
    )


def message(**kw) -> Message:
    kw.setdefault('subject', 'Hi')
    kw.setdefault('sender', 'from@example.com')
    kw.setdefault('recipients', ['to@example.com'])
    kw.setdefault('body', 'hello')
    return Message(**kw)


class Test_prepare(unittest.TestCase):
    def _callFUT(self, msg, **kw):
        from pyramid_txmail.message import prepare

        kw.setdefault('message_id_domain', 'test.example')
        return prepare(msg, **kw)

    def assertError(self, field, msg, **kw):
        with self.assertRaises(MailError) as cm:
            self._callFUT(msg, **kw)
        self.assertEqual(cm.exception.field, field)
        self.assertIsInstance(cm.exception, ValueError)
        return cm.exception

    def test_crlf_only_never_bare_lf_or_cr(self):
        mail = self._callFUT(
            message(body='a\nb\r\nc\rd', html='<p>x\ny</p>', subject='S')
        )
        self.assertIsNone(re.search(rb'(?<!\r)\n|\r(?!\n)', mail.data))
        self.assertIn(b'\r\n', mail.data)

    def test_non_ascii_round_trips_and_is_utf8_labelled(self):
        mail = self._callFUT(
            message(
                subject='Café ☕',
                sender='Zoë Ünal <zoe@example.com>',
                body='héllo wörld',
                html='<p>héllo</p>',
                attachments=[Attachment('résumé.pdf', 'application/pdf', b'%PDF')],
            )
        )
        self.assertTrue(mail.data.isascii())  # 7-bit safe on the wire
        parsed = parse(mail.data)
        self.assertEqual(parsed['Subject'], 'Café ☕')
        self.assertEqual(parsed['From'].addresses[0].display_name, 'Zoë Ünal')
        text = parsed.get_body(('plain',))
        self.assertEqual(text.get_content_charset(), 'utf-8')
        self.assertEqual(text.get_content().rstrip('\n'), 'héllo wörld')
        self.assertEqual(parsed.get_body(('html',)).get_content_charset(), 'utf-8')
        (att,) = parsed.iter_attachments()
        self.assertEqual(att.get_filename(), 'résumé.pdf')
        self.assertEqual(att.get_content(), b'%PDF')

    def test_display_name_with_comma_is_one_recipient(self):
        mail = self._callFUT(message(recipients=['"Doe, John" <j@example.com>']))
        self.assertEqual(mail.envelope.recipients, ('j@example.com',))
        self.assertEqual(parse(mail.data)['To'].addresses[0].display_name, 'Doe, John')

    def test_string_recipients_is_one_address(self):
        mail = self._callFUT(message(recipients='to@example.com'))
        self.assertEqual(mail.envelope.recipients, ('to@example.com',))

    def test_address_objects_accepted(self):
        mail = self._callFUT(message(recipients=[Address('Ann', 'ann', 'example.com')]))
        self.assertEqual(mail.envelope.recipients, ('ann@example.com',))

    def test_bcc_in_envelope_not_in_headers(self):
        mail = self._callFUT(
            message(cc=['cc@example.com'], bcc=['secret@example.com', 'to@example.com'])
        )
        self.assertEqual(
            mail.envelope.recipients,
            ('to@example.com', 'cc@example.com', 'secret@example.com'),
        )
        self.assertNotIn(b'secret@example.com', mail.data)
        self.assertNotIn(b'Bcc', mail.data)
        self.assertEqual(parse(mail.data)['Cc'], 'cc@example.com')

    def test_text_and_html_are_alternatives(self):
        parsed = parse(self._callFUT(message(html='<p>hi</p>')).data)
        self.assertEqual(parsed.get_content_type(), 'multipart/alternative')
        self.assertEqual(parsed.get_body(('html',)).get_content(), '<p>hi</p>\n')

    def test_html_only(self):
        parsed = parse(self._callFUT(message(body=None, html='<p>hi</p>')).data)
        self.assertEqual(parsed.get_content_type(), 'text/html')

    def test_no_body_at_all(self):
        parsed = parse(self._callFUT(message(body=None)).data)
        self.assertEqual(parsed.get_content(), '\n')

    def test_inline_part_in_related_with_content_id(self):
        logo = Attachment(
            'logo.png', data=b'PNG', disposition='inline', content_id='logo'
        )
        auto = Attachment('x.gif', data=b'GIF', disposition='inline')
        for body in ('text', None):
            parsed = parse(
                self._callFUT(
                    message(
                        body=body, html='<img src="cid:logo">', attachments=[logo, auto]
                    )
                ).data
            )
            related = next(
                p for p in parsed.walk() if p.get_content_type() == 'multipart/related'
            )
            parts = list(related.iter_parts())
            self.assertEqual(parts[1]['Content-ID'], '<logo>')
            self.assertEqual(parts[1].get_content_type(), 'image/png')
            self.assertTrue(parts[2]['Content-ID'].startswith('<'))

    def test_attachment_data_kinds_and_types(self):
        parsed = parse(
            self._callFUT(
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
        self.assertEqual(a.get_content(), b'\x00\x01')
        self.assertEqual(a.get_content_type(), 'application/octet-stream')
        self.assertEqual(b.get_content_type(), 'text/plain')
        self.assertEqual(b.get_content(), 'plain ü\n')
        self.assertEqual(c.get_content(), b'')

    def test_attach_method(self):
        msg = message()
        msg.attach(Attachment('a.txt', data='x'))
        msg.attach(Attachment('b.txt', data='y'))
        self.assertEqual(
            len(list(parse(self._callFUT(msg).data).iter_attachments())), 2
        )

    def test_long_lines_encoded(self):
        mail = self._callFUT(message(body='x' * 2000))
        self.assertTrue(all(len(line) <= 998 for line in mail.data.split(b'\r\n')))
        self.assertEqual(parse(mail.data).get_content().rstrip('\n'), 'x' * 2000)

    def test_extra_headers_and_reply_to(self):
        parsed = parse(
            self._callFUT(
                message(extra_headers={'X-Tag': 'a'}, reply_to='help@example.com')
            ).data
        )
        self.assertEqual(parsed['X-Tag'], 'a')
        self.assertEqual(parsed['Reply-To'], 'help@example.com')

    def test_message_id_and_date_generated(self):
        mail = self._callFUT(message())
        parsed = parse(mail.data)
        self.assertEqual(parsed['Message-ID'], mail.message_id)
        self.assertTrue(mail.message_id.endswith('@test.example>'))
        self.assertTrue(parsed['Date'])

    def test_existing_message_id_and_date_kept(self):
        mail = self._callFUT(
            message(
                extra_headers={
                    'Message-ID': '<mine@example.com>',
                    'Date': 'Mon, 02 Nov 2026 10:00:00 +0000',
                }
            )
        )
        self.assertEqual(mail.message_id, '<mine@example.com>')
        self.assertIn(b'Date: Mon, 02 Nov 2026 10:00:00 +0000', mail.data)

    def test_default_sender(self):
        mail = self._callFUT(
            message(sender=None), default_sender='App <app@example.com>'
        )
        self.assertEqual(mail.envelope.sender, 'app@example.com')

    def test_original_kept(self):
        msg = message()
        self.assertIs(self._callFUT(msg).original, msg)

    def test_idn_domain_punycoded_in_envelope(self):
        mail = self._callFUT(message(recipients=['a@bücher.example']))
        self.assertEqual(mail.envelope.recipients, ('a@xn--bcher-kva.example',))
        self.assertFalse(mail.envelope.smtputf8)

    def test_non_ascii_local_part_needs_smtputf8(self):
        mail = self._callFUT(message(recipients=['zoë@example.com']))
        self.assertTrue(mail.envelope.smtputf8)
        self.assertIn('zoë@example.com'.encode(), mail.data)

    # -- errors
    def test_no_recipients(self):
        self.assertError('recipients', message(recipients=[]))

    def test_no_sender(self):
        self.assertError('sender', message(sender=None))

    def test_unparsable_addresses(self):
        for bad in ('not an address', 'a@', '@b.example', 'a@b.example, c@d.example'):
            error = self.assertError('recipients', message(recipients=[bad]))
            self.assertIn(repr(bad), str(error))
        self.assertError('cc', message(cc=[42]))
        self.assertError('sender', message(sender='nobody'))

    def test_garbage_address_parser_error(self):
        self.assertError('recipients', message(recipients=['"unterminated <a@b.c']))

    def test_crlf_in_headers_refused(self):
        self.assertError('subject', message(subject='Hi\r\nBcc: victim@example.com'))
        self.assertError('X-A', message(extra_headers={'X-A': 'v\nInjected: 1'}))
        self.assertError('X-B\n', message(extra_headers={'X-B\n': 'v'}))
        self.assertError('recipients', message(recipients=['a@example.com\r\nX: y']))
        self.assertError(
            'attachment filename',
            message(attachments=[Attachment('a\r\n.txt', data=b'x')]),
        )


class Test_prepare_email_message(unittest.TestCase):
    def _callFUT(self, msg, **kw):
        from pyramid_txmail.message import prepare

        return prepare(msg, message_id_domain='t', **kw)

    def _make(self):
        msg = EmailMessage()
        msg['From'] = 'Ann <ann@example.com>'
        msg['To'] = 'b@example.com, "Doe, John" <j@example.com>'
        msg['Cc'] = 'c@example.com'
        msg['Bcc'] = 'hidden@example.com'
        msg['Subject'] = 'Hi'
        msg.set_content('hello')
        return msg

    def test_envelope_from_headers_bcc_removed_caller_untouched(self):
        original = self._make()
        mail = self._callFUT(original)
        self.assertEqual(mail.envelope.sender, 'ann@example.com')
        self.assertEqual(
            mail.envelope.recipients,
            ('b@example.com', 'j@example.com', 'c@example.com', 'hidden@example.com'),
        )
        self.assertNotIn(b'hidden', mail.data)
        self.assertEqual(original['Bcc'], 'hidden@example.com')
        self.assertNotIn('Message-ID', original)

    def test_sender_header_wins_for_envelope(self):
        msg = self._make()
        msg['Sender'] = 'bounce@example.com'
        self.assertEqual(self._callFUT(msg).envelope.sender, 'bounce@example.com')

    def test_default_sender_sets_from(self):
        msg = self._make()
        del msg['From']
        mail = self._callFUT(msg, default_sender='app@example.com')
        self.assertEqual(parse(mail.data)['From'], 'app@example.com')

    def test_no_sender(self):
        msg = self._make()
        del msg['From']
        with self.assertRaises(MailError) as cm:
            self._callFUT(msg)
        self.assertEqual(cm.exception.field, 'sender')

    def test_bad_address_header(self):
        msg = EmailMessage()
        msg['From'] = 'a@example.com'
        msg['To'] = 'undisclosed'
        with self.assertRaises(MailError) as cm:
            self._callFUT(msg)
        self.assertEqual(cm.exception.field, 'To')

    def test_no_recipients(self):
        msg = EmailMessage()
        msg['From'] = 'a@example.com'
        with self.assertRaises(MailError) as cm:
            self._callFUT(msg)
        self.assertEqual(cm.exception.field, 'recipients')


class TestEnvelope(unittest.TestCase):
    def test_smtputf8(self):
        from pyramid_txmail.message import Envelope

        self.assertFalse(Envelope('a@b.c', ('d@e.f',)).smtputf8)
        self.assertTrue(Envelope('a@b.c', ('ü@e.f',)).smtputf8)


class TestWirePolicy(unittest.TestCase):
    """The faster policy writes exactly what ``email.policy.SMTP`` writes."""

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

    def _policy(self):
        from pyramid_txmail.message import _SMTP

        return _SMTP

    def test_folds_like_the_stdlib(self):
        stdlib, ours = email.policy.SMTP, self._policy()
        for name, value in self.HEADERS:
            with self.subTest(name=name, value=value):
                expected = stdlib.fold(name, stdlib.header_store_parse(name, value)[1])
                stored = ours.header_store_parse(name, value)[1]
                self.assertEqual(ours.fold(name, stored), expected)

    def test_reads_like_the_stdlib(self):
        stdlib, ours = email.policy.SMTP, self._policy()
        for name, value in self.HEADERS:
            with self.subTest(name=name, value=value):
                expected = stdlib.header_fetch_parse(name, value)
                got = ours.header_fetch_parse(name, value)
                self.assertEqual(str(got), str(expected))
                self.assertEqual(type(got).__mro__[1:], type(expected).__mro__[1:])

    def test_keeps_printable_ascii_unparsed_until_read(self):
        ours = self._policy()
        self.assertEqual(ours.header_store_parse('Subject', 'Hi'), ('Subject', 'Hi'))
        _, parsed = ours.header_store_parse('Subject', 'Grüße')
        self.assertEqual(parsed.name, 'Subject')  # a header object
        with self.assertRaises(ValueError):
            ours.header_store_parse('Subject', 'two\nlines')

    def test_a_header_class_per_name_is_built_once(self):
        from pyramid_txmail.message import _HEADER_FACTORY

        self.assertIs(_HEADER_FACTORY['X-Custom'], _HEADER_FACTORY['x-custom'])


class Test_parse_address(unittest.TestCase):
    def test_common_forms_read_as_the_full_parser_reads_them(self):
        from pyramid_txmail.message import _HEADER_FACTORY, parse_address

        for value in (
            'a@example.com',
            'first.last+tag@mail.example.co.uk',
            "o'hara@example.com",
            'Shop <shop@example.com>',
            'Some Shop 2 <shop@example.com>',
            'Shop  Two <shop@example.com>',  # two spaces: the full parser
            '"Doe, John" <john@example.com>',  # quoted: the full parser
            'Jörg <jorg@example.com>',
        ):
            with self.subTest(value=value):
                [expected] = _HEADER_FACTORY('To', value).addresses
                self.assertEqual(parse_address(value), expected)

    def test_near_misses_are_still_refused(self):
        from pyramid_txmail.message import parse_address

        for value in ('Shop shop@example.com', 'a@', '@example.com', 'a@b@c'):
            with self.subTest(value=value), self.assertRaises(MailError):
                parse_address(value)


# -- many recipients


def test_twenty_thousand_recipients_in_envelope_and_header():
    from pyramid_txmail.message import prepare

    addresses = [f'user{i}@example.com' for i in range(20_000)]
    mail = prepare(message(recipients=addresses, cc=['Ann <ann@example.com>']))
    assert mail.envelope.recipients == (*addresses, 'ann@example.com')
    head = mail.data.split(b'\r\n\r\n')[0]
    assert max(len(line) for line in head.split(b'\r\n')) <= 78
    # Unfolded by hand: the stdlib's parser takes quadratic time for this.
    [to] = re.findall(rb'^To: (.*?)\r\n(?! )', head, re.MULTILINE | re.DOTALL)
    assert to.replace(b'\r\n', b'').decode().split(', ') == addresses


def test_address_list_with_a_display_name_longer_than_a_line():
    from pyramid_txmail.message import prepare

    name = ' '.join(['word'] * 300)
    mail = prepare(message(recipients=[Address(name, 'a', 'example.com'), 'b@ex.com']))
    lines = mail.data.split(b'\r\n\r\n')[0].split(b'\r\n')
    assert max(len(line) for line in lines) <= 998
    [first, second] = parse(mail.data)['To'].addresses
    assert (first.display_name, first.addr_spec) == (name, 'a@example.com')
    assert second.addr_spec == 'b@ex.com'


def test_message_id_and_date_of_an_email_message_are_checked():
    from pyramid_txmail.message import prepare

    for name, value in (('Message-ID', '<a@b@c>'), ('Date', 'soon')):
        msg = email.message_from_bytes(
            f'From: a@example.com\nTo: b@example.com\n{name}: {value}\n\nhi\n'.encode(),
            policy=email.policy.default,
        )
        try:
            prepare(msg)
        except MailError as error:
            assert error.field == name
        else:
            raise AssertionError(f'{name}: {value!r} accepted')
