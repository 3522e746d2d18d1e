"""Figures for the shared outbox (``mail.queue_url``), part of ``make bench``.

Starts its own PostgreSQL (Debian's binaries, as the tests do, but durable:
fsync and synchronous commit on) and sends into Postfix's ``smtp-sink``.

* commit: one transaction per message, each with one application INSERT
  through a zope.sqlalchemy session: the INSERT alone, plus a message into
  the queue directory, into the outbox through the session
  (``mail.queue_session``), and into the outbox by two-phase commit;
* drain: messages per second with 1, 2 and 4 processor processes;
* wake: from a commit on "another host" to the row being sent, with
  LISTEN/NOTIFY and with the interval poll alone.

``python tests/benchmarks/outbox_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import transaction  # noqa: E402
import zope.sqlalchemy  # noqa: E402
from sqlalchemy.orm import scoped_session, sessionmaker  # noqa: E402

from pyramid_txmail.mailer import Mailer  # noqa: E402
from pyramid_txmail.processor import QueueProcessor  # noqa: E402
from pyramid_txmail.queue.outbox import OutboxQueue, schema_sql  # noqa: E402
from pyramid_txmail.settings import MailSettings  # noqa: E402

_schemas = iter(range(1_000_000))


def fresh(url: str) -> str:
    """A new schema with the outbox and the app's table; its URL."""
    name = f'b_{os.getpid()}_{next(_schemas)}'
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA {name}')
        conn.execute(f'SET search_path = {name}')
        conn.execute(schema_sql())
        conn.execute('CREATE TABLE users (id serial PRIMARY KEY, email text)')
    return url + f'?options=-csearch_path%3D{name}'


def message(n: int):
    from pyramid_txmail import Message

    return Message(
        subject='Welcome',
        sender='shop@example.com',
        recipients=[f'user{n}@example.com'],
        body='Hello, and welcome.\n' * 40,
    )


def commit_figure(url: str, port: int, n: int, mode: str, work: str) -> float:
    """Seconds for ``n`` transactions of one user INSERT (+ one message)."""
    url = fresh(url)
    engine = sa.create_engine(url.replace('postgresql://', 'postgresql+psycopg://'))
    session = scoped_session(sessionmaker(bind=engine))
    tm = transaction.TransactionManager(explicit=True)
    zope.sqlalchemy.register(session, transaction_manager=tm)
    common = {'host': '127.0.0.1', 'port': port, 'message_id_domain': 'bench'}
    mailer = None
    if mode == 'maildir':
        mailer = Mailer(queue_path=os.path.join(work, f'q{time.time_ns()}'), **common)
    elif mode == 'outbox-session':
        mailer = Mailer(queue_url=url, queue_session=session, **common)
    elif mode == 'outbox-2pc':
        mailer = Mailer(queue_url=url, **common)
    if mailer is not None:
        mailer = mailer.bind(transaction_manager=tm)
    insert = sa.text('INSERT INTO users (email) VALUES (:e)')
    start = time.perf_counter()
    for i in range(n):
        with tm:
            session.execute(insert, {'e': f'user{i}@example.com'})
            zope.sqlalchemy.mark_changed(session())
            if mailer is not None:
                mailer.send(message(i))
    seconds = time.perf_counter() - start
    session.remove()
    engine.dispose()
    return seconds


def fill(url: str, n: int) -> None:
    from pyramid_txmail.message import prepare

    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(
            'COPY txmail_outbox (message_id, sender, recipients, data) FROM STDIN'
        ) as copy,
    ):
        for i in range(n):
            mail = prepare(message(i), message_id_domain='bench')
            copy.write_row(
                (
                    mail.message_id,
                    mail.envelope.sender,
                    list(mail.envelope.recipients),
                    mail.data,
                )
            )


def _drain(url: str, port: int, barrier) -> None:
    settings = MailSettings(host='127.0.0.1', port=port, message_id_domain='bench')
    processor = QueueProcessor(OutboxQueue(url), settings)
    barrier.wait(60)
    while processor.run_once().sent:
        pass


