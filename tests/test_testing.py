from __future__ import annotations

import transaction
from pyramid.config import Configurator

from pyramid_txmail import Message, get_mailer
from pyramid_txmail.events import MailSent


def message(subject='Hi'):
    return Message(
        subject=subject, sender='a@example.com', recipients=['b@example.com'], body='x'
    )


class TestDummyMailer:
    def _makeConfig(self, **settings):
        config = Configurator(settings=settings, autocommit=True)
        config.include('pyramid_txmail.testing')
        return config

    def test_outbox_filled_on_commit_in_order(self):
        mailer = get_mailer(self._makeConfig().registry)
        with transaction.manager:
            mailer.send(message('one'))
            assert mailer.outbox == []
            mailer.send(message('two'))
        assert [m.subject for m in mailer.outbox] == ['one', 'two']

    def test_abort_leaves_outbox_and_queue_empty(self):
        mailer = get_mailer(self._makeConfig().registry)
        transaction.begin()
        mailer.send(message())
        mailer.send_to_queue(message())
        transaction.abort()
        assert mailer.outbox == [] and mailer.queue == []

    def test_send_to_queue_fills_queue(self):
        mailer = get_mailer(self._makeConfig().registry)
        with transaction.manager:
            mailer.send_to_queue(message())
        assert [m.subject for m in mailer.queue] == ['Hi']
        assert mailer.outbox == []

    def test_send_immediately_goes_to_outbox_at_once(self):
        mailer = get_mailer(self._makeConfig().registry)
        transaction.begin()
        mailer.send_immediately(message())
        transaction.abort()
        assert len(mailer.outbox) == 1

    def test_events_fire_as_in_production(self):
        config = self._makeConfig()
        events = []
        config.add_subscriber(events.append, MailSent)
        mailer = get_mailer(config.registry)
        with transaction.manager:
            message_id = mailer.send(message())
        assert [e.message_id for e in events] == [message_id]

    def test_messages_still_validated(self):
        import pytest

        from pyramid_txmail import MailError

        mailer = get_mailer(self._makeConfig().registry)
        with pytest.raises(MailError):
            mailer.send(Message(subject='x', recipients=['b@example.com'], body='x'))

    def test_no_processor_thread_even_with_queue_path(self, tmp_path):
        import threading

        config = self._makeConfig(**{'mail.queue_path': str(tmp_path / 'q')})
        config.make_wsgi_app()
        names = [t.name for t in threading.enumerate()]
        assert 'pyramid_txmail-processor' not in names
        assert not (tmp_path / 'q').exists()
