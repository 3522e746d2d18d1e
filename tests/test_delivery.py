"""DirectDelivery, QueuedDelivery and FileDelivery, over a real SMTP server
and real files."""

from __future__ import annotations

import os

import pytest

from pyramid_txmail.delivery import DirectDelivery, FileDelivery, QueuedDelivery
from pyramid_txmail.events import MailFailed, MailSent
from pyramid_txmail.message import Envelope, PreparedMail
from pyramid_txmail.settings import MailSettings
from tests import SecondPhaseFailingDataManager, free_port, make_mail


def direct(settings, events, **kw) -> DirectDelivery:
    """Direct delivery whose events are appended to ``events``."""
    return DirectDelivery(settings, events.extend, **kw)


def mail_to(count) -> PreparedMail:
    """Mail to ``count`` recipients, its To header short."""
    mail = make_mail(1)
    recipients = tuple(f'r{n}@example.com' for n in range(count))
    return PreparedMail(
        mail.message_id, Envelope('from@example.com', recipients), mail.data
    )


def test_direct_transaction_mail_over_one_connection_after_commit(smtp_server):
    events = []
    delivery = direct(smtp_server.settings(), events)
    pending = delivery.vote([make_mail(1), make_mail(2), make_mail(3)])
    pending.finish()
    assert smtp_server.messages == []  # nothing inside the commit
    pending.after_commit()
    received = smtp_server.wait_for(3)
    assert [r.message['Message-ID'] for r in received] == [
        '<1@test>',
        '<2@test>',
        '<3@test>',
    ]
    assert smtp_server.connections == 1
    assert [type(e) for e in events] == [MailSent] * 3


def test_direct_abort_sends_nothing(smtp_server):
    events = []
    pending = direct(smtp_server.settings(), events).vote([make_mail(1)])
    pending.abort()
    assert smtp_server.messages == [] and events == []


def test_direct_unreachable_relay_fails_every_message_with_one_attempt():
    events = []
    attempts = []
    settings = MailSettings(host='127.0.0.1', port=free_port(), timeout=2)

    def connect():
        from pyramid_txmail.smtp import SMTPConnection

        attempts.append(1)
        return SMTPConnection(settings)

    delivery = direct(settings, events, connect=connect)
    delivery.deliver([make_mail(1), make_mail(2)])
    assert len(attempts) == 1
    assert [type(e) for e in events] == [MailFailed, MailFailed]
    assert all(e.permanent for e in events)


def test_direct_refused_message_does_not_stop_the_others(make_smtp_server):
    server = make_smtp_server(rcpt_reply={'bad@example.com': '550 5.1.1 unknown'})
    events = []
    delivery = direct(server.settings(), events)
    delivery.deliver([make_mail(1), make_mail(2, ('bad@example.com',)), make_mail(3)])
    assert [r.message['Message-ID'] for r in server.wait_for(2)] == [
        '<1@test>',
        '<3@test>',
    ]
    assert [type(e) for e in events] == [MailSent, MailFailed, MailSent]
    assert events[1].error.code == 550


def test_direct_closed_connection_reopened_for_the_next_message(make_smtp_server):
    server = make_smtp_server(reply={'MAIL': ['421 4.3.2 closing']})
    events = []
    delivery = direct(server.settings(), events)
    delivery.deliver([make_mail(1), make_mail(2)])
    assert [r.message['Message-ID'] for r in server.wait_for(1)] == ['<2@test>']
    assert [type(e) for e in events] == [MailFailed, MailSent]
    assert server.connections == 2


def test_direct_relay_closing_at_rset_after_a_refusal_loses_no_other_message(
    make_smtp_server,
):
    # Lock step: the first message's content is refused, and the RSET that
    # readies the session for the second is answered 421 (closing). The
    # second goes over a new session instead of failing on a closed one.
    server = make_smtp_server(
        reply={'DATA': ['554 5.7.1 no'], 'RSET': ['421 4.3.2 bye']},
        pipelining=False,
    )
    events = []
    delivery = direct(server.settings(), events)
    delivery.deliver([make_mail(1), make_mail(2)])
    assert [r.message['Message-ID'] for r in server.wait_for(1)] == ['<2@test>']
    assert [type(e) for e in events] == [MailFailed, MailSent]
    assert server.connections == 2


