"""`make demo`: the mail catcher and the demo app, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from txmail_demo import catcher  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--http-port', type=int, default=6543)
    parser.add_argument('--smtp-port', type=int, default=8025)
    parser.add_argument('--var-dir', default=os.path.join(HERE, 'var'))
    args = parser.parse_args()
    var_dir = os.path.abspath(args.var_dir)
    caught = catcher.start(args.smtp_port, os.path.join(var_dir, 'caught'))
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
            f'smtp_port={args.smtp_port}',
            f'var_dir={var_dir}',
        ],
        env=env,
        # A shell's background job ignores SIGINT; pserve needs it to stop
        # cleanly (waitress and the processor thread finish their work).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    print(
        f'\n  pyramid_txmail demo: open http://127.0.0.1:{args.http_port}/'
        f'\n  (mail is caught on 127.0.0.1:{args.smtp_port}; Ctrl-C stops)\n',
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: app.send_signal(signal.SIGINT))
    try:
        return app.wait()
    except KeyboardInterrupt:
        app.send_signal(signal.SIGINT)
        return app.wait(timeout=30)
    finally:
        caught.stop()


if __name__ == '__main__':
    sys.exit(main())
