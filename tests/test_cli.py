"""The pyramid-txmail command line, on real .ini files and a real queue."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from pyramid.config import Configurator

from pyramid_txmail.events import MailSent
from pyramid_txmail.queue import MailQueue
from tests import EMPTY_COUNTS, make_mail

EVENTS: list = []
LOGGING = """
[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(message)s
"""


def make_app(global_config, **settings):
    """The application an .ini file's [app:main] names."""
    with Configurator(settings=settings) as config:
        config.include('pyramid_txmail')
        config.add_subscriber(on_sent, MailSent)
    return config.make_wsgi_app()


def on_sent(event):
    EVENTS.append(event)
    if event.message_id == '<stop@test>':
        os.kill(os.getpid(), signal.SIGTERM)


def write_ini(tmp_path, logging=False, **mail):
    lines = ['[app:main]', 'use = call:tests.test_cli:make_app']
    lines += [f'mail.{k} = {v}' for k, v in mail.items()]
    path = tmp_path / 'app.ini'
    path.write_text('\n'.join(lines) + '\n' + (LOGGING if logging else ''))
    return str(path)


def queue_with(path, *ns):
    queue = MailQueue(str(path))
    queue.publish([queue.stage(make_mail(n)) for n in ns])
    return queue


def run_cli(*argv, out=None):
    """(exit status, stdout, stderr) of ``pyramid-txmail *argv``."""
    from pyramid_txmail.cli import Command

    out = out or io.StringIO()
    err = io.StringIO()
    code = Command(out, err).run([str(a) for a in argv])
    text = out.getvalue() if isinstance(out, io.StringIO) else ''
    return code, text, err.getvalue()


@pytest.fixture
def queue_of_two(tmp_path):
    """A queue with two messages queued, at tmp_path/q."""
    return queue_with(tmp_path / 'q', 1, 2)


@pytest.fixture
def ini(tmp_path, queue_of_two):
    """An .ini naming the queue of ``queue_of_two``, no processor."""
    return write_ini(tmp_path, queue_path=tmp_path / 'q', queue_processor='false')


# -- Main


def test_status_counts_each_state(ini):
    code, out, _ = run_cli('status', ini)
    assert code == 0
    assert out.split() == [
        'queued',
        '2',
        'deferred',
        '0',
        'sending',
        '0',
        'held',
        '0',
        'failed',
        '0',
        'unreadable',
        '0',
    ]


def test_status_counts_committed_messages_waiting_for_room_in_new(tmp_path):
    # A commit whose rename into new/ failed (a full disk) leaves its
    # message in tmp/, marked committed: the operator sees it waiting.
    from pyramid_txmail.queue.maildir import MailQueue as Queue

    class FullDisk(Queue):
        def _rename(self, src, dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    queue = FullDisk(str(tmp_path / 'q'))
    queue.publish([queue.stage(make_mail(1))])
    queue.stage(make_mail(2))  # a commit under way: not counted
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', queue_processor='false')
    code, out, _ = run_cli('status', ini)
    assert code == 0
    assert 'unpublished 1' in out.splitlines()
    code, out, _ = run_cli('status', ini, '--json')
    assert json.loads(out)['unpublished'] == 1


def test_status_still_counts_when_tmp_cannot_be_read(tmp_path, caplog):
    # A tmp/ that cannot be read (here: not a directory) leaves the other
    # states' counts standing, as it does recovery (MailQueue.recover): what
    # is unknown is left out, not shown as none, and the reason logged.
    queue_with(tmp_path / 'q', 1)
    os.rmdir(tmp_path / 'q' / 'tmp')
    (tmp_path / 'q' / 'tmp').write_text('')
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', queue_processor='false')
    code, out, _ = run_cli('status', ini)
    assert code == 0
    assert 'queued     1' in out.splitlines()
    assert 'unpublished' not in out
    code, out, _ = run_cli('status', ini, '--json')
    assert code == 0
    counts = json.loads(out)
    assert counts['queued'] == 1 and 'unpublished' not in counts
    assert 'cannot count the unpublished messages' in caplog.text
    assert 'Not a directory' in caplog.text


def test_status_json_gives_the_counts(ini):
    code, out, _ = run_cli('status', ini, '--json')
    assert code == 0
    assert json.loads(out)['queued'] == 2


def test_list_has_a_header_row_and_a_line_per_message(ini):
    code, out, _ = run_cli('list', ini)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == [
        'ID',
        'STATE',
        'ATTEMPTS',
        'NEXT',
        'AGE',
        'MESSAGE-ID',
        'SUBJECT',
        'RECIPIENTS',
        'LAST',
        'ERROR',
    ]
    assert len(lines) == 2 and 'to@example.com' in lines[0]


def test_list_failed_json_with_error(queue_of_two, ini):
    claim = queue_of_two.claim(queue_of_two.pending()[0])
    claim.fail('550 5.1.1 no such user')
    code, out, _ = run_cli('list', ini, '--failed', '--json')
    assert code == 0
    (row,) = json.loads(out)
    assert row['id'] == claim.id and row['last_error'] == '550 5.1.1 no such user'
    code, out, _ = run_cli('list', ini, '--failed')
    assert code == 0
    assert '550 5.1.1 no such user' in out


def test_retry_all_and_by_id(queue_of_two, ini):
    for id in queue_of_two.pending():
        queue_of_two.claim(id).fail('554 no')
    first = queue_of_two.list(['failed'])[0].id
    code, out, _ = run_cli('retry', ini, first)
    assert code == 0
    assert out.startswith('1 ')
    code, out, _ = run_cli('retry', ini, '--all')
    assert code == 0
    assert out.startswith('1 ')
    assert queue_of_two.counts()['queued'] == 2


def test_retry_of_an_unknown_id_exits_1_naming_it(ini):
    code, _, err = run_cli('retry', ini, '0000000000000000.1.ab')
    assert code == 1
    assert err.startswith('pyramid-txmail: ')
    assert '0000000000000000.1.ab' in err


def test_purge_by_id_and_failed(queue_of_two, ini):
    ids = queue_of_two.pending()
    queue_of_two.claim(ids[1]).fail('554 no')
    code, out, _ = run_cli('purge', ini, ids[0])
    assert code == 0
    assert out.startswith('1 ')
    code, out, _ = run_cli('purge', ini, '--failed')
    assert code == 0
    assert out.startswith('1 ')
    assert queue_of_two.counts() == EMPTY_COUNTS


@pytest.mark.parametrize(
    'argv',
    [
        (),
        ('status',),
        ('nonsense', 'x.ini'),
        ('retry', 'x.ini'),
        ('retry', 'x.ini', 'ID', '--all'),
        ('purge', 'x.ini'),
    ],
)
def test_bad_usage_exits_2(argv):
    code, _, err = run_cli(*argv)
    assert code == 2
    # The usage line, then the problem.
    assert err.startswith('usage: pyramid-txmail')
    assert 'error: ' in err.splitlines()[-1]


def test_a_missing_config_file_exits_1(tmp_path):
    code, _, err = run_cli('status', str(tmp_path / 'nope.ini'))
    assert code == 1
    assert 'config file not found' in err


def test_a_missing_queue_path_is_named(tmp_path):
    code, _, err = run_cli('status', write_ini(tmp_path))
    assert code == 1
    assert err == 'pyramid-txmail: mail.queue_path is not set in app.ini\n'


def test_bad_setting_names_key(tmp_path):
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', port='smtp')
    code, _, err = run_cli('status', ini)
    assert code == 1
    assert 'mail.port' in err and len(err.splitlines()) == 1


def test_get_settings_seam_takes_a_dict(tmp_path):
    from pyramid_txmail.cli import Command

    queue_with(tmp_path / 'q', 1)
    command = Command(io.StringIO(), io.StringIO())
    command.get_settings = lambda uri, options: {'mail.queue_path': str(tmp_path / 'q')}
    ini = tmp_path / 'any.ini'
    ini.write_text('')
    assert command.run(['status', '--json', str(ini)]) == 0
    assert json.loads(command.out.getvalue())['queued'] == 1


def test_process_once_delivers_and_notifies_app(tmp_path, smtp_server):
    queue_with(tmp_path / 'q', 1, 2)
    ini = write_ini(
        tmp_path,
        logging=True,
        queue_path=tmp_path / 'q',
        host=smtp_server.host,
        port=smtp_server.port,
    )
    EVENTS.clear()
    code, out, _ = run_cli('process', ini, '--once')
    assert code == 0
    assert out.startswith('sent 2,')
    assert len(smtp_server.wait_for(2)) == 2
    assert sorted(e.message_id for e in EVENTS) == ['<1@test>', '<2@test>']


def test_process_runs_until_sigterm(tmp_path, smtp_server):
    queue = MailQueue(str(tmp_path / 'q'))
    stop = make_mail(0)
    object.__setattr__(stop, 'message_id', '<stop@test>')
    queue.publish([queue.stage(stop)])
    ini = write_ini(
        tmp_path,
        queue_path=tmp_path / 'q',
        host=smtp_server.host,
        port=smtp_server.port,
        queue_interval=0.1,
    )
    EVENTS.clear()
    before = signal.getsignal(signal.SIGTERM)
    code, _, _ = run_cli('process', ini)
    assert code == 0
    assert [e.message_id for e in EVENTS] == ['<stop@test>']
    assert signal.getsignal(signal.SIGTERM) is before


# -- QueueFaults
# What an operator sees on a queue that is missing, unreadable, damaged
# or not root's.


@pytest.mark.parametrize(
    'argv',
    [
        ('status',),
        ('list',),
        ('retry', '--all'),
        ('purge', '--failed'),
        ('show', '0000000000000000.1.ab'),
        ('flush',),
        ('hold', '0000000000000000.1.ab'),
        ('release', '0000000000000000.1.ab'),
    ],
)
def test_commands_never_create_the_queue(tmp_path, argv):
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, err = run_cli(argv[0], ini, *argv[1:])
    assert code == 1
    assert err == (
        f'pyramid-txmail: no mail queue at {tmp_path}/q: '
        'nothing has been queued there yet\n'
    )
    assert not (tmp_path / 'q').exists()


def test_unreadable_queue_says_cannot_read(tmp_path):
    (tmp_path / 'q').write_text('a file, not a queue')
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, err = run_cli('status', ini)
    assert code == 1
    assert err == (
        f'pyramid-txmail: cannot read mail queue {tmp_path}/q: not a directory\n'
    )


def test_list_and_status_show_bad_entries(tmp_path):
    from tests.test_queue import add_bad_entries, queue_as_nobody

    queue = queue_as_nobody(str(tmp_path / 'q'))
    reasons = add_bad_entries(queue)
    queue.publish([queue.stage(make_mail(1))])
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, out, _ = run_cli('list', ini)
    assert code == 0
    _, *lines = out.splitlines()
    assert len(lines) == len(reasons) + 1
    # Root reads the first two; the others are unreadable to anyone.
    assert sum('unreadable: ' in line for line in lines) == len(reasons) - 2
    assert 'to@example.com' in lines[-1]
    code, out, _ = run_cli('list', ini, '--json')
    assert code == 0
    rows = json.loads(out)
    assert [r['id'] for r in rows][:-1] == list(reasons)
    # The application's processor sets them aside.
    for mail_id in list(reasons):
        assert queue.claim(mail_id) is None
    code, out, _ = run_cli('status', ini, '--json')
    assert code == 0
    counts = json.loads(out)
    assert counts['failed'] == counts['unreadable'] == len(reasons)
    code, out, _ = run_cli('list', ini, '--failed')
    assert code == 0
    assert out.count('unreadable: ') == len(reasons)


def test_retry_as_root_keeps_the_queue_owner(tmp_path):
    from tests.test_queue import NOBODY, queue_as_nobody

    queue = queue_as_nobody(str(tmp_path / 'q'))
    mail_id = queue.stage(make_mail(1))
    queue.publish([mail_id])
    queue.claim(mail_id).fail('554 no')
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, _ = run_cli('retry', ini, '--all')
    assert code == 0
    path = tmp_path / 'q' / 'new' / mail_id
    assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY)
    # So the application (uid 65534) can send it.
    claim = queue.claim(mail_id)
    assert claim is not None
    claim.done()


# -- ConfigFaults
# A broken .ini gives one line naming the file, never a value.


@pytest.mark.parametrize('command', ['status', 'process'])
def test_percent_in_password_is_not_shown(tmp_path, command):
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', password='s3cr%et-tail')
    option = '--once' if command == 'process' else '--json'
    code, _, err = run_cli(command, ini, option)
    assert code == 1
    assert err == (
        f'pyramid-txmail: {ini}: cannot read mail.password in [app:main]: '
        'its value holds a "%" that is neither "%%" nor a "%(name)s" '
        'reference (write a literal % as %%)\n'
    )
    assert 'et-tail' not in err


def test_percent_reference_to_nothing_is_not_shown(tmp_path):
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', password='%(nope)s-tail')
    code, _, err = run_cli('status', ini)
    assert code == 1
    assert 'mail.password' in err and 'tail' not in err


def test_undecodable_file_is_named(tmp_path):
    ini = tmp_path / 'app.ini'
    ini.write_bytes(b'[app:main]\nmail.password = \xff\xfe secret\n')
    code, _, err = run_cli('list', str(ini))
    assert code == 1
    assert err == (f'pyramid-txmail: {ini}: not UTF-8 text (byte 0xff at offset 27)\n')


@pytest.mark.parametrize(
    ('text', 'problem'),
    [
        ('hello secret\n', 'line 1: no [section] header before it'),
        ('[app:main]\nuse = egg:x\npassword secret\n', 'line 3: not a "key'),
        (
            '[app:main]\n[app:main]\n',
            'not a valid .ini file (DuplicateSectionError)',
        ),
    ],
)
def test_garbage_file_is_named_without_its_lines(tmp_path, text, problem):
    ini = tmp_path / 'app.ini'
    ini.write_text(text)
    code, _, err = run_cli('status', str(ini))
    assert code == 1
    assert err.startswith(f'pyramid-txmail: {ini}: {problem}')
    assert len(err.splitlines()) == 1
    assert 'secret' not in err


# -- ConsoleScript


def test_installed_script_reports_status(tmp_path):
    queue_with(tmp_path / 'q', 1)
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    script = os.path.join(os.path.dirname(sys.executable), 'pyramid-txmail')
    result = subprocess.run(
        [script, 'status', ini, '--json'],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            'PYTHONPATH': os.path.dirname(os.path.dirname(__file__)),
        },
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['queued'] == 1


def test_main_uses_sys_argv(monkeypatch, capsys):
    from pyramid_txmail.cli import main

    monkeypatch.setattr(sys, 'argv', ['pyramid-txmail'])
    assert main() == 2
    assert main(['status']) == 2


def test_ages_are_shown_in_the_largest_whole_unit():
    from pyramid_txmail.cli import _age

    assert [_age(s) for s in (-1, 59, 60, 7200, 86400 * 3)] == [
        '0s',
        '59s',
        '1m',
        '2h',
        '3d',
    ]


def test_process_ends_soon_after_sigterm_whatever_the_relay_does(tmp_path):
    # The relay trickles its reply to the content for longer than the test
    # waits, and mail.timeout is longer still: only stopping can end it.
    from tests.smtpserver import TricklingRelay

    queue = queue_with(tmp_path / 'q', 1)
    script = (
        'import sys\n'
        'from pyramid_txmail import cli\n'
        'cli.Command.stop_timeout = 1.0\n'
        'sys.exit(cli.main(sys.argv[1:]))\n'
    )
    with TricklingRelay(('DATA',), give_up=60) as relay:
        ini = write_ini(
            tmp_path,
            queue_path=tmp_path / 'q',
            host=relay.host,
            port=relay.port,
            timeout=120,
        )
        proc = subprocess.Popen(
            [sys.executable, '-c', script, 'process', ini],
            cwd=os.path.dirname(os.path.dirname(__file__)),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert relay.trickling.wait(30), 'the message never reached DATA'
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
            stderr = proc.communicate()[1]
    assert code == 0, stderr
    assert 'cut short during DATA' in stderr
    assert queue.counts()['deferred'] == 1  # kept, to be tried again


def test_status_reads_the_settings_under_pyramid_mailer_prefix(tmp_path):
    from pyramid_txmail.cli import Command

    queue_with(tmp_path / 'q', 1, 2, 3)
    ini = tmp_path / 'app.ini'
    ini.write_text(
        '[app:main]\nuse = call:tests.test_cli:make_app\n'
        'pyramid_mailer.prefix = mymail.\n'
        f'mymail.queue_path = {tmp_path / "q"}\nmymail.queue_processor = false\n'
    )
    out, err = io.StringIO(), io.StringIO()
    assert Command(out, err).run(['status', str(ini), '--json']) == 0, err.getvalue()
    assert json.loads(out.getvalue())['queued'] == 3


def test_missing_queue_path_is_named_with_the_prefix(tmp_path):
    from pyramid_txmail.cli import Command

    ini = tmp_path / 'app.ini'
    ini.write_text(
        '[app:main]\nuse = call:tests.test_cli:make_app\n'
        'pyramid_mailer.prefix = mymail.\n'
    )
    out, err = io.StringIO(), io.StringIO()
    assert Command(out, err).run(['status', str(ini)]) == 1
    assert 'mymail.queue_path is not set in app.ini' in err.getvalue()


# -- the operator's commands (issue 13): every state, show, flush, hold


def stored(n, subject, to=('to@example.com',)):
    """A PreparedMail whose stored bytes are exactly as given (a Subject a
    stranger typed, already encoded as the message builder would)."""
    from pyramid_txmail.message import Envelope, PreparedMail

    data = (
        f'From: from@example.com\r\nTo: {", ".join(to)}\r\n'
        f'Subject: {subject}\r\nMessage-ID: <{n}@test>\r\n\r\nbody {n}\r\n'
    ).encode()
    return PreparedMail(f'<{n}@test>', Envelope('from@example.com', to), data)


@pytest.fixture
def states(tmp_path):
    """A queue with one message in each state, and an .ini naming it:
    {state: id}, the queue, the .ini."""
    queue = queue_with(tmp_path / 'q', *range(5))
    ids = queue.pending()
    queue.claim(ids[1]).defer('451 4.3.0 try later', queue.clock() + 600)
    queue.claim(ids[2]).fail('550 5.1.1 no such user')
    queue.hold([ids[3]])
    sending = queue.claim(ids[4])
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q', queue_processor='false')
    yield (
        dict(
            zip(['queued', 'deferred', 'failed', 'held', 'sending'], ids, strict=True)
        ),
        queue,
        ini,
    )
    sending.release()


def test_list_shows_every_state_by_default_with_a_header_row(states):
    ids, _, ini = states
    code, out, _ = run_cli('list', ini)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.startswith('ID ') and header.rstrip().endswith('LAST ERROR')
    rows = {line.split()[0]: line.split() for line in lines}
    assert {state: rows[i][1] for state, i in ids.items()} == {s: s for s in ids}
    # id, state, attempts, next attempt, age, Message-ID, Subject, recipients,
    # last error
    age = rows[ids['deferred']][5]
    assert age[:-1].isdigit() and age.endswith('s')  # seconds: the test's own
    assert rows[ids['deferred']][2:] == [
        '1',
        'in',
        '10m',
        age,
        '<1@test>',
        'test',
        '1',
        'to@example.com',
        '451',
        '4.3.0',
        'try',
        'later',
    ]
    assert rows[ids['queued']][3] == 'now'
    assert rows[ids['failed']][3] == '-'


@pytest.mark.parametrize('state', ['queued', 'deferred', 'sending', 'failed', 'held'])
def test_list_state_shows_only_that_state(states, state):
    ids, _, ini = states
    code, out, _ = run_cli('list', ini, '--state', state, '--json')
    assert code == 0
    rows = json.loads(out)
    assert [(r['id'], r['state']) for r in rows] == [(ids[state], state)]
    assert rows[0]['subject'] == f'test {list(ids).index(state)}'
    assert rows[0]['message_id'] == f'<{list(ids).index(state)}@test>'


def test_list_failed_is_an_alias_of_state_failed(states):
    _, _, ini = states
    aliased = run_cli('list', ini, '--failed', '--json')
    named = run_cli('list', ini, '--state', 'failed', '--json')
    # The two runs may straddle a second: the ages may differ by one.
    for code, _out, _err in (aliased, named):
        assert code == 0
    drop_age = [
        {k: v for k, v in r.items() if k != 'age'} for r in json.loads(aliased[1])
    ]
    assert drop_age == [
        {k: v for k, v in r.items() if k != 'age'} for r in json.loads(named[1])
    ]
    assert [r['state'] for r in json.loads(aliased[1])] == ['failed']


def test_list_reads_the_subject_of_files_written_before_it_was_kept(tmp_path):
    queue = queue_with(tmp_path / 'q')
    mail_id = queue.stage(stored(1, '=?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n aus Bern'))
    queue.publish([mail_id])
    # As an older version wrote it: no "subject" in the metadata line.
    path = tmp_path / 'q' / 'new' / mail_id
    line, _, data = path.read_bytes().partition(b'\n')
    meta = json.loads(line)
    assert meta.pop('subject') == 'Grüße aus Bern'
    path.write_bytes(json.dumps(meta).encode() + b'\n' + data)
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    assert json.loads(run_cli('list', ini, '--json')[1])[0]['subject'] == (
        'Grüße aus Bern'
    )
    code, out, _ = run_cli('show', ini, mail_id, '--json')
    assert (code, json.loads(out)['subject']) == (0, 'Grüße aus Bern')


HOSTILE = [
    # (encoded Subject as stored, decoded, what one line shows)
    ('=?utf-8?q?two=0Alines?=', 'two\nlines', 'two\\nlines'),
    (
        '=?utf-8?q?red=1B[31m_bell=07?=',
        'red\x1b[31m bell\x07',
        'red\\x1b[31m bell\\x07',
    ),
    ('=?utf-8?q?cr=0Dlf=0D=0Aeof?=', 'cr\rlf\r\neof', 'cr\\rlf\\r\\neof'),
    (
        '=?utf-8?q?=E2=80=AEevil=E2=80=A8sep?=',
        '\u202eevil\u2028sep',
        '\\u202eevil\\u2028sep',
    ),
    ('=?utf-8?q?Gr=C3=BC=C3=9Fe_=E6=97=A5=E6=9C=AC?=', 'Grüße 日本', 'Grüße 日本'),
]


@pytest.mark.parametrize(('subject', 'decoded', 'shown'), HOSTILE)
def test_hostile_subject_is_shown_escaped_on_one_line(
    tmp_path, subject, decoded, shown
):
    queue = queue_with(tmp_path / 'q')
    mail_id = queue.stage(stored(1, subject))
    queue.publish([mail_id])
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, out, _ = run_cli('list', ini)
    assert code == 0
    assert len(out.splitlines()) == 2 and shown in out.splitlines()[1]
    code, out, _ = run_cli('show', ini, mail_id)
    assert f'subject:      {shown}\n' in out
    assert f'  Subject: {shown}\n' in out
    assert not any(c in out for c in '\x1b\x07\r\u202e\u2028')
    # JSON keeps the text as it is, for programs.
    code, out, _ = run_cli('list', ini, '--json')
    assert json.loads(out)[0]['subject'] == decoded


@pytest.mark.parametrize(
    'mail_id', ['two\nlines', '\x1b[31mred', '0000000000000000.1.ab\u202e', 'ü=']
)
@pytest.mark.parametrize('command', ['show', 'hold', 'release', 'retry', 'purge'])
def test_hostile_id_is_named_escaped_on_one_line(tmp_path, mail_id, command):
    queue_with(tmp_path / 'q', 1)
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, err = run_cli(command, ini, mail_id)
    assert code == (2 if '=' in mail_id else 1)
    if '=' not in mail_id:  # else a var=value: show/hold/... lack an ID
        assert err.startswith('pyramid-txmail: no message ')
        assert len(err.splitlines()) == 1
        assert not any(c in err for c in '\x1b\u202e')


def test_show_gives_envelope_headers_and_history(states):
    ids, _queue, ini = states
    code, out, _ = run_cli('show', ini, ids['deferred'])
    assert code == 0
    fields = dict(line.split(':', 1) for line in out.split('\n\n')[0].splitlines())
    assert {k: v.strip() for k, v in fields.items()} == {
        'id': ids['deferred'],
        'state': 'deferred',
        'message-id': '<1@test>',
        'subject': 'test 1',
        'from': 'from@example.com',
        'to': 'to@example.com',
        'queued at': fields['queued at'].strip(),
        'attempts': '1',
        'last error': '451 4.3.0 try later',
        'next attempt': 'in 10m',
        'size': fields['size'].strip(),
    }
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)', fields['queued at'].strip()
    )
    assert out.split('\n\n')[1].splitlines() == [
        'headers:',
        '  From: from@example.com',
        '  To: to@example.com',
        '  Subject: test 1',
        '  Message-ID: <1@test>',
    ]
    code, out, _ = run_cli('show', ini, ids['failed'], '--json')
    record = json.loads(out)
    assert (record['state'], record['last_error'], record['attempts']) == (
        'failed',
        '550 5.1.1 no such user',
        1,
    )
    assert record['headers'][0] == ['From', 'from@example.com']
    assert record['sender'] == 'from@example.com'
    assert record['recipients'] == ['to@example.com']