def drain_figure(url: str, port: int, n: int, processes: int) -> float:
    """Seconds for ``processes`` processor processes to send ``n`` rows."""
    url = fresh(url)
    fill(url, n)
    ctx = multiprocessing.get_context('spawn')
    barrier = ctx.Barrier(processes + 1)
    procs = [
        ctx.Process(target=_drain, args=(url, port, barrier)) for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    barrier.wait(60)
    start = time.perf_counter()
    for proc in procs:
        proc.join(600)
    seconds = time.perf_counter() - start
    with psycopg.connect(url) as conn:
        [(left,)] = conn.execute('SELECT count(*) FROM txmail_outbox').fetchall()
    assert left == 0, left
    return seconds


def wake_figure(
    url: str, port: int, rounds: int, notify: bool, interval: float
) -> float:
    """Median seconds from a commit elsewhere to its row being sent."""
    from pyramid_txmail.processor import ProcessorThread

    url = fresh(url)
    queue = OutboxQueue(url)
    settings = MailSettings(
        host='127.0.0.1',
        port=port,
        message_id_domain='bench',
        queue_url=url,
        queue_interval=interval,
    )
    thread = ProcessorThread(queue, settings)
    thread.start()
    if notify:
        queue.listen(thread.wake)
    time.sleep(0.5)
    other = Mailer(
        queue_url=url, host='127.0.0.1', port=port, message_id_domain='bench'
    )
    tm = transaction.TransactionManager(explicit=True)
    other = other.bind(transaction_manager=tm)
    waits = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(rounds):
                with tm:
                    other.send(message(i))
                start = time.perf_counter()
                deadline = start + interval * 3
                while time.perf_counter() < deadline:
                    [(left,)] = conn.execute(
                        'SELECT count(*) FROM txmail_outbox'
                    ).fetchall()
                    if not left:
                        break
                    time.sleep(0.002)
                waits.append(time.perf_counter() - start)
                time.sleep(interval * (i % 3) / 3)  # commits at varied phases
    finally:
        thread.stop(10)
        queue.close()
    return statistics.median(waits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--json', metavar='PATH')
    parser.add_argument(
        '--port', type=int, help="an SMTP sink's port (default: start smtp-sink)"
    )
    args = parser.parse_args(argv)
    from bench import Sink

    from tests.pgserver import PostgresServer, find_bindir

    n = 300 if args.quick else 2000
    drained = 2000 if args.quick else 10000
    server = PostgresServer(find_bindir())
    server.init()
    server.start(fsync='on', synchronous_commit='on', full_page_writes='on')
    sink = None if args.port else Sink()
    port = args.port or sink.port
    work = tempfile.mkdtemp(prefix='outbox-bench-')
    results: dict[str, float] = {}
    try:
        url = server.url
        for mode in ('insert-alone', 'maildir', 'outbox-session', 'outbox-2pc'):
            seconds = commit_figure(url, port, n, mode, work)
            results[f'commit {mode} (tx/s)'] = n / seconds
            print(f'commit {mode:<15} {n / seconds:8.0f} tx/s', flush=True)
        for processes in (1, 2, 4):
            seconds = drain_figure(url, port, drained, processes)
            results[f'drain {processes} processor(s) (msg/s)'] = drained / seconds
            print(
                f'drain  {processes} processor(s)  {drained / seconds:8.0f} msg/s',
                flush=True,
            )
        for notify in (True, False):
            wait = wake_figure(url, port, 5 if args.quick else 15, notify, 3.0)
            name = 'LISTEN/NOTIFY' if notify else 'poll only (3 s interval)'
            results[f'wake {name} (ms)'] = wait * 1000
            print(f'wake   {name:<25} {wait * 1000:8.0f} ms median', flush=True)
    finally:
        if sink is not None:
            sink.stop()
        server.stop()
        server.remove()
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
