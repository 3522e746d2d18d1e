"""A repoze.sendmail queue left at mail.queue_path is shown and delivered.

The queues here are written by the real pyramid_mailer 0.15.1 and
repoze.sendmail 4.5 (``send_to_queue`` and a commit), run in their own
virtualenv (the ``pyramid_mailer_python`` fixture), and drained by our
processor against a real SMTP server.
"""

from __future__ import annotations

import email.header
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import subprocess
import time

import pytest

from pyramid_txmail.cli import Command
from pyramid_txmail.events import MailFailed, MailSent
from pyramid_txmail.exceptions import QueueError
from pyramid_txmail.processor import QueueProcessor
from pyramid_txmail.queue import MailQueue
from pyramid_txmail.queue.legacy import adopt, parse, scan
from tests import EMPTY_COUNTS
from tests.crashkit import run_together
from tests.test_cli import write_ini

FILL = r"""
import json, sys, transaction
from pyramid_mailer.mailer import Mailer
from pyramid_mailer.message import Attachment, Message

path, specs = sys.argv[1], json.loads(sys.argv[2])
mailer = Mailer(queue_path=path)
ids = []
for spec in specs:
    spec['attachments'] = [
        Attachment(name, ctype, data.encode('latin-1'))
        for name, ctype, data in spec.get('attachments', [])
    ]
    ids.append(mailer.send_to_queue(Message(**spec)))
transaction.commit()
print(json.dumps(ids))
"""

MESSAGES = [
    {
        'subject': 'Welcome',
        'sender': 'Shop <shop@example.com>',
        'recipients': ['"Doe, John" <john@example.com>', 'ann@example.com'],
        'cc': ['cc@example.com'],
        'bcc': ['hidden@example.com'],
        'body': 'From the start\nsecond line\n',
    },
    {
        'subject': 'Grüße',
        'sender': 'Zoë <zoe@example.com>',
        'recipients': ['b@example.com'],
        'body': 'héllo',
        'html': '<p>héllo</p>',
        'attachments': [['r.csv', 'text/csv', 'a;b\r\nc\n']],
    },
    {
        'subject': 'Third',
        'sender': 'shop@example.com',
        'recipients': ['c@example.com'],
        'body': 'x' * 100,
    },
]
ENVELOPES = [
    (
        'shop@example.com',
        {'john@example.com', 'ann@example.com', 'cc@example.com', 'hidden@example.com'},
    ),
    ('zoe@example.com', {'b@example.com'}),
    ('shop@example.com', {'c@example.com'}),
]


def fill(python: str, path, messages) -> list[str]:
    """Queue ``messages`` with pyramid_mailer's send_to_queue; their Message-IDs."""
    done = subprocess.run(
        [python, '-c', FILL, str(path), json.dumps(messages)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope='module')
def repoze_queue(pyramid_mailer_python, tmp_path_factory):
    """A queue directory pyramid_mailer filled with MESSAGES; copy it to use."""
    path = tmp_path_factory.mktemp('repoze') / 'q'
    ids = fill(pyramid_mailer_python, path, MESSAGES)
    return path, ids


@pytest.fixture
def legacy_queue(repoze_queue, tmp_path):
    """A fresh copy of ``repoze_queue``: (path, Message-IDs in queue order)."""
    template, ids = repoze_queue
    path = tmp_path / 'q'
    shutil.copytree(template, path)
    return path, ids


def legacy_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path / 'new') if not n.startswith('.'))


def processor(path, server, events=None, queue=None) -> QueueProcessor:
    settings = server.settings(queue_path=str(path))
    queue = queue or MailQueue(str(path))
    return QueueProcessor(
        queue, settings, notify=(events if events is not None else []).extend
    )


def server_keys(server) -> dict[str, str]:
    """The server's ``mail.*`` settings without the prefix, for write_ini()."""
    return {k[len('mail.') :]: v for k, v in server.mail_settings().items()}


def cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = Command(out, err).run(list(argv))
    return code, out.getvalue() + err.getvalue()


