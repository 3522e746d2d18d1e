"""Real Pyramid apps through WebTest, pyramid_tm, and a real SMTP server."""

from __future__ import annotations

import os
import threading

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail import Message, get_mailer
from pyramid_txmail.events import MailFailed, MailSent
from tests import wait_until


def welcome(request):
    return Message(
        subject='Welcome',
        sender='app@example.com',
        recipients=['user@example.com'],
        bcc=['audit@example.com'],
        body='Hello',
        html='<p>Hello</p>',
    )


def send_view(request):
    message_id = request.mailer.send(welcome(request))
    return {'message_id': message_id}


def send_then_fail_view(request):
    request.mailer.send(welcome(request))
    raise RuntimeError('the view failed after sending')


def send_to_queue_view(request):
    return {'message_id': request.mailer.send_to_queue(welcome(request))}


def make_app(settings, *, explicit=False, includes=('pyramid_txmail',), events=None):
    settings = {'mail.default_sender': 'app@example.com', **settings}
    if explicit:
        settings['tm.manager_hook'] = 'pyramid_tm.explicit_manager'
    with Configurator(settings=settings) as config:
        for name in includes:
            config.include(name)
        for name, view in [
            ('send', send_view),
            ('fail', send_then_fail_view),
            ('queue', send_to_queue_view),
        ]:
            config.add_route(name, '/' + name)
            config.add_view(view, route_name=name, renderer='json')
        if events is not None:
            config.add_subscriber(events.append, MailSent)
            config.add_subscriber(events.append, MailFailed)
        app = config.make_wsgi_app()
    return webtest.TestApp(app), app.registry


@pytest.fixture(params=[False, True], ids=['threadlocal_tm', 'explicit_tm'])
def explicit(request):
    return request.param


def test_direct_view_that_commits_delivers_exactly_one_message(smtp_server, explicit):
    events = []
    app, _ = make_app(smtp_server.mail_settings(), explicit=explicit, events=events)
    res = app.get('/send')
    (received,) = smtp_server.wait_for(1)
    assert received.message['Message-ID'] == res.json['message_id']
    assert received.message['Subject'] == 'Welcome'
    assert 'Bcc' not in received.message
    assert sorted(received.rcpt_tos) == ['audit@example.com', 'user@example.com']
    assert [type(e) for e in events] == [MailSent]
    assert events[0].message_id == res.json['message_id']


def test_direct_view_that_raises_delivers_nothing(smtp_server, explicit):
    app, _ = make_app(smtp_server.mail_settings(), explicit=explicit)
    with pytest.raises(RuntimeError):
        app.get('/fail')
    app.get('/send')  # a later message proves the server was listening
    smtp_server.wait_for(1)
    assert len(smtp_server.messages) == 1


def test_direct_relay_refusal_never_reaches_the_request(make_smtp_server):
    server = make_smtp_server(reply={'MAIL': '554 5.7.1 go away'})
    events = []
    app, _ = make_app(server.mail_settings(), events=events)
    assert app.get('/send').status_int == 200
    assert [type(e) for e in events] == [MailFailed]
    assert events[0].permanent
    assert server.messages == []


def test_queued_processor_started_at_app_creation_delivers(smtp_server, tmp_path):
    queue = tmp_path / 'queue'
    events = []
    app, registry = make_app(
        smtp_server.mail_settings(queue_path=str(queue)), events=events
    )
    try:
        res = app.get('/send')
        (received,) = smtp_server.wait_for(1, timeout=10)
        assert received.message['Message-ID'] == res.json['message_id']
        wait_until(lambda: events)
    finally:
        stop_processor(registry)
    assert [type(e) for e in events] == [MailSent]
    assert events[0].message_id == res.json['message_id']
    assert oct(os.stat(queue).st_mode & 0o777) == '0o700'


