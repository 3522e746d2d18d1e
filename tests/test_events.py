"""MailSent, MailFailed and the Notifier that sends them after the commit."""

from __future__ import annotations

import logging

import transaction

from pyramid_txmail.events import MailFailed, MailSent, Notifier

RAW = (
    b'From: a@example.com\r\nTo: b@example.com\r\nSubject: Caf\xc3\xa9\r\n'
    b'Message-ID: <1@test>\r\n\r\nhello\r\n'
)


def test_mail_sent_parses_its_message_from_the_bytes_once():
    event = MailSent('<1@test>', RAW)
    assert event.message['To'] == 'b@example.com'
    assert event.message is event.message
    assert event.message['Subject'] == 'Café'
    assert event.message.get_content() == 'hello\n'


def test_mail_sent_refused_defaults_to_empty():
    assert MailSent('<1@test>', RAW).refused == {}


def test_mail_sent_keeps_the_refused_recipients():
    event = MailSent('<1@test>', RAW, {'x@example.com': (550, 'no')})
    assert event.refused == {'x@example.com': (550, 'no')}


def test_mail_sent_repr_names_the_message_id():
    assert repr(MailSent('<1@test>', RAW)) == '<MailSent <1@test>>'


def test_mail_failed_carries_the_error_and_whether_it_is_permanent():
    error = OSError('down')
    event = MailFailed('<1@test>', RAW, error, permanent=False)
    assert event.error is error
    assert not event.permanent
    assert event.message_id == '<1@test>'
    assert event.message['To'] == 'b@example.com'


class JoiningSubscriber:
    """Joins a data manager to the event's transaction, like a DB session."""

    def __init__(self, fail_on=()):
        self.committed = []
        self.aborted = []
        self.fail_on = fail_on

    def __call__(self, event):
        subscriber = self

        class DM:
            transaction_manager = event.transaction_manager

            def sortKey(self):
                return 'x'

            def abort(self, txn):
                subscriber.aborted.append(event.message_id)

            tpc_begin = commit = tpc_vote = tpc_abort = lambda self, txn: None

            def tpc_finish(self, txn):
                subscriber.committed.append(event.message_id)

        event.transaction_manager.get().join(DM())
        if event.message_id in self.fail_on:
            raise RuntimeError('subscriber broke')


def sent_events(*ids):
    return [MailSent(i, RAW) for i in ids]


def test_notifier_commits_each_event_in_its_own_transaction():
    subscriber = JoiningSubscriber()
    Notifier(subscriber)(sent_events('<1@test>', '<2@test>'))
    assert subscriber.committed == ['<1@test>', '<2@test>']


def test_notifier_logs_a_failing_subscriber_and_still_notifies_others(caplog):
    subscriber = JoiningSubscriber(fail_on=('<1@test>',))
    with caplog.at_level(logging.ERROR, 'pyramid_txmail.events'):
        Notifier(subscriber)(sent_events('<1@test>', '<2@test>'))
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert '<1@test>' in record.getMessage()
    assert subscriber.aborted == ['<1@test>']
    assert subscriber.committed == ['<2@test>']


def test_notifier_works_from_the_after_commit_hook_of_the_sending_transaction():
    subscriber = JoiningSubscriber()
    managers = []

    def notify(event):
        managers.append(event.transaction_manager)
        subscriber(event)

    notifier = Notifier(notify)
    sending = transaction.TransactionManager(explicit=True)
    with sending as txn:
        txn.addAfterCommitHook(lambda status: notifier(sent_events('<1@test>')))
    assert subscriber.committed == ['<1@test>']
    assert managers[0] is not sending


class Big:
    """Stands for what a frame may hold: a pass's listing of the queue."""


def failing_with(big):
    try:
        raise OSError('connection reset')
    except OSError as exc:
        raise RuntimeError('delivery failed') from exc


def test_mail_failed_frees_what_the_error_tracebacks_held():
    import gc
    import weakref

    big = Big()
    ref = weakref.ref(big)
    try:
        failing_with(big)
    except RuntimeError as exc:
        error = exc
    del big
    event = MailFailed('<1@test>', RAW, error, permanent=True)
    gc.collect()
    assert ref() is None
    assert event.error is error
    assert str(event.error.__cause__) == 'connection reset'
    chain = [error, error.__cause__, error.__context__]
    assert [e.__traceback__ for e in chain] == [None, None, None]


def test_mail_failed_takes_an_error_that_links_to_itself():
    error = ValueError('loop')
    error.__context__ = error
    assert MailFailed('<1@test>', RAW, error, permanent=False).error is error
