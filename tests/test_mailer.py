"""Mailer: send joins the transaction; send_immediately, send_to_queue,
and pyramid_mailer's constructor, from_settings and bind."""

from __future__ import annotations

import os

import pytest
import transaction

from pyramid_txmail.mailer import Mailer
from pyramid_txmail.message import MailError
from pyramid_txmail.settings import MailSettings
from tests import RecordingDelivery, message, parse_mail


def make_mailer(delivery=None, **kw):
    """A Mailer over ``delivery`` (a RecordingDelivery unless given)."""
    settings = kw.pop('settings', MailSettings(message_id_domain='test.example'))
    return Mailer(settings, delivery or RecordingDelivery(), **kw)


def test_send_joins_transaction_and_returns_message_id(tm):
    calls = []
    mailer = make_mailer(RecordingDelivery('d', calls)).bind(tm)
    with tm:
        message_id = mailer.send(message())
    assert message_id.endswith('@test.example>')
    assert calls[0] == ('d', 'vote', [message_id])


def test_unbound_mailer_uses_thread_default_manager():
    calls = []
    mailer = make_mailer(RecordingDelivery('d', calls))
    assert mailer.transaction_manager is transaction.manager
    with transaction.manager:
        mailer.send(message())
    assert [c[1] for c in calls] == ['vote', 'finish', 'after_commit']


def test_bad_message_raises_at_once_and_nothing_of_it_is_sent(tm):
    calls = []
    mailer = make_mailer(RecordingDelivery('d', calls)).bind(tm)
    with tm:
        with pytest.raises(MailError):
            mailer.send(message(recipients=[]))
        good = mailer.send(message())
    assert calls[0] == ('d', 'vote', [good])


def test_bound_copies_share_one_data_manager(tm):
    calls = []
    root = make_mailer(RecordingDelivery('d', calls))
    with tm:
        first = root.bind(tm).send(message())
        second = root.bind(tm).send(message())
    assert calls[0] == ('d', 'vote', [first, second])


def test_send_to_queue_uses_queue_delivery_in_same_transaction(tm):
    calls = []
    mailer = make_mailer(
        RecordingDelivery('d', calls),
        queue_delivery=RecordingDelivery('q', calls),
    ).bind(tm)
    with tm:
        sent = mailer.send(message())
        queued = mailer.send_to_queue(message())
    votes = [c for c in calls if c[1] == 'vote']
    assert votes == [('d', 'vote', [sent]), ('q', 'vote', [queued])]


def test_send_to_queue_without_queue_path_names_the_setting():
    with pytest.raises(RuntimeError, match=r'mail\.queue_path'):
        make_mailer().send_to_queue(message())


def test_send_immediately_ignores_transaction(tm):
    calls = []
    mailer = make_mailer(immediate=RecordingDelivery('now', calls)).bind(tm)
    tm.begin()
    message_id = mailer.send_immediately(message())
    tm.abort()
    assert calls == [('now', 'send_now', [message_id])]


def test_send_immediately_adds_message_id_and_date(smtp_server):
    settings = MailSettings(
        host=smtp_server.host, port=smtp_server.port, message_id_domain='x.test'
    )
    mailer = make_mailer(settings=settings)
    message_id = mailer.send_immediately(message())
    (received,) = smtp_server.wait_for(1)
    assert received.message['Message-ID'] == message_id
    assert received.message['Date']


def test_non_ascii_round_trips_through_the_relay(make_smtp_server):
    from pyramid_txmail.message import Attachment

    server = make_smtp_server(strict_crlf=True)
    settings = MailSettings(host=server.host, port=server.port)
    make_mailer(settings=settings).send_immediately(
        message(
            subject='Grüße ☕',
            sender='Zoë <zoe@example.com>',
            recipients=['"Doe, John" <j@example.com>'],
            body='héllo\nwörld',
            html='<p>héllo</p>',
            attachments=[Attachment('résumé.txt', data='ü')],
        )
    )
    (received,) = server.wait_for(1)
    parsed = parse_mail(received.data)
    assert received.rcpt_tos == ['j@example.com']
    assert parsed['Subject'] == 'Grüße ☕'
    assert parsed['From'].addresses[0].display_name == 'Zoë'
    assert parsed.get_body(('plain',)).get_content() == 'héllo\nwörld\n'
    assert parsed.get_body(('html',)).get_content_charset() == 'utf-8'
    assert [a.get_filename() for a in parsed.iter_attachments()] == ['résumé.txt']


