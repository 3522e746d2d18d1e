"""Helpers that run in other processes: claim races, real faults, kill -9.

The functions here are imported by child processes (``multiprocessing``
with the spawn start method, or ``python -m tests.crashkit``), so they
take only picklable arguments and report through pipes, files or stdout.
Every loop in them is bounded: a child never outlives its test by more than
its own deadline.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import time

from tests import make_mail

#: Longest any child keeps going on its own (seconds).
CHILD_DEADLINE = 30.0


def run_together(
    target, args, outs: list[str], timeout: float = 60.0, ctx=None
) -> list[str]:
    """Run ``target(*args, barrier, out)`` in one spawned process per
    ``out`` (or one of the multiprocessing context ``ctx``), all released at
    once by a barrier; return what each wrote to its ``out`` file. Every
    process is killed by the end, and each must have exited 0."""
    ctx = ctx or multiprocessing.get_context('spawn')
    barrier = ctx.Barrier(len(outs))
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for out in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
    for proc in procs:
        proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * len(outs)
    written = []
    for out in outs:
        with open(out) as f:
            written.append(f.read())
    return written


def fill(queue, count: int, start: int = 0, recipients=('to@example.com',)):
    """Stage and publish ``count`` small messages; return their queue ids."""
    ids = [queue.stage(make_mail(n, recipients)) for n in range(start, start + count)]
    queue.publish(ids)
    return ids


def claim_everything(path: str, barrier, out: str) -> None:
    """Claim (and remove) every message in the queue; write the ids to ``out``.

    Started in several processes at once; ``barrier`` lines them up so that
    they really compete for the same files.
    """
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    barrier.wait(CHILD_DEADLINE)
    claimed = []
    for mail_id in queue.pending():
        claim = queue.claim(mail_id)
        if claim is not None:
            claimed.append(claim.id)
            claim.done()
    with open(out, 'w') as f:
        f.write('\n'.join(claimed))


def stage_over_file_size_limit(path: str, limit: int, size: int, conn) -> None:
    """Stage a ``size``-byte message with RLIMIT_FSIZE at ``limit`` bytes.

    The kernel then refuses the write with a real EFBIG (SIGXFSZ, which
    would kill us, is ignored). Sends back the error text and what is left in
    ``tmp/``.
    """
    from pyramid_txmail.message import PreparedMail
    from pyramid_txmail.queue import MailQueue, QueueError

    queue = MailQueue(path)  # directories first: they are not files
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    small = make_mail(1)
    mail = PreparedMail(small.message_id, small.envelope, b'x' * size)
    try:
        queue.stage(mail)
    except QueueError as exc:
        conn.send((str(exc), os.listdir(os.path.join(path, 'tmp'))))
    else:  # pragma: no cover - the test fails on this
        conn.send((None, os.listdir(os.path.join(path, 'tmp'))))
    conn.close()


def hold_claim(path: str, conn) -> None:
    """Claim the first queued message, report its id, then wait to be killed."""
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    claim = queue.claim(queue.pending()[0])
    conn.send(claim.id)
    time.sleep(CHILD_DEADLINE)
    claim.release()  # pragma: no cover - killed long before


def settings_for(port: int, **overrides):
    """MailSettings for the test server on 127.0.0.1:``port``."""
    from pyramid_txmail.settings import MailSettings

    values = {
        'host': '127.0.0.1',
        'port': port,
        'timeout': 5.0,
        'message_id_domain': 'client.test',
    }
    values.update(overrides)
    return MailSettings(**values)


def drain(path: str, port: int, barrier, out: str) -> None:
    """One of several processors emptying one queue; counts go to ``out``."""
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    processor = QueueProcessor(queue, settings_for(port, queue_batch=50))
    barrier.wait(CHILD_DEADLINE)
    sent = 0
    deadline = time.monotonic() + CHILD_DEADLINE
    while queue.pending() and time.monotonic() < deadline:
        sent += processor.run_once().sent
    with open(out, 'w') as f:
        f.write(str(sent))


def _drain_until_killed(path: str, port: int) -> None:  # pragma: no cover
    """``python -m tests.crashkit drain PATH PORT``: a processor to kill -9.

    Short backoff and interval so that deferred messages come back at once;
    ``stale_after=0`` so that each one takes back the claim of the one
    killed before it.
    """
    from pyramid_txmail.processor import QueueProcessor
    from pyramid_txmail.queue import MailQueue

    settings = settings_for(
        port, queue_batch=7, queue_interval=0.01, retry_min=0.0, retry_max=0.0
    )
    deadline = time.monotonic() + CHILD_DEADLINE
    processor = QueueProcessor(
        MailQueue(path),
        settings,
        stale_after=0.0,
        wait=lambda seconds: time.sleep(seconds) or time.monotonic() > deadline,
    )
    print('ready', flush=True)
    processor.run()


def _commit_until_killed(path: str) -> None:  # pragma: no cover
    """``python -m tests.crashkit commit PATH``: commit one message at a time.

    Prints each queue id once ``publish`` has returned, i.e. once the
    transaction would have committed.
    """
    from pyramid_txmail.queue import MailQueue

    queue = MailQueue(path)
    print('ready', flush=True)
    deadline = time.monotonic() + CHILD_DEADLINE
    n = 0
    while time.monotonic() < deadline:
        mail_id = queue.stage(make_mail(n))
        queue.publish([mail_id])
        print(mail_id, flush=True)
        n += 1


def _main(argv: list[str]) -> int:  # pragma: no cover - runs in children
    command, path, *args = argv
    if command == 'drain':
        _drain_until_killed(path, int(args[0]))
    elif command == 'commit':
        _commit_until_killed(path)
    else:
        raise SystemExit(f'unknown command {command!r}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(_main(sys.argv[1:]))
