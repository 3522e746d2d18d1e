"""The transaction data manager: mail follows the transaction's outcome.

One :class:`MailDataManager` joins each transaction that sends mail, however
many messages it sends. It holds prepared messages (bytes, not open files)
until the two-phase commit, then hands them to their deliveries:

* ``tpc_vote``: each delivery does its risky work (the queue writes and
  fsyncs); a failure here vetoes the whole transaction.
* ``tpc_finish``: each delivery publishes; nothing here may fail.
* ``tpc_abort`` / ``abort``: everything is dropped or undone.
* after the commit (an after-commit hook): network delivery and events,
  never inside the two-phase commit.
"""

from __future__ import annotations

import logging
from typing import Any

import transaction
from transaction.interfaces import IDataManagerSavepoint, ISavepointDataManager
from zope.interface import implementer

from .interfaces import IMailDelivery, IPendingMail
from .message import PreparedMail

log = logging.getLogger('pyramid_txmail')


@implementer(ISavepointDataManager)
class MailDataManager:
    """The mail of one transaction.

    ``closed`` becomes true once this data manager takes no more mail: it
    finished, or the transaction no longer carries its messages (abort, or
    a rollback that unjoined it). The mailer then joins a new one rather
    than adding mail that nothing would send; a transaction that is
    committing or committed refuses that join (``ValueError``). Mail added
    between its vote and its finish is voted at once.
    """

    def __init__(self, transaction_manager: transaction.TransactionManager):
        self.transaction_manager = transaction_manager
        self.mails: list[tuple[IMailDelivery, PreparedMail]] = []
        self.pending: list[IPendingMail] = []
        self.closed = False
        self.voted = False
        self.finished = False

    @classmethod
    def join(
        cls, transaction_manager: transaction.TransactionManager, key: object
    ) -> MailDataManager:
        """This transaction's data manager for ``key``, joining one if needed."""
        txn = transaction_manager.get()
        dm: MailDataManager | None
        try:
            dm = txn.data(key)
        except KeyError:
            dm = None
        if dm is None or dm.closed:
            dm = cls(transaction_manager)
            txn.join(dm)
            txn.addAfterCommitHook(dm.after_commit)
            txn.set_data(key, dm)
        return dm

    def add(self, delivery: IMailDelivery, mail: PreparedMail) -> None:
        if self.voted:
            # Sent while later data managers vote (zope.sqlalchemy commits
            # in its vote, running the session's after_commit listeners):
            # voted now, it goes with the rest; a raise vetoes the commit.
            self.pending.append(delivery.vote([mail]))
            return
        self.mails.append((delivery, mail))

    def sortKey(self) -> str:
        # Vote before one-phase database managers (zope.sqlalchemy uses
        # '~sqlalchemy:...' and commits in its vote): if the queue cannot be
        # written, the database has not committed yet and rolls back too.
        return 'pyramid_txmail'

    # -- abort before or instead of the two-phase commit
    def abort(self, txn: Any) -> None:
        # Also called after the after-commit hooks ("clean" phase), when the
        # messages are already out: it must only forget, never undo.
        self.mails.clear()
        self.closed = True

    # -- two-phase commit
    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        self.voted = True
        # Group by delivery, keeping send order within each.
        groups: dict[int, tuple[IMailDelivery, list[PreparedMail]]] = {}
        for delivery, mail in self.mails:
            groups.setdefault(id(delivery), (delivery, []))[1].append(mail)
        for delivery, mails in groups.values():
            # A raise vetoes the transaction; tpc_abort undoes earlier groups.
            self.pending.append(delivery.vote(mails))

    def tpc_finish(self, txn: Any) -> None:
        # Mail sent from now on (a later data manager's second phase, an
        # after-commit hook, a subscriber using this manager) would miss
        # every step: it must join anew, and so fail loudly.
        self.closed = self.finished = True
        self._each_pending('finish')
        self.mails.clear()

    def tpc_abort(self, txn: Any) -> None:
        # Also called after our tpc_finish when a later resource's fails:
        # the decision was commit, and what finish published must stay
        # (undoing part of it would send some of the mail and drop the rest).
        if not self.finished:
            self._each_pending('abort')
        self.pending.clear()
        self.mails.clear()
        self.closed = True

    def after_commit(self, status: bool) -> None:
        """After-commit hook: deliver and notify, only if committed."""
        if status:
            self._each_pending('after_commit')
        self.pending.clear()

    def _each_pending(self, step: str) -> None:
        # These steps run where raising would corrupt the commit or reach the
        # request: each failure is logged and the others still run.
        for pending in self.pending:
            try:
                getattr(pending, step)()
            except Exception:
                log.exception('mail delivery failed in %s', step)

    # -- savepoints
    def savepoint(self) -> MailSavepoint:
        return MailSavepoint(self)


@implementer(IDataManagerSavepoint)
class MailSavepoint:
    """Rolling back forgets the messages sent after the savepoint."""

    def __init__(self, dm: MailDataManager):
        self.dm = dm
        self.length = len(dm.mails)

    def rollback(self) -> None:
        del self.dm.mails[self.length :]