def test_direct_events_name_their_own_message(make_smtp_server):
    # The second message cannot go at all (SMTPUTF8 is not offered); it
    # is refused before the first message's content is written.
    server = make_smtp_server(smtputf8=False)
    events = []
    delivery = direct(server.settings(), events)
    delivery.deliver([make_mail(1), make_mail(2, ('jörg@example.com',)), make_mail(3)])
    assert [r.message['Message-ID'] for r in server.wait_for(2)] == [
        '<1@test>',
        '<3@test>',
    ]
    assert [(type(e), e.message_id) for e in events] == [
        (MailSent, '<1@test>'),
        (MailFailed, '<2@test>'),
        (MailSent, '<3@test>'),
    ]
    assert 'SMTPUTF8' in str(events[1].error)


def test_direct_session_closed_midway_sends_the_rest_over_a_new_one(make_smtp_server):
    # The third message's commands went with the second one's content;
    # the relay closing after that content must not lose the third.
    server = make_smtp_server(reply={'DATA': [None, '421 4.3.2 closing']})
    events = []
    delivery = direct(server.settings(), events)
    delivery.deliver([make_mail(1), make_mail(2), make_mail(3)])
    assert [r.message['Message-ID'] for r in server.wait_for(2)] == [
        '<1@test>',
        '<3@test>',
    ]
    assert [type(e) for e in events] == [MailSent, MailFailed, MailSent]
    assert events[1].error.code == 421
    assert server.connections == 2


def test_direct_partial_refusal_reported_on_mail_sent(make_smtp_server, caplog):
    server = make_smtp_server(rcpt_reply={'bad@example.com': '550 5.1.1 unknown'})
    events = []
    delivery = direct(server.settings(), events)
    with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
        delivery.deliver([make_mail(1, ('ok@example.com', 'bad@example.com'))])
    assert server.wait_for(1)[0].rcpt_tos == ['ok@example.com']
    assert list(events[0].refused) == ['bad@example.com']
    assert 'bad@example.com' in caplog.text


def test_direct_send_now_returns_and_notifies(smtp_server):
    events = []
    delivery = direct(smtp_server.settings(), events)
    assert delivery.send_now(make_mail(1)) == {}
    assert smtp_server.wait_for(1)[0].message['Message-ID'] == '<1@test>'
    assert [type(e) for e in events] == [MailSent]


def test_direct_send_now_raises_and_notifies_failure(make_smtp_server):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_smtp_server(reply={'DATA': '554 5.7.1 no'})
    events = []
    delivery = direct(server.settings(), events)
    with pytest.raises(PermanentDeliveryError):
        delivery.send_now(make_mail(1))
    assert [type(e) for e in events] == [MailFailed]


def test_queued_vote_makes_durable_but_invisible_finish_publishes(tmp_path):
    delivery = QueuedDelivery(str(tmp_path / 'q'))
    pending = delivery.vote([make_mail(1), make_mail(2)])
    assert len(os.listdir(tmp_path / 'q' / 'tmp')) == 2
    assert delivery.queue.pending() == []
    pending.finish()
    assert len(delivery.queue.pending()) == 2
    assert os.listdir(tmp_path / 'q' / 'tmp') == []


def test_queued_abort_leaves_nothing(tmp_path):
    delivery = QueuedDelivery(str(tmp_path / 'q'))
    delivery.vote([make_mail(1)]).abort()
    assert os.listdir(tmp_path / 'q' / 'tmp') == []
    assert delivery.queue.pending() == []


def test_queued_failed_vote_leaves_nothing_and_raises(tmp_path):
    from pyramid_txmail.queue import MailQueue, QueueError

    class FullAfterOne(MailQueue):
        # A full disk can't be produced here; fail the second write.
        def stage(self, mail):
            if mail.message_id == '<2@test>':
                raise QueueError('cannot write mail queue: disk full')
            return super().stage(mail)

    delivery = QueuedDelivery(str(tmp_path / 'q'), queue_factory=FullAfterOne)
    with pytest.raises(QueueError, match='disk full'):
        delivery.vote([make_mail(1), make_mail(2)])
    assert os.listdir(tmp_path / 'q' / 'tmp') == []


def test_queued_unusable_queue_path_fails_vote_with_clear_error(tmp_path):
    from pyramid_txmail.queue import QueueError

    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    delivery = QueuedDelivery(str(blocker / 'q'))
    with pytest.raises(QueueError, match=str(blocker)):
        delivery.vote([make_mail(1)])