@pytest.mark.parametrize('state', ['queued', 'deferred', 'sending', 'failed', 'held'])
def test_show_raw_writes_the_stored_bytes_exactly(states, state):
    ids, _, ini = states
    out = io.TextIOWrapper(io.BytesIO(), encoding='utf-8')
    out.write('')  # buffered text goes first
    code, _, err = run_cli('show', ini, ids[state], '--raw', out=out)
    assert code == 0, err
    n = list(ids).index(state)
    assert out.buffer.getvalue() == make_mail(n).data


def test_show_garbled_address_header_shows_it_as_stored(tmp_path):
    from pyramid_txmail.message import Envelope, PreparedMail

    queue = queue_with(tmp_path / 'q')
    data = b'To: :"\r\nCc: a@b\r\n  .example\r\nSubject: x\r\n\r\nbody\r\n'
    mail_id = queue.stage(PreparedMail('<g@test>', Envelope('f@x', ('t@x',)), data))
    queue.publish([mail_id])
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, out, _ = run_cli('show', ini, mail_id)
    assert code == 0
    assert '  To: :"\n' in out and '  Cc: a@b.example\n' in out


def test_show_unknown_or_unreadable_id_exits_1(tmp_path):
    queue = queue_with(tmp_path / 'q', 1)
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, err = run_cli('show', ini, '0000000000000000.1.ab')
    assert code == 1 and "no message '0000000000000000.1.ab'" in err
    (mail_id,) = queue.pending()
    path = tmp_path / 'q' / 'new' / mail_id
    path.write_bytes(b'not a queue file\n')
    code, _, err = run_cli('show', ini, mail_id)
    assert code == 1
    assert err.startswith(f'pyramid-txmail: cannot read {path}: ')
    assert len(err.splitlines()) == 1


