from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing
import os
import stat

import pytest

from tests import EMPTY_COUNTS as EMPTY
from tests import FakeClock, make_mail
from tests.crashkit import fill, run_together


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def queue_path(tmp_path):
    """Where the test's queue lives (not created)."""
    return str(tmp_path / 'q')


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_queue(queue_path):
    """``make_queue(cls=None, **kw)``: a MailQueue (or subclass ``cls``,
    with seams) at ``queue_path``."""
    from pyramid_txmail.queue import MailQueue

    def make(cls=None, **kw):
        return (cls or MailQueue)(queue_path, **kw)

    return make


@pytest.fixture
def claimed(make_queue, clock):
    """``claimed(recipients=..., cls=None)``: (queue, id, claim) of the one
    message of a new queue on ``clock``, claimed."""

    def claim(recipients=('to@example.com',), **kw):
        queue = make_queue(clock=clock, **kw)
        [mail_id] = fill(queue, 1, recipients=recipients)
        return queue, mail_id, queue.claim(mail_id)

    return claim


@pytest.fixture
def five_states(make_queue, clock):
    """``five_states()``: (queue, ids, claim) of a queue of five messages:
    queued, deferred, failed, failed, and one being sent (its claim)."""

    def make():
        queue = make_queue(clock=clock)
        ids = fill(queue, 5)
        _, b, c, d, e = ids
        queue.claim(b).defer('451 later', clock.now + 60)
        queue.claim(c).fail('550 no such user')
        queue.claim(d).fail('554 rejected')
        return queue, ids, queue.claim(e)

    return make


@pytest.fixture
def four_states(make_queue, clock):
    """``four_states(cls=None)``: (queue, ids) of four messages: queued,
    deferred, failed, queued."""

    def make(cls=None):
        queue = make_queue(cls, clock=clock)
        ids = fill(queue, 4)
        queue.claim(ids[1]).defer('451 later', clock.now + 60)
        queue.claim(ids[2]).fail('550 no such user')
        return queue, ids

    return make


def files(queue_path, sub):
    """The names in the queue's subdirectory ``sub``, sorted."""
    return sorted(os.listdir(os.path.join(queue_path, sub)))


def stored(queue_path, sub, mail_id):
    """The metadata (a dict) and message bytes of a queue file, as on disk."""
    with open(os.path.join(queue_path, sub, mail_id), 'rb') as f:
        return json.loads(f.readline()), f.read()


def owners(queue_path):
    """{path in the queue: (uid, gid)} of everything in it."""
    found = {}
    for top, dirs, names in os.walk(queue_path):
        for name in dirs + names:
            path = os.path.join(top, name)
            found[os.path.relpath(path, queue_path)] = os.stat(path)[4:6]
    return found


# -- MailQueueLayout


def test_creates_directories_mode_0700(queue_path, make_queue):
    make_queue()
    for sub in ('', 'tmp', 'new', 'cur', 'deferred', 'failed'):
        assert _mode(os.path.join(queue_path, sub)) == 0o700


def test_existing_queue_is_reused(make_queue):
    queue = make_queue()
    [mail_id] = fill(queue, 1)
    assert make_queue().pending() == [mail_id]


def test_unusable_path_raises_queue_error_naming_it(tmp_path):
    from pyramid_txmail.queue import MailQueue, QueueError

    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    with pytest.raises(QueueError) as info:
        MailQueue(str(blocker / 'q'))
    assert str(info.value) == (
        f'cannot create mail queue {blocker}/q: [Errno 20] Not a directory'
    )


def test_repr_names_the_queue_path(queue_path, make_queue):
    assert repr(make_queue()) == f'<MailQueue {queue_path}>'


def test_listing_a_removed_directory_raises_queue_error(queue_path, make_queue):
    from pyramid_txmail.queue import QueueError

    queue = make_queue()
    os.rmdir(os.path.join(queue_path, 'new'))
    with pytest.raises(QueueError, match=r'cannot read mail queue .*/new: missing'):
        queue.pending()


def test_listing_a_file_in_place_of_a_directory_raises_queue_error(
    queue_path, make_queue
):
    from pyramid_txmail.queue import QueueError

    queue = make_queue()
    os.rmdir(os.path.join(queue_path, 'new'))
    with open(os.path.join(queue_path, 'new'), 'w'):
        pass
    with pytest.raises(
        QueueError, match=r'cannot read mail queue .*/new: \[Errno 20\]'
    ):
        queue.pending()


def test_stray_files_are_not_messages(queue_path, make_queue):
    queue = make_queue()
    [mail_id] = fill(queue, 1)
    for name in ('.lock', f'{mail_id}.lock', 'README'):
        with open(os.path.join(queue_path, 'new', name), 'w') as f:
            f.write('not a message')
    assert queue.pending() == [mail_id]
    assert queue.counts()['queued'] == 1


# -- MailQueueCommit


def test_stage_is_durable_but_invisible(queue_path, make_queue):
    queue = make_queue()
    mail = make_mail(1, ('a@example.com', 'bcc@example.com'))
    mail_id = queue.stage(mail)
    assert files(queue_path, 'tmp') == [mail_id]
    assert queue.pending() == []
    assert _mode(os.path.join(queue_path, 'tmp', mail_id)) == 0o600
    meta, data = stored(queue_path, 'tmp', mail_id)
    assert data == mail.data
    assert meta['v'] == 1
    assert meta['id'] == mail_id
    assert meta['message_id'] == '<1@test>'
    assert meta['sender'] == 'from@example.com'
    assert meta['recipients'] == ['a@example.com', 'bcc@example.com']
    assert meta['attempts'] == 0
    assert meta['last_error'] is None
    assert 'smtputf8' not in meta  # written by 0.x, never read


def test_publish_makes_staged_messages_visible(queue_path, make_queue):
    queue = make_queue()
    ids = [queue.stage(make_mail(n)) for n in range(3)]
    queue.publish(ids)
    assert queue.pending() == sorted(ids)
    assert files(queue_path, 'tmp') == []
    assert _mode(os.path.join(queue_path, 'new', ids[0])) == 0o600


def test_discard_removes_the_staged_files(queue_path, make_queue):
    queue = make_queue()
    ids = [queue.stage(make_mail(n)) for n in range(2)]
    queue.discard([*ids, 'never-staged'])
    assert files(queue_path, 'tmp') == []
    assert queue.pending() == []


def test_discard_logs_instead_of_raising(queue_path, make_queue, caplog):
    queue = make_queue()
    # unlink() of a directory fails with a real EISDIR.
    os.mkdir(os.path.join(queue_path, 'tmp', 'odd'))
    queue.discard(['odd'])
    assert 'cannot discard' in caplog.text


def test_publish_logs_instead_of_raising(make_queue, caplog):
    queue = make_queue()
    [good] = [queue.stage(make_mail(1))]
    queue.publish(['1234567890123456.1.gone', good])
    assert queue.pending() == [good]
    assert 'cannot publish 1234567890123456.1.gone' in caplog.text


def test_committed_message_that_could_not_be_published_is_published_later(
    queue_path, make_queue, clock, caplog
):
    # rename() itself can fail with ENOSPC (the directory must grow): the
    # message is committed and durable in tmp/, where the cleanup of
    # unfinished commits would delete it after 36 hours. Recovery by
    # this process publishes it once it can, and never removes it.
    from pyramid_txmail.queue import TMP_MAX_AGE, MailQueue

    full = [True]

    class FullDisk(MailQueue):
        def _rename(self, src, dst):
            if full[0] and os.path.basename(os.path.dirname(dst)) == 'new':
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.rename(src, dst)

    queue = make_queue(FullDisk, clock=clock)
    mail_id, gone = queue.stage(make_mail(1)), queue.stage(make_mail(2))
    queue.publish([mail_id, gone])
    assert queue.pending() == []
    assert 'cannot publish' in caplog.text
    os.unlink(os.path.join(queue_path, 'tmp', gone))  # by hand
    clock.now += TMP_MAX_AGE + 1
    queue.recover(600)
    assert files(queue_path, 'tmp') == [mail_id]  # still full: kept
    full[0] = False
    queue.recover(600)
    assert queue.pending() == [mail_id]
    assert files(queue_path, 'tmp') == []


class _NoRoomInNew:
    """A MailQueue whose renames into new/ fail with ENOSPC."""

    @staticmethod
    def make(base):
        class FullDisk(base):
            def _rename(self, src, dst):
                if os.path.basename(os.path.dirname(dst)) == 'new':
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.rename(src, dst)

        return FullDisk


def test_committed_message_that_could_not_be_published_is_published_after_a_restart(
    queue_path, make_queue, clock
):
    # The process that committed it stops before the disk has room again:
    # the next process must publish the message, not remove it after 36
    # hours as an unfinished commit. The mark: its mode, as in Postfix.
    from pyramid_txmail.queue import TMP_MAX_AGE, MailQueue

    queue = make_queue(_NoRoomInNew.make(MailQueue), clock=clock)
    mail_id = queue.stage(make_mail(1))
    unfinished = queue.stage(make_mail(2))  # its transaction never finished
    queue.publish([mail_id])
    assert files(queue_path, 'tmp') == sorted([mail_id, unfinished])
    for name in (mail_id, unfinished):  # written now, by the clock
        os.utime(os.path.join(queue_path, 'tmp', name), (clock.now, clock.now))
    assert queue.counts()['unpublished'] == 1  # not the unfinished one
    del queue
    clock.now += TMP_MAX_AGE + 1
    restarted = make_queue(clock=clock)
    restarted.recover(600)
    assert restarted.pending() == [mail_id]
    assert files(queue_path, 'tmp') == []
    assert restarted.read(mail_id)[1] == make_mail(1).data


def test_a_staged_message_is_not_marked_committed_before_its_commit(
    queue_path, make_queue, clock
):
    # Staged, the commit still undecided: recovery in another process
    # leaves it in tmp/, and removes it only once 36 hours old.
    from pyramid_txmail.queue import TMP_MAX_AGE

    queue = make_queue(clock=clock)
    mail_id = queue.stage(make_mail(1))
    os.utime(os.path.join(queue_path, 'tmp', mail_id), (clock.now, clock.now))
    other = make_queue(clock=clock)
    other.recover(600)
    assert (other.pending(), files(queue_path, 'tmp')) == ([], [mail_id])
    clock.now += TMP_MAX_AGE + 1
    other.recover(600)
    assert files(queue_path, 'tmp') == []


