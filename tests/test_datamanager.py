"""MailDataManager: one per transaction, the two-phase commit, savepoints."""

from __future__ import annotations

import logging

import pytest

from pyramid_txmail.datamanager import MailDataManager
from tests import (
    FailingVoteDataManager,
    RecordingDelivery,
    SecondPhaseFailingDataManager,
    make_mail,
    message,
)


@pytest.fixture
def calls():
    """Every protocol step the deliveries of a test saw, in order."""
    return []


@pytest.fixture
def delivery(calls):
    return RecordingDelivery('d', calls)


def send(tm, delivery, n, key='k'):
    """What the mailer does for one message: join, then add it."""
    MailDataManager.join(tm, key).add(delivery, make_mail(n))


def votes(calls):
    return [c for c in calls if c[1] == 'vote']


def test_implements_savepoint_data_manager(tm):
    from transaction.interfaces import ISavepointDataManager
    from zope.interface.verify import verifyObject

    with tm:
        verifyObject(ISavepointDataManager, MailDataManager.join(tm, 'k'))


def test_sort_key_is_str_before_one_phase_databases(tm):
    with tm:
        key = MailDataManager.join(tm, 'k').sortKey()
    assert isinstance(key, str)
    assert key < '~sqlalchemy:1'


def test_one_data_manager_per_transaction_and_key(tm):
    with tm:
        first = MailDataManager.join(tm, 'k')
        assert MailDataManager.join(tm, 'k') is first
        assert MailDataManager.join(tm, 'other') is not first


def test_commit_votes_finishes_then_delivers_after_commit(tm, delivery, calls):
    with tm:
        send(tm, delivery, 1)
        send(tm, delivery, 2)
    assert calls == [
        ('d', 'vote', ['<1@test>', '<2@test>']),
        ('d', 'finish', ['<1@test>', '<2@test>']),
        ('d', 'after_commit', ['<1@test>', '<2@test>']),
    ]


def test_after_commit_runs_once_transaction_is_committed(tm, calls):
    seen = []

    class Watching(RecordingDelivery):
        def vote(self, mails):
            pending = super().vote(mails)
            txn = tm.get()
            pending.after_commit = lambda: seen.append(txn.status)
            return pending

    with tm:
        send(tm, Watching('w', calls), 1)
    assert [str(s) for s in seen] == ['Committed']


def test_messages_grouped_by_delivery_in_send_order(tm, delivery, calls):
    other = RecordingDelivery('q', calls)
    with tm:
        send(tm, delivery, 1)
        send(tm, other, 2)
        send(tm, delivery, 3)
    assert votes(calls) == [
        ('d', 'vote', ['<1@test>', '<3@test>']),
        ('q', 'vote', ['<2@test>']),
    ]


def test_abort_sends_nothing(tm, delivery, calls):
    tm.begin()
    send(tm, delivery, 1)
    tm.abort()
    assert calls == []


def test_exception_in_with_block_sends_nothing(tm, delivery, calls):
    with pytest.raises(LookupError), tm:
        send(tm, delivery, 1)
        raise LookupError('the view failed')
    assert calls == []


def test_failed_vote_of_other_data_manager_undoes_ours(tm, delivery, calls):
    with pytest.raises(RuntimeError), tm:
        send(tm, delivery, 1)
        tm.get().join(FailingVoteDataManager(tm))
    assert calls == [('d', 'vote', ['<1@test>']), ('d', 'abort', ['<1@test>'])]


def test_own_vote_failure_fails_commit_and_aborts_earlier_groups(tm, delivery, calls):
    broken = RecordingDelivery('q', calls)
    broken.fail_vote = OSError('disk full')
    with pytest.raises(OSError), tm:
        send(tm, delivery, 1)
        send(tm, broken, 2)
    assert calls == [('d', 'vote', ['<1@test>']), ('d', 'abort', ['<1@test>'])]


def test_failure_in_finish_is_logged_not_raised(tm, delivery, calls, caplog):
    delivery.fail_step = 'finish'
    with caplog.at_level(logging.ERROR, 'pyramid_txmail'), tm:
        send(tm, delivery, 1)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 'finish' in record.getMessage()
    assert calls[-1] == ('d', 'after_commit', ['<1@test>'])


def test_failure_after_commit_is_logged_not_raised(tm, delivery, caplog):
    delivery.fail_step = 'after_commit'
    with caplog.at_level(logging.ERROR, 'pyramid_txmail'), tm:
        send(tm, delivery, 1)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 'after_commit' in record.getMessage()


def test_savepoint_rollback_drops_later_messages(tm, delivery, calls):
    with tm:
        send(tm, delivery, 1)
        savepoint = tm.savepoint()
        send(tm, delivery, 2)
        savepoint.rollback()
        send(tm, delivery, 3)
    assert calls[0] == ('d', 'vote', ['<1@test>', '<3@test>'])