def test_flush_makes_deferred_due_and_the_next_pass_sends_them(tmp_path, smtp_server):
    queue = queue_with(tmp_path / 'q', 1, 2)
    for mail_id in queue.pending():
        queue.claim(mail_id).defer('421 busy', queue.clock() + 3600)
    ini = write_ini(
        tmp_path,
        queue_path=tmp_path / 'q',
        host=smtp_server.host,
        port=smtp_server.port,
    )
    assert run_cli('process', ini, '--once')[1].startswith('sent 0,')
    code, out, _ = run_cli('flush', ini)
    assert (code, out) == (0, '2 deferred message(s) due now\n')
    assert queue.counts()['queued'] == 2
    assert run_cli('flush', ini, '--json')[1] == '{"flushed": 0}\n'
    assert run_cli('process', ini, '--once')[1].startswith('sent 2,')
    assert len(smtp_server.wait_for(2)) == 2


def test_retry_all_after_an_outage_takes_deferred_and_failed(states):
    _ids, queue, ini = states
    code, out, _ = run_cli('retry', ini, '--all')
    assert (code, out) == (0, '2 message(s) queued again\n')
    assert queue.counts() == {
        'queued': 3,
        'sending': 1,
        'deferred': 0,
        'failed': 0,
        'held': 1,
        'unreadable': 0,
        'legacy': 0,
        'unpublished': 0,
    }


