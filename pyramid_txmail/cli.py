"""``pyramid-txmail``: run and inspect the mail queue of an application.

Reads the application's .ini file through plaster (``CONFIG`` may name a
section, ``development.ini#main``). ``process`` loads the application, so its
``MailSent``/``MailFailed`` subscribers receive the processor's events; the
inspection commands need only the settings and never create the queue.
Like pserve, ``var=value`` arguments after ``CONFIG`` fill the file's
``%(var)s`` variables. Exit status: 0 success, 2 bad usage (with the usage
line), 1 any other error or a configuration fault that held the work, with
a one-line message naming the problem (never a setting's value, which may
be a password).
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import email.policy
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from email.parser import BytesParser
from typing import Any, NoReturn, TextIO

from pyramid import paster

from . import suppress_processor
from .events import Notifier
from .exceptions import QueueError
from .processor import STOP_TIMEOUT, QueueProcessor
from .queue.base import STATE_NAMES, Entry, Fault, Queue
from .queue.maildir import MailQueue
from .settings import MailSettings, parse_settings, settings_prefix

__all__ = ['main']


class CommandError(Exception):
    """A failure to report in one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f'{self.format_usage()}{self.prog}: error: {message}')


class _UsageError(Exception):
    pass


def _explain(exc: Exception, config_uri: str | None) -> str:
    """One line for an unexpected error, naming the .ini file when reading
    it failed, and never quoting a value from it: configparser's own
    messages quote the line or value at fault, which may be a password."""
    path = (config_uri or '').split('#', 1)[0]
    if isinstance(exc, configparser.InterpolationError):
        return (
            f'{path}: cannot read {exc.option} in [{exc.section}]: its value '
            f'holds a "%" that is neither "%%" nor a "%(name)s" reference '
            f'(write a literal % as %%)'
        )
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f'{path}: line {exc.lineno}: no [section] header before it'
    if isinstance(exc, configparser.ParsingError):
        lineno = exc.errors[0][0]
        return f'{path}: line {lineno}: not a "key = value" line'
    if isinstance(exc, configparser.Error):
        return f'{path}: not a valid .ini file ({type(exc).__name__})'
    if isinstance(exc, UnicodeDecodeError) and path:
        byte = exc.object[exc.start]
        return f'{path}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})'
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds // size}{unit}'
    return f'{seconds}s'


def _one_line(text: str | None) -> str:
    """``text`` on one line, safe for a terminal: every character that is
    not printable (controls, line breaks, bidi overrides) is escaped as
    ``\\xNN``/``\\uNNNN``; other non-ASCII text is shown as it is."""
    if text is None:
        return ''
    if text.isprintable():
        return text
    return ''.join(
        c if c.isprintable() else c.encode('unicode_escape').decode('ascii')
        for c in text
    )


def _when(stamp: float) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(stamp))


def _next_attempt(info: Entry, now: float) -> str:
    if info.state == 'deferred' and info.due is not None:
        # Rounded up: "in 0s" would read as "now".
        return 'now' if info.due <= now else f'in {_age(math.ceil(info.due - now))}'
    return 'now' if info.state in ('queued', 'legacy') else '-'


def _vars(tokens: Iterable[str]) -> dict[str, str]:
    """pserve's ``var=value`` arguments, as plaster's ``options``."""
    options = {}
    for token in tokens:
        name, _, value = token.partition('=')
        if not name.strip():
            raise ValueError(f'{token!r}: expected var=value')
        options[name.strip()] = value
    return options


