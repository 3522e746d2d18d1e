"""Templated mail: real renderers (Jinja2, Chameleon), a real SMTP server,
real translations, and the previews through WebTest and Chromium."""

from __future__ import annotations

import os
import shutil
import threading
import types
from pathlib import Path

import pytest
import transaction
import webtest
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.scripting import prepare
from pyramid.testing import DummyRequest
from pyramid.threadlocal import manager

from pyramid_txmail import MailError, Message, get_mailer
from pyramid_txmail.templates import (
    TemplatedMessage,
    from_template,
    html_to_text,
    mail_autoescape,
    render_mail,
    template_files,
)

HERE = Path(__file__).parent
WELCOME = 'tests:templates/welcome.jinja2'
WELCOME_VALUES = {
    'name': 'Ann',
    'email': 'ann@example.com',
    'link': 'https://app.example.com/confirm?t=abc&u=1',
}
CHROMIUM = '/usr/bin/chromium'


@pytest.fixture(scope='module')
def translations(tmp_path_factory) -> str:
    """tests/locale's .po files compiled with babel into a translation dir."""
    root = tmp_path_factory.mktemp('locale')
    for po in (HERE / 'locale').glob('*/LC_MESSAGES/*.po'):
        target = root / po.relative_to(HERE / 'locale').with_suffix('.mo')
        target.parent.mkdir(parents=True)
        with po.open('rb') as source, target.open('wb') as out:
            write_mo(out, read_po(source))
    return str(root)


def send_view(request):
    """Sends the template named by ?template= to ?to=, in ?lang= if given."""
    params = request.params
    if 'peek' in params:
        assert request.localizer  # reified before the mail, and left as it was
    message_id = request.mailer.send_template(
        params.get('template', WELCOME),
        dict(WELCOME_VALUES, name=params.get('name', 'Ann')),
        recipients=[params.get('to', 'ann@example.com')],
        locale=params.get('lang'),
    )
    return {'message_id': message_id, 'locale': request.localizer.locale_name}


def refused_view(request):
    """A mail sent, then a template that fails: only the first one goes."""
    request.mailer.send(
        Message(subject='first', recipients=['a@example.com'], body='first')
    )
    try:
        request.mailer.send_template(
            request.params['template'],
            {'headline': request.params.get('headline', 'x'), 'text': 't'},
            recipients=['a@example.com'],
        )
    except MailError as exc:
        return {'error': str(exc), 'field': exc.field}
    raise AssertionError('send_template() did not refuse')  # pragma: no cover


def make_config(settings, translations, *, testing=False):
    settings = {
        'mail.default_sender': 'App <app@example.com>',
        'jinja2.i18n.domain': 'mail',
        **settings,
    }
    config = Configurator(settings=settings)
    config.include('pyramid_jinja2')
    config.include('pyramid_chameleon')
    # Chameleon for NAME.html (pyramid_chameleon already renders .txt).
    config.add_renderer('.html', 'pyramid_chameleon.zpt.renderer_factory')
    config.include('pyramid_txmail.testing' if testing else 'pyramid_txmail')
    config.add_translation_dirs(translations)
    config.add_route('home', '/')
    config.add_route('send', '/send')
    config.add_route('refused', '/refused')
    config.add_view(send_view, route_name='send', renderer='json')
    config.add_view(refused_view, route_name='refused', renderer='json')
    config.commit()
    config.get_jinja2_environment().autoescape = mail_autoescape
    return config


@pytest.fixture
def app(smtp_server, translations):
    config = make_config(smtp_server.mail_settings(), translations)
    return webtest.TestApp(config.make_wsgi_app())


def dummy_request(config):
    request = DummyRequest()
    request.registry = config.registry
    return request


def _parts(received):
    msg = received.message
    html = msg.get_body(('html',))
    return (
        msg['Subject'],
        msg.get_body(('plain',)).get_content().replace('\r\n', '\n'),
        html.get_content().replace('\r\n', '\n') if html is not None else None,
    )