def test_queued_after_commit_wakes_the_processor(tmp_path):
    delivery = QueuedDelivery(str(tmp_path / 'q'))
    woken = []
    pending = delivery.vote([make_mail(1)])
    pending.finish()
    pending.after_commit()  # no processor: nothing to wake
    delivery.wake = lambda: woken.append(True)
    pending.after_commit()
    assert woken == [True]


def test_queued_provides_the_queue_interface_and_no_send_now(tmp_path):
    from zope.interface.verify import verifyObject

    from pyramid_txmail.interfaces import IImmediateDelivery, IQueueDelivery

    delivery = QueuedDelivery(str(tmp_path / 'q'))
    assert verifyObject(IQueueDelivery, delivery)
    assert not IImmediateDelivery.providedBy(delivery)
    assert not hasattr(delivery, 'send_now')


def test_file_one_eml_per_message_after_finish(tmp_path):
    events = []
    delivery = FileDelivery(str(tmp_path / 'out'), events.extend)
    pending = delivery.vote([make_mail(1), make_mail(2)])
    assert [n for n in os.listdir(tmp_path / 'out') if n.endswith('.eml')] == []
    pending.finish()
    pending.after_commit()
    names = sorted(os.listdir(tmp_path / 'out'))
    assert len(names) == 2 and all(n.endswith('.eml') for n in names)
    assert (tmp_path / 'out' / names[0]).read_bytes() == make_mail(1).data
    assert [e.message_id for e in events] == ['<1@test>', '<2@test>']


def test_file_abort_leaves_nothing(tmp_path):
    delivery = FileDelivery(str(tmp_path / 'out'))
    delivery.vote([make_mail(1)]).abort()
    assert os.listdir(tmp_path / 'out') == []


def test_file_failed_vote_leaves_nothing(tmp_path):
    out = tmp_path / 'out'
    delivery = FileDelivery(str(out))
    bad = make_mail(2)
    object.__setattr__(bad, 'data', None)  # writing it fails half way
    with pytest.raises(TypeError):
        delivery.vote([make_mail(1), bad])
    assert os.listdir(out) == []


def test_file_send_now_writes_at_once(tmp_path):
    events = []
    delivery = FileDelivery(str(tmp_path / 'out'), events.extend)
    assert delivery.send_now(make_mail(1)) == {}
    assert len(os.listdir(tmp_path / 'out')) == 1
    assert [type(e) for e in events] == [MailSent]


# Recipient limits, relays that do not answer in time, the unforeseen.


def test_direct_recipients_over_the_relay_limit_get_another_transaction(
    make_smtp_server,
):
    # Postfix's smtpd_recipient_limit: 452 4.5.3 past the 1,000th.
    server = make_smtp_server(max_recipients=1000)
    mail = mail_to(1500)
    events = []
    direct(server.settings(), events).deliver([mail])
    received = server.wait_for(2)
    assert [len(r.rcpt_tos) for r in received] == [1000, 500]
    assert [a for r in received for a in r.rcpt_tos] == list(mail.envelope.recipients)
    assert [r.data for r in received] == [mail.data, mail.data]
    assert server.connections == 1
    assert [type(e) for e in events] == [MailSent]
    assert events[0].refused == {}


def test_direct_recipient_limit_without_pipelining(make_smtp_server):
    server = make_smtp_server(max_recipients=3, pipelining=False)
    events = []
    direct(server.settings(), events).deliver([make_mail(1), mail_to(7), make_mail(3)])
    received = server.wait_for(5)
    assert [len(r.rcpt_tos) for r in received] == [1, 3, 1, 3, 1]
    assert [type(e) for e in events] == [MailSent] * 3
    assert [e.message_id for e in events] == ['<1@test>', '<1@test>', '<3@test>']
    assert all(e.refused == {} for e in events)


def test_direct_rounds_are_bounded(make_smtp_server):
    from pyramid_txmail.delivery import MAX_ROUNDS

    server = make_smtp_server(max_recipients=1)
    events = []
    direct(server.settings(), events).deliver([mail_to(MAX_ROUNDS + 2)])
    assert len(server.wait_for(MAX_ROUNDS)) == MAX_ROUNDS
    [event] = events
    assert event.refused == {
        f'r{n}@example.com': (452, '4.5.3 Too many recipients')
        for n in (MAX_ROUNDS, MAX_ROUNDS + 1)
    }


