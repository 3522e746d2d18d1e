"""The debug toolbar's Mail panel, through a real app with pyramid_debugtoolbar."""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.response import Response
from webtest import TestApp

from pyramid_txmail import Message
from pyramid_txmail.interfaces import IMailer, IMailSettings
from pyramid_txmail.mailer import Mailer
from pyramid_txmail.queue import MailQueue
from tests import FailingVoteDataManager, RecordingDelivery

pytest.importorskip('pyramid_debugtoolbar')


def page(text: str) -> Response:
    return Response(f'<html><body><p>{text}</p></body></html>')


def message(subject: str, to: str = 'ann@example.com') -> Message:
    return Message(
        subject=subject,
        recipients=[to],
        body=f'Hello from {subject}.\nSecond line.',
        html='<p>html</p>',
    )


def send(request):
    request.mailer.send(message('Welcome <b>"Ann"</b>'))
    return page('sent')


def send_two_then_fail(request):
    request.mailer.send(message('Doomed one'))
    request.mailer.send(message('Doomed two'))
    raise ValueError('the view broke')


def queue(request):
    request.mailer.send_to_queue(message('Queued one'))
    return page('queued')


def refused(request):
    request.mailer.send(message('Refused one', to='bad@example.com'))
    return page('refused')


def immediately(request):
    request.mailer.send_immediately(message('Right now'))
    return page('immediately')


def veto(request):
    request.mailer.send(message('Vetoed one'))
    request.tm.get().join(FailingVoteDataManager(request.tm))
    return page('never shown')


def nothing(request):
    return page('nothing')


def failed_view(exc, request):
    response = page(f'failed: {exc}')
    response.status = 500
    return response


@pytest.fixture(params=['extra_panels', 'includes'])
def app(request, smtp_server, tmp_path):
    enable = {
        'extra_panels': {
            'debugtoolbar.extra_panels': 'pyramid_txmail.toolbar.MailPanel'
        },
        'includes': {'debugtoolbar.includes': 'pyramid_txmail.toolbar'},
    }[request.param]
    settings = {
        **enable,
        **smtp_server.mail_settings(),
        'mail.queue_path': str(tmp_path / 'queue'),
        'mail.queue_processor': 'false',
        'mail.delivery': 'direct',
        'mail.default_sender': 'app@example.com',
        'debugtoolbar.hosts': '127.0.0.1',
    }
    smtp_server.rcpt_reply = {'bad@example.com': '550 5.1.1 no such user'}
    with Configurator(settings=settings) as config:
        config.include('pyramid_debugtoolbar')
        config.include('pyramid_txmail')
        for name, view in [
            ('send', send),
            ('fail', send_two_then_fail),
            ('queue', queue),
            ('refused', refused),
            ('immediately', immediately),
            ('veto', veto),
            ('nothing', nothing),
        ]:
            config.add_route(name, '/' + name)
            config.add_view(view, route_name=name)
        config.add_exception_view(failed_view, ValueError)
    return TestApp(config.make_wsgi_app(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})


def panel(app, response) -> str:
    """The Mail panel's HTML for the request that gave ``response``."""
    url = re.search(r'/_debug_toolbar/[0-9a-f]+', response.text).group()
    html = app.get(url).text
    start = html.index('id="pDebugPanel-mail-content"')
    return html[start : html.index('<div id="pDebugPanel-', start + 1)]


def test_panel_shows_a_sent_message_with_recipients_size_and_preview(app, smtp_server):
    response = app.get('/send')
    [received] = smtp_server.wait_for(1)
    html = panel(app, response)
    assert 'Welcome &lt;b&gt;&quot;Ann&quot;&lt;/b&gt;' in html
    assert '<b>"Ann"' not in html
    assert 'ann@example.com' in html
    assert f'{len(received.data):,}&nbsp;B' in html
    assert 'Hello from Welcome' in html and 'Second line.' in html
    assert '<strong>sent</strong>' in html


def test_panel_shows_aborted_messages_as_dropped_with_the_error(app, smtp_server):
    response = app.get('/fail', status=500)
    html = panel(app, response)
    assert 'Doomed one' in html and 'Doomed two' in html
    assert html.count('<strong>dropped</strong>') == 2
    assert 'the transaction was aborted: ValueError: the view broke' in html
    assert smtp_server.messages == []


def test_panel_shows_a_queued_message(app, tmp_path):
    response = app.get('/queue')
    html = panel(app, response)
    assert 'Queued one' in html and '<strong>queued</strong>' in html
    assert MailQueue(str(tmp_path / 'queue')).counts()['queued'] == 1


def test_panel_shows_a_refused_message_as_failed_with_the_reply(app):
    html = panel(app, app.get('/refused'))
    assert 'Refused one' in html and '<strong>failed</strong>' in html
    assert '550' in html and 'no such user' in html


def test_panel_lists_a_message_sent_immediately(app, smtp_server):
    html = panel(app, app.get('/immediately'))
    smtp_server.wait_for(1)
    assert 'Right now' in html and 'immediate' in html
    assert '<strong>sent</strong>' in html