# -- what arrives


def test_send_template_renders_jinja2_subject_and_inlined_html(app, smtp_server):
    app.get('/send', params={'to': 'ann@example.com'})
    (received,) = smtp_server.wait_for(1)
    subject, _, html = _parts(received)
    assert received.rcpt_tos == ['ann@example.com']
    assert received.message['From'] == 'App <app@example.com>'
    assert subject == 'Welcome, Ann!'
    # The layout (extends) and the request the templates saw.
    assert '<p class="footer" style="font-size: 12px;color: #888888;">' in html
    assert 'http://localhost</p>' in html
    # CSS inlined; the @media rule stays in a <style> element.
    assert '<h1 style="color: #204060;">Hello Ann</h1>' in html
    assert '@media (max-width: 600px)' in html
    assert 'h1 { color: #204060; }' not in html


def test_text_part_is_derived_from_the_html_when_missing(app, smtp_server):
    app.get('/send')
    (received,) = smtp_server.wait_for(1)
    _, text, _ = _parts(received)
    assert text == (
        'Hello Ann\n'
        '\n'
        'Please confirm your address:\n'
        'Confirm (https://app.example.com/confirm?t=abc&u=1)\n'
        '\n'
        '- Ann <ann@example.com>\n'
        '\n'
        'http://localhost\n'
    )


def test_given_text_part_is_sent_and_text_parts_are_not_html_escaped(tmp_path):
    config = make_config({}, str(tmp_path), testing=True)
    request = dummy_request(config)
    mailer = get_mailer(request)
    values = {'item': 'Tom & Jerry <3', 'price': '3 €'}
    with transaction.manager:
        mailer.send_template('templates/receipt.jinja2', values, recipients=['b@x.io'])
    (msg,) = mailer.sent
    assert msg.subject == 'Receipt for Tom & Jerry <3'
    assert msg.body == 'You bought Tom & Jerry <3 for 3 €.'
    assert '<b>Tom &amp; Jerry &lt;3</b>' in msg.html


def test_send_template_renders_chameleon_templates_named_without_extension(
    app, smtp_server
):
    name = 'tests:templates/chameleon/welcome'
    app.get('/send', params={'template': name, 'name': 'Zoë'})
    (received,) = smtp_server.wait_for(1)
    subject, text, html = _parts(received)
    assert subject == 'Welcome, Zoë & co'
    assert (
        text
        == 'Hello Zoë & co,\nconfirm at https://app.example.com/confirm?t=abc&u=1\n'
    )
    assert '<h1 style="color: #204060;">Hello Zoë</h1>' in html
    assert 'href="https://app.example.com/confirm?t=abc&amp;u=1"' in html


def test_any_renderer_works_even_one_giving_bytes(tmp_path):
    def factory(info):
        def render(value, system):
            return f'{value["greeting"]} from {system["request"].host}'.encode()

        return render

    config = make_config({}, str(tmp_path), testing=True)
    config.add_renderer('.bytes', factory)
    config.commit()
    folder = tmp_path / 'mails'
    folder.mkdir()
    for part in ('subject', 'txt'):
        (folder / f'hi.{part}.bytes').write_text('unused by this renderer')
    request = dummy_request(config)
    message = Message.from_template(
        str(folder / 'hi.bytes'), {'greeting': 'Hi'}, request, recipients=['a@x.io']
    )
    assert (message.subject, message.body) == ('Hi from example.com:80',) * 2
    assert message.html is None


def test_inline_css_setting_off_sends_the_html_as_rendered(smtp_server, translations):
    settings = smtp_server.mail_settings(inline_css='false')
    app = webtest.TestApp(make_config(settings, translations).make_wsgi_app())
    app.get('/send')
    (received,) = smtp_server.wait_for(1)
    _, _, html = _parts(received)
    assert 'h1 { color: #204060; }' in html
    assert '<h1>Hello Ann</h1>' in html


