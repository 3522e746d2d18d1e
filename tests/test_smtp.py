"""Tests for pyramid_txmail.smtp, against a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
import trustme

from pyramid_txmail.message import Envelope

PASSWORD = 'pa55-w0rd-never-shown'
DATA = (
    b'From: from@example.com\r\n'
    b'To: to@example.com\r\n'
    b'Subject: Hello\r\n'
    b'Message-ID: <1@client.test>\r\n'
    b'\r\n'
    b'Hello.\r\n'
    b'.a line starting with a dot\r\n'
    b'..and two\r\n'
    b'.\r\n'
    b'last line\r\n'
)
UTF8_DATA = (
    'From: from@example.com\r\nTo: jörg@exämple.com\r\nSubject: Grüße\r\n'
    'Content-Type: text/plain; charset=utf-8\r\n'
    'Content-Transfer-Encoding: 8bit\r\n\r\nGrüße!\r\n'
).encode()


def _envelope(*recipients: str, sender: str = 'from@example.com') -> Envelope:
    return Envelope(sender, recipients or ('to@example.com',))


#: The modes a message goes in, as ``(relay offers PIPELINING,
#: mail.pipelining)``: pipelined, lock-step with a relay that does not offer
#: it, and lock-step with the setting off.
MODES = {
    'pipelined': (True, True),
    'lock-step relay': (False, True),
    'pipelining off': (True, False),
}


def pipelines(mode: str) -> bool:
    """Whether sessions in ``mode`` pipeline."""
    return all(MODES[mode])


@pytest.fixture(autouse=True)
def _debug_log(caplog):
    # Tests look for what the session logs at debug level, and check that
    # no secret is in it.
    caplog.set_level(logging.DEBUG)


@pytest.fixture(params=list(MODES))
def mode(request) -> str:
    """Each mode of :data:`MODES` in turn."""
    return request.param


@pytest.fixture
def make_server(make_smtp_server, mode):
    """``make_server(**options)``: a test server taking ``mode``; its
    ``settings()`` carry the mode's ``mail.pipelining``."""
    offered, setting = MODES[mode]

    def make(**options):
        options.setdefault('pipelining', offered)
        server = make_smtp_server(**options)
        server.settings = functools.partial(server.settings, pipelining=setting)
        return server

    return make


@pytest.fixture
def connect():
    """``connect(settings, **kw)``: an SMTPConnection (not opened yet),
    closed after the test."""
    from pyramid_txmail.smtp import SMTPConnection

    connections = []

    def make(settings, **kw):
        conn = SMTPConnection(settings, **kw)
        connections.append(conn)
        return conn

    yield make
    for conn in connections:
        conn.close()


@pytest.fixture
def opened(connect):
    """``opened(server, **settings)``: an open SMTPConnection to ``server``,
    closed after the test."""

    def make(server, **settings):
        conn = connect(server.settings(**settings))
        conn.open()
        return conn

    return make


@pytest.fixture
def other_cafile(tmp_path) -> str:
    """A CA file of a CA that issued none of the test servers' certificates."""
    path = tmp_path / 'other-ca.pem'
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def recording_smtp(writes: list[bytes], *, break_writes=None):
    """An ``smtp_class`` for SMTPConnection that adds each write it makes
    to ``writes``; once ``break_writes`` (an Event) is set, its socket can
    write no more, as after a connection reset (a real fault on a real
    socket, through SMTPConnection's ``smtp_class`` seam)."""
    import smtplib

    class RecordingSMTP(smtplib.SMTP):
        def send(self, s):
            if break_writes is not None and break_writes.is_set():
                break_writes.clear()  # once: the socket stays broken
                self.sock.shutdown(socket.SHUT_WR)
            writes.append(s if isinstance(s, bytes) else s.encode())
            return super().send(s)

    return RecordingSMTP


# -- one connection; each test that reaches the relay runs in every mode


def test_send_plain_arrives_byte_exact(make_server, opened):
    server = make_server(strict_crlf=True)
    conn = opened(server)
    assert conn.send(_envelope(), DATA) == {}
    [received] = server.wait_for(1)
    assert received.data == DATA
    assert received.mail_from == 'from@example.com'
    assert received.rcpt_tos == ['to@example.com']
    assert received.message['Subject'] == 'Hello'
    assert received.esmtp
    assert received.helo == 'client.test'
    assert not received.tls
    assert f'SIZE={len(DATA)}' in received.mail_options
    assert conn.alive


def test_bare_lf_and_cr_are_sent_as_crlf(make_server, opened):
    server = make_server(strict_crlf=True)
    conn = opened(server)
    conn.send(_envelope(), b'Subject: x\n\nline one\rline two\r\n')
    [received] = server.wait_for(1)
    assert received.data == b'Subject: x\r\n\r\nline one\r\nline two\r\n'


def test_data_without_a_final_line_break_gets_one(make_server, opened):
    server = make_server(strict_crlf=True)
    conn = opened(server)
    conn.send(_envelope(), DATA + b'no line break')
    [received] = server.wait_for(1)
    assert received.data == DATA + b'no line break\r\n'


def test_strict_server_refuses_bare_lf(make_smtp_server):
    # The server's own check, which the test above relies on.
    import smtplib

    server = make_smtp_server(strict_crlf=True)
    client = smtplib.SMTP(server.host, server.port, local_hostname='c', timeout=2)
    with client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail('a@example.com', ['b@example.com'], b'a\nb\r\n')
    assert info.value.smtp_code == 554
    assert server.messages == []


def test_many_sends_share_one_connection(make_server, connect):
    server = make_server()
    with connect(server.settings()) as conn:
        for n in range(5):
            conn.send(_envelope(f'to{n}@example.com'), DATA)
    received = server.wait_for(5)
    assert [r.rcpt_tos for r in received] == [[f'to{n}@example.com'] for n in range(5)]
    assert server.connections == 1
    assert {r.connection for r in received} == {1}
    assert server.commands[-1] == (1, 'QUIT', False)
    assert not conn.alive


def test_8bit_data_declares_8bitmime(make_server, opened):
    server = make_server()
    conn = opened(server)
    conn.send(_envelope(), UTF8_DATA)
    [received] = server.wait_for(1)
    assert received.data == UTF8_DATA
    assert 'BODY=8BITMIME' in received.mail_options
    assert not received.smtputf8


