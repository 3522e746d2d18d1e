"""pyramid_txmail.testing: pyramid_mailer's DummyMailer and the committed record."""

from __future__ import annotations

import threading

import pytest
import transaction
from pyramid import testing
from pyramid.config import Configurator

from pyramid_txmail import MailError, Message, get_mailer
from pyramid_txmail.events import MailSent
from pyramid_txmail.testing import DummyMailer
from tests import message


@pytest.fixture
def config():
    """pyramid_mailer's documented set-up: testing.setUp() and the include."""
    config = testing.setUp()
    config.include('pyramid_txmail.testing')
    yield config
    transaction.abort()
    testing.tearDown()


def send_welcome(request):
    """A view written the pyramid_mailer way."""
    get_mailer(request).send(message(subject='Welcome'))
    return {}


def test_documented_unit_test_pattern_sees_outbox_without_commit(config):
    request = testing.DummyRequest()
    mailer = get_mailer(request)
    send_welcome(request)
    assert [m.subject for m in mailer.outbox] == ['Welcome']
    assert mailer.sent == []


def test_get_mailer_for_dummy_request_is_the_registry_dummy(config):
    mailer = get_mailer(testing.DummyRequest())
    assert isinstance(mailer, DummyMailer)
    assert mailer.transaction_manager is transaction.manager
    get_mailer(testing.DummyRequest()).send(message())
    assert len(get_mailer(config.registry).outbox) == 1


def test_get_mailer_for_dummy_request_with_tm_joins_that_manager(config, tm):
    mailer = get_mailer(testing.DummyRequest(tm=tm))
    with tm:
        mailer.send(message())
    assert len(mailer.sent) == 1


class AppMailer:
    """An application's own mailer, written to pyramid_mailer's IMailer."""

    def __init__(self, outbox, transaction_manager=None):
        self.outbox = outbox
        self.transaction_manager = transaction_manager

    def bind(self, **kw):
        return AppMailer(self.outbox, kw.get('transaction_manager'))

    def send(self, message):
        self.outbox.append((message, self.transaction_manager))


def test_an_apps_own_mailer_registered_as_imailer_is_bound_by_keyword(tm):
    from pyramid.request import Request, apply_request_extensions

    from pyramid_txmail.interfaces import IMailer

    config = testing.setUp(settings={})
    try:
        config.include('pyramid_txmail')
        config.commit()
        outbox = []
        config.registry.registerUtility(AppMailer(outbox), IMailer)
        config.make_wsgi_app()  # ApplicationCreated asks it for no queue
        get_mailer(testing.DummyRequest(tm=tm)).send('one')
        get_mailer(config.registry).send('two')
        request = Request.blank('/')
        request.registry = config.registry
        apply_request_extensions(request)
        request.mailer.send('three')
        assert outbox == [
            ('one', tm),
            ('two', transaction.manager),
            ('three', request.tm),
        ]
    finally:
        testing.tearDown()


def test_dummy_mailer_takes_no_arguments():
    mailer = DummyMailer()
    with transaction.manager:
        mailer.send(message(subject='one'))
        mailer.send_to_queue(message(subject='two'))
        assert [m.subject for m in mailer.outbox] == ['one']
        assert [m.subject for m in mailer.queue] == ['two']
    assert [m.subject for m in mailer.sent] == ['one']
    assert [m.subject for m in mailer.sent_to_queue] == ['two']


def test_dummy_mailer_demands_no_sender():
    mailer = DummyMailer()
    with transaction.manager:
        mailer.send(message(sender=None))
    assert [m.subject for m in mailer.outbox] == ['Hi']
    assert [m.subject for m in mailer.sent] == ['Hi']


def test_dummy_mailer_uses_the_default_sender_when_set():
    events = []
    mailer = DummyMailer(notify=events.extend).bind(default_sender='app@example.com')
    with transaction.manager:
        mailer.send(message(sender=None))
    assert events[0].message['From'] == 'app@example.com'


def test_sent_holds_committed_messages_in_commit_order():
    mailer = DummyMailer()
    with transaction.manager:
        mailer.send(message(subject='one'))
        assert mailer.sent == []
        mailer.send(message(subject='two'))
    with transaction.manager:
        mailer.send(message(subject='three'))
    assert [m.subject for m in mailer.sent] == ['one', 'two', 'three']


def test_abort_adds_nothing_to_the_committed_record():
    mailer = DummyMailer()
    transaction.begin()
    mailer.send(message(subject='s'))
    mailer.send_to_queue(message(subject='q'))
    transaction.abort()
    assert mailer.sent == [] and mailer.sent_to_queue == []
    assert [m.subject for m in mailer.outbox] == ['s']
    assert [m.subject for m in mailer.queue] == ['q']


def test_send_to_queue_needs_no_queue_path():
    mailer = DummyMailer()
    with transaction.manager:
        mailer.send_to_queue(message())
    assert [m.subject for m in mailer.queue] == ['Hi']
    assert [m.subject for m in mailer.sent_to_queue] == ['Hi']
    assert mailer.outbox == [] and mailer.sent == []


def test_send_immediately_goes_to_outbox_and_sent_at_once():
    mailer = DummyMailer()
    transaction.begin()
    mailer.send_immediately(message())
    transaction.abort()
    assert len(mailer.outbox) == 1 and len(mailer.sent) == 1


def test_dummy_mailers_bound_copies_share_the_lists(tm):
    mailer = DummyMailer()
    with tm:
        mailer.bind(tm).send(message())
        mailer.bind(transaction_manager=tm).send(message())
    assert len(mailer.outbox) == 2 and len(mailer.sent) == 2


def test_events_fire_at_commit_as_in_production():
    config = Configurator(autocommit=True)
    config.include('pyramid_txmail.testing')
    events = []
    config.add_subscriber(events.append, MailSent)
    mailer = get_mailer(config.registry)
    with transaction.manager:
        message_id = mailer.send(message())
        assert events == []
    assert [e.message_id for e in events] == [message_id]


def test_dummy_mailer_still_validates_messages():
    mailer = DummyMailer()
    with pytest.raises(MailError):
        mailer.send(Message(subject='x', sender='a@example.com', body='x'))
    with pytest.raises(MailError):
        mailer.send_to_queue(message(sender='not an address'))
    assert mailer.outbox == [] and mailer.queue == []
    transaction.abort()


def test_pyramid_mailer_import_path_gives_the_same_class():
    from pyramid_txmail import mailer

    assert mailer.DummyMailer is DummyMailer
    with pytest.raises(AttributeError, match='NoSuchMailer'):
        mailer.NoSuchMailer  # noqa: B018


def test_no_processor_thread_even_with_queue_path(tmp_path):
    config = Configurator(
        settings={'mail.queue_path': str(tmp_path / 'q')}, autocommit=True
    )
    config.include('pyramid_txmail.testing')
    config.make_wsgi_app()
    names = [t.name for t in threading.enumerate()]
    assert 'pyramid_txmail-processor' not in names
    assert not (tmp_path / 'q').exists()