def test_inline_css_setting_refuses_a_typo():
    with pytest.raises(ConfigurationError, match=r"mail\.inline_css: .*'ture'"):
        Configurator(settings={'mail.inline_css': 'ture'}).include('pyramid_txmail')


# -- languages


def test_locale_argument_renders_subject_and_body_in_that_language(app, smtp_server):
    for lang in ('fr', 'de'):
        assert app.get('/send', params={'lang': lang}).json['locale'] == 'en'
    fr, de = smtp_server.wait_for(2)
    subject, text, html = _parts(fr)
    assert subject == 'Bienvenue, Ann !'
    assert 'Bonjour Ann' in html
    assert text.startswith('Bonjour Ann\n\nVeuillez confirmer votre adresse :\n')
    assert 'Confirmer (https://' in text
    subject, text, html = _parts(de)
    assert subject == 'Willkommen, Ann!'
    assert 'Bitte bestätigen Sie Ihre Adresse:' in text


def test_without_locale_the_requests_localizer_is_used_and_kept(app, smtp_server):
    res = app.get('/send', params={'_LOCALE_': 'de', 'lang': 'fr', 'peek': '1'})
    assert res.json['locale'] == 'de'
    app.get('/send', params={'_LOCALE_': 'de'})
    fr, de = smtp_server.wait_for(2)
    assert fr.message['Subject'] == 'Bienvenue, Ann !'
    assert de.message['Subject'] == 'Willkommen, Ann!'


def test_chameleon_i18n_translate_follows_the_locale(app, smtp_server):
    name = 'tests:templates/chameleon/welcome'
    app.get('/send', params={'template': name, 'lang': 'fr'})
    (received,) = smtp_server.wait_for(1)
    _, _, html = _parts(received)
    assert '>Bonjour Ann</h1>' in html


# -- errors, before anything joins the transaction


@pytest.mark.parametrize(
    ('template', 'headline', 'says'),
    [
        (
            'tests:templates/nosuch.jinja2',
            'x',
            "template 'tests:templates/nosuch.jinja2': no subject template "
            "'tests:templates/nosuch.subject.jinja2'",
        ),
        (
            'nosuchpackage:templates/welcome.jinja2',
            'x',
            "template 'nosuchpackage:templates/welcome.jinja2': no subject",
        ),
        (
            'tests:templates/nobody.jinja2',
            'x',
            "template 'tests:templates/nobody.jinja2': neither "
            "'tests:templates/nobody.txt.jinja2' nor "
            "'tests:templates/nobody.html.jinja2' exists",
        ),
        (
            'tests:templates/broken.jinja2',
            'x',
            "template 'tests:templates/broken.jinja2': rendering "
            "'tests:templates/broken.html.jinja2' failed: UndefinedError: "
            "'no_such_function' is undefined",
        ),
        (
            'tests:templates/notice.jinja2',
            'Hi\r\nBcc: all@example.com',
            "template 'tests:templates/notice.jinja2': the subject "
            "('tests:templates/notice.subject.jinja2') must be one line, got "
            "'Hi\\r\\nBcc: all@example.com'",
        ),
    ],
    ids=['missing', 'unknown-package', 'no-body', 'renderer-error', 'two-lines'],
)
def test_send_template_refuses_a_bad_template_and_sends_nothing_for_it(
    app, smtp_server, template, headline, says
):
    res = app.get('/refused', params={'template': template, 'headline': headline})
    assert res.json['error'].startswith(says)
    assert res.json['field'] in ('template', 'subject')
    (received,) = smtp_server.wait_for(1)
    assert received.message['Subject'] == 'first'
    # The second message of the same transaction never joined it.
    app.get('/send')
    assert len(smtp_server.wait_for(2)) == 2


def test_renderer_error_keeps_the_renderers_exception_as_cause(tmp_path):
    config = make_config({}, str(tmp_path), testing=True)
    request = dummy_request(config)
    with pytest.raises(MailError) as info:
        Message.from_template('templates/broken.jinja2', {}, request)
    assert type(info.value.__cause__).__name__ == 'UndefinedError'


