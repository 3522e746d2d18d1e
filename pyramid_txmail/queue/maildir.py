"""The on-disk mail queue: a Maildir-style directory, one file per message.

:class:`MailQueue` implements the queue protocol of :mod:`.base` (the
processor and ``pyramid-txmail`` use nothing else) and, beside it, the
producer side that ``delivery.QueuedDelivery`` uses. Pure file system
work, no SMTP; the one thread, which closes the descriptors of sent
messages, belongs to :mod:`.locks`. The committing side writes a
message into ``tmp/`` during ``tpc_vote`` (:meth:`MailQueue.stage`: the
file and its content are fsync'ed, not yet the directory) and renames it
into ``new/`` in ``tpc_finish`` (:meth:`MailQueue.publish`, which fsyncs
``new/``: from then on the message survives a power loss). Processors take messages from
``new/`` with :meth:`MailQueue.claim` and record the outcome on the
:class:`Claim`. See ``docs/internals.rst`` ("The queue directory") for the
layout and the file format.

Two rules keep any number of processes on one directory from sending a
message twice:

* a file leaves ``new/``, ``cur/`` or ``hold/`` only while its mover holds
  its ``flock`` (claim, release, outcomes, recovery, hold, purge), and the
  mover checks, once it has the lock, that the name still points at the
  file it locked;
* a message is never in two of ``new/``, ``cur/``, ``deferred/``, ``hold/``,
  ``failed/`` at once: rewrites are renamed over the old file first, then
  moved, so a crash at any moment leaves exactly one copy.
"""

from __future__ import annotations

import builtins
import contextlib
import email.policy
import errno
import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import TracebackType

from ..exceptions import QueueError, UnknownMessage
from ..message import Envelope, PreparedMail
from . import legacy
from .base import Entry, Fault
from .groupsync import GroupSync
from .locks import _held, _unlock, close_soon
from .stored import FORMAT_VERSION, ID, Stored

__all__ = [
    'FORMAT_VERSION',
    'Claim',
    'Info',
    'MailQueue',
    'MaildirPass',
    'QueueError',
    'UnknownMessage',
]

log = logging.getLogger('pyramid_txmail.queue')

#: Subdirectories and the state each holds, as :meth:`MailQueue.counts` names it.
STATES = {'new': 'queued', 'cur': 'sending', 'deferred': 'deferred', 'failed': 'failed'}
#: Held messages (``pyramid-txmail hold``): never sent until released. Made
#: by the first hold, so it is not one of :data:`STATES`.
HOLD = 'hold'
#: Every state :meth:`MailQueue.list` can show, by subdirectory.
ALL_STATES = {**STATES, HOLD: 'held'}
#: Beside the subdirectories: the configuration fault that paused sending.
FAULT_FILE = 'fault.json'
#: Unfinished writes older than this are removed by recovery (the Maildir rule).
TMP_MAX_AGE = 36 * 3600.0

# The mode of a staged file whose commit is decided but which is not in
# new/ yet (see MailQueue._mark_committed); staged files are 0o600. Only
# this exact mode marks: a file system that ignores modes shows every file
# alike (vfat, CIFS, drvfs: 0755, 0700, 0777, ...), as does a queue an
# operator chmod'ed (chmod -R 700), and neither gives group execute alone.
_COMMITTED = 0o610
# Beside failed/ID: why the processor set it aside without rewriting it.
_REASON = '.reason'
# Errors opening or reading an entry that concern this process or the whole
# queue, not the entry: they end the pass (the next one tries again) instead
# of setting every entry aside.
_PROCESS_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.EINTR,
        errno.ENOTDIR,
    }
)
# O_NONBLOCK: a FIFO named like an entry must not block the open.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


#: The name :class:`Entry` had before the queue protocol.
Info = Entry


def _cause(exc: OSError) -> str:
    # OSError's str() repeats the file name, which the caller already gives.
    if exc.errno is not None:
        return f'[Errno {exc.errno}] {exc.strerror}'
    return str(exc)


