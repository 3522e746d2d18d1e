"""The pyramid-txmail command line, on real .ini files and a real queue."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest
from pyramid.config import Configurator

from pyramid_txmail.events import MailSent
from pyramid_txmail.queue import MailQueue
from tests import make_mail

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


class TestMain:
    def _callFUT(self, *argv):
        from pyramid_txmail.cli import Command

        out, err = io.StringIO(), io.StringIO()
        code = Command(out, err).run(list(argv))
        self.out, self.err = out.getvalue(), err.getvalue()
        return code

    @pytest.fixture
    def ini(self, tmp_path):
        self.queue = queue_with(tmp_path / 'q', 1, 2)
        return write_ini(tmp_path, queue_path=tmp_path / 'q', queue_processor='false')

    def test_status(self, ini):
        assert self._callFUT('status', ini) == 0
        assert self.out.split() == [
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

    def test_status_json(self, ini):
        assert self._callFUT('status', ini, '--json') == 0
        assert json.loads(self.out)['queued'] == 2

    def test_list(self, ini):
        assert self._callFUT('list', ini) == 0
        header, *lines = self.out.splitlines()
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

    def test_list_failed_json_with_error(self, ini):
        claim = self.queue.claim(self.queue.pending()[0])
        claim.fail('550 5.1.1 no such user')
        assert self._callFUT('list', ini, '--failed', '--json') == 0
        (row,) = json.loads(self.out)
        assert row['id'] == claim.id and row['last_error'] == '550 5.1.1 no such user'
        assert self._callFUT('list', ini, '--failed') == 0
        assert '550 5.1.1 no such user' in self.out

    def test_retry_all_and_by_id(self, ini):
        for id in self.queue.pending():
            self.queue.claim(id).fail('554 no')
        first = next(self.queue.list(failed=True)).id
        assert self._callFUT('retry', ini, first) == 0
        assert self.out.startswith('1 ')
        assert self._callFUT('retry', ini, '--all') == 0
        assert self.out.startswith('1 ')
        assert self.queue.counts()['queued'] == 2

    def test_retry_unknown_id(self, ini):
        assert self._callFUT('retry', ini, '0000000000000000.1.ab') == 1
        assert self.err.startswith('pyramid-txmail: ')
        assert '0000000000000000.1.ab' in self.err

    def test_purge_by_id_and_failed(self, ini):
        ids = self.queue.pending()
        self.queue.claim(ids[1]).fail('554 no')
        assert self._callFUT('purge', ini, ids[0]) == 0
        assert self.out.startswith('1 ')
        assert self._callFUT('purge', ini, '--failed') == 0
        assert self.out.startswith('1 ')
        assert self.queue.counts() == dict.fromkeys(
            ('queued', 'sending', 'deferred', 'failed'), 0
        )

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
    def test_bad_usage_exits_2(self, argv):
        assert self._callFUT(*argv) == 2
        # The usage line, then the problem.
        assert self.err.startswith('usage: pyramid-txmail')
        assert 'error: ' in self.err.splitlines()[-1]

    def test_missing_config_file(self, tmp_path):
        assert self._callFUT('status', str(tmp_path / 'nope.ini')) == 1
        assert 'config file not found' in self.err

    def test_missing_queue_path(self, tmp_path):
        assert self._callFUT('status', write_ini(tmp_path)) == 1
        assert self.err == 'pyramid-txmail: mail.queue_path is not set in app.ini\n'

    def test_bad_setting_names_key(self, tmp_path):
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q', port='smtp')
        assert self._callFUT('status', ini) == 1
        assert 'mail.port' in self.err and len(self.err.splitlines()) == 1

    def test_get_settings_seam_takes_a_dict(self, tmp_path):
        from pyramid_txmail.cli import Command

        queue_with(tmp_path / 'q', 1)
        command = Command(io.StringIO(), io.StringIO())
        command.get_settings = lambda uri, options: {
            'mail.queue_path': str(tmp_path / 'q')
        }
        ini = tmp_path / 'any.ini'
        ini.write_text('')
        assert command.run(['status', '--json', str(ini)]) == 0
        assert json.loads(command.out.getvalue())['queued'] == 1

    def test_process_once_delivers_and_notifies_app(self, tmp_path, smtp_server):
        queue_with(tmp_path / 'q', 1, 2)
        ini = write_ini(
            tmp_path,
            logging=True,
            queue_path=tmp_path / 'q',
            host=smtp_server.host,
            port=smtp_server.port,
        )
        EVENTS.clear()
        assert self._callFUT('process', ini, '--once') == 0
        assert self.out.startswith('sent 2,')
        assert len(smtp_server.wait_for(2)) == 2
        assert sorted(e.message_id for e in EVENTS) == ['<1@test>', '<2@test>']

    def test_process_runs_until_sigterm(self, tmp_path, smtp_server):
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
        assert self._callFUT('process', ini) == 0
        assert [e.message_id for e in EVENTS] == ['<stop@test>']
        assert signal.getsignal(signal.SIGTERM) is before


class TestQueueFaults:
    """What an operator sees on a queue that is missing, unreadable, damaged
    or not root's."""

    def _callFUT(self, *argv):
        from pyramid_txmail.cli import Command

        out, err = io.StringIO(), io.StringIO()
        code = Command(out, err).run(list(argv))
        self.out, self.err = out.getvalue(), err.getvalue()
        return code

    @pytest.mark.parametrize(
        'argv', [('status',), ('list',), ('retry', '--all'), ('purge', '--failed')]
    )
    def test_commands_never_create_the_queue(self, tmp_path, argv):
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
        assert self._callFUT(argv[0], ini, *argv[1:]) == 1
        assert self.err == (
            f'pyramid-txmail: no mail queue at {tmp_path}/q: '
            'nothing has been queued there yet\n'
        )
        assert not (tmp_path / 'q').exists()

    def test_unreadable_queue_says_cannot_read(self, tmp_path):
        (tmp_path / 'q').write_text('a file, not a queue')
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
        assert self._callFUT('status', ini) == 1
        assert self.err == (
            f'pyramid-txmail: cannot read mail queue {tmp_path}/q: not a directory\n'
        )

    def test_list_and_status_show_bad_entries(self, tmp_path):
        from tests.test_queue import add_bad_entries, queue_as_nobody

        queue = queue_as_nobody(str(tmp_path / 'q'))
        reasons = add_bad_entries(queue)
        queue.publish([queue.stage(make_mail(1))])
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
        assert self._callFUT('list', ini) == 0
        _, *lines = self.out.splitlines()
        assert len(lines) == len(reasons) + 1
        # Root reads the first two; the others are unreadable to anyone.
        assert sum('unreadable: ' in line for line in lines) == len(reasons) - 2
        assert 'to@example.com' in lines[-1]
        assert self._callFUT('list', ini, '--json') == 0
        rows = json.loads(self.out)
        assert [r['id'] for r in rows][:-1] == list(reasons)
        # The application's processor sets them aside.
        for mail_id in list(reasons):
            assert queue.claim(mail_id) is None
        assert self._callFUT('status', ini, '--json') == 0
        counts = json.loads(self.out)
        assert counts['failed'] == counts['unreadable'] == len(reasons)
        assert self._callFUT('list', ini, '--failed') == 0
        assert self.out.count('unreadable: ') == len(reasons)

    def test_retry_as_root_keeps_the_queue_owner(self, tmp_path):
        from tests.test_queue import NOBODY, queue_as_nobody

        queue = queue_as_nobody(str(tmp_path / 'q'))
        mail_id = queue.stage(make_mail(1))
        queue.publish([mail_id])
        queue.claim(mail_id).fail('554 no')
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q')
        assert self._callFUT('retry', ini, '--all') == 0
        path = tmp_path / 'q' / 'new' / mail_id
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY)
        # So the application (uid 65534) can send it.
        claim = queue.claim(mail_id)
        assert claim is not None
        claim.done()