def test_a_subject_given_replaces_the_subject_template(tmp_path):
    config = make_config({}, str(tmp_path), testing=True)
    request = dummy_request(config)
    mailer = get_mailer(request)
    mailer.send_template(
        'tests:templates/chameleon/welcome',
        WELCOME_VALUES,
        recipients=['a@x.io'],
        subject='Chosen',
    )
    assert mailer.outbox[0].subject == 'Chosen'
    with pytest.raises(TypeError, match='body is rendered from the template'):
        mailer.send_template('x', {}, body='text')


def test_a_template_without_subject_part_is_fine_with_a_subject_given(tmp_path):
    (tmp_path / 'only.txt').write_text('Just text')
    config = make_config({}, str(tmp_path), testing=True)
    request = dummy_request(config)
    message = Message.from_template(
        str(tmp_path / 'only'), None, request, subject='S', recipients=['a@x.io']
    )
    assert (message.subject, message.body, message.template_values) == (
        'S',
        'Just text',
        {},
    )


# -- scripts: Message.from_template


def test_from_template_in_a_script_renders_with_the_scripts_request(
    smtp_server, translations
):
    config = make_config(smtp_server.mail_settings(), translations)
    app = config.make_wsgi_app()
    with prepare(registry=app.registry) as env:
        env['request'].host = 'shop.example.com'
        message = Message.from_template(
            'templates/welcome.jinja2',
            WELCOME_VALUES,
            recipients=['ann@example.com'],
            locale='de',
        )
        with transaction.manager:
            get_mailer(app.registry).send(message)
    (received,) = smtp_server.wait_for(1)
    subject, _, html = _parts(received)
    assert subject == 'Willkommen, Ann!'
    assert 'http://shop.example.com</p>' in html
    assert isinstance(message, TemplatedMessage) and message.locale == 'de'


def test_from_template_without_any_request_makes_a_blank_one(tmp_path):
    config = make_config({'mail.inline_css': 'false'}, str(tmp_path), testing=True)
    manager.push({'registry': config.registry, 'request': None})
    try:
        message = Message.from_template(WELCOME, WELCOME_VALUES)
        mailer = get_mailer(config.registry)
        assert mailer.request is None
        with transaction.manager:
            mailer.send_template(WELCOME, WELCOME_VALUES, recipients=['a@x.io'])
    finally:
        manager.pop()
    assert 'http://localhost</p>' in message.html
    assert '<h1>Hello Ann</h1>' in message.html  # mail.inline_css = false
    assert mailer.sent[0].html == message.html


def test_render_mail_outside_pyramid_txmail_inlines_css_by_default(tmp_path):
    config = Configurator()
    config.include('pyramid_jinja2')
    config.commit()
    request = dummy_request(config)
    mail = render_mail(
        'templates/receipt.jinja2', {'item': 'I', 'price': 1}, request=request
    )
    assert mail.html == (
        '<html><head></head><body><p>You bought <b>I</b> for 1.</p></body></html>'
    )
    manager.push({'registry': config.registry, 'request': None})
    try:
        again = render_mail('templates/receipt.jinja2', {'item': 'I', 'price': 1})
    finally:
        manager.pop()
    assert again == mail
    message = from_template(
        'templates/receipt.jinja2', {'item': 'I', 'price': 1}, request=request
    )
    assert message.html == mail.html and message.template_values['item'] == 'I'


# -- testing: DummyMailer records the template beside each message


def test_dummy_mailer_records_template_and_values_beside_each_message(tmp_path):
    config = make_config({}, str(tmp_path), testing=True)
    request = dummy_request(config)
    mailer = get_mailer(request)
    with transaction.manager as tm:
        mailer.send_template(WELCOME, WELCOME_VALUES, recipients=['ann@example.com'])
        assert mailer.sent == []
        tm.abort()
    with transaction.manager:
        mailer.send_template(
            WELCOME, WELCOME_VALUES, recipients=['bob@example.com'], locale='fr'
        )
    first, second = mailer.outbox
    (committed,) = mailer.sent
    assert committed is second
    assert committed.template == WELCOME
    assert committed.template_values['link'] == WELCOME_VALUES['link']
    assert committed.recipients == ['bob@example.com']
    assert committed.locale == 'fr' and first.locale is None


