"""The mail.* settings: conversion, defaults, and errors that name the key."""

from __future__ import annotations

import logging
import os
import socket

import pytest
from pyramid.exceptions import ConfigurationError

DOCS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'settings.rst')


def parse(**settings):
    """``parse_settings`` of ``mail.<key>`` for each keyword."""
    from pyramid_txmail.settings import parse_settings

    return parse_settings({'mail.' + k: v for k, v in settings.items()})


def refusal(key, fragment, **settings):
    """The error ``parse(**settings)`` raises, checked to name ``mail.<key>``."""
    from pyramid_txmail.settings import SettingsError

    with pytest.raises(SettingsError) as info:
        parse(**settings)
    assert isinstance(info.value, ConfigurationError)
    assert info.value.key == 'mail.' + key
    assert 'mail.' + key in str(info.value)
    assert fragment in str(info.value)
    return info.value


def test_defaults_are_the_documented_ones():
    s = parse()
    assert (s.delivery, s.host, s.port) == ('direct', 'localhost', 25)
    assert (s.timeout, s.queue_interval, s.queue_batch) == (30, 3, 100)
    assert (s.retry_min, s.retry_max, s.max_age) == (300, 4000, 432000)
    assert (s.tls, s.ssl, s.tls_verify, s.queue_rate) == (False, False, True, 0)
    assert s.message_id_domain == socket.getfqdn()


def test_ini_strings_are_converted():
    s = parse(
        host=' smtp.example.com ',
        port=' 465 ',
        ssl='Yes',
        tls_verify='off',
        timeout='2.5',
        queue_path='/var/q',
        queue_processor='0',
        queue_batch='10',
        queue_rate='0.5',
        username='u',
        password='p',
        default_sender='App <app@example.com>',
        message_id_domain='example.com',
        keyfile='k.pem',
        certfile='c.pem',
        cafile='ca.pem',
        cc='',
    )
    assert (s.host, s.port, s.ssl, s.tls_verify) == (
        'smtp.example.com',
        465,
        True,
        False,
    )
    assert (s.timeout, s.queue_batch, s.queue_rate) == (2.5, 10, 0.5)
    assert (s.delivery, s.queue_processor) == ('queued', False)
    assert s.message_id_domain == 'example.com'


def test_python_values_are_accepted():
    s = parse(port=587, tls=True, timeout=5, delivery='file', file_path='/tmp/x')
    assert (s.port, s.tls, s.timeout, s.delivery) == (587, True, 5.0, 'file')


def test_empty_string_is_unset():
    assert parse(username='', password='').username is None


def test_boolean_typos_are_refused():
    refusal('tls', "'ture'", tls='ture')
    refusal('ssl', "'2'", ssl='2')


def test_booleans_accept_every_word_pyramid_asbool_knows():
    from pyramid.settings import asbool

    for word in ('t', 'true', 'y', 'yes', 'on', '1', 'T', ' Y '):
        assert parse(tls=word).tls is True, word
        assert asbool(word) is True
    for word in ('f', 'false', 'n', 'no', 'off', '0', 'F', 'N'):
        assert parse(tls=word).tls is False, word


def test_a_year_of_seconds_is_the_longest_span_taken():
    assert parse(timeout='31536000', max_age='31536000').max_age == 31536000.0


def test_bad_values_are_refused_naming_key_and_value():
    refusal('port', "expected an integer from 1 to 65535, got 'smtp'", port='smtp')
    refusal('port', '70000', port='70000')
    refusal('delivery', "'sendmail'", delivery='sendmail')
    refusal('timeout', "'-1'", timeout='-1')
    refusal('timeout', "'soon'", timeout='soon')
    refusal('timeout', "'inf'", timeout='inf')
    # Beyond what the waits underneath take: it overflowed at the first send.
    refusal('timeout', "at most a year (31536000), got '1e10'", timeout='1e10')
    refusal('max_age', "'31536001'", max_age='31536001')
    refusal('queue_batch', "'0'", queue_batch='0')
    refusal('queue_batch', "'many'", queue_batch='many')
    refusal('queue_rate', "'-2'", queue_rate='-2')
    refusal('queue_rate', "'fast'", queue_rate='fast')


def test_settings_that_contradict_each_other_are_refused():
    refusal('tls', 'both on', tls='true', ssl='true')
    refusal('delivery', 'needs mail.queue_path', delivery='queued')
    refusal('delivery', 'needs mail.file_path', delivery='file')
    refusal('keyfile', 'certfile', keyfile='k.pem')
    refusal('username', 'go together', username='u')
    refusal('username', 'go together', password='secret')
    refusal('retry_min', 'retry_max', retry_min='500', retry_max='400')
    refusal('default_sender', "'nobody'", default_sender='nobody')


