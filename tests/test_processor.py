from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tests import EMPTY_COUNTS as EMPTY
from tests import FakeClock, free_port, in_forked_child, make_mail
from tests.crashkit import fill, run_together, settings_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ids(server) -> list[str]:
    return [m.message['Message-ID'] for m in server.messages]


def _meta(queue, sub, mail_id):
    with open(os.path.join(queue.path, sub, mail_id), 'rb') as f:
        return json.loads(f.readline())


def _edit(queue, mail_id, sub='new', **changes):
    """Change metadata fields of a queue file in place (a past history)."""
    path = os.path.join(queue.path, sub, mail_id)
    with open(path, 'rb') as f:
        meta, data = json.loads(f.readline()), f.read()
    meta.update(changes)
    with open(path, 'wb') as f:
        f.write(json.dumps(meta).encode() + b'\n' + data)


#: Deferrals after which the default backoff (300 s doubling to 4000 s)
#: spans the default max_age of 5 days.
OLD_ENOUGH = 111


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def queue(tmp_path, clock):
    from pyramid_txmail.queue import MailQueue

    return MailQueue(str(tmp_path / 'q'), clock=clock)


@pytest.fixture
def events():
    """What the processors of a test notified, in order."""
    return []


@pytest.fixture
def make_processor(clock, events):
    """``make_processor(queue, server=None, port=None, processor_kw=None,
    **settings)``: a processor on ``queue`` with the test's fake clock,
    recording its events in ``events``."""
    from pyramid_txmail.processor import QueueProcessor

    def make(queue, server=None, port=None, processor_kw=None, **settings):
        settings.setdefault('queue_interval', 3.0)
        if server is not None:
            port = server.port
        kw = {
            'notify': events.extend,
            'clock': clock,
            'monotonic': clock,
            'wait': clock.wait,
            'random': lambda: 0.5,
        }
        kw.update(processor_kw or {})
        return QueueProcessor(queue, settings_for(port, **settings), **kw)

    return make


@pytest.fixture
def threads():
    """Processor threads a test started: stopped when it ends."""
    started = []
    yield started
    for thread in started:
        thread.stop(10)


@pytest.fixture
def make_thread(threads, events):
    """``make_thread(queue, server, **settings)``: a ProcessorThread, not
    started, stopped when the test ends."""
    from pyramid_txmail.processor import ProcessorThread

    def make(queue, server, **settings):
        settings.setdefault('queue_interval', 60.0)
        thread = ProcessorThread(
            queue, settings_for(server.port, **settings), notify=events.extend
        )
        threads.append(thread)
        return thread

    return make