# -- names and text


def test_template_names_map_to_three_files():
    assert template_files('app:t/welcome.jinja2') == (
        'app:t/welcome.subject.jinja2',
        'app:t/welcome.txt.jinja2',
        'app:t/welcome.html.jinja2',
    )
    assert template_files('app:t/welcome') == (
        'app:t/welcome.subject.txt',
        'app:t/welcome.txt',
        'app:t/welcome.html',
    )
    assert template_files('my.app:welcome') == (
        'my.app:welcome.subject.txt',
        'my.app:welcome.txt',
        'my.app:welcome.html',
    )
    assert template_files('t.d/.welcome.pt') == (
        't.d/.welcome.subject.pt',
        't.d/.welcome.txt.pt',
        't.d/.welcome.html.pt',
    )


def test_mail_autoescape_escapes_only_html_parts():
    assert mail_autoescape('app:t/w.html.jinja2')
    assert mail_autoescape(None)
    assert not mail_autoescape('app:t/w.subject.jinja2')
    assert not mail_autoescape('app:t/w.txt.jinja2')
    assert not mail_autoescape('w.txt')


def test_html_to_text_keeps_structure_readable():
    html = """<html><head><title>T</title><style>p { color: red }</style>
    <script>alert(1)</script></head><body>
    <h1>Hello   <i>Ann</i></h1>
    <p>Line one<br>line two &amp; more.</p>
    <ul><li>one</li><li>two <a href="https://x.test/a">link</a>
      <ol><li>nested</li><li><p>para in item</p></li></ol></li></ul>
    <p><a href="https://x.test/b">https://x.test/b</a>, <a href="#top">top</a>,
    <a href="https://x.test/c"></a> and <a>no href</a>.</p>
    <table><tr><th>a</th><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
    <pre>pre 1
  pre 2</pre>
    <img alt="Logo"> <img src="x.png"> end</body></html>"""
    assert html_to_text(html) == (
        'Hello Ann\n'
        '\n'
        'Line one\n'
        'line two & more.\n'
        '\n'
        '- one\n'
        '- two link (https://x.test/a)\n'
        '  1. nested\n'
        '  2. para in item\n'
        '\n'
        'https://x.test/b, top, https://x.test/c and no href.\n'
        '\n'
        'a  b\n'
        'c  d\n'
        '\n'
        'pre 1\n'
        '  pre 2\n'
        '\n'
        'Logo end\n'
    )


def test_html_to_text_survives_stray_closing_tags():
    assert html_to_text('</a></ul></table></style><li>item</li>text') == (
        '- item\n\ntext\n'
    )
    assert html_to_text('') == ''
    assert html_to_text('end<br><br>') == 'end\n'
    assert html_to_text('<p> </p>') == ''


# -- previews


@pytest.fixture
def preview_app(translations):
    config = make_config({}, translations, testing=True)
    config.add_mail_previews('tests.mail_previews', route_prefix='/_mail/')
    app = webtest.TestApp(config.make_wsgi_app())
    app.mailer = get_mailer(config.registry)
    return app


def test_previews_list_each_public_function_of_the_module(preview_app):
    page = preview_app.get('/_mail/')
    items = page.html.select('#previews li')
    assert [li.a.text for li in items] == [
        'welcome',
        'receipt',
        'notice',
        'broken',
        'bad_address',
    ]
    assert items[0].text == 'welcome \N{EN DASH} The sign-up mail.'
    assert items[0].a['href'] == '/_mail/welcome'


