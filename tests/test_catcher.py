"""The development mail catcher, over real SMTP and HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage

import pytest
import transaction

from pyramid_txmail.catcher import Catcher, CatcherError, MailStore
from pyramid_txmail.cli import Command
from pyramid_txmail.events import MailFailed, MailSent
from pyramid_txmail.mailer import Mailer
from pyramid_txmail.processor import QueueProcessor
from pyramid_txmail.queue import MailQueue

HOSTILE = '<script>alert("x")</script> \'quoted\' <b>&amp;'
# What a script in the page or the message would do, were it allowed to run.
EVIL_HTML = (
    '<p id="p">Hello</p><script>fetch("/api/messages",{method:"DELETE"})'
    '</script><img src="x" onerror="fetch(\'/api/messages\',{method:\'DELETE\'})">'
)


@pytest.fixture
def catcher(tmp_path):
    running = Catcher(
        str(tmp_path / 'caught'),
        smtp_port=0,
        http_port=0,
        defer=['defer@*'],
        reject=['reject@*', 'NoSuch@Example.com'],
    ).start()
    try:
        yield running
    finally:
        running.stop()


def message(
    subject: str = 'Hello', to: str = 'ann@example.com', html: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg['From'] = f'"{HOSTILE}" <app@example.com>'
    msg['To'] = to
    msg['Subject'] = subject
    msg.set_content('Plain text body\nwith two lines.\n')
    if html is not None:
        msg.add_alternative(html, subtype='html')
    msg.add_attachment(
        b'%PDF-1.4 fake',
        maintype='application',
        subtype='pdf',
        filename='placeholder.pdf',
    )
    return msg


def smtp_send(catcher, msg, to=None):
    """Send ``msg`` with a hostile attachment name (quotes, angle brackets,
    an encoded CRLF), which the email package will not write itself."""
    data = msg.as_bytes(policy=msg.policy.clone(linesep='\r\n')).replace(
        b'filename="placeholder.pdf"',
        b"filename*=utf-8''report%20%22Q1%22%20%3Cfinal%3E%0D%0A.pdf",
    )
    with smtplib.SMTP('127.0.0.1', catcher.smtp_port, timeout=10) as smtp:
        return smtp.sendmail('app@example.com', to or [msg['To']], data)


def http(catcher, path, method='GET', data=None, headers=None):
    request = urllib.request.Request(
        catcher.url.rstrip('/') + path, data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def api(catcher, path, method='GET'):
    status, _, body = http(catcher, path, method)
    assert status == 200, body
    return json.loads(body)


def test_a_message_with_an_attachment_is_kept_and_shown(catcher):
    smtp_send(catcher, message(HOSTILE, html='<p>Hi <i>Ann</i></p>'))
    [summary] = api(catcher, '/api/messages')['messages']
    assert summary['subject'] == HOSTILE
    assert summary['rcpt_tos'] == ['ann@example.com']
    assert summary['attachments'] == 1
    detail = api(catcher, f'/api/messages/{summary["id"]}')
    assert detail['text'] == 'Plain text body\nwith two lines.\n'
    assert detail['html'] == '<p>Hi <i>Ann</i></p>\n'
    [part] = detail['attachments']
    assert part['content_type'] == 'application/pdf'
    assert part['size'] == len(b'%PDF-1.4 fake')
    assert ('Subject', HOSTILE) in [tuple(h) for h in detail['headers']]

    status, headers, body = http(catcher, f'/messages/{summary["id"]}/attachments/0')
    assert status == 200 and body == b'%PDF-1.4 fake'
    assert headers['Content-Type'] == 'application/pdf'
    disposition = headers['Content-Disposition']
    assert disposition.startswith('attachment; filename="report _Q1_ _final_')
    assert '\r' not in disposition and '\n' not in disposition
    assert "filename*=UTF-8''report%20%22Q1%22%20%3Cfinal%3E" in disposition

    status, headers, raw = http(catcher, f'/messages/{summary["id"]}/raw')
    assert status == 200 and headers['Content-Type'].startswith('text/plain')
    assert b'Subject: <script>alert("x")</script>' in raw
    status, headers, _ = http(catcher, f'/messages/{summary["id"]}/raw?download=1')
    assert headers['Content-Type'] == 'message/rfc822'
    assert headers['Content-Disposition'].startswith('attachment;')


def test_every_page_escapes_what_the_sender_wrote(catcher):
    smtp_send(catcher, message(HOSTILE, html=EVIL_HTML))
    [summary] = api(catcher, '/api/messages')['messages']
    for path in ('/', f'/messages/{summary["id"]}'):
        status, headers, body = http(catcher, path)
        page = body.decode()
        assert status == 200
        assert '<script>alert' not in page and '<b>&amp;' not in page
        assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in page
        assert '&#x27;quoted&#x27; &lt;b&gt;&amp;amp;' in page
        assert "script-src 'self'" in headers['Content-Security-Policy']
        assert headers['X-Content-Type-Options'] == 'nosniff'
    assert 'report &quot;Q1&quot; &lt;final&gt;' in page
    assert f'<iframe id="html" sandbox src="/messages/{summary["id"]}/html"' in page
    assert 'fetch(' not in page.split('<pre id="raw">')[0]

    status, headers, body = http(catcher, f'/messages/{summary["id"]}/html')
    assert body.decode().startswith('<p id="p">Hello</p><script>')
    csp = headers['Content-Security-Policy']
    assert csp.startswith('sandbox;') and "default-src 'none'" in csp


def test_a_message_without_html_or_attachments(catcher):
    msg = EmailMessage()
    msg['From'] = 'app@example.com'
    msg['To'] = 'ann@example.com'
    msg.set_content('only text')
    smtp_send(catcher, msg)
    [summary] = api(catcher, '/api/messages')['messages']
    assert summary['subject'] == '' and summary['attachments'] == 0
    _, _, body = http(catcher, f'/messages/{summary["id"]}')
    assert 'No HTML part.' in body.decode() and '(no subject)' in body.decode()
    status, _, _ = http(catcher, f'/messages/{summary["id"]}/attachments/0')
    assert status == 404


def test_search_matches_subject_addresses_and_text(catcher):
    smtp_send(catcher, message('Invoice 42', to='bob@example.com'))
    smtp_send(catcher, message('Welcome', to='carol@example.com'))

    def subjects(query):
        found = api(catcher, f'/api/messages?q={query}')['messages']
        return sorted(m['subject'] for m in found)

    assert subjects('invoice') == ['Invoice 42']
    assert subjects('CAROL') == ['Welcome']
    assert subjects('two+lines') == ['Invoice 42', 'Welcome']
    assert subjects('nothing-like-this') == []
    _, _, body = http(catcher, '/?q=invoice')
    assert 'Invoice 42' in body.decode() and 'Welcome' not in body.decode()


def test_delete_one_and_delete_all(catcher):
    for n in range(3):
        smtp_send(catcher, message(f'M{n}'))
    ids = [m['id'] for m in api(catcher, '/api/messages')['messages']]
    assert api(catcher, f'/api/messages/{ids[0]}', 'DELETE') == {'deleted': 1}
    assert http(catcher, f'/api/messages/{ids[0]}', 'DELETE')[0] == 404
    assert http(catcher, f'/api/messages/{ids[0]}')[0] == 404
    status, _, _ = http(catcher, f'/messages/{ids[1]}/delete', 'POST', b'')
    assert status == 200  # after the redirect to the list
    assert [m['id'] for m in api(catcher, '/api/messages')['messages']] == [ids[2]]
    smtp_send(catcher, message('M3'))
    assert api(catcher, '/api/messages', 'DELETE') == {'deleted': 2}
    smtp_send(catcher, message('M4'))
    http(catcher, '/delete-all', 'POST', b'')
    assert api(catcher, '/api/messages')['messages'] == []
    assert sorted(os.listdir(catcher.folder)) == []


def test_unknown_and_malformed_ids_are_not_found(catcher):
    for path in (
        '/messages/01234567890123456789-abcdef01',
        '/messages/..%2F..%2Fetc%2Fpasswd',
        '/api/messages/nope',
        '/messages/nope/raw',
    ):
        assert http(catcher, path)[0] == 404
    assert http(catcher, '/api/messages/nope', 'DELETE')[0] == 404


def test_defer_and_reject_patterns_answer_the_recipients(catcher):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp_send(catcher, message(), to=['defer@example.com', 'reject@example.org'])
    codes = {r: code for r, (code, _) in refused.value.recipients.items()}
    assert codes == {'defer@example.com': 451, 'reject@example.org': 550}
    # Case does not matter, and the others still get the message.
    result = smtp_send(catcher, message(), to=['nosuch@EXAMPLE.com', 'ann@example.com'])
    assert result['nosuch@EXAMPLE.com'][0] == 550
    [summary] = api(catcher, '/api/messages')['messages']
    assert summary['rcpt_tos'] == ['ann@example.com']


def test_the_real_processor_defers_and_fails_what_the_catcher_refuses(
    catcher, tmp_path
):
    mailer = Mailer.from_settings(
        {
            'mail.host': '127.0.0.1',
            'mail.port': str(catcher.smtp_port),
            'mail.queue_path': str(tmp_path / 'queue'),
            'mail.default_sender': 'app@example.com',
        }
    )
    with transaction.manager:
        for to in ('defer@example.com', 'reject@example.com', 'ann@example.com'):
            mailer.send_to_queue(message(f'For {to}', to=to))
    events = []
    queue = MailQueue(str(tmp_path / 'queue'))
    result = QueueProcessor(queue, mailer.settings, notify=events.extend).run_once()
    assert (result.sent, result.deferred, result.failed) == (1, 1, 1)
    assert queue.counts()['deferred'] == 1 and queue.counts()['failed'] == 1
    [failed] = queue.list(failed=True)
    assert '550' in failed.last_error and failed.recipients == ('reject@example.com',)
    [deferred] = [i for i in queue.list() if i.state == 'deferred']
    assert '451' in deferred.last_error
    assert sorted(type(e).__name__ for e in events) == [
        'MailFailed',
        'MailFailed',
        'MailSent',
    ]
    assert {e.permanent for e in events if isinstance(e, MailFailed)} == {True, False}
    [sent] = [e for e in events if isinstance(e, MailSent)]
    [summary] = api(catcher, '/api/messages')['messages']
    assert summary['subject'] == 'For ann@example.com'
    assert sent.message['Subject'] == 'For ann@example.com'


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        unstarted = Catcher(smtp_port=port, http_port=0)
        with pytest.raises(CatcherError, match=f'port {port} .*--smtp-port {port}'):
            unstarted.start()
        assert not os.path.exists(unstarted.folder)  # its temporary folder
        with pytest.raises(CatcherError, match=f'port {port} .*--http-port {port}'):
            Catcher(smtp_port=0, http_port=port).start()


def test_other_bind_errors_and_bad_hosts_are_named():
    # A name with spaces fails in the resolver library itself: no DNS query.
    with pytest.raises(CatcherError, match=r'cannot listen on no such host'):
        Catcher(host='no such host', allow_remote=True).start()
    # Binding to an address this machine does not have fails at once
    # (EADDRNOTAVAIL); nothing is sent anywhere.
    with pytest.raises(CatcherError, match=r'cannot listen on 192\.0\.2\.1 port 0'):
        Catcher(host='192.0.2.1', smtp_port=0, allow_remote=True).start()


def test_a_non_loopback_host_needs_allow_remote():
    with pytest.raises(CatcherError, match=r'0\.0\.0\.0 is not a loopback address'):
        Catcher(host='0.0.0.0')


def test_only_loopback_host_names_and_same_origin_posts_are_served(catcher):
    smtp_send(catcher, message())
    assert http(catcher, '/', headers={'Host': 'evil.example'})[0] == 403
    assert (
        http(catcher, '/', headers={'Host': f'localhost:{catcher.http_port}'})[0] == 200
    )
    cross = {'Origin': 'http://evil.example'}
    assert http(catcher, '/delete-all', 'POST', b'', cross)[0] == 403
    assert http(catcher, '/api/messages', 'DELETE', None, cross)[0] == 403
    assert len(api(catcher, '/api/messages')['messages']) == 1
    same = {'Origin': catcher.url.rstrip('/')}
    assert http(catcher, '/delete-all', 'POST', b'', same)[0] == 200
    assert api(catcher, '/api/messages')['messages'] == []


def test_allow_remote_serves_any_host_name(tmp_path):
    with Catcher(smtp_port=0, http_port=0, allow_remote=True) as running:
        assert http(running, '/', headers={'Host': 'mail.test'})[0] == 200
        folder = running.folder
        assert os.path.isdir(folder)
    assert not os.path.exists(folder)  # the temporary folder is removed


def test_a_folder_edited_by_hand(tmp_path):
    store = MailStore(str(tmp_path))
    mail_id = store.add('a@example.com', ['b@example.com'], b'Subject: x\r\n\r\nhi\r\n')
    os.unlink(tmp_path / f'{mail_id}.json')
    (tmp_path / 'notes.txt').write_text('not a message')
    odd = '01234567890123456789-0000abcd'
    (tmp_path / f'{odd}.eml').write_bytes(
        b'Subject: odd\r\nContent-Type: text/plain; charset="x-no-such"\r\n\r\n\xe9\r\n'
    )
    assert [m.id for m in store.list()] == [mail_id, odd]
    message = store.get(mail_id)
    assert message.rcpt_tos == [] and message.text == 'hi\n'
    assert store.get(odd).text == '\ufffd\n'
    os.unlink(tmp_path / f'{mail_id}.eml')
    assert store.get('01234567890123456788-0000abcd') is None
    assert store.delete(odd) and not store.delete(odd) and not store.delete('x')


def test_headers_the_email_package_cannot_parse_are_shown_as_received(tmp_path):
    store = MailStore(str(tmp_path))
    mail_id = store.add(
        'a@example.com',
        ['b@example.com'],
        b'To: a@[\r\nMessage-ID: <[>\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n',
    )
    message = store.get(mail_id)
    assert message.to == 'a@['
    assert ('Message-ID', '<[>') in message.headers()
    assert message.text == '' and message.html == '<p>hi</p>\n'


def test_the_pages_own_script_and_style_are_served(catcher):
    status, headers, body = http(catcher, '/static/catcher.js')
    assert status == 200 and headers['Content-Type'].startswith(
        'application/javascript'
    )
    assert b'textContent' in body and b'innerHTML' not in body
    status, headers, _ = http(catcher, '/static/catcher.css')
    assert status == 200 and headers['Content-Type'].startswith('text/css')


def test_stop_is_safe_to_repeat_and_before_start(tmp_path):
    never = Catcher(str(tmp_path / 'never'))
    never.stop()
    assert os.path.isdir(tmp_path / 'never')  # a folder given is kept
    running = Catcher(smtp_port=0, http_port=0).start()
    running.stop()
    running.stop()


def run_catch(argv, until=None):
    out, err = io.StringIO(), io.StringIO()
    command = Command(out=out, err=err)
    command.catch_until = until
    return command.run(['catch', *argv]), out.getvalue(), err.getvalue()


def test_cli_catch_prints_the_ports_it_chose_and_serves(tmp_path):
    seen = {}

    def until():
        # The command's output so far names the ports; use them for real.
        text = out_box[0].getvalue()
        seen['text'] = text
        smtp_port = int(text.split('SMTP on 127.0.0.1:')[1].split(',')[0])
        url = text.split('web UI on ')[1].split()[0]
        with smtplib.SMTP('127.0.0.1', smtp_port, timeout=10) as smtp:
            smtp.send_message(message('Via the command'))
        with urllib.request.urlopen(url + 'api/messages', timeout=10) as response:
            seen['messages'] = json.load(response)['messages']

    out_box = [io.StringIO()]
    command = Command(out=out_box[0], err=io.StringIO())
    command.catch_until = until
    folder = tmp_path / 'kept'
    argv = ['catch', '--smtp-port=0', '--http-port=0', f'--dir={folder}']
    argv += ['--defer', 'defer@*', '--reject', 'reject@*']
    assert command.run(argv) == 0
    assert [m['subject'] for m in seen['messages']] == ['Via the command']
    assert 'answers 451 to defer@*' in seen['text']
    assert 'answers 550 to reject@*' in seen['text']
    assert f'messages in {folder}' in seen['text']
    assert len(list(folder.glob('*.eml'))) == 1  # --dir is kept


def test_cli_catch_names_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = run_catch([f'--smtp-port={port}', '--http-port=0'])
    assert status == 1 and out == ''
    assert err.startswith(f'pyramid-txmail: catch: port {port} on 127.0.0.1 is')
    assert f'--smtp-port {port}' in err


def test_cli_catch_refuses_a_public_host_without_allow_remote():
    status, _, err = run_catch(['--host=0.0.0.0'])
    assert status == 1 and '--allow-remote' in err


def test_cli_catch_says_what_to_install_when_aiosmtpd_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'aiosmtpd', None)
    status, _, err = run_catch([])
    assert status == 1
    assert err == (
        "pyramid-txmail: catch needs aiosmtpd: pip install 'pyramid_txmail[catcher]'\n"
    )


def test_cli_catch_stops_on_sigterm():
    def kill_when_up():
        deadline = time.monotonic() + 20
        while 'Ctrl-C stops' not in out.getvalue():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    out = io.StringIO()
    killer = threading.Thread(target=kill_when_up)
    killer.start()
    try:
        assert Command(out=out).run(['catch', '--smtp-port=0', '--http-port=0']) == 0
    finally:
        killer.join()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_console_script_runs_the_catcher_until_interrupted(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'pyramid_txmail.cli',
            'catch',
            '--smtp-port=0',
            '--http-port=0',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith('catching mail: SMTP on 127.0.0.1:')
        url = first.split('web UI on ')[1].strip()
        with urllib.request.urlopen(url + 'api/messages', timeout=10) as response:
            assert json.load(response) == {'messages': []}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:  # pragma: no cover - only if stuck
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_in_chromium_a_message_arrives_live_and_is_read_downloaded_deleted(catcher):
    from playwright.sync_api import expect

    from tests.test_demo import chromium, screenshot

    with chromium() as browser:
        page = browser.new_page(viewport={'width': 1100, 'height': 700})
        page.goto(catcher.url)
        assert page.inner_text('#count') == '0'
        smtp_send(catcher, message('Your invoice', to='bob@example.com'))
        smtp_send(catcher, message(HOSTILE, html=EVIL_HTML))
        # The list polls the JSON API: both rows appear without a reload.
        page.wait_for_selector('#messages tbody tr:nth-child(2)', timeout=10000)
        assert page.inner_text('#count') == '2'
        first = page.locator('#messages tbody tr').first
        assert HOSTILE in first.inner_text()
        screenshot(page, 'catcher-list.png')

        rows = page.locator('#messages tbody tr')
        page.fill('#q', 'invoice')
        expect(rows).to_have_count(1)
        page.fill('#q', '')
        expect(rows).to_have_count(2)

        first.locator('a').click()
        page.wait_for_load_state('load')
        assert page.inner_text('#subject') == HOSTILE
        frame = page.frame_locator('#html')
        assert frame.locator('#p').inner_text() == 'Hello'
        assert 'with two lines.' in page.inner_text('#text')
        assert page.inner_text('#attachments tbody') == (
            'report "Q1" <final> .pdf\tapplication/pdf\t13 B'
        )
        screenshot(page, 'catcher-message.png')
        # Neither the subject nor the message's HTML ran a script (it would
        # have deleted everything).
        assert len(api(catcher, '/api/messages')['messages']) == 2

        with page.expect_download() as download:
            page.click('#attachments a')
        assert download.value.suggested_filename == 'report _Q1_ _final___.pdf'
        with open(download.value.path(), 'rb') as f:
            assert f.read() == b'%PDF-1.4 fake'

        # Shown as text/plain in a sandbox: read what the browser received.
        with page.expect_navigation() as navigation:
            page.click('text=Raw source')
        assert navigation.value.headers['content-type'].startswith('text/plain')
        assert b'Subject: <script>alert("x")</script>' in navigation.value.body()
        page.go_back()

        page.click('#delete button')
        page.wait_for_selector('#messages')
        assert page.inner_text('#count') == '1'
        assert [m['subject'] for m in api(catcher, '/api/messages')['messages']] == [
            'Your invoice'
        ]
        page.click('#delete-all button')
        page.wait_for_selector('#messages')
        assert page.inner_text('#count') == '0'


def test_encoded_line_breaks_in_a_subject_and_a_name_stay_text(catcher):
    raw = (
        b'From: =?utf-8?q?Eve=0D=0A<script>x()</script>?= <eve@example.com>\r\n'
        b'To: ann@example.com\r\n'
        b'Subject: =?utf-8?q?evil=0D=0AX-Injected:_yes?=\r\n\r\nbody\r\n'
    )
    with smtplib.SMTP('127.0.0.1', catcher.smtp_port, timeout=10) as smtp:
        smtp.sendmail('eve@example.com', ['ann@example.com'], raw)
    [summary] = api(catcher, '/api/messages')['messages']
    assert summary['subject'] == 'evil\r\nX-Injected: yes'
    for path in ('/', f'/messages/{summary["id"]}'):
        status, headers, body = http(catcher, path)
        assert status == 200 and 'X-Injected' not in headers
        assert b'<script>x()' not in body and b'&lt;script&gt;x()' in body


def test_cli_catch_links_every_page_to_the_previews(tmp_path):
    pages = {}

    def until():
        url = out.getvalue().split('web UI on ')[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            pages['index'] = response.read().decode()

    out = io.StringIO()
    command = Command(out=out, err=io.StringIO())
    command.catch_until = until
    previews = 'http://127.0.0.1:6543/_mail/?a=1&b="2"'
    argv = ['catch', '--smtp-port=0', '--http-port=0', f'--previews={previews}']
    assert command.run(argv) == 0
    assert (
        '<a id="previews" href="http://127.0.0.1:6543/_mail/?a=1&amp;b=&quot;2&quot;">'
        'Mail previews</a>'
    ) in pages['index']
