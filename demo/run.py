"""`make demo`: the shipped mail catcher and the demo app, until Ctrl-C.

The catcher is what ``pyramid-txmail catch --defer 'defer@*' --reject
'reject@*'`` runs: a sign-up to ``defer@...`` is deferred (451) and
retried, one to ``reject@...`` fails (550), as with a real relay.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from pyramid_txmail.catcher import Catcher, CatcherError

HERE = os.path.dirname(os.path.abspath(__file__))


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(('127.0.0.1', port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def wait_until_up(url: str, app: subprocess.Popen, timeout: float = 60) -> bool:
    """Whether the app answers at ``url`` (False if it exited first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and app.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--http-port', type=int, default=6543)
    parser.add_argument('--smtp-port', type=int, default=8025)
    parser.add_argument('--catcher-port', type=int, default=8026)
    parser.add_argument('--var-dir', default=os.path.join(HERE, 'var'))
    args = parser.parse_args()
    for port, variable in (
        (args.http_port, 'HTTP_PORT'),
        (args.smtp_port, 'SMTP_PORT'),
        (args.catcher_port, 'CATCHER_PORT'),
    ):
        if port_in_use(port):
            print(
                f'demo: port {port} on 127.0.0.1 is already in use (another '
                f'program, or a demo still running); choose another: '
                f'make demo {variable}=<port>',
                file=sys.stderr,
            )
            return 1
    var_dir = os.path.abspath(args.var_dir)
    try:
        catcher = Catcher(
            os.path.join(var_dir, 'caught'),
            smtp_port=args.smtp_port,
            http_port=args.catcher_port,
            defer=['defer@*'],
            reject=['reject@*'],
            previews=f'http://127.0.0.1:{args.http_port}/_mail/',
        ).start()
    except CatcherError as exc:  # taken between the check and now
        print(f'demo: {exc}', file=sys.stderr)
        return 1
    try:
        return run_app(args, var_dir, catcher)
    finally:
        catcher.stop()


def run_app(args: argparse.Namespace, var_dir: str, catcher: Catcher) -> int:
    env = {
        **os.environ,
        'PYTHONPATH': HERE + os.pathsep + os.environ.get('PYTHONPATH', ''),
    }
    app = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'pyramid.scripts.pserve',
            os.path.join(HERE, 'development.ini'),
            f'http_port={args.http_port}',
            f'smtp_port={catcher.smtp_port}',
            f'catcher_url={catcher.url}',
            f'var_dir={var_dir}',
        ],
        env=env,
        # A shell's background job ignores SIGINT; pserve needs it to stop
        # cleanly (waitress and the processor thread finish their work).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    signal.signal(signal.SIGTERM, lambda *_: app.send_signal(signal.SIGINT))
    url = f'http://127.0.0.1:{args.http_port}/'
    try:
        if not wait_until_up(url, app):
            app.send_signal(signal.SIGINT)
            code = app.wait(timeout=30)
            print(f'demo: the app did not start (exit {code})', file=sys.stderr)
            return 1
        print(
            f'\n  pyramid_txmail demo: open {url}'
            f'\n  caught mail: {catcher.url} (SMTP on 127.0.0.1:{catcher.smtp_port};'
            ' defer@... gets 451, reject@... 550)\n  Ctrl-C stops\n',
            flush=True,
        )
        return app.wait()
    except KeyboardInterrupt:
        app.send_signal(signal.SIGINT)
        return app.wait(timeout=30)


if __name__ == '__main__':
    sys.exit(main())
