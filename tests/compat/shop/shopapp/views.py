"""The shop's views: each sends mail as pyramid_mailer's documentation shows."""

import smtplib

from pyramid.view import view_config
from pyramid_mailer import get_mailer
from pyramid_mailer.message import Attachment, Message


class PaymentRefused(Exception):
    """The order cannot be paid: its transaction, and its mail, are dropped."""


@view_config(route_name='order', renderer='json', request_method='POST')
def place_order(request):
    """Confirm an order. The mail goes only if the order's transaction commits."""
    email = request.params['email']
    message = Message(
        subject='Your order',
        recipients=[email],
        body='Thank you for your order.',
        html='<p>Thank you for your order.</p>',
    )
    message.attach(Attachment('invoice.txt', 'text/plain', b'Invoice 1: 10 EUR\n'))
    request.mailer.send(message)
    if request.params.get('card') == 'declined':
        raise PaymentRefused(email)
    return {'status': 'ordered'}


@view_config(route_name='contact', renderer='json', request_method='POST')
def contact(request):
    """Forward the contact form to the shop at once, outside the transaction."""
    message = Message(
        subject='Contact form',
        sender=request.params['email'],
        recipients=['shop@example.com'],
        body=request.params['text'],
    )
    try:
        get_mailer(request).send_immediately(message)
    except smtplib.SMTPException:
        return {'status': 'please try again later'}
    return {'status': 'sent'}


@view_config(route_name='newsletter', renderer='json', request_method='POST')
def subscribe(request):
    """Queue the welcome letter; a queue processor sends it later."""
    message = Message(
        subject='Welcome to our newsletter',
        sender='news@example.com',
        recipients=[request.params['email']],
        body='You are subscribed.',
    )
    get_mailer(request).send_to_queue(message)
    return {'status': 'subscribed'}


@view_config(route_name='gift', renderer='json', request_method='POST')
def gift_card(request):
    """Send a gift card to a friend, copying the buyer and the archive."""
    message = Message(subject='A gift card for you', sender='gifts@example.com')
    message.add_recipient(request.params['friend'])
    message.add_cc(request.params['buyer'])
    message.add_bcc(request.registry.settings['shop.archive'])
    message.extra_headers['X-Shop-Gift'] = 'yes'
    message.body = Attachment(
        data='Your code: GIFT-1', transfer_encoding='quoted-printable'
    )
    message.validate()
    get_mailer(request).send(message)
    return {'status': 'sent', 'to': sorted(message.send_to)}
