"""Direct delivery's pool of SMTP sessions (``mail.pool_size``), and the one
deadline watchdog thread all open sessions share."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import transaction

from tests import FakeClock, in_forked_child, make_mail, message


def _verbs(server, verb: str) -> list[int]:
    """The connections on which the server received ``verb``, in order."""
    return [number for number, v, _ in server.commands if v == verb]


def _said(server, verb: str, expected: list[int], timeout: float = 5.0) -> list[int]:
    """:func:`_verbs` once it is ``expected`` (sorted), or after ``timeout``
    seconds: a QUIT whose answer is not awaited reaches the server later."""
    deadline = time.monotonic() + timeout
    while sorted(_verbs(server, verb)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return sorted(_verbs(server, verb))


def _settings(server, **kw):
    """MailSettings reaching ``server`` (a test server or a raw relay)."""
    from pyramid_txmail.settings import MailSettings

    kw.setdefault('timeout', 5.0)
    return MailSettings(
        host=server.host, port=server.port, message_id_domain='client.test', **kw
    )


def _sent(events) -> list[str]:
    from pyramid_txmail.events import MailSent

    assert all(isinstance(e, MailSent) for e in events), events
    return [e.message_id for e in events]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_delivery(clock):
    """``make_delivery(server, **settings)``: a DirectDelivery to ``server``
    whose events go to its ``events`` list; closed after the test."""
    from pyramid_txmail.delivery import DirectDelivery

    deliveries = []

    def make(server, **settings):
        settings.setdefault('pool_size', 2)
        events: list = []
        delivery = DirectDelivery(
            _settings(server, **settings), events.extend, clock=clock
        )
        delivery.events = events
        deliveries.append(delivery)
        return delivery

    yield make
    for delivery in deliveries:
        delivery.close()


@pytest.fixture
def make_mailer():
    """``make_mailer(server, **settings)``: a Mailer to ``server`` bound to
    an explicit transaction manager, its events in ``events``; its sessions
    closed after the test."""
    from pyramid_txmail.mailer import Mailer

    mailers = []

    def make(server, **settings):
        events: list = []
        mailer = Mailer.from_settings(server.settings(**settings), notify=events.extend)
        mailer.events = events
        mailers.append(mailer)
        return mailer

    yield make
    for mailer in mailers:
        mailer.delivery.close()


def _commit(mailer, n: int) -> None:
    tm = transaction.TransactionManager(explicit=True)
    with tm:
        mailer.bind(tm).send(message(subject=f'message {n}'))


# -- reuse


def test_a_burst_of_transactions_goes_over_one_connection(smtp_server, make_mailer):
    mailer = make_mailer(smtp_server, pool_size=2)
    for n in range(5):
        _commit(mailer, n)
    received = smtp_server.wait_for(5)
    assert [r.message['Subject'] for r in received] == [
        f'message {n}' for n in range(5)
    ]
    assert smtp_server.connections == 1
    assert _verbs(smtp_server, 'EHLO') == [1]
    assert _verbs(smtp_server, 'QUIT') == []  # kept open
    assert len(_sent(mailer.events)) == 5


def test_pool_size_0_opens_a_session_per_transaction(smtp_server, make_mailer):
    mailer = make_mailer(smtp_server, pool_size=0)
    for n in range(3):
        _commit(mailer, n)
    smtp_server.wait_for(3)
    assert smtp_server.connections == 3
    assert _verbs(smtp_server, 'QUIT') == [1, 2, 3]
    assert _verbs(smtp_server, 'RSET') == []
    assert len(_sent(mailer.events)) == 3


def test_send_immediately_uses_the_pool_too(smtp_server, make_mailer):
    mailer = make_mailer(smtp_server, pool_size=1)
    _commit(mailer, 1)
    mailer.send_immediately(message(subject='now'))
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 1]
    assert _verbs(smtp_server, 'QUIT') == []


def test_a_session_within_pool_idle_is_reused(smtp_server, make_delivery, clock):
    delivery = make_delivery(smtp_server, pool_idle=60.0)
    delivery.deliver([make_mail(1)])
    clock.now += 60.0
    delivery.deliver([make_mail(2)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 1]


def test_a_session_given_back_a_moment_ago_is_reused_without_a_check(
    smtp_server, make_delivery, clock
):
    # The relay has said nothing since (no 421, no close): RSET would only
    # cost a round trip per transaction.
    delivery = make_delivery(smtp_server)
    for n in range(3):
        delivery.deliver([make_mail(n)])
        clock.now += 1.0
    assert [r.connection for r in smtp_server.wait_for(3)] == [1, 1, 1]
    assert _verbs(smtp_server, 'RSET') == []
    assert _sent(delivery.events) == ['<0@test>', '<1@test>', '<2@test>']


def test_a_session_given_back_over_a_second_ago_is_checked(
    smtp_server, make_delivery, clock
):
    delivery = make_delivery(smtp_server)
    for n in range(3):
        delivery.deliver([make_mail(n)])
        clock.now += 1.5
    assert [r.connection for r in smtp_server.wait_for(3)] == [1, 1, 1]
    assert _verbs(smtp_server, 'RSET') == [1, 1]  # each reuse
    assert _sent(delivery.events) == ['<0@test>', '<1@test>', '<2@test>']


def test_a_session_the_relay_said_421_on_a_moment_ago_is_replaced(
    smtp_server, make_delivery
):
    # Unasked, as a relay shutting down does before it closes: the session
    # is checked (RSET reads the 421), dropped, and the message goes over a
    # new one, not failed.
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    smtp_server.say('421 4.3.2 shutting down')
    delivery.deliver([make_mail(2)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>']


def test_a_session_idle_longer_than_pool_idle_is_closed_not_reused(
    smtp_server, make_delivery, clock
):
    delivery = make_delivery(smtp_server, pool_idle=60.0)
    delivery.deliver([make_mail(1)])
    clock.now += 60.5
    delivery.deliver([make_mail(2)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    assert _said(smtp_server, 'QUIT', [1]) == [1]  # closed politely
    assert _verbs(smtp_server, 'RSET') == []  # not checked: not reused
    assert _sent(delivery.events) == ['<1@test>', '<2@test>']


def test_sessions_idle_too_long_are_closed_without_waiting_for_their_quit(
    smtp_server, make_delivery, clock, caplog
):
    # A relay that no longer answers would cost mail.timeout per stale
    # session, in the request that happens to find them.
    delivery = make_delivery(smtp_server, pool_size=3, timeout=0.5, pool_idle=60.0)
    sessions = [delivery.pool.acquire() for _ in range(3)]
    for conn in sessions:
        delivery.pool.release(conn, clean=True)
    clock.now += 61.0
    smtp_server.delay = {'QUIT': [5.0, 5.0, 5.0]}
    with caplog.at_level(logging.DEBUG, logger='pyramid_txmail.smtp'):
        delivery.deliver([make_mail(1)])
    assert [r.connection for r in smtp_server.wait_for(1)] == [4]
    assert _sent(delivery.events) == ['<1@test>']
    assert _said(smtp_server, 'QUIT', [1, 2, 3]) == [1, 2, 3]  # still said
    assert 'QUIT to' not in caplog.text  # none timed out: none awaited


def test_closing_the_pool_does_not_wait_for_a_relay_that_stopped_answering(
    smtp_server, make_delivery, caplog
):
    delivery = make_delivery(smtp_server, pool_size=2, timeout=0.5)
    sessions = [delivery.pool.acquire() for _ in range(2)]
    for conn in sessions:
        delivery.pool.release(conn, clean=True)
    smtp_server.delay = {'QUIT': [5.0, 5.0]}
    with caplog.at_level(logging.DEBUG, logger='pyramid_txmail.smtp'):
        delivery.close()
    assert 'QUIT to' not in caplog.text
    assert _said(smtp_server, 'QUIT', [1, 2]) == [1, 2]


# -- a session that went bad while idle is replaced, the message sent once


def test_a_session_the_relay_closed_while_idle_is_replaced(smtp_server, make_delivery):
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    smtp_server.close_sessions()  # a relay restart, or its idle timeout
    delivery.deliver([make_mail(2), make_mail(3)])
    received = smtp_server.wait_for(3)
    assert [r.message['Message-ID'] for r in received] == [
        '<1@test>',
        '<2@test>',
        '<3@test>',
    ]
    assert [r.connection for r in received] == [1, 2, 2]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>', '<3@test>']


def test_a_session_answered_421_to_its_check_is_replaced(
    smtp_server, make_delivery, clock
):
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    clock.now += 2.0  # checked
    smtp_server.reply = {'RSET': ['421 4.4.2 idle too long, closing']}
    delivery.deliver([make_mail(2)])
    received = smtp_server.wait_for(2)
    assert [r.connection for r in received] == [1, 2]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>']
    delivery.deliver([make_mail(3)])
    assert smtp_server.wait_for(3)[-1].connection == 2  # the new one is kept


def test_a_check_the_relay_does_not_answer_in_time_opens_a_new_session(
    smtp_server, make_delivery, clock
):
    # The dropped session timed out; the new one is not failed for it.
    delivery = make_delivery(smtp_server, timeout=0.5)
    delivery.deliver([make_mail(1)])
    clock.now += 2.0  # checked
    smtp_server.delay = {'RSET': [2.0]}
    delivery.deliver([make_mail(2)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>']


# -- a session that had an error is never kept


def test_a_session_with_a_refused_message_is_closed_not_kept(
    smtp_server, make_delivery
):
    from pyramid_txmail.events import MailFailed

    delivery = make_delivery(smtp_server)
    smtp_server.reply = {'MAIL': ['550 5.7.1 not from you']}
    delivery.deliver([make_mail(1), make_mail(2)])
    failed, sent = delivery.events
    assert isinstance(failed, MailFailed) and failed.message_id == '<1@test>'
    assert 'answered MAIL FROM with 550' in str(failed.error)
    assert sent.message_id == '<2@test>'
    assert _verbs(smtp_server, 'QUIT') == [1]
    delivery.deliver([make_mail(3)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]


def test_a_session_whose_extra_round_failed_is_closed_not_kept(
    make_smtp_server, make_delivery
):
    # Over the relay's recipient limit, the rest go in another transaction;
    # that one failing leaves the message sent, and the session not kept.
    server = make_smtp_server(max_recipients=1)
    delivery = make_delivery(server)
    server.reply = {'MAIL': [None, '451 4.3.0 try later']}  # the second MAIL
    delivery.deliver([make_mail(1, recipients=('a@example.com', 'b@example.com'))])
    [sent] = delivery.events
    assert sent.refused == {'b@example.com': (452, '4.5.3 Too many recipients')}
    assert _verbs(server, 'QUIT') == [1]
    delivery.deliver([make_mail(2)])
    assert server.wait_for(2)[-1].connection == 2


def test_a_timed_out_session_is_not_kept(make_delivery):
    from tests.smtpserver import TricklingRelay

    with TricklingRelay(('DATA',), give_up=5.0) as relay:
        delivery = make_delivery(relay, timeout=0.5)
        delivery.deliver([make_mail(1)])
        [failed] = delivery.events
        assert 'did not answer DATA within 0.5s' in str(failed.error)
        relay.trickle = ()
        delivery.deliver([make_mail(2)])
        assert _sent(delivery.events[1:]) == ['<2@test>']
        assert relay.connections == 2


def test_a_connection_refused_fails_the_messages_as_without_a_pool(
    make_smtp_server, make_delivery
):
    from pyramid_txmail.events import MailFailed
    from pyramid_txmail.exceptions import ConfigurationFault

    server = make_smtp_server(reply={'CONNECT': '554 5.3.2 go away'})
    pooled = make_delivery(server, pool_size=2)
    unpooled = make_delivery(server, pool_size=0)
    pooled.deliver([make_mail(1), make_mail(2)])
    unpooled.deliver([make_mail(1), make_mail(2)])
    for events in (pooled.events, unpooled.events):
        assert [type(e) for e in events] == [MailFailed, MailFailed]
        assert all(isinstance(e.error, ConfigurationFault) for e in events)
    assert [str(e.error) for e in pooled.events] == [
        str(e.error) for e in unpooled.events
    ]


def test_send_immediately_raises_when_no_session_opens(make_smtp_server, make_mailer):
    from pyramid_txmail.events import MailFailed
    from pyramid_txmail.exceptions import ConfigurationFault

    server = make_smtp_server(reply={'CONNECT': '554 5.3.2 go away'})
    mailer = make_mailer(server, pool_size=1)
    with pytest.raises(ConfigurationFault, match='554'):
        mailer.send_immediately(message())
    [failed] = mailer.events
    assert isinstance(failed, MailFailed)


def test_send_immediately_refused_is_not_kept(smtp_server, make_mailer):
    from pyramid_txmail.exceptions import PermanentDeliveryError

    mailer = make_mailer(smtp_server, pool_size=1)
    smtp_server.reply = {'DATA': ['554 5.6.0 no']}
    with pytest.raises(PermanentDeliveryError):
        mailer.send_immediately(message())
    mailer.send_immediately(message())
    assert [r.connection for r in smtp_server.wait_for(1)] == [2]
    assert _verbs(smtp_server, 'QUIT') == [1]


# -- threads and the pool's size


def test_at_most_pool_size_sessions_are_kept(smtp_server):
    # A caller finding none idle opens another rather than wait; once given
    # back, the sessions beyond pool_size are closed.
    from pyramid_txmail.smtp import SessionPool, SMTPConnection

    settings = smtp_server.settings()
    pool = SessionPool(lambda: SMTPConnection(settings), 1, 60.0)
    first, second = pool.acquire(), pool.acquire()
    assert smtp_server.connections == 2
    pool.release(second, clean=True)
    pool.release(first, clean=True)
    assert _verbs(smtp_server, 'QUIT') == [1]  # the second given back was
    again = pool.acquire()
    again.send(make_mail(1).envelope, make_mail(1).data)
    assert smtp_server.wait_for(1)[0].connection == 2
    pool.release(again, clean=True)
    assert repr(pool) == '<SessionPool size=1 idle=1>'
    pool.close()
    assert _said(smtp_server, 'QUIT', [1, 2]) == [1, 2]


def test_concurrent_commits_each_deliver(smtp_server, make_mailer):
    threads, each = 6, 4
    mailer = make_mailer(smtp_server, pool_size=2)
    ready = threading.Barrier(threads)
    errors: list[BaseException] = []

    def commit(t: int) -> None:
        try:
            ready.wait(10)
            for n in range(each):
                _commit(mailer, t * 100 + n)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=commit, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors
    assert not any(worker.is_alive() for worker in workers)
    received = smtp_server.wait_for(threads * each)
    subjects = sorted(r.message['Subject'] for r in received)
    assert subjects == sorted(
        f'message {t * 100 + n}' for t in range(threads) for n in range(each)
    )
    assert len(_sent(mailer.events)) == threads * each
    # At most two sessions were kept; the others said QUIT.
    assert len(_verbs(smtp_server, 'QUIT')) >= smtp_server.connections - 2
    mailer.delivery.close()
    every = list(range(1, smtp_server.connections + 1))
    assert _said(smtp_server, 'QUIT', every) == every


# -- shutdown and fork


def test_closing_the_delivery_says_quit_on_its_sessions(smtp_server, make_delivery):
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    delivery.close()
    assert _said(smtp_server, 'QUIT', [1]) == [1]
    # A closed pool keeps nothing: later mail opens and closes a session.
    delivery.deliver([make_mail(2)])
    assert _said(smtp_server, 'QUIT', [1, 2]) == [1, 2]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>']


def test_closing_a_delivery_without_a_pool_is_harmless(smtp_server, make_delivery):
    make_delivery(smtp_server, pool_size=0).close()
    assert smtp_server.connections == 0


def test_interpreter_exit_closes_every_pool(smtp_server, make_delivery, monkeypatch):
    import weakref

    from pyramid_txmail.smtp import pool as module

    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    # What atexit runs, run here on this test's pool only.
    monkeypatch.setattr(module, '_POOLS', weakref.WeakSet([delivery.pool]))
    module._close_all()
    assert _said(smtp_server, 'QUIT', [1]) == [1]


def test_a_forked_child_does_not_use_the_parents_session(smtp_server, make_delivery):
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])

    def child() -> bool:
        del delivery.events[:]
        delivery.deliver([make_mail(2)])
        return [e.message_id for e in delivery.events] == ['<2@test>']

    assert in_forked_child(child)
    # The child opened its own session, and left the parent's alone: no
    # QUIT, no RSET on it; the parent's next transaction still uses it.
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    assert _verbs(smtp_server, 'QUIT') == []
    delivery.deliver([make_mail(3)])
    assert [r.connection for r in smtp_server.wait_for(3)] == [1, 2, 1]
    assert _sent(delivery.events) == ['<1@test>', '<3@test>']


def test_after_fork_the_child_drops_inherited_sessions_without_quit(
    smtp_server, make_delivery, monkeypatch
):
    import weakref

    from pyramid_txmail.smtp import pool as module

    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    # What a forked child runs, run here (coverage is not kept in a child)
    # on this test's pool only.
    monkeypatch.setattr(module, '_POOLS', weakref.WeakSet([delivery.pool]))
    monkeypatch.setattr(module, '_pools_lock', module._pools_lock)
    module._after_fork_in_child()
    delivery.deliver([make_mail(2)])
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 2]
    assert _verbs(smtp_server, 'QUIT') == []
    assert _verbs(smtp_server, 'RSET') == []


def test_check_of_a_session_never_opened_fails(smtp_server):
    from pyramid_txmail.smtp import SMTPConnection

    conn = SMTPConnection(smtp_server.settings())
    assert not conn.check()
    assert not conn.quiet()
    assert smtp_server.connections == 0


# -- one deadline watchdog thread for every session


def _watchdogs() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name == 'pyramid_txmail-smtp-deadline'
    ]


def test_many_open_sessions_share_one_deadline_thread(smtp_server):
    import gc

    from pyramid_txmail.smtp import SMTPConnection

    gc.collect()  # sessions other tests dropped without close() end here

    conns = [SMTPConnection(smtp_server.settings()) for _ in range(4)]
    try:
        for conn in conns:
            conn.open()
        assert smtp_server.connections == 4
        [watchdog] = _watchdogs()
    finally:
        for conn in conns:
            conn.close()
    # Nothing left to watch: the thread ends.
    watchdog.join(5)
    assert not watchdog.is_alive()


def test_a_trickling_relay_is_cut_in_time_beside_idle_sessions(smtp_server):
    from pyramid_txmail.smtp import SMTPConnection, TemporaryDeliveryError
    from tests.smtpserver import TricklingRelay

    idle = [SMTPConnection(smtp_server.settings(timeout=60.0)) for _ in range(2)]
    with TricklingRelay(('DATA',)) as relay:
        slow = SMTPConnection(_settings(relay, timeout=0.5))
        try:
            for conn in (*idle, slow):
                conn.open()
            mail = make_mail(1)
            with pytest.raises(TemporaryDeliveryError) as info:
                slow.send(mail.envelope, mail.data)
            assert str(info.value) == (
                f'127.0.0.1:{relay.port} did not answer DATA within 0.5s'
            )
            assert slow.timed_out
            assert all(conn.check() for conn in idle)  # untouched
        finally:
            for conn in (*idle, slow):
                conn.close()


def test_a_reply_cut_short_after_its_code_is_a_timeout_not_a_reply():
    # The relay trickles '250-please wait' a byte every 0.3 s: at the 0.7 s
    # deadline the client has read '250', which smtplib alone would take for
    # the whole reply, and the message for sent.
    from pyramid_txmail.smtp import SMTPConnection, TemporaryDeliveryError
    from tests.smtpserver import TricklingRelay

    with TricklingRelay(('DATA',), delay=0.3) as relay:
        conn = SMTPConnection(_settings(relay, timeout=0.7))
        try:
            conn.open()
            mail = make_mail(1)
            with pytest.raises(TemporaryDeliveryError) as info:
                conn.send(mail.envelope, mail.data)
        finally:
            conn.close()
    assert str(info.value) == f'127.0.0.1:{relay.port} did not answer DATA within 0.7s'
    assert conn.timed_out


def test_a_forked_child_gets_a_watchdog_of_its_own(smtp_server, monkeypatch):
    from pyramid_txmail.smtp import SMTPConnection, session

    # What a forked child runs, run here: the parent's watchdog is set
    # aside (restored after the test) and a new one starts with the next
    # session.
    monkeypatch.setattr(session, '_WATCHDOG', session._WATCHDOG)
    session._forget_watchdog()
    conn = SMTPConnection(smtp_server.settings())
    try:
        conn.open()
        assert session._WATCHDOG.thread in _watchdogs()
    finally:
        conn.close()


# -- settings


def test_pool_settings_default_off():
    from pyramid_txmail.settings import parse_settings

    settings = parse_settings({}, prefix='mail.')
    assert (settings.pool_size, settings.pool_idle) == (0, 60.0)


@pytest.mark.parametrize(
    ('size', 'idle', 'expected'),
    [('2', '30', (2, 30.0)), (' 0 ', '0.5', (0, 0.5)), ('10', '600', (10, 600.0))],
)
def test_pool_settings_good_values(size, idle, expected):
    from pyramid_txmail.settings import parse_settings

    settings = parse_settings({'mail.pool_size': size, 'mail.pool_idle': idle})
    assert (settings.pool_size, settings.pool_idle) == expected


SECONDS = 'expected a positive number of seconds, at most a year (31536000)'


@pytest.mark.parametrize(
    ('key', 'value', 'problem'),
    [
        ('pool_size', '-1', 'expected an integer, 0 or more'),
        ('pool_size', 'two', 'expected an integer, 0 or more'),
        ('pool_size', '1.5', 'expected an integer, 0 or more'),
        ('pool_idle', '0', SECONDS),
        ('pool_idle', '-5', SECONDS),
        ('pool_idle', 'soon', SECONDS),
        ('pool_idle', 'inf', SECONDS),
        ('pool_idle', 'nan', SECONDS),
    ],
)
def test_pool_settings_bad_values_name_the_key(key, value, problem):
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError

    config = Configurator(settings={f'mail.{key}': value})
    with pytest.raises(ConfigurationError) as info:
        config.include('pyramid_txmail')
    assert str(info.value) == f'mail.{key}: {problem}, got {value!r}'


def test_mailer_takes_pool_size_as_a_keyword(smtp_server):
    from pyramid_txmail.mailer import Mailer

    mailer = Mailer(host=smtp_server.host, port=smtp_server.port, pool_size=1)
    try:
        for _ in range(2):
            mailer.send_immediately(message())
    finally:
        mailer.delivery.close()
    assert [r.connection for r in smtp_server.wait_for(2)] == [1, 1]


# -- found in review


class _Interrupted(Exception):
    """What a signal handler raises: a time limit (Celery's soft limit, a
    SIGALRM request timeout) ending the work in the middle of a send."""


def test_a_send_interrupted_in_its_extra_round_is_not_kept(
    make_smtp_server, make_mailer
):
    # send_immediately() to two recipients of a relay taking one per
    # transaction: the second goes in another transaction, interrupted
    # while its MAIL, RCPT and DATA await their replies. The session, the
    # relay waiting for content, must not be given to the next caller.
    import signal
    import time

    server = make_smtp_server(max_recipients=1, delay={'MAIL': [None, 1.0]})
    mailer = make_mailer(server, pool_size=1, timeout=3.0)
    main = threading.get_ident()

    def interrupt() -> None:
        for _ in range(1000):  # bounded: 10 s
            if _verbs(server, 'MAIL') == [1, 1]:
                signal.pthread_kill(main, signal.SIGUSR1)
                return
            time.sleep(0.01)

    def raise_interrupted(signum, frame):
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    interrupter = threading.Thread(target=interrupt)
    try:
        interrupter.start()
        with pytest.raises(_Interrupted):
            mailer.send_immediately(
                message(subject='first', recipients=['a@example.com', 'b@example.com'])
            )
    finally:
        interrupter.join(10)
        signal.signal(signal.SIGUSR1, previous)
    mailer.send_immediately(message(subject='second', recipients=['c@example.com']))
    received = server.wait_for(2)
    assert [(r.message['Subject'], r.rcpt_tos, r.connection) for r in received] == [
        ('first', ['a@example.com'], 1),
        ('second', ['c@example.com'], 2),
    ]
    mailer.delivery.close()
    assert len(server.messages) == 2  # nothing else, to anybody


def test_a_reused_session_answered_421_to_mail_sends_on_a_new_one(
    smtp_server, make_delivery
):
    # Relays limit the messages of one connection (Exim's
    # smtp_accept_max_per_connection): past it, RSET still gets 250 and MAIL
    # a 421. Nothing was accepted: the message goes over a new session
    # rather than fail for good.
    delivery = make_delivery(smtp_server)
    delivery.deliver([make_mail(1)])
    smtp_server.reply = {'MAIL': ['421 4.7.0 too many messages in this connection']}
    delivery.deliver([make_mail(2), make_mail(3)])
    received = smtp_server.wait_for(3)
    assert [(r.message['Message-ID'], r.connection) for r in received] == [
        ('<1@test>', 1),
        ('<2@test>', 2),
        ('<3@test>', 2),
    ]
    assert _sent(delivery.events) == ['<1@test>', '<2@test>', '<3@test>']


def test_send_immediately_on_a_reused_session_answered_421_sends_on_a_new_one(
    smtp_server, make_mailer
):
    mailer = make_mailer(smtp_server, pool_size=1)
    mailer.send_immediately(message(subject='first'))
    smtp_server.reply = {'MAIL': ['421 4.7.0 too many messages in this connection']}
    mailer.send_immediately(message(subject='second'))
    received = smtp_server.wait_for(2)
    assert [(r.message['Subject'], r.connection) for r in received] == [
        ('first', 1),
        ('second', 2),
    ]
    assert len(_sent(mailer.events)) == 2


def test_a_new_session_answered_421_to_mail_fails_the_message(
    smtp_server, make_delivery
):
    # Only a session kept from earlier use is suspected: a new one refused
    # at once is the relay's answer, and trying again would only repeat it.
    from pyramid_txmail.events import MailFailed

    delivery = make_delivery(smtp_server)
    smtp_server.reply = {'MAIL': ['421 4.3.2 not now']}
    delivery.deliver([make_mail(1), make_mail(2)])
    failed, sent = delivery.events
    assert isinstance(failed, MailFailed) and failed.error.code == 421
    assert sent.message_id == '<2@test>'
    assert [r.connection for r in smtp_server.wait_for(1)] == [2]


def test_a_check_not_answered_in_time_drops_the_other_idle_sessions(
    smtp_server, make_delivery, clock
):
    # A relay that stops answering would cost mail.timeout for the check of
    # each idle session before a new one is even tried: the request waits
    # pool_size times as long as without a pool. One check not answered in
    # time is enough to leave the other idle sessions unchecked (closed
    # without a word: QUIT would wait as long).
    delivery = make_delivery(smtp_server, pool_size=3, timeout=0.5)
    sessions = [delivery.pool.acquire() for _ in range(3)]
    for conn in sessions:
        delivery.pool.release(conn, clean=True)
    clock.now += 2.0  # checked
    smtp_server.delay = {'RSET': [5.0, 5.0, 5.0]}
    delivery.deliver([make_mail(1)])
    assert [r.connection for r in smtp_server.wait_for(1)] == [4]
    assert _sent(delivery.events) == ['<1@test>']
    assert _verbs(smtp_server, 'RSET') == [3]  # the most recently used only
    assert _verbs(smtp_server, 'QUIT') == []