class MailQueue:
    """A queue directory; see the module docstring.

    ``clock`` gives the time stamped into file names, metadata and mtimes,
    and the time compared with them. With ``create=False`` (the read-only
    commands) a missing queue is not created: :class:`QueueError` says
    there is none, or that it cannot be read.

    Run as root on a queue directory owned by another user (an operator's
    ``sudo pyramid-txmail retry``), every file and directory it creates is
    given to the queue directory's owner and group, so the application
    can still read and replace it.

    The class attributes ``_opener``, ``_pread``, ``_write``, ``_fsync`` and
    ``_rename`` are the system calls used for reads and durable writes. They
    are seams for tests: the suite runs as root, which ignores permissions,
    and cannot fill a disk, so EACCES, EIO and ENOSPC are injected through a
    subclass.
    """

    _opener: Callable[..., int] = staticmethod(os.open)
    _pread: Callable[[int, int, int], bytes] = staticmethod(os.pread)
    _write: Callable[[int, bytes | memoryview], int] = staticmethod(os.write)
    _fsync: Callable[[int], None] = staticmethod(os.fsync)
    _rename: Callable[[str, str], None] = staticmethod(os.rename)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        create: bool = True,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        #: For logs, the command line and the processor registry: the path.
        self.name = self.path
        self.clock: Callable[[], float] = clock
        self._last_micros = 0
        # Entries that could be neither read nor set aside: logged once.
        self._reported: set[str] = set()
        # Reasons not written yet for lack of space: {id: (reason, delivered)}.
        self._unnoted: dict[str, tuple[str, list[str]]] = {}
        # Committed, but the rename into new/ failed (ENOSPC, EIO): recovery
        # publishes them, and leaves them in tmp/ until it can.
        self._unpublished: set[str] = set()
        self._created = create
        # Whether fault.json may exist: clear_fault() then removes it. Set
        # by record_fault() and at the start of each pass (another process
        # may have recorded one), so that sending costs no system call per
        # message for a file that is almost never there.
        self._fault_maybe = True
        # One group commit per directory and process (see _sync_dir).
        self._syncs: dict[str, GroupSync] = {}
        self._syncs_pid = os.getpid()
        made = []
        for sub in ('', 'tmp', *STATES) if create else ():
            where = self._p(sub) if sub else self.path
            if not os.path.isdir(where):
                made.append(where)
            try:
                os.makedirs(where, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise QueueError(
                    f'cannot create mail queue {where}: {_cause(exc)}'
                ) from exc
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise QueueError(
                f'no mail queue at {self.path}: nothing has been queued there yet'
            ) from None
        except OSError as exc:
            raise QueueError(
                f'cannot read mail queue {self.path}: {_cause(exc)}'
            ) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise QueueError(f'cannot read mail queue {self.path}: not a directory')
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0 and st.st_uid != 0:
            self._owner = (st.st_uid, st.st_gid)
            for where in made:
                os.chown(where, *self._owner)

    def __repr__(self) -> str:
        return f'<MailQueue {self.path}>'

    def _p(self, sub: str, name: str | None = None) -> str:
        # Not os.path.join, a few times slower: this runs several times per
        # message sent, and ``sub`` and ``name`` are our own names or ids.
        if name is None:
            return f'{self.path}/{sub}'
        return f'{self.path}/{sub}/{name}'

    def _new_id(self) -> str:
        # Strictly increasing within this queue object, so that messages
        # staged in the same microsecond still sort in the order sent.
        micros = max(int(self.clock() * 1_000_000), self._last_micros + 1)
        self._last_micros = micros
        return f'{micros:016d}.{os.getpid()}.{secrets.token_hex(8)}'

    def _ids(self, sub: str, *, every: bool = False) -> list[str]:
        """Sorted message ids in ``sub`` (queue order); all names if ``every``."""
        where = self._p(sub)
        try:
            with os.scandir(where) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            if self._created and sub != HOLD:  # hold/ is made by the first hold
                raise QueueError(f'cannot read mail queue {where}: missing') from None
            # Not made yet: a queue the read-only commands look at without
            # creating it, e.g. one that only repoze.sendmail has written.
            return []
        except OSError as exc:
            raise QueueError(f'cannot read mail queue {where}: {_cause(exc)}') from exc
        return sorted(n for n in names if every or ID.fullmatch(n))

    # -- committing side

    def stage(self, mail: PreparedMail) -> str:
        """Write ``mail`` to ``tmp/`` and fsync it; return its queue id.

        Raises :class:`QueueError` (leaving no file behind) when it cannot.
        ``tmp/`` itself is not fsync'ed: a staged message has no use after a
        crash (an unfinished commit is presumed aborted), and the one
        directory fsync that matters, ``new/``'s, is made by
        :meth:`publish`, for the file's name in ``new/``.
        """
        mail_id = self._new_id()
        stored = Stored(
            id=mail_id,
            message_id=mail.message_id,
            sender=mail.envelope.sender,
            recipients=mail.envelope.recipients,
            queued_at=self.clock(),
            # For listings, without parsing the message.
            subject=_subject(mail.data) if mail.subject is None else mail.subject,
        )
        path = self._p('tmp', mail_id)
        fd = self._create(path)
        try:
            self._write_all(fd, path, stored, mail.data)
        finally:
            os.close(fd)
        return mail_id

    def publish(self, ids: Iterable[str]) -> None:
        """Move staged messages into ``new/``: processors see them now.

        Runs in ``tpc_finish``, which must not fail: errors are logged. A
        message that cannot be renamed stays in ``tmp/`` (and is reported)
        rather than being lost silently; ``tmp/`` is then fsync'ed (the vote
        fsyncs only the file), so that it survives a power loss there.
        """
        stuck = False
        for mail_id in ids:
            try:
                self._rename(self._p('tmp', mail_id), self._p('new', mail_id))
            except Exception:
                self._unpublished.add(mail_id)
                stuck = True
                log.exception('cannot publish %s into %s', mail_id, self._p('new'))
                self._mark_committed(mail_id)
        if stuck:
            self._sync_dir('tmp', raising=False)
        # Without this a power loss could leave a committed message in tmp/,
        # where the 36-hour cleanup would drop it.
        self._sync_dir('new', raising=False)

    def _mark_committed(self, mail_id: str) -> None:
        """Mark a staged file as committed: mode ``0o610`` (u=rw,g=x).

        Postfix marks a finished queue file by its mode too. Recovery in any
        process, after a restart too, publishes a marked file in ``tmp/``
        instead of removing it after :data:`TMP_MAX_AGE` as an unfinished
        commit. ``chmod`` needs no free block, so it works on the full disk
        that made the rename fail. Never raises.
        """
        path = self._p('tmp', mail_id)
        try:
            fd = self._opener(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, _COMMITTED)
                self._fsync(fd)
                if stat.S_IMODE(os.fstat(fd).st_mode) != _COMMITTED:
                    # vfat, CIFS without the Unix extensions: chmod
                    # succeeds, and every file still shows the mount's mode.
                    raise OSError(errno.EPERM, 'the file system does not keep modes')
            finally:
                os.close(fd)
        except OSError as exc:
            log.error(
                'cannot mark %s as committed: %s; it is published by this '
                'process, but if it stops first it is removed as an '
                'unfinished commit',
                path,
                _cause(exc),
            )

    def discard(self, ids: Iterable[str]) -> None:
        """Remove staged messages (the transaction aborted). Never raises."""
        for mail_id in ids:
            try:
                os.unlink(self._p('tmp', mail_id))
            except FileNotFoundError:
                pass
            except Exception:
                log.exception('cannot discard %s', self._p('tmp', mail_id))

    # -- processor side

    def promote_due(self, horizon: float | None = None) -> int:
        """Move deferred messages whose due time (mtime) has come into ``new/``.

        A due time more than ``horizon`` seconds ahead cannot have been set
        by the backoff: the clock went back since. Such a message is due now
        rather than held for as long as the clock jumped.
        """
        now = self.clock()
        moved = 0
        for mail_id in self._ids('deferred'):
            try:
                due = os.stat(self._p('deferred', mail_id)).st_mtime
                if now < due <= now + (math.inf if horizon is None else horizon):
                    continue
                # Two processors may both promote: the loser gets ENOENT. (A
                # full send-and-defer cycle between our stat and rename could
                # make us promote early; early, never twice.)
                self._rename(self._p('deferred', mail_id), self._p('new', mail_id))
            except FileNotFoundError:
                continue
            moved += 1
        return moved

    def recover(self, stale_after: float) -> int:
        """Return claims of dead processors to ``new/``; settle ``tmp/``.

        A file in ``tmp/`` marked committed (see :meth:`_mark_committed`) is
        published; an unmarked one older than :data:`TMP_MAX_AGE` is an
        unfinished commit, and removed. A ``tmp/`` that cannot be read is
        logged, and the pass goes on.

        A ``cur/`` entry is taken back when its lock is free (its processor is
        gone: the kernel drops a dead process's locks) and it was claimed more
        than ``stale_after`` seconds ago (a guard for file systems where
        ``flock`` does not work). Returns how many claims were recovered.
        """
        now = self.clock()
        recovered = 0
        for mail_id, (reason, delivered) in list(self._unnoted.items()):
            if os.path.lexists(self._p('failed', mail_id)):
                self._note(mail_id, reason, delivered)
            else:
                del self._unnoted[mail_id]  # retried or purged meanwhile
        for mail_id in self._ids('cur'):
            path = self._p('cur', mail_id)
            try:
                locked = self._lock(path)
            except OSError as exc:
                # Not ours to open (another user's claim): once stale by
                # its mtime, it is set aside rather than failing every pass.
                self._unusable(exc, path)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime <= now - stale_after:
                        self._set_aside('cur', mail_id, f'cannot open: {_cause(exc)}')
                continue
            if locked is None:
                continue  # gone, or a live processor holds it
            fd, st = locked
            try:
                if st.st_mtime > now - stale_after:
                    continue
                os.rename(path, self._p('new', mail_id))
            finally:
                _unlock(fd)
            log.warning('recovered %s from a processor that stopped', mail_id)
            recovered += 1
        try:
            self._settle_tmp(now)
        except QueueError as exc:
            # Logged, not raised: a tmp/ that cannot be read (removed by
            # hand, say) must not keep what is in new/ and cur/ from being
            # sent; commits fail meanwhile, and say so.
            log.error('%s; committed messages not published yet wait', exc)
        return recovered

    def _settle_tmp(self, now: float) -> None:
        """Publish the committed files in ``tmp/``; remove the unfinished
        commits older than :data:`TMP_MAX_AGE`."""
        stale_tmp = now - TMP_MAX_AGE
        for name in self._ids('tmp', every=True):
            path = self._p('tmp', name)
            try:
                st = os.lstat(path)
                if _marked(name, st):
                    self._unpublished.add(name)  # committed, by any process
                elif name not in self._unpublished and st.st_mtime < stale_tmp:
                    os.unlink(path)
                    log.warning('removed %s, left by an unfinished commit', path)
            except OSError as exc:  # not ours (a directory, say): left alone
                if exc.errno != errno.ENOENT and path not in self._reported:
                    self._reported.add(path)
                    log.error('cannot remove %s: %s', path, _cause(exc))
        unpublished = self._unpublished.copy()
        for mail_id in unpublished:
            try:
                self._rename(self._p('tmp', mail_id), self._p('new', mail_id))
            except FileNotFoundError:
                pass  # removed by hand
            except OSError:
                continue  # tried again by the next pass
            self._unpublished.discard(mail_id)
        if unpublished:
            self._sync_dir('new', raising=False)

    def pending(self) -> list[str]:
        """Ids of the messages in ``new/``, in queue order."""
        return self._ids('new')

    def start_pass(
        self, *, stale_after: float, horizon: float | None = None
    ) -> MaildirPass:
        """Begin a processor's pass: recover dead processors' claims (see
        :meth:`recover`), adopt a repoze.sendmail queue left here, promote
        due deferred messages (see :meth:`promote_due`); the pass then
        claims what is in ``new/`` now, in queue order."""
        self._fault_maybe = True
        self.recover(stale_after)
        legacy.adopt(self)
        self.promote_due(horizon=horizon)
        return MaildirPass(self, self.pending())

    def claim(self, mail_id: str) -> Claim | None:
        """Take ``new/ID`` for sending; ``None`` if another processor has it.

        Race-safe across threads and processes: only one caller gets a
        :class:`Claim` for a given message. An entry that cannot be opened,
        read, parsed or validated (its mode or owner, a directory, damaged
        or foreign content) is moved to ``failed/`` with the reason and
        ``None`` returned, so that it never holds up the entries behind it;
        one that cannot even be moved is skipped (and logged once).
        """
        path = self._p('new', mail_id)
        # open + flock: a second claimant blocks here (LOCK_NB: it skips).
        try:
            locked = self._lock(path)
        except OSError as exc:
            self._unusable(exc, path)
            self._set_aside('new', mail_id, f'cannot open: {_cause(exc)}')
            return None
        if locked is None:
            return None
        fd, st = locked
        if not stat.S_ISREG(st.st_mode):
            self._set_aside('new', mail_id, 'not a regular file', fd)
            return None
        try:
            # Claimed mtime is what recovery compares with stale_after.
            now = self.clock()
            os.utime(fd, (now, now))
            self._rename(path, self._p('cur', mail_id))
        except BaseException as exc:
            _unlock(fd)
            if isinstance(exc, FileNotFoundError):
                return None  # removed by hand since we locked it
            raise
        try:
            stored, data = _read(fd, st.st_size, self._pread)
        except OSError as exc:
            self._unusable(exc, path, fd)
            self._set_aside('cur', mail_id, f'cannot read: {_cause(exc)}', fd)
            return None
        except ValueError as exc:
            # Not a message we wrote, or damaged: keep it for a human.
            self._set_aside('cur', mail_id, str(exc), fd)
            return None
        return Claim(self, mail_id, fd, stored, data)

    def _unusable(self, exc: OSError, path: str, fd: int | None = None) -> None:
        """Raise QueueError when ``exc`` is this process's trouble, not the entry's."""
        if exc.errno in _PROCESS_ERRNOS:
            if fd is not None:
                _unlock(fd)
            raise QueueError(f'cannot read {path}: {_cause(exc)}') from exc

    def _set_aside(
        self, sub: str, mail_id: str, reason: str, fd: int | None = None
    ) -> bool:
        """Move an entry that cannot be sent into ``failed/``, unchanged,
        with ``reason`` beside it; return whether it moved.

        Nothing is rewritten, so this works on a full disk and on a file we
        may not read. An entry that cannot be moved either stays where it
        is; it is logged once per queue object, not on every pass.
        """
        source = self._p(sub, mail_id)
        try:
            self._rename(source, self._p('failed', mail_id))
        except FileNotFoundError:
            return False  # moved or removed meanwhile
        except OSError as exc:
            if mail_id not in self._reported:
                self._reported.add(mail_id)
                log.error(
                    'unreadable queue file %s (%s) cannot be moved to failed/: '
                    '%s; skipping it',
                    source,
                    reason,
                    _cause(exc),
                )
            return False
        finally:
            if fd is not None:
                _unlock(fd)
        log.error('unreadable queue file %s moved to failed/: %s', mail_id, reason)
        self._note(mail_id, f'unreadable: {reason}')
        return True

    def _note(self, mail_id: str, reason: str, delivered: Iterable[str] = ()) -> None:
        """Keep ``reason``, and the recipients who have the message already,
        beside ``failed/ID`` (``ID.reason``, one JSON object).

        Best effort, the reason being logged too: on a full disk it is
        tried again by each :meth:`recover` (once a pass) while the entry
        is in ``failed/``.
        """
        delivered = list(delivered)
        path = self._p('failed', mail_id + _REASON)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        record = json.dumps({'reason': reason, 'delivered': delivered})
        try:
            fd = self._create(path)
            try:
                view = memoryview(record.encode('ascii'))
                while view:
                    view = view[self._write(fd, view) :]
            finally:
                os.close(fd)
        except (OSError, QueueError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            self._unnoted[mail_id] = (reason, delivered)
            if 'note ' + mail_id not in self._reported:
                self._reported.add('note ' + mail_id)
                log.warning('cannot record why %s failed: %s', mail_id, exc)
            return
        self._unnoted.pop(mail_id, None)

    def _noted(self, mail_id: str) -> tuple[str, list[str]] | None:
        """The reason and delivered recipients :meth:`_note` kept, if any."""
        try:
            with open(self._p('failed', mail_id + _REASON), 'rb') as f:
                record = json.loads(f.read(65536))
            reason, delivered = record['reason'], record['delivered']
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not isinstance(reason, str) or not isinstance(delivered, list):
            return None
        return reason, [r for r in delivered if isinstance(r, str)]

    def _reason(self, mail_id: str) -> str | None:
        noted = self._noted(mail_id)
        return None if noted is None else noted[0]

    def _forget(self, mail_id: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._p('failed', mail_id + _REASON))

    def _lock(self, path: str) -> tuple[int, os.stat_result] | None:
        """Open and ``flock`` ``path``: (fd, stat), or None if gone or held."""
        try:
            fd = _held(self._opener, path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None  # another processor moved it since our listing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Between our open and our lock, the holder may have finished and
            # moved this file on: the name must still be the file we locked.
            st = os.fstat(fd)
            now_at = os.stat(path)
        except BaseException as exc:
            _unlock(fd)
            if isinstance(exc, (BlockingIOError, FileNotFoundError)):
                return None  # held by another processor, or moved on
            raise
        if (st.st_dev, st.st_ino) != (now_at.st_dev, now_at.st_ino):
            _unlock(fd)
            return None
        return fd, st

    # -- durable writes

    def _create(self, path: str) -> int:
        try:
            fd = self._opener(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise QueueError(f'cannot write mail queue {path}: {_cause(exc)}') from exc
        if self._owner is not None:
            # Root writing into another user's queue: the file is theirs.
            try:
                os.fchown(fd, *self._owner)
            except OSError as exc:  # pragma: no cover - root can always chown
                os.close(fd)
                os.unlink(path)
                raise QueueError(
                    f'cannot write mail queue {path}: {_cause(exc)}'
                ) from exc
        return fd

    def _write_all(self, fd: int, path: str, stored: Stored, data: bytes) -> None:
        """Write the metadata line and ``data`` to ``fd`` and fsync it.

        On failure the file is removed and :class:`QueueError` raised.
        """
        try:
            view = memoryview(stored.encode() + b'\n' + data)
            while view:
                view = view[self._write(fd, view) :]
            self._fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise QueueError(f'cannot write mail queue {path}: {_cause(exc)}') from exc

    def _sync_dir(self, sub: str, *, raising: bool) -> None:
        """fsync ``sub``, shared with other threads syncing it meanwhile:
        concurrent commits pay one directory fsync between them."""
        where = self._p(sub)
        if self._syncs_pid != os.getpid():  # pragma: no cover - in a forked child
            # A forked child: the parent's threads, which may have been
            # mid-sync at the fork, are not here to finish.
            self._syncs, self._syncs_pid = {}, os.getpid()
        group = self._syncs.get(sub)
        if group is None:
            # Looked up at each call, so that the seam can be replaced.
            group = self._syncs.setdefault(
                sub, GroupSync(where, lambda fd: self._fsync(fd))
            )
        try:
            group.sync()
        except OSError as exc:
            if raising:
                raise QueueError(
                    f'cannot write mail queue {where}: {_cause(exc)}'
                ) from exc
            log.error('cannot sync mail queue %s: %s', where, _cause(exc))

    def _rewrite(
        self,
        mail_id: str,
        path: str,
        stored: Stored,
        data: bytes,
        dest: str,
        mtime: float,
    ) -> None:
        """Replace the locked file at ``path`` with new metadata, into ``dest``.

        The new version is written and fsync'ed under a private name in
        ``tmp/``, renamed over ``path`` (so there is never a second copy,
        whatever moment a crash falls on), then moved into ``dest/``. It stays
        locked until moved, so no other processor or recovery can take it in
        between.
        """
        tmp = self._p('tmp', f'{mail_id}.{secrets.token_hex(4)}')
        out = self._create(tmp)
        try:
            self._write_all(out, tmp, stored, data)
        finally:
            os.close(out)
        # Locked before it has the name of a message, through a descriptor
        # opened by name: _held opens it again if a fork came in between.
        fd = _held(self._opener, tmp, _OPEN_FLAGS)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.utime(fd, (mtime, mtime))
                self._rename(tmp, path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise QueueError(
                    f'cannot write mail queue {path}: {_cause(exc)}'
                ) from exc
            target = self._p(dest, mail_id)
            try:
                self._rename(path, target)
            except OSError as exc:
                raise QueueError(
                    f'cannot move {path} to {target}: {_cause(exc)}'
                ) from exc
        finally:
            _unlock(fd)
        self._sync_dir(dest, raising=False)

    # -- inspection and administration (the command line)

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (``queued``, ``sending``,
        ``deferred``, ``failed``, ``held``); then ``unreadable``, those of
        the failed ones the processor set aside as unreadable (see
        :meth:`unreadable`), ``legacy``, the repoze.sendmail files here,
        waiting or rejected (the processor adopts them), and
        ``unpublished``, committed messages still in ``tmp/`` for want of
        room in ``new/``; left out, the reason logged, when ``tmp/`` cannot
        be read, so that the other counts still show. Read-only."""
        counts = {state: len(self._ids(sub)) for sub, state in ALL_STATES.items()}
        counts['unreadable'] = self.unreadable()
        counts['legacy'] = len(legacy.scan(self, failed=None))
        try:
            counts['unpublished'] = self._unpublished_count()
        except QueueError as exc:
            log.error('cannot count the unpublished messages: %s', exc)
        return counts

    def _unpublished_count(self) -> int:
        """Committed messages still in ``tmp/``: their rename into ``new/``
        failed (a full disk), and recovery publishes them when it can."""
        marked = 0
        for name in self._ids('tmp', every=True):
            with contextlib.suppress(OSError):  # gone meanwhile
                marked += _marked(name, os.lstat(self._p('tmp', name)))
        return marked

    def list(
        self, states: Iterable[str] | None = None, *, failed: bool = False
    ) -> builtins.list[Entry]:
        """The messages in ``states`` (every state by default), in queue order.

        ``states`` are any of ``queued``, ``sending``, ``deferred``,
        ``held``, ``failed`` and ``legacy``; ``failed=True`` is
        ``states=['failed']``. repoze.sendmail's files come first: those
        waiting to be adopted (state ``legacy``; one that cannot be read
        says why in ``last_error``) and those it had rejected (``failed``),
        their ids the files' paths in the queue directory (see
        :func:`.legacy.scan`). The metadata line of each of our files is
        read, and the message's headers only if the metadata has no
        ``subject`` (files written before it had one). An entry that cannot
        be read or is not a valid queue file is listed with ``last_error``
        ``'unreadable: '`` and the reason (its age from its id), never
        failing the listing. For an entry the processor set aside,
        ``last_error`` is the reason it recorded then. Read-only.
        """
        if states is None:
            states = ('failed',) if failed else (*ALL_STATES.values(), 'legacy')
        wanted = set(states)
        entries: builtins.list[Entry] = []
        if 'legacy' in wanted or 'failed' in wanted:
            # Which of scan's two kinds: waiting, rejected, or both (None).
            kind = None if {'legacy', 'failed'} <= wanted else 'failed' in wanted
            entries += legacy.scan(self, failed=kind)
        subs = [sub for sub, state in ALL_STATES.items() if state in wanted]
        listing = sorted((mail_id, sub) for sub in subs for mail_id in self._ids(sub))
        now = self.clock()
        for mail_id, sub in listing:
            path = self._p(sub, mail_id)
            noted = self._reason(mail_id) if sub == 'failed' else None
            try:
                mtime, stored, subject = _head(path, self._opener)
            except FileNotFoundError:
                continue  # moved on since the listing
            except OSError as exc:
                reason = f'unreadable: cannot open: {_cause(exc)}'
            except ValueError as exc:
                reason = f'unreadable: {exc}'
            else:
                state = ALL_STATES[sub]
                entries.append(
                    _entry(mail_id, state, stored, now, mtime, noted, subject)
                )
                continue
            age = now - int(mail_id[:16]) / 1_000_000
            entries.append(Entry(mail_id, ALL_STATES[sub], age, 0, (), noted or reason))
        return entries

    def read(self, mail_id: str) -> tuple[Entry, bytes]:
        """One message as it is stored: its :class:`Entry` and its bytes.

        Read-only, and no lock is taken (a processor may be sending it).
        Raises :class:`UnknownMessage` for an id in no state, and
        :class:`QueueError` when the entry cannot be read.
        """
        valid = ID.fullmatch(mail_id) is not None
        # A processor may move it between two states while we look: twice
        # round is enough for any move to have finished.
        for sub in [*ALL_STATES] * 2 if valid else ():
            path = self._p(sub, mail_id)
            try:
                fd = self._opener(path, _OPEN_FLAGS)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise QueueError(f'cannot read {path}: {_cause(exc)}') from exc
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise QueueError(f'cannot read {path}: not a regular file')
                try:
                    stored, data = _read(fd, st.st_size, self._pread)
                except OSError as exc:
                    raise QueueError(f'cannot read {path}: {_cause(exc)}') from exc
                except ValueError as exc:
                    raise QueueError(f'cannot read {path}: {exc}') from exc
            finally:
                os.close(fd)
            noted = self._reason(mail_id) if sub == 'failed' else None
            now = self.clock()
            subject = stored.subject if stored.subject is not None else _subject(data)
            entry = _entry(
                mail_id, ALL_STATES[sub], stored, now, st.st_mtime, noted, subject
            )
            return entry, data
        raise UnknownMessage(f'no message {mail_id!r} in {self.path}')

    def unreadable(self) -> int:
        """How many entries in ``failed/`` the processor set aside as
        unreadable (see :meth:`claim`); :meth:`counts` counts them as failed."""
        names = self._ids('failed', every=True)
        return sum(
            (self._reason(name[: -len(_REASON)]) or '').startswith('unreadable:')
            for name in names
            if name.endswith(_REASON)
        )

    def retry(self, ids: Iterable[str] | None = None) -> int:
        """Put failed and deferred messages back into ``new/``, due now;
        return how many.

        ``ids=None`` retries every failed and deferred message. A failed
        one gets a fresh start: attempts 0 and ``queued_at`` now, so
        ``mail.max_age`` counts again from the retry (the last error is kept
        for reference); a deferred one is only made due now, as
        :meth:`flush` does. Raises :class:`UnknownMessage` for an id that is
        neither failed nor deferred, before changing anything.
        """
        wanted = self._resolve(ids, ('failed', 'deferred'))
        now = self.clock()
        done = 0
        for mail_id, sub in wanted:
            if sub == 'deferred':
                done += self._due_now(mail_id)
                continue
            path = self._p(sub, mail_id)
            try:
                locked = self._lock(path)
            except OSError:
                # We may not open it (not our file): back unchanged; if the
                # processor cannot open it either, it sets it aside again.
                locked = None
                with contextlib.suppress(FileNotFoundError):
                    self._rename(path, self._p('new', mail_id))
                    done += 1
            if locked is None:
                self._forget(mail_id)
                continue  # else another retry or purge took it
            fd, st = locked
            try:
                try:
                    if not stat.S_ISREG(st.st_mode):
                        raise ValueError('not a regular file')
                    stored, data = _read(fd, st.st_size, self._pread)
                except (OSError, ValueError):
                    # Unreadable: back unchanged; a claim will fail it again.
                    os.rename(path, self._p('new', mail_id))
                else:
                    # Those who have it already (the processor noted them
                    # when it could not record a partial acceptance).
                    _, delivered = self._noted(mail_id) or ('', [])
                    left = tuple(r for r in stored.recipients if r not in delivered)
                    if left:
                        stored = replace(
                            stored, attempts=0, queued_at=now, recipients=left
                        )
                        self._rewrite(mail_id, path, stored, data, 'new', now)
                    else:
                        os.unlink(path)
                        log.info('%s: every recipient has it already', mail_id)
            finally:
                _unlock(fd)
            self._forget(mail_id)
            done += 1
        self._sync_dir('new', raising=False)
        return done

    def purge(self, ids: Iterable[str] | None = None, *, failed: bool = False) -> int:
        """Delete messages; return how many.

        ``ids`` may be in any state but ``sending`` (``held`` too); with ``failed=True``
        only the failed area is searched, and ``ids=None`` means every failed
        message. Raises :class:`UnknownMessage` for an id not found (or
        being sent), before deleting anything.
        """
        if ids is None and not failed:
            raise ValueError('purge: give message ids, or failed=True')
        subs = ('failed',) if failed else ('new', 'deferred', HOLD, 'failed')
        done = 0
        for mail_id, sub in self._resolve(ids, subs):
            path = self._p(sub, mail_id)
            try:
                locked = self._lock(path)
            except OSError:
                # Not ours to open, so no processor of ours can claim it.
                locked = None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    done += 1
            if locked is None:
                self._forget(mail_id)
                continue  # else claimed or moved meanwhile: not ours to delete
            fd, st = locked
            try:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            finally:
                _unlock(fd)
            self._forget(mail_id)
            done += 1
        return done

    def flush(self) -> int:
        """Make every deferred message due now (into ``new/``); return how
        many. The processor sends them on its next pass."""
        done = sum(self._due_now(mail_id) for mail_id in self._ids('deferred'))
        self._sync_dir('new', raising=False)
        return done

    def _due_now(self, mail_id: str) -> int:
        """Move ``deferred/ID`` into ``new/``: 1, or 0 if it moved on meanwhile."""
        # As promote_due does: no lock, two movers race and one gets ENOENT.
        try:
            self._rename(self._p('deferred', mail_id), self._p('new', mail_id))
        except FileNotFoundError:
            return 0
        return 1

    def hold(self, ids: Iterable[str]) -> int:
        """Move queued or deferred messages into ``hold/``; return how many.

        A held message is never sent until :meth:`release`. One being sent
        cannot be held: :class:`QueueError` says so (those before it in
        ``ids`` are held), as does :class:`UnknownMessage` for an id in no
        state, before anything is held. One held already is left as it is.
        """
        ids = builtins.list(ids)
        self._resolve(ids, ('new', 'deferred', HOLD))  # unknown, or being sent
        self._make(HOLD)
        done = 0
        for mail_id in ids:
            # A processor may move it meanwhile (deferred -> new -> cur ->
            # deferred): each round follows one move; a few are plenty.
            for _ in range(5):
                moved = self._move_locked(mail_id, ('new', 'deferred', HOLD), HOLD)
                if moved is not None:
                    done += moved
                    break
            else:
                raise QueueError(f'{mail_id} is being sent now; try again later')
        self._sync_dir(HOLD, raising=False)
        return done

    def release(self, ids: Iterable[str]) -> int:
        """Move held messages back into ``new/``, due now; return how many.

        Raises :class:`UnknownMessage` for an id that is not held, before
        releasing anything.
        """
        done = 0
        for mail_id, _ in self._resolve(ids, (HOLD,)):
            done += self._move_locked(mail_id, (HOLD,), 'new') or 0
        self._sync_dir('new', raising=False)
        return done

    def _move_locked(
        self, mail_id: str, subs: tuple[str, ...], dest: str
    ) -> int | None:
        """Move ``mail_id`` from the first of ``subs`` holding it into
        ``dest``, under its lock: 1 if moved, 0 if it was in ``dest``
        already or is gone, None if it is locked (being sent) or moved on
        meanwhile (look again). Raises QueueError while it is being sent."""
        sub = next(
            (s for s in subs if os.path.lexists(self._p(s, mail_id))),
            None,
        )
        if sub is None:
            if os.path.lexists(self._p('cur', mail_id)):
                raise QueueError(f'{mail_id} is being sent now; try again later')
            return 0  # purged meanwhile
        if sub == dest:
            return 0
        path = self._p(sub, mail_id)
        try:
            locked = self._lock(path)
        except OSError as exc:
            raise QueueError(f'cannot move {path}: {_cause(exc)}') from exc
        if locked is None:
            return None
        fd, _ = locked
        try:
            self._rename(path, self._p(dest, mail_id))
        except FileNotFoundError:
            return None  # promoted from deferred/ meanwhile: look again
        except OSError as exc:
            raise QueueError(f'cannot move {path} to {dest}/: {_cause(exc)}') from exc
        finally:
            _unlock(fd)
        return 1

    def _make(self, sub: str) -> None:
        """Create the subdirectory ``sub`` if missing (given to the queue's owner)."""
        where = self._p(sub)
        try:
            os.mkdir(where, 0o700)
        except FileExistsError:
            return
        except OSError as exc:  # pragma: no cover - root can always mkdir
            raise QueueError(f'cannot create {where}: {_cause(exc)}') from exc
        if self._owner is not None:
            os.chown(where, *self._owner)

    # -- the standing configuration fault

    def record_fault(self, reason: str) -> None:
        """Note that sending is paused by a configuration fault (a refused
        login, no STARTTLS), for ``status`` and ``list`` to show.

        Kept in ``fault.json`` until :meth:`clear_fault`; the time since
        when is that of the first fault in a row. Never raises: a fault
        that cannot be written is logged.
        """
        self._fault_maybe = True
        fault = self.read_fault()
        since = self.clock() if fault is None else fault.since
        path = self._p(FAULT_FILE)
        tmp = self._p('tmp', f'{FAULT_FILE}.{secrets.token_hex(4)}')
        record = json.dumps({'reason': reason, 'since': since}).encode('ascii')
        try:
            fd = self._create(tmp)
            try:
                self._write(fd, record)
            finally:
                os.close(fd)
            self._rename(tmp, path)
        except (OSError, QueueError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning('cannot record the configuration fault in %s: %s', path, exc)

    def clear_fault(self) -> None:
        """Sending works again: forget the fault :meth:`record_fault` noted.
        Never raises.

        Called after every message sent: only the first call of a pass
        (see :meth:`start_pass`) and those after a :meth:`record_fault`
        look for the file. A fault another process records during a pass
        is cleared by the next pass that sends.
        """
        if not self._fault_maybe:
            return
        try:
            os.unlink(self._p(FAULT_FILE))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning('cannot remove %s: %s', self._p(FAULT_FILE), _cause(exc))
            return
        self._fault_maybe = False

    def read_fault(self) -> Fault | None:
        """The standing configuration fault, or ``None`` when there is none
        (or it cannot be read). Read-only."""
        try:
            with open(self._p(FAULT_FILE), 'rb') as f:
                record = json.loads(f.read(65536))
        except (OSError, ValueError):
            return None
        if not (
            isinstance(record, dict)
            and isinstance(record.get('reason'), str)
            and isinstance(record.get('since'), (int, float))
        ):
            return None
        return Fault(record['reason'], float(record['since']))

    def _resolve(
        self, ids: Iterable[str] | None, subs: tuple[str, ...]
    ) -> builtins.list[tuple[str, str]]:
        """(id, subdirectory) for each id, or every message in ``subs``."""
        if ids is None:
            return [(mail_id, sub) for sub in subs for mail_id in self._ids(sub)]
        found = []
        for mail_id in ids:
            valid = ID.fullmatch(mail_id) is not None
            sub = next(
                (s for s in subs if valid and os.path.lexists(self._p(s, mail_id))),
                None,
            )
            if sub is None and valid and os.path.lexists(self._p('cur', mail_id)):
                raise QueueError(f'{mail_id} is being sent now; try again later')
            if sub is None:
                where = ' or '.join(f'{s}/' for s in subs)
                raise UnknownMessage(f'no message {mail_id!r} in {self.path} ({where})')
            found.append((mail_id, sub))
        return found


def _marked(name: str, st: os.stat_result) -> bool:
    """Whether the ``tmp/`` entry ``name`` is a committed message (see
    :meth:`MailQueue._mark_committed`)."""
    return (
        stat.S_IMODE(st.st_mode) == _COMMITTED
        and stat.S_ISREG(st.st_mode)
        and ID.fullmatch(name) is not None
    )


def _head(path: str, opener: Callable[..., int]) -> tuple[float, Stored, str | None]:
    """The mtime, checked metadata line and Subject of the queue file at
    ``path`` (the Subject from the metadata, or else the message's headers)."""
    fd = opener(path, _OPEN_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError('not a regular file')
    with open(fd, 'rb') as f:
        stored = Stored.decode(f.readline())
        if stored.subject is not None:
            return st.st_mtime, stored, stored.subject
        return st.st_mtime, stored, _subject(f.read(_HEADER_LIMIT))


# Enough of a message to hold its headers, for the Subject of older files.
_HEADER_LIMIT = 256 * 1024
_SUBJECT = re.compile(rb'^subject:(.*(?:\r?\n[ \t].*)*)', re.IGNORECASE | re.MULTILINE)
_HEADERS_END = re.compile(rb'\r?\n\r?\n')


def _subject(data: bytes) -> str | None:
    """The decoded Subject header of the message ``data``; None if none.

    Found with a pattern, not a full parse: it runs in ``tpc_vote`` for
    each message, and the listing needs no more than this one header.
    """
    end = _HEADERS_END.search(data)
    head = data if end is None else data[: end.start()]
    found = _SUBJECT.search(head)
    if found is None:
        return None
    raw = found.group(1)
    folded = re.sub(rb'\r?\n(?=[ \t])', b'', raw).strip()
    # An unstructured header: its parser takes anything (RFC 2047 words
    # decoded, the rest as it is).
    return str(
        email.policy.default.header_factory(
            'subject', folded.decode('utf-8', 'replace')
        )
    )


def _entry(
    mail_id: str,
    state: str,
    stored: Stored,
    now: float,
    mtime: float,
    noted: str | None,
    subject: str | None,
) -> Entry:
    return Entry(
        id=mail_id,
        state=state,
        age=now - stored.queued_at,
        attempts=stored.attempts,
        recipients=stored.recipients,
        last_error=noted or stored.last_error,
        due=mtime if state == 'deferred' else None,
        message_id=stored.message_id,
        subject=subject,
        sender=stored.sender,
        queued_at=stored.queued_at,
    )


def _read(
    fd: int, size: int, pread: Callable[[int, int, int], bytes] = os.pread
) -> tuple[Stored, bytes]:
    """Metadata and message bytes of the open queue file ``fd``.

    ``size`` is what ``fstat`` said (a queue file never changes once
    written): one ``pread`` usually reads it all.
    """
    chunks = []
    offset = 0
    while offset < size and (chunk := pread(fd, size - offset, offset)):
        chunks.append(chunk)
        offset += len(chunk)
    line, _, data = b''.join(chunks).partition(b'\n')
    return Stored.decode(line), data


class MaildirPass:
    """One processor pass over the messages that were in ``new/`` when it
    began: :meth:`claim` takes them one at a time."""

    def __init__(self, queue: MailQueue, ids: Iterable[str]):
        self.queue = queue
        self._ids = iter(ids)

    def claim(self) -> Claim | None:
        """The next message, claimed; None when none is left. Messages
        another processor claimed meanwhile, or that are gone, are skipped."""
        for mail_id in self._ids:
            claim = self.queue.claim(mail_id)
            if claim is not None:
                return claim
        return None


class Claim:
    """A message taken for sending, locked until its outcome is recorded.

    Record exactly one outcome: :meth:`done`, :meth:`defer`, :meth:`fail`,
    :meth:`set_aside`, :meth:`release` or :meth:`abandon`. An outcome that
    raises :class:`QueueError` leaves the claim held, so that another one
    can be recorded instead. Used as a context manager, leaving the block
    without an outcome releases it (back to ``new/`` unchanged).
    """

    def __init__(
        self,
        queue: MailQueue,
        mail_id: str,
        fd: int,
        stored: Stored,
        data: bytes,
    ):
        self.queue = queue
        self.id = mail_id
        self._fd: int | None = fd
        self._stored = stored
        self.data = data
        self.message_id = stored.message_id
        self.envelope = Envelope(stored.sender, stored.recipients)
        self.attempts = stored.attempts
        self.queued_at = stored.queued_at
        self.last_error = stored.last_error

    def __repr__(self) -> str:
        return f'<Claim {self.id} {self.message_id}>'

    def __del__(self) -> None:
        # Dropped without an outcome: unlock, so that recovery can take it
        # back, rather than keeping it locked for the process's lifetime.
        fd = getattr(self, '_fd', None)
        if fd is not None:
            _unlock(fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            self.release()

    @property
    def _path(self) -> str:
        return self.queue._p('cur', self.id)

    def _take_fd(self) -> int:
        fd, self._fd = self._fd, None
        if fd is None:
            raise QueueError(f'the outcome of {self.id} is already recorded')
        return fd

    def done(self, *, reply: str | None = None) -> None:
        """The relay accepted it: remove it from the queue (the relay's
        ``reply`` is not kept: nothing of a sent message is)."""
        fd = self._take_fd()
        try:
            os.unlink(self._path)
        except OSError as exc:
            self._fd = fd
            raise QueueError(f'cannot remove {self._path}: {_cause(exc)}') from exc
        close_soon(fd)

    def defer(
        self, error: str, due: float, *, recipients: Iterable[str] | None = None
    ) -> None:
        """A temporary failure: try again at ``due``.

        Counts the attempt and records ``error``. ``recipients``, when given,
        replaces the envelope's list (the relay took the message for the
        others).
        """
        self._record('deferred', error, due, recipients)

    def fail(self, error: str) -> None:
        """A permanent failure: into the failed area, with ``error`` kept."""
        self._record('failed', error, self.queue.clock(), None)

    def _record(
        self,
        dest: str,
        error: str,
        mtime: float,
        recipients: Iterable[str] | None,
    ) -> None:
        fd = self._take_fd()
        stored = replace(self._stored, attempts=self.attempts + 1, last_error=error)
        if recipients is not None:
            stored = replace(stored, recipients=tuple(recipients))
        try:
            self.queue._rewrite(self.id, self._path, stored, self.data, dest, mtime)
        except BaseException:
            self._fd = fd
            raise
        _unlock(fd)

    def set_aside(self, reason: str, *, delivered: Iterable[str] = ()) -> None:
        """Into the failed area unchanged, ``reason`` kept beside it.

        Only a rename: this works when the disk is too full for
        :meth:`fail` to write the message again. ``delivered`` names the
        recipients who have the message already; :meth:`MailQueue.retry`
        does not send it to them again.
        """
        fd = self._take_fd()
        try:
            self.queue._rename(self._path, self.queue._p('failed', self.id))
        except FileNotFoundError:
            _unlock(fd)  # removed by hand meanwhile: nothing left to send
            return
        except OSError as exc:
            self._fd = fd
            raise QueueError(f'cannot set aside {self._path}: {_cause(exc)}') from exc
        _unlock(fd)
        self.queue._note(self.id, reason, delivered)

    def abandon(self) -> None:
        """Unlock it where it is, in ``cur/``: recovery takes it back to
        ``new/`` once it is ``stale_after`` old (a backoff that needs no
        disk space). Nothing if it is unlocked already (a failed
        :meth:`release` leaves it so)."""
        if self._fd is not None:
            _unlock(self._take_fd())

    def release(self) -> None:
        """Put it back into ``new/`` unchanged (not its fault, or stopping)."""
        fd = self._take_fd()
        try:
            self.queue._rename(self._path, self.queue._p('new', self.id))
        except OSError as exc:
            # It stays in cur/; recovery returns it once the lock is gone.
            raise QueueError(f'cannot release {self._path}: {_cause(exc)}') from exc
        finally:
            _unlock(fd)