def test_credentials_without_tls_refused_off_loopback():
    error = refusal(
        'username',
        'in clear to smtp.example.com',
        host='smtp.example.com',
        username='u',
        password='s3cret',
    )
    assert 's3cret' not in str(error)
    for host in ('localhost', '127.0.0.2', '::1'):
        assert parse(host=host, username='u', password='p').username == 'u'
    parse(host='smtp.example.com', username='u', password='p', tls='on')


def test_password_is_never_shown():
    from pyramid_txmail.settings import SettingsError

    error = SettingsError('mail.password', 's3cret', 'bad')
    assert 's3cret' not in str(error)
    assert error.value is None
    s = parse(host='localhost', username='u', password='s3cret')
    assert 's3cret' not in repr(s)


def test_unknown_and_pyramid_mailer_keys_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, 'pyramid_txmail'):
        parse(debug='true', hots='x')
    text = caplog.text
    assert 'mail.debug is a pyramid_mailer setting' in text
    assert 'unknown setting mail.hots' in text


def test_every_key_is_documented():
    from pyramid_txmail.settings import KEYS

    with open(DOCS) as f:
        docs = f.read()
    for name, _ in KEYS:
        assert f'``mail.{name}``' in docs


def test_prefix_defaults_to_mail():
    from pyramid_txmail.settings import settings_prefix

    assert settings_prefix({}) == 'mail.'
    assert settings_prefix({'pyramid_mailer.prefix': ' '}) == 'mail.'


def test_prefix_from_either_package_name():
    from pyramid_txmail.settings import settings_prefix

    assert settings_prefix({'pyramid_mailer.prefix': 'shopmail.'}) == 'shopmail.'
    assert settings_prefix({'pyramid_txmail.prefix': ' shopmail. '}) == 'shopmail.'
    both = {'pyramid_txmail.prefix': 'a.', 'pyramid_mailer.prefix': 'a.'}
    assert settings_prefix(both) == 'a.'


def test_prefixes_that_disagree_are_refused():
    from pyramid_txmail.settings import SettingsError, settings_prefix

    with pytest.raises(SettingsError, match=r"pyramid_mailer\.prefix: .*'b\.'") as info:
        settings_prefix({'pyramid_txmail.prefix': 'a.', 'pyramid_mailer.prefix': 'b.'})
    assert info.value.key == 'pyramid_mailer.prefix'


@pytest.mark.parametrize('key', ['pyramid_mailer.prefix', 'pyramid_txmail.prefix'])
def test_includeme_honours_the_prefix_setting(key, smtp_server):
    import transaction
    from pyramid.config import Configurator

    from pyramid_txmail import Message, get_mailer

    config = Configurator(
        settings={
            key: 'shopmail.',
            'shopmail.host': smtp_server.host,
            'shopmail.port': str(smtp_server.port),
            'shopmail.default_sender': 'shop@example.com',
            'mail.port': 'ignored: another prefix is in use',
        },
        autocommit=True,
    )
    config.include('pyramid_txmail')
    with transaction.manager:
        get_mailer(config.registry).send(
            Message(subject='s', recipients=['b@example.com'], body='x')
        )
    (received,) = smtp_server.wait_for(1)
    assert received.mail_from == 'shop@example.com'


def test_includeme_names_the_prefixed_key_in_errors():
    from pyramid.config import Configurator

    config = Configurator(
        settings={'pyramid_mailer.prefix': 'shopmail.', 'shopmail.tls': 'ture'}
    )
    with pytest.raises(ConfigurationError, match=r"shopmail\.tls: .*'ture'"):
        config.include('pyramid_txmail')


# -- the one loopback rule (credentials without TLS)

LOOPBACK = [
    'localhost',
    'LOCALHOST',
    'localhost.',
    '127.0.0.1',
    '127.0.0.2',
    '::1',
    '[::1]',
]
NOT_LOOPBACK = ['mail.example.com', '192.0.2.1', '2001:db8::1', 'localhost.example']


@pytest.mark.parametrize('host', LOOPBACK)
def test_every_loopback_spelling_is_loopback(host):
    from pyramid_txmail.settings import is_loopback

    assert is_loopback(host)


@pytest.mark.parametrize('host', NOT_LOOPBACK)
def test_other_hosts_are_not_loopback(host):
    from pyramid_txmail.settings import is_loopback

    assert not is_loopback(host)


@pytest.mark.parametrize('host', LOOPBACK)
def test_credentials_without_tls_are_accepted_for_every_loopback_spelling(host):
    from pyramid_txmail.settings import parse_settings

    settings = parse_settings(
        {'mail.host': host, 'mail.username': 'u', 'mail.password': 'p'}
    )
    assert settings.host == host


@pytest.mark.parametrize('host', NOT_LOOPBACK)
def test_credentials_without_tls_are_refused_elsewhere(host):
    from pyramid.exceptions import ConfigurationError

    from pyramid_txmail.settings import parse_settings

    with pytest.raises(ConfigurationError, match=r'mail\.tls'):
        parse_settings({'mail.host': host, 'mail.username': 'u', 'mail.password': 'p'})