def test_retry_by_id_takes_a_deferred_one(states):
    ids, queue, ini = states
    code, out, _ = run_cli('retry', ini, ids['deferred'], '--json')
    assert (code, json.loads(out)) == (0, {'retried': 1})
    assert ids['deferred'] in queue.pending()


def test_held_message_is_never_sent_until_released(tmp_path, smtp_server):
    queue = queue_with(tmp_path / 'q', 1, 2, 3)
    first, second, _third = queue.pending()
    queue.claim(second).defer('421 busy', queue.clock() - 1)  # due already
    ini = write_ini(
        tmp_path,
        queue_path=tmp_path / 'q',
        host=smtp_server.host,
        port=smtp_server.port,
    )
    code, out, _ = run_cli('hold', ini, first, second)
    assert (code, out) == (0, '2 message(s) held\n')
    code, out, _ = run_cli('status', ini)
    assert 'held       2' in out.splitlines()
    code, out, _ = run_cli('process', ini, '--once')
    assert out.startswith('sent 1,')
    assert [m.message['Message-ID'] for m in smtp_server.wait_for(1)] == ['<3@test>']
    code, out, _ = run_cli('list', ini, '--state', 'held')
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        [first, 'held'],
        [second, 'held'],
    ]
    code, out, _ = run_cli('release', ini, first, second, '--json')
    assert (code, json.loads(out)) == (0, {'released': 2})
    assert run_cli('process', ini, '--once')[1].startswith('sent 2,')
    assert sorted(m.message['Message-ID'] for m in smtp_server.wait_for(3)) == [
        '<1@test>',
        '<2@test>',
        '<3@test>',
    ]