def test_queued_view_that_raises_queues_nothing(smtp_server, tmp_path):
    queue = tmp_path / 'queue'
    settings = smtp_server.mail_settings(queue_path=str(queue), queue_processor='false')
    app, _ = make_app(settings)
    with pytest.raises(RuntimeError):
        app.get('/fail')
    app.get('/send')
    assert len(os.listdir(queue / 'new')) == 1
    assert os.listdir(queue / 'tmp') == []


def test_send_to_queue_queues_even_with_direct_delivery(smtp_server, tmp_path):
    queue = tmp_path / 'queue'
    settings = smtp_server.mail_settings(
        delivery='direct', queue_path=str(queue), queue_processor='false'
    )
    app, _ = make_app(settings)
    app.get('/queue')
    assert len(os.listdir(queue / 'new')) == 1
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    'includes',
    [
        ('pyramid_txmail', 'pyramid_txmail.testing'),
        ('pyramid_txmail.testing', 'pyramid_txmail'),
        ('pyramid_txmail.testing',),
    ],
)
def test_testing_include_sent_holds_committed_messages_only(includes, explicit):
    app, registry = make_app({}, includes=includes, explicit=explicit)
    app.get('/send')
    with pytest.raises(RuntimeError):
        app.get('/fail')
    app.get('/queue')
    mailer = get_mailer(registry)
    assert [m.subject for m in mailer.sent] == ['Welcome']
    assert [m.subject for m in mailer.sent_to_queue] == ['Welcome']


@pytest.mark.parametrize(
    'includes',
    [
        ('pyramid_txmail', 'pyramid_txmail.testing'),
        ('pyramid_txmail.testing', 'pyramid_txmail'),
    ],
)
def test_testing_include_wins_with_autocommit_in_either_order(includes):
    config = Configurator(
        settings={'mail.default_sender': 'a@example.com'}, autocommit=True
    )
    for name in includes:
        config.include(name)
    mailer = get_mailer(config.registry)
    with transaction.manager:
        mailer.send(Message(subject='s', recipients=['b@example.com'], body='x'))
    assert [m.subject for m in mailer.sent] == ['s']


def test_request_gets_its_own_mailer_bound_to_request_tm(smtp_server):
    seen = {}

    def view(request):
        seen['same'] = get_mailer(request) is request.mailer
        seen['tm'] = request.mailer.transaction_manager is request.tm
        return {}

    with Configurator(settings=smtp_server.mail_settings()) as config:
        config.include('pyramid_txmail')
        config.add_route('v', '/v')
        config.add_view(view, route_name='v', renderer='json')
        app = webtest.TestApp(config.make_wsgi_app())
    app.get('/v')
    assert seen == {'same': True, 'tm': True}


def test_app_created_inside_suppress_processor_starts_no_processor(tmp_path):
    from pyramid_txmail import suppress_processor

    settings = {'mail.queue_path': str(tmp_path / 'q')}
    with suppress_processor():
        make_app(settings)
    names = [t.name for t in threading.enumerate()]
    assert 'pyramid_txmail-processor' not in names


def test_get_mailer_from_registry_in_a_script_uses_default_manager(smtp_server):
    _, registry = make_app(smtp_server.mail_settings())
    mailer = get_mailer(registry)
    with transaction.manager:
        mailer.send(Message(subject='s', recipients=['b@example.com'], body='x'))
    smtp_server.wait_for(1)
    transaction.begin()
    mailer.send(Message(subject='t', recipients=['b@example.com'], body='x'))
    transaction.abort()
    assert len(smtp_server.messages) == 1


def test_bad_setting_raises_at_include_naming_key():
    config = Configurator(settings={'mail.port': 'smtp'})
    with pytest.raises(ConfigurationError, match=r'mail\.port'):
        config.include('pyramid_txmail')


def stop_processor(registry):
    """Stop the processor thread the app started (at most a few seconds)."""
    from pyramid_txmail.processor import ensure_processor

    mailer = get_mailer(registry)
    assert ensure_processor(mailer.queue_delivery.queue, mailer.settings).stop()