class _EveryFileExecutable:
    """A MailQueue on a file system that shows every file with the mount's
    file mode, 0755 by default, whatever it was created with: vfat, exFAT,
    CIFS without the Unix extensions, WSL's drvfs."""

    @staticmethod
    def make(base):
        class EveryFileExecutable(base):
            def _opener(self, path, flags, *mode):
                fd = os.open(path, flags, *mode)
                if flags & os.O_CREAT:
                    os.fchmod(fd, 0o755)
                return fd

        return EveryFileExecutable


def test_staged_message_on_a_file_system_ignoring_modes_is_not_published_uncommitted(
    queue_path, make_queue, clock
):
    # A processor's recovery runs while a transaction votes: its staged
    # message must not reach new/, or the abort that follows sends it
    # anyway.
    from pyramid_txmail.queue import MailQueue

    committing = make_queue(_EveryFileExecutable.make(MailQueue), clock=clock)
    mail_id = committing.stage(make_mail(1))  # tpc_vote
    processor = make_queue(clock=clock)
    processor.recover(600)
    assert processor.pending() == []
    committing.discard([mail_id])  # tpc_abort
    assert [files(queue_path, sub) for sub in ('tmp', 'new')] == [[], []]


def test_unfinished_commit_on_a_file_system_ignoring_modes_is_removed_after_36_hours(
    queue_path, make_queue, clock
):
    from pyramid_txmail.queue import TMP_MAX_AGE, MailQueue

    crashed = make_queue(_EveryFileExecutable.make(MailQueue), clock=clock)
    mail_id = crashed.stage(make_mail(1))  # its process died in the vote
    os.utime(os.path.join(queue_path, 'tmp', mail_id), (clock.now, clock.now))
    processor = make_queue(clock=clock)
    processor.recover(600)
    assert (processor.pending(), files(queue_path, 'tmp')) == ([], [mail_id])
    clock.now += TMP_MAX_AGE + 1
    processor.recover(600)
    assert [files(queue_path, sub) for sub in ('tmp', 'new')] == [[], []]


def test_a_mark_the_file_system_does_not_keep_is_reported(
    queue_path, make_queue, caplog
):
    # chmod succeeds, and the file shows the mount's mode all the same
    # (vfat with "quiet", CIFS with "noperm"): the message is not marked,
    # and the log must not let the operator believe it survives a restart.
    from pyramid_txmail.queue import MailQueue

    class ModesNotKept(_EveryFileExecutable.make(_NoRoomInNew.make(MailQueue))):
        def _fsync(self, fd):
            os.fchmod(fd, 0o755)  # what the file system shows
            os.fsync(fd)

    queue = make_queue(ModesNotKept)
    mail_id = queue.stage(make_mail(1))
    queue.publish([mail_id])
    assert 'the file system does not keep modes' in caplog.text
    assert 'if it stops first it is removed as an unfinished commit' in caplog.text
    assert queue.pending() == []


@pytest.mark.parametrize('mode', [0o700, 0o755, 0o775])
def test_an_unfinished_commit_in_a_queue_an_operator_chmod_ed_is_never_published(
    queue_path, make_queue, clock, mode
):
    # `chmod -R 700 /var/spool/app-mail`: files left in tmp/ by
    # transactions that never committed are not thereby committed.
    crashed = make_queue(clock=clock)
    mail_id = crashed.stage(make_mail(1))
    os.chmod(os.path.join(queue_path, 'tmp', mail_id), mode)
    processor = make_queue(clock=clock)
    processor.recover(600)
    assert (processor.pending(), files(queue_path, 'tmp')) == ([], [mail_id])


def test_a_directory_named_like_a_message_in_tmp_is_never_published(
    queue_path, make_queue
):
    queue = make_queue()
    odd = '1234567890123456.1.abcdef'
    os.mkdir(os.path.join(queue_path, 'tmp', odd), 0o700)
    queue.recover(600)
    assert (queue.pending(), files(queue_path, 'tmp')) == ([], [odd])


def test_a_message_that_cannot_be_marked_committed_is_still_published_by_its_process(
    queue_path, make_queue, caplog
):
    from pyramid_txmail.queue import MailQueue

    full = [True]

    class Unmarkable(_NoRoomInNew.make(MailQueue)):
        def _opener(self, path, flags, *mode):
            if flags & os.O_ACCMODE == os.O_RDONLY and '/tmp/' in path:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return os.open(path, flags, *mode)

        def _rename(self, src, dst):
            if full[0]:
                return super()._rename(src, dst)
            os.rename(src, dst)

    queue = make_queue(Unmarkable)
    mail_id = queue.stage(make_mail(1))
    queue.publish([mail_id])
    assert 'cannot mark' in caplog.text
    assert 'removed as an unfinished commit' in caplog.text
    assert _mode(os.path.join(queue_path, 'tmp', mail_id)) == 0o600
    full[0] = False
    queue.recover(600)
    assert queue.pending() == [mail_id]


def test_committed_message_that_could_not_be_published_survives_a_power_loss(
    queue_path, make_queue
):
    # The vote fsyncs the file, not tmp/; when the finish cannot rename it
    # into new/, the commit still completes with the message in tmp/: its
    # name there is made durable, as the contract promises of a commit.
    from pyramid_txmail.queue import MailQueue

    synced = []

    class FullDisk(MailQueue):
        def _fsync(self, fd):
            synced.append(os.fstat(fd).st_ino)
            os.fsync(fd)

        def _rename(self, src, dst):
            if os.path.basename(os.path.dirname(dst)) == 'new':
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.rename(src, dst)

    queue = make_queue(FullDisk)
    mail_id = queue.stage(make_mail(1))
    synced.clear()
    queue.publish([mail_id])
    assert files(queue_path, 'tmp') == [mail_id]
    assert os.stat(os.path.join(queue_path, 'tmp')).st_ino in synced


def test_ids_sort_in_queue_order_and_never_collide(make_queue, clock):
    queue = make_queue(clock=clock)
    ids = []
    for n in range(50):
        clock.now += 0.000001 * (n % 2)  # half of them in the same µs
        ids.append(queue.stage(make_mail(n)))
    assert len(set(ids)) == 50
    assert sorted(ids) == ids
    first, pid, rand = ids[0].split('.')
    assert first == '1700000000000000'
    assert pid == str(os.getpid())
    assert len(rand) == 16


def test_file_is_fsynced_before_its_rename_and_directory_after(queue_path, make_queue):
    """The file is fsync'ed before it is renamed, the directory after."""
    from pyramid_txmail.queue import MailQueue

    calls = []

    class Recording(MailQueue):
        def _fsync(self, fd):
            calls.append(('fsync', os.fstat(fd).st_ino))
            os.fsync(fd)

        def _rename(self, src, dst):
            calls.append(('rename', os.path.basename(os.path.dirname(dst))))
            os.rename(src, dst)

    queue = make_queue(Recording)
    ino = lambda sub: os.stat(os.path.join(queue_path, sub)).st_ino  # noqa: E731
    mail_id = queue.stage(make_mail(1))
    file_ino = os.stat(os.path.join(queue_path, 'tmp', mail_id)).st_ino
    queue.publish([mail_id])
    assert calls == [
        ('fsync', file_ino),
        ('rename', 'new'),
        ('fsync', ino('new')),
    ]


