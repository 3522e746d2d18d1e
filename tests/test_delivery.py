from __future__ import annotations

import os

import pytest

from pyramid_txmail.events import MailFailed, MailSent
from pyramid_txmail.settings import MailSettings
from tests import free_port, make_mail


def settings_for(server, **kw) -> MailSettings:
    return MailSettings(host=server.host, port=server.port, timeout=5, **kw)


class TestDirectDelivery:
    def _makeOne(self, settings, events, **kw):
        from pyramid_txmail.delivery import DirectDelivery

        return DirectDelivery(settings, events.extend, **kw)

    def test_transaction_mail_over_one_connection_after_commit(self, smtp_server):
        events = []
        delivery = self._makeOne(settings_for(smtp_server), events)
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

    def test_abort_sends_nothing(self, smtp_server):
        events = []
        pending = self._makeOne(settings_for(smtp_server), events).vote([make_mail(1)])
        pending.abort()
        assert smtp_server.messages == [] and events == []

    def test_unreachable_relay_fails_every_message_with_one_attempt(self):
        events = []
        attempts = []
        settings = MailSettings(host='127.0.0.1', port=free_port(), timeout=2)

        def connect():
            from pyramid_txmail.smtp import SMTPConnection

            attempts.append(1)
            return SMTPConnection(settings)

        delivery = self._makeOne(settings, events, connect=connect)
        delivery.deliver([make_mail(1), make_mail(2)])
        assert len(attempts) == 1
        assert [type(e) for e in events] == [MailFailed, MailFailed]
        assert all(e.permanent for e in events)

    def test_refused_message_does_not_stop_the_others(self, make_smtp_server):
        server = make_smtp_server(rcpt_reply={'bad@example.com': '550 5.1.1 unknown'})
        events = []
        delivery = self._makeOne(settings_for(server), events)
        delivery.deliver(
            [make_mail(1), make_mail(2, ('bad@example.com',)), make_mail(3)]
        )
        assert [r.message['Message-ID'] for r in server.wait_for(2)] == [
            '<1@test>',
            '<3@test>',
        ]
        assert [type(e) for e in events] == [MailSent, MailFailed, MailSent]
        assert events[1].error.code == 550

    def test_closed_connection_reopened_for_the_next_message(self, make_smtp_server):
        server = make_smtp_server(reply={'MAIL': ['421 4.3.2 closing']})
        events = []
        delivery = self._makeOne(settings_for(server), events)
        delivery.deliver([make_mail(1), make_mail(2)])
        assert [r.message['Message-ID'] for r in server.wait_for(1)] == ['<2@test>']
        assert [type(e) for e in events] == [MailFailed, MailSent]
        assert server.connections == 2

    def test_events_name_their_own_message(self, make_smtp_server):
        # The second message cannot go at all (SMTPUTF8 is not offered); it
        # is refused before the first message's content is written.
        server = make_smtp_server(smtputf8=False)
        events = []
        delivery = self._makeOne(settings_for(server), events)
        delivery.deliver(
            [make_mail(1), make_mail(2, ('jörg@example.com',)), make_mail(3)]
        )
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

    def test_session_closed_midway_sends_the_rest_over_a_new_one(
        self, make_smtp_server
    ):
        # The third message's commands went with the second one's content;
        # the relay closing after that content must not lose the third.
        server = make_smtp_server(reply={'DATA': [None, '421 4.3.2 closing']})
        events = []
        delivery = self._makeOne(settings_for(server), events)
        delivery.deliver([make_mail(1), make_mail(2), make_mail(3)])
        assert [r.message['Message-ID'] for r in server.wait_for(2)] == [
            '<1@test>',
            '<3@test>',
        ]
        assert [type(e) for e in events] == [MailSent, MailFailed, MailSent]
        assert events[1].error.code == 421
        assert server.connections == 2

    def test_partial_refusal_reported_on_mail_sent(self, make_smtp_server, caplog):
        server = make_smtp_server(rcpt_reply={'bad@example.com': '550 5.1.1 unknown'})
        events = []
        delivery = self._makeOne(settings_for(server), events)
        with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
            delivery.deliver([make_mail(1, ('ok@example.com', 'bad@example.com'))])
        assert server.wait_for(1)[0].rcpt_tos == ['ok@example.com']
        assert list(events[0].refused) == ['bad@example.com']
        assert 'bad@example.com' in caplog.text

    def test_send_now_returns_and_notifies(self, smtp_server):
        events = []
        delivery = self._makeOne(settings_for(smtp_server), events)
        assert delivery.send_now(make_mail(1)) == {}
        assert smtp_server.wait_for(1)[0].message['Message-ID'] == '<1@test>'
        assert [type(e) for e in events] == [MailSent]

    def test_send_now_raises_and_notifies_failure(self, make_smtp_server):
        from pyramid_txmail.smtp import PermanentDeliveryError

        server = make_smtp_server(reply={'DATA': '554 5.7.1 no'})
        events = []
        delivery = self._makeOne(settings_for(server), events)
        with pytest.raises(PermanentDeliveryError):
            delivery.send_now(make_mail(1))
        assert [type(e) for e in events] == [MailFailed]