def test_send_before_open_is_temporary(make_smtp_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_smtp_server()
    conn = connect(server.settings())
    with pytest.raises(TemporaryDeliveryError, match='not connected to'):
        conn.send(_envelope(), DATA)


def test_a_bug_while_opening_leaves_no_session_behind(make_server, connect):
    import smtplib
    import threading

    class Broken(smtplib.SMTP):
        def getreply(self):
            raise RuntimeError('bug')

    def watchers():
        return [
            t for t in threading.enumerate() if t.name == 'pyramid_txmail-smtp-deadline'
        ]

    server = make_server()
    before = set(watchers())
    conn = connect(server.settings(), smtp_class=Broken)
    with pytest.raises(RuntimeError, match='bug'):
        conn.open()
    assert not conn.alive
    for thread in set(watchers()) - before:
        thread.join(5)
        assert not thread.is_alive()  # the socket's deadline watch ended


def test_open_again_starts_a_new_session(make_server, opened):
    server = make_server()
    conn = opened(server)
    conn.open()
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.connection == 2
    assert (1, 'QUIT', False) in server.commands


def test_repr_names_the_relay_and_no_credentials(make_smtp_server, connect):
    server = make_smtp_server()
    conn = connect(server.settings(username='u', password=PASSWORD))
    assert repr(conn) == f'<SMTPConnection to 127.0.0.1:{server.port} alive=False>'


def test_where_brackets_an_ipv6_host(connect):
    from pyramid_txmail.settings import MailSettings

    conn = connect(MailSettings(host='::1', port=2525))
    assert conn.where == '[::1]:2525'


# -- EHLO / HELO


def test_relay_refusing_ehlo_is_greeted_with_helo(make_server, opened):
    server = make_server(helo_only=True)
    conn = opened(server)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert not received.esmtp
    assert received.helo == 'client.test'
    assert received.mail_options == []  # no extensions after HELO
    assert [c[1] for c in server.commands[:2]] == ['EHLO', 'HELO']


def test_relay_refusing_helo_too_is_a_configuration_fault(make_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(helo_only=True, reply={'HELO': '550 5.7.1 go away'})
    conn = connect(server.settings())
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert info.value.code == 550
    assert '5.7.1 go away' in str(info.value)
    assert not conn.alive


def test_greeting_421_is_temporary(make_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'CONNECT': '421 4.3.2 too busy'})
    conn = connect(server.settings())
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert info.value.code == 421
    assert str(info.value) == (
        f'127.0.0.1:{server.port} answered connect with 421 4.3.2 too busy'
    )


def test_greeting_554_is_configuration_fault(make_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(reply={'CONNECT': '554 5.7.1 not for you'})
    conn = connect(server.settings())
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert info.value.code == 554
    assert not info.value.permanent


# -- TLS


def test_starttls_with_verified_certificate(make_server, opened):
    server = make_server(tls='starttls')
    conn = opened(server)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.tls
    assert received.data == DATA
    verbs = [(verb, tls) for _, verb, tls in server.commands]
    assert verbs[:4] == [
        ('EHLO', False),
        ('STARTTLS', False),
        ('EHLO', True),
        ('MAIL', True),
    ]


def test_starttls_not_offered_refuses_plain_text(make_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server()
    conn = connect(server.settings(tls=True, username='u', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert 'does not offer STARTTLS' in str(info.value)
    assert not conn.alive
    verbs = [verb for _, verb, _ in server.commands]
    assert verbs == ['EHLO', 'QUIT']  # no AUTH, no MAIL
    assert server.messages == []


def test_starttls_refused_with_454_is_temporary(make_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(
        tls='starttls', reply={'STARTTLS': '454 4.7.0 TLS not available'}
    )
    conn = connect(server.settings())
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert info.value.code == 454
    assert 'answered STARTTLS with 454' in str(info.value)
    assert [verb for _, verb, _ in server.commands] == ['EHLO', 'STARTTLS', 'QUIT']


def test_implicit_tls_is_on_from_the_first_command(make_server, opened):
    server = make_server(tls='implicit')
    conn = opened(server)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.tls
    assert server.commands[0] == (1, 'EHLO', True)


def test_untrusted_certificate_refused_by_default(make_server, connect, other_cafile):
    # Peer defect pinned: clients that skip certificate verification.
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='starttls', auth={'u': PASSWORD})
    settings = server.settings(cafile=other_cafile, username='u', password=PASSWORD)
    conn = connect(settings)
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert 'certificate of 127.0.0.1' in str(info.value)
    assert 'failed verification' in str(info.value)
    assert not conn.alive
    assert server.auth_attempts == []
    assert [verb for _, verb, _ in server.commands] == ['EHLO', 'STARTTLS']


def test_untrusted_implicit_tls_certificate_refused(make_server, connect, other_cafile):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='implicit')
    conn = connect(server.settings(cafile=other_cafile))
    with pytest.raises(ConfigurationFault, match='failed verification'):
        conn.open()
    assert server.commands == []


def test_untrusted_certificate_accepted_without_verification(
    make_server, connect, other_cafile
):
    server = make_server(tls='starttls')
    settings = server.settings(cafile=other_cafile, tls_verify=False)
    conn = connect(settings)
    conn.open()
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.tls


def test_wrong_host_name_refused(make_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='starttls', cert_hosts=('mail.example.com',))
    conn = connect(server.settings())
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert 'mismatch' in str(info.value).lower()
    assert server.messages == []


def test_implicit_tls_against_a_plain_server_is_a_configuration_fault(
    make_server, connect
):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server()
    conn = connect(server.settings(ssl=True))
    with pytest.raises(ConfigurationFault, match=r'TLS with 127\.0\.0\.1'):
        conn.open()


def test_client_certificate_is_presented(make_server, opened):
    server = make_server(tls='starttls', client_certs=True)
    certfile, keyfile = server.issue_client_cert('client.test')
    conn = opened(server, certfile=certfile, keyfile=keyfile)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.peer_cert is not None
    assert ('DNS', 'client.test') in received.peer_cert['subjectAltName']


def test_unreadable_client_certificate_fails_before_connecting(
    make_server, connect, tmp_path
):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='starttls')
    missing = str(tmp_path / 'missing.pem')
    conn = connect(server.settings(certfile=missing))
    with pytest.raises(ConfigurationFault, match='cannot load the TLS files'):
        conn.open()
    assert server.connections == 0


# -- AUTH


def test_auth_over_starttls(make_server, opened):
    server = make_server(tls='starttls', auth={'user': PASSWORD})
    conn = opened(server, username='user', password=PASSWORD)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.login == 'user'
    assert received.tls
    assert server.auth_attempts == [('user', True, True)]


def test_auth_over_implicit_tls(make_server, opened):
    server = make_server(tls='implicit', auth={'user': PASSWORD})
    conn = opened(server, username='user', password=PASSWORD)
    conn.send(_envelope(), DATA)
    assert server.wait_for(1)[0].login == 'user'


def test_auth_never_sent_before_tls(make_server, opened):
    # Peer defect pinned: AUTH sent in clear. This lax relay offers AUTH
    # before STARTTLS; the client must still wait for TLS.
    server = make_server(
        tls='starttls', auth={'user': PASSWORD}, auth_require_tls=False
    )
    opened(server, username='user', password=PASSWORD)
    verbs = [(verb, tls) for _, verb, tls in server.commands]
    assert verbs.index(('STARTTLS', False)) < verbs.index(('AUTH', True))
    assert ('AUTH', False) not in verbs
    assert server.auth_attempts == [('user', True, True)]


def test_auth_failure_never_shows_the_password(make_server, connect, caplog):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='starttls', auth={'user': 'the-right-one'})
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    error = info.value
    assert error.code == 535
    assert 'answered AUTH with 535' in str(error)
    assert not conn.alive
    for text in (str(error), repr(error), repr(error.args), repr(conn)):
        assert PASSWORD not in text
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
    assert server.messages == []


def test_auth_454_is_temporary(make_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(
        tls='starttls',
        auth={'user': PASSWORD},
        reply={'AUTH': '454 4.7.0 Temporary authentication failure'},
    )
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert info.value.code == 454


def test_auth_not_offered_is_a_configuration_fault(make_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(tls='starttls')  # no accounts: no AUTH
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault, match='during AUTH: SMTP AUTH extension'):
        conn.open()


def test_auth_in_plain_text_on_loopback(make_server, opened):
    server = make_server(auth={'user': PASSWORD}, auth_require_tls=False)
    conn = opened(server, username='user', password=PASSWORD)
    conn.send(_envelope(), DATA)
    [received] = server.wait_for(1)
    assert received.login == 'user'
    assert not received.tls


def test_auth_in_plain_text_to_remote_host_refused(connect):
    # Tests may only reach loopback addresses, so a stand-in for
    # smtplib.SMTP shows that no connection is even attempted.
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import ConfigurationFault

    attempts = []
    settings = MailSettings(host='mail.example.com', username='user', password=PASSWORD)
    conn = connect(settings, smtp_class=lambda *a, **kw: attempts.append(a))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert 'in plain text' in str(info.value)
    assert PASSWORD not in str(info.value)
    assert attempts == []


def test_530_on_mail_is_configuration_fault(make_server, opened):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_server(reply={'MAIL': '530 5.7.0 Authentication required'})
    conn = opened(server)
    with pytest.raises(ConfigurationFault) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 530


# -- connection failures


def test_a_name_lookup_that_hangs_is_given_up_at_the_timeout(
    connect, smtp_server, monkeypatch
):
    """A resolver waiting on unreachable name servers cannot be interrupted;
    the session gives up on it at mail.timeout instead of waiting for it.
    (The hang is made by replacing the lookup: no test may ask real name
    servers.)"""
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import TemporaryDeliveryError

    real = socket.getaddrinfo
    release = threading.Event()
    asked = []

    def hanging(host, port, *args, flags=0, **kw):
        if flags & socket.AI_NUMERICHOST:
            return real(host, port, *args, flags=flags, **kw)  # refused for a name
        asked.append(host)
        release.wait(20)
        return real('127.0.0.1', port, *args, **kw)

    monkeypatch.setattr(socket, 'getaddrinfo', hanging)
    settings = MailSettings(
        host='relay.example.com', port=smtp_server.port, timeout=0.5
    )
    conn = connect(settings)
    try:
        with pytest.raises(TemporaryDeliveryError) as info:
            conn.open()
    finally:
        release.set()  # the lookup's thread ends
    assert asked == ['relay.example.com']
    assert str(info.value) == (
        f'relay.example.com:{smtp_server.port} did not answer name lookup within 0.5s'
    )
    assert not conn.alive
    assert smtp_server.wait_for(0) == []  # nothing reached the relay


def test_a_name_that_cannot_be_looked_up_is_temporary(connect):
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import TemporaryDeliveryError

    # A space: no resolver asks a name server about it.
    conn = connect(MailSettings(host='no such host', port=25, timeout=2))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert str(info.value).startswith('cannot reach no such host:25 (name lookup)')


def test_a_name_is_looked_up_and_connected(connect, smtp_server):
    conn = connect(smtp_server.settings(host='localhost'))
    conn.open()
    assert conn.alive


def test_connection_refused_is_temporary(connect):
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import TemporaryDeliveryError

    # Bound but not listening: connecting is refused, and no other
    # process can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        conn = connect(MailSettings(host='127.0.0.1', port=port, timeout=2))
        with pytest.raises(TemporaryDeliveryError) as info:
            conn.open()
    assert str(info.value).startswith(f'cannot reach 127.0.0.1:{port} (connect)')
    assert info.value.code is None
    assert not conn.alive


def test_greeting_timeout_is_temporary(make_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(delay={'CONNECT': 2.0})
    conn = connect(server.settings(timeout=0.3))
    with pytest.raises(TemporaryDeliveryError, match=r'did not answer connect'):
        conn.open()


def test_tls_handshake_timeout_is_temporary(make_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    # A plain server that is slow to greet never answers the ClientHello.
    server = make_server(delay={'CONNECT': 2.0})
    conn = connect(server.settings(ssl=True, timeout=0.3))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert str(info.value) == (
        f'127.0.0.1:{server.port} did not answer connect within 0.3s'
    )


def test_timeout_waiting_for_data_reply(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(delay={'DATA': 2.0})
    conn = opened(server, timeout=0.3)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert str(info.value) == (
        f'127.0.0.1:{server.port} did not answer DATA within 0.3s'
    )
    assert not info.value.permanent
    assert not conn.alive


def test_dropped_connection_is_temporary_and_not_alive(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(drop_at='DATA')
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert 'closed the connection during DATA' in str(info.value)
    assert not conn.alive
    assert server.messages == []
    server.drop_at = None
    conn.open()
    conn.send(_envelope(), DATA)
    assert len(server.wait_for(1)) == 1
    assert server.connections == 2


def test_drop_at_mail_is_temporary_and_ends_the_session(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(drop_at='MAIL')
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError, match='during MAIL FROM'):
        conn.send(_envelope(), DATA)
    assert not conn.alive


# -- per-message replies


def test_4xx_on_mail_is_temporary_and_connection_stays_usable(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'MAIL': '451 4.3.0 try later'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 451
    assert str(info.value) == (
        f'127.0.0.1:{server.port} answered MAIL FROM with 451 4.3.0 try later'
    )
    assert conn.alive
    server.reply = {}
    conn.send(_envelope(), DATA)
    assert len(server.wait_for(1)) == 1
    assert server.connections == 1


def test_5xx_on_mail_is_permanent(make_server, opened):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server(reply={'MAIL': ['550 5.7.1 sender rejected']})
    conn = opened(server)
    with pytest.raises(PermanentDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 550
    assert info.value.permanent
    assert conn.alive
    conn.send(_envelope(), DATA)  # the fault applied once only
    assert len(server.wait_for(1)) == 1


def test_unexpected_reply_is_temporary(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'MAIL': 'what?'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == -1


def test_overlong_reply_is_temporary(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'MAIL': '550 ' + 'x' * 9000})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert 'unreadable reply to MAIL FROM: Line too long' in str(info.value)
    assert not conn.alive


def test_all_recipients_refused_permanently(make_server, opened):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server(
        rcpt_reply={
            'a@example.com': '550 5.1.1 no such user',
            'b@example.com': '553 5.1.3 bad address',
        }
    )
    conn = opened(server)
    with pytest.raises(PermanentDeliveryError) as info:
        conn.send(_envelope('a@example.com', 'b@example.com'), DATA)
    assert info.value.code == 550
    assert info.value.recipients == {
        'a@example.com': (550, '5.1.1 no such user'),
        'b@example.com': (553, '5.1.3 bad address'),
    }
    assert 'refused every recipient: a@example.com (550' in str(info.value)
    assert conn.alive
    assert server.messages == []


def test_all_recipients_refused_one_temporarily(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(
        rcpt_reply={
            'a@example.com': '550 5.1.1 no such user',
            'b@example.com': '450 4.2.1 mailbox busy',
        }
    )
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope('a@example.com', 'b@example.com'), DATA)
    assert info.value.code == 450
    assert set(info.value.recipients) == {'a@example.com', 'b@example.com'}


def test_partial_refusal_is_returned_and_logged(make_server, opened, caplog):
    server = make_server(rcpt_reply={'bad@example.com': '550 5.1.1 no such user'})
    conn = opened(server)
    refused = conn.send(_envelope('good@example.com', 'bad@example.com'), DATA)
    assert refused == {'bad@example.com': (550, '5.1.1 no such user')}
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ['good@example.com']
    assert 'refused bad@example.com (550 5.1.1 no such user)' in caplog.text


@pytest.mark.parametrize('garbled', ['a@example.com', 'b@example.com'])
def test_unreadable_rcpt_reply_is_temporary_and_ends_the_session(
    make_server, opened, garbled
):
    # Not a refusal: the session may be out of step (a pipelined reply
    # read as another command's), and the recipient is not refused for
    # good nor dropped while the others get the message.
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(rcpt_reply={garbled: 'what?'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope('a@example.com', 'b@example.com'), DATA)
    assert 'RCPT TO' in str(info.value)
    assert info.value.recipients == {}
    assert not conn.alive
    assert server.messages == []


def test_421_on_rcpt_closes(make_server, opened, mode):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(rcpt_reply={'a@example.com': '421 4.3.2 shutting down'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope('a@example.com', 'b@example.com'), DATA)
    assert info.value.code == 421
    assert info.value.recipients == {'a@example.com': (421, '4.3.2 shutting down')}
    assert not conn.alive
    verbs = [v for _, v, _ in server.commands if v not in ('EHLO', 'QUIT')]
    assert verbs[:2] == ['MAIL', 'RCPT']
    if pipelines(mode):  # b and DATA went in the same write as a
        assert set(verbs[2:]) <= {'RCPT', 'DATA'}
    else:  # b not tried
        assert verbs == ['MAIL', 'RCPT']


def test_421_on_mail_closes(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'MAIL': '421 4.3.2 closing'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 421
    assert 'answered MAIL FROM with 421 4.3.2 closing' in str(info.value)
    assert not conn.alive
    assert server.messages == []


def test_line_break_in_an_envelope_address_is_permanent(make_server, opened):
    # Queue files are plain JSON: a hand-edited one must not inject commands.
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server()
    conn = opened(server)
    with pytest.raises(PermanentDeliveryError, match='holds a line break'):
        conn.send(_envelope('a@example.com\r\nRSET'), DATA)
    assert conn.alive
    assert 'MAIL' not in [v for _, v, _ in server.commands]


def test_5xx_after_data_is_permanent(make_server, opened):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server(reply={'DATA': ['554 5.7.1 looks like spam']})
    conn = opened(server)
    with pytest.raises(PermanentDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 554
    assert 'answered DATA with 554 5.7.1 looks like spam' in str(info.value)
    assert conn.alive
    conn.send(_envelope(), DATA)
    assert len(server.wait_for(1)) == 1


def test_4xx_to_data_command_resets_the_session(make_server, opened):
    # smtplib does not RSET when DATA itself is refused; we do.
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'DATA-COMMAND': ['451 4.3.0 not now']})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 451
    conn.send(_envelope('next@example.com'), DATA)
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ['next@example.com']
    assert 'RSET' in [v for _, v, _ in server.commands]


def test_421_after_data_closes(make_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_server(reply={'DATA': '421 4.3.2 bye'})
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert info.value.code == 421
    assert not conn.alive


# -- QUIT


def test_quit_dropped_after_acceptance_counts_as_sent(make_server, connect, caplog):
    server = make_server(drop_at='QUIT')
    conn = connect(server.settings())
    with conn:
        assert conn.send(_envelope(), DATA) == {}
    assert not conn.alive
    assert len(server.wait_for(1)) == 1
    assert 'QUIT to 127.0.0.1' in caplog.text


def test_quit_refused_after_acceptance_counts_as_sent(make_server, opened):
    server = make_server(reply={'QUIT': '500 5.5.1 no'})
    conn = opened(server)
    conn.send(_envelope(), DATA)
    conn.close()
    conn.close()  # twice is harmless
    assert len(server.wait_for(1)) == 1


# -- SMTPUTF8


def test_smtputf8_used_when_offered(make_server, opened):
    server = make_server()
    conn = opened(server)
    conn.send(_envelope('jörg@exämple.com'), UTF8_DATA)
    [received] = server.wait_for(1)
    assert received.smtputf8
    assert received.rcpt_tos == ['jörg@exämple.com']
    assert received.data == UTF8_DATA
    assert received.message['To'] == 'jörg@exämple.com'


def test_smtputf8_not_offered_is_permanent(make_server, opened):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server(smtputf8=False)
    conn = opened(server)
    with pytest.raises(PermanentDeliveryError) as info:
        conn.send(_envelope('ok@example.com', 'jörg@exämple.com'), UTF8_DATA)
    assert str(info.value) == (
        f'the relay 127.0.0.1:{server.port} does not offer SMTPUTF8, '
        'needed for jörg@exämple.com'
    )
    assert conn.alive
    assert 'MAIL' not in [v for _, v, _ in server.commands]


# -- a pipeline: several messages pushed over one session, one round trip each


def messages_to(*recipients):
    """``(key, envelope, data)`` for one message to each recipient, keyed by it."""
    return [(r, _envelope(r), DATA) for r in recipients]


def send_all(conn, messages, **kw):
    """Submit each message while the session lives, then finish: every
    outcome, in the order returned."""
    from pyramid_txmail.smtp import Pipeline

    pipeline = Pipeline(conn, **kw)
    outcomes = []
    for key, envelope, data in messages:
        outcomes += pipeline.submit(key, envelope, data)
        if not conn.alive:
            break
    outcomes += pipeline.finish()
    pipeline.abandon()
    return outcomes


@pytest.fixture
def opened_recording(connect):
    """``opened_recording(server, **settings)``: an open SMTPConnection to
    ``server`` and the list of the writes it makes from then on."""

    def make(server, **settings):
        writes: list[bytes] = []
        conn = connect(server.settings(**settings), smtp_class=recording_smtp(writes))
        conn.open()
        writes.clear()  # EHLO and the like
        return conn, writes

    return make


def test_pipeline_sends_content_with_the_next_messages_commands(
    make_smtp_server, opened_recording
):
    server = make_smtp_server()
    conn, writes = opened_recording(server)
    outcomes = send_all(conn, messages_to('a@example.com', 'b@example.com'))
    assert outcomes == [('a@example.com', {}), ('b@example.com', {})]
    assert len(writes) == 3
    assert writes[1].startswith(DATA.replace(b'\r\n.', b'\r\n..'))
    assert writes[1].endswith(b'RCPT TO:<b@example.com>\r\nDATA\r\n')
    assert [m.rcpt_tos for m in server.wait_for(2)] == [
        ['a@example.com'],
        ['b@example.com'],
    ]


def test_pipeline_outcome_comes_with_the_next_submission(make_smtp_server, opened):
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn = opened(server)
    pipeline = Pipeline(conn)
    assert repr(pipeline) == f'<Pipeline to 127.0.0.1:{server.port} ahead=True>'
    [(a, env_a, data), (b, env_b, _)] = messages_to('a@example.com', 'b@example.com')
    assert pipeline.submit(a, env_a, data) == []
    assert pipeline.submit(b, env_b, data) == [(a, {})]
    assert pipeline.finish() == [(b, {})]
    assert pipeline.finish() == []
    assert pipeline.abandon() == []
    assert conn.alive


def test_pipeline_without_reading_ahead_writes_each_content_apart(
    make_smtp_server, opened_recording
):
    server = make_smtp_server()
    conn, writes = opened_recording(server)
    messages = messages_to('a@example.com', 'b@example.com')
    assert len(send_all(conn, messages, ahead=False)) == 2
    assert len(writes) == 4
    assert len(server.wait_for(2)) == 2


def test_pipeline_message_that_cannot_go_does_not_stop_the_others(
    make_smtp_server, opened
):
    server = make_smtp_server()
    conn = opened(server)
    outcomes = send_all(conn, messages_to('bad\n@example.com', 'b@example.com'))
    assert 'line break' in str(outcomes[0][1])
    assert outcomes[1] == ('b@example.com', {})


def test_pipeline_gives_each_message_one_outcome_by_key(make_smtp_server, opened):
    # The middle message cannot go at all: it is answered at once, before
    # the one submitted before it, whose content was still to be written.
    server = make_smtp_server()
    conn = opened(server)
    messages = messages_to('a@example.com', 'bad\n@example.com', 'c@example.com')
    outcomes = send_all(conn, messages)
    assert sorted(key for key, _ in outcomes) == sorted(key for key, _, _ in messages)
    assert dict(outcomes)['a@example.com'] == {}
    assert dict(outcomes)['c@example.com'] == {}
    assert [m.rcpt_tos for m in server.wait_for(2)] == [
        ['a@example.com'],
        ['c@example.com'],
    ]


def test_pipeline_stops_when_the_session_dies(make_smtp_server, opened):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_smtp_server(drop_at='DATA')
    conn = opened(server)
    messages = messages_to('a@example.com', 'b@example.com')
    [(key, error)] = send_all(conn, messages, ahead=False)
    assert key == 'a@example.com'
    assert isinstance(error, TemporaryDeliveryError)
    assert not conn.alive


def test_pipeline_message_submitted_after_the_session_died_is_abandoned(
    make_smtp_server, opened
):
    # Its commands went with the content that ended the session: it was
    # not accepted, and has no outcome.
    from pyramid_txmail.smtp import Pipeline, TemporaryDeliveryError

    server = make_smtp_server(reply={'DATA': '421 4.3.0 closing'})
    conn = opened(server)
    pipeline = Pipeline(conn)
    [(a, env_a, data), (b, env_b, _), (c, env_c, _)] = messages_to(
        'a@example.com', 'b@example.com', 'c@example.com'
    )
    assert pipeline.submit(a, env_a, data) == []
    [(key, error)] = pipeline.submit(b, env_b, data)
    assert (key, type(error), error.code) == (a, TemporaryDeliveryError, 421)
    assert not conn.alive
    assert pipeline.submit(c, env_c, data) == []
    assert pipeline.finish() == []
    assert pipeline.abandon() == [b, c]
    conn.close()
    assert server.messages == []


def test_pipeline_write_that_fails_ends_the_session(make_smtp_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_smtp_server()
    broken = threading.Event()
    conn = connect(
        server.settings(), smtp_class=recording_smtp([], break_writes=broken)
    )
    conn.open()
    broken.set()  # our side can write no more
    [(_, error)] = send_all(conn, messages_to('a@example.com'))
    assert isinstance(error, TemporaryDeliveryError)
    assert not conn.alive


def test_pipeline_content_that_cannot_be_written_fails_its_message(
    make_smtp_server, connect
):
    import smtplib

    from pyramid_txmail.smtp import TemporaryDeliveryError

    class BreaksAtTheContent(smtplib.SMTP):
        # A real fault on a real socket: ours can write no more once the
        # commands went and the relay said 354.
        def send(self, s):
            if isinstance(s, bytes) and s.endswith(b'\r\n.\r\n'):
                self.sock.shutdown(socket.SHUT_WR)
            return super().send(s)

    server = make_smtp_server()
    conn = connect(server.settings(), smtp_class=BreaksAtTheContent)
    conn.open()
    [(key, error)] = send_all(conn, messages_to('a@example.com'))
    assert key == 'a@example.com'
    assert isinstance(error, TemporaryDeliveryError)
    assert not conn.alive
    assert server.messages == []


def test_pipeline_abandoning_a_message_in_flight_cuts_the_session(
    make_smtp_server, opened
):
    # The second message's commands went with the first's content; the
    # relay must not be left able to accept it.
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn = opened(server)
    pipeline = Pipeline(conn)
    [(a, env_a, data), (b, env_b, _)] = messages_to('a@example.com', 'b@example.com')
    assert pipeline.submit(a, env_a, data) == []
    assert pipeline.submit(b, env_b, data) == [(a, {})]
    assert pipeline.abandon() == [b]
    assert not conn.alive
    assert [m.rcpt_tos for m in server.wait_for(1)] == [['a@example.com']]


def test_pipeline_submission_that_raises_leaves_its_message_to_abandon(
    make_smtp_server, opened
):
    # Data that is not bytes (a bug upstream) breaks in the SMTP layer.
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn = opened(server)
    pipeline = Pipeline(conn)
    with pytest.raises(AttributeError):
        pipeline.submit('a', _envelope(), None)
    assert pipeline.abandon() == ['a']


def test_pipeline_late_outcome_comes_after_the_next_content(
    make_smtp_server, opened_recording
):
    # The reply to a content is read with the submission after the next,
    # so that the caller can work while the relay answers.
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn, writes = opened_recording(server)
    pipeline = Pipeline(conn, late=True)
    [(a, env_a, data), (b, env_b, _), (c, env_c, _)] = messages_to(
        'a@example.com', 'b@example.com', 'c@example.com'
    )
    assert pipeline.submit(a, env_a, data) == []
    assert pipeline.submit(b, env_b, data) == []
    assert writes[-1].endswith(b'RCPT TO:<b@example.com>\r\nDATA\r\n')
    assert pipeline.submit(c, env_c, data) == [(a, {})]
    assert pipeline.finish() == [(b, {}), (c, {})]
    assert pipeline.abandon() == []
    assert len(writes) == 4
    assert [m.rcpt_tos for m in server.wait_for(3)] == [
        ['a@example.com'],
        ['b@example.com'],
        ['c@example.com'],
    ]


def test_pipeline_settle_reads_only_the_reply_to_the_content(make_smtp_server, opened):
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn = opened(server)
    pipeline = Pipeline(conn, late=True)
    [(a, env_a, data), (b, env_b, _)] = messages_to('a@example.com', 'b@example.com')
    assert pipeline.settle() == []
    assert pipeline.submit(a, env_a, data) == []
    assert pipeline.settle() == []  # only its commands went
    assert pipeline.submit(b, env_b, data) == []
    assert pipeline.settle() == [(a, {})]
    assert pipeline.settle() == []
    # b's commands alone went: abandoning it cuts the session.
    assert pipeline.abandon() == [b]
    assert not conn.alive
    assert [m.rcpt_tos for m in server.wait_for(1)] == [['a@example.com']]


def test_pipeline_abandon_keeps_back_a_content_whose_reply_is_unread(
    make_smtp_server, opened, caplog
):
    # The relay may have accepted it: it is not among the messages
    # abandon() says were never accepted.
    from pyramid_txmail.smtp import Pipeline

    server = make_smtp_server()
    conn = opened(server)
    pipeline = Pipeline(conn, late=True)
    [(a, env_a, data), (b, env_b, _)] = messages_to('a@example.com', 'b@example.com')
    pipeline.submit(a, env_a, data)
    pipeline.submit(b, env_b, data)
    with caplog.at_level(logging.WARNING, 'pyramid_txmail.smtp'):
        assert pipeline.abandon() == [b]
    assert 'may have accepted it' in caplog.text
    assert not conn.alive
    assert [m.rcpt_tos for m in server.wait_for(1)] == [['a@example.com']]


def test_pipeline_late_reply_that_ends_the_session(make_smtp_server, opened):
    # The 421 to a's content is read late: b's commands went with that
    # content, c's not at all; neither was accepted, neither has an outcome.
    from pyramid_txmail.smtp import Pipeline, TemporaryDeliveryError

    server = make_smtp_server(reply={'DATA': '421 4.3.0 closing'})
    conn = opened(server)
    pipeline = Pipeline(conn, late=True)
    [(a, env_a, data), (b, env_b, _), (c, env_c, _)] = messages_to(
        'a@example.com', 'b@example.com', 'c@example.com'
    )
    assert pipeline.submit(a, env_a, data) == []
    assert pipeline.submit(b, env_b, data) == []
    [(key, error)] = pipeline.submit(c, env_c, data)
    assert (key, type(error), error.code) == (a, TemporaryDeliveryError, 421)
    assert not conn.alive
    assert pipeline.finish() == []
    assert pipeline.abandon() == [b, c]
    conn.close()
    assert server.messages == []


def test_pipeline_late_reply_that_ends_the_session_at_finish(make_smtp_server, opened):
    from pyramid_txmail.smtp import Pipeline, TemporaryDeliveryError

    server = make_smtp_server(reply={'DATA': '421 4.3.0 closing'})
    conn = opened(server)
    pipeline = Pipeline(conn, late=True)
    [(a, env_a, data), (b, env_b, _)] = messages_to('a@example.com', 'b@example.com')
    pipeline.submit(a, env_a, data)
    pipeline.submit(b, env_b, data)
    [(key, error)] = pipeline.finish()
    assert (key, type(error), error.code) == (a, TemporaryDeliveryError, 421)
    assert pipeline.abandon() == [b]
    conn.close()
    assert server.messages == []


@pytest.mark.parametrize('late', [False, True])
def test_pipeline_refused_content_leaves_the_session_in_step(
    make_smtp_server, opened, late
):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_smtp_server(reply={'DATA': ['554 5.6.0 no thanks']})
    conn = opened(server)
    messages = messages_to('a@example.com', 'b@example.com', 'c@example.com')
    outcomes = send_all(conn, messages, late=late)
    assert [key for key, _ in outcomes] == [key for key, _, _ in messages]
    assert isinstance(outcomes[0][1], PermanentDeliveryError)
    assert outcomes[1:] == [('b@example.com', {}), ('c@example.com', {})]
    assert conn.alive


@pytest.mark.parametrize('late', [False, True])
def test_pipeline_message_that_cannot_go_between_others(make_smtp_server, opened, late):
    server = make_smtp_server()
    conn = opened(server)
    messages = messages_to(
        'a@example.com', 'b@example.com', 'bad\n@example.com', 'd@example.com'
    )
    outcomes = send_all(conn, messages, late=late)
    assert sorted(key for key, _ in outcomes) == sorted(key for key, _, _ in messages)
    assert 'line break' in str(dict(outcomes)['bad\n@example.com'])
    assert [m.rcpt_tos for m in server.wait_for(3)] == [
        ['a@example.com'],
        ['b@example.com'],
        ['d@example.com'],
    ]


def test_pipeline_late_refused_recipients_go_on(make_smtp_server, opened):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_smtp_server(reply={'RCPT': ['550 5.1.1 no such user']})
    conn = opened(server)
    messages = messages_to('a@example.com', 'b@example.com', 'c@example.com')
    outcomes = send_all(conn, messages, late=True)
    assert sorted(key for key, _ in outcomes) == sorted(key for key, _, _ in messages)
    assert isinstance(dict(outcomes)['a@example.com'], PermanentDeliveryError)
    assert [m.rcpt_tos for m in server.wait_for(2)] == [
        ['b@example.com'],
        ['c@example.com'],
    ]


def test_pipeline_over_a_lock_step_relay_delivers_each_message(
    make_smtp_server, opened
):
    server = make_smtp_server(pipelining=False)
    conn = opened(server)
    messages = messages_to('a@example.com', 'b@example.com')
    assert send_all(conn, messages) == [
        ('a@example.com', {}),
        ('b@example.com', {}),
    ]


def test_pipeline_over_a_lock_step_relay_that_dies_stops(make_smtp_server, opened):
    server = make_smtp_server(pipelining=False, drop_at='DATA')
    conn = opened(server)
    messages = messages_to('a@example.com', 'b@example.com')
    assert [key for key, _ in send_all(conn, messages)] == ['a@example.com']


def test_pipeline_with_pipelining_turned_off_goes_lock_step(make_smtp_server, connect):
    # mail.pipelining = false: the relay offers PIPELINING, each command
    # still waits for its reply.
    from pyramid_txmail.settings import parse_settings

    server = make_smtp_server()
    settings = parse_settings(
        {
            'mail.host': server.host,
            'mail.port': str(server.port),
            'mail.pipelining': 'false',
        }
    )
    assert settings.pipelining is False
    writes: list[bytes] = []
    conn = connect(settings, smtp_class=recording_smtp(writes))
    conn.open()
    writes.clear()
    messages = messages_to('a@example.com', 'b@example.com')
    assert send_all(conn, messages) == [
        ('a@example.com', {}),
        ('b@example.com', {}),
    ]
    # MAIL, RCPT, DATA and the content apart, for each message.
    assert [line[:9] for line in writes[:3]] == [
        b'mail FROM',
        b'rcpt TO:<',
        b'data\r\n',
    ]
    assert writes[3].endswith(b'\r\n.\r\n')
    assert len(writes) == 8
    assert len(server.wait_for(2)) == 2


# -- what only a relay offering PIPELINING can do


def test_pipelining_sends_mail_rcpt_and_data_in_one_write(
    make_smtp_server, opened_recording
):
    server = make_smtp_server()
    conn, writes = opened_recording(server)
    conn.send(_envelope('a@example.com', 'b@example.com'), DATA)
    assert writes[0] == (
        b'MAIL FROM:<from@example.com> SIZE=153\r\n'
        b'RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n'
    )
    assert len(writes) == 2  # and the content
    [received] = server.wait_for(1)
    assert received.data == DATA


def test_pipelined_data_accepted_after_a_refused_mail_stays_in_step(
    make_smtp_server, opened
):
    # A relay answering DATA with 354 though MAIL failed gets a lone dot.
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_smtp_server(
        reply={'MAIL': ['451 4.3.0 later'], 'DATA-COMMAND': ['354 go on']}
    )
    conn = opened(server)
    with pytest.raises(TemporaryDeliveryError, match='MAIL FROM with 451'):
        conn.send(_envelope(), DATA)
    assert conn.alive
    conn.send(_envelope('next@example.com'), DATA)
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ['next@example.com']
    assert server.connections == 1


# -- the test server others rely on


def test_test_server_serves_several_processes_at_once(make_smtp_server):
    import subprocess
    import sys

    server = make_smtp_server()
    script = (
        'import sys\n'
        'from pyramid_txmail.message import Envelope\n'
        'from pyramid_txmail.settings import MailSettings\n'
        'from pyramid_txmail.smtp import SMTPConnection\n'
        'n, port = sys.argv[1], int(sys.argv[2])\n'
        "settings = MailSettings(host='127.0.0.1', port=port, timeout=5)\n"
        'with SMTPConnection(settings) as conn:\n'
        '    for i in range(10):\n'
        "        env = Envelope('f@example.com', (f'p{n}-{i}@example.com',))\n"
        "        conn.send(env, b'Subject: x\\r\\n\\r\\nbody\\r\\n')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', script, str(n), str(server.port)],
            cwd=Path(__file__).parent.parent,
        )
        for n in range(4)
    ]
    assert [p.wait(timeout=30) for p in procs] == [0, 0, 0, 0]
    received = server.wait_for(40)
    assert len(received) == 40
    assert server.connections == 4
    assert len({r.rcpt_tos[0] for r in received}) == 40


# -- make_ssl_context


def ssl_context_for(**kw):
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import make_ssl_context

    return make_ssl_context(MailSettings(**kw))


def test_ssl_context_verifies_by_default():
    import ssl

    context = ssl_context_for()
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_ssl_context_with_tls_verify_false_checks_nothing():
    import ssl

    context = ssl_context_for(tls_verify=False)
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_NONE


def test_ssl_context_with_unreadable_cafile_is_a_configuration_fault(tmp_path):
    from pyramid_txmail.smtp import ConfigurationFault

    with pytest.raises(ConfigurationFault, match=r'mail\.cafile='):
        ssl_context_for(cafile=str(tmp_path / 'nope.pem'))


# -- the errors


def test_delivery_errors_carry_code_recipients_and_permanence():
    from pyramid_txmail.smtp import (
        ConfigurationFault,
        DeliveryError,
        PermanentDeliveryError,
        TemporaryDeliveryError,
    )

    error = DeliveryError('x')
    assert (error.code, error.recipients, error.permanent) == (None, {}, False)
    assert TemporaryDeliveryError('x', code=451).code == 451
    assert PermanentDeliveryError('x').permanent
    assert not TemporaryDeliveryError('x').permanent
    assert not ConfigurationFault('x').permanent
    assert issubclass(ConfigurationFault, DeliveryError)


# -- the envelope as the command line carries it (second line of defence)


@pytest.mark.parametrize(
    'envelope',
    [
        # As versions before the fix wrote them into queue files.
        Envelope(
            'from@example.com',
            ('victim@attacker.example> ORCPT=rfc822;x@example.com',),
        ),
        Envelope('from@example.com', ('john doe@example.com',)),
        Envelope('from@example.com> NOTIFY=NEVER', ('to@example.com',)),
        Envelope('from@example.com', ('to@example.com', '<to@example.com>')),
        Envelope('from@example.com', ('"unterminated@example.com',)),
        Envelope('from@example.com', ('to@example.com\x00',)),
        Envelope('from@example.com', ('to@',)),
    ],
)
def test_envelope_address_that_would_break_the_command_line_is_permanent(
    make_server, connect, envelope
):
    from pyramid_txmail.smtp import PermanentDeliveryError

    server = make_server()
    with connect(server.settings()) as conn:
        with pytest.raises(PermanentDeliveryError, match='RFC 5321 mailbox'):
            conn.send(envelope, DATA)
        assert conn.alive
        conn.send(_envelope(), DATA)  # the session is still usable
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ['to@example.com']
    assert [v for _, v, _ in server.commands].count('MAIL') == 1


def test_quoted_mailboxes_go_out_as_given(make_server, connect):
    server = make_server()
    envelope = Envelope(
        '"bounce me"@example.com',
        ('"victim@attacker.example> ORCPT=rfc822;x"@example.com', '"a\\"b"@ex.com'),
    )
    with connect(server.settings()) as conn:
        conn.send(envelope, DATA)
    [received] = server.wait_for(1)
    assert received.mail_from == '"bounce me"@example.com'
    assert received.rcpt_tos == list(envelope.recipients)


def test_null_reverse_path_is_a_valid_sender(make_smtp_server, connect):
    server = make_smtp_server(pipelining=False)
    with connect(server.settings()) as conn:
        conn.send(_envelope(sender=''), DATA)
    [received] = server.wait_for(1)
    assert received.mail_from == '<>'  # as aiosmtpd records the null path


# -- a deadline for each phase, against a relay answering a byte at a time:
# mail.timeout bounds each phase as a whole, not each socket read


def assert_no_secret(secrets, *, errors=(), records=(), objects=()):
    """None of ``secrets`` is in the errors (their text, args, the exceptions
    they link to, their traceback frames' locals), the log records or the
    objects' attributes."""
    import traceback

    def check(text, where):
        for secret in secrets:
            assert secret not in text, f'{secret!r} found in {where}'

    todo, seen = list(errors), set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        check(f'{exc} {exc!r} {exc.args!r} {vars(exc)!r}', f'{type(exc).__name__}')
        check(''.join(traceback.format_exception(exc)), 'a printed traceback')
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if f'{os.sep}pyramid_txmail{os.sep}' in code.co_filename:  # not a test's
                for name, value in tb.tb_frame.f_locals.items():
                    check(repr(value), f'local {name} of {code.co_name}')
            tb = tb.tb_next
        todo += [exc.__cause__, exc.__context__]
    for record in records:
        if not record.name.startswith('pyramid_txmail'):
            continue  # the test server's own log shows what it received
        check(
            f'{record.getMessage()} {record.args!r} {record.exc_text}', 'a log record'
        )
    for obj in objects:
        check(repr(vars(obj)), repr(obj))


def _secrets(user: str, password: str) -> list[str]:
    """The password and every base64 form AUTH sends it in."""
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    u, p = user.encode(), password.encode()
    return [password, b64(p), b64(b'\0' + u + b'\0' + p), p.hex()]


@pytest.fixture
def relay():
    """``relay(*trickle, **options)``: a started TricklingRelay, stopped
    after the test."""
    from tests.smtpserver import TricklingRelay

    relays = []

    def make(*trickle, **kw):
        relay = TricklingRelay(trickle, **kw)
        relays.append(relay)
        return relay.__enter__()

    yield make
    for relay in relays:
        relay.__exit__(None, None, None)


def relay_settings(relay, **kw):
    """MailSettings reaching ``relay``, one second for each phase."""
    from pyramid_txmail.settings import MailSettings

    values = {'host': relay.host, 'port': relay.port, 'timeout': 1.0}
    values.update(kw)
    return MailSettings(**values)


@pytest.mark.parametrize(('stage', 'named'), [('CONNECT', 'connect'), ('EHLO', 'EHLO')])
def test_trickled_setup_fails_in_time(connect, relay, stage, named):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    trickling = relay(stage)
    conn = connect(relay_settings(trickling))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    # The relay trickles for 20 s: failing otherwise than "did not
    # answer" would mean the client waited for it.
    assert str(info.value) == (
        f'127.0.0.1:{trickling.port} did not answer {named} within 1.0s'
    )
    assert not conn.alive
    assert conn.timed_out


@pytest.mark.parametrize(('stage', 'named'), [('MAIL', 'MAIL FROM'), ('DATA', 'DATA')])
def test_trickled_reply_fails_in_time(connect, relay, mode, stage, named):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    offered, setting = MODES[mode]
    trickling = relay(stage, pipelining=offered)
    conn = connect(relay_settings(trickling, pipelining=setting))
    conn.open()
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.send(_envelope(), DATA)
    assert str(info.value) == (
        f'127.0.0.1:{trickling.port} did not answer {named} within 1.0s'
    )
    assert not info.value.permanent
    assert not conn.alive


def test_trickled_reply_under_tls_fails_in_time(connect, tmp_path, relay, smtp_ca):
    import ssl

    from pyramid_txmail.smtp import TemporaryDeliveryError

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    smtp_ca.issue_cert('127.0.0.1').configure_cert(context)
    cafile = tmp_path / 'ca.pem'
    smtp_ca.cert_pem.write_to_path(str(cafile))
    trickling = relay('DATA', tls_context=context)
    conn = connect(relay_settings(trickling, ssl=True, cafile=str(cafile)))
    conn.open()
    with pytest.raises(TemporaryDeliveryError, match='did not answer DATA within'):
        conn.send(_envelope(), DATA)


def test_a_slow_session_of_quick_phases_is_not_cut(connect, relay):
    # Every phase gets its own time: many quick ones add up to more.
    import time

    trickling = relay()
    conn = connect(relay_settings(trickling, timeout=1.0))
    conn.open()
    for _ in range(2):
        time.sleep(0.7)  # between phases, nothing is waited for
        assert conn.send(_envelope(), DATA) == {}
    assert conn.alive


def test_cut_ends_a_waiting_session_from_another_thread(connect, relay):
    import threading

    from pyramid_txmail.smtp import TemporaryDeliveryError

    trickling = relay('DATA')
    conn = connect(relay_settings(trickling, timeout=60))
    conn.open()
    cutter = threading.Thread(
        target=lambda: trickling.trickling.wait(30) and conn.cut()
    )
    cutter.start()
    try:
        with pytest.raises(TemporaryDeliveryError) as info:
            conn.send(_envelope(), DATA)
    finally:
        cutter.join(30)
    assert str(info.value) == (
        f'the session with 127.0.0.1:{trickling.port} was cut short during '
        'DATA: delivery is stopping'
    )
    assert not conn.alive
    assert not conn.timed_out


def test_a_cut_connection_cannot_open_again(connect, relay):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    trickling = relay()
    conn = connect(relay_settings(trickling, timeout=60))
    conn.cut()
    with pytest.raises(TemporaryDeliveryError, match='was cut short during'):
        conn.open()


# -- AUTH against a relay that trickles or garbles


def test_trickled_auth_fails_in_time_and_shows_no_secret(connect, caplog, relay):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    password = 'pä55-wörd-ñ'
    trickling = relay('AUTH', extensions=('AUTH PLAIN LOGIN',))
    conn = connect(relay_settings(trickling, username='user', password=password))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert str(info.value) == (
        f'127.0.0.1:{trickling.port} did not answer AUTH within 1.0s'
    )
    assert_no_secret(
        _secrets('user', password),
        errors=[info.value],
        records=caplog.records,
    )


def test_garbled_auth_challenge_is_a_configuration_fault(connect, relay):
    # CRAM-MD5's challenge must be base64.
    from pyramid_txmail.smtp import ConfigurationFault

    trickling = relay(
        extensions=('AUTH CRAM-MD5',), replies={'AUTH': '334 %%% not base64'}
    )
    conn = connect(relay_settings(trickling, username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert str(info.value) == (f'AUTH with 127.0.0.1:{trickling.port} failed: Error')
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_no_secret(_secrets('user', PASSWORD), errors=[info.value])


def test_endless_auth_challenges_are_cancelled(connect, relay):
    from pyramid_txmail.smtp import ConfigurationFault

    trickling = relay(
        extensions=('AUTH PLAIN',),
        replies={'AUTH': '334 ', '*': '501 5.7.0 Auth aborted'},
    )
    conn = connect(relay_settings(trickling, username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert info.value.code == 501
    assert 'answered AUTH with 501 5.7.0: the login as' in str(info.value)


def test_relay_offering_no_known_auth_mechanism_is_a_configuration_fault(
    connect, relay
):
    from pyramid_txmail.smtp import ConfigurationFault

    trickling = relay(extensions=('AUTH XOAUTH2 GSSAPI',))
    conn = connect(relay_settings(trickling, username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert str(info.value) == (
        f'127.0.0.1:{trickling.port} offers AUTH XOAUTH2 GSSAPI, none of '
        'which pyramid_txmail speaks (CRAM-MD5, PLAIN, LOGIN)'
    )


# -- AUTH with UTF-8 credentials, and nothing that holds them escapes


@pytest.mark.parametrize('mechanism', ['PLAIN', 'LOGIN', 'CRAM-MD5'])
def test_non_ascii_password_logs_in(make_smtp_server, opened, mechanism):
    # smtplib encodes AUTH as ASCII: its UnicodeEncodeError escaped,
    # holding the password in its args.
    password = 'pässwörd-ñ-密码'
    server = make_smtp_server(
        tls='starttls', auth={'jörg': password}, auth_mechanisms=(mechanism,)
    )
    conn = opened(server, username='jörg', password=password)
    conn.send(_envelope(), DATA)
    assert server.wait_for(1)[0].login == 'jörg'
    assert server.auth_attempts == [('jörg', True, True)]


@pytest.mark.parametrize('mechanism', ['PLAIN', 'LOGIN', 'CRAM-MD5'])
def test_wrong_password_is_refused_with_each_mechanism(
    make_smtp_server, connect, mechanism
):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_smtp_server(
        tls='starttls', auth={'user': 'right'}, auth_mechanisms=(mechanism,)
    )
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert info.value.code == 535
    assert server.auth_attempts == [('user', True, False)]


def test_relay_echoing_the_credentials_shows_none_of_them(
    make_smtp_server, connect, caplog
):
    from pyramid_txmail.events import MailFailed
    from pyramid_txmail.smtp import ConfigurationFault

    password = 'pässwörd-ñ'
    secrets = _secrets('user', password)
    server = make_smtp_server(
        tls='starttls',
        auth={'user': password},
        reply={'AUTH': f'535 5.7.8 bad credentials: {" ".join(secrets)}'},
    )
    conn = connect(server.settings(username='user', password=password))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    error = info.value
    assert str(error) == (
        f'127.0.0.1:{server.port} answered AUTH with 535 5.7.8: the login as '
        "'user' was refused (the reply text is not shown: a relay may echo "
        'the credentials)'
    )
    assert error.__cause__ is None and error.__context__ is None
    event = MailFailed('<1@test>', DATA, error, permanent=False)
    assert_no_secret(
        secrets,
        errors=[error],
        records=caplog.records,
        objects=[event, conn],
    )


@pytest.mark.parametrize('mechanism', ['PLAIN', 'LOGIN', 'CRAM-MD5'])
def test_auth_refused_at_once_with_each_mechanism(make_smtp_server, connect, mechanism):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_smtp_server(
        tls='starttls',
        auth={'user': PASSWORD},
        auth_mechanisms=(mechanism,),
        reply={'AUTH': '535 5.7.8 no'},
    )
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault, match=r'answered AUTH with 535 5\.7\.8'):
        conn.open()


def test_relay_taking_no_mechanism_is_a_configuration_fault(make_smtp_server, connect):
    from pyramid_txmail.smtp import ConfigurationFault

    server = make_smtp_server(
        tls='starttls',
        auth={'user': PASSWORD},
        reply={'AUTH': '504 5.5.4 unrecognized authentication type'},
    )
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(ConfigurationFault, match=r'answered AUTH with 504 5\.5\.4'):
        conn.open()
    assert [v for _, v, _ in server.commands].count('AUTH') == 2


def test_first_mechanism_not_taken_tries_the_next(make_smtp_server, opened):
    server = make_smtp_server(
        tls='starttls',
        auth={'user': PASSWORD},
        reply={'AUTH': ['504 5.5.4 unrecognized authentication type']},
    )
    opened(server, username='user', password=PASSWORD)
    assert server.auth_attempts == [('user', True, True)]  # with LOGIN


def test_421_to_auth_is_temporary_and_closes(make_smtp_server, connect):
    from pyramid_txmail.smtp import TemporaryDeliveryError

    server = make_smtp_server(
        tls='starttls', auth={'user': PASSWORD}, reply={'AUTH': '421 4.3.2 bye'}
    )
    conn = connect(server.settings(username='user', password=PASSWORD))
    with pytest.raises(TemporaryDeliveryError) as info:
        conn.open()
    assert info.value.code == 421
    assert 'answered AUTH with 421 4.3.2' in str(info.value)
    assert not conn.alive


@pytest.mark.parametrize(
    ('field', 'problem'),
    [
        ('password', 'cannot be encoded as UTF-8'),
        ('username', 'cannot be encoded as UTF-8'),
        ('password', 'holds a NUL character'),
    ],
)
def test_credentials_that_cannot_be_sent_are_refused_before_connecting(
    make_smtp_server, connect, caplog, field, problem
):
    # A lone surrogate comes from an undecodable byte in the environment.
    from pyramid_txmail.smtp import ConfigurationFault

    bad = 'se\udcffcret-9' if 'UTF-8' in problem else 'se\x00cret-9'
    credentials = {'username': 'user', 'password': PASSWORD, field: bad}
    server = make_smtp_server(tls='starttls', auth={'user': PASSWORD})
    conn = connect(server.settings(**credentials))
    with pytest.raises(ConfigurationFault) as info:
        conn.open()
    assert str(info.value) == f'mail.{field} {problem}' + (
        ' (it holds a lone surrogate); not logging in'
        if 'UTF-8' in problem
        else ', which AUTH cannot carry; not logging in'
    )
    assert info.value.__context__ is None
    assert server.connections == 0
    if field == 'password':  # a username may be shown, e.g. by MailSettings
        assert_no_secret([bad, 'cret-9'], errors=[info.value], records=caplog.records)


# -- the TCP connect is inside the setup phase's deadline


@pytest.fixture
def unanswered_port():
    """A port on 127.0.0.1 whose listener never answers a connect: its
    accept queue is full, so the kernel drops further SYNs."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(('127.0.0.1', port), timeout=5)
    yield port
    filler.close()
    listener.close()


def _open_in_thread(conn):
    outcome = []

    def run():
        try:
            conn.open()
        except Exception as exc:  # the outcome under test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_connect_nobody_answers_fails_within_the_timeout(connect, unanswered_port):
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import TemporaryDeliveryError

    conn = connect(MailSettings(host='127.0.0.1', port=unanswered_port, timeout=0.5))
    thread, outcome = _open_in_thread(conn)
    thread.join(20)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, TemporaryDeliveryError)
    assert (
        str(error) == f'127.0.0.1:{unanswered_port} did not answer connect within 0.5s'
    )


def test_a_cut_ends_a_connect_nobody_answers(connect, unanswered_port):
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import TemporaryDeliveryError

    # mail.timeout is an hour: only the cut can end the connect.
    conn = connect(MailSettings(host='127.0.0.1', port=unanswered_port, timeout=3600.0))
    conn.cut(0.5)
    thread, outcome = _open_in_thread(conn)
    thread.join(20)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, TemporaryDeliveryError)
    assert 'was cut short during connect' in str(error)


# -- a relay whose reply to MAIL cannot be read


class _GarbledMailRelay:
    """One session on 127.0.0.1 that answers MAIL with a line without a
    code (but takes the sender), RCPT with 250, DATA with 354, and keeps
    every message content it is sent."""

    def __init__(self):
        self._listener = socket.create_server(('127.0.0.1', 0))
        self._listener.settimeout(10)
        self.port = self._listener.getsockname()[1]
        self.contents: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            client, _ = self._listener.accept()
        except OSError:  # closed by stop()
            return
        with client, contextlib.suppress(OSError):  # the client hung up
            client.settimeout(10)
            f = client.makefile('rb')
            client.sendall(b'220 relay\r\n')
            for _ in range(50):  # bounded: a handful of commands
                line = f.readline()
                verb = line[:4].upper()
                if not line or verb == b'QUIT':
                    return
                if verb == b'EHLO':
                    client.sendall(b'250-relay\r\n250 PIPELINING\r\n')
                elif verb == b'MAIL':
                    client.sendall(b'what?\r\n')
                elif verb == b'DATA':
                    client.sendall(b'354 go ahead\r\n')
                    content = b''
                    while (part := f.readline()) not in (b'.\r\n', b''):
                        content += part
                    if part != b'.\r\n':
                        return  # cut off: not a message
                    self.contents.append(content)
                    client.sendall(b'250 queued\r\n')
                else:
                    client.sendall(b'250 OK\r\n')

    def stop(self):
        self._listener.close()
        self._thread.join(15)


def test_unreadable_mail_reply_sends_no_empty_message():
    # The relay may have taken the sender: answering its 354 with a lone dot
    # would deliver an empty message to the recipients.
    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import SMTPConnection, TemporaryDeliveryError

    relay = _GarbledMailRelay()
    conn = SMTPConnection(MailSettings(host='127.0.0.1', port=relay.port))
    try:
        conn.open()
        with pytest.raises(TemporaryDeliveryError) as info:
            conn.send(_envelope('a@example.com'), DATA)
        assert 'MAIL FROM' in str(info.value)
        assert not conn.alive
    finally:
        conn.close()
        relay.stop()
    assert relay.contents == []


def test_a_deadline_thread_that_could_not_start_is_started_by_the_next_session(
    smtp_server,
):
    # Starting a thread fails while the process is at a limit (a container's
    # pids.max, memory): that session cannot be bounded and fails to open,
    # as a temporary failure. Sessions after it must still get a watchdog:
    # a deadline no thread watches never fires.
    import gc

    from pyramid_txmail.settings import MailSettings
    from pyramid_txmail.smtp import SMTPConnection, TemporaryDeliveryError
    from tests.smtpserver import TricklingRelay

    gc.collect()  # sessions other tests dropped without close() end here
    for thread in threading.enumerate():
        if thread.name == 'pyramid_txmail-smtp-deadline':
            thread.join(5)
            assert not thread.is_alive()
    conn = SMTPConnection(smtp_server.settings())
    threading.stack_size(2**40)  # more than any thread can have: none starts
    try:
        with pytest.raises(TemporaryDeliveryError) as info:
            conn.open()
    finally:
        threading.stack_size(0)
    assert str(info.value) == (
        "cannot start the thread that bounds each SMTP phase (can't start new thread)"
    )
    assert not conn.alive
    with TricklingRelay(('DATA',), give_up=5.0) as relay:
        slow = SMTPConnection(
            MailSettings(host=relay.host, port=relay.port, timeout=0.5)
        )
        try:
            slow.open()
            with pytest.raises(TemporaryDeliveryError) as info:
                slow.send(_envelope(), DATA)
        finally:
            slow.close()
    assert str(info.value) == f'127.0.0.1:{relay.port} did not answer DATA within 0.5s'