def test_preview_shows_headers_text_and_sandboxed_html_without_sending(
    preview_app,
):
    page = preview_app.get('/_mail/welcome')
    headers = {row.th.text: row.td.text for row in page.html.select('#headers tr')}
    assert headers['Subject'] == 'Welcome, Ann!'
    assert headers['To'] == 'preview@example.com'
    assert headers['From'] == 'App <app@example.com>'
    assert page.html.select_one('#template').text == WELCOME
    assert 'Confirm (http://localhost/)' in page.html.select_one('#text').text
    frame = page.html.select_one('iframe#html')
    assert frame['src'] == '/_mail/welcome/html'
    assert '<iframe id="html" sandbox=""' in page.text
    html = preview_app.get(frame['src'])
    assert html.headers['Content-Security-Policy'] == 'sandbox'
    assert '<h1 style="color: #204060;">Hello Ann</h1>' in html.text
    assert preview_app.mailer.outbox == [] and preview_app.mailer.sent == []


def test_preview_takes_keywords_and_a_locale_from_its_function_or_the_url(
    preview_app,
):
    page = preview_app.get('/_mail/receipt')
    headers = {row.th.text: row.td.text for row in page.html.select('#headers tr')}
    assert headers['To'] == 'bob@example.com'
    assert page.html.select_one('#text').text == 'You bought Tom & Jerry for 3 €.'
    page = preview_app.get('/_mail/welcome', params={'locale': 'fr'})
    assert page.html.select_one('iframe#html')['src'] == '/_mail/welcome/html?locale=fr'
    assert 'Bonjour Ann' in preview_app.get('/_mail/welcome/html?locale=fr').text


def test_preview_of_a_text_only_mail_and_of_a_broken_template(preview_app):
    page = preview_app.get('/_mail/notice')
    assert page.html.select_one('#html').text == 'This mail has no HTML part.'
    preview_app.get('/_mail/notice/html', status=404)
    page = preview_app.get('/_mail/broken', status=500)
    assert "'no_such_function' is undefined" in page.html.select_one('.error').text
    page = preview_app.get('/_mail/bad_address', status=500)
    assert "'not an address'" in page.html.select_one('.error').text
    preview_app.get('/_mail/_helper', status=404)
    preview_app.get('/_mail/join', status=404)


def test_previews_are_off_unless_configured_and_list_an_empty_module(translations):
    app = webtest.TestApp(make_config({}, translations).make_wsgi_app())
    app.get('/_mail/', status=404)
    config = make_config({}, translations)
    config.add_mail_previews(types.ModuleType('empty'))
    app = webtest.TestApp(config.make_wsgi_app())
    assert 'empty has no preview functions' in app.get('/_mail/').text


def _chromium_or_skip():
    if os.path.exists(CHROMIUM) and shutil.which('chromium'):
        return
    if os.environ.get('CI'):  # pragma: no cover - CI installs chromium
        pytest.fail(f'{CHROMIUM} is missing: `make test` installs Debian chromium')
    pytest.skip(f'{CHROMIUM} not installed')  # pragma: no cover


def test_preview_in_chromium_shows_the_html_in_its_frame(translations):
    _chromium_or_skip()
    import waitress
    from playwright.sync_api import sync_playwright

    config = make_config({}, translations, testing=True)
    config.add_mail_previews('tests.mail_previews')
    server = waitress.create_server(
        config.make_wsgi_app(), host='127.0.0.1', port=0, threads=1
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f'http://127.0.0.1:{server.effective_port}/_mail/'
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=['--headless', '--no-sandbox', '--disable-gpu'],
            )
            try:
                page = browser.new_page()
                page.goto(url)
                page.click('text=welcome')
                frame = page.frame_locator('#html')
                assert frame.locator('h1').inner_text() == 'Hello Ann'
                color = frame.locator('h1').evaluate('e => getComputedStyle(e).color')
                assert color == 'rgb(32, 64, 96)'
                assert 'Please confirm your address:' in page.inner_text('#text')
            finally:
                browser.close()
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=10)
    assert not thread.is_alive()
