"""Migrating from pyramid_mailer is renaming the package.

``tests/compat/shop`` is a small application written the way
pyramid_mailer's documentation teaches: views using ``request.mailer`` and
``get_mailer``, a cron script using ``Mailer.from_settings`` and
``transaction.manager``, unit tests with ``pyramid_mailer.testing``,
``DummyRequest`` and ``mailer.outbox``, functional tests sending through a
real SMTP relay on 127.0.0.1, and a ``development.ini`` with ``mail.*`` keys.
Its tests pass against pyramid_mailer 0.15.1; with ``pyramid_mailer``
replaced by ``pyramid_txmail`` in every file, and nothing else changed, the
same tests pass against pyramid_txmail.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHOP = Path(__file__).parent / 'compat' / 'shop'
IGNORED = shutil.ignore_patterns('__pycache__', '.pytest_cache')


def run_tests(python: str, app: Path) -> tuple[int, list[str], str]:
    """Run ``app``'s own test suite with ``python``.

    Returns the exit status, the ids of the tests that passed, and the output.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('PYTHONPATH', 'PYTEST_ADDOPTS') and not k.startswith('COV_')
    }
    env['PYTHONDONTWRITEBYTECODE'] = '1'
    result = subprocess.run(
        [python, '-m', 'pytest', '-p', 'no:cacheprovider', '-q', '-rA'],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    passed = re.findall(r'^PASSED (\S+)', result.stdout, re.MULTILINE)
    return result.returncode, sorted(passed), result.stdout + result.stderr


def rename(source: Path, target: Path) -> Path:
    """A copy of ``source`` with ``pyramid_mailer`` replaced in every file."""
    shutil.copytree(source, target, ignore=IGNORED)
    for path in sorted(target.rglob('*')):
        if path.is_file():
            text = path.read_text()
            path.write_text(text.replace('pyramid_mailer', 'pyramid_txmail'))
    return target


def files(root: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(root)): path.read_text().splitlines()
        for path in sorted(root.rglob('*'))
        if path.is_file() and not {'__pycache__', '.pytest_cache'} & set(path.parts)
    }


@pytest.fixture(scope='module')
def renamed_shop(tmp_path_factory) -> Path:
    return rename(SHOP, tmp_path_factory.mktemp('renamed') / 'shop')


@pytest.fixture(scope='module')
def on_pyramid_mailer(pyramid_mailer_python) -> tuple[int, list[str], str]:
    """The shop's tests, run in place against pyramid_mailer 0.15.1."""
    return run_tests(pyramid_mailer_python, SHOP)


def test_the_diff_between_the_two_copies_is_only_the_rename(renamed_shop):
    before, after = files(SHOP), files(renamed_shop)
    assert sorted(before) == sorted(after)
    changed = 0
    for name in before:
        diff = list(difflib.unified_diff(before[name], after[name], lineterm='', n=0))
        removed = [line[1:] for line in diff[2:] if line.startswith('-')]
        added = [line[1:] for line in diff[2:] if line.startswith('+')]
        assert [r.replace('pyramid_mailer', 'pyramid_txmail') for r in removed] == (
            added
        ), '\n'.join(diff)
        assert not any('pyramid_mailer' in line for line in after[name])
        changed += len(added)
    assert changed >= 10


def test_the_shop_passes_its_tests_on_pyramid_mailer(on_pyramid_mailer):
    status, passed, output = on_pyramid_mailer
    assert status == 0, output
    assert len(passed) >= 13


def test_the_renamed_shop_passes_the_same_tests_on_pyramid_txmail(
    on_pyramid_mailer, renamed_shop
):
    # Our environment has no pyramid_mailer to fall back on.
    assert subprocess.run(
        [sys.executable, '-c', 'import pyramid_mailer'], capture_output=True
    ).returncode
    status, passed, output = run_tests(sys.executable, renamed_shop)
    assert status == 0, output
    assert passed == on_pyramid_mailer[1]