class TestQueuedDelivery:
    def _makeOne(self, path, **kw):
        from pyramid_txmail.delivery import QueuedDelivery

        return QueuedDelivery(str(path), **kw)

    def test_vote_makes_durable_but_invisible_finish_publishes(self, tmp_path):
        delivery = self._makeOne(tmp_path / 'q')
        pending = delivery.vote([make_mail(1), make_mail(2)])
        assert len(os.listdir(tmp_path / 'q' / 'tmp')) == 2
        assert delivery.queue.pending() == []
        pending.finish()
        assert len(delivery.queue.pending()) == 2
        assert os.listdir(tmp_path / 'q' / 'tmp') == []

    def test_abort_leaves_nothing(self, tmp_path):
        delivery = self._makeOne(tmp_path / 'q')
        delivery.vote([make_mail(1)]).abort()
        assert os.listdir(tmp_path / 'q' / 'tmp') == []
        assert delivery.queue.pending() == []

    def test_failed_vote_leaves_nothing_and_raises(self, tmp_path):
        from pyramid_txmail.queue import MailQueue, QueueError

        class FullAfterOne(MailQueue):
            # A full disk can't be produced here; fail the second write.
            def stage(self, mail):
                if mail.message_id == '<2@test>':
                    raise QueueError('cannot write mail queue: disk full')
                return super().stage(mail)

        delivery = self._makeOne(tmp_path / 'q', queue_factory=FullAfterOne)
        with pytest.raises(QueueError, match='disk full'):
            delivery.vote([make_mail(1), make_mail(2)])
        assert os.listdir(tmp_path / 'q' / 'tmp') == []

    def test_unusable_queue_path_fails_vote_with_clear_error(self, tmp_path):
        from pyramid_txmail.queue import QueueError

        blocker = tmp_path / 'file'
        blocker.write_text('not a directory')
        delivery = self._makeOne(blocker / 'q')
        with pytest.raises(QueueError, match=str(blocker)):
            delivery.vote([make_mail(1)])

    def test_after_commit_wakes_the_processor(self, tmp_path):
        delivery = self._makeOne(tmp_path / 'q')
        woken = []
        pending = delivery.vote([make_mail(1)])
        pending.finish()
        pending.after_commit()  # no processor: nothing to wake
        delivery.wake = lambda: woken.append(True)
        pending.after_commit()
        assert woken == [True]

    def test_provides_the_queue_interface_and_no_send_now(self, tmp_path):
        from zope.interface.verify import verifyObject

        from pyramid_txmail.interfaces import IImmediateDelivery, IQueueDelivery

        delivery = self._makeOne(tmp_path / 'q')
        assert verifyObject(IQueueDelivery, delivery)
        assert not IImmediateDelivery.providedBy(delivery)
        assert not hasattr(delivery, 'send_now')


