"""The cron job, run with a test copy of development.ini."""

from shopapp.scripts.remind import main


def test_reminders_are_sent_in_one_transaction(ini_file, relay):
    main(['remind', ini_file, 'ann@example.com', 'bob@example.com'])
    messages = relay.wait_for(2)
    assert sorted(recipients for _, recipients, _ in messages) == [
        ['ann@example.com'],
        ['bob@example.com'],
    ]
    assert {sender for sender, _, _ in messages} == {'shop@example.com'}
    assert messages[0][2]['Subject'] == 'Your basket is waiting'
