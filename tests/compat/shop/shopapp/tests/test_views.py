"""Unit tests, written as pyramid_mailer's documentation shows."""

import unittest

from pyramid import testing


class TestViews(unittest.TestCase):
    def setUp(self):
        self.config = testing.setUp(settings={'shop.archive': 'archive@example.com'})
        self.config.include('pyramid_mailer.testing')

    def tearDown(self):
        testing.tearDown()

    def test_contact_forwards_the_form(self):
        from pyramid.testing import DummyRequest
        from pyramid_mailer import get_mailer

        from shopapp.views import contact

        request = DummyRequest(params={'email': 'ann@example.com', 'text': 'Hello'})
        mailer = get_mailer(request)
        response = contact(request)
        self.assertEqual(response, {'status': 'sent'})
        self.assertEqual(len(mailer.outbox), 1)
        self.assertEqual(mailer.outbox[0].subject, 'Contact form')
        self.assertEqual(mailer.outbox[0].sender, 'ann@example.com')
        self.assertEqual(mailer.outbox[0].recipients, ['shop@example.com'])

    def test_subscribe_queues_the_welcome_letter(self):
        from pyramid.testing import DummyRequest
        from pyramid_mailer import get_mailer

        from shopapp.views import subscribe

        request = DummyRequest(params={'email': 'ann@example.com'})
        mailer = get_mailer(request)
        self.assertEqual(subscribe(request), {'status': 'subscribed'})
        self.assertEqual(len(mailer.queue), 1)
        self.assertEqual(mailer.queue[0].subject, 'Welcome to our newsletter')
        self.assertEqual(mailer.outbox, [])

    def test_place_order_with_the_mailer_on_the_request(self):
        from pyramid.testing import DummyRequest
        from pyramid_mailer import get_mailer

        from shopapp.views import place_order

        request = DummyRequest(params={'email': 'ann@example.com'})
        request.mailer = get_mailer(request)
        self.assertEqual(place_order(request), {'status': 'ordered'})
        [message] = request.mailer.outbox
        self.assertEqual(message.recipients, ['ann@example.com'])
        self.assertIsNone(message.sender)
        self.assertEqual(message.attachments[0].filename, 'invoice.txt')


class TestMessageHelpers(unittest.TestCase):
    """pyramid_mailer's Message helpers, used by the gift card view."""

    def setUp(self):
        self.config = testing.setUp(settings={'shop.archive': 'archive@example.com'})
        self.config.include('pyramid_mailer.testing')

    def tearDown(self):
        testing.tearDown()

    def test_gift_card_goes_to_friend_buyer_and_archive(self):
        from pyramid.testing import DummyRequest
        from pyramid_mailer import get_mailer

        from shopapp.views import gift_card

        request = DummyRequest(
            params={'friend': 'bob@example.com', 'buyer': 'ann@example.com'}
        )
        mailer = get_mailer(request)
        response = gift_card(request)
        [message] = mailer.outbox
        self.assertEqual(
            message.send_to,
            {'bob@example.com', 'ann@example.com', 'archive@example.com'},
        )
        self.assertEqual(response['to'], sorted(message.send_to))
        self.assertEqual(message.to_message()['Cc'], 'ann@example.com')
        self.assertEqual(message.to_message()['X-Shop-Gift'], 'yes')
