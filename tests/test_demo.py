"""The demo, started as a user would (demo/run.py), over real HTTP and Chromium."""

from __future__ import annotations

import contextlib
import email
import email.policy
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests import free_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = '/usr/bin/chromium'


def run_demo(*ports, var_dir):
    http_port, smtp_port, catcher_port = ports
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, 'demo', 'run.py'),
            f'--http-port={http_port}',
            f'--smtp-port={smtp_port}',
            f'--catcher-port={catcher_port}',
            f'--var-dir={var_dir}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Demo:
    def __init__(self, var_dir):
        self.port = free_port()
        self.var_dir = str(var_dir)
        self.url = f'http://127.0.0.1:{self.port}'
        catcher_port = free_port()
        self.catcher_url = f'http://127.0.0.1:{catcher_port}'
        self.proc = run_demo(self.port, free_port(), catcher_port, var_dir=var_dir)
        # The banner comes once the app answers.
        self.banner = ''.join(self.proc.stdout.readline() for _ in range(4))
        wait_until(self._up, timeout=20)

    def _up(self):
        try:
            return self.get('/')[0] == 200
        except OSError:
            return False

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path, **fields):
        return self._open(path, urllib.parse.urlencode(fields).encode())

    def _open(self, path, data):
        try:
            with urllib.request.urlopen(self.url + path, data, timeout=10) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def caught(self):
        """The messages the catcher kept, oldest first, read from its folder."""
        folder = os.path.join(self.var_dir, 'caught')
        names = sorted(n for n in os.listdir(folder) if n.endswith('.eml'))
        messages = []
        for name in names:
            with open(os.path.join(folder, name), 'rb') as f:
                messages.append(
                    email.message_from_binary_file(f, policy=email.policy.default)
                )
        return messages

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:  # pragma: no cover - only if stuck
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


@pytest.fixture
def demo(tmp_path):
    running = Demo(tmp_path / 'var')
    try:
        yield running
    finally:
        running.stop()


def test_demo_prints_its_urls(demo):
    assert demo.url + '/' in demo.banner
    assert demo.catcher_url + '/' in demo.banner


def test_demo_catcher_links_to_the_demos_mail_previews(demo):
    with urllib.request.urlopen(demo.catcher_url + '/', timeout=10) as res:
        page = res.read().decode()
    assert f'<a id="previews" href="{demo.url}/_mail/">' in page


def test_demo_signup_sends_welcome_and_failed_signup_sends_nothing(demo):
    status, body = demo.post('/signup', name='Ann', email='ann@example.com', fail='on')
    assert status == 500 and 'no mail was sent' in body
    status, _ = demo.post('/signup', name='Bob', email='bob@example.com')
    assert status == 200  # after the redirect
    (msg,) = wait_until(demo.caught, timeout=20)
    # Ann's message, had it been committed, would be caught or still queued.
    _, queue = demo.get('/queue')
    assert '<td id="queued">0</td>' in queue and '<td id="sending">0</td>' in queue
    assert len(demo.caught()) == 1
    assert msg['Subject'] == 'Welcome, Bob!' and msg['To'] == 'bob@example.com'
    assert 'Hello Bob' in msg.get_body(('plain',)).get_content()
    assert '<h2>Hello Bob</h2>' in msg.get_body(('html',)).get_content()
    (attachment,) = msg.iter_attachments()
    assert attachment.get_filename() == 'welcome.txt'
    with urllib.request.urlopen(demo.catcher_url + '/api/messages') as res:
        listing = json.load(res)['messages']
    assert [m['subject'] for m in listing] == ['Welcome, Bob!']


def test_demo_queue_page_shows_counts(demo):
    status, body = demo.get('/queue')
    assert status == 200
    for state in ('queued', 'deferred', 'sending', 'failed'):
        assert f'<td id="{state}">0</td>' in body
    status, _ = demo.post('/queue/retry')
    assert status == 200