def assert_delivered_once(server, ids):
    """Each of ``ids`` arrived exactly once, as pyramid_mailer queued it."""
    # (str().strip(): the stdlib reads repoze's ids with a leading space.)
    received = {str(r.message['Message-ID']).strip(): r for r in server.messages}
    assert len(server.messages) == len(ids) == len(received)
    assert set(received) == set(ids)
    for message_id, spec, (sender, rcpts) in zip(ids, MESSAGES, ENVELOPES, strict=True):
        got = received[message_id]
        assert got.mail_from == sender
        assert set(got.rcpt_tos) == rcpts
        assert len(got.rcpt_tos) == len(rcpts)
        assert b'X-Actually' not in got.data
        assert b'hidden@example.com' not in got.data
        assert got.message['Subject'] == spec['subject']
        body = got.message.get_body(('plain',)).get_content()
        assert body.replace('\r\n', '\n').rstrip('\n') == spec['body'].rstrip('\n')
    return received


def test_status_and_list_show_a_repoze_queue(legacy_queue, tmp_path):
    path, _ = legacy_queue
    before = sorted(os.listdir(path / 'new'))
    ini = write_ini(tmp_path, queue_path=path, queue_processor='false')
    code, out = cli('status', ini)
    assert code == 0
    assert 'legacy     3' in out.splitlines()
    code, out = cli('status', ini, '--json')
    assert json.loads(out) == {
        'queued': 0,
        'sending': 0,
        'deferred': 0,
        'held': 0,
        'failed': 0,
        'unreadable': 0,
        'legacy': 3,
        'unpublished': 0,
        'fault': None,
    }
    code, out = cli('list', ini, '--json')
    rows = json.loads(out)
    assert [r['state'] for r in rows] == ['legacy'] * 3
    assert [r['id'] for r in rows] == [f'new/{n}' for n in legacy_files(path)]
    assert {frozenset(r['recipients']) for r in rows} == {
        frozenset(rcpts) for _, rcpts in ENVELOPES
    }
    assert all(r['last_error'] is None for r in rows)
    code, out = cli('list', ini)
    assert 'hidden@example.com' in out and out.count('legacy') == 3
    assert sorted(os.listdir(path / 'new')) == before  # read-only


def test_list_shows_odd_legacy_names_on_one_line_each(legacy_queue, tmp_path):
    path, _ = legacy_queue
    (name, *_) = legacy_files(path)
    os.rename(path / 'new' / name, path / 'new' / 'two\nlines \x1b[31mred')
    ini = write_ini(tmp_path, queue_path=path, queue_processor='false')
    code, out = cli('list', ini)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1 + 3  # the header row, and one line each
    assert '\x1b' not in out
    assert any(
        line.startswith('new/two\\nlines \\x1b[31mred ') and ' legacy ' in line
        for line in lines
    )
    # --json keeps the name as it is, for programs.
    code, out = cli('list', ini, '--json')
    assert 'new/two\nlines \x1b[31mred' in [r['id'] for r in json.loads(out)]


def test_process_once_delivers_a_repoze_queue_exactly_once(
    legacy_queue, smtp_server, tmp_path
):
    path, ids = legacy_queue
    ini = write_ini(
        tmp_path, queue_path=path, queue_processor='false', **server_keys(smtp_server)
    )
    code, out = cli('process', ini, '--once')
    assert code == 0, out
    assert out.startswith('sent 3,')
    assert_delivered_once(smtp_server, ids)
    assert os.listdir(path / 'new') == []
    code, out = cli('status', ini, '--json')
    assert json.loads(out) == {
        **EMPTY_COUNTS,
        'fault': None,
    }
    code, out = cli('process', ini, '--once')
    assert out.startswith('sent 0,')
    assert len(smtp_server.messages) == 3


def test_adopted_mail_gets_our_events_and_backoff(legacy_queue, smtp_server):
    path, ids = legacy_queue
    events = []
    smtp_server.reply = {'MAIL': ['451 4.3.0 later']}
    result = processor(path, smtp_server, events).run_once()
    assert (result.deferred, result.sent) == (1, 2)
    sent = [e.message_id for e in events if isinstance(e, MailSent)]
    (failed,) = [e for e in events if isinstance(e, MailFailed)]
    assert sent == ids[1:]
    assert failed.message_id == ids[0] and not failed.permanent
    (deferred,) = MailQueue(str(path)).list()
    assert deferred.state == 'deferred' and '451' in deferred.last_error
    assert deferred.due > time.time() + 100  # mail.retry_min away


