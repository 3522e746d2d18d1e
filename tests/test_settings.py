"""The mail.* settings: conversion, defaults, and errors that name the key."""

from __future__ import annotations

import os
import unittest

import pytest
from pyramid.exceptions import ConfigurationError

DOCS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'settings.rst')


class Test_parse_settings(unittest.TestCase):
    def _callFUT(self, **settings):
        from pyramid_txmail.settings import parse_settings

        return parse_settings({'mail.' + k: v for k, v in settings.items()})

    def assertRefused(self, key, fragment, **settings):
        from pyramid_txmail.settings import SettingsError

        with self.assertRaises(SettingsError) as cm:
            self._callFUT(**settings)
        self.assertIsInstance(cm.exception, ConfigurationError)
        self.assertEqual(cm.exception.key, 'mail.' + key)
        self.assertIn('mail.' + key, str(cm.exception))
        self.assertIn(fragment, str(cm.exception))
        return cm.exception

    def test_defaults(self):
        from pyramid_txmail import settings as module

        s = self._callFUT()
        self.assertEqual((s.delivery, s.host, s.port), ('direct', 'localhost', 25))
        self.assertEqual((s.timeout, s.queue_interval, s.queue_batch), (30, 3, 100))
        self.assertEqual((s.retry_min, s.retry_max, s.max_age), (300, 4000, 432000))
        self.assertEqual(
            (s.tls, s.ssl, s.tls_verify, s.queue_rate), (False, False, True, 0)
        )
        self.assertEqual(s.message_id_domain, module._fqdn())

    def test_ini_strings_converted(self):
        s = self._callFUT(
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
        self.assertEqual(
            (s.host, s.port, s.ssl, s.tls_verify),
            ('smtp.example.com', 465, True, False),
        )
        self.assertEqual((s.timeout, s.queue_batch, s.queue_rate), (2.5, 10, 0.5))
        self.assertEqual((s.delivery, s.queue_processor), ('queued', False))
        self.assertEqual(s.message_id_domain, 'example.com')

    def test_python_values_accepted(self):
        s = self._callFUT(
            port=587, tls=True, timeout=5, delivery='file', file_path='/tmp/x'
        )
        self.assertEqual(
            (s.port, s.tls, s.timeout, s.delivery), (587, True, 5.0, 'file')
        )

    def test_empty_string_is_unset(self):
        self.assertIsNone(self._callFUT(username='', password='').username)

    def test_strict_booleans(self):
        self.assertRefused('tls', "'ture'", tls='ture')
        self.assertRefused('ssl', "'2'", ssl='2')

    def test_booleans_accept_every_word_pyramid_asbool_knows(self):
        from pyramid.settings import asbool

        for word in ('t', 'true', 'y', 'yes', 'on', '1', 'T', ' Y '):
            self.assertIs(self._callFUT(tls=word).tls, True, word)
            self.assertIs(asbool(word), True)
        for word in ('f', 'false', 'n', 'no', 'off', '0', 'F', 'N'):
            self.assertIs(self._callFUT(tls=word).tls, False, word)

    def test_bad_values_name_key_and_value(self):
        self.assertRefused(
            'port', "expected an integer from 1 to 65535, got 'smtp'", port='smtp'
        )
        self.assertRefused('port', '70000', port='70000')
        self.assertRefused('delivery', "'sendmail'", delivery='sendmail')
        self.assertRefused('timeout', "'-1'", timeout='-1')
        self.assertRefused('timeout', "'soon'", timeout='soon')
        self.assertRefused('timeout', "'inf'", timeout='inf')
        self.assertRefused('queue_batch', "'0'", queue_batch='0')
        self.assertRefused('queue_batch', "'many'", queue_batch='many')
        self.assertRefused('queue_rate', "'-2'", queue_rate='-2')
        self.assertRefused('queue_rate', "'fast'", queue_rate='fast')

    def test_cross_key_errors(self):
        self.assertRefused('tls', 'both on', tls='true', ssl='true')
        self.assertRefused('delivery', 'needs mail.queue_path', delivery='queued')
        self.assertRefused('delivery', 'needs mail.file_path', delivery='file')
        self.assertRefused('keyfile', 'certfile', keyfile='k.pem')
        self.assertRefused('username', 'go together', username='u')
        self.assertRefused('username', 'go together', password='secret')
        self.assertRefused('retry_min', 'retry_max', retry_min='500', retry_max='400')
        self.assertRefused('default_sender', "'nobody'", default_sender='nobody')

    def test_credentials_without_tls_refused_off_loopback(self):
        error = self.assertRefused(
            'username',
            'in clear to smtp.example.com',
            host='smtp.example.com',
            username='u',
            password='s3cret',
        )
        self.assertNotIn('s3cret', str(error))
        for host in ('localhost', '127.0.0.2', '::1'):
            self.assertEqual(
                self._callFUT(host=host, username='u', password='p').username, 'u'
            )
        self._callFUT(host='smtp.example.com', username='u', password='p', tls='on')

    def test_password_never_shown(self):
        from pyramid_txmail.settings import SettingsError

        error = SettingsError('mail.password', 's3cret', 'bad')
        self.assertNotIn('s3cret', str(error))
        self.assertIsNone(error.value)
        s = self._callFUT(host='localhost', username='u', password='s3cret')
        self.assertNotIn('s3cret', repr(s))

    def test_unknown_and_pyramid_mailer_keys_warned(self):
        with self.assertLogs('pyramid_txmail', 'WARNING') as logs:
            self._callFUT(debug='true', hots='x')
        text = '\n'.join(logs.output)
        self.assertIn('mail.debug is a pyramid_mailer setting', text)
        self.assertIn('unknown setting mail.hots', text)

    def test_every_key_documented(self):
        from pyramid_txmail.settings import KEYS

        with open(DOCS) as f:
            docs = f.read()
        for name, _ in KEYS:
            self.assertIn(f'``mail.{name}``', docs)


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
def test_is_loopback(host):
    from pyramid_txmail.settings import is_loopback

    assert is_loopback(host)


@pytest.mark.parametrize('host', NOT_LOOPBACK)
def test_is_not_loopback(host):
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