def test_demo_defer_and_reject_addresses_show_on_the_queue_page(demo):
    demo.post('/signup', name='Dee', email='defer@example.com')
    demo.post('/signup', name='Rex', email='reject@example.com')

    def both_seen():
        _, body = demo.get('/queue')
        failed = body.split('id="failed-list"')[1]
        deferred = body.split('id="deferred-list"')[1].split('<h2>')[0]
        return (
            'reject@example.com' in failed
            and '550' in failed
            and 'defer@example.com' in deferred
            and '451' in deferred
            # The page counts, then lists: a message moving in between is
            # listed but not counted yet.
            and '<td id="failed">1</td>' in body
            and body
        )

    body = wait_until(both_seen, timeout=20)
    assert demo.caught() == []

    # The command the page shows works as shown, from the repository.
    cli = html.unescape(body.split('<code id="cli">')[1].split('</code>')[0])
    env_var, script, *argv = shlex.split(cli)
    name, _, value = env_var.partition('=')
    assert script == '.venv/bin/pyramid-txmail'
    # This test's own environment's script, wherever its venv is.
    script = os.path.join(os.path.dirname(sys.executable), 'pyramid-txmail')
    listed = subprocess.run(
        [script, *argv],
        cwd=ROOT,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert 'defer@example.com' in listed.stdout
    assert 'reject@example.com' in listed.stdout

    # "Send deferred messages now": tried again at once (and deferred
    # again by the catcher), not after the backoff.
    def attempts():
        _, body = demo.get('/queue')
        deferred = body.split('id="deferred-list"')[1].split('<h2>')[0]
        return [int(n) for n in re.findall(r'<td>(\d+)</td>', deferred)]

    assert attempts() == [1]
    status, _ = demo.post('/queue/flush')
    assert status == 200
    assert wait_until(lambda: attempts() == [2], timeout=20)


@pytest.mark.parametrize('which', [0, 1, 2])
def test_demo_names_a_port_in_use_with_its_make_variable(tmp_path, which):
    ports = [free_port(), free_port(), free_port()]
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', ports[which]))
        taken.listen()
        ports[which] = taken.getsockname()[1]
        proc = run_demo(*ports, var_dir=tmp_path)
        output, _ = proc.communicate(timeout=60)
    variable = ['HTTP_PORT', 'SMTP_PORT', 'CATCHER_PORT'][which]
    assert proc.returncode == 1
    assert f'port {ports[which]} on 127.0.0.1 is already in use' in output
    assert f'make demo {variable}=' in output
    assert 'open http' not in output  # nobody else's URL


def chromium_or_skip():
    if os.path.exists(CHROMIUM) and shutil.which('chromium'):
        return
    if os.environ.get('CI'):
        pytest.fail(f'{CHROMIUM} is missing: `make test` installs Debian chromium')
    pytest.skip(f'{CHROMIUM} not installed (make test installs it)')


@contextlib.contextmanager
def chromium():
    """A headless Debian Chromium through Playwright (skips without one)."""
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                '--headless',
                '--no-sandbox',
                '--disable-gpu',
                '--disable-quic',
                '--no-first-run',
                '--disable-background-networking',
                '--disable-component-update',
                '--disable-sync',
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name):
    """Save a PNG for the docs when PYRAMID_TXMAIL_SCREENSHOTS names a folder
    (``docs/_static``); tests never write into the work tree otherwise."""
    folder = os.environ.get('PYRAMID_TXMAIL_SCREENSHOTS')
    if folder:
        page.screenshot(path=os.path.join(folder, name))


def test_in_a_browser_sign_up_then_read_the_caught_message(demo):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(demo.url + '/')
        page.fill('input[name=name]', 'Zoë')
        page.fill('input[name=email]', 'zoe@example.com')
        page.click('button[type=submit]')
        assert 'Welcome mail sent' in page.inner_text('#note')
        wait_until(demo.caught, timeout=20)
        page.click('#caught')  # the shipped catcher's web UI
        page.click('text=Welcome, Zoë!')
        frame = page.frame_locator('#html')
        assert frame.locator('h2').inner_text() == 'Hello Zoë'
        assert 'thanks for signing up' in page.inner_text('#text')
        assert page.inner_text('#attachments tbody a') == 'welcome.txt'


def test_in_a_browser_the_preview_shows_what_the_caught_mail_shows(demo):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(demo.url + '/')
        page.click('#previews')
        page.click('text=welcome')
        preview = page.frame_locator('#html')
        shown = preview.locator('body').inner_text()
        button = preview.locator('a.button')
        assert button.inner_text() == 'Open the demo'
        link = button.get_attribute('href')
        styled = button.get_attribute('style')
        assert 'background' in (styled or '')  # the layout's CSS, inlined
        # The preview's sample values, signed up for real.
        page.goto(demo.url + '/')
        page.fill('input[name=name]', 'Ada')
        page.fill('input[name=email]', 'ada@example.com')
        page.click('button[type=submit]')
        wait_until(demo.caught, timeout=20)
        page.click('#caught')
        page.click('text=Welcome, Ada!')
        caught = page.frame_locator('#html')
        assert caught.locator('body').inner_text() == shown
        assert caught.locator('a.button').get_attribute('href') == link
        assert caught.locator('a.button').get_attribute('style') == styled
        assert 'Open the demo (' + link + ')' in page.inner_text('#text')
