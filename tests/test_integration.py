"""Real Pyramid apps through WebTest, pyramid_tm, and a real SMTP server."""

from __future__ import annotations

import os
import time

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail import Message, get_mailer
from pyramid_txmail.events import MailFailed, MailSent


def _message(request, to='user@example.com'):
    return Message(
        subject='Welcome',
        sender='app@example.com',
        recipients=[to],
        bcc=['audit@example.com'],
        body='Hello',
        html='<p>Hello</p>',
    )


def send_view(request):
    message_id = request.mailer.send(_message(request))
    return {'message_id': message_id}


def send_then_fail_view(request):
    request.mailer.send(_message(request))
    raise RuntimeError('the view failed after sending')


def send_to_queue_view(request):
    return {'message_id': request.mailer.send_to_queue(_message(request))}


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


def smtp_settings(server, **extra):
    return {'mail.host': server.host, 'mail.port': str(server.port), **extra}


@pytest.fixture(params=[False, True], ids=['threadlocal_tm', 'explicit_tm'])
def explicit(request):
    return request.param


class TestDirectDelivery:
    def test_view_that_commits_delivers_exactly_one(self, smtp_server, explicit):
        events = []
        app, _ = make_app(smtp_settings(smtp_server), explicit=explicit, events=events)
        res = app.get('/send')
        (received,) = smtp_server.wait_for(1)
        assert received.message['Message-ID'] == res.json['message_id']
        assert received.message['Subject'] == 'Welcome'
        assert 'Bcc' not in received.message
        assert sorted(received.rcpt_tos) == ['audit@example.com', 'user@example.com']
        assert [type(e) for e in events] == [MailSent]
        assert events[0].message_id == res.json['message_id']

    def test_view_that_raises_delivers_nothing(self, smtp_server, explicit):
        app, _ = make_app(smtp_settings(smtp_server), explicit=explicit)
        with pytest.raises(RuntimeError):
            app.get('/fail')
        app.get('/send')  # a later message proves the server was listening
        smtp_server.wait_for(1)
        assert len(smtp_server.messages) == 1

    def test_relay_refusal_never_reaches_the_request(self, make_smtp_server):
        server = make_smtp_server(reply={'MAIL': '554 5.7.1 go away'})
        events = []
        app, _ = make_app(smtp_settings(server), events=events)
        assert app.get('/send').status_int == 200
        assert [type(e) for e in events] == [MailFailed]
        assert events[0].permanent
        assert server.messages == []


class TestQueuedDelivery:
    def test_processor_started_at_app_creation_delivers(self, smtp_server, tmp_path):
        queue = tmp_path / 'queue'
        events = []
        app, _ = make_app(
            smtp_settings(smtp_server, **{'mail.queue_path': str(queue)}),
            events=events,
        )
        try:
            res = app.get('/send')
            (received,) = smtp_server.wait_for(1, timeout=10)
            assert received.message['Message-ID'] == res.json['message_id']
            _wait_until(lambda: events)
        finally:
            _stop_processors()
        assert [type(e) for e in events] == [MailSent]
        assert events[0].message_id == res.json['message_id']
        assert oct(os.stat(queue).st_mode & 0o777) == '0o700'

    def test_view_that_raises_queues_nothing(self, smtp_server, tmp_path):
        queue = tmp_path / 'queue'
        settings = smtp_settings(
            smtp_server,
            **{'mail.queue_path': str(queue), 'mail.queue_processor': 'false'},
        )
        app, _ = make_app(settings)
        with pytest.raises(RuntimeError):
            app.get('/fail')
        app.get('/send')
        assert len(os.listdir(queue / 'new')) == 1
        assert os.listdir(queue / 'tmp') == []

    def test_send_to_queue_with_direct_delivery(self, smtp_server, tmp_path):
        queue = tmp_path / 'queue'
        settings = smtp_settings(
            smtp_server,
            **{
                'mail.delivery': 'direct',
                'mail.queue_path': str(queue),
                'mail.queue_processor': 'false',
            },
        )
        app, _ = make_app(settings)
        app.get('/queue')
        assert len(os.listdir(queue / 'new')) == 1
        assert smtp_server.messages == []


class TestTestingInclude:
    @pytest.mark.parametrize(
        'includes',
        [
            ('pyramid_txmail', 'pyramid_txmail.testing'),
            ('pyramid_txmail.testing', 'pyramid_txmail'),
            ('pyramid_txmail.testing',),
        ],
    )
    def test_sent_holds_committed_messages_only(self, includes, explicit):
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
    def test_autocommit_configurator_either_order(self, includes):
        config = Configurator(
            settings={'mail.default_sender': 'a@example.com'}, autocommit=True
        )
        for name in includes:
            config.include(name)
        mailer = get_mailer(config.registry)
        with transaction.manager:
            mailer.send(Message(subject='s', recipients=['b@example.com'], body='x'))
        assert [m.subject for m in mailer.sent] == ['s']


class TestGetMailer:
    def test_request_gets_its_own_mailer_bound_to_request_tm(self, smtp_server):
        seen = {}

        def view(request):
            seen['same'] = get_mailer(request) is request.mailer
            seen['tm'] = request.mailer.transaction_manager is request.tm
            return {}

        with Configurator(settings=smtp_settings(smtp_server)) as config:
            config.include('pyramid_txmail')
            config.add_route('v', '/v')
            config.add_view(view, route_name='v', renderer='json')
            app = webtest.TestApp(config.make_wsgi_app())
        app.get('/v')
        assert seen == {'same': True, 'tm': True}


class TestSuppressProcessor:
    def test_app_created_inside_block_starts_no_processor(self, tmp_path):
        import threading

        from pyramid_txmail import suppress_processor

        settings = {'mail.queue_path': str(tmp_path / 'q')}
        with suppress_processor():
            make_app(settings)
        names = [t.name for t in threading.enumerate()]
        assert 'pyramid_txmail-processor' not in names


class TestScripts:
    def test_get_mailer_from_registry_uses_default_manager(self, smtp_server):
        _, registry = make_app(smtp_settings(smtp_server))
        mailer = get_mailer(registry)
        with transaction.manager:
            mailer.send(Message(subject='s', recipients=['b@example.com'], body='x'))
        smtp_server.wait_for(1)
        transaction.begin()
        mailer.send(Message(subject='t', recipients=['b@example.com'], body='x'))
        transaction.abort()
        assert len(smtp_server.messages) == 1


class TestConfiguration:
    def test_bad_setting_raises_at_include_naming_key(self):
        config = Configurator(settings={'mail.port': 'smtp'})
        with pytest.raises(ConfigurationError, match=r'mail\.port'):
            config.include('pyramid_txmail')


def _stop_processors():
    from pyramid_txmail.processor import _stop_all

    _stop_all()


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)
