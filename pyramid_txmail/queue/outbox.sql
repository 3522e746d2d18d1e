-- pyramid_txmail: the shared outbox (mail.queue_url). Idempotent: safe to run
-- again. `pyramid-txmail initdb CONFIG` runs it; teams with their own
-- migrations run it from one (see docs/scaling.rst).

CREATE TABLE IF NOT EXISTS txmail_outbox (
    id           bigserial PRIMARY KEY,
    message_id   text        NOT NULL,
    sender       text        NOT NULL,
    recipients   text[]      NOT NULL,
    subject      text,
    data         bytea       NOT NULL,
    -- queued | sending | deferred | held | failed | sent
    state        text        NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'sending', 'deferred', 'held',
                                  'failed', 'sent')),
    attempts     integer     NOT NULL DEFAULT 0,
    -- queued/deferred: the next attempt; sending: when the lease expires
    due          timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    lease_owner  text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- max_age counts from here (a retry of a failed message starts it again)
    queued_at    timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    relay_reply  text
);

-- The claim: the oldest due row among these states, in (due, id) order.
CREATE INDEX IF NOT EXISTS txmail_outbox_due
    ON txmail_outbox (due, id)
    WHERE state IN ('queued', 'deferred', 'sending');

-- Pruning the kept sent rows (mail.keep_sent).
CREATE INDEX IF NOT EXISTS txmail_outbox_sent
    ON txmail_outbox (sent_at)
    WHERE state = 'sent';

-- A configuration fault that paused sending (a refused login...), shared by
-- every processor: at most one row.
CREATE TABLE IF NOT EXISTS txmail_outbox_fault (
    id      integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    reason  text        NOT NULL,
    since   timestamptz NOT NULL DEFAULT now()
);
