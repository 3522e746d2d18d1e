"""The pyramid_txmail demo: sign up, see the mail that was caught, watch the queue.

Everything mail-related is what the docs tell users to write:
``config.include('pyramid_txmail')`` and ``request.mailer.send(Message(...))``.
The rest is a few pages of plain HTML.
"""

from __future__ import annotations

import email
import email.policy
import os
from datetime import datetime
from email.message import EmailMessage
from html import escape
from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound, HTTPNotFound
from pyramid.response import Response

from pyramid_txmail import Attachment, Message
from pyramid_txmail.queue import MailQueue

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} · pyramid_txmail demo</title>
<style>body{{font:16px sans-serif;max-width:50em;margin:2em auto}}
td,th{{padding:.2em .8em;text-align:left}} iframe{{width:100%;height:12em}}
.note{{background:#eef;padding:.5em 1em}}</style></head>
<body><nav><a href="/">Sign up</a> · <a href="/messages">Caught mail</a> ·
<a href="/queue">Queue</a></nav><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> Response:
    return Response(PAGE.format(title=escape(title), body=body), status=status)


def signup_form(request: Any) -> Response:
    note = request.params.get('note', '')
    return page(
        'Sign up',
        (f'<p class="note" id="note">{escape(note)}</p>' if note else '')
        + """<form method="post" action="/signup">
<p><label>Name <input name="name" required></label></p>
<p><label>Email <input name="email" type="email" required></label></p>
<p><label><input type="checkbox" name="fail"> fail after sending
(the view raises: the transaction aborts and no mail leaves)</label></p>
<p><button type="submit">Sign up</button></p></form>""",
    )


def signup(request: Any) -> HTTPFound:
    """Send the welcome message in the request's transaction."""
    name = request.params['name']
    request.mailer.send(
        Message(
            subject=f'Welcome, {name}!',
            recipients=[request.params['email']],
            body=f'Hello {name},\n\nthanks for signing up.\n',
            html=f'<h2>Hello {escape(name)}</h2><p>Thanks for signing up.</p>',
            attachments=[
                Attachment(
                    filename='welcome.txt',
                    content_type='text/plain',
                    data=f'Welcome aboard, {name}.\n',
                )
            ],
        )
    )
    if 'fail' in request.params:
        raise RuntimeError('failed after sending, on purpose')
    return HTTPFound('/?note=Welcome+mail+sent+when+the+transaction+committed.')


def failed_view(exc: Exception, request: Any) -> Response:
    # pyramid_tm has already aborted the transaction: the mail is gone too.
    return page(
        'The request failed',
        f'<p class="note" id="note">{escape(str(exc))}: the transaction was '
        'aborted, so no mail was sent. <a href="/messages">Check.</a></p>',
        status=500,
    )


def _caught(request: Any) -> str:
    return request.registry.settings['demo.caught_dir']


def _load(request: Any, name: str) -> EmailMessage:
    path = os.path.join(_caught(request), os.path.basename(name))
    if not name.endswith('.eml') or not os.path.isfile(path):
        raise HTTPNotFound()
    with open(path, 'rb') as f:
        return email.message_from_binary_file(f, policy=email.policy.default)  # type: ignore[return-value]


def messages(request: Any) -> Response:
    folder = _caught(request)
    names = sorted(
        (n for n in os.listdir(folder) if n.endswith('.eml'))
        if os.path.isdir(folder)
        else [],
        reverse=True,
    )
    rows = []
    for name in names:
        msg = _load(request, name)
        when = datetime.fromtimestamp(int(name.split('-')[0]) / 1e9)
        rows.append(
            f'<tr><td>{when:%H:%M:%S}</td><td><a href="/messages/{name}">'
            f'{escape(str(msg["Subject"]))}</a></td><td>{escape(str(msg["To"]))}</td></tr>'
        )
    return page(
        'Caught mail',
        f'<p>{len(names)} message(s) crossed SMTP.</p><table id="messages">'
        '<tr><th>Time</th><th>Subject</th><th>To</th></tr>'
        + ''.join(rows)
        + '</table>',
    )


def message(request: Any) -> Response:
    name = request.matchdict['name']
    msg = _load(request, name)
    html = msg.get_body(('html',))
    text = msg.get_body(('plain',))
    files = ''.join(
        f'<li><a href="/messages/{name}/attachments/{i}">{escape(part.get_filename() or "file")}</a></li>'
        for i, part in enumerate(msg.iter_attachments())
    )
    headers = ''.join(
        f'<tr><th>{escape(k)}</th><td>{escape(str(msg[k]))}</td></tr>'
        for k in ('From', 'To', 'Subject', 'Date', 'Message-ID')
    )
    return page(
        str(msg['Subject']),
        f'<table>{headers}</table><h2>HTML part</h2>'
        f'<iframe id="html" sandbox srcdoc="{escape(html.get_content()) if html else ""}"></iframe>'
        f'<h2>Text part</h2><pre id="text">{escape(text.get_content()) if text else ""}</pre>'
        f'<h2>Attachments</h2><ul id="attachments">{files}</ul>',
    )


def attachment(request: Any) -> Response:
    msg = _load(request, request.matchdict['name'])
    parts = list(msg.iter_attachments())
    index = int(request.matchdict['index'])
    if index >= len(parts):
        raise HTTPNotFound()
    part = parts[index]
    response = Response(
        body=part.get_payload(decode=True), content_type=part.get_content_type()
    )
    response.content_disposition = f'attachment; filename="{part.get_filename()}"'
    return response


def _queue(request: Any) -> MailQueue:
    return MailQueue(request.registry.settings['mail.queue_path'])


def queue(request: Any) -> Response:
    q = _queue(request)
    counts = q.counts()
    cells = ''.join(
        f'<tr><th>{state}</th><td id="{state}">{counts[state]}</td></tr>'
        for state in ('queued', 'deferred', 'sending', 'failed')
    )
    failed = ''.join(
        f'<li>{escape(i.id)}: {escape(i.last_error or "")}</li>'
        for i in q.list(failed=True)
    )
    return page(
        'Queue',
        f'<table>{cells}</table><h2>Failed</h2><ul>{failed}</ul>'
        '<form method="post" action="/queue/retry"><button>Retry failed messages</button></form>'
        '<p>The same from a shell: <code>pyramid-txmail status demo/development.ini</code></p>',
    )


def retry(request: Any) -> HTTPFound:
    _queue(request).retry()
    return HTTPFound('/queue')


def main(global_config: dict[str, str], **settings: str) -> Any:
    """The WSGI application (``use = call:txmail_demo:main``)."""
    with Configurator(settings=settings) as config:
        config.include('pyramid_txmail')
        for name, pattern, view, method in [
            ('home', '/', signup_form, 'GET'),
            ('signup', '/signup', signup, 'POST'),
            ('messages', '/messages', messages, 'GET'),
            ('message', '/messages/{name}', message, 'GET'),
            (
                'attachment',
                '/messages/{name}/attachments/{index:\\d+}',
                attachment,
                'GET',
            ),
            ('queue', '/queue', queue, 'GET'),
            ('retry', '/queue/retry', retry, 'POST'),
        ]:
            config.add_route(name, pattern, request_method=method)
            config.add_view(view, route_name=name)
        config.add_exception_view(failed_view, RuntimeError)
    return config.make_wsgi_app()
