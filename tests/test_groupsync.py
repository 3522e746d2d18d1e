"""Group commit: overlapping syncs of a directory share one fsync, and each
caller still returns only after an fsync that began after its call."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from pyramid_txmail.queue.groupsync import GroupSync


class Fsyncs:
    """An fsync seam that really syncs, records each call in order with the
    number of sync() calls made before it began, and can hold the first one
    until released."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # callers seen when each fsync began
        self.callers = 0
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.fail: list[OSError] = []
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls.append(self.callers)
            first = len(self.calls) == 1
        if first:
            self.holding.set()
            assert self.hold.wait(10)
        if self.fail:
            raise self.fail.pop()
        os.fsync(fd)


def _waiting(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked waiting inside GroupSync.sync."""
    frame = sys._current_frames().get(thread.ident or 0)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return 'wait' in names and 'sync' in names


def _until(predicate, what: str) -> None:
    for _ in range(1000):  # up to 10 s
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f'timed out waiting for {what}')


def _call(group: GroupSync, fsyncs: Fsyncs, errors: list[BaseException]) -> None:
    with fsyncs.lock:
        fsyncs.callers += 1
    try:
        group.sync()
    except BaseException as exc:
        errors.append(exc)


def test_a_lone_sync_fsyncs_the_directory_once(tmp_path):
    fsyncs = Fsyncs()
    fsyncs.hold.set()
    group = GroupSync(str(tmp_path), fsyncs)
    group.sync()
    group.sync()
    assert len(fsyncs.calls) == 2  # sequential callers: one each


def test_callers_arriving_during_an_fsync_share_the_next_one(tmp_path):
    fsyncs = Fsyncs()
    group = GroupSync(str(tmp_path), fsyncs)
    errors: list[BaseException] = []
    leader = threading.Thread(target=_call, args=(group, fsyncs, errors))
    leader.start()
    assert fsyncs.holding.wait(10)
    followers = [
        threading.Thread(target=_call, args=(group, fsyncs, errors)) for _ in range(7)
    ]
    for thread in followers:
        thread.start()
    _until(lambda: all(_waiting(t) for t in followers), 'the followers to wait')
    assert len(fsyncs.calls) == 1  # none returned on the leader's fsync
    fsyncs.hold.set()
    for thread in [leader, *followers]:
        thread.join(10)
        assert not thread.is_alive()
    assert errors == []
    # Eight commits, two fsyncs: the leader's, then one for all who waited,
    # begun after all eight had called.
    assert fsyncs.calls == [1, 8]


def test_a_failed_fsync_raises_for_its_caller_and_the_others_sync_again(tmp_path):
    fsyncs = Fsyncs()
    fsyncs.fail.append(OSError(5, 'Input/output error'))
    group = GroupSync(str(tmp_path), fsyncs)
    errors: list[BaseException] = []
    leader = threading.Thread(target=_call, args=(group, fsyncs, errors))
    leader.start()
    assert fsyncs.holding.wait(10)
    follower = threading.Thread(target=_call, args=(group, fsyncs, errors))
    follower.start()
    _until(lambda: _waiting(follower), 'the follower to wait')
    fsyncs.hold.set()
    for thread in (leader, follower):
        thread.join(10)
        assert not thread.is_alive()
    assert [type(e) for e in errors] == [OSError]  # the leader's only
    assert len(fsyncs.calls) == 2  # the follower's own, after the failure


def test_an_unopenable_directory_raises(tmp_path):
    group = GroupSync(str(tmp_path / 'gone'), os.fsync)
    with pytest.raises(FileNotFoundError):
        group.sync()
    (tmp_path / 'gone').mkdir()
    group.sync()  # and works once it is there


def test_a_child_forked_mid_sync_commits_on_its_own(tmp_path):
    """The parent's sync in flight at the fork never finishes in the child:
    the child's queue must not wait for it."""
    from pyramid_txmail.queue import MailQueue
    from tests import in_forked_child, make_mail

    fsyncs = Fsyncs()
    queue = MailQueue(tmp_path / 'q')
    staged = queue.stage(make_mail())
    queue._fsync = staticmethod(fsyncs)  # the queue's seam, on this object
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            queue.publish([staged])  # its fsync of new/ is held
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    parent = threading.Thread(target=commit)
    parent.start()
    assert fsyncs.holding.wait(10)  # the parent's commit is mid-fsync

    def child() -> bool:  # pragma: no cover - runs in the child
        fsyncs.hold.set()  # the child's own fsyncs go through
        queue.publish([queue.stage(make_mail())])
        return True

    try:
        assert in_forked_child(child, timeout=20), 'the child hangs'
    finally:
        fsyncs.hold.set()
        parent.join(10)
    assert errors == []
    assert len(os.listdir(tmp_path / 'q' / 'new')) == 2