def test_stage_w_full_disk(queue_path, make_queue, clock):
    from pyramid_txmail.queue import MailQueue, QueueError

    class FullDisk(MailQueue):
        # A real ENOSPC needs a full file system; inject it.
        def _write(self, fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    queue = make_queue(FullDisk, clock=FakeClock())
    with pytest.raises(QueueError) as info:
        queue.stage(make_mail(1))
    [name] = [n for n in str(info.value).split('/') if n.startswith('17')]
    assert str(info.value) == (
        f'cannot write mail queue {queue_path}/tmp/{name.split(":")[0]}: '
        '[Errno 28] No space left on device'
    )
    assert files(queue_path, 'tmp') == []


def test_stage_w_failing_fsync(queue_path, make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    class BadDisk(MailQueue):
        def _fsync(self, fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    queue = make_queue(BadDisk)
    with pytest.raises(QueueError, match=r'\[Errno 5\] Input/output error'):
        queue.stage(make_mail(1))
    assert files(queue_path, 'tmp') == []


def test_stage_w_permission_denied(make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    class ReadOnly(MailQueue):
        # Tests run as root, which ignores directory permissions.
        def _opener(self, path, flags, mode=0o777):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    queue = make_queue(ReadOnly)
    with pytest.raises(QueueError, match=r'tmp/\S+: \[Errno 13\] Permission'):
        queue.stage(make_mail(1))


def test_stage_w_file_too_large(queue_path, make_queue):
    """A real EFBIG: a child process with a tiny RLIMIT_FSIZE."""
    from tests.crashkit import stage_over_file_size_limit

    make_queue()
    ctx = multiprocessing.get_context('spawn')
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=stage_over_file_size_limit, args=(queue_path, 4096, 100_000, child)
    )
    proc.start()
    try:
        assert parent.poll(30)
        error, left = parent.recv()
    finally:
        proc.join(30)
        proc.kill()
    assert error.startswith(f'cannot write mail queue {queue_path}/tmp/')
    assert error.endswith(': [Errno 27] File too large')
    assert left == []


def test_error_without_errno_is_reported_as_is(make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Odd(MailQueue):
        def _write(self, fd, data):
            raise OSError('something odd')

    with pytest.raises(QueueError, match=r': something odd$'):
        make_queue(Odd).stage(make_mail(1))


def test_publish_w_unsyncable_directory_logs(make_queue, caplog):
    from pyramid_txmail.queue import MailQueue

    class BadDisk(MailQueue):
        def _fsync(self, fd):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, os.strerror(errno.EIO))

    queue = make_queue(BadDisk)
    mail_id = queue.stage(make_mail(1))
    with caplog.at_level(logging.ERROR, 'pyramid_txmail.queue'):
        queue.publish([mail_id])
    assert queue.pending() == [mail_id]
    assert 'cannot sync mail queue' in caplog.text


# -- Claim


def test_claim_reads_message_and_moves_it_to_cur(queue_path, make_queue, clock):
    queue = make_queue(clock=clock)
    mail = make_mail(1, ('a@example.com', 'b@example.com'))
    mail_id = queue.stage(mail)
    queue.publish([mail_id])
    clock.now += 10
    claim = queue.claim(mail_id)
    assert claim.id == mail_id
    assert claim.message_id == '<1@test>'
    assert claim.envelope == mail.envelope
    assert claim.data == mail.data
    assert claim.attempts == 0
    assert claim.queued_at == 1_700_000_000.0
    assert claim.last_error is None
    assert repr(claim) == f'<Claim {mail_id} <1@test>>'
    assert files(queue_path, 'new') == []
    assert files(queue_path, 'cur') == [mail_id]
    assert os.stat(os.path.join(queue_path, 'cur', mail_id)).st_mtime == clock.now
    claim.done()


def test_claim_of_gone_message(make_queue):
    queue = make_queue()
    [mail_id] = fill(queue, 1)
    queue.claim(mail_id).done()
    assert queue.claim(mail_id) is None


def test_claim_of_held_message(queue_path, make_queue):
    queue = make_queue()
    [mail_id] = fill(queue, 1)
    path = os.path.join(queue_path, 'new', mail_id)
    with open(path, 'rb') as other:
        # Another processor between its lock and its rename.
        fcntl.flock(other, fcntl.LOCK_EX)
        assert queue.claim(mail_id) is None
    assert queue.pending() == [mail_id]


def test_claim_of_message_replaced_after_open(queue_path, make_queue):
    """Opened, then the holder moved it on and another file took the name."""
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            fd = os.open(path, flags, mode)
            os.rename(path, path + '.old')
            with open(path, 'wb') as f:
                f.write(b'someone else')
            return fd

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    assert make_queue(Racy).claim(mail_id) is None
    assert files(queue_path, 'cur') == []


def test_claim_of_message_vanished_after_open(make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            fd = os.open(path, flags, mode)
            os.unlink(path)
            return fd

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    assert make_queue(Racy).claim(mail_id) is None


def test_claim_w_broken_queue_directory_raises_queue_error(make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Broken(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            fd = os.open(path, flags, mode)
            new = os.path.dirname(path)
            os.rename(new, new + '.moved')
            open(new, 'w').close()  # new/ID is now under a plain file
            return fd

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    with pytest.raises(QueueError, match=r'Errno 20'):
        make_queue(Broken).claim(mail_id)


def test_claim_of_message_removed_by_hand_before_rename(queue_path, make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _rename(self, src, dst):
            os.unlink(src)
            os.rename(src, dst)

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    assert make_queue(Racy).claim(mail_id) is None
    assert files(queue_path, 'cur') == []


def test_claim_w_rename_error_raises_and_unlocks(make_queue):
    from pyramid_txmail.queue import MailQueue

    class Broken(MailQueue):
        def _rename(self, src, dst):
            raise PermissionError(errno.EACCES, 'denied')

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    with pytest.raises(PermissionError):
        make_queue(Broken).claim(mail_id)
    assert queue.claim(mail_id) is not None


def test_unreadable_file_is_moved_to_failed(queue_path, make_queue, caplog):
    queue = make_queue()
    [good] = fill(queue, 1)
    bad = '0000000000000001.1.bad0'
    with open(os.path.join(queue_path, 'new', bad), 'wb') as f:
        f.write(b'{"v": 1}\nnot ours')
    assert queue.claim(bad) is None
    assert files(queue_path, 'failed') == [bad, bad + '.reason']
    assert 'unreadable queue file 0000000000000001.1.bad0' in caplog.text
    [info] = queue.list(failed=True)
    assert info.id == bad
    assert info.last_error == "unreadable: bad or missing 'message_id'"
    # Retried unchanged; the next claim fails it again.
    assert queue.retry([bad]) == 1
    assert queue.pending() == [bad, good]
    assert queue.claim(bad) is None


def test_other_version_is_not_ours(queue_path, make_queue):
    queue = make_queue()
    bad = '0000000000000001.1.bad0'
    with open(os.path.join(queue_path, 'new', bad), 'wb') as f:
        f.write(b'{"v": 2}\nfuture')
    assert queue.claim(bad) is None
    [info] = queue.list(failed=True)
    assert info.last_error == 'unreadable: not a version 1 queue file'


def test_forked_child_does_not_keep_the_lock(make_queue):
    """A child forked while a claim is held must not keep its lock."""
    import select

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    claim = queue.claim(mail_id)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage is not kept
        os.write(ready_w, b'x')
        select.select([done_r], [], [], 30)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b'x'
        claim.release()  # the child is alive and holds copies of our fds
        again = queue.claim(mail_id)
        assert again is not None
        again.release()
    finally:
        os.write(done_w, b'x')
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_a_child_forked_while_a_claim_opens_its_file_does_not_keep_its_lock(
    make_queue,
):
    """A web server forks a worker while the processor thread is between
    opening a message and noting the descriptor: the child inherited one
    its fork hook did not know of, and the claim's lock then lived on in
    it. Released, the message stayed unclaimable for the child's life."""
    import select
    import threading

    from pyramid_txmail.queue import MailQueue

    opened, forked = threading.Event(), threading.Event()

    class PausedOpen(MailQueue):
        def _opener(self, path, flags, *mode):
            fd = os.open(path, flags, *mode)
            if os.path.basename(os.path.dirname(path)) == 'new':
                opened.set()
                # Bounded: a fork that waits for this claim goes on after it.
                forked.wait(2)
            return fd

    queue = make_queue(PausedOpen)
    [mail_id] = fill(queue, 1)
    claims = []
    claimer = threading.Thread(target=lambda: claims.append(queue.claim(mail_id)))
    claimer.start()
    assert opened.wait(10)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage is not kept
        os.write(ready_w, b'x')
        select.select([done_r], [], [], 30)
        os._exit(0)
    try:
        forked.set()
        assert os.read(ready_r, 1) == b'x'
        claimer.join(10)
        [claim] = claims
        claim.release()  # the child is alive
        again = make_queue().claim(mail_id)
        assert again is not None
        again.release()
    finally:
        forked.set()
        os.write(done_w, b'x')
        os.waitpid(pid, 0)
        claimer.join(10)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_a_fork_does_not_wait_for_a_claim_whose_open_is_stalled(make_queue):
    """On a stalled NFS mount an open() waits for the server, for minutes:
    a fork (gunicorn starting a worker) waited as long, for the lock the
    processor's claim held across its open. The stall here ends once the
    child is up, or after a bounded wait if the fork waits for it."""
    import select
    import threading

    from pyramid_txmail.queue import MailQueue

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    opened = threading.Event()
    child_up_during_open = []

    class StalledOpen(MailQueue):
        def _opener(self, path, flags, *mode):
            if os.path.basename(os.path.dirname(path)) == 'new' and not opened.is_set():
                opened.set()
                up = select.select([ready_r], [], [], 5)[0]
                child_up_during_open.append(bool(up))
            return os.open(path, flags, *mode)

    queue = make_queue(StalledOpen)
    [mail_id] = fill(queue, 1)
    claims = []
    claimer = threading.Thread(target=lambda: claims.append(queue.claim(mail_id)))
    claimer.start()
    assert opened.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage is not kept
        os.write(ready_w, b'x')
        select.select([done_r], [], [], 30)
        os._exit(0)
    try:
        claimer.join(10)
        assert child_up_during_open == [True]
        [claim] = claims
        claim.release()
        again = make_queue().claim(mail_id)  # the child is alive
        assert again is not None
        again.release()
    finally:
        os.write(done_w, b'x')
        os.waitpid(pid, 0)
        claimer.join(10)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_a_child_forked_while_a_release_closes_its_descriptor_does_not_keep_its_lock(
    make_queue,
):
    """The other end of a descriptor's life: forked after the descriptor
    was forgotten and before it was closed, the child kept it, and with it
    the lock of the message just released into new/."""
    import select
    import sys
    import threading

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    claim = queue.claim(mail_id)
    closing, forked = threading.Event(), threading.Event()

    def pause_before_close(frame, event, arg):
        # A profile function (not a trace one, which coverage uses): called
        # as os.close is about to run.
        if event == 'c_call' and arg is os.close and not closing.is_set():
            closing.set()
            forked.wait(2)  # bounded: a fork that waits for it goes on after

    def release():
        sys.setprofile(pause_before_close)
        try:
            claim.release()
        finally:
            sys.setprofile(None)

    releaser = threading.Thread(target=release)
    releaser.start()
    assert closing.wait(10)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; coverage is not kept
        os.write(ready_w, b'x')
        select.select([done_r], [], [], 30)
        os._exit(0)
    try:
        forked.set()
        assert os.read(ready_r, 1) == b'x'
        releaser.join(10)
        again = queue.claim(mail_id)  # the child is alive
        assert again is not None
        again.release()
    finally:
        forked.set()
        os.write(done_w, b'x')
        os.waitpid(pid, 0)
        releaser.join(10)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_a_forked_child_closes_the_lock_descriptors_it_inherits(tmp_path):
    # What the child runs after fork, run here on a descriptor of our own.
    from pyramid_txmail.queue import locks

    fd = locks._held(os.open, tmp_path, os.O_RDONLY)
    locks._close_inherited_locks()
    with pytest.raises(OSError):
        os.fstat(fd)
    os.close(os.open(tmp_path, os.O_RDONLY))  # the number is reusable


@pytest.mark.slow
def test_claim_race_between_processes(queue_path, tmp_path, make_queue):
    """4 processes, one queue of 2000 messages: each claimed exactly once."""
    from tests.crashkit import claim_everything

    queue = make_queue()
    ids = fill(queue, 2000)
    outs = [str(tmp_path / f'claimed-{n}') for n in range(4)]
    claimed = [
        mail_id
        for text in run_together(claim_everything, (queue_path,), outs)
        for mail_id in text.split()
    ]
    assert sorted(claimed) == sorted(ids)
    assert queue.counts() == EMPTY


# -- Outcomes


def test_done_removes_the_message(queue_path, claimed):
    queue, _, claim = claimed()
    claim.done()
    assert queue.counts() == EMPTY
    assert files(queue_path, 'tmp') == []


def _descriptors_of(path) -> list[int]:
    """This process's open descriptors of the file at ``path`` (/proc)."""
    found = []
    for name in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink(f'/proc/self/fd/{name}')
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target in (path, f'{path} (deleted)'):
            found.append(int(name))
    return found


def test_done_closes_the_descriptor_soon(queue_path, claimed):
    # Closed by the background closer: wait for it, within a bound.
    import time

    _, mail_id, claim = claimed()
    [fd] = _descriptors_of(os.path.join(queue_path, 'cur', mail_id))
    claim.done()
    deadline = time.monotonic() + 5
    while _is_open(fd) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _is_open(fd)


def test_closer_survives_a_bad_descriptor(tmp_path):
    import time

    from pyramid_txmail.queue.locks import close_soon

    fd = os.open(tmp_path, os.O_RDONLY)
    close_soon(10_000)  # not open: EBADF, ignored
    close_soon(fd)
    deadline = time.monotonic() + 5
    while _is_open(fd) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _is_open(fd)


def test_closer_behind_leaves_the_caller_to_close(tmp_path, monkeypatch):
    # Descriptors do not pile up behind a closer that cannot keep up: past
    # its limit, the caller closes its own at once.
    from pyramid_txmail.queue import locks

    monkeypatch.setattr(locks._Closer, 'LIMIT', 0)
    fd = os.open(tmp_path, os.O_RDONLY)
    locks.close_soon(fd)
    assert not _is_open(fd)


def test_defer_counts_the_attempt_and_sets_the_due_time(queue_path, claimed, clock):
    queue, mail_id, claim = claimed(('a@example.com', 'b@example.com'))
    data = claim.data
    claim.defer('451 4.3.0 try later', clock.now + 300)
    assert files(queue_path, 'cur') == []
    assert files(queue_path, 'tmp') == []
    assert files(queue_path, 'deferred') == [mail_id]
    path = os.path.join(queue_path, 'deferred', mail_id)
    assert os.stat(path).st_mtime == clock.now + 300
    assert _mode(path) == 0o600
    meta, on_disk = stored(queue_path, 'deferred', mail_id)
    assert on_disk == data
    assert meta['attempts'] == 1
    assert meta['last_error'] == '451 4.3.0 try later'
    assert meta['recipients'] == ['a@example.com', 'b@example.com']
    [info] = queue.list()
    assert info.state == 'deferred'
    assert info.due == clock.now + 300
    assert info.attempts == 1


def test_defer_w_fewer_recipients(queue_path, claimed, clock):
    _, mail_id, claim = claimed(('a@example.com', 'b@example.com'))
    claim.defer('450 mailbox busy', clock.now, recipients=['b@example.com'])
    meta, _ = stored(queue_path, 'deferred', mail_id)
    assert meta['recipients'] == ['b@example.com']


def test_defer_again_counts_attempts(queue_path, claimed, clock):
    queue, mail_id, claim = claimed()
    claim.defer('first', clock.now)
    assert queue.promote_due() == 1
    claim = queue.claim(mail_id)
    assert (claim.attempts, claim.last_error) == (1, 'first')
    claim.defer('second', clock.now)
    meta, _ = stored(queue_path, 'deferred', mail_id)
    assert (meta['attempts'], meta['last_error']) == (2, 'second')


def test_fail_moves_the_message_to_failed_with_the_error(queue_path, claimed):
    queue, mail_id, claim = claimed()
    claim.fail('550 5.1.1 no such user')
    assert files(queue_path, 'failed') == [mail_id]
    assert files(queue_path, 'cur') == []
    [info] = queue.list(failed=True)
    assert info.state == 'failed'
    assert info.last_error == '550 5.1.1 no such user'
    assert info.due is None
    assert queue.list(['queued', 'sending', 'deferred']) == []


def test_release_returns_the_message_unchanged(queue_path, claimed):
    queue, mail_id, claim = claimed()
    path = os.path.join(queue_path, 'new', mail_id)
    claim.release()
    assert queue.pending() == [mail_id]
    meta, _ = stored(queue_path, 'new', mail_id)
    assert (meta['attempts'], meta['last_error']) == (0, None)
    assert os.path.exists(path)


def test_leaving_a_claim_block_without_an_outcome_releases_it(claimed):
    queue, mail_id, claim = claimed()
    with claim:
        assert queue.pending() == []
    assert queue.pending() == [claim.id]
    with pytest.raises(RuntimeError), queue.claim(mail_id):
        raise RuntimeError('processor bug')
    assert queue.pending() == [claim.id]


def test_context_manager_after_outcome(claimed):
    queue, _, claim = claimed()
    with claim:
        claim.done()
    assert queue.counts()['queued'] == 0


def test_a_second_outcome_is_refused(claimed):
    from pyramid_txmail.queue import QueueError

    _, _, claim = claimed()
    claim.done()
    with pytest.raises(QueueError, match='already recorded'):
        claim.fail('again')


def test_done_w_file_removed(queue_path, claimed):
    from pyramid_txmail.queue import QueueError

    _, mail_id, claim = claimed()
    os.unlink(os.path.join(queue_path, 'cur', mail_id))
    with pytest.raises(QueueError, match=r'cannot remove .*/cur/.*\[Errno 2\]'):
        claim.done()


def test_set_aside_keeps_the_reason_beside_it(claimed):
    queue, mail_id, claim = claimed()
    claim.set_aside('accepted for a@example.com; not sent again')
    [info] = queue.list(failed=True)
    assert (info.id, info.recipients) == (mail_id, ('to@example.com',))
    assert info.last_error == 'accepted for a@example.com; not sent again'
    assert queue.unreadable() == 0


def test_retry_skips_recipients_who_have_it(queue_path, claimed):
    queue, mail_id, claim = claimed(('a@example.com', 'b@example.com'))
    claim.set_aside('partly sent', delivered=['a@example.com'])
    assert queue.retry() == 1
    claim = queue.claim(mail_id)
    assert claim.envelope.recipients == ('b@example.com',)
    claim.set_aside('sent', delivered=['b@example.com'])
    assert queue.retry() == 1  # nothing left to send: removed
    assert queue.counts() == EMPTY
    assert files(queue_path, 'failed') == []


@pytest.mark.parametrize(
    'record', [b'not json', b'{"reason": 1, "delivered": []}', b'[]']
)
def test_foreign_reason_file_is_ignored(queue_path, claimed, record):
    queue, mail_id, claim = claimed()
    claim.fail('550 no')
    with open(os.path.join(queue_path, 'failed', mail_id + '.reason'), 'wb') as f:
        f.write(record)
    [info] = queue.list(failed=True)
    assert info.last_error == '550 no'
    assert queue.retry() == 1
    assert queue.pending() == [mail_id]


def test_reason_written_once_there_is_space(queue_path, make_queue, caplog):
    from pyramid_txmail.queue import MailQueue

    class FullDisk(MailQueue):
        full = False

        def _write(self, fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    queue = make_queue(FullDisk)
    kept, gone = fill(queue, 2)
    queue.full = True
    queue.claim(kept).set_aside('kept')
    queue.claim(gone).set_aside('gone')
    queue.recover(600)
    assert caplog.text.count('cannot record why') == 2  # once each
    queue.purge([gone])
    queue.full = False
    queue.recover(600)
    assert files(queue_path, 'failed') == [kept, kept + '.reason']
    [info] = queue.list(failed=True)
    assert info.last_error == 'kept'
    queue.recover(600)
    assert caplog.text.count('cannot record why') == 2


def test_set_aside_of_file_removed_by_hand(queue_path, claimed):
    _, mail_id, claim = claimed()
    os.unlink(os.path.join(queue_path, 'cur', mail_id))
    claim.set_aside('whatever')
    assert files(queue_path, 'failed') == []
    claim.abandon()  # nothing held any more: nothing to do


def test_a_release_that_cannot_rename_leaves_it_to_recovery(claimed):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Broken(MailQueue):
        def _rename(self, src, dst):
            if '/cur/' in src:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.rename(src, dst)

    queue, _, claim = claimed(cls=Broken)
    with pytest.raises(QueueError, match=r'cannot release .*\[Errno 5\]'):
        claim.release()
    # Still in cur/, unlocked now: recovery takes it back.
    assert queue.recover(0) == 1


def test_defer_w_full_disk_keeps_message(queue_path, claimed, clock):
    from pyramid_txmail.queue import MailQueue, QueueError

    class FullDisk(MailQueue):
        full = False

        def _write(self, fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.write(fd, data)

    queue, mail_id, claim = claimed(cls=FullDisk)
    queue.full = True
    with pytest.raises(QueueError, match=r'No space left on device'):
        claim.defer('451', clock.now)
    assert files(queue_path, 'tmp') == []
    assert files(queue_path, 'cur') == [mail_id]
    # Still held: recovery cannot take it; another outcome can be recorded.
    assert queue.recover(0) == 0
    claim.release()
    meta, _ = stored(queue_path, 'new', mail_id)
    assert meta['attempts'] == 0


def test_fail_w_rename_errors(queue_path, claimed):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Broken(MailQueue):
        broken = ''

        def _rename(self, src, dst):
            if self.broken and self.broken in dst:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.rename(src, dst)

    queue, mail_id, claim = claimed(cls=Broken)
    queue.broken = '/cur/'  # the new version over the claimed file
    with pytest.raises(QueueError, match=r'cannot write mail queue .*/cur/'):
        claim.fail('550')
    assert files(queue_path, 'tmp') == []
    assert files(queue_path, 'cur') == [mail_id]

    queue.broken = ''
    claim.abandon()  # unlocked in cur/: recovery takes it back
    assert queue.recover(0) == 1
    claim = queue.claim(mail_id)
    queue.broken = '/failed/'  # moving it into failed/
    with pytest.raises(QueueError, match=r'cannot move .*/cur/\S+ to .*/failed/'):
        claim.fail('550')
    # The rewritten version waits in cur/ for recovery.
    meta, _ = stored(queue_path, 'cur', mail_id)
    assert meta['last_error'] == '550'
    claim.abandon()


# -- ProcessorSide


def test_promote_due_by_mtime(queue_path, make_queue, clock):
    queue = make_queue(clock=clock)
    early, late = fill(queue, 2)
    queue.claim(early).defer('451', clock.now + 100)
    queue.claim(late).defer('451', clock.now + 200)
    assert queue.promote_due() == 0
    clock.now += 100
    assert queue.promote_due() == 1
    assert queue.pending() == [early]
    assert files(queue_path, 'deferred') == [late]


def test_promote_due_w_vanished_file(make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _rename(self, src, dst):
            os.unlink(src)  # another processor promoted it first
            os.rename(src, dst)

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    queue.claim(mail_id).defer('451', 0)
    assert make_queue(Racy).promote_due() == 0


def test_recover_claim_of_killed_process(queue_path, make_queue, clock):
    """A claim held by a SIGKILLed process: recovered after stale_after."""
    from pyramid_txmail.queue import MailQueue
    from tests.crashkit import hold_claim

    queue = make_queue()
    first, second = fill(queue, 2)
    ctx = multiprocessing.get_context('spawn')
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=hold_claim, args=(queue_path, child))
    proc.start()
    try:
        assert parent.poll(30)
        assert parent.recv() == first
        # Alive: never recovered, however old the claim.
        assert queue.recover(0) == 0
    finally:
        proc.kill()
        proc.join(30)
    assert files(queue_path, 'cur') == [first]
    assert queue.recover(3600) == 0  # dead, but not stale yet
    later = MailQueue(queue_path, clock=lambda: FakeClock()() + 10**9)
    assert later.recover(3600) == 1
    assert queue.pending() == [first, second]


def test_a_tmp_that_cannot_be_read_does_not_keep_claims_from_coming_back(
    queue_path, make_queue, clock, caplog
):
    # A claim whose processor is gone (its lock free, its claim old) goes
    # back to new/ even when tmp/ is missing: that error is logged, and the
    # pass goes on (tests/test_processor.py).
    queue = make_queue(clock=clock)
    [mail_id] = fill(queue, 1)
    queue.claim(mail_id).abandon()  # as a processor that stopped leaves it
    os.rmdir(os.path.join(queue_path, 'tmp'))
    clock.now += 3600
    with caplog.at_level(logging.ERROR, logger='pyramid_txmail.queue'):
        assert queue.recover(600) == 1
    assert queue.pending() == [mail_id]
    assert 'tmp: missing' in caplog.text


def test_recover_never_takes_a_live_claim(make_queue):
    queue = make_queue()
    [mail_id] = fill(queue, 1)
    claim = queue.claim(mail_id)
    assert queue.recover(0) == 0
    claim.done()


def test_recover_w_vanishing_claim(make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            raise FileNotFoundError(errno.ENOENT, 'gone')

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    queue.claim(mail_id)
    assert make_queue(Racy).recover(0) == 0


def test_recover_removes_old_tmp_files(queue_path, make_queue, clock):
    queue = make_queue(clock=clock)
    old = queue.stage(make_mail(1))
    young = queue.stage(make_mail(2))
    rewrite = os.path.join(queue_path, 'tmp', f'{old}.0a0b')
    open(rewrite, 'wb').close()
    for path in (os.path.join(queue_path, 'tmp', old), rewrite):
        os.utime(path, (clock.now - 36 * 3600 - 1,) * 2)
    os.utime(os.path.join(queue_path, 'tmp', young), (clock.now - 35 * 3600,) * 2)
    assert queue.recover(600) == 0
    assert files(queue_path, 'tmp') == [young]


def test_vanished_file_mid_pass_is_skipped(queue_path, make_queue, claimed):
    queue = make_queue()
    ids = fill(queue, 3)
    listing = queue.pending()
    os.unlink(os.path.join(queue_path, 'new', ids[1]))
    claimed = [c for c in map(queue.claim, listing) if c is not None]
    assert [c.id for c in claimed] == [ids[0], ids[2]]
    for claim in claimed:
        claim.done()


# -- Administration


def test_counts_every_state(five_states):
    queue, _, _ = five_states()
    assert queue.counts() == {
        **EMPTY,
        'queued': 1,
        'sending': 1,
        'deferred': 1,
        'failed': 2,
    }


def test_list_active_queue_in_order(five_states, clock):
    queue, ids, _ = five_states()
    clock.now += 30
    a, b, _, _, e = ids
    infos = queue.list(['queued', 'sending', 'deferred'])
    assert [(i.id, i.state) for i in infos] == [
        (a, 'queued'),
        (b, 'deferred'),
        (e, 'sending'),
    ]
    assert infos[0].age == 30
    assert infos[0].recipients == ('to@example.com',)
    assert infos[1].last_error == '451 later'
    assert infos[1].due == clock.now + 30


def test_list_skips_an_entry_gone_since_the_listing(queue_path, five_states, clock):
    from pyramid_txmail.queue import MailQueue

    _, ids, sending = five_states()

    class Racing(MailQueue):
        @staticmethod
        def _opener(path, flags, *mode):
            if '/cur/' in path:
                sending.done()  # its processor was quicker than the listing
            return os.open(path, flags, *mode)

    queue = Racing(queue_path, clock=clock)
    assert [i.id for i in queue.list(['queued', 'sending', 'deferred'])] == ids[:2]


def test_list_failed_shows_the_failed_area(five_states):
    queue, ids, _ = five_states()
    infos = list(queue.list(failed=True))
    assert [(i.id, i.last_error) for i in infos] == [
        (ids[2], '550 no such user'),
        (ids[3], '554 rejected'),
    ]


def test_retry_of_given_ids_queues_them_again(five_states, clock):
    queue, ids, _ = five_states()
    clock.now += 1000
    assert queue.retry([ids[3]]) == 1
    assert queue.pending() == [ids[0], ids[3]]
    claim = queue.claim(ids[3])
    assert (claim.attempts, claim.queued_at) == (0, clock.now)
    assert claim.last_error == '554 rejected'
    claim.done()


def test_retry_all_takes_failed_and_deferred(five_states):
    queue, _, _ = five_states()
    assert queue.retry() == 3
    assert queue.counts()['failed'] == queue.counts()['deferred'] == 0
    assert queue.counts()['queued'] == 4


def test_retry_deferred_by_id_keeps_its_attempts(five_states):
    queue, ids, _ = five_states()
    assert queue.retry([ids[1]]) == 1
    (info,) = [i for i in queue.list() if i.id == ids[1]]
    assert (info.state, info.attempts, info.due) == ('queued', 1, None)
    assert info.last_error == '451 later'


def test_retry_of_an_unknown_id_raises_before_changing_anything(
    queue_path, five_states
):
    from pyramid_txmail.queue import UnknownMessage

    queue, ids, _ = five_states()
    for unknown in (ids[0], 'nonsense/../x'):
        with pytest.raises(UnknownMessage) as info:
            queue.retry([ids[2], unknown])
        assert isinstance(info.value, KeyError)
        assert str(info.value) == (
            f'no message {unknown!r} in {queue_path} (failed/ or deferred/)'
        )
    assert queue.counts()['failed'] == 2
    assert str(UnknownMessage()) == ''


def test_retry_skips_busy_message(queue_path, five_states):
    queue, ids, _ = five_states()
    with open(os.path.join(queue_path, 'failed', ids[2]), 'rb') as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # another retry or purge
        assert queue.retry() == 2  # the other failed one, and the deferred


def test_purge_given_ids_in_any_state_but_sending(five_states):
    from pyramid_txmail.queue import QueueError

    queue, ids, sending = five_states()
    assert queue.purge(ids[:3]) == 3
    assert queue.counts() == {**EMPTY, 'sending': 1, 'failed': 1}
    with pytest.raises(QueueError, match='is being sent now'):
        queue.purge([ids[4]])
    sending.release()
    assert queue.purge([ids[4]]) == 1


def test_purge_failed_deletes_every_failed_message(five_states):
    from pyramid_txmail.queue import UnknownMessage

    queue, ids, _ = five_states()
    with pytest.raises(UnknownMessage, match=r'\(failed/\)'):
        queue.purge([ids[0]], failed=True)
    assert queue.purge(failed=True) == 2
    assert queue.counts() == {**EMPTY, 'queued': 1, 'sending': 1, 'deferred': 1}


def test_purge_needs_ids_or_failed(five_states):
    queue, _, _ = five_states()
    with pytest.raises(ValueError):
        queue.purge()


def test_purge_unknown_deletes_nothing(five_states):
    from pyramid_txmail.queue import UnknownMessage

    queue, ids, _ = five_states()
    with pytest.raises(
        UnknownMessage, match=r'\(new/ or deferred/ or hold/ or failed/\)'
    ):
        queue.purge([ids[0], '0000000000000000.1.ff'])
    assert queue.counts()['queued'] == 1


def test_purge_skips_claimed_meanwhile(queue_path, five_states):
    queue, ids, _ = five_states()
    with open(os.path.join(queue_path, 'new', ids[0]), 'rb') as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # a processor claiming it
        assert queue.purge([ids[0]]) == 0
    assert queue.pending() == [ids[0]]


NOBODY = 65534


def _nobody_opener(path, flags, mode=0o777):
    """``os.open`` as uid 65534 would see it: the suite runs as root, which
    may open any file, so the owner and mode checks are made here."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        bit = stat.S_IRUSR if st.st_uid == NOBODY else stat.S_IROTH
        if stat.S_ISREG(st.st_mode) and not st.st_mode & bit:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return os.open(path, flags, mode)


def queue_as_nobody(path, **kw):
    """A MailQueue of uid 65534, whose opens are checked as for that user."""
    from pyramid_txmail.queue import MailQueue

    if not os.path.exists(path):
        os.mkdir(path, 0o700)
        os.chown(path, NOBODY, NOBODY)

    class AsNobody(MailQueue):
        _opener = staticmethod(_nobody_opener)

    return AsNobody(path, **kw)


def add_bad_entries(queue, sub='new'):
    """One entry of every kind a processor cannot use, named to sort before
    any real message. Returns {id: the reason it is set aside for}."""
    meta = {
        'v': 1,
        'message_id': '<bad@test>',
        'sender': 'from@example.com',
        'recipients': ['to@example.com'],
        'queued_at': 1_600_000_000.0,
        'attempts': 0,
        'last_error': None,
    }
    body = b'Subject: bad\r\n\r\nbad\r\n'

    def line(**changes):
        return json.dumps({**meta, **changes}).encode() + b'\n' + body

    denied = 'cannot open: [Errno 13] Permission denied'
    kinds = [
        # Rewritten by `retry` run as root: root's, 0600.
        (line(), 0, 0o600, denied),
        (line(), NOBODY, 0o000, denied),
        (line(recipients=[123]), NOBODY, 0o600, "bad or missing 'recipients'"),
        (line(attempts=True), NOBODY, 0o600, "bad or missing 'attempts'"),
        (line(queued_at=float('nan')), NOBODY, 0o600, "bad or missing 'queued_at'"),
        (b'[' * 100_000 + b'\n', NOBODY, 0o600, 'metadata nested too deeply'),
        (b'{\xff}\n', NOBODY, 0o600, "'utf-8' codec can't decode byte 0xff"),
        ('directory', None, None, 'not a regular file'),
        ('fifo', None, None, 'not a regular file'),
        ('symlink', None, None, 'cannot open: [Errno 40] Too many levels'),
    ]
    reasons = {}
    for n, (content, uid, mode, reason) in enumerate(kinds, start=1):
        mail_id = f'{n:016d}.1.bad{n:x}'
        path = os.path.join(queue.path, sub, mail_id)
        if content == 'directory':
            os.mkdir(path)
        elif content == 'fifo':
            os.mkfifo(path)
        elif content == 'symlink':
            os.symlink(os.path.join(queue.path, 'elsewhere'), path)
        else:
            with open(path, 'wb') as f:
                f.write(content)
            os.chown(path, uid, uid)
            os.chmod(path, mode)
        reasons[mail_id] = reason
    return reasons


# -- BadEntries
# Entries a processor cannot use never hold up those behind them.


def test_each_bad_entry_is_set_aside_with_its_reason(queue_path, caplog):
    queue = queue_as_nobody(queue_path)
    reasons = add_bad_entries(queue)
    [good] = fill(queue, 1)
    claims = [queue.claim(mail_id) for mail_id in queue.pending()]
    assert claims[:-1] == [None] * len(reasons)
    assert claims[-1].id == good
    claims[-1].done()
    assert queue.pending() == []
    failed = {i.id: i for i in queue.list(failed=True)}
    assert sorted(failed) == sorted(reasons)
    for mail_id, reason in reasons.items():
        assert failed[mail_id].last_error.startswith('unreadable: ' + reason)
        assert f'unreadable queue file {mail_id} moved to failed/' in caplog.text
    assert queue.unreadable() == len(reasons)
    assert queue.counts()['failed'] == len(reasons)


def test_list_shows_every_entry_whatever_its_state(queue_path, clock):
    queue = queue_as_nobody(queue_path, clock=clock)
    reasons = add_bad_entries(queue)
    good = fill(queue, 2)
    clock.now += 60
    infos = list(queue.list())
    assert [i.id for i in infos] == [*reasons, *good]
    for info in infos[: len(reasons)]:
        assert info.state == 'queued'
        assert info.last_error.startswith('unreadable: ' + reasons[info.id])
        assert info.recipients == ()
        assert info.age > 10**8  # from the time in its id
    assert [i.recipients for i in infos[-2:]] == [('to@example.com',)] * 2
    assert infos[-1].age == 60


def test_list_prefers_the_reason_recorded_when_set_aside(queue_path, make_queue):
    reasons = add_bad_entries(queue_as_nobody(queue_path))
    queue = queue_as_nobody(queue_path)
    for mail_id in queue.pending():
        assert queue.claim(mail_id) is None
    # Root reads the root-owned file fine; the reason is still shown.
    first = next(iter(reasons))
    as_root = {i.id: i for i in make_queue().list(failed=True)}
    assert as_root[first].recipients == ('to@example.com',)
    assert as_root[first].last_error == (
        'unreadable: cannot open: [Errno 13] Permission denied'
    )


def test_entry_that_cannot_be_moved_is_skipped_and_logged_once(
    queue_path, make_queue, caplog
):
    from pyramid_txmail.queue import MailQueue

    class NoFailedDir(MailQueue):
        def _rename(self, src, dst):
            if '/failed/' in dst:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            os.rename(src, dst)

    queue = make_queue(NoFailedDir)
    bad = '0000000000000001.1.bad1'
    os.mkdir(os.path.join(queue_path, 'new', bad))
    [good] = fill(queue, 1)
    for _ in range(3):
        assert queue.claim(bad) is None
    assert caplog.text.count('cannot be moved to failed/') == 1
    assert 'Read-only file system; skipping it' in caplog.text
    assert queue.pending() == [bad, good]
    queue.claim(good).done()


def test_entry_unreadable_after_claim_is_set_aside_from_cur(
    queue_path, make_queue, claimed
):
    from pyramid_txmail.queue import MailQueue

    class BadDisk(MailQueue):
        def _rename(self, src, dst):
            os.rename(src, dst)
            if '/cur/' in dst:  # the sectors go bad as it is claimed
                os.chmod(dst, 0)
                os.truncate(dst, 0)

    queue = make_queue(BadDisk)
    [mail_id] = fill(queue, 1)
    assert queue.claim(mail_id) is None
    [info] = queue.list(failed=True)
    assert info.last_error == ('unreadable: Expecting value: line 1 column 1 (char 0)')
    assert files(queue_path, 'cur') == []


@pytest.mark.parametrize(
    ('code', 'where'), [(errno.EIO, 'failed'), (errno.ENOMEM, 'cur')]
)
def test_read_error_after_claim(queue_path, make_queue, code, where):
    from pyramid_txmail.queue import MailQueue, QueueError

    class BadRead(MailQueue):
        def _pread(self, fd, size, offset):
            raise OSError(code, os.strerror(code))

    queue = make_queue(BadRead)
    [mail_id] = fill(queue, 1)
    if code == errno.EIO:  # this entry's sectors: set aside
        assert queue.claim(mail_id) is None
        [info] = queue.list(failed=True)
        assert info.last_error.startswith('unreadable: cannot read: [Errno 5] ')
    else:  # this process's trouble: the pass ends, recovery takes it back
        with pytest.raises(QueueError, match=r'Cannot allocate memory'):
            queue.claim(mail_id)
        assert queue.recover(0) == 1
        where = 'new'
    assert files(queue_path, where)[0] == mail_id


def test_read_error_of_the_process_ends_the_pass(make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    class NoDescriptors(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    queue = make_queue()
    [mail_id] = fill(queue, 1)
    with pytest.raises(QueueError, match=r'cannot read .*Too many open files'):
        make_queue(NoDescriptors).claim(mail_id)
    assert queue.pending() == [mail_id]


def test_entry_removed_while_set_aside(queue_path, make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _rename(self, src, dst):
            os.rmdir(src)  # another processor set it aside first
            os.rename(src, dst)

    queue = make_queue(Racy)
    bad = '0000000000000001.1.bad1'
    os.mkdir(os.path.join(queue_path, 'new', bad))
    assert queue.claim(bad) is None
    assert files(queue_path, 'failed') == []


def test_reason_not_kept_on_a_full_disk_is_logged(queue_path, make_queue, caplog):
    from pyramid_txmail.queue import MailQueue

    class FullDisk(MailQueue):
        def _write(self, fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    queue = make_queue(FullDisk)
    bad = '0000000000000001.1.bad1'
    os.mkdir(os.path.join(queue_path, 'new', bad))
    assert queue.claim(bad) is None
    assert files(queue_path, 'failed') == [bad]
    assert 'cannot record why 0000000000000001.1.bad1 failed' in caplog.text
    [info] = queue.list(failed=True)
    assert info.last_error == 'unreadable: not a regular file'


def test_recovery_sets_aside_a_stale_claim_it_cannot_open(queue_path, claimed, clock):
    queue = queue_as_nobody(queue_path, clock=clock)
    stale, fresh = '0000000000000001.1.bad1', '0000000000000002.1.bad2'
    for mail_id, age in ((stale, 601), (fresh, 10)):
        path = os.path.join(queue_path, 'cur', mail_id)
        with open(path, 'wb') as f:
            f.write(b'a root processor claimed me')
        os.chmod(path, 0o600)  # root's
        os.utime(path, (clock.now - age,) * 2)
    assert queue.recover(600) == 0
    assert files(queue_path, 'cur') == [fresh]
    [info] = queue.list(failed=True)
    assert info.id == stale
    assert info.last_error == ('unreadable: cannot open: [Errno 13] Permission denied')


def test_recovery_leaves_a_directory_in_tmp_alone(
    queue_path, make_queue, clock, caplog
):
    queue = make_queue(clock=clock)
    odd = os.path.join(queue_path, 'tmp', 'somebody-s-directory')
    os.mkdir(odd)
    os.utime(odd, (clock.now - 40 * 3600,) * 2)
    assert queue.recover(600) == 0
    assert queue.recover(600) == 0
    assert os.path.isdir(odd)
    assert caplog.text.count(f'cannot remove {odd}: [Errno 21]') == 1


def test_retry_and_purge_of_bad_entries(queue_path):
    queue = queue_as_nobody(queue_path)
    reasons = add_bad_entries(queue)
    for mail_id in queue.pending():
        queue.claim(mail_id)
    # Back unchanged, the reasons forgotten: a claim sets them aside again.
    assert queue.retry() == len(reasons)
    assert queue.pending() == list(reasons)
    assert files(queue_path, 'failed') == []
    for mail_id in queue.pending():
        queue.claim(mail_id)
    assert queue.purge(failed=True) == len(reasons)
    assert files(queue_path, 'failed') == []


def test_purge_of_entry_gone_after_an_open_error(queue_path, make_queue):
    from pyramid_txmail.queue import MailQueue

    class Racy(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            os.unlink(path)  # purged by another operator meanwhile
            raise PermissionError(errno.EACCES, 'denied')

        def _rename(self, src, dst):
            os.unlink(src)
            raise FileNotFoundError(errno.ENOENT, 'gone')

    queue = make_queue()
    a, b = fill(queue, 2)
    for mail_id in (a, b):
        queue.claim(mail_id).fail('550')
    assert make_queue(Racy).purge([a]) == 0
    assert make_queue(Racy).retry([b]) == 0
    assert files(queue_path, 'failed') == []


# -- ReadOnly


def test_missing_queue_is_not_created(queue_path, make_queue):
    from pyramid_txmail.queue import QueueError

    with pytest.raises(QueueError) as info:
        make_queue(create=False)
    assert str(info.value) == (
        f'no mail queue at {queue_path}: nothing has been queued there yet'
    )
    assert not os.path.exists(queue_path)


def test_queue_that_is_no_directory_cannot_be_read(queue_path, make_queue):
    from pyramid_txmail.queue import MailQueue, QueueError

    with open(queue_path, 'w') as f:
        f.write('not a queue')
    with pytest.raises(QueueError, match=r'^cannot read mail queue .*/q: not a d'):
        make_queue(create=False)
    with pytest.raises(QueueError, match=r'^cannot read mail queue .*\[Errno 20\]'):
        MailQueue(os.path.join(queue_path, 'q'), create=False)


def test_existing_queue_is_read(make_queue):
    [mail_id] = fill(make_queue(), 1)
    assert make_queue(create=False).pending() == [mail_id]


# -- Ownership
# Run as root on another user's queue, what is created is theirs.


def test_files_and_directories_keep_the_queue_owner(queue_path, make_queue):
    os.mkdir(queue_path, 0o700)
    os.chown(queue_path, NOBODY, NOBODY)
    queue = make_queue()  # the subdirectories, as root
    a, b, _ = fill(queue, 3)
    queue.claim(a).fail('550 no')
    queue.claim(b).defer('451 later', 0)
    bad = '0000000000000001.1.bad1'
    os.mkdir(os.path.join(queue_path, 'new', bad))
    os.chown(os.path.join(queue_path, 'new', bad), NOBODY, NOBODY)
    queue.claim(bad)
    assert queue.retry([a]) == 1
    found = owners(queue_path)
    assert f'failed/{bad}.reason' in found
    assert set(found.values()) == {(NOBODY, NOBODY)}


def test_root_owned_queue_stays_roots(queue_path, make_queue):
    queue = make_queue()
    fill(queue, 1)
    assert set(owners(queue_path).values()) == {(0, 0)}


# -- HoldAndFlush
# hold/, flush and read: the operator's view of the queue.


def test_held_messages_are_never_claimed_or_promoted(queue_path, four_states, clock):
    queue, ids = four_states()
    a, b, _, d = ids
    assert queue.hold([a, b]) == 2
    assert files(queue_path, 'hold') == sorted([a, b])
    assert queue.pending() == [d]
    clock.now += 3600
    assert queue.promote_due() == 0
    assert queue.recover(0) == 0
    assert queue.pending() == [d]
    assert queue.counts() == {**EMPTY, 'queued': 1, 'held': 2, 'failed': 1}


def test_release_puts_held_messages_back_due_now(queue_path, four_states):
    queue, ids = four_states()
    a, b, _, d = ids
    queue.hold([a, b])
    assert queue.release([b, a]) == 2
    assert queue.pending() == [a, b, d]
    assert os.listdir(os.path.join(queue_path, 'hold')) == []


def test_hold_of_a_held_message_changes_nothing(queue_path, four_states):
    queue, ids = four_states()
    queue.hold([ids[0]])
    assert queue.hold([ids[0]]) == 0
    assert files(queue_path, 'hold') == [ids[0]]


def test_hold_refuses_what_is_being_sent_or_not_there(queue_path, four_states):
    from pyramid_txmail.queue import QueueError, UnknownMessage

    queue, ids = four_states()
    claim = queue.claim(ids[3])
    with pytest.raises(QueueError, match='is being sent now'):
        queue.hold([ids[0], ids[3]])
    with pytest.raises(UnknownMessage, match=r'\(new/ or deferred/ or hold/\)'):
        queue.hold([ids[2]])  # failed: retry it instead
    with pytest.raises(UnknownMessage, match=r'\(hold/\)'):
        queue.release([ids[0]])
    assert not os.path.exists(os.path.join(queue_path, 'hold'))
    claim.done()


def test_hold_waits_for_no_claim_forever(queue_path, four_states):
    from pyramid_txmail.queue import QueueError

    queue, ids = four_states()
    with open(os.path.join(queue_path, 'new', ids[0]), 'rb') as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # a processor claiming it
        with pytest.raises(QueueError, match='is being sent now'):
            queue.hold([ids[0]])
    assert queue.pending() == [ids[0], ids[3]]


def test_hold_follows_a_message_promoted_meanwhile(queue_path, four_states):
    from pyramid_txmail.queue import MailQueue

    class Racing(MailQueue):
        raced = False

        def _rename(self, src, dst):
            if '/deferred/' in src and not Racing.raced:
                Racing.raced = True  # a processor's promote_due wins
                os.rename(src, src.replace('/deferred/', '/new/'))
            os.rename(src, dst)

    queue, ids = four_states(Racing)
    assert queue.hold([ids[1]]) == 1
    assert Racing.raced and files(queue_path, 'hold') == [ids[1]]


def test_hold_of_a_message_claimed_or_purged_meanwhile(four_states):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Racing(MailQueue):
        def _make(self, sub):
            super()._make(sub)
            self.meanwhile()

    queue, ids = four_states(Racing)
    claims = []
    queue.meanwhile = lambda: claims.append(queue.claim(ids[0]))
    with pytest.raises(QueueError, match='is being sent now'):
        queue.hold([ids[0]])
    claims[0].done()
    queue.meanwhile = lambda: queue.purge([ids[3]])
    assert queue.hold([ids[3]]) == 0


def test_hold_reports_what_it_cannot_open_or_move(four_states):
    from pyramid_txmail.queue import MailQueue, QueueError

    class Broken(MailQueue):
        fail = ''

        def _opener(self, path, flags, mode=0o777):
            if Broken.fail == 'open' and '/new/' in path:
                raise PermissionError(errno.EACCES, 'denied')
            return os.open(path, flags, mode)

        def _rename(self, src, dst):
            if Broken.fail == 'rename' and '/hold/' in dst:
                raise OSError(errno.EIO, 'Input/output error')
            os.rename(src, dst)

    queue, ids = four_states(Broken)
    Broken.fail = 'open'
    with pytest.raises(QueueError, match=r'cannot move \S+: \[Errno 13\] denied'):
        queue.hold([ids[0]])
    Broken.fail = 'rename'
    with pytest.raises(QueueError, match=r'to hold/: \[Errno 5\] Input/output'):
        queue.hold([ids[0]])
    assert queue.pending() == [ids[0], ids[3]]


def test_hold_where_hold_is_not_a_directory(queue_path, four_states):
    from pyramid_txmail.queue import QueueError

    queue, ids = four_states()
    with open(os.path.join(queue_path, 'hold'), 'w'):
        pass
    with pytest.raises(QueueError, match=r'to hold/: \[Errno 20\] Not a dir'):
        queue.hold([ids[0]])


def test_hold_as_root_gives_hold_to_the_queue_owner(queue_path):
    queue = queue_as_nobody(queue_path)
    mail_id = queue.stage(make_mail(1))
    queue.publish([mail_id])
    assert queue.hold([mail_id]) == 1
    st = os.stat(os.path.join(queue_path, 'hold'))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        NOBODY,
        NOBODY,
        0o700,
    )


def test_purge_takes_held_messages(queue_path, four_states):
    queue, ids = four_states()
    queue.hold([ids[0]])
    assert queue.purge([ids[0]]) == 1
    assert files(queue_path, 'hold') == []


def test_flush_makes_every_deferred_message_due_now(four_states):
    queue, ids = four_states()
    assert queue.flush() == 1
    assert queue.pending() == [ids[0], ids[1], ids[3]]
    assert queue.flush() == 0


def test_flush_loses_a_race_with_promote_due_quietly(four_states):
    from pyramid_txmail.queue import MailQueue

    class Racing(MailQueue):
        def _rename(self, src, dst):
            if '/deferred/' in src:
                os.rename(src, dst)  # promote_due was first
            os.rename(src, dst)

    queue, ids = four_states(Racing)
    assert queue.flush() == 0
    assert ids[1] in queue.pending()


def test_list_every_state_with_subject_and_message_id(four_states, clock):
    from pyramid_txmail.queue import ALL_STATES

    queue, ids = four_states()
    queue.hold([ids[0]])
    claim = queue.claim(ids[3])
    infos = list(queue.list(states=ALL_STATES.values()))
    assert [(i.id, i.state) for i in infos] == list(
        zip(ids, ['held', 'deferred', 'failed', 'sending'], strict=True)
    )
    assert [(i.message_id, i.subject) for i in infos] == [
        (f'<{n}@test>', f'test {n}') for n in range(4)
    ]
    assert infos[0].sender == 'from@example.com'
    assert infos[0].queued_at == clock.now
    assert [i.id for i in queue.list(states=['held'])] == [ids[0]]
    claim.done()


def test_stage_keeps_the_decoded_subject_and_none_without_one(queue_path, make_queue):
    from pyramid_txmail.message import Envelope, PreparedMail

    queue = make_queue()
    data = b'Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n und so\r\n\r\nSubject: no\r\n'
    with_subject = queue.stage(PreparedMail('<s@x>', Envelope('a@x', ('b@x',)), data))
    without = queue.stage(
        PreparedMail('<n@x>', Envelope('a@x', ('b@x',)), b'X: y\r\n\r\nSubject: no')
    )
    assert stored(queue_path, 'tmp', with_subject)[0]['subject'] == 'Grüße und so'
    assert 'subject' not in stored(queue_path, 'tmp', without)[0]
    queue.publish([with_subject, without])
    assert [i.subject for i in queue.list()] == ['Grüße und so', None]


def test_a_subject_that_is_not_a_string_makes_the_entry_unreadable(
    queue_path, make_queue
):
    queue = make_queue()
    (mail_id,) = fill(queue, 1)
    path = os.path.join(queue_path, 'new', mail_id)
    meta, data = stored(queue_path, 'new', mail_id)
    with open(path, 'wb') as f:
        f.write(json.dumps({**meta, 'subject': 7}).encode() + b'\n' + data)
    (info,) = queue.list()
    assert info.last_error == "unreadable: bad or missing 'subject'"


def test_read_gives_info_and_exact_bytes_in_every_state(four_states, clock):
    queue, ids = four_states()
    queue.hold([ids[0]])
    claim = queue.claim(ids[3])
    for n, state in enumerate(['held', 'deferred', 'failed', 'sending']):
        info, data = queue.read(ids[n])
        assert (info.state, info.subject, data) == (
            state,
            f'test {n}',
            make_mail(n).data,
        )
    assert queue.read(ids[1])[0].due == clock.now + 60
    assert queue.read(ids[2])[0].last_error == '550 no such user'
    claim.done()


def test_read_unknown_or_unreadable(queue_path, four_states):
    from pyramid_txmail.queue import MailQueue, QueueError, UnknownMessage

    queue, ids = four_states()
    for unknown in ('0000000000000000.1.ab', '../new/' + ids[0]):
        with pytest.raises(UnknownMessage):
            queue.read(unknown)
    os.mkdir(os.path.join(queue_path, 'new', '0000000000000000.1.cd'))
    with pytest.raises(QueueError, match='not a regular file'):
        queue.read('0000000000000000.1.cd')

    class Denied(MailQueue):
        def _opener(self, path, flags, mode=0o777):
            raise PermissionError(errno.EACCES, 'denied')

    with pytest.raises(QueueError, match=r'cannot read \S+: \[Errno 13\] denied'):
        Denied(queue_path).read(ids[0])

    class Failing(MailQueue):
        def _pread(self, fd, size, offset):
            raise OSError(errno.EIO, 'Input/output error')

    with pytest.raises(QueueError, match=r'cannot read \S+: \[Errno 5\] Input'):
        Failing(queue_path).read(ids[0])


def test_read_without_subject_metadata_reads_the_headers(queue_path, four_states):
    queue, ids = four_states()
    path = os.path.join(queue_path, 'new', ids[0])
    meta, data = stored(queue_path, 'new', ids[0])
    del meta['subject']
    with open(path, 'wb') as f:
        f.write(json.dumps(meta).encode() + b'\n' + data)
    assert queue.read(ids[0])[0].subject == 'test 0'


def test_read_only_queue_without_hold_lists_nothing_held(queue_path, four_states):
    from pyramid_txmail.queue import MailQueue

    four_states()
    queue = MailQueue(queue_path, create=False)
    assert queue.list(['held']) == []
    assert queue.counts()['held'] == 0
    assert not os.path.exists(os.path.join(queue_path, 'hold'))


# -- Fault
# The standing configuration fault that ``status`` shows.


def test_record_keeps_the_first_since_and_the_latest_reason(
    queue_path, make_queue, clock
):
    from pyramid_txmail.queue import Fault

    queue = make_queue(clock=clock)
    assert queue.read_fault() is None
    queue.record_fault('535 login refused')
    clock.now += 60
    queue.record_fault('the relay offers no STARTTLS')
    assert queue.read_fault() == Fault('the relay offers no STARTTLS', clock.now - 60)
    assert files(queue_path, 'tmp') == []
    queue.clear_fault()
    assert queue.read_fault() is None
    queue.clear_fault()  # none: nothing to do


def test_fault_recorded_elsewhere_is_cleared_by_the_next_pass(queue_path, make_queue):
    # Sending looks for the fault once a pass, not once per message.
    queue = make_queue()
    other = make_queue()  # another processor on the same directory
    queue.start_pass(stale_after=600)
    queue.clear_fault()  # the pass's first message was sent
    other.record_fault('535 login refused')
    queue.clear_fault()
    assert queue.read_fault() is not None
    queue.start_pass(stale_after=600)
    queue.clear_fault()
    assert queue.read_fault() is None


def test_clear_that_failed_is_tried_again(queue_path, make_queue):
    queue = make_queue()
    other = make_queue()
    os.mkdir(os.path.join(queue_path, 'fault.json'))
    queue.clear_fault()  # cannot remove a directory: logged
    os.rmdir(os.path.join(queue_path, 'fault.json'))
    other.record_fault('535 login refused')
    queue.clear_fault()
    assert queue.read_fault() is None


@pytest.mark.parametrize(
    'text', [b'', b'[1]', b'{"reason": 1, "since": 2}', b'{"reason": "x"}']
)
def test_damaged_fault_file_reads_as_none(queue_path, make_queue, text):
    queue = make_queue()
    with open(os.path.join(queue_path, 'fault.json'), 'wb') as f:
        f.write(text)
    assert queue.read_fault() is None


def test_record_and_clear_never_raise(queue_path, make_queue, caplog):
    from pyramid_txmail.queue import MailQueue

    class Full(MailQueue):
        def _write(self, fd, data):
            raise OSError(errno.ENOSPC, 'No space left on device')

    queue = make_queue(Full)
    with caplog.at_level(logging.WARNING, 'pyramid_txmail.queue'):
        queue.record_fault('535 login refused')
        assert queue.read_fault() is None
        assert files(queue_path, 'tmp') == []
        os.mkdir(os.path.join(queue_path, 'fault.json'))
        queue.clear_fault()
    assert [r.getMessage().split(':')[0] for r in caplog.records] == [
        f'cannot record the configuration fault in {queue_path}/fault.json',
        f'cannot remove {queue_path}/fault.json',
    ]


# -- the file format (pyramid_txmail.queue.stored)


def test_the_metadata_line_is_written_as_format_version_1(queue_path, make_queue):
    queue = make_queue(clock=FakeClock(1_700_000_000.0))
    mail_id = queue.stage(make_mail(1, ('a@example.com',)))
    with open(os.path.join(queue_path, 'tmp', mail_id), 'rb') as f:
        line = f.readline()
    assert line == (
        b'{"v":1,"id":"' + mail_id.encode() + b'","message_id":"<1@test>",'
        b'"sender":"from@example.com","recipients":["a@example.com"],'
        b'"queued_at":1700000000.0,"attempts":0,"last_error":null,'
        b'"subject":"test 1"}\n'
    )


def test_a_file_of_an_older_version_is_sent_and_rewritten_in_this_format(
    queue_path, make_queue, clock
):
    # 0.x wrote smtputf8 (never read) and no subject; an adopted copy has
    # legacy. An integer queued_at is kept as it is.
    queue = make_queue(clock=clock)
    mail_id = '1700000000000000.1.abc'
    meta = {
        'v': 1,
        'id': mail_id,
        'message_id': '<old@test>',
        'sender': 'from@example.com',
        'recipients': ['a@example.com', 'b@example.com'],
        'queued_at': 1700000000,
        'attempts': 2,
        'last_error': '451 later',
        'smtputf8': False,
        'legacy': 'new/1234.repoze',
    }
    data = make_mail(7).data
    with open(os.path.join(queue_path, 'new', mail_id), 'wb') as f:
        f.write(json.dumps(meta).encode() + b'\n' + data)
    [entry] = queue.list(['queued'])
    assert (entry.subject, entry.attempts, entry.queued_at) == ('test 7', 2, 1.7e9)
    claim = queue.claim(mail_id)
    assert (claim.message_id, claim.data, claim.attempts) == ('<old@test>', data, 2)
    claim.defer('452 full', clock.now + 60, recipients=['b@example.com'])
    written, on_disk = stored(queue_path, 'deferred', mail_id)
    assert on_disk == data
    assert written == {
        'v': 1,
        'id': mail_id,
        'message_id': '<old@test>',
        'sender': 'from@example.com',
        'recipients': ['b@example.com'],
        'queued_at': 1700000000,
        'attempts': 3,
        'last_error': '452 full',
        'legacy': 'new/1234.repoze',
    }


def test_list_and_counts_include_repoze_sendmail_files(queue_path, five_states):
    queue, ids, sending = five_states()
    legacy = (
        b'X-Actually-From: from@example.com\r\nX-Actually-To: old@example.com\r\n'
        b'Subject: old\r\n\r\nbody\r\n'
    )
    with open(os.path.join(queue_path, 'new', '1.repoze'), 'wb') as f:
        f.write(legacy)
    with open(os.path.join(queue_path, 'new', '.rejected-2.repoze'), 'wb') as f:
        f.write(legacy)
    assert queue.counts()['legacy'] == 2
    everything = queue.list()
    assert [(e.id, e.state) for e in everything[:2]] == [
        ('new/.rejected-2.repoze', 'failed'),
        ('new/1.repoze', 'legacy'),
    ]
    assert [e.id for e in everything[2:]] == ids
    assert [e.id for e in queue.list(['legacy'])] == ['new/1.repoze']
    assert [e.id for e in queue.list(['failed'])] == [
        'new/.rejected-2.repoze',
        *ids[2:4],
    ]
    assert [e.id for e in queue.list(['queued'])] == ids[:1]
    sending.release()


def test_a_claim_goes_on_while_forks_keep_coming_between_its_opens(make_queue):
    # A process forking without pause: each open is followed by a fork
    # (what the fork hook does in the parent), and the claim must not
    # reopen for ever.
    from pyramid_txmail.queue import MailQueue, locks

    opens = []

    class ForkAfterEachOpen(MailQueue):
        def _opener(self, path, flags, *mode):
            fd = os.open(path, flags, *mode)
            if os.path.basename(os.path.dirname(path)) == 'new':
                opens.append(path)
                locks._before_fork()
            return fd

    queue = make_queue(ForkAfterEachOpen)
    [mail_id] = fill(queue, 1)
    claim = queue.claim(mail_id)
    assert claim is not None
    assert len(opens) == locks._REOPENS + 1
    claim.release()
    assert queue.pending() == [mail_id]