def drain_legacy(path: str, port: int, barrier, out: str) -> None:
    """One of several processor processes on one legacy queue (spawned)."""
    from tests.crashkit import CHILD_DEADLINE, settings_for

    processor = QueueProcessor(MailQueue(path), settings_for(port, queue_batch=5))
    barrier.wait(CHILD_DEADLINE)
    sent = sum(processor.run_once().sent for _ in range(3))
    with open(out, 'w') as f:
        f.write(str(sent))


@pytest.mark.slow
def test_several_processor_processes_send_each_message_once(
    pyramid_mailer_python, smtp_server, tmp_path
):
    path = tmp_path / 'q'
    many = [dict(MESSAGES[2], subject=f'm{n}') for n in range(30)]
    ids = fill(pyramid_mailer_python, path, many)
    outs = [str(tmp_path / f'sent-{n}') for n in range(3)]
    counts = run_together(drain_legacy, (str(path), smtp_server.port), outs)
    assert sum(map(int, counts)) == 30
    got = [str(r.message['Message-ID']).strip() for r in smtp_server.messages]
    assert sorted(got) == sorted(ids)
    assert os.listdir(path / 'new') == []


class Crash(BaseException):
    """Stands for a kill -9: nothing after it runs (but the kernel's cleanup)."""


def crashing_queue(path, at: int, calls: list):
    """A MailQueue whose ``at``-th durable step (fsync or rename) crashes."""

    def step(real):
        def call(*args):
            calls.append(real.__name__)
            if len(calls) == at:
                raise Crash
            return real(*args)

        return staticmethod(call)

    class CrashingQueue(MailQueue):
        _fsync = step(os.fsync)
        _rename = step(os.rename)

    return CrashingQueue(str(path))


def test_adoption_steps_are_counted(legacy_queue):
    path, _ = legacy_queue
    calls = []
    assert adopt(crashing_queue(path, 0, calls)) == 3
    # Per file: fsync the copy, rename it to its staged name, fsync new/,
    # (unlink the original) fsync new/, publish it, fsync new/.
    assert calls == ['fsync', 'rename', 'fsync', 'fsync', 'rename', 'fsync'] * 3


def test_a_directory_that_cannot_be_synced_is_logged_and_loses_nothing(
    legacy_queue, smtp_server, caplog
):
    path, ids = legacy_queue
    calls = []

    class BadDisk(MailQueue):
        # A real EIO needs a failing disk; inject it at new/'s first fsync.
        def _fsync(self, fd):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            os.fsync(fd)

    with caplog.at_level(logging.ERROR):
        assert adopt(BadDisk(str(path))) == 2  # the other two adopted
    assert '/new: [Errno 5] Input/output error' in caplog.text
    # The disk works again: every message is sent, once.
    assert processor(path, smtp_server).run_once().sent == 3
    assert_delivered_once(smtp_server, ids)


@pytest.mark.parametrize('at', range(1, 13))
def test_a_crash_at_any_step_of_adoption_loses_and_duplicates_nothing(
    legacy_queue, smtp_server, at
):
    path, ids = legacy_queue
    with pytest.raises(Crash):
        adopt(crashing_queue(path, at, []))
    # Another process starts and drains the queue, twice.
    assert processor(path, smtp_server).run_once().sent == 3
    assert processor(path, smtp_server).run_once().sent == 0
    assert_delivered_once(smtp_server, ids)
    left = [n for n in os.listdir(path / 'new')]
    assert left == []