class TestConfigFaults:
    """A broken .ini gives one line naming the file, never a value."""

    def _callFUT(self, *argv):
        from pyramid_txmail.cli import Command

        out, err = io.StringIO(), io.StringIO()
        code = Command(out, err).run(list(argv))
        self.out, self.err = out.getvalue(), err.getvalue()
        return code

    @pytest.mark.parametrize('command', ['status', 'process'])
    def test_percent_in_password_is_not_shown(self, tmp_path, command):
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q', password='s3cr%et-tail')
        assert (
            self._callFUT(command, ini, '--once' if command == 'process' else '--json')
            == 1
        )
        assert self.err == (
            f'pyramid-txmail: {ini}: cannot read mail.password in [app:main]: '
            'its value holds a "%" that is neither "%%" nor a "%(name)s" '
            'reference (write a literal % as %%)\n'
        )
        assert 'et-tail' not in self.err

    def test_percent_reference_to_nothing_is_not_shown(self, tmp_path):
        ini = write_ini(tmp_path, queue_path=tmp_path / 'q', password='%(nope)s-tail')
        assert self._callFUT('status', ini) == 1
        assert 'mail.password' in self.err and 'tail' not in self.err

    def test_undecodable_file_is_named(self, tmp_path):
        ini = tmp_path / 'app.ini'
        ini.write_bytes(b'[app:main]\nmail.password = \xff\xfe secret\n')
        assert self._callFUT('list', str(ini)) == 1
        assert self.err == (
            f'pyramid-txmail: {ini}: not UTF-8 text (byte 0xff at offset 27)\n'
        )

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
    def test_garbage_file_is_named_without_its_lines(self, tmp_path, text, problem):
        ini = tmp_path / 'app.ini'
        ini.write_text(text)
        assert self._callFUT('status', str(ini)) == 1
        assert self.err.startswith(f'pyramid-txmail: {ini}: {problem}')
        assert len(self.err.splitlines()) == 1
        assert 'secret' not in self.err


class TestConsoleScript:
    def test_installed_script_reports_status(self, tmp_path):
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

    def test_main_uses_sys_argv(self, monkeypatch, capsys):
        from pyramid_txmail.cli import main

        monkeypatch.setattr(sys, 'argv', ['pyramid-txmail'])
        assert main() == 2
        assert main(['status']) == 2


class Test_age:
    def _callFUT(self, seconds):
        from pyramid_txmail.cli import _age

        return _age(seconds)

    def test_units(self):
        assert [self._callFUT(s) for s in (-1, 59, 60, 7200, 86400 * 3)] == [
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