def test_hold_refuses_a_message_being_sent(states):
    ids, queue, ini = states
    code, _, err = run_cli('hold', ini, ids['queued'], ids['sending'])
    assert code == 1
    assert err == (
        f'pyramid-txmail: {ids["sending"]} is being sent now; try again later\n'
    )
    assert ids['queued'] in queue.pending()  # nothing held


def test_hold_takes_only_queued_or_deferred(states):
    ids, _, ini = states
    code, _, err = run_cli('hold', ini, ids['failed'])
    assert code == 1 and 'no message' in err and '(new/ or deferred/ or hold/)' in err
    # Held already: nothing to do.
    assert run_cli('hold', ini, ids['held'])[:2] == (0, '0 message(s) held\n')
    code, _, err = run_cli('release', ini, ids['queued'])
    assert code == 1 and '(hold/)' in err


def test_purge_deletes_a_held_message(states):
    ids, queue, ini = states
    code, out, _ = run_cli('purge', ini, ids['held'], '--json')
    assert (code, json.loads(out)) == (0, {'deleted': 1})
    assert queue.counts()['held'] == 0


def test_var_value_arguments_fill_the_ini_variables(tmp_path, smtp_server):
    queue = queue_with(tmp_path / 'spool' / 'q', 1, 2)
    ini = tmp_path / 'app.ini'
    ini.write_text(
        '[app:main]\nuse = call:tests.test_cli:make_app\n'
        'mail.queue_path = %(var_dir)s/q\nmail.queue_processor = false\n'
        f'mail.host = 127.0.0.1\nmail.port = {smtp_server.port}\n'
    )
    var = f'var_dir={tmp_path / "spool"}'
    code, out, err = run_cli('status', ini, var, '--json')
    assert (code, json.loads(out)['queued']) == (0, 2), err
    first = queue.pending()[0]
    assert run_cli('hold', ini, first, var)[:2] == (0, '1 message(s) held\n')
    assert run_cli('list', ini, var, '--state', 'held')[1].count(first) == 1
    code, out, err = run_cli('process', ini, var, '--once')
    assert (code, out.split(',')[0]) == (0, 'sent 1'), err
    assert [m.message['Message-ID'] for m in smtp_server.wait_for(1)] == ['<2@test>']


