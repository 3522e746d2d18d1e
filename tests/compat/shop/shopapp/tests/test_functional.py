"""Functional tests through WebTest.

``FunctionalTests`` is pyramid_mailer's documented pattern (the DummyMailer
through ``pyramid.includes``); the functions below run the application
configured by development.ini against a real SMTP relay.
"""

import unittest

import pytest
from pyramid.paster import get_appsettings
from pyramid_mailer import get_mailer
from webtest import TestApp

from shopapp.views import PaymentRefused


class FunctionalTests(unittest.TestCase):
    def setUp(self):
        from shopapp import main

        settings = {'pyramid.includes': 'pyramid_mailer.testing'}
        app = main({}, **settings)
        self.testapp = TestApp(app)

    def test_order_confirmation(self):
        self.testapp.post('/order', {'email': 'ann@example.com'}, status=200)
        registry = self.testapp.app.registry
        mailer = get_mailer(registry)
        self.assertEqual(len(mailer.outbox), 1)
        self.assertEqual(mailer.outbox[0].subject, 'Your order')

    def test_newsletter(self):
        self.testapp.post('/newsletter', {'email': 'ann@example.com'}, status=200)
        mailer = get_mailer(self.testapp.app.registry)
        self.assertEqual(len(mailer.queue), 1)
        self.assertEqual(mailer.queue[0].recipients, ['ann@example.com'])


@pytest.fixture
def testapp(ini_file):
    from shopapp import main

    return TestApp(main({}, **get_appsettings(ini_file)))


def test_order_confirmation_reaches_the_relay(testapp, relay):
    testapp.post('/order', {'email': 'ann@example.com'}, status=200)
    [(sender, recipients, message)] = relay.wait_for(1)
    assert sender == 'shop@example.com'
    assert recipients == ['ann@example.com']
    assert message['Subject'] == 'Your order'
    assert message['From'] == 'Shop <shop@example.com>'
    assert message.get_body(('plain',)).get_content().strip() == (
        'Thank you for your order.'
    )
    [invoice] = message.iter_attachments()
    assert invoice.get_filename() == 'invoice.txt'
    assert invoice.get_content().strip() == 'Invoice 1: 10 EUR'


def test_refused_payment_sends_no_confirmation(testapp, relay):
    with pytest.raises(PaymentRefused):
        testapp.post('/order', {'email': 'bob@example.com', 'card': 'declined'})
    testapp.post('/order', {'email': 'ann@example.com'}, status=200)
    messages = relay.wait_for(1)
    assert [recipients for _, recipients, _ in messages] == [['ann@example.com']]


def test_contact_form_is_sent_at_once(testapp, relay):
    response = testapp.post(
        '/contact', {'email': 'ann@example.com', 'text': 'Hello'}, status=200
    )
    assert response.json == {'status': 'sent'}
    [(sender, recipients, message)] = relay.wait_for(1)
    assert (sender, recipients) == ('ann@example.com', ['shop@example.com'])
    assert message.get_content().strip() == 'Hello'


def test_contact_form_when_the_relay_refuses(testapp, relay):
    relay.refuse = '554 5.7.1 not today'
    response = testapp.post(
        '/contact', {'email': 'ann@example.com', 'text': 'Hello'}, status=200
    )
    assert response.json == {'status': 'please try again later'}
    assert relay.messages == []


def test_another_mail_prefix(relay):
    from shopapp import main

    settings = {
        'pyramid.includes': 'pyramid_mailer',
        'pyramid_mailer.prefix': 'shopmail.',
        'shopmail.host': relay.host,
        'shopmail.port': str(relay.port),
        'shopmail.default_sender': 'orders@example.com',
    }
    testapp = TestApp(main({}, **settings))
    testapp.post('/order', {'email': 'ann@example.com'}, status=200)
    [(sender, _, _)] = relay.wait_for(1)
    assert sender == 'orders@example.com'


def test_gift_card_reaches_friend_buyer_and_archive(testapp, relay):
    """Uses pyramid_mailer's Message helpers (add_recipient, add_cc, add_bcc,
    a body given as an Attachment)."""
    testapp.post(
        '/gift', {'friend': 'bob@example.com', 'buyer': 'ann@example.com'}, status=200
    )
    [(_, recipients, message)] = relay.wait_for(1)
    assert sorted(recipients) == [
        'ann@example.com',
        'archive@example.com',
        'bob@example.com',
    ]
    assert message['To'] == 'bob@example.com'
    assert message['Cc'] == 'ann@example.com'
    assert 'Bcc' not in message
    assert message['Content-Transfer-Encoding'] == 'quoted-printable'
    assert message.get_content().strip() == 'Your code: GIFT-1'
