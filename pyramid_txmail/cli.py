"""``pyramid-txmail``: run and inspect the mail queue of an application.

Reads the application's .ini file through plaster (``CONFIG`` may name a
section, ``development.ini#main``). ``process`` loads the application, so its
``MailSent``/``MailFailed`` subscribers receive the processor's events; the
inspection commands need only the settings and never create the queue.
Exit status: 0 success, 2 bad usage, 1 any other error, with a one-line
message naming the problem (never a setting's value, which may be a
password).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from pyramid import paster

from . import suppress_processor
from .events import Notifier
from .exceptions import QueueError
from .legacy import scan as scan_legacy
from .processor import STOP_TIMEOUT, QueueProcessor
from .queue import MailQueue
from .settings import MailSettings, parse_settings, settings_prefix

__all__ = ['main']


class CommandError(Exception):
    """A failure to report in one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f'{self.prog}: {message}')


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

        def command(name: str, help: str) -> argparse.ArgumentParser:
            sub = commands.add_parser(name, help=help)
            sub.add_argument('config', metavar='CONFIG', help='the .ini file')
            return sub

        command('process', 'run the queue processor').add_argument(
            '--once', action='store_true', help='drain what is due, then exit'
        )
        command('status', 'count messages by state').add_argument(
            '--json', action='store_true'
        )
        listing = command('list', 'one line per message')
        listing.add_argument('--failed', action='store_true')
        listing.add_argument('--json', action='store_true')
        retry = command('retry', 'put failed messages back, due now')
        retry.add_argument('ids', nargs='*', metavar='ID')
        retry.add_argument('--all', action='store_true')
        purge = command('purge', 'delete messages')
        purge.add_argument('ids', nargs='*', metavar='ID')
        purge.add_argument('--failed', action='store_true')
        catch = commands.add_parser(
            'catch', help='a development mail catcher: SMTP and a web UI'
        )
        catch.add_argument('--smtp-port', type=int, default=8025, metavar='P')
        catch.add_argument('--http-port', type=int, default=8026, metavar='P')
        catch.add_argument('--host', default='127.0.0.1', help='loopback only')
        catch.add_argument(
            '--allow-remote', action='store_true', help='allow a non-loopback --host'
        )
        catch.add_argument('--dir', help='keep messages here (default: temporary)')
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
            flag = {'retry': 'all', 'purge': 'failed'}.get(args.command)
            if flag and bool(args.ids) == bool(getattr(args, flag)):
                raise _UsageError(
                    f'pyramid-txmail {args.command}: give IDs or --{flag}'
                )
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
    def _check_file(self, config_uri: str) -> None:
        path = config_uri.split('#', 1)[0]
        if not os.path.isfile(path):
            raise CommandError(f'config file not found: {path}')

    def _mail_settings(self, config_uri: str, raw: Mapping[str, Any]) -> MailSettings:
        prefix = settings_prefix(raw)
        settings = parse_settings(raw, prefix=prefix)
        if not settings.queue_path:
            name = os.path.basename(config_uri.split('#', 1)[0])
            raise CommandError(f'{prefix}queue_path is not set in {name}')
        return settings

    def _queue(self, config_uri: str) -> MailQueue:
        """The application's queue, as it is: never created here (as root it
        would be root's, and the application could not use it)."""
        self._check_file(config_uri)
        settings = self._mail_settings(config_uri, self.get_settings(config_uri))
        # _mail_settings refused a missing queue_path.
        return MailQueue(settings.queue_path, create=False)  # type: ignore[arg-type]

    # -- commands
    def cmd_process(self, args: argparse.Namespace) -> int:
        self._check_file(args.config)
        # The .ini's logging sections, or a basic stderr handler without them.
        self.setup_logging(args.config)
        with suppress_processor():
            env = self.bootstrap(args.config)
        try:
            registry = env['registry']
            settings = self._mail_settings(args.config, registry.settings)
            processor = QueueProcessor(
                MailQueue(settings.queue_path),  # type: ignore[arg-type]  # checked above
                settings,
                notify=Notifier(registry.notify),
            )
            if args.once:
                result = processor.run_once()
                print(
                    f'sent {result.sent}, deferred {result.deferred}, '
                    f'failed {result.failed}, kept {result.released}',
                    file=self.out,
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
        queue = self._queue(args.config)
        counts = {**queue.counts(), 'unreadable': queue.unreadable()}
        # repoze.sendmail's files, waiting or rejected: the processor adopts them.
        counts['legacy'] = len(scan_legacy(queue, failed=None))
        if args.json:
            print(json.dumps(counts), file=self.out)
        else:
            for state in ('queued', 'deferred', 'sending', 'failed', 'unreadable'):
                print(f'{state:<10} {counts[state]}', file=self.out)
            if counts['legacy']:
                print(f'{"legacy":<10} {counts["legacy"]}', file=self.out)
        return 0

    def cmd_list(self, args: argparse.Namespace) -> int:
        queue = self._queue(args.config)
        infos = scan_legacy(queue, failed=args.failed)
        infos += queue.list(failed=args.failed)
        if args.json:
            rows = [
                {
                    'id': i.id,
                    'state': i.state,
                    'age': i.age,
                    'attempts': i.attempts,
                    'recipients': list(i.recipients),
                    'last_error': i.last_error,
                    'due': i.due,
                }
                for i in infos
            ]
            print(json.dumps(rows), file=self.out)
            return 0
        for i in infos:
            # A repoze.sendmail file's name may hold anything; one line each,
            # and no control characters reach the terminal.
            shown = (
                i.id if i.id.isprintable() else i.id.encode('unicode_escape').decode()
            )
            print(
                f'{shown}  {i.state:<8} {_age(i.age):>4} {i.attempts:>3}  '
                f'{", ".join(i.recipients)}  {i.last_error or ""}'.rstrip(),
                file=self.out,
            )
        return 0

    def cmd_retry(self, args: argparse.Namespace) -> int:
        count = self._queue(args.config).retry(None if args.all else args.ids)
        print(f'{count} message(s) queued again', file=self.out)
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
        from .catcher import Catcher, CatcherError, wait_for_signal

        try:
            catcher = Catcher(
                args.dir,
                host=args.host,
                smtp_port=args.smtp_port,
                http_port=args.http_port,
                defer=args.defer,
                reject=args.reject,
                allow_remote=args.allow_remote,
            ).start()
        except CatcherError as exc:
            raise CommandError(f'catch: {exc}') from None
        try:
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
            (self.catch_until or wait_for_signal)()
        finally:
            catcher.stop()
        return 0

    def cmd_purge(self, args: argparse.Namespace) -> int:
        queue = self._queue(args.config)
        count = queue.purge(failed=True) if args.failed else queue.purge(args.ids)
        print(f'{count} message(s) deleted', file=self.out)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pyramid-txmail`` console script."""
    return Command().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