def test_a_file_another_processor_holds_is_left_to_it(legacy_queue, smtp_server):
    path, ids = legacy_queue
    # Stopped after step 1 (a staged copy) while another processor holds the
    # original: neither is touched.
    with pytest.raises(Crash):
        adopt(crashing_queue(path, 3, []))
    assert any(n.startswith('.txmail') for n in os.listdir(path / 'new'))
    first = path / 'new' / legacy_files(path)[0]
    fd = os.open(first, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert processor(path, smtp_server).run_once().sent == 2
        assert os.path.exists(first)
    finally:
        os.close(fd)
    assert processor(path, smtp_server).run_once().sent == 1
    assert_delivered_once(smtp_server, ids)


def test_a_file_a_repoze_processor_is_sending_is_left_alone(legacy_queue, smtp_server):
    path, ids = legacy_queue
    name = legacy_files(path)[0]
    link = path / 'new' / f'.sending-{name}'
    os.link(path / 'new' / name, link)  # what repoze's processor does
    assert processor(path, smtp_server).run_once().sent == 2
    assert name in legacy_files(path)
    # Three hours later repoze.sendmail itself takes the link for stale.
    old = time.time() - 3 * 3600 - 60
    os.utime(link, (old, old))
    assert processor(path, smtp_server).run_once().sent == 1
    assert_delivered_once(smtp_server, ids)


def test_a_repoze_processor_starting_on_a_file_being_adopted_keeps_it(
    legacy_queue, smtp_server
):
    """repoze.sendmail's processor links the file while we copy it (through
    the queue's seams: its moment cannot be timed for real): it is left to
    that processor, and nothing of ours is sent after it has."""
    path, _ = legacy_queue
    name = legacy_files(path)[0]
    new = path / 'new'

    class Racing(MailQueue):
        @staticmethod
        def _rename(src, dst):
            os.rename(src, dst)
            staged = os.path.basename(dst).startswith('.txmail-adopting-')
            if staged and not os.path.exists(new / f'.sending-{name}'):
                os.link(new / name, new / f'.sending-{name}')

    assert adopt(Racing(str(path))) == 2
    assert name in legacy_files(path)
    assert not [n for n in os.listdir(new) if n.startswith('.txmail')]
    # repoze.sendmail sends it, then removes the file and its link.
    os.unlink(new / name)
    os.unlink(new / f'.sending-{name}')
    assert processor(path, smtp_server).run_once().sent == 2
    assert processor(path, smtp_server).run_once().sent == 0
    assert len(smtp_server.messages) == 2


def test_races_with_another_processor_are_settled_once(legacy_queue, smtp_server):
    """The losing side of each race (simulated through the queue's seams,
    as the other processor's moves cannot be timed for real)."""
    path, _ = legacy_queue
    names = legacy_files(path)
    new = path / 'new'

    class Racing(MailQueue):
        @staticmethod
        def _opener(name, flags, *mode):
            base = os.path.basename(name)
            if base == names[0]:  # adopted by the other side just now
                os.unlink(name)
                Racing.gone.append(base)
            if base == names[1]:  # replaced under its name after our open
                fd = os.open(name, flags, *mode)
                os.rename(name, str(new / 'moved'))
                shutil.copy(str(new / 'moved'), name)
                os.unlink(str(new / 'moved'))
                return fd
            return os.open(name, flags, *mode)

        @staticmethod
        def _rename(src, dst):
            if os.path.basename(src).startswith('.txmail-adopting-'):
                os.rename(src, dst)  # the other side published it first
            os.rename(src, dst)

        gone: list = []

    # A listing that the other side overtakes shows what is left.
    shutil.copytree(path, path.parent / 'listed')
    assert [i.id for i in scan(Racing(str(path.parent / 'listed')))] == [
        f'new/{names[1]}',
        f'new/{names[2]}',
    ]
    Racing.gone.clear()
    assert adopt(Racing(str(path))) == 1  # only names[2]; names[1] next time
    assert Racing.gone == [names[0]]
    assert names[1] in legacy_files(path)
    # What was published first by "the other side" is there once.
    assert len(MailQueue(str(path)).pending()) == 1


def test_a_staged_copy_vanishing_before_it_is_read_is_fine(legacy_queue):
    path, _ = legacy_queue
    with pytest.raises(Crash):
        adopt(crashing_queue(path, 5, []))  # after step 2: only the copy left
    (staged,) = [n for n in os.listdir(path / 'new') if n.startswith('.txmail')]

    class Racing(MailQueue):
        @staticmethod
        def _opener(name, flags, *mode):
            if os.path.basename(name) == staged:
                os.unlink(name)  # published and sent by the other side
            return os.open(name, flags, *mode)

    adopt(Racing(str(path)))
    assert len(MailQueue(str(path)).pending()) == 2


def test_unreadable_entries_are_reported_never_ignored(
    legacy_queue, smtp_server, tmp_path, caplog
):
    path, _ = legacy_queue
    new = path / 'new'
    (new / 'garbage').write_bytes(b'Subject: not ours\n\nno envelope\n')
    (new / 'adir').mkdir()
    os.symlink('/etc/hostname', new / 'alink')
    rejected = legacy_files(path)[0]
    os.rename(new / rejected, new / f'.rejected-{rejected}')  # repoze gave up
    (new / '.txmail-adopting-junk').write_bytes(b'not json\n')
    (new / '.txmail-adopting-list').write_bytes(b'[1]\n')
    ini = write_ini(tmp_path, queue_path=path, queue_processor='false')

    code, out = cli('list', ini, '--json')
    assert code == 0
    rows = {r['id']: r for r in json.loads(out)}
    assert rows['new/garbage']['last_error'].startswith(
        'unreadable: no X-Actually-From'
    )
    assert rows['new/adir']['last_error'] == 'unreadable: not a regular file'
    assert rows['new/alink']['last_error'] == 'unreadable: a symbolic link, not a file'
    _, out = cli('list', ini, '--failed', '--json')
    (row,) = json.loads(out)
    assert row['id'] == f'new/.rejected-{rejected}' and row['state'] == 'failed'
    _, out = cli('status', ini, '--json')
    assert json.loads(out)['legacy'] == 6

    caplog.set_level(logging.INFO, logger='pyramid_txmail.queue')
    result = processor(path, smtp_server).run_once()
    assert result.sent == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any('new/adir' in e and 'not a regular file' in e for e in errors)
    assert any('new/alink' in e for e in errors)
    assert any('garbage' in e and 'X-Actually-From' in e for e in errors)
    assert any('.txmail-adopting-junk' in e for e in errors)
    assert any('.txmail-adopting-list' in e and 'not a copy' in e for e in errors)
    queue = MailQueue(str(path))
    failed = {i.last_error.split(':')[0]: i for i in queue.list(failed=True)}
    assert set(failed) == {
        'unreadable repoze.sendmail queue file new/garbage',
        'rejected for good by repoze.sendmail before pyramid_txmail',
    }
    # Reported once, not on every pass.
    caplog.clear()
    processor(path, smtp_server).run_once()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any('adir' in e or 'alink' in e for e in errors)
    _, out = cli('status', ini)
    assert 'legacy     2' in out.splitlines() and 'failed     2' in out.splitlines()


def test_a_write_failure_while_adopting_keeps_the_original(legacy_queue, caplog):
    path, _ = legacy_queue
    before = legacy_files(path)

    class Full(MailQueue):
        @staticmethod
        def _write(fd, data):
            raise OSError(28, 'No space left on device')

    assert adopt(Full(str(path))) == 0
    assert legacy_files(path) == before
    assert 'No space left on device' in caplog.text


def test_an_unlistable_queue_directory_is_an_error(legacy_queue):
    path, _ = legacy_queue
    queue = MailQueue(str(path))
    shutil.rmtree(path / 'cur')
    (path / 'cur').write_text('not a directory')
    with pytest.raises(QueueError, match='cannot read mail queue'):
        scan(queue)
    with pytest.raises(QueueError, match='cannot read mail queue'):
        adopt(queue)


def test_a_missing_maildir_subdirectory_is_no_error(legacy_queue):
    path, _ = legacy_queue
    queue = MailQueue(str(path))
    os.rmdir(path / 'cur')
    assert len(scan(queue)) == 3


def crlf(text: str) -> bytes:
    return text.replace('\n', '\r\n').encode()


def test_parse_strips_the_envelope_headers_and_keeps_the_rest():
    raw = (
        b'Subject: hi\n'
        b'X-Actually-From: =?utf-8?b?Wm/DqyA8em9lQGV4YW1wbGUuY29tPg==?=\n'
        b'X-Actually-To: =?utf-8?q?a=40example=2Ecom=2C=22Doe=2C_J=22_=3Cj=40e?=\n'
        b' =?utf-8?q?xample=2Ecom=3E?=\n'
        b'X-Keep: folded\n'
        b'  continuation\n'
        b'Message-Id: <1@x>\n'
        b'\n'
        b'body\rline\n'
        b'X-Actually-To: in the body stays\n'
    )
    envelope, message_id, data = parse(raw)
    assert envelope.sender == 'zoe@example.com'
    assert envelope.recipients == ('a@example.com', 'j@example.com')
    assert message_id == '<1@x>'
    assert data == crlf(
        'Subject: hi\nX-Keep: folded\n  continuation\nMessage-Id: <1@x>\n\n'
        'body\nline\nX-Actually-To: in the body stays\n'
    )


def test_parse_plain_headers_headers_only_and_idn():
    to = email.header.Header('b@bücher.example', 'utf-8').encode().encode()
    envelope, message_id, data = parse(
        b'X-Actually-From: a@example.com\r\nX-Actually-To: ' + to
    )
    assert envelope.recipients == ('b@xn--bcher-kva.example',)
    assert (message_id, data) == ('', b'')


@pytest.mark.parametrize(
    ('raw', 'says'),
    [
        (b'X-Actually-To: a@example.com\n\n', 'no X-Actually-From header'),
        (b'X-Actually-From: a@example.com\n\n', 'no X-Actually-To header'),
        (
            b'X-Actually-From: a@example.com, b@example.com\nX-Actually-To: c@x.y\n\n',
            'names 2 addresses',
        ),
        (b'X-Actually-From: a@example.com\nX-Actually-To: ,\n\n', 'names no address'),
        (b'X-Actually-From: a@example.com\nX-Actually-To: nobody\n\n', 'X-Actually-To'),
        (
            b'X-Actually-From: =?x-nope?q?a?=\nX-Actually-To: c@x.y\n\n',
            'X-Actually-From',
        ),
        (
            b'X-Actually-From: a@example.com\nX-Actually-To: =?utf-8?b?!?=\n\n',
            'X-Actually-To',
        ),
        # What a lenient parser would turn into other addresses
        # (a@example.comRCPTTO and evil@example.net): refused, as in new mail.
        (
            b'X-Actually-From: a@example.com\nX-Actually-To: '
            + email.header.Header(
                'a@example.com\r\nRCPT TO:<evil@example.net>', 'utf-8'
            )
            .encode()
            .encode()
            + b'\n\n',
            'X-Actually-To: not one valid address',
        ),
        (
            b'X-Actually-From: a@example.com\n'
            b'X-Actually-To: a@example.com b@example.com\n\n',
            'X-Actually-To: not one valid address',
        ),
        (
            b'X-Actually-From: a@example.com\n'
            b'X-Actually-To: Doe, John <j@example.com>\n\n',
            'X-Actually-To: not one valid address',
        ),
        # A line break or control character encoded into it, likewise.
        (
            b'X-Actually-From: =?utf-8?q?a=40example=2Ecom=0D=0AX?=\n'
            b'X-Actually-To: b@example.com\n\n',
            'X-Actually-From: .*line breaks',
        ),
    ],
)
def test_parse_refuses_what_it_cannot_trust(raw, says):
    with pytest.raises(ValueError, match=says):
        parse(raw)


def test_parse_a_newsletter_envelope_of_twenty_thousand_recipients():
    # Split in linear time: the stdlib's strict list parser is quadratic.
    names = [f'"Doe, J{i}" <u{i}@example.com>' for i in range(20_000)]
    to = email.header.Header(','.join(names), 'utf-8').encode().encode()
    envelope, _, data = parse(
        b'X-Actually-From: a@example.com\nX-Actually-To: ' + to + b'\n\nbody\n'
    )
    assert envelope.recipients == tuple(f'u{i}@example.com' for i in range(20_000))
    assert data == b'\r\nbody\r\n'


@pytest.mark.parametrize(
    ('to', 'recipients'),
    [
        ('"a\\",b" <x@example.com>, c@example.com', ('x@example.com', 'c@example.com')),
        ('X (a, b) <x@example.com>,y@example.com', ('x@example.com', 'y@example.com')),
        ('a@example.com,', ('a@example.com',)),
    ],
)
def test_parse_splits_only_at_commas_between_addresses(to, recipients):
    raw = b'X-Actually-From: a@example.com\nX-Actually-To: ' + to.encode() + b'\n\n'
    assert parse(raw)[0].recipients == recipients