def test_send_immediately_raises_delivery_error(make_smtp_server):
    from pyramid_txmail.smtp import DeliveryError

    server = make_smtp_server(reply={'MAIL': '554 5.7.1 no'})
    settings = MailSettings(host=server.host, port=server.port)
    with pytest.raises(DeliveryError):
        make_mailer(settings=settings).send_immediately(message())


def test_send_immediately_fail_silently_logs_instead_of_raising(
    make_smtp_server, caplog
):
    server = make_smtp_server(reply={'MAIL': '554 5.7.1 no'})
    settings = MailSettings(host=server.host, port=server.port)
    mailer = make_mailer(settings=settings)
    message_id = mailer.send_immediately(message(), fail_silently=True)
    assert message_id in caplog.text


def mailer_from_settings(**kw):
    return Mailer.from_settings(MailSettings(**kw))


def test_from_settings_direct_delivers_and_sends_immediately_alike():
    from pyramid_txmail.delivery import DirectDelivery

    mailer = mailer_from_settings()
    assert isinstance(mailer.delivery, DirectDelivery)
    assert mailer.immediate is mailer.delivery
    assert mailer.queue_delivery is None


def test_from_settings_queued_sends_to_queue_by_default(tmp_path):
    from pyramid_txmail.delivery import QueuedDelivery

    mailer = mailer_from_settings(delivery='queued', queue_path=str(tmp_path))
    assert isinstance(mailer.delivery, QueuedDelivery)
    assert mailer.queue_delivery is mailer.delivery


def test_from_settings_file_writes_files(tmp_path):
    from pyramid_txmail.delivery import FileDelivery

    mailer = mailer_from_settings(delivery='file', file_path=str(tmp_path))
    assert isinstance(mailer.delivery, FileDelivery)


def test_thousands_of_messages_hold_no_file_descriptor_each(tmp_path):
    settings = MailSettings(
        delivery='queued', queue_path=str(tmp_path / 'q'), message_id_domain='t'
    )
    mailer = Mailer.from_settings(settings)
    tm = transaction.TransactionManager(explicit=True)
    mailer = mailer.bind(tm)
    with tm:
        mailer.send(message())
        before = len(os.listdir('/proc/self/fd'))
        for _ in range(3000):
            mailer.send(message())
        # Other tests' threads may open or close a few meanwhile; one per
        # message would be thousands.
        assert len(os.listdir('/proc/self/fd')) < before + 50
    assert len(os.listdir(tmp_path / 'q' / 'new')) == 3001


# ``Mailer(**options)``, ``from_settings`` and ``bind`` as in pyramid_mailer.


def test_keywords_of_pyramid_mailer_send_through_the_relay(smtp_server):
    mailer = Mailer(
        host=smtp_server.host,
        port=smtp_server.port,
        username=None,
        password=None,
        tls=False,
        ssl=False,
        keyfile=None,
        certfile=None,
        queue_path=None,
        default_sender='shop@example.com',
        debug=0,
        sendmail_app=None,
        sendmail_template=None,
        transaction_manager=None,
    )
    with transaction.manager:
        mailer.send(message(sender=None))
    (received,) = smtp_server.wait_for(1)
    assert received.mail_from == 'shop@example.com'
    assert mailer.default_sender == 'shop@example.com'
    assert mailer.queue_path is None


def test_keyword_values_are_checked_naming_the_keyword():
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"^port: .*'smtp'"):
        Mailer(port='smtp')
    with pytest.raises(ConfigurationError, match=r"^tls: .*'ture'"):
        Mailer(tls='ture')
    with pytest.raises(ValueError, match='invalid options: hots, smtp_mailer'):
        Mailer(hots='x', smtp_mailer=object())
    with pytest.raises(TypeError, match='not both'):
        Mailer(MailSettings(), host='x')


def test_pyramid_mailer_only_options_are_warned_about(caplog):
    Mailer(debug=1, sendmail_app='/usr/sbin/sendmail')
    assert 'debug is a pyramid_mailer setting' in caplog.text
    assert 'sendmail_app is a pyramid_mailer setting' in caplog.text