def test_savepoint_before_join_rollback_then_send_again(tm, delivery, calls):
    # Joining after a savepoint gets an AbortSavepoint, which unjoins the
    # data manager on rollback: the next send must join a new one.
    with tm:
        savepoint = tm.savepoint()
        send(tm, delivery, 1)
        savepoint.rollback()
        send(tm, delivery, 2)
    assert calls[0] == ('d', 'vote', ['<2@test>'])


def test_savepoint_with_mailer_joined_does_not_raise(tm, delivery, calls):
    with tm:
        send(tm, delivery, 1)
        tm.savepoint().rollback()
    assert calls[0] == ('d', 'vote', ['<1@test>'])


def test_next_transaction_gets_a_new_data_manager(tm, delivery, calls):
    with tm:
        first = MailDataManager.join(tm, 'k')
        send(tm, delivery, 1)
    with tm:
        assert MailDataManager.join(tm, 'k') is not first
        send(tm, delivery, 2)
    assert votes(calls) == [('d', 'vote', ['<1@test>']), ('d', 'vote', ['<2@test>'])]


def test_a_send_once_the_commit_is_decided_raises_instead_of_vanishing(tm, smtp_server):
    # A MailSent subscriber that mails with the request's mailer (bound to
    # the sending manager, which still holds the committed transaction):
    # that send can join nothing. It used to return a Message-ID for a
    # message no step would ever deliver, and log nothing.
    from pyramid_txmail.events import MailSent, Notifier
    from pyramid_txmail.mailer import Mailer

    outcomes = []

    def on_sent(event):
        if isinstance(event, MailSent) and event.message['Subject'] == 'first':
            try:
                outcomes.append(mailer.send(message(subject='alert')))
            except ValueError as exc:
                outcomes.append(exc)
            # The way the docs give: the event's own transaction.
            mailer.bind(event.transaction_manager).send(message(subject='alert'))

    mailer = Mailer.from_settings(
        smtp_server.mail_settings(), notify=Notifier(on_sent)
    ).bind(tm)
    with tm:
        mailer.send(message(subject='first'))
    received = smtp_server.wait_for(2)
    assert [r.message['Subject'] for r in received] == ['first', 'alert']
    [outcome] = outcomes
    assert isinstance(outcome, ValueError)
    with tm:  # the next transaction takes mail again
        mailer.send(message(subject='next'))
    received = smtp_server.wait_for(3)
    assert [r.message['Subject'] for r in received] == ['first', 'alert', 'next']


def test_a_send_in_an_after_commit_hook_raises_and_queues_nothing(tm, tmp_path):
    from pyramid_txmail.mailer import Mailer
    from pyramid_txmail.queue import MailQueue

    path = str(tmp_path / 'q')
    mailer = Mailer.from_settings({'mail.queue_path': path}).bind(tm)
    outcomes = []

    def hook(status):
        try:
            outcomes.append(mailer.send(message(subject='late')))
        except ValueError as exc:
            outcomes.append(exc)

    with tm:
        mailer.send(message(subject='first'))
        tm.get().addAfterCommitHook(hook)
    [outcome] = outcomes
    assert isinstance(outcome, ValueError)
    assert [e.subject for e in MailQueue(path).list()] == ['first']


def test_tpc_abort_after_our_finish_undoes_nothing(tm, delivery, calls):
    with pytest.raises(RuntimeError, match='second phase'), tm:
        send(tm, delivery, 1)
        tm.get().join(SecondPhaseFailingDataManager(tm))
    assert calls == [('d', 'vote', ['<1@test>']), ('d', 'finish', ['<1@test>'])]


@pytest.mark.parametrize('listener', ['before_commit', 'after_commit'])
def test_mail_sent_while_zope_sqlalchemy_commits_goes_with_the_rest(
    tm, tmp_path, listener
):
    # zope.sqlalchemy sorts after us and commits the database in its vote,
    # which runs the session's before_commit and after_commit listeners: an
    # application sending mail from one ("once the row is committed") sent
    # after our vote. That send raised, and the transaction failed after
    # the database had committed, with none of its mail queued.
    import sqlalchemy as sa
    import zope.sqlalchemy
    from sqlalchemy.orm import Session

    from pyramid_txmail.mailer import Mailer
    from pyramid_txmail.queue import MailQueue

    engine = sa.create_engine(f'sqlite:///{tmp_path}/app.sqlite')
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE users (name TEXT)'))
    session = Session(engine)
    zope.sqlalchemy.register(session, transaction_manager=tm)
    path = str(tmp_path / 'q')
    mailer = Mailer.from_settings({'mail.queue_path': path}).bind(tm)

    @sa.event.listens_for(session, listener)
    def welcome(session):
        mailer.send(message(subject='welcome'))

    with tm:
        mailer.send(message(subject='first'))
        session.execute(sa.text("INSERT INTO users VALUES ('ann')"))
        zope.sqlalchemy.mark_changed(session)
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT name FROM users')).all() == [('ann',)]
    assert sorted(e.subject for e in MailQueue(path).list()) == ['first', 'welcome']
    engine.dispose()