class Command:
    """The command line; collaborators are class attributes so tests can
    pass a dict of settings instead of an .ini file (the pyramid seam)."""

    get_settings = staticmethod(paster.get_appsettings)
    bootstrap = staticmethod(paster.bootstrap)
    setup_logging = staticmethod(paster.setup_logging)
    #: Seconds ``process`` lets the message being sent finish after SIGTERM
    #: or SIGINT; a session still waiting for the relay then is cut.
    stop_timeout = STOP_TIMEOUT

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def parser(self) -> argparse.ArgumentParser:
        parser = _Parser(prog='pyramid-txmail', description=__doc__.split('\n')[0])
        commands = parser.add_subparsers(dest='command', required=True)
        self._commands = commands.choices

        def command(
            name: str, help: str, *, ids: str | None = None, nargs: str | int = '*'
        ) -> argparse.ArgumentParser:
            sub = commands.add_parser(name, help=help, description=help)
            sub.add_argument(
                'config', metavar='CONFIG', help='the .ini file (file.ini#section)'
            )
            if ids:
                sub.add_argument('ids', nargs=nargs, metavar='ID', help=ids)
            sub.add_argument(
                'vars',
                nargs='*',
                metavar='var=value',
                help="fill the .ini file's %%(var)s variables, as pserve does",
            )
            return sub

        def json_option(sub: argparse.ArgumentParser, what: str) -> None:
            sub.add_argument('--json', action='store_true', help=f'{what} as JSON')

        command('process', 'run the queue processor').add_argument(
            '--once', action='store_true', help='drain what is due, then exit'
        )
        json_option(
            command('status', 'count messages by state, show a configuration fault'),
            'the counts',
        )
        listing = command('list', 'one line per message, every state by default')
        listing.add_argument(
            '--state',
            choices=list(STATE_NAMES),
            help='only messages in this state',
        )
        listing.add_argument(
            '--failed',
            action='store_const',
            dest='state',
            const='failed',
            help='only failed messages (same as --state failed)',
        )
        listing.add_argument(
            '--sent',
            action='store_const',
            dest='state',
            const='sent',
            help='only the sent messages the outbox keeps (mail.keep_sent)',
        )
        json_option(listing, 'the messages')
        show = command(
            'show', 'one message: envelope, headers, history', ids='its id', nargs=1
        )
        show.add_argument(
            '--raw', action='store_true', help='write the stored message bytes only'
        )
        json_option(show, 'the message')
        json_option(command('flush', 'make deferred messages due now'), 'the count')
        retry = command(
            'retry', 'make failed or deferred messages due now', ids='message ids'
        )
        retry.add_argument(
            '--all', action='store_true', help='every failed and deferred message'
        )
        json_option(retry, 'the counts')
        json_option(
            command('hold', 'keep messages from being sent', ids='message ids'),
            'the count',
        )
        json_option(
            command('release', 'put held messages back, due now', ids='message ids'),
            'the count',
        )
        purge = command('purge', 'delete messages', ids='message ids')
        purge.add_argument('--failed', action='store_true', help='every failed message')
        json_option(purge, 'the count')
        command('initdb', 'create the outbox tables (mail.queue_url)')
        catch = commands.add_parser(
            'catch', help='a development mail catcher: SMTP and a web UI'
        )
        catch.add_argument(
            '--smtp-port',
            type=int,
            default=8025,
            metavar='P',
            help='SMTP port on --host (default 8025; 0: any free port)',
        )
        catch.add_argument(
            '--http-port',
            type=int,
            default=8026,
            metavar='P',
            help='web UI port on --host (default 8026; 0: any free port)',
        )
        catch.add_argument('--host', default='127.0.0.1', help='loopback only')
        catch.add_argument(
            '--allow-remote', action='store_true', help='allow a non-loopback --host'
        )
        catch.add_argument('--dir', help='keep messages here (default: temporary)')
        catch.add_argument(
            '--previews',
            metavar='URL',
            help="link every page to this URL: the application's mail previews",
        )
        for flag, reply in (('--defer', '451'), ('--reject', '550')):
            catch.add_argument(
                flag,
                action='append',
                default=[],
                metavar='PATTERN',
                help=f'answer matching recipients (fnmatch) with {reply}',
            )
        return parser

    def run(self, argv: Sequence[str]) -> int:
        args = None
        try:
            args = self.parser().parse_args(argv)
            self._check_usage(args)
            return getattr(self, 'cmd_' + args.command)(args) or 0
        except _UsageError as exc:
            print(exc, file=self.err)
            return 2
        except (CommandError, QueueError) as exc:
            print(f'pyramid-txmail: {exc}', file=self.err)
            return 1
        except Exception as exc:  # a bad .ini, a bad setting, ...
            message = _explain(exc, getattr(args, 'config', None))
            print(f'pyramid-txmail: {message}', file=self.err)
            return 1

    # -- helpers
    def _check_usage(self, args: argparse.Namespace) -> None:
        """The usage rules argparse cannot state; turns ``vars`` into a dict."""
        usage = self._commands[args.command]
        if hasattr(args, 'ids'):
            # argparse takes a var=value after the ids for one more id.
            args.vars = [i for i in args.ids if '=' in i] + args.vars
            args.ids = [i for i in args.ids if '=' not in i]
        try:
            args.vars = _vars(getattr(args, 'vars', ()))
        except ValueError as exc:
            usage.error(str(exc))
        flag = {'retry': 'all', 'purge': 'failed'}.get(args.command)
        if flag and bool(args.ids) == bool(getattr(args, flag)):
            usage.error(f'give IDs or --{flag}')
        if args.command in ('show', 'hold', 'release') and not args.ids:
            usage.error('give an ID' if args.command == 'show' else 'give IDs')

    def _check_file(self, config_uri: str) -> None:
        path = config_uri.split('#', 1)[0]
        if not os.path.isfile(path):
            raise CommandError(f'config file not found: {path}')

    def _mail_settings(self, config_uri: str, raw: Mapping[str, Any]) -> MailSettings:
        prefix = settings_prefix(raw)
        settings = parse_settings(raw, prefix=prefix)
        if not (settings.queue_path or settings.queue_url):
            name = os.path.basename(config_uri.split('#', 1)[0])
            raise CommandError(f'{prefix}queue_path is not set in {name}')
        return settings

    def _queue(self, args: argparse.Namespace) -> Queue:
        """The application's queue, as it is: never created here (as root it
        would be root's, and the application could not use it)."""
        self._check_file(args.config)
        raw = self.get_settings(args.config, options=args.vars)
        return self._open(self._mail_settings(args.config, raw), create=False)

    def _open(self, settings: MailSettings, *, create: bool) -> Queue:
        """The queue ``settings`` name. The commands use only the queue
        protocol (:mod:`pyramid_txmail.queue.base`), whatever the backend."""
        if settings.queue_url:
            from .queue.outbox import OutboxQueue  # psycopg only when asked for

            return OutboxQueue(
                settings.queue_url,
                keep_sent=settings.keep_sent,
                timeout=settings.timeout,
            )
        # _mail_settings refused settings with neither.
        path: str = settings.queue_path  # type: ignore[assignment]
        return MailQueue(path, create=create)

    def _fault_line(self, fault: Fault, now: float) -> str:
        return (
            f'sending paused by a configuration fault since '
            f'{_when(fault.since)} ({_age(now - fault.since)} ago): '
            f'{_one_line(fault.reason)}'
        )

    def _done(self, args: argparse.Namespace, text: str, **counts: int) -> int:
        """Report what a changing command did, as text or JSON."""
        if args.json:
            print(json.dumps(counts), file=self.out)
        else:
            print(text, file=self.out)
        return 0

    # -- commands
    def cmd_process(self, args: argparse.Namespace) -> int:
        self._check_file(args.config)
        # The .ini's logging sections, or a basic stderr handler without them.
        self.setup_logging(args.config, global_conf=args.vars)
        with suppress_processor():
            env = self.bootstrap(args.config, options=args.vars)
        try:
            registry = env['registry']
            settings = self._mail_settings(args.config, registry.settings)
            queue = self._open(settings, create=True)
            processor = QueueProcessor(
                queue, settings, notify=Notifier(registry.notify)
            )
            if args.once:
                result = processor.run_once()
                print(
                    f'sent {result.sent}, deferred {result.deferred}, '
                    f'failed {result.failed}, kept {result.released}',
                    file=self.out,
                )
                fault = queue.read_fault()
                if result.released and fault:
                    # Only a configuration fault keeps (releases) messages.
                    raise CommandError(
                        f'cannot send: {_one_line(fault.reason)}; every '
                        f'message stays queued (check the mail.* settings)'
                    )
                return 0
            previous = {
                sig: signal.signal(sig, lambda *_: processor.stop(self.stop_timeout))
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                processor.run()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            return 0
        finally:
            env['closer']()

    def cmd_status(self, args: argparse.Namespace) -> int:
        queue = self._queue(args)
        counts = queue.counts()
        fault = queue.read_fault()
        # The shared outbox's own-connection mode only (OutboxQueue.in_doubt).
        looking = getattr(queue, 'in_doubt', None)
        in_doubt: list[tuple[str, float]] | None = []
        try:
            in_doubt = looking() if looking else []
        except QueueError as exc:
            # pg_prepared_xacts not readable by this role: the counts stand.
            print(f'pyramid-txmail: {exc}', file=self.err)
            in_doubt = None
        if args.json:
            record = None if fault is None else dataclasses.asdict(fault)
            # null: could not look (a monitor must not read it as "none").
            extra: dict[str, Any] = {}
            if in_doubt is None or in_doubt:
                extra['in_doubt'] = (
                    None if in_doubt is None else [gid for gid, _ in in_doubt]
                )
            print(json.dumps({**counts, 'fault': record, **extra}), file=self.out)
            return 0
        for state in ('queued', 'deferred', 'sending', 'held', 'failed', 'unreadable'):
            if state in counts:
                print(f'{state:<10} {counts[state]}', file=self.out)
        # repoze.sendmail's files, waiting or rejected: the processor adopts them.
        for state in sorted(counts.keys() - {*STATE_NAMES, 'unreadable'}):
            if counts[state]:
                print(f'{state:<10} {counts[state]}', file=self.out)
        if fault:
            print(self._fault_line(fault, queue.clock()), file=self.out)
        if in_doubt:
            print(
                f'in doubt   {len(in_doubt)} (prepared transactions whose mail '
                'waits for COMMIT PREPARED or ROLLBACK PREPARED: '
                "see 'Scaling out')",
                file=self.out,
            )
            for gid, age in in_doubt:
                # Any session may name its prepared transaction: escaped.
                print(f'  {_one_line(gid)}  prepared {_age(age)} ago', file=self.out)
        return 0

    def cmd_list(self, args: argparse.Namespace) -> int:
        queue = self._queue(args)
        states = None if args.state is None else [args.state]
        if args.state == 'queued':
            # repoze.sendmail's waiting files too (its rejected ones are failed).
            states = ['legacy', 'queued']
        infos = queue.list(states)
        now = queue.clock()
        if args.json:
            rows = [
                {
                    'id': i.id,
                    'state': i.state,
                    'attempts': i.attempts,
                    'due': i.due,
                    'age': i.age,
                    'message_id': i.message_id,
                    'subject': i.subject,
                    'recipients': list(i.recipients),
                    'last_error': i.last_error,
                }
                for i in infos
            ]
            print(json.dumps(rows), file=self.out)
            return 0
        table = [
            (
                'ID',
                'STATE',
                'ATTEMPTS',
                'NEXT',
                'AGE',
                'MESSAGE-ID',
                'SUBJECT',
                'RECIPIENTS',
                'LAST ERROR',
            )
        ]
        # Every field may come from a stranger (a Subject, a repoze.sendmail
        # file name): one line each, and no control characters reach the
        # terminal.
        table += [
            (
                _one_line(i.id),
                i.state,
                str(i.attempts),
                _next_attempt(i, now),
                _age(i.age),
                _one_line(i.message_id) or '-',
                _one_line(i.subject) or '-',
                _one_line(', '.join(i.recipients)) or '-',
                _one_line(i.last_error),
            )
            for i in infos
        ]
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            print('  '.join(cells).rstrip(), file=self.out)
        fault = queue.read_fault()
        if fault:
            print(self._fault_line(fault, now), file=self.out)
        return 0

    def cmd_show(self, args: argparse.Namespace) -> int:
        queue = self._queue(args)
        info, data = queue.read(args.ids[0])
        if args.raw:
            self.out.flush()
            self.out.buffer.write(data)
            self.out.buffer.flush()
            return 0
        headers = _headers(data)
        if args.json:
            record = {
                'id': info.id,
                'state': info.state,
                'message_id': info.message_id,
                'subject': info.subject,
                'sender': info.sender,
                'recipients': list(info.recipients),
                'queued_at': info.queued_at,
                'age': info.age,
                'attempts': info.attempts,
                'last_error': info.last_error,
                'due': info.due,
                'headers': headers,
                'size': len(data),
            }
            print(json.dumps(record), file=self.out)
            return 0
        now = queue.clock()
        queued = info.queued_at if info.queued_at is not None else now - info.age
        lines = [
            ('id', _one_line(info.id)),
            ('state', info.state),
            ('message-id', _one_line(info.message_id)),
            ('subject', _one_line(info.subject)),
            ('from', _one_line(info.sender)),
            ('to', _one_line(', '.join(info.recipients))),
            ('queued at', f'{_when(queued)} ({_age(now - queued)} ago)'),
            ('attempts', str(info.attempts)),
            ('last error', _one_line(info.last_error) or '-'),
            ('next attempt', _next_attempt(info, now)),
            ('size', f'{len(data)} bytes'),
        ]
        for name, value in lines:
            print(f'{name + ":":<14}{value}'.rstrip(), file=self.out)
        print('\nheaders:', file=self.out)
        for name, value in headers:
            print(f'  {_one_line(name)}: {_one_line(value)}', file=self.out)
        return 0

    def cmd_flush(self, args: argparse.Namespace) -> int:
        count = self._queue(args).flush()
        return self._done(args, f'{count} deferred message(s) due now', flushed=count)

    def cmd_retry(self, args: argparse.Namespace) -> int:
        queue = self._queue(args)
        count = queue.retry(None if args.all else args.ids)
        return self._done(args, f'{count} message(s) queued again', retried=count)

    def cmd_hold(self, args: argparse.Namespace) -> int:
        count = self._queue(args).hold(args.ids)
        return self._done(args, f'{count} message(s) held', held=count)

    def cmd_release(self, args: argparse.Namespace) -> int:
        count = self._queue(args).release(args.ids)
        return self._done(args, f'{count} message(s) released', released=count)

    def cmd_initdb(self, args: argparse.Namespace) -> int:
        self._check_file(args.config)
        raw = self.get_settings(args.config, options=args.vars)
        settings = parse_settings(raw, prefix=settings_prefix(raw))
        if not settings.queue_url:
            name = os.path.basename(args.config.split('#', 1)[0])
            raise CommandError(f'{settings_prefix(raw)}queue_url is not set in {name}')
        from .queue.outbox import OutboxQueue

        queue = OutboxQueue(settings.queue_url, timeout=settings.timeout)
        try:
            queue.create()
        finally:
            queue.close()
        print(f'the outbox tables are ready in {queue.name}', file=self.out)
        return 0

    #: What ``catch`` runs while it serves, instead of waiting for SIGINT or
    #: SIGTERM (a seam for tests).
    catch_until: Any = None

    def cmd_catch(self, args: argparse.Namespace) -> int:
        import importlib.util

        needed = ('aiosmtpd', 'waitress')
        missing = [name for name in needed if not importlib.util.find_spec(name)]
        if missing:
            raise CommandError(
                f'catch needs {" and ".join(missing)}: '
                "pip install 'pyramid_txmail[catcher]'"
            )
        from .catcher import Catcher, CatcherError, stop_signals

        try:
            catcher = Catcher(
                args.dir,
                host=args.host,
                smtp_port=args.smtp_port,
                http_port=args.http_port,
                defer=args.defer,
                reject=args.reject,
                allow_remote=args.allow_remote,
                previews=args.previews,
            ).start()
        except CatcherError as exc:
            raise CommandError(f'catch: {exc}') from None
        try:
            with stop_signals() as stop:
                print(
                    f'catching mail: SMTP on {args.host}:{catcher.smtp_port}, '
                    f'web UI on {catcher.url}\n'
                    f'messages in {catcher.folder}'
                    + ''.join(f'\n{args.host} answers 451 to {p}' for p in args.defer)
                    + ''.join(f'\n{args.host} answers 550 to {p}' for p in args.reject)
                    + '\nCtrl-C stops',
                    file=self.out,
                    flush=True,
                )
                (self.catch_until or stop.wait)()
        finally:
            catcher.stop()
        return 0

    def cmd_purge(self, args: argparse.Namespace) -> int:
        queue = self._queue(args)
        count = queue.purge(failed=True) if args.failed else queue.purge(args.ids)
        return self._done(args, f'{count} message(s) deleted', deleted=count)


def _headers(data: bytes) -> list[tuple[str, str]]:
    """The message's header fields, unfolded, RFC 2047 words decoded."""
    policy = email.policy.default
    parsed = BytesParser(policy=policy).parsebytes(data, headersonly=True)
    fields = []
    for name, raw in parsed.raw_items():
        try:
            value = str(policy.header_fetch_parse(name, raw))
        except Exception:  # the stdlib's address parser fails on some garbage
            value = re.sub(r'\r?\n(?=[ \t])', '', raw).strip()
        fields.append((name, value))
    return fields


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pyramid-txmail`` console script."""
    return Command().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