class TestFileDelivery:
    def _makeOne(self, path, events):
        from pyramid_txmail.delivery import FileDelivery

        return FileDelivery(str(path), events.extend)

    def test_one_eml_per_message_after_finish(self, tmp_path):
        events = []
        delivery = self._makeOne(tmp_path / 'out', events)
        pending = delivery.vote([make_mail(1), make_mail(2)])
        assert [n for n in os.listdir(tmp_path / 'out') if n.endswith('.eml')] == []
        pending.finish()
        pending.after_commit()
        names = sorted(os.listdir(tmp_path / 'out'))
        assert len(names) == 2 and all(n.endswith('.eml') for n in names)
        assert (tmp_path / 'out' / names[0]).read_bytes() == make_mail(1).data
        assert [e.message_id for e in events] == ['<1@test>', '<2@test>']

    def test_abort_leaves_nothing(self, tmp_path):
        delivery = self._makeOne(tmp_path / 'out', [])
        delivery.vote([make_mail(1)]).abort()
        assert os.listdir(tmp_path / 'out') == []

    def test_failed_vote_leaves_nothing(self, tmp_path):
        out = tmp_path / 'out'
        delivery = self._makeOne(out, [])
        bad = make_mail(2)
        object.__setattr__(bad, 'data', None)  # writing it fails half way
        with pytest.raises(TypeError):
            delivery.vote([make_mail(1), bad])
        assert os.listdir(out) == []

    def test_send_now_writes_at_once(self, tmp_path):
        events = []
        assert self._makeOne(tmp_path / 'out', events).send_now(make_mail(1)) == {}
        assert len(os.listdir(tmp_path / 'out')) == 1
        assert [type(e) for e in events] == [MailSent]


