import unittest

import transaction

RAW = (
    b'From: a@example.com\r\nTo: b@example.com\r\nSubject: Caf\xc3\xa9\r\n'
    b'Message-ID: <1@test>\r\n\r\nhello\r\n'
)


class TestMailSent(unittest.TestCase):
    def _makeOne(self, *arg, **kw):
        from pyramid_txmail.events import MailSent

        return MailSent(*arg, **kw)

    def test_message_parsed_from_bytes_on_first_access(self):
        event = self._makeOne('<1@test>', RAW)
        self.assertIsNone(event._message)
        self.assertEqual(event.message['To'], 'b@example.com')
        self.assertIs(event.message, event.message)
        self.assertEqual(event.message.get_content(), 'hello\n')

    def test_refused_defaults_to_empty(self):
        self.assertEqual(self._makeOne('<1@test>', RAW).refused, {})

    def test_refused_recorded(self):
        event = self._makeOne('<1@test>', RAW, {'x@example.com': (550, 'no')})
        self.assertEqual(event.refused, {'x@example.com': (550, 'no')})

    def test_repr_names_message_id(self):
        self.assertEqual(repr(self._makeOne('<1@test>', RAW)), '<MailSent <1@test>>')


class TestMailFailed(unittest.TestCase):
    def test_attributes(self):
        from pyramid_txmail.events import MailFailed

        error = OSError('down')
        event = MailFailed('<1@test>', RAW, error, permanent=False)
        self.assertIs(event.error, error)
        self.assertFalse(event.permanent)
        self.assertEqual(event.message_id, '<1@test>')


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


class TestNotifier(unittest.TestCase):
    def _makeOne(self, notify):
        from pyramid_txmail.events import Notifier

        return Notifier(notify)

    def _events(self, *ids):
        from pyramid_txmail.events import MailSent

        return [MailSent(i, RAW) for i in ids]

    def test_each_event_in_its_own_committed_transaction(self):
        subscriber = JoiningSubscriber()
        self._makeOne(subscriber)(self._events('<1@test>', '<2@test>'))
        self.assertEqual(subscriber.committed, ['<1@test>', '<2@test>'])

    def test_failing_subscriber_logged_and_others_still_notified(self):
        subscriber = JoiningSubscriber(fail_on=('<1@test>',))
        with self.assertLogs('pyramid_txmail.events', 'ERROR') as logs:
            self._makeOne(subscriber)(self._events('<1@test>', '<2@test>'))
        self.assertIn('<1@test>', logs.output[0])
        self.assertEqual(subscriber.aborted, ['<1@test>'])
        self.assertEqual(subscriber.committed, ['<2@test>'])

    def test_works_from_after_commit_hook_of_sending_transaction(self):
        subscriber = JoiningSubscriber()
        managers = []

        def notify(event):
            managers.append(event.transaction_manager)
            subscriber(event)

        notifier = self._makeOne(notify)
        sending = transaction.TransactionManager(explicit=True)
        with sending as txn:
            txn.addAfterCommitHook(lambda status: notifier(self._events('<1@test>')))
        self.assertEqual(subscriber.committed, ['<1@test>'])
        self.assertIsNot(managers[0], sending)


class Big:
    """Stands for what a frame may hold: a pass's listing of the queue."""


def _failing_with(big):
    try:
        raise OSError('connection reset')
    except OSError as exc:
        raise RuntimeError('delivery failed') from exc


def test_mail_failed_frees_what_the_error_tracebacks_held():
    import gc
    import weakref

    from pyramid_txmail.events import MailFailed

    big = Big()
    ref = weakref.ref(big)
    try:
        _failing_with(big)
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
    from pyramid_txmail.events import MailFailed

    error = ValueError('loop')
    error.__context__ = error
    assert MailFailed('<1@test>', RAW, error, permanent=False).error is error