def test_queue_path_keyword_queues(tmp_path):
    mailer = Mailer(queue_path=str(tmp_path / 'q'), default_sender='a@example.com')
    with transaction.manager:
        mailer.send(message())
        mailer.send_to_queue(message())
    assert len(os.listdir(tmp_path / 'q' / 'new')) == 2
    assert mailer.queue_path == str(tmp_path / 'q')


def test_from_settings_reads_a_raw_settings_dict(smtp_server):
    settings = {
        'mail.host': smtp_server.host,
        'mail.port': str(smtp_server.port),
        'mail.tls': 'f',
        'mail.default_sender': 'shop@example.com',
        'sqlalchemy.url': 'sqlite://',
    }
    with transaction.manager:
        Mailer.from_settings(settings).send(message(sender=None))
    (received,) = smtp_server.wait_for(1)
    assert received.mail_from == 'shop@example.com'


def test_from_settings_with_another_prefix(smtp_server):
    from pyramid_txmail import mailer_factory_from_settings

    settings = {
        'shopmail.host': smtp_server.host,
        'shopmail.port': str(smtp_server.port),
        'mail.port': 'not used',
    }
    mailer = mailer_factory_from_settings(settings, prefix='shopmail.')
    mailer.send_immediately(message())
    assert len(smtp_server.wait_for(1)) == 1


def test_from_settings_refuses_bad_values_naming_the_key():
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"mail\.tls: .*'ture'"):
        Mailer.from_settings({'mail.tls': 'ture'})
    assert Mailer.from_settings(None).settings.host == 'localhost'


def test_bind_default_sender_replaces_it_in_the_copy_only():
    calls = []
    root = make_mailer(RecordingDelivery('d', calls))
    bound = root.bind(default_sender='Shop <shop@example.com>')
    assert bound.default_sender == 'Shop <shop@example.com>'
    assert root.default_sender is None
    assert bound.prepare(message(sender=None)).envelope.sender == ('shop@example.com')
    assert bound.bind(default_sender=None).default_sender is None


def test_bind_transaction_manager_keyword(tm):
    calls = []
    mailer = make_mailer(RecordingDelivery('d', calls))
    bound = mailer.bind(transaction_manager=tm)
    assert bound.transaction_manager is tm
    assert bound.bind(default_sender='a@example.com').transaction_manager is tm


def test_bind_refuses_other_options():
    mailer = make_mailer()
    with pytest.raises(ValueError, match='invalid options: host'):
        mailer.bind(host='smtp.example.com')
    with pytest.raises(MailError, match='default_sender'):
        mailer.bind(default_sender='nobody')


def test_except_smtp_exception_catches_a_send_immediately_failure(make_smtp_server):
    """pyramid_mailer code guards send_immediately with smtplib's errors."""
    import smtplib

    server = make_smtp_server(reply={'MAIL': '554 5.7.1 no'})
    mailer = Mailer(host=server.host, port=server.port)
    caught = None
    try:
        mailer.send_immediately(message())
    except smtplib.SMTPException as exc:
        caught = exc
    assert caught is not None and '554' in str(caught)
    assert server.messages == []


@pytest.mark.parametrize(
    ('kw', 'kind', 'field'),
    [
        ({'recipients': []}, 'InvalidMessage', 'recipients'),
        ({'sender': None}, 'InvalidMessage', 'sender'),
        ({'recipients': ['not an address']}, 'InvalidMessage', 'recipients'),
        ({'subject': 'Hi\r\nBcc: victim@example.com'}, 'BadHeaders', 'subject'),
        ({'extra_headers': {'X-A': 'v\nInjected: 1'}}, 'BadHeaders', 'X-A'),
    ],
)
def test_send_raises_pyramid_mailers_exceptions_for_its_message(kw, kind, field):
    # Apps wrap send() in ``except (InvalidMessage, BadHeaders)``, as
    # pyramid_mailer raised them from send(), send_to_queue() and
    # send_immediately() alike.
    from pyramid_txmail import exceptions
    from pyramid_txmail.testing import DummyMailer

    mailers = [make_mailer(queue_delivery=RecordingDelivery())]
    if field != 'sender':  # the DummyMailer needs none
        mailers.append(DummyMailer())
    for mailer in mailers:
        for send in (mailer.send, mailer.send_to_queue, mailer.send_immediately):
            with transaction.manager, pytest.raises(getattr(exceptions, kind)) as info:
                send(message(**kw))
            assert info.value.field == field
            assert isinstance(info.value, MailError)
            assert isinstance(info.value, RuntimeError)