def test_var_without_a_name_is_bad_usage(tmp_path):
    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    code, _, err = run_cli('status', ini, '=x')
    assert code == 2
    usage, *_, problem = err.splitlines()
    assert usage.startswith('usage: pyramid-txmail status ')
    assert problem == "pyramid-txmail status: error: '=x': expected var=value"


@pytest.mark.parametrize(
    'argv',
    [('hold', 'x.ini'), ('release', 'x.ini', 'a=b'), ('show', 'x.ini', 'a=b')],
)
def test_missing_ids_print_the_usage_line(argv):
    code, _, err = run_cli(*argv)
    assert code == 2
    usage, *_, problem = err.splitlines()
    assert usage.startswith(f'usage: pyramid-txmail {argv[0]} ')
    assert problem.startswith(f'pyramid-txmail {argv[0]}: error: give ')


def test_every_option_and_argument_has_help():
    from pyramid_txmail.cli import Command

    parser = Command().parser()
    (commands,) = [a for a in parser._actions if a.dest == 'command']
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)


def test_configuration_fault_exits_1_and_stands_until_a_send_works(
    tmp_path, make_smtp_server
):
    server = make_smtp_server(auth={'mailer': 'right'}, auth_require_tls=False)
    queue = queue_with(tmp_path / 'q', 1, 2)
    keys = dict(
        queue_path=tmp_path / 'q',
        host=server.host,
        port=server.port,
        username='mailer',
    )
    ini = write_ini(tmp_path, **keys, password='wrong')
    code, out, err = run_cli('process', ini, '--once')
    assert code == 1
    assert out.startswith('sent 0,')
    (line,) = err.splitlines()
    assert line.startswith('pyramid-txmail: cannot send: ')
    assert 'every message stays queued' in line and 'wrong' not in line
    assert queue.counts()['queued'] == 2
    code, out, _ = run_cli('status', ini)
    assert code == 0
    (fault,) = [x for x in out.splitlines() if x.startswith('sending paused')]
    assert 'configuration fault since ' in fault and ' UTC (' in fault
    code, out, _ = run_cli('status', ini, '--json')
    record = json.loads(out)['fault']
    assert set(record) == {'reason', 'since'} and record['reason'] in line
    # The same line, but for the age, which may tick between the two runs.
    listed = run_cli('list', ini)[1].splitlines()[-1]
    assert re.sub(r'\(\d+s ago\)', '', listed) == re.sub(r'\(\d+s ago\)', '', fault)
    # Fixed: the next successful send clears it.
    ini = write_ini(tmp_path, **keys, password='right')
    code, out, _ = run_cli('process', ini, '--once')
    assert (code, out.split(',')[0]) == (0, 'sent 2')
    assert json.loads(run_cli('status', ini, '--json')[1])['fault'] is None
    assert 'sending paused' not in run_cli('list', ini)[1]


def test_read_only_commands_create_nothing_in_an_existing_queue(states, tmp_path):
    ids, _queue, ini = states
    # A queue written before hold/ existed.
    os.rename(
        tmp_path / 'q' / 'hold' / ids['held'], tmp_path / 'q' / 'new' / ids['held']
    )
    os.rmdir(tmp_path / 'q' / 'hold')
    before = sorted(os.walk(tmp_path / 'q'))
    for argv in (
        ('status',),
        ('status', '--json'),
        ('list',),
        ('list', '--state', 'held'),
        ('show', ids['queued']),
        ('show', ids['queued'], '--raw'),
    ):
        out = io.TextIOWrapper(io.BytesIO(), encoding='utf-8')
        assert run_cli(argv[0], ini, *argv[1:], out=out)[0] == 0
    assert sorted(os.walk(tmp_path / 'q')) == before


def test_process_once_exits_1_when_the_relay_refuses_starttls(tmp_path, smtp_server):
    queue = queue_with(tmp_path / 'q', 1)
    ini = write_ini(
        tmp_path,
        queue_path=tmp_path / 'q',
        host=smtp_server.host,
        port=smtp_server.port,
        tls='true',
    )
    code, _, err = run_cli('process', ini, '--once')
    assert code == 1
    (line,) = err.splitlines()
    assert 'STARTTLS' in line and line.endswith('(check the mail.* settings)')
    assert queue.counts()['queued'] == 1 and smtp_server.messages == []
    fault = json.loads(run_cli('status', ini, '--json')[1])['fault']
    assert fault['reason'] in line


def test_commands_use_whatever_queue_the_command_opens(tmp_path):
    # The outbox's seam: the commands use only the queue protocol, and show
    # the states a backend has (no unreadable files in a table; sent rows).
    from pyramid_txmail.cli import Command
    from pyramid_txmail.queue.base import Entry, Fault

    class Table:
        name = 'postgresql://db/mail'

        def clock(self):
            return 1_700_000_060.0

        def counts(self):
            return {'queued': 1, 'sending': 0, 'sent': 4}

        def read_fault(self):
            return Fault('535 login refused', 1_700_000_000.0)

        def list(self, states=None):
            return [Entry('7', 'queued', 60.0, 0, ('a@example.com',), None)]

    class TableCommand(Command):
        def _open(self, settings, *, create):
            assert not create  # the read-only commands never create it
            return Table()

    ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
    out, err = io.StringIO(), io.StringIO()
    assert TableCommand(out, err).run(['status', ini]) == 0
    assert out.getvalue() == (
        'queued     1\n'
        'sending    0\n'
        'sent       4\n'
        'sending paused by a configuration fault since 2023-11-14 22:13:20 UTC '
        '(1m ago): 535 login refused\n'
    )
    out = io.StringIO()
    assert TableCommand(out, err).run(['list', ini, '--state', 'queued']) == 0
    assert out.getvalue().splitlines()[1].split()[:3] == ['7', 'queued', '0']
    assert not (tmp_path / 'q').exists()


