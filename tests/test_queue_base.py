"""The queue protocol (pyramid_txmail.queue.base), pinned for every backend.

Each test runs once per backend of the ``backend`` fixture (tests/conftest.py)
and looks only through the protocol: what a pass hands out, and what
counts(), list(), read() and read_fault() show afterwards.
"""

from __future__ import annotations

import dataclasses

import pytest

from pyramid_txmail.exceptions import QueueError, UnknownMessage
from pyramid_txmail.queue.base import STATE_NAMES, Entry, Fault
from tests import make_mail

STALE = 600.0


def claims(queue, **kw):
    """Every claim one pass hands out, in order (bounded)."""
    source = queue.start_pass(stale_after=kw.pop('stale_after', STALE), **kw)
    found = []
    for _ in range(100):
        claim = source.claim()
        if claim is None:
            return found
        found.append(claim)
    raise AssertionError('a pass never ended')


def states(queue):
    """counts() without the zeros."""
    return {state: n for state, n in queue.counts().items() if n}


def test_a_pass_claims_the_due_messages_in_queue_order_then_none(backend):
    mails = [make_mail(n, (f'r{n}@example.com',)) for n in range(3)]
    ids = [backend.add(mail) for mail in mails]
    claimed = claims(backend.queue)
    assert [c.id for c in claimed] == ids
    for claim, mail in zip(claimed, mails, strict=True):
        assert claim.message_id == mail.message_id
        assert claim.envelope == mail.envelope
        assert claim.data == mail.data
        assert (claim.attempts, claim.last_error) == (0, None)
        assert claim.queued_at == backend.clock.now
    assert states(backend.queue) == {'sending': 3}
    for claim in claimed:
        claim.release()


def test_two_processors_never_claim_the_same_message(backend):
    ids = {backend.add(make_mail(n)) for n in range(6)}
    first = backend.queue.start_pass(stale_after=STALE)
    second = backend.other().start_pass(stale_after=STALE)
    taken = []
    for _ in range(10):
        for source in (first, second):
            claim = source.claim()
            if claim is not None:
                taken.append(claim.id)
                claim.done()
    assert sorted(taken) == sorted(ids)
    assert states(backend.queue) == {}


def test_done_removes_the_message(backend):
    mail_id = backend.add(make_mail())
    [claim] = claims(backend.queue)
    claim.done()
    assert states(backend.queue) == {}
    assert backend.queue.list() == []
    with pytest.raises(UnknownMessage):
        backend.queue.read(mail_id)


def test_defer_counts_the_attempt_and_makes_it_due_later(backend):
    mail_id = backend.add(make_mail(0, ('a@example.com', 'b@example.com')))
    [claim] = claims(backend.queue)
    due = backend.clock.now + 60
    claim.defer('451 later', due, recipients=['b@example.com'])
    [entry] = backend.queue.list(['deferred'])
    assert (entry.id, entry.state, entry.attempts) == (mail_id, 'deferred', 1)
    assert (entry.last_error, entry.due) == ('451 later', due)
    assert entry.recipients == ('b@example.com',)
    assert claims(backend.queue) == []  # not due yet
    backend.clock.now += 61
    [again] = claims(backend.queue)
    assert (again.attempts, again.last_error) == (1, '451 later')
    assert again.envelope.recipients == ('b@example.com',)
    again.done()


def test_fail_moves_it_to_failed_with_the_error(backend):
    mail_id = backend.add(make_mail())
    [claim] = claims(backend.queue)
    claim.fail('550 no such user')
    assert states(backend.queue) == {'failed': 1}
    entry, data = backend.queue.read(mail_id)
    assert (entry.state, entry.attempts) == ('failed', 1)
    assert entry.last_error == '550 no such user'
    assert data == make_mail().data
    assert claims(backend.queue) == []


def test_set_aside_fails_it_and_a_retry_skips_who_has_it(backend):
    mail_id = backend.add(make_mail(0, ('a@example.com', 'b@example.com')))
    [claim] = claims(backend.queue)
    claim.set_aside('accepted but not recorded', delivered=['a@example.com'])
    [entry] = backend.queue.list(['failed'])
    assert (entry.id, entry.last_error) == (mail_id, 'accepted but not recorded')
    assert backend.queue.retry([mail_id]) == 1
    [again] = claims(backend.queue)
    assert again.envelope.recipients == ('b@example.com',)
    again.done()