class TestDirectDeliveryLimits:
    """Recipient limits, relays that do not answer in time, the unforeseen."""

    def _makeOne(self, settings, events, **kw):
        from pyramid_txmail.delivery import DirectDelivery

        return DirectDelivery(settings, events.extend, **kw)

    @staticmethod
    def _mail(count):
        """Mail to ``count`` recipients, its To header short."""
        from pyramid_txmail.message import Envelope, PreparedMail

        mail = make_mail(1)
        recipients = tuple(f'r{n}@example.com' for n in range(count))
        return PreparedMail(
            mail.message_id, Envelope('from@example.com', recipients), mail.data
        )

    def test_recipients_over_the_relay_limit_get_another_transaction(
        self, make_smtp_server
    ):
        # Postfix's smtpd_recipient_limit: 452 4.5.3 past the 1,000th.
        server = make_smtp_server(max_recipients=1000)
        mail = self._mail(1500)
        events = []
        self._makeOne(settings_for(server), events).deliver([mail])
        received = server.wait_for(2)
        assert [len(r.rcpt_tos) for r in received] == [1000, 500]
        assert [a for r in received for a in r.rcpt_tos] == list(
            mail.envelope.recipients
        )
        assert [r.data for r in received] == [mail.data, mail.data]
        assert server.connections == 1
        assert [type(e) for e in events] == [MailSent]
        assert events[0].refused == {}

    def test_recipient_limit_without_pipelining(self, make_smtp_server):
        server = make_smtp_server(max_recipients=3, pipelining=False)
        events = []
        self._makeOne(settings_for(server), events).deliver(
            [make_mail(1), self._mail(7), make_mail(3)]
        )
        received = server.wait_for(5)
        assert [len(r.rcpt_tos) for r in received] == [1, 3, 1, 3, 1]
        assert [type(e) for e in events] == [MailSent] * 3
        assert [e.message_id for e in events] == ['<1@test>', '<1@test>', '<3@test>']
        assert all(e.refused == {} for e in events)

    def test_rounds_are_bounded(self, make_smtp_server):
        from pyramid_txmail.delivery import MAX_ROUNDS

        server = make_smtp_server(max_recipients=1)
        events = []
        self._makeOne(settings_for(server), events).deliver(
            [self._mail(MAX_ROUNDS + 2)]
        )
        assert len(server.wait_for(MAX_ROUNDS)) == MAX_ROUNDS
        [event] = events
        assert event.refused == {
            f'r{n}@example.com': (452, '4.5.3 Too many recipients')
            for n in (MAX_ROUNDS, MAX_ROUNDS + 1)
        }

    def test_a_failed_round_leaves_its_recipients_refused(
        self, make_smtp_server, caplog
    ):
        server = make_smtp_server(
            max_recipients=2, reply={'DATA': [None, '451 4.3.0 try later']}
        )
        events = []
        with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
            self._makeOne(settings_for(server), events).deliver([self._mail(3)])
        assert [r.rcpt_tos for r in server.wait_for(1)] == [
            ['r0@example.com', 'r1@example.com']
        ]
        assert events[0].refused == {
            'r2@example.com': (452, '4.5.3 Too many recipients')
        }
        assert 'sending to the rest of its recipients failed' in caplog.text

    def test_a_round_cut_short_leaves_the_rest_refused(self, make_smtp_server, caplog):
        # The relay closes after the first message's content in the second
        # round; the second message's commands went with that content.
        server = make_smtp_server(
            max_recipients=2, reply={'DATA': [None, None, '421 4.3.2 closing']}
        )
        events = []
        with caplog.at_level('WARNING', 'pyramid_txmail.delivery'):
            self._makeOne(settings_for(server), events).deliver(
                [self._mail(3), self._mail(3)]
            )
        assert len(server.wait_for(2)) == 2
        limited = {'r2@example.com': (452, '4.5.3 Too many recipients')}
        assert [(type(e), e.refused) for e in events] == [
            (MailSent, limited),
            (MailSent, limited),
        ]
        assert 'ended first' in caplog.text

    def test_send_now_over_the_recipient_limit(self, make_smtp_server):
        server = make_smtp_server(max_recipients=2)
        events = []
        delivery = self._makeOne(settings_for(server), events)
        assert delivery.send_now(self._mail(5)) == {}
        assert [len(r.rcpt_tos) for r in server.wait_for(3)] == [2, 2, 1]
        assert [type(e) for e in events] == [MailSent]

    def test_refusal_warning_stays_one_short_line(self, make_smtp_server, caplog):
        # 35 KB in one WARNING line was seen with 500 refused recipients.
        from pyramid_txmail.message import Envelope

        bad = {f'bad{n}@example.com': '550 5.1.1 unknown' for n in range(700)}
        server = make_smtp_server(rcpt_reply=bad)
        mail = self._mail(0)
        recipients = (*bad, *(f'ok{n}@example.com' for n in range(800)))
        object.__setattr__(mail, 'envelope', Envelope('from@example.com', recipients))
        events = []
        with caplog.at_level('DEBUG', 'pyramid_txmail'):
            self._makeOne(settings_for(server), events).deliver([mail])
        assert len(events[0].refused) == 700
        [warning] = [r for r in caplog.records if r.levelname == 'WARNING']
        assert 'refused for 700 of 1500 recipient(s): bad0@example.com' in (
            warning.getMessage()
        )
        assert warning.getMessage().endswith(' and 695 more')
        assert max(len(r.getMessage()) for r in caplog.records) < 1000

    def test_relay_not_answering_in_time_fails_every_message_once(self):
        from tests.smtpserver import TricklingRelay

        events = []
        with TricklingRelay(('DATA',)) as relay:
            settings = MailSettings(host=relay.host, port=relay.port, timeout=1.0)
            pending = self._makeOne(settings, events).vote(
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

    def test_unexpected_error_from_the_smtp_layer_fails_every_message(self, caplog):
        # A host name the socket module cannot encode raises UnicodeError,
        # not OSError.
        events = []
        delivery = self._makeOne(MailSettings(host='a' * 64 + '.example'), events)
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


def test_unexpected_error_after_some_messages_fails_only_the_rest(make_smtp_server):
    # Without pipelining the first message is answered before the second is
    # read; data that is not bytes (a bug upstream) breaks in the SMTP layer.
    from pyramid_txmail.delivery import DirectDelivery

    server = make_smtp_server(pipelining=False)
    bad = make_mail(2)
    object.__setattr__(bad, 'data', None)
    events = []
    DirectDelivery(settings_for(server), events.extend).deliver(
        [make_mail(1), bad, make_mail(3)]
    )
    assert [r.message['Message-ID'] for r in server.wait_for(1)] == ['<1@test>']
    assert [(type(e), e.message_id) for e in events] == [
        (MailSent, '<1@test>'),
        (MailFailed, '<2@test>'),
        (MailFailed, '<3@test>'),
    ]
    assert isinstance(events[1].error, AttributeError)


class TestCredentials:
    """A password smtplib could not send (issue 9, case 5)."""

    PASSWORD = 'pässwörd-ñ'
    UNSENDABLE = 'pass\udcffword'  # a lone surrogate: from a bad environment

    def _settings(self, server, password):
        return server.settings(username='user', password=password)

    def test_direct_non_ascii_password_sends(self, make_smtp_server):
        from pyramid_txmail.delivery import DirectDelivery

        server = make_smtp_server(tls='starttls', auth={'user': self.PASSWORD})
        events = []
        DirectDelivery(self._settings(server, self.PASSWORD), events.extend).deliver(
            [make_mail(1)]
        )
        assert server.wait_for(1)[0].login == 'user'
        assert [type(e) for e in events] == [MailSent]

    def test_direct_unsendable_password_fails_every_message(self, make_smtp_server):
        from pyramid_txmail.delivery import DirectDelivery
        from pyramid_txmail.exceptions import ConfigurationFault

        server = make_smtp_server(tls='starttls', auth={'user': self.PASSWORD})
        events = []
        DirectDelivery(self._settings(server, self.UNSENDABLE), events.extend).deliver(
            [make_mail(1), make_mail(2)]
        )
        assert [type(e) for e in events] == [MailFailed, MailFailed]
        assert all(isinstance(e.error, ConfigurationFault) for e in events)
        assert 'mail.password cannot be encoded' in str(events[0].error)
        assert self.UNSENDABLE not in repr(events[0].error.args)

    def test_queued_non_ascii_password_sends(self, make_smtp_server, tmp_path):
        from pyramid_txmail.processor import QueueProcessor
        from pyramid_txmail.queue import MailQueue

        server = make_smtp_server(tls='starttls', auth={'user': self.PASSWORD})
        queue = MailQueue(str(tmp_path / 'q'))
        queue.publish([queue.stage(make_mail(1))])
        processor = QueueProcessor(queue, self._settings(server, self.PASSWORD))
        assert processor.run_once().sent == 1
        assert server.wait_for(1)[0].login == 'user'

    def test_queued_unsendable_password_pauses_the_processor(
        self, make_smtp_server, tmp_path
    ):
        from pyramid_txmail.exceptions import ConfigurationFault
        from pyramid_txmail.processor import QueueProcessor
        from pyramid_txmail.queue import MailQueue

        server = make_smtp_server(tls='starttls', auth={'user': self.PASSWORD})
        queue = MailQueue(str(tmp_path / 'q'))
        queue.publish([queue.stage(make_mail(n)) for n in (1, 2)])
        events = []
        processor = QueueProcessor(
            queue, self._settings(server, self.UNSENDABLE), notify=events.extend
        )
        result = processor.run_once()
        assert (result.sent, result.released) == (0, 1)
        assert [(type(e), e.permanent) for e in events] == [(MailFailed, False)]
        assert isinstance(events[0].error, ConfigurationFault)
        assert processor.run_once().released == 0  # paused
        assert queue.counts()['queued'] == 2
        assert server.connections == 0