def ended(thread, timeout=10.0):
    """Whether ``thread`` (a ProcessorThread) ends within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while thread.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    return not thread.alive


def event_kinds(events):
    """(event class name, permanent) of each event."""
    from pyramid_txmail.events import MailFailed

    return [
        (type(e).__name__, e.permanent if isinstance(e, MailFailed) else None)
        for e in events
    ]


# -- QueueProcessor


def test_a_tmp_that_cannot_be_read_does_not_stop_committed_mail_going_out(
    queue, tmp_path, make_smtp_server, make_processor, caplog
):
    # tmp/ removed by hand (an operator taking it for scratch space): new
    # commits fail, as they must, but what was committed before is sent;
    # each pass says why tmp/ was not settled.
    from pyramid_txmail.processor import PassResult

    server = make_smtp_server()
    fill(queue, 2)
    os.rmdir(tmp_path / 'q' / 'tmp')
    processor = make_processor(queue, server)
    with caplog.at_level(logging.ERROR, logger='pyramid_txmail'):
        assert processor.run_once() == PassResult(sent=2)
    assert sorted(_ids(server)) == ['<0@test>', '<1@test>']
    assert 'tmp: missing' in caplog.text


def test_drain_sends_every_message_once(
    queue, events, make_smtp_server, make_processor
):
    from pyramid_txmail.processor import PassResult

    server = make_smtp_server()
    fill(queue, 12, recipients=('a@example.com', 'b@example.com'))
    processor = make_processor(queue, server)
    assert processor.run_once() == PassResult(sent=12)
    assert processor.run_once() == PassResult()
    assert sorted(_ids(server)) == sorted(f'<{n}@test>' for n in range(12))
    first = server.messages[0]
    assert first.mail_from == 'from@example.com'
    assert first.rcpt_tos == ['a@example.com', 'b@example.com']
    assert first.data == make_mail(0, ('a@example.com', 'b@example.com')).data
    assert queue.counts() == EMPTY
    assert [e.message_id for e in events] == [f'<{n}@test>' for n in range(12)]
    assert event_kinds(events) == [('MailSent', None)] * 12
    assert events[0].refused == {}
    assert events[0].message['Subject'] == 'test 0'
    assert repr(processor) == f'<QueueProcessor {queue.path}>'


def test_batches_share_a_connection(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 25)
    make_processor(queue, server, queue_batch=10).run_once()
    assert len(server.messages) == 25
    assert server.connections == math.ceil(25 / 10)
    per_connection = Counter(m.connection for m in server.messages)
    assert sorted(per_connection.values()) == [5, 10, 10]


def test_rate_limit_spaces_the_messages_across_passes(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server()
    fill(queue, 5)
    processor = make_processor(queue, server, queue_rate=4.0)
    assert processor.run_once().sent == 5
    assert clock.waits == [0.25] * 4  # the first goes at once
    assert len(server.messages) == 5
    # The next pass keeps the pace.
    fill(queue, 1, start=5)
    processor.run_once()
    assert clock.waits == [0.25] * 5


def test_rate_limit_w_real_wait(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 3)
    processor = make_processor(
        queue,
        server,
        queue_rate=50.0,
        processor_kw={'wait': None, 'monotonic': time.monotonic},
    )
    assert processor.run_once().sent == 3


def test_stop_during_rate_limit_wait(queue, clock, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 3)
    clock.stop_after = 1
    processor = make_processor(queue, server, queue_rate=1.0)
    assert processor.run_once().sent == 1
    assert queue.counts()['queued'] == 2
    assert queue.counts()['sending'] == 0


def test_stopped_processor_sends_nothing(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 2)
    processor = make_processor(queue, server)
    processor.stop()
    assert processor.run_once().sent == 0
    assert server.connections == 0
    assert queue.counts()['queued'] == 2


def test_temporary_failure_defers_with_backoff_and_jitter(
    queue, clock, events, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': '451 4.3.0 try later'})
    [mail_id] = fill(queue, 1)
    jitters = [random.Random(k).random() for k in range(4)]
    processor = make_processor(
        queue,
        server,
        retry_min=300.0,
        retry_max=1000.0,
        processor_kw={'random': iter(jitters).__next__},
    )
    dues = []
    for attempt, base in enumerate((300, 600, 1000, 1000), start=1):
        jitter = jitters[attempt - 1]
        start = clock.now
        assert processor.run_once().deferred == 1
        meta = _meta(queue, 'deferred', mail_id)
        assert meta['attempts'] == attempt
        assert meta['last_error'].startswith(
            f'127.0.0.1:{server.port} answered MAIL FROM with 451 4.3.0'
        )
        due = os.stat(os.path.join(queue.path, 'deferred', mail_id)).st_mtime
        assert due == pytest.approx(start + base * (0.8 + 0.4 * jitter))
        assert start + base * 0.8 <= due <= start + base * 1.2
        dues.append(due - start)
        assert processor.run_once().deferred == 0  # not due yet
        clock.now = due
    assert len(set(dues)) == 4
    assert event_kinds(events) == [('MailFailed', False)] * 4
    assert server.messages == []


def test_backoff_after_very_many_attempts(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': '451 4.3.0 try later'})
    [mail_id] = fill(queue, 1)
    _edit(queue, mail_id, attempts=5000)
    make_processor(queue, server, retry_min=300.0, retry_max=4000.0).run_once()
    due = os.stat(os.path.join(queue.path, 'deferred', mail_id)).st_mtime
    assert due == clock.now + 4000


def test_deferred_message_is_sent_when_due(
    queue, clock, events, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': ['451 4.3.0 try later']})
    fill(queue, 1)
    processor = make_processor(queue, server, retry_min=300.0)
    processor.run_once()
    clock.now += 300
    assert processor.run_once().sent == 1
    assert _ids(server) == ['<0@test>']
    assert queue.counts() == EMPTY
    assert event_kinds(events) == [('MailFailed', False), ('MailSent', None)]


def test_permanent_failure_moves_to_failed(
    queue, events, make_smtp_server, make_processor
):
    server = make_smtp_server(rcpt_reply={'gone@example.com': '550 5.1.1 no such user'})
    bad = queue.stage(make_mail(1, ('gone@example.com',)))
    queue.publish([bad])
    fill(queue, 1, start=2)
    processor = make_processor(queue, server)
    result = processor.run_once()
    assert (result.sent, result.failed) == (1, 1)
    [info] = queue.list(failed=True)
    assert info.id == bad
    assert '550 5.1.1 no such user' in info.last_error
    assert info.attempts == 1
    assert _ids(server) == ['<2@test>']
    assert event_kinds(events) == [('MailFailed', True), ('MailSent', None)]
    assert events[0].error.code == 550


def test_bad_password_keeps_messages_and_pauses(
    queue, clock, events, make_smtp_server, make_processor, caplog
):
    server = make_smtp_server(auth={'user': 'secret'}, auth_require_tls=False)
    fill(queue, 3)
    processor = make_processor(
        queue, server, username='user', password='wrong', retry_min=300.0
    )
    with caplog.at_level(logging.ERROR, 'pyramid_txmail.processor'):
        result = processor.run_once()
    assert result.released == 1
    assert queue.counts() == {**EMPTY, 'queued': 3}
    for info in queue.list():
        assert (info.attempts, info.last_error) == (0, None)
    [record] = caplog.records
    assert record.levelname == 'ERROR'
    assert '535' in record.getMessage()
    assert 'Check the mail.* settings' in record.getMessage()
    assert 'wrong' not in caplog.text
    assert event_kinds(events) == [('MailFailed', False)]
    # Paused: no connection until retry_min has passed.
    assert processor.run_once().released == 0
    assert server.connections == 1
    clock.now += 300
    assert processor.run_once().released == 1
    assert server.connections == 2
    assert server.messages == []


def test_refused_connection_defers_one_message(queue, make_processor):
    first, *others = fill(queue, 4)
    result = make_processor(queue, port=free_port()).run_once()
    assert (result.sent, result.deferred) == (0, 1)
    meta = _meta(queue, 'deferred', first)
    assert meta['attempts'] == 1
    assert 'cannot reach 127.0.0.1' in meta['last_error']
    assert queue.pending() == others
    for mail_id in others:
        assert _meta(queue, 'new', mail_id)['attempts'] == 0


def test_dropped_connection_stops_the_pass(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server(drop_at='DATA')
    first, *others = fill(queue, 3)
    processor = make_processor(queue, server, retry_min=10.0)
    assert processor.run_once().deferred == 1
    assert queue.pending() == others
    assert 'closed the connection' in _meta(queue, 'deferred', first)['last_error']
    server.drop_at = None
    assert processor.run_once().sent == 2
    clock.now += 20
    assert processor.run_once().sent == 1
    assert sorted(_ids(server)) == ['<0@test>', '<1@test>', '<2@test>']


def test_421_stops_the_pass(queue, make_smtp_server, make_processor):
    server = make_smtp_server(rcpt_reply={'x@example.com': ['421 4.3.2 bye']})
    bad = queue.stage(make_mail(1, ('x@example.com',)))
    queue.publish([bad])
    others = fill(queue, 2, start=2)
    result = make_processor(queue, server).run_once()
    assert (result.deferred, result.sent) == (1, 0)
    assert queue.pending() == others


def test_configuration_fault_mid_batch_keeps_the_rest_queued(
    queue, make_smtp_server, make_processor
):
    # 530 to the second MAIL, with the third message's commands read
    # ahead: the second is released, the third cut off and released.
    server = make_smtp_server(reply={'MAIL': [None, '530 5.7.0 auth needed']})
    _, *others = fill(queue, 3)
    result = make_processor(queue, server).run_once()
    assert (result.sent, result.released) == (1, 1)
    assert _ids(server) == ['<0@test>']
    assert queue.pending() == others


def test_421_behind_another_refusal_stops_the_pass(
    queue, make_smtp_server, make_processor
):
    # The relay says 421 (closing) to the second recipient, after a 450
    # to the first, and keeps the connection open: the session ends all
    # the same, and the next message is not read against stale replies.
    server = make_smtp_server(
        rcpt_reply={
            'busy@example.com': ['450 4.2.1 busy'],
            'x@example.com': ['421 4.3.2 bye'],
        }
    )
    bad = queue.stage(make_mail(1, ('busy@example.com', 'x@example.com')))
    queue.publish([bad])
    others = fill(queue, 2, start=2)
    result = make_processor(queue, server).run_once()
    assert (result.deferred, result.sent) == (1, 0)
    assert queue.pending() == others
    assert '421 4.3.2 bye' in _meta(queue, 'deferred', bad)['last_error']


def test_permanent_failure_w_dead_connection(queue, make_smtp_server, make_processor):
    # The relay refuses the first message and hangs up. The second one's
    # commands went with the first one's content: its session died in
    # its exchange, which defers it, as a dropped MAIL does.
    server = make_smtp_server(reply={'DATA': ['554 5.7.1 no']}, close_after='DATA')
    fill(queue, 2)
    result = make_processor(queue, server).run_once()
    assert (result.failed, result.sent, result.deferred) == (1, 0, 1)
    assert server.connections == 1


def test_permanent_failure_w_dead_connection_goes_on_in_lock_step(
    queue, make_smtp_server, make_processor
):
    server = make_smtp_server(
        reply={'DATA': ['554 5.7.1 no']}, drop_at='RSET', pipelining=False
    )
    fill(queue, 2)
    result = make_processor(queue, server).run_once()
    assert (result.failed, result.sent) == (1, 1)
    assert server.connections == 2


def test_a_relay_closing_at_rset_after_a_refusal_charges_the_next_message_nothing(
    queue, make_smtp_server, make_processor
):
    # The relay refuses the first message's content, then answers the RSET
    # that readies the session with 421 (closing): the second message goes
    # over a new session at once, not deferred for a session that ended.
    server = make_smtp_server(
        reply={'DATA': ['554 5.7.1 no'], 'RSET': ['421 4.3.2 bye']},
        pipelining=False,
    )
    fill(queue, 2)
    result = make_processor(queue, server).run_once()
    assert (result.failed, result.sent, result.deferred) == (1, 1, 0)
    assert [m.message['Message-ID'] for m in server.messages] == ['<1@test>']
    assert [m.connection for m in server.messages] == [2]


def test_message_read_ahead_is_released_when_the_pass_stops(
    queue, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'DATA': ['421 4.3.2 bye']})
    _, second = fill(queue, 2)
    result = make_processor(queue, server).run_once()
    assert (result.deferred, result.sent) == (1, 0)
    assert queue.pending() == [second]
    assert _meta(queue, 'new', second)['attempts'] == 0


def test_next_message_is_claimed_while_the_relay_answers(
    queue, make_smtp_server, make_processor
):
    # While the relay answers one message's content, the next message's
    # commands are on their way and the one after is claimed: three in
    # cur/ at most, whatever the length of the queue.
    server = make_smtp_server(delay={'DATA': [1.0]})
    fill(queue, 5)
    processor = make_processor(queue, server)
    results = []
    worker = threading.Thread(target=lambda: results.append(processor.run_once()))
    worker.start()
    seen = set()
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        seen.add(queue.counts()['sending'])
        time.sleep(0.005)
    worker.join(10)
    assert max(seen) == 3
    assert results[0].sent == 5
    assert len(server.messages) == 5
    assert queue.counts() == EMPTY


def test_error_claiming_the_next_message_records_the_one_being_answered(
    queue, clock, events, make_smtp_server, make_processor
):
    # The next message is claimed while the relay answers the one before:
    # when that claim fails, the answer is still read and recorded, so the
    # message is not sent again.
    from pyramid_txmail.queue import MailQueue, QueueError

    class Limited(MailQueue):
        opened = 0

        def _opener(self, path, flags, *mode):
            if '/new/' in path:
                self.opened += 1
                if self.opened == 3:
                    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return os.open(path, flags, *mode)

    server = make_smtp_server()
    queue = Limited(queue.path, clock=clock)
    _, second, third = fill(queue, 3)
    with pytest.raises(QueueError, match='Too many open files'):
        make_processor(queue, server).run_once()
    assert [m.rcpt_tos for m in server.wait_for(1)] == [['to@example.com']]
    assert event_kinds(events) == [('MailSent', None)]
    assert queue.pending() == [second, third]
    assert queue.counts() == {**EMPTY, 'queued': 2}


def test_an_answer_read_as_its_deadline_fired_charges_only_its_message(
    queue, events, make_smtp_server, make_processor
):
    # The relay's answer to the first content arrives just as mail.timeout
    # runs out: the session is over, and that message is deferred (what was
    # read may be cut short). The second message's commands went with that
    # content, the third was claimed meanwhile: no content of theirs went
    # out, so both go back to new/ as they were: no attempt, no event.
    import smtplib

    from pyramid_txmail.smtp import SMTPConnection

    server = make_smtp_server()
    settings = settings_for(server.port, timeout=0.5)
    conns: list[SMTPConnection] = []

    class AnswerAtTheDeadline(smtplib.SMTP):
        def getreply(self):
            code, reply = super().getreply()
            if reply.endswith(b'queued') and len(server.messages) == 1:
                # The deadline fires between this read and the end of its
                # phase, a window no relay can aim at: waited for here.
                deadline = time.monotonic() + 10
                while not conns[0].timed_out and time.monotonic() < deadline:
                    time.sleep(0.01)
            return code, reply

    def connect():
        conns.append(SMTPConnection(settings, smtp_class=AnswerAtTheDeadline))
        return conns[-1]

    first, *others = fill(queue, 3)
    processor = make_processor(queue, server, processor_kw={'connect': connect})
    result = processor.run_once()
    assert (result.deferred, result.sent) == (1, 0)
    assert 'did not answer DATA' in _meta(queue, 'deferred', first)['last_error']
    assert queue.pending() == others
    for mail_id in others:
        assert _meta(queue, 'new', mail_id)['attempts'] == 0
    assert event_kinds(events) == [('MailFailed', False)]


def test_too_old_fails_for_good(queue, clock, events, make_smtp_server, make_processor):
    server = make_smtp_server(reply={'MAIL': '451 4.3.0 try later'})
    [mail_id] = fill(queue, 1)
    _edit(queue, mail_id, attempts=OLD_ENOUGH)
    clock.now += 432001
    result = make_processor(queue, server).run_once()
    assert result.failed == 1
    [info] = queue.list(failed=True)
    assert info.last_error.endswith('(still failing after mail.max_age, 5 days)')
    assert event_kinds(events) == [('MailFailed', True)]


def test_too_old_w_refused_connection_stops_the_pass(queue, clock, make_processor):
    for mail_id in fill(queue, 2):
        _edit(queue, mail_id, attempts=OLD_ENOUGH)
    clock.now += 432001
    result = make_processor(queue, port=free_port()).run_once()
    assert (result.failed, result.deferred) == (1, 0)
    assert queue.counts()['queued'] == 1


def test_partial_refusal_sends_and_defers_the_rest(
    queue, clock, events, make_smtp_server, make_processor
):
    server = make_smtp_server(
        rcpt_reply={
            'gone@example.com': '550 5.1.1 no such user',
            'busy@example.com': ['450 4.2.1 mailbox busy'],
        }
    )
    rcpts = ('ok@example.com', 'gone@example.com', 'busy@example.com')
    mail_id = queue.stage(make_mail(1, rcpts))
    queue.publish([mail_id])
    processor = make_processor(queue, server, retry_min=60.0)
    assert processor.run_once().sent == 1
    [received] = server.messages
    assert received.rcpt_tos == ['ok@example.com']
    [event] = events
    assert type(event).__name__ == 'MailSent'
    assert event.refused == {
        'gone@example.com': (550, '5.1.1 no such user'),
        'busy@example.com': (450, '4.2.1 mailbox busy'),
    }
    meta = _meta(queue, 'deferred', mail_id)
    assert meta['recipients'] == ['busy@example.com']
    assert meta['attempts'] == 1
    assert 'busy@example.com (450 4.2.1 mailbox busy)' in meta['last_error']
    clock.now += 100
    assert processor.run_once().sent == 1
    assert server.messages[1].rcpt_tos == ['busy@example.com']
    assert queue.counts() == EMPTY


def test_unreadable_rcpt_reply_keeps_the_message_for_every_recipient(
    queue, clock, make_smtp_server, make_processor
):
    # A reply line without a code is no refusal: the recipient is neither
    # dropped nor failed for good; the message waits and then reaches
    # both.
    server = make_smtp_server(rcpt_reply={'b@example.com': ['what?']})
    rcpts = ('a@example.com', 'b@example.com')
    mail_id = queue.stage(make_mail(1, rcpts))
    queue.publish([mail_id])
    processor = make_processor(queue, server, retry_min=60.0)
    assert processor.run_once().deferred == 1
    assert server.messages == []
    assert _meta(queue, 'deferred', mail_id)['recipients'] == list(rcpts)
    clock.now += 100
    assert processor.run_once().sent == 1
    [received] = server.messages
    assert received.rcpt_tos == list(rcpts)
    assert queue.counts() == EMPTY


def test_partial_refusal_when_too_old_is_reported(
    queue, clock, events, make_smtp_server, make_processor
):
    server = make_smtp_server(rcpt_reply={'busy@example.com': '450 4.2.1 busy'})
    mail_id = queue.stage(make_mail(1, ('ok@example.com', 'busy@example.com')))
    queue.publish([mail_id])
    _edit(queue, mail_id, attempts=OLD_ENOUGH)
    clock.now += 432001
    assert make_processor(queue, server).run_once().sent == 1
    assert queue.counts() == EMPTY
    assert events[0].refused == {'busy@example.com': (450, '4.2.1 busy')}


def test_every_recipient_refused_some_for_now(
    queue, events, make_smtp_server, make_processor
):
    server = make_smtp_server(
        rcpt_reply={
            'gone@example.com': '550 5.1.1 no such user',
            'busy@example.com': '450 4.2.1 busy',
        }
    )
    mail_id = queue.stage(make_mail(1, ('gone@example.com', 'busy@example.com')))
    queue.publish([mail_id])
    assert make_processor(queue, server).run_once().deferred == 1
    assert _meta(queue, 'deferred', mail_id)['recipients'] == ['busy@example.com']
    [event] = events
    assert event.error.recipients['gone@example.com'][0] == 550


def test_quit_failure_after_acceptance_is_not_a_resend(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server(drop_at='QUIT')
    fill(queue, 3)
    processor = make_processor(queue, server, queue_batch=2)
    assert processor.run_once().sent == 3
    assert processor.run_once().sent == 0
    clock.now += 10**6
    assert processor.run_once().sent == 0
    assert sorted(_ids(server)) == ['<0@test>', '<1@test>', '<2@test>']
    assert queue.counts() == EMPTY


def test_claimed_elsewhere_is_skipped(queue, make_smtp_server, make_processor):
    import fcntl

    server = make_smtp_server()
    held, _ = fill(queue, 2)
    with open(os.path.join(queue.path, 'new', held), 'rb') as other:
        # Another processor, between its lock and its rename.
        fcntl.flock(other, fcntl.LOCK_EX)
        assert make_processor(queue, server).run_once().sent == 1
    assert _ids(server) == ['<1@test>']
    assert queue.pending() == [held]


def test_failing_subscriber_does_not_stop_delivery(
    queue, events, make_smtp_server, make_processor, caplog
):
    server = make_smtp_server()
    fill(queue, 2)

    def notify(events):
        raise RuntimeError('subscriber bug')

    make_processor(queue, server, processor_kw={'notify': notify}).run_once()
    assert len(server.messages) == 2
    assert 'notifying [<MailSent <0@test>>] failed' in caplog.text


def test_default_notify_drops_events(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 1)
    assert (
        make_processor(queue, server, processor_kw={'notify': None}).run_once().sent
        == 1
    )


def test_bug_while_sending_releases_the_claim(queue, make_processor):
    fill(queue, 1)

    def connect():
        raise RuntimeError('bug')

    processor = make_processor(queue, port=1, processor_kw={'connect': connect})
    with pytest.raises(RuntimeError):
        processor.run_once()
    assert queue.counts() == {**EMPTY, 'queued': 1}


def test_recovers_and_promotes_before_sending(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server()
    stale, deferred = fill(queue, 2)
    queue.claim(stale)  # abandoned: as if its processor died
    queue.claim(deferred).defer('451', clock.now)
    processor = make_processor(queue, server, processor_kw={'stale_after': 0.0})
    assert processor.run_once().sent == 2


# -- NoStall
# One entry the processor cannot use never stops the queue.


def test_bad_entries_ahead_do_not_stall_the_queue(
    queue, clock, events, make_smtp_server, tmp_path, make_processor
):
    from tests.test_queue import add_bad_entries, queue_as_nobody

    server = make_smtp_server()
    # The application's user (uid 65534) runs the processor; a root
    # `retry` left a root-owned 0600 entry, and worse sort first.
    queue = queue_as_nobody(str(tmp_path / 'app-q'), clock=clock)
    reasons = add_bad_entries(queue)
    good = fill(queue, 4)
    assert queue.pending()[: len(reasons)] == list(reasons)
    result = make_processor(queue, server).run_once()
    assert (result.sent, result.failed) == (4, 0)
    assert sorted(_ids(server)) == [f'<{n}@test>' for n in range(4)]
    assert event_kinds(events) == [('MailSent', None)] * 4
    assert queue.counts() == {
        **EMPTY,
        'failed': len(reasons),
        'unreadable': len(reasons),
    }
    failed = {i.id: i.last_error for i in queue.list(failed=True)}
    assert sorted(failed) == sorted(reasons)
    assert all(failed[i].startswith('unreadable: ' + r) for i, r in reasons.items())
    assert not set(good) & set(failed)


def test_entry_that_cannot_be_set_aside_is_skipped_every_pass(
    queue, clock, make_smtp_server, make_processor, caplog
):
    from pyramid_txmail.queue import MailQueue

    class ReadOnlyFailed(MailQueue):
        def _rename(self, src, dst):
            if '/failed/' in dst:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            os.rename(src, dst)

    server = make_smtp_server()
    queue = ReadOnlyFailed(queue.path, clock=clock)
    bad = '0000000000000001.1.bad1'
    os.mkdir(os.path.join(queue.path, 'new', bad))
    processor = make_processor(queue, server)
    fill(queue, 1)
    assert processor.run_once().sent == 1
    fill(queue, 1, start=1)
    assert processor.run_once().sent == 1
    assert _ids(server) == ['<0@test>', '<1@test>']
    assert queue.pending() == [bad]
    assert caplog.text.count('cannot be moved to failed/') == 1


# -- UnrecordedOutcomes
# A queue that cannot record an outcome: never a resend to a recipient
# who has the message, never a QueueError out of run_once.


def full_disk_queue(queue, clock, broken=None):
    """``queue`` again, with a disk that fills (``full``) and renames into
    the ``no_rename`` directories that fail."""
    from pyramid_txmail.queue import MailQueue

    class FullDisk(MailQueue):
        full = False
        no_rename = ()

        def _write(self, fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

        def _rename(self, src, dst):
            if any(f'/{sub}/' in dst for sub in self.no_rename):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.rename(src, dst)

    return FullDisk(queue.path, clock=clock)


def partial(queue, clock, make_smtp_server):
    """A server refusing one of two recipients for now, and a full-disk queue
    with such a message and another behind it."""
    server = make_smtp_server(
        rcpt_reply={'later@example.com': '452 4.2.2 mailbox full'}
    )
    queue = full_disk_queue(
        queue,
        clock,
    )
    [mail_id] = fill(queue, 1, recipients=('ok@example.com', 'later@example.com'))
    fill(queue, 1, start=1)
    return server, queue, mail_id


def drain_later(clock, processor):
    """A day of passes, with recovery of anything left in cur/."""
    for _ in range(5):
        clock.now += 86400 / 5
        processor.run_once()


def test_partial_acceptance_w_full_disk_is_not_resent(
    queue, clock, events, make_smtp_server, make_processor, caplog
):
    server, queue, mail_id = partial(queue, clock, make_smtp_server)
    queue.full = True
    processor = make_processor(queue, server, processor_kw={'stale_after': 0.0})
    result = processor.run_once()  # no QueueError
    assert result.sent == 2
    assert [m.rcpt_tos for m in server.messages] == [
        ['ok@example.com'],
        ['to@example.com'],
    ]
    assert event_kinds(events) == [('MailSent', None)] * 2
    assert events[0].refused == {'later@example.com': (452, '4.2.2 mailbox full')}
    # Set aside unchanged (no space to rewrite it), the reason logged.
    assert os.listdir(os.path.join(queue.path, 'failed')) == [mail_id]
    assert 'accepted by the relay for ok@example.com' in caplog.text
    assert 'No space left on device' in caplog.text
    queue.full = False
    server.rcpt_reply = {}
    drain_later(clock, processor)
    assert len(server.messages) == 2
    # Once there is space, the reason is kept beside it, and a retry
    # sends it to later@ alone.
    [info] = queue.list(failed=True)
    assert info.last_error.startswith('accepted by the relay for ok@example.com')
    assert queue.retry() == 1
    processor.run_once()
    assert server.messages[2].rcpt_tos == ['later@example.com']
    assert queue.counts() == EMPTY


def test_partial_acceptance_w_failed_move_defers_only_the_rest(
    queue, clock, make_smtp_server, make_processor
):
    # The reduced copy replaced the claimed file, but cannot be moved
    # on into deferred/: set aside as it is, for later@ alone.
    server, queue, _ = partial(queue, clock, make_smtp_server)
    queue.no_rename = ('deferred',)
    processor = make_processor(queue, server)
    assert processor.run_once().sent == 2
    [info] = queue.list(failed=True)
    assert info.recipients == ('later@example.com',)
    assert info.last_error.startswith('accepted by the relay for ok@example.com')
    queue.no_rename = ()
    server.rcpt_reply = {}
    assert queue.retry() == 1
    processor.run_once()
    assert [m.rcpt_tos for m in server.messages][2:] == [['later@example.com']]


def test_accepted_message_that_cannot_be_recorded_stays_locked(
    queue, clock, make_smtp_server, make_processor, caplog
):
    server, queue, mail_id = partial(queue, clock, make_smtp_server)
    queue.full = True
    queue.no_rename = ('failed',)
    processor = make_processor(queue, server, processor_kw={'stale_after': 0.0})
    assert processor.run_once().sent == 2
    assert 'it stays locked in cur/' in caplog.text
    queue.full = False
    queue.no_rename = ()
    server.rcpt_reply = {}
    drain_later(clock, processor)  # recovery cannot take it
    assert len(server.messages) == 2
    assert os.listdir(os.path.join(queue.path, 'cur')) == [mail_id]


def test_unrecorded_deferral_is_tried_again_after_stale_after(
    queue, clock, make_smtp_server, make_processor, caplog
):
    server = make_smtp_server(reply={'MAIL': ['451 4.3.0 try later']})
    queue = full_disk_queue(
        queue,
        clock,
    )
    first, _ = fill(queue, 2)
    queue.full = True
    processor = make_processor(queue, server, processor_kw={'stale_after': 600.0})
    result = processor.run_once()
    assert (result.sent, result.deferred) == (1, 0)
    assert 'cannot record its failure' in caplog.text
    assert os.listdir(os.path.join(queue.path, 'cur')) == [first]
    queue.full = False
    assert processor.run_once().sent == 0  # not stale yet
    clock.now += 601
    assert processor.run_once().sent == 1
    assert sorted(_ids(server)) == ['<0@test>', '<1@test>']
    assert queue.counts() == EMPTY


def test_unrecorded_release_after_a_configuration_fault(
    queue, clock, make_smtp_server, make_processor, caplog
):
    from pyramid_txmail.processor import PassResult
    from pyramid_txmail.queue import MailQueue

    class NoRelease(MailQueue):
        def _rename(self, src, dst):
            if '/cur/' in src and '/new/' in dst:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.rename(src, dst)

    server = make_smtp_server(auth={'user': 'secret'}, auth_require_tls=False)
    queue = NoRelease(queue.path, clock=clock)
    [mail_id] = fill(queue, 1)
    processor = make_processor(
        queue,
        server,
        username='user',
        password='wrong',
        processor_kw={'stale_after': 0},
    )
    assert processor.run_once() == PassResult()  # not even released
    assert 'cannot record its failure' in caplog.text
    assert processor.run_once() == PassResult()  # paused all the same
    assert server.connections == 1
    assert os.listdir(os.path.join(queue.path, 'cur')) == [mail_id]
    assert MailQueue(queue.path).recover(0) == 1


def test_unreleased_read_ahead_is_left_to_recovery(
    queue, clock, make_smtp_server, make_processor, caplog
):
    from pyramid_txmail.queue import MailQueue

    class NoRelease(MailQueue):
        def _rename(self, src, dst):
            if '/cur/' in src and '/new/' in dst:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.rename(src, dst)

    server = make_smtp_server(reply={'DATA': ['421 4.3.2 bye']})
    queue = NoRelease(queue.path, clock=clock)
    _, second = fill(queue, 2)
    result = make_processor(queue, server).run_once()
    assert (result.deferred, result.sent) == (1, 0)
    assert f'cannot release {queue.path}/cur/{second}' in caplog.text
    assert MailQueue(queue.path).recover(0) == 1


# -- ClockJumps


def test_forward_jump_does_not_fail_a_first_attempt(
    queue, clock, events, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': '451 4.3.0 try later'})
    [mail_id] = fill(queue, 1)
    clock.now += 6 * 86400
    result = make_processor(queue, server).run_once()
    assert (result.deferred, result.failed) == (1, 0)
    assert _meta(queue, 'deferred', mail_id)['attempts'] == 1
    assert event_kinds(events) == [('MailFailed', False)]


def test_forward_jump_counts_only_the_attempts_made(
    queue, clock, make_smtp_server, make_processor
):
    # Ten attempts span 300 + 600 + 1200 + 2400 + 6 * 4000 s, not 5
    # days: a message that old by the clock is deferred again.
    server = make_smtp_server(reply={'MAIL': '451 4.3.0 try later'})
    [mail_id] = fill(queue, 1)
    _edit(queue, mail_id, attempts=10)
    clock.now += 6 * 86400
    assert make_processor(queue, server).run_once().deferred == 1
    _edit(queue, mail_id, 'deferred', attempts=OLD_ENOUGH - 1)
    assert queue.promote_due() == 0
    clock.now += 4000 * 1.2
    assert make_processor(queue, server).run_once().deferred == 1
    _edit(queue, mail_id, 'deferred', attempts=OLD_ENOUGH)
    clock.now += 4000 * 1.2
    assert make_processor(queue, server).run_once().failed == 1


def test_backward_jump_does_not_hold_deferred_messages(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': ['451 4.3.0 try later']})
    fill(queue, 1)
    processor = make_processor(queue, server, retry_min=300.0)
    assert processor.run_once().deferred == 1
    clock.now -= 6 * 86400
    assert processor.run_once().sent == 1
    assert _ids(server) == ['<0@test>']


def test_backoff_due_within_the_horizon_waits(
    queue, clock, make_smtp_server, make_processor
):
    server = make_smtp_server(reply={'MAIL': ['451 4.3.0 try later']})
    fill(queue, 1)
    processor = make_processor(queue, server, retry_min=300.0, retry_max=4000.0)
    assert processor.run_once().deferred == 1
    clock.now -= 4000  # due in 4300 s: a backoff could have set that
    assert processor.run_once().sent == 0
    clock.now += 4300
    assert processor.run_once().sent == 1


# -- Run


def test_run_loops_until_stopped_and_logs_errors(
    queue, clock, make_smtp_server, make_processor, caplog
):
    server = make_smtp_server()
    fill(queue, 2)
    processor = make_processor(queue, server, queue_interval=7.0)
    calls = []
    real = processor.run_once

    def run_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError('broken disk')
        return real()

    processor.run_once = run_once
    clock.stop_after = 2
    processor.run()
    assert len(calls) == 2
    assert clock.waits == [7.0, 7.0]
    assert len(server.messages) == 2
    assert 'the pass failed' in caplog.text
    assert 'broken disk' in caplog.text


def test_run_after_stop_returns_at_once(queue, clock, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 1)
    processor = make_processor(queue, server)
    processor.stop()
    processor.run()
    assert server.connections == 0
    assert clock.waits == []


def test_run_ends_when_stopped_during_a_pass(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    fill(queue, 3)
    processor = make_processor(queue, server, processor_kw={'wait': None})
    original = processor.run_once

    def run_once():
        processor.stop()  # e.g. from another thread
        return original()

    processor.run_once = run_once
    processor.run()  # returns without waiting queue_interval
    assert server.messages == []


def test_wake_starts_the_next_pass_now(queue, make_smtp_server, make_processor):
    server = make_smtp_server()
    processor = make_processor(
        queue, server, queue_interval=60.0, processor_kw={'wait': None}
    )
    thread = threading.Thread(target=processor.run)
    thread.start()
    try:
        fill(queue, 1)
        processor.wake()
        server.wait_for(1, timeout=10)
    finally:
        processor.stop()
        thread.join(10)
    assert not thread.is_alive()


# -- ProcessorThread


def test_start_sends_and_stop_ends(queue, make_smtp_server, make_thread):
    server = make_smtp_server()
    fill(queue, 3)
    thread = make_thread(queue, server)
    assert repr(thread) == f'<ProcessorThread {queue.path} alive=False>'
    thread.start()
    thread.start()  # running already: nothing
    [t] = [t for t in threading.enumerate() if t.name == 'pyramid_txmail-processor']
    assert t.daemon
    server.wait_for(3, timeout=10)
    started = time.monotonic()
    assert thread.stop(10)
    assert time.monotonic() - started < 5
    assert not thread.alive


def test_wake_starts_a_pass_in_the_thread(queue, make_smtp_server, make_thread):
    server = make_smtp_server()
    thread = make_thread(queue, server)
    thread.wake()  # not started: nothing to wake
    thread.start()
    fill(queue, 1)
    thread.wake()
    server.wait_for(1, timeout=10)


def test_stop_during_slow_send_lets_it_finish(queue, make_smtp_server, make_thread):
    server = make_smtp_server(delay={'DATA': 1.5})
    fill(queue, 5)
    thread = make_thread(queue, server)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(verb == 'DATA' for _, verb, _ in server.commands):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    assert thread.stop(10)
    assert time.monotonic() - started < 5
    assert len(server.messages) == 1
    assert queue.counts() == {**EMPTY, 'queued': 4}


def test_stop_while_the_next_message_is_claimed_sends_no_more(
    tmp_path, make_smtp_server
):
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    server = make_smtp_server()
    claimed = []

    class StopsAtTheSecondClaim(MailQueue):
        # stop() arriving from another thread just as the second message
        # is claimed, made deterministic.
        def claim(self, mail_id):
            claim = super().claim(mail_id)
            claimed.append(mail_id)
            if len(claimed) == 2:
                processor.stop()
            return claim

    queue = StopsAtTheSecondClaim(str(tmp_path / 'q'))
    ids = fill(queue, 3)
    processor = QueueProcessor(queue, settings_for(server.port))
    assert processor.run_once().sent == 0
    # The first one's commands went, its content waited for the second's
    # commands: neither goes, both are back in new/ with the third, which
    # was never claimed.
    assert claimed == ids[:2]
    assert queue.pending() == ids
    assert server.messages == []


def test_stop_of_unstarted_thread(queue, make_smtp_server, make_thread):
    assert make_thread(queue, make_smtp_server()).stop()


def test_stop_from_its_own_thread(queue, events, make_smtp_server, threads):
    from pyramid_txmail.processor import ProcessorThread

    server = make_smtp_server()
    results = []

    def notify(events):
        results.append(thread.stop())

    thread = ProcessorThread(
        queue, settings_for(server.port, queue_interval=60.0), notify=notify
    )
    threads.append(thread)
    thread.start()
    fill(queue, 1)
    thread.wake()
    assert ended(thread)
    assert results == [False]  # could not join itself; it ends right after
    assert not thread.alive


def test_stop_all_at_exit(queue, make_smtp_server, make_thread):
    from pyramid_txmail.processor import _stop_all

    server = make_smtp_server()
    thread = make_thread(queue, server)
    thread.start()
    _stop_all(10)
    assert not thread.alive


def test_after_fork_in_child_restarts_only_running_threads(
    queue, make_smtp_server, make_thread, monkeypatch
):
    import weakref

    from pyramid_txmail import processor as module

    server = make_smtp_server()
    running, stopped = make_thread(queue, server), make_thread(queue, server)
    running.start()
    stopped.start()
    stopped.stop(10)
    old = running.processor
    # What a forked child runs, run here (coverage is not kept in a
    # child): the parent's thread, stopped first, stands for the thread
    # a child does not have.
    running.processor.stop()
    assert ended(running)
    monkeypatch.setattr(module, '_INSTANCES', weakref.WeakSet([running, stopped]))
    module._restart_after_fork()
    assert running.alive and running.processor is not old
    assert not stopped.alive and stopped.processor is None


def test_forked_child_gets_a_working_processor(
    queue, events, make_smtp_server, threads
):
    from pyramid_txmail.processor import ensure_processor

    server = make_smtp_server()
    settings = settings_for(server.port, queue_interval=3600.0)
    queue.publish([queue.stage(make_mail(1))])
    thread = ensure_processor(queue, settings, events.extend)
    threads.append(thread)
    assert thread.alive
    # The parent's first pass is over once it has reported the message
    # it found: the child's message, published after, is not in its
    # listing, and the parent then idles for an hour.
    server.wait_for(1)
    deadline = time.monotonic() + 20
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.message_id for e in events] == ['<1@test>']

    def child() -> bool:  # pragma: no cover - runs in the child
        # The parent's processor idles for an hour: only ours can send.
        queue.publish([queue.stage(make_mail(99))])
        alive = thread.alive
        thread.wake()
        deadline = time.monotonic() + 20
        while queue.counts() != EMPTY and time.monotonic() < deadline:
            time.sleep(0.01)
        return alive and queue.counts() == EMPTY

    assert in_forked_child(child)
    assert _ids(server) == ['<1@test>', '<99@test>']
    # The parent's processor sent nothing more.
    assert [e.message_id for e in events] == ['<1@test>']


def test_ensure_processor_one_per_queue_path(
    queue, make_smtp_server, tmp_path, threads
):
    from pyramid_txmail.processor import ensure_processor
    from pyramid_txmail.queue import MailQueue

    server = make_smtp_server()
    settings = settings_for(server.port, queue_interval=60.0)
    first = ensure_processor(queue, settings, None)
    threads.append(first)
    same = MailQueue(queue.path)
    assert ensure_processor(same, settings, None) is first
    other = ensure_processor(MailQueue(str(tmp_path / 'other')), settings)
    threads.append(other)
    assert other is not first
    first.stop(10)
    assert ensure_processor(queue, settings, None) is first
    assert first.alive


# -- ManyProcesses


@pytest.mark.slow
def test_four_processes_drain_one_queue_without_duplicates(
    queue, make_smtp_server, tmp_path
):
    from tests.crashkit import drain

    server = make_smtp_server()
    fill(queue, 2000)
    outs = [str(tmp_path / f'sent-{n}') for n in range(4)]
    written = run_together(drain, (queue.path, server.port), outs)
    ids = _ids(server)
    assert len(ids) == 2000
    assert len(set(ids)) == 2000
    assert sum(map(int, written)) == 2000
    assert queue.counts() == EMPTY


# -- Crashes
# kill -9 at random moments; nothing committed is lost, duplicates only
# where the contract allows them.


def child(tmp_path, *args):
    """Start ``python -m tests.crashkit ARGS``; wait for it to be ready."""
    path = tmp_path / f'child-{time.monotonic_ns()}.out'
    with open(path, 'w') as stdout:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.crashkit', *args],
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
    out = open(path)  # noqa: SIM115 - closed by the caller
    deadline = time.monotonic() + 20
    while True:
        out.seek(0)
        if out.readline() == 'ready\n':
            return proc, out
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            pytest.fail('child did not start')
        time.sleep(0.005)


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_processor_killed_while_draining(queue, clock, make_smtp_server, tmp_path):
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    # Some recipients refuse once: defer under fire too.
    flaky = {f'flaky{n}@example.com': ['451 4.2.0 busy'] for n in range(0, 400, 9)}
    server = make_smtp_server(rcpt_reply=flaky)
    queue = MailQueue(queue.path)  # real clock: children share it
    ids = []
    for n in range(400):
        rcpt = f'flaky{n}@example.com' if n % 9 == 0 else 'to@example.com'
        ids.append(queue.stage(make_mail(n, (rcpt,))))
    queue.publish(ids)
    rng = random.Random(1234)
    in_flight = set()
    kills = 0
    for _ in range(20):
        proc, out = child(tmp_path, 'drain', queue.path, str(server.port))
        time.sleep(rng.uniform(0.0, 0.15))
        kill(proc)
        out.close()
        kills += 1
        for mail_id in os.listdir(os.path.join(queue.path, 'cur')):
            in_flight.add(_meta(queue, 'cur', mail_id)['message_id'])
    # Most kills fall during a pass: in a claim, a send or an outcome.
    assert in_flight, 'no kill fell while a message was being sent'
    processor = QueueProcessor(
        queue, settings_for(server.port, retry_min=0.0), stale_after=0.0
    )
    for _ in range(50):
        if queue.counts() == EMPTY:
            break
        processor.run_once()
    assert queue.counts() == EMPTY
    delivered = Counter(_ids(server))
    assert set(delivered) == {f'<{n}@test>' for n in range(400)}
    duplicated = {mid for mid, count in delivered.items() if count > 1}
    assert sum(delivered.values()) - len(delivered) <= kills
    assert duplicated <= in_flight


@pytest.mark.slow
def test_committer_killed_loses_nothing_committed(queue, tmp_path):
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(queue.path)
    rng = random.Random(4321)
    committed = []
    kills = 0
    # A loaded machine commits less before each kill: kill until enough
    # commits were cut short (bounded).
    while kills < 10 or (len(committed) <= 10 and kills < 60):
        kills += 1
        proc, out = child(tmp_path, 'commit', queue.path)
        time.sleep(rng.uniform(0.0, 0.05))
        kill(proc)
        out.seek(0)
        lines = out.read().split('\n')
        out.close()
        # The last line may be cut short by the kill.
        committed.extend(line for line in lines[1:-1])
    assert len(committed) > 10
    pending = set(queue.pending())
    assert set(committed) <= pending
    for mail_id in committed:
        claim = queue.claim(mail_id)
        assert claim.data.startswith(b'From: from@example.com')
        claim.done()
    assert len(os.listdir(os.path.join(queue.path, 'tmp'))) <= kills


HOOKS = """
import atexit, logging, sys
from pyramid.config import Configurator
import transaction, pyramid_tm
before = atexit._ncallbacks()
import pyramid_txmail
config = Configurator(settings=dict(arg.split('=', 1) for arg in sys.argv[1:]))
config.include('pyramid_txmail')
app = config.make_wsgi_app()
print(atexit._ncallbacks() - before)
"""


def test_import_and_direct_delivery_register_no_exit_hook(tmp_path):
    out = subprocess.run(
        [sys.executable, '-c', HOOKS, 'mail.host=127.0.0.1'],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == ['0']


def test_starting_a_processor_registers_its_exit_hook_once(tmp_path):
    queue = f'mail.queue_path={tmp_path / "q"}'
    out = subprocess.run(
        [sys.executable, '-c', HOOKS, 'mail.host=127.0.0.1', queue],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == ['1']