def test_direct_a_failed_round_leaves_its_recipients_refused(make_smtp_server, caplog):
    server = make_smtp_server(
        max_recipients=2, reply={'DATA': [None, '451 4.3.0 try later']}
    )
    events = []
    with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
        direct(server.settings(), events).deliver([mail_to(3)])
    assert [r.rcpt_tos for r in server.wait_for(1)] == [
        ['r0@example.com', 'r1@example.com']
    ]
    assert events[0].refused == {'r2@example.com': (452, '4.5.3 Too many recipients')}
    assert 'sending to the rest of its recipients failed' in caplog.text


def test_direct_a_round_cut_short_leaves_the_rest_refused(make_smtp_server, caplog):
    # The relay closes after the first message's content in the second
    # round; the second message's commands went with that content.
    server = make_smtp_server(
        max_recipients=2, reply={'DATA': [None, None, '421 4.3.2 closing']}
    )
    events = []
    with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
        direct(server.settings(), events).deliver([mail_to(3), mail_to(3)])
    assert len(server.wait_for(2)) == 2
    limited = {'r2@example.com': (452, '4.5.3 Too many recipients')}
    assert [(type(e), e.refused) for e in events] == [
        (MailSent, limited),
        (MailSent, limited),
    ]
    assert 'ended first' in caplog.text


def test_direct_send_now_over_the_recipient_limit(make_smtp_server):
    server = make_smtp_server(max_recipients=2)
    events = []
    delivery = direct(server.settings(), events)
    assert delivery.send_now(mail_to(5)) == {}
    assert [len(r.rcpt_tos) for r in server.wait_for(3)] == [2, 2, 1]
    assert [type(e) for e in events] == [MailSent]


def test_direct_refusal_warning_stays_one_short_line(make_smtp_server, caplog):
    # 35 KB in one WARNING line was seen with 500 refused recipients.
    bad = {f'bad{n}@example.com': '550 5.1.1 unknown' for n in range(700)}
    server = make_smtp_server(rcpt_reply=bad)
    mail = mail_to(0)
    recipients = (*bad, *(f'ok{n}@example.com' for n in range(800)))
    object.__setattr__(mail, 'envelope', Envelope('from@example.com', recipients))
    events = []
    with caplog.at_level('DEBUG', 'pyramid_txmail'):
        direct(server.settings(), events).deliver([mail])
    assert len(events[0].refused) == 700
    [warning] = [r for r in caplog.records if r.levelname == 'WARNING']
    assert 'refused for 700 of 1500 recipient(s): bad0@example.com' in (
        warning.getMessage()
    )
    assert warning.getMessage().endswith(' and 695 more')
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


def test_direct_relay_not_answering_in_time_fails_every_message_once():
    from tests.smtpserver import TricklingRelay

    events = []
    with TricklingRelay(('DATA',)) as relay:
        settings = MailSettings(host=relay.host, port=relay.port, timeout=1.0)
        pending = direct(settings, events).vote(
            [make_mail(1), make_mail(2), make_mail(3)]
        )
        pending.finish()
        pending.after_commit()  # returns: the commit is not held
        assert relay.connections == 1
    assert [type(e) for e in events] == [MailFailed] * 3
    assert [e.message_id for e in events] == ['<1@test>', '<2@test>', '<3@test>']
    assert 'did not answer DATA within 1.0s' in str(events[0].error)
    assert 'not tried' in str(events[2].error)
    assert all(e.permanent for e in events)


def test_direct_unexpected_error_from_the_smtp_layer_fails_every_message(caplog):
    # A host name the socket module cannot encode raises UnicodeError,
    # not OSError.
    events = []
    delivery = direct(MailSettings(host='a' * 64 + '.example'), events)
    with caplog.at_level('ERROR', 'pyramid_txmail.delivery'):
        delivery.deliver([make_mail(1), make_mail(2)])
    assert [type(e) for e in events] == [MailFailed, MailFailed]
    assert all(isinstance(e.error, UnicodeError) for e in events)
    assert all(e.permanent for e in events)
    assert 'direct delivery failed' in caplog.text
    events.clear()
    with pytest.raises(UnicodeError):
        delivery.send_now(make_mail(3))
    assert [(type(e), e.message_id) for e in events] == [(MailFailed, '<3@test>')]