# -- the shared outbox (mail.queue_url): each command once, through the .ini


def outbox_with(url, *ns):
    """An outbox holding ``ns``'s messages, committed as the app commits them."""
    from pyramid_txmail.delivery import OutboxDelivery
    from pyramid_txmail.queue.outbox import OutboxQueue

    delivery = OutboxDelivery(OutboxQueue(url))
    pending = delivery.vote([make_mail(n) for n in ns])
    pending.finish()
    delivery.close()
    return delivery.queue


@pytest.fixture
def outbox(pg_url):
    """The outbox with messages 1 and 2 queued; closed after the test."""
    queue = outbox_with(pg_url, 1, 2)
    yield queue
    queue.close()


@pytest.fixture
def outbox_ini(tmp_path, pg_url, outbox):
    """An .ini naming the outbox of ``outbox``, sent rows kept, no processor."""
    # The URL's %3D is an .ini interpolation unless doubled.
    url = pg_url.replace('%', '%%')
    return write_ini(tmp_path, queue_url=url, queue_processor='false', keep_sent='1h')


def claimed(queue):
    return queue.start_pass(stale_after=60).claim()


def test_outbox_status(outbox_ini, outbox):
    outbox.record_fault('535 login refused')
    code, out, _ = run_cli('status', outbox_ini)
    assert code == 0
    assert out.splitlines()[:5] == [
        'queued     2',
        'deferred   0',
        'sending    0',
        'held       0',
        'failed     0',
    ]
    assert 'sending paused by a configuration fault' in out
    assert '535 login refused' in out


@contextlib.contextmanager
def left_in_doubt(url: str):
    """The gid of a commit to the outbox at ``url`` whose process died
    between the vote (PREPARE TRANSACTION) and the finish; an operator's
    ROLLBACK PREPARED at the end."""
    from pyramid_txmail.delivery import OutboxDelivery
    from pyramid_txmail.queue.outbox import OutboxQueue
    from tests.test_outbox import prepared, sql

    delivery = OutboxDelivery(OutboxQueue(url))
    delivery.vote([make_mail(3)])  # and never finished
    delivery.close()
    [gid] = prepared(url)
    try:
        yield gid
    finally:
        sql(url, f"ROLLBACK PREPARED '{gid}'")


def test_outbox_status_shows_prepared_transactions_left_in_doubt(
    tmp_path, pg_url, outbox
):
    # Its mail is held where no processor sees it until an operator
    # decides: status says so, with what to run.
    ini = write_ini(
        tmp_path,
        queue_url=pg_url.replace('%', '%%'),
        queue_processor='false',
        timeout='0.2',
    )
    with left_in_doubt(pg_url) as gid:
        time.sleep(0.3)  # older than mail.timeout: not a commit under way
        code, out, _ = run_cli('status', ini)
        assert code == 0
        assert out.splitlines()[0] == 'queued     2'  # message 3 is not there
        assert 'in doubt   1 (prepared transactions whose mail waits for' in out
        assert "COMMIT PREPARED or ROLLBACK PREPARED: see 'Scaling out')" in out
        assert f'  {gid}  prepared ' in out
        code, out, _ = run_cli('status', ini, '--json')
        assert json.loads(out)['in_doubt'] == [gid]


def test_outbox_status_shows_the_counts_to_a_role_that_cannot_see_prepared_ones(
    tmp_path, pg_server
):
    # A database whose operator revoked pg_prepared_xacts from the
    # application's role: status still counts, and says what it could not do.
    from pyramid_txmail.queue.outbox import schema_sql

    dbname, role = 'txmail_revoked', 'txmail_app'
    pg_server.execute(f'CREATE DATABASE {dbname}', f'CREATE ROLE {role} LOGIN')
    try:
        pg_server.execute(
            schema_sql(),
            f'GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}',
            f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}',
            'REVOKE SELECT ON pg_catalog.pg_prepared_xacts FROM PUBLIC',
            dbname=dbname,
        )
        url = pg_server.url_for(dbname).replace('://postgres@', f'://{role}@', 1)
        ini = write_ini(tmp_path, queue_url=url, queue_processor='false')
        code, out, err = run_cli('status', ini)
        assert code == 0
        assert out.splitlines()[0] == 'queued     0'
        assert 'cannot look for prepared transactions' in err
        assert 'in doubt' not in out
        code, out, _ = run_cli('status', ini, '--json')
        assert (code, json.loads(out)['in_doubt']) == (0, None)  # not "none"
    finally:
        pg_server.execute(f'DROP DATABASE {dbname} WITH (FORCE)', f'DROP ROLE {role}')


def test_outbox_status_lists_only_its_own_outboxs_transactions_in_doubt(
    tmp_path, pg_server, pg_url, outbox
):
    # Two applications' outboxes in two schemas of one database: an
    # operator of the other must not be told to decide on this one's mail.
    from pyramid_txmail.queue.outbox import OutboxQueue
    from tests.conftest import _new_schema

    other = write_ini(
        tmp_path,
        queue_url=_new_schema(pg_server, outbox=True).replace('%', '%%'),
        queue_processor='false',
        timeout='0.2',
    )
    with left_in_doubt(pg_url) as gid:
        time.sleep(0.3)  # older than mail.timeout
        code, out, _ = run_cli('status', other)
        assert code == 0
        assert 'in doubt' not in out
        mine = OutboxQueue(pg_url, timeout=0.2)
        assert [found for found, _ in mine.in_doubt()] == [gid]
        mine.close()