def test_release_puts_it_back_unchanged_and_due_now(backend):
    backend.add(make_mail())
    [claim] = claims(backend.queue)
    claim.release()
    assert states(backend.queue) == {'queued': 1}
    [again] = claims(backend.queue)
    assert (again.attempts, again.last_error) == (0, None)
    again.done()


def test_an_abandoned_claim_is_taken_back_after_stale_after(backend):
    backend.add(make_mail())
    [claim] = claims(backend.queue)
    claim.abandon()
    assert claims(backend.queue) == []
    backend.clock.now += STALE + 1
    [again] = claims(backend.queue)
    assert again.attempts == 0
    again.done()


def test_a_second_outcome_raises_queue_error(backend):
    backend.add(make_mail())
    [claim] = claims(backend.queue)
    claim.done()
    with pytest.raises(QueueError):
        claim.fail('550 no')
    assert states(backend.queue) == {}


def test_hold_release_flush_retry_and_purge_say_how_many(backend):
    queue = backend.queue
    a, b, c, d, e = (backend.add(make_mail(n)) for n in range(5))
    first, second, third, *rest = claims(queue)
    first.defer('451 later', backend.clock.now + 3600)
    second.defer('451 later', backend.clock.now + 3600)
    third.fail('554 rejected')
    for claim in rest:
        claim.release()
    assert states(queue) == {'queued': 2, 'deferred': 2, 'failed': 1}

    assert queue.hold([d, a]) == 2  # one queued, one deferred
    assert states(queue) == {'queued': 1, 'deferred': 1, 'held': 2, 'failed': 1}
    assert sorted(entry.id for entry in queue.list(['held'])) == sorted([a, d])
    [claim] = claims(queue)  # held ones are never claimed
    assert claim.id == e
    claim.release()
    assert queue.release([a, d]) == 2
    assert queue.flush() == 1  # b
    assert states(queue) == {'queued': 4, 'failed': 1}
    assert queue.retry() == 1  # c
    assert states(queue) == {'queued': 5}
    assert queue.purge([a, b]) == 2
    assert queue.purge(failed=True) == 0
    assert states(queue) == {'queued': 3}
    assert [claim.id for claim in claims(queue)] == [c, d, e]


def test_counts_name_every_state_even_an_empty_one(backend):
    counts = backend.queue.counts()
    assert set(STATE_NAMES) <= set(counts)
    assert set(counts.values()) == {0}


def test_list_shows_every_state_by_default_in_queue_order(backend):
    queue = backend.queue
    ids = [backend.add(make_mail(n)) for n in range(5)]
    queued, sending, deferred, failed, held = claims(queue)
    queued.release()
    deferred.defer('451 later', backend.clock.now + 60)
    failed.fail('550 no')
    held.release()
    assert queue.hold([held.id]) == 1
    shown = {entry.id: entry.state for entry in queue.list()}
    assert shown == dict(
        zip(ids, ['queued', 'sending', 'deferred', 'failed', 'held'], strict=True)
    )
    assert [entry.id for entry in queue.list(['held', 'queued'])] == [ids[0], ids[4]]
    sending.release()


def test_read_only_methods_change_nothing(backend):
    queue = backend.queue
    mail_id = backend.add(make_mail())
    [claim] = claims(queue)
    claim.defer('451 later', backend.clock.now + 60)
    queue.record_fault('535 login refused')
    before = backend.snapshot()
    backend.clock.now += 3600
    queue.counts()
    queue.list()
    queue.read(mail_id)
    queue.read_fault()
    assert backend.snapshot() == before


def test_read_of_an_unknown_id_raises_unknown_message(backend):
    with pytest.raises(UnknownMessage):
        backend.queue.read('0000000000000000.1.0')


def test_a_fault_keeps_its_first_since_and_latest_reason_until_cleared(backend):
    queue = backend.queue
    assert queue.read_fault() is None
    since = backend.clock.now
    queue.record_fault('535 login refused')
    backend.clock.now += 60
    queue.record_fault('no STARTTLS')
    assert queue.read_fault() == Fault('no STARTTLS', since)
    assert backend.other().read_fault() == Fault('no STARTTLS', since)
    queue.clear_fault()
    assert queue.read_fault() is None


def test_entries_and_faults_are_frozen_values():
    entry = Entry('id', 'queued', 1.0, 0, ('a@example.com',), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.state = 'failed'  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fault('535', 1.0).reason = 'other'  # type: ignore[misc]
