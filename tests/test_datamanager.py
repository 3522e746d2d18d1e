import unittest

import transaction

from tests import FailingVoteDataManager, RecordingDelivery, make_mail


class TestMailDataManager(unittest.TestCase):
    def setUp(self):
        self.tm = transaction.TransactionManager(explicit=True)
        self.calls = []
        self.delivery = RecordingDelivery('d', self.calls)

    def _getTargetClass(self):
        from pyramid_txmail.datamanager import MailDataManager

        return MailDataManager

    def _join(self, key='k'):
        return self._getTargetClass().join(self.tm, key)

    def _send(self, n, delivery=None, key='k'):
        self._join(key).add(delivery or self.delivery, make_mail(n))

    def test_implements_savepoint_data_manager(self):
        from transaction.interfaces import ISavepointDataManager
        from zope.interface.verify import verifyObject

        with self.tm:
            verifyObject(ISavepointDataManager, self._join())

    def test_sort_key_is_str_before_one_phase_databases(self):
        with self.tm:
            key = self._join().sortKey()
        self.assertIsInstance(key, str)
        self.assertLess(key, '~sqlalchemy:1')

    def test_one_data_manager_per_transaction_and_key(self):
        with self.tm:
            first = self._join()
            self.assertIs(self._join(), first)
            self.assertIsNot(self._join('other'), first)

    def test_commit_votes_finishes_then_delivers_after_commit(self):
        with self.tm:
            self._send(1)
            self._send(2)
        self.assertEqual(
            self.calls,
            [
                ('d', 'vote', ['<1@test>', '<2@test>']),
                ('d', 'finish', ['<1@test>', '<2@test>']),
                ('d', 'after_commit', ['<1@test>', '<2@test>']),
            ],
        )

    def test_after_commit_runs_once_transaction_is_committed(self):
        seen = []

        class Watching(RecordingDelivery):
            def vote(inner, mails):
                pending = super().vote(mails)
                txn = self.tm.get()

                def after_commit():
                    seen.append(txn.status)

                pending.after_commit = after_commit
                return pending

        with self.tm:
            self._send(1, Watching('w', self.calls))
        self.assertEqual([str(s) for s in seen], ['Committed'])

    def test_messages_grouped_by_delivery_in_send_order(self):
        other = RecordingDelivery('q', self.calls)
        with self.tm:
            self._send(1)
            self._send(2, other)
            self._send(3)
        votes = [c for c in self.calls if c[1] == 'vote']
        self.assertEqual(
            votes,
            [('d', 'vote', ['<1@test>', '<3@test>']), ('q', 'vote', ['<2@test>'])],
        )

    def test_abort_sends_nothing(self):
        self.tm.begin()
        self._send(1)
        self.tm.abort()
        self.assertEqual(self.calls, [])

    def test_exception_in_with_block_sends_nothing(self):
        with self.assertRaises(LookupError), self.tm:
            self._send(1)
            raise LookupError('the view failed')
        self.assertEqual(self.calls, [])

    def test_failed_vote_of_other_data_manager_undoes_ours(self):
        with self.assertRaises(RuntimeError), self.tm:
            self._send(1)
            self.tm.get().join(FailingVoteDataManager(self.tm))
        self.assertEqual(
            self.calls, [('d', 'vote', ['<1@test>']), ('d', 'abort', ['<1@test>'])]
        )

    def test_own_vote_failure_fails_commit_and_aborts_earlier_groups(self):
        broken = RecordingDelivery('q', self.calls)
        broken.fail_vote = OSError('disk full')
        with self.assertRaises(OSError), self.tm:
            self._send(1)
            self._send(2, broken)
        self.assertEqual(
            self.calls, [('d', 'vote', ['<1@test>']), ('d', 'abort', ['<1@test>'])]
        )

    def test_failure_in_finish_is_logged_not_raised(self):
        self.delivery.fail_step = 'finish'
        with self.assertLogs('pyramid_txmail', 'ERROR') as logs, self.tm:
            self._send(1)
        self.assertIn('finish', logs.output[0])
        self.assertEqual(self.calls[-1], ('d', 'after_commit', ['<1@test>']))

    def test_failure_after_commit_is_logged_not_raised(self):
        self.delivery.fail_step = 'after_commit'
        with self.assertLogs('pyramid_txmail', 'ERROR') as logs, self.tm:
            self._send(1)
        self.assertIn('after_commit', logs.output[0])

    def test_savepoint_rollback_drops_later_messages(self):
        with self.tm:
            self._send(1)
            savepoint = self.tm.savepoint()
            self._send(2)
            savepoint.rollback()
            self._send(3)
        self.assertEqual(self.calls[0], ('d', 'vote', ['<1@test>', '<3@test>']))

    def test_savepoint_before_join_rollback_then_send_again(self):
        # Joining after a savepoint gets an AbortSavepoint, which unjoins the
        # data manager on rollback: the next send must join a new one.
        with self.tm:
            savepoint = self.tm.savepoint()
            self._send(1)
            savepoint.rollback()
            self._send(2)
        self.assertEqual(self.calls[0], ('d', 'vote', ['<2@test>']))

    def test_savepoint_with_mailer_joined_does_not_raise(self):
        with self.tm:
            self._send(1)
            self.tm.savepoint().rollback()
        self.assertEqual(self.calls[0], ('d', 'vote', ['<1@test>']))

    def test_next_transaction_gets_a_new_data_manager(self):
        with self.tm:
            first = self._join()
            self._send(1)
        with self.tm:
            self.assertIsNot(self._join(), first)
            self._send(2)
        votes = [c for c in self.calls if c[1] == 'vote']
        self.assertEqual(
            votes, [('d', 'vote', ['<1@test>']), ('d', 'vote', ['<2@test>'])]
        )