def test_outbox_status_lists_an_applications_two_phase_commit_left_in_doubt(
    tmp_path, pg_url, outbox
):
    # The session mode with a two-phase session (SQLAlchemy's twophase=True):
    # the application's own prepared transaction holds the mail it wrote.
    import psycopg

    with psycopg.connect(pg_url) as conn:
        conn.execute(
            'INSERT INTO txmail_outbox (message_id, sender, recipients, data) '
            "VALUES ('<3@test>', 'from@example.com', '{to@example.com}', 'x')"
        )
        # Named by the application, hostile for the test: a terminal must
        # get it on one line, its control characters escaped.
        conn.execute("PREPARE TRANSACTION E'_sa_app\\n1\\x1b[31m'")
    gid = '_sa_app\n1\x1b[31m'
    try:
        ini = write_ini(
            tmp_path,
            queue_url=pg_url.replace('%', '%%'),
            queue_processor='false',
            timeout='0.2',
        )
        time.sleep(0.3)  # older than mail.timeout
        code, out, _ = run_cli('status', ini, '--json')
        assert (code, json.loads(out)['in_doubt']) == (0, [gid])
        code, out, _ = run_cli('status', ini)
        assert '  _sa_app\\n1\\x1b[31m  prepared ' in out  # one line, escaped
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL('ROLLBACK PREPARED {}').format(gid))


def test_outbox_status_does_not_count_a_commit_under_way_as_in_doubt(
    outbox_ini, pg_url, outbox
):
    from pyramid_txmail.delivery import OutboxDelivery
    from pyramid_txmail.queue.outbox import OutboxQueue

    delivery = OutboxDelivery(OutboxQueue(pg_url))
    pending = delivery.vote([make_mail(3)])
    try:
        code, out, _ = run_cli('status', outbox_ini)  # mail.timeout: 30 s
        assert code == 0
        assert 'in doubt' not in out
        code, out, _ = run_cli('status', outbox_ini, '--json')
        assert 'in_doubt' not in json.loads(out)
    finally:
        pending.finish()
        delivery.close()


def test_outbox_list(outbox_ini, outbox):
    claimed(outbox).fail('550 5.1.1 no such user')
    code, out, _ = run_cli('list', outbox_ini)
    assert code == 0
    _, *lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ['queued', 'failed']
    assert '550 5.1.1 no such user' in lines[1]
    code, out, _ = run_cli('list', outbox_ini, '--state', 'failed', '--json')
    assert [row['message_id'] for row in json.loads(out)] == ['<1@test>']


def test_outbox_show(outbox_ini, outbox, tmp_path):
    [first, _] = outbox.list()
    code, out, _ = run_cli('show', outbox_ini, first.id)
    assert code == 0
    assert 'message-id:   <1@test>' in out
    assert 'state:        queued' in out
    raw = tmp_path / 'raw'
    with open(raw, 'w') as f:
        code, _, _ = run_cli('show', outbox_ini, first.id, '--raw', out=f)
    assert code == 0
    assert raw.read_bytes() == make_mail(1).data


def test_outbox_retry(outbox_ini, outbox):
    claim = claimed(outbox)
    claim.fail('554 no')
    code, out, _ = run_cli('retry', outbox_ini, claim.id)
    assert (code, out) == (0, '1 message(s) queued again\n')
    code, _, err = run_cli('retry', outbox_ini, '999999')
    assert code == 1
    assert '999999' in err
    assert outbox.counts()['queued'] == 2


def test_outbox_hold_and_release(outbox_ini, outbox):
    [first, second] = outbox.list()
    code, out, _ = run_cli('hold', outbox_ini, first.id)
    assert (code, out) == (0, '1 message(s) held\n')
    assert claimed(outbox).id == second.id  # the held one is not sent
    code, out, _ = run_cli('release', outbox_ini, first.id)
    assert (code, out) == (0, '1 message(s) released\n')
    assert outbox.counts()['queued'] == 1


def test_outbox_flush(outbox_ini, outbox):
    claimed(outbox).defer('451 later', outbox.clock() + 3600)
    code, out, _ = run_cli('flush', outbox_ini)
    assert (code, out) == (0, '1 deferred message(s) due now\n')
    assert outbox.counts()['queued'] == 2


def test_outbox_purge(outbox_ini, outbox):
    [_, second] = outbox.list()
    claimed(outbox).fail('554 no')
    code, out, _ = run_cli('purge', outbox_ini, second.id)
    assert (code, out) == (0, '1 message(s) deleted\n')
    code, out, _ = run_cli('purge', outbox_ini, '--failed')
    assert (code, out) == (0, '1 message(s) deleted\n')
    assert outbox.list() == []


def test_outbox_process_once_keeps_what_the_relay_said(
    tmp_path, pg_url, outbox, smtp_server
):
    url = pg_url.replace('%', '%%')
    ini = write_ini(
        tmp_path,
        queue_url=url,
        keep_sent='1h',
        host=smtp_server.host,
        port=smtp_server.port,
    )
    EVENTS.clear()
    code, out, _ = run_cli('process', ini, '--once')
    assert code == 0
    assert out.startswith('sent 2,')
    assert len(smtp_server.wait_for(2)) == 2
    assert sorted(e.message_id for e in EVENTS) == ['<1@test>', '<2@test>']
    code, out, _ = run_cli('list', ini, '--sent')
    _, *lines = out.splitlines()
    assert len(lines) == 2
    assert all(line.endswith(' UTC: 250 2.0.0 OK: queued') for line in lines)
    [entry, _] = outbox.list(['sent'])
    code, out, _ = run_cli('show', ini, entry.id)
    assert 'state:        sent' in out
    assert '250 2.0.0 OK: queued' in out


def test_outbox_a_database_that_stops_answering_ends_the_command_in_time(
    tmp_path, pg_url, pg_server, outbox
):
    from tests.stallproxy import StallingProxy

    with StallingProxy(('127.0.0.1', pg_server.port)) as proxy:
        url = pg_url.replace(
            f'postgres@127.0.0.1:{pg_server.port}',
            f'postgres:s3cret@127.0.0.1:{proxy.port}',
        )
        ini = write_ini(tmp_path, queue_url=url.replace('%', '%%'), timeout='1')
        proxy.stall(on=b'GROUP BY state')
        code, out, err = run_cli('status', ini)
    assert code == 1
    assert out == ''
    [line] = err.splitlines()
    assert line.endswith('cannot count messages: no answer within 1s (mail.timeout)')
    assert 's3cret' not in err