def test_direct_unexpected_error_after_some_messages_fails_only_the_rest(
    make_smtp_server,
):
    # Without pipelining the first message is answered before the second is
    # read; data that is not bytes (a bug upstream) breaks in the SMTP layer.
    server = make_smtp_server(pipelining=False)
    bad = make_mail(2)
    object.__setattr__(bad, 'data', None)
    events = []
    direct(server.settings(), events).deliver([make_mail(1), bad, make_mail(3)])
    assert [r.message['Message-ID'] for r in server.wait_for(1)] == ['<1@test>']
    assert [(type(e), e.message_id) for e in events] == [
        (MailSent, '<1@test>'),
        (MailFailed, '<2@test>'),
        (MailFailed, '<3@test>'),
    ]
    assert isinstance(events[1].error, AttributeError)


# -- a password smtplib could not send (issue 9, case 5)

PASSWORD = 'pässwörd-ñ'
UNSENDABLE = 'pass\udcffword'  # a lone surrogate: from a bad environment


def test_direct_non_ascii_password_sends(make_smtp_server):
    server = make_smtp_server(tls='starttls', auth={'user': PASSWORD})
    events = []
    settings = server.settings(username='user', password=PASSWORD)
    direct(settings, events).deliver([make_mail(1)])
    assert server.wait_for(1)[0].login == 'user'
    assert [type(e) for e in events] == [MailSent]


def test_direct_unsendable_password_fails_every_message(make_smtp_server):
    from pyramid_txmail.exceptions import ConfigurationFault

    server = make_smtp_server(tls='starttls', auth={'user': PASSWORD})
    events = []
    settings = server.settings(username='user', password=UNSENDABLE)
    direct(settings, events).deliver([make_mail(1), make_mail(2)])
    assert [type(e) for e in events] == [MailFailed, MailFailed]
    assert all(isinstance(e.error, ConfigurationFault) for e in events)
    assert 'mail.password cannot be encoded' in str(events[0].error)
    assert UNSENDABLE not in repr(events[0].error.args)


def test_queued_non_ascii_password_sends(make_smtp_server, tmp_path):
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    server = make_smtp_server(tls='starttls', auth={'user': PASSWORD})
    queue = MailQueue(str(tmp_path / 'q'))
    queue.publish([queue.stage(make_mail(1))])
    processor = QueueProcessor(
        queue, server.settings(username='user', password=PASSWORD)
    )
    assert processor.run_once().sent == 1
    assert server.wait_for(1)[0].login == 'user'


def test_queued_unsendable_password_pauses_the_processor(make_smtp_server, tmp_path):
    from pyramid_txmail.exceptions import ConfigurationFault
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    server = make_smtp_server(tls='starttls', auth={'user': PASSWORD})
    queue = MailQueue(str(tmp_path / 'q'))
    queue.publish([queue.stage(make_mail(n)) for n in (1, 2)])
    events = []
    processor = QueueProcessor(
        queue,
        server.settings(username='user', password=UNSENDABLE),
        notify=events.extend,
    )
    result = processor.run_once()
    assert (result.sent, result.released) == (0, 1)
    assert [(type(e), e.permanent) for e in events] == [(MailFailed, False)]
    assert isinstance(events[0].error, ConfigurationFault)
    assert processor.run_once().released == 0  # paused
    assert queue.counts()['queued'] == 2
    assert server.connections == 0


def test_queued_abort_after_finish_keeps_the_committed_mail(tm, tmp_path, smtp_server):
    # tpc_finish published one message and could not rename the other
    # (ENOSPC: it stays in tmp/, marked committed). Then a later resource's
    # tpc_finish failed and the transaction called tpc_abort: it removed the
    # marked message while its sibling was sent.
    import errno

    from pyramid_txmail.mailer import Mailer
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue
    from tests import message

    path = str(tmp_path / 'q')
    full = [True]

    class NoRoomForOne(MailQueue):
        def _rename(self, src, dst):
            if full[0] and dst.endswith('/new/' + os.path.basename(src)):
                full[0] = False
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.rename(src, dst)

    delivery = QueuedDelivery(path, queue_factory=NoRoomForOne)
    settings = smtp_server.settings(queue_path=path, delivery='queued')
    mailer = Mailer(settings, delivery).bind(tm)
    with pytest.raises(RuntimeError, match='second phase'), tm:
        mailer.send(message(subject='one'))
        mailer.send(message(subject='two'))
        tm.get().join(SecondPhaseFailingDataManager(tm))
    QueueProcessor(delivery.queue, settings).run_once()
    received = smtp_server.wait_for(2)
    assert sorted(r.message['Subject'] for r in received) == ['one', 'two']
