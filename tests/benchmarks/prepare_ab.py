"""CPU time of ``prepare()`` per message, a git revision against the work tree.

``python tests/benchmarks/prepare_ab.py REV [--rounds N]`` loads
``pyramid_txmail/message.py`` (with ``exceptions.py``, all it imports) as of
``REV`` and as in the work tree into two throwaway packages, and times
``prepare()`` of three messages in both, in alternating rounds of one
process, so a busy machine slows both alike. It prints the microseconds of
CPU time per ``prepare()``: the median of the rounds, their spread, and what
the work tree saves.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = ('message.py', 'exceptions.py')


def load(base: str, name: str, rev: str | None) -> ModuleType:
    """``message.py`` as of ``rev`` (None: the work tree), as ``name.message``."""
    package = os.path.join(base, name)
    os.mkdir(package)
    open(os.path.join(package, '__init__.py'), 'w').close()
    for module in MODULES:
        path = f'pyramid_txmail/{module}'
        if rev is None:
            with open(os.path.join(ROOT, path)) as f:
                source = f.read()
        else:
            source = subprocess.run(
                ['git', '-C', ROOT, 'show', f'{rev}:{path}'],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        with open(os.path.join(package, module), 'w') as f:
            f.write(source)
    return importlib.import_module(f'{name}.message')


def kinds(m: ModuleType) -> dict[str, Callable[[], object]]:
    """The messages timed, made with module ``m``'s classes."""

    def bench() -> object:
        # bench.message(): text and HTML, one recipient, about 2 KB.
        return m.Message(
            subject='Your order has shipped',
            sender='shop@example.com',
            recipients=['customer@example.com'],
            body='Hello,\n\n' + 'Your order is on its way. ' * 30,
            html='<p>Hello,</p><p>' + 'Your order is on its way. ' * 30 + '</p>',
        )

    def text() -> object:
        msg = bench()
        msg.html = None
        return msg

    def attached() -> object:
        msg = bench()
        pdf = bytes(range(256)) * 8
        msg.attach(m.Attachment('invoice.pdf', 'application/pdf', pdf))
        return msg

    return {
        'text + html (bench)': bench,
        'text only': text,
        'text + html + 2 KB PDF': attached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('rev', help='the git revision to compare with')
    parser.add_argument('--rounds', type=int, default=21)
    parser.add_argument('--messages', type=int, default=300, help='per round')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        sys.path.insert(0, base)
        versions = {
            args.rev: load(base, 'ab_before', args.rev),
            'work tree': load(base, 'ab_after', None),
        }
        names = list(kinds(versions[args.rev]))
        for name in names:
            times: dict[str, list[float]] = {v: [] for v in versions}
            for _ in range(args.rounds + 1):  # the first round warms up
                for version, m in versions.items():
                    make = kinds(m)[name]
                    msgs = [make() for _ in range(args.messages)]
                    start = time.process_time()
                    for msg in msgs:
                        m.prepare(msg, message_id_domain='example.com')
                    spent = time.process_time() - start
                    times[version].append(spent / args.messages * 1e6)
            medians = {}
            print(name)
            for version, runs in times.items():
                runs = sorted(runs[1:])
                medians[version] = statistics.median(runs)
                q1, _, q3 = statistics.quantiles(runs, n=4)
                print(
                    f'  {version:>10}: {medians[version]:5.0f} µs  (min {runs[0]:.0f}, '
                    f'quartiles {q1:.0f}-{q3:.0f}, max {runs[-1]:.0f})'
                )
            saved = medians[args.rev] - medians['work tree']
            print(f'  saved {saved:.0f} µs ({saved / medians[args.rev]:.0%})')


if __name__ == '__main__':
    main()