def test_panel_shows_a_failed_commit_as_dropped(app, smtp_server):
    response = app.get('/veto', status=500)
    html = panel(app, response)
    assert 'Vetoed one' in html and '<strong>dropped</strong>' in html
    assert 'the commit failed: RuntimeError: the database refused' in html
    assert smtp_server.messages == []


def test_panel_says_when_a_request_sent_no_mail(app):
    response = app.get('/nothing')
    assert 'This request sent no mail.' in panel(app, response)


def test_panel_ignores_mail_outside_its_requests(app, smtp_server):
    app.get('/nothing')  # the panel's subscriber is in place
    registry = app.app.registry
    from pyramid_txmail import get_mailer

    with transaction.manager:
        get_mailer(registry).send(message('From a script'))
    smtp_server.wait_for(1)


def test_panel_shows_the_recipients_a_relay_refused_among_others(app):
    def partly(request):
        request.mailer.send(
            Message(
                subject='Partly refused',
                recipients=['ann@example.com', 'bad@example.com'],
                body='hi',
            )
        )
        return page('partly')

    html = panel(app, app.get('/send'))  # and a second request to the same app
    assert '<strong>sent</strong>' in html
    config = Configurator(registry=app.app.registry)
    config.add_route('partly', '/partly')
    config.add_view(partly, route_name='partly')
    config.commit()
    html = panel(app, app.get('/partly'))
    assert '<strong>sent</strong>' in html
    assert 'refused: bad@example.com (550 5.1.1 no such user)' in html


def test_panel_preview_of_a_text_in_an_unknown_charset_is_empty(app):
    def odd(request):
        msg = EmailMessage()
        msg['Subject'] = 'Odd charset'
        msg['To'] = 'ann@example.com'
        msg['From'] = 'app@example.com'
        msg.set_payload(b'\xe9t\xe9')
        msg['Content-Type'] = 'text/plain; charset="x-no-such-charset"'
        request.mailer.send(msg)
        return page('odd')

    config = Configurator(registry=app.app.registry)
    config.add_route('odd', '/odd')
    config.add_view(odd, route_name='odd')
    config.commit()
    html = panel(app, app.get('/odd'))
    assert 'Odd charset' in html and '<pre></pre>' in html


def test_panel_shows_committed_for_a_delivery_that_reports_nothing(app):
    registry = app.app.registry
    mailer = Mailer(registry.getUtility(IMailSettings), RecordingDelivery())
    registry.registerUtility(mailer, IMailer)
    html = panel(app, app.get('/send'))
    assert '<strong>committed</strong>' in html


def test_in_chromium_the_mail_tab_shows_a_sent_and_an_aborted_message(app, smtp_server):
    from webtest.http import StopableWSGIServer

    from tests.test_demo import chromium, screenshot

    def commit_then_fail(request):
        request.mailer.send(message('Your receipt', to='bob@example.com'))
        request.tm.commit()  # the receipt goes now
        request.tm.begin()
        request.mailer.send(message('Welcome aboard <3', to='carol@example.com'))
        raise ValueError('the sign-up failed after sending')

    config = Configurator(registry=app.app.registry)
    config.add_route('both', '/both')
    config.add_view(commit_then_fail, route_name='both')
    config.commit()
    server = StopableWSGIServer.create(app.app, host='127.0.0.1', port=0)
    try:
        base = f'http://127.0.0.1:{server.effective_port}'
        with chromium() as browser:
            page = browser.new_page(viewport={'width': 1100, 'height': 620})
            page.goto(base + '/both')
            smtp_server.wait_for(1)
            toolbar = page.get_attribute('#pDebugToolbarHandle a', 'href')
            page.goto(toolbar)
            page.click('#pDebugPanel-mail')
            table = page.locator('#pyramid-txmail-mail')
            text = table.inner_text()
            assert 'Your receipt' in text and 'Welcome aboard <3' in text
            assert 'sent' in text and 'dropped' in text
            assert 'ValueError: the sign-up failed after sending' in text
            screenshot(page, 'toolbar-mail-panel.png')
    finally:
        server.shutdown()
    [received] = smtp_server.messages
    assert received.message['Subject'] == 'Your receipt'


def test_panel_links_to_the_mail_previews_when_the_app_serves_them(smtp_server):
    settings = {
        'debugtoolbar.includes': 'pyramid_txmail.toolbar',
        'debugtoolbar.hosts': '127.0.0.1',
        **smtp_server.mail_settings(),
        'mail.default_sender': 'app@example.com',
    }
    with Configurator(settings=settings) as config:
        config.include('pyramid_debugtoolbar')
        config.include('pyramid_txmail')
        config.add_mail_previews('tests.mail_previews', route_prefix='/_mail')
        config.add_route('send', '/send')
        config.add_view(send, route_name='send')
    app = TestApp(config.make_wsgi_app(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    html = panel(app, app.get('/send'))
    assert (
        '<a id="pyramid-txmail-previews" href="http://localhost/_mail/" '
        'target="_blank">Mail previews</a>'
    ) in html


def test_panel_has_no_previews_link_without_previews(app):
    html = panel(app, app.get('/nothing'))
    assert 'Mail previews' not in html and 'This request sent no mail.' in html
