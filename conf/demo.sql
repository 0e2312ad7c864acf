-- batchd demo schema: chat sessions and their messages.
--
--   psql -v n_sessions=5000 -f conf/demo.sql      (5000 is the default)
--
-- Session ids are "s1" .. "sN". Every session has 0 to 9 messages, so the
-- "list conversations with their last message" query in conf/batchd.ini
-- has something to count. Re-running the file rebuilds the tables.
--
-- owner_id is the principal a session belongs to (a JWT's sub), for
-- access = owner and [list] page queries: here user_id as text. status
-- ('open', every fifth 'archived') is something for a list to filter on.
-- Both may be left out of an INSERT.

\set ON_ERROR_STOP on
\if :{?n_sessions}
\else
\set n_sessions 5000
\endif

BEGIN;

DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS sessions;

CREATE TABLE sessions (
    id         text PRIMARY KEY,
    user_id    bigint NOT NULL,
    title      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    owner_id   text,
    status     text NOT NULL DEFAULT 'open'
);

-- A principal's sessions newest first: the keyset order of a list's pages.
CREATE INDEX sessions_owner_created ON sessions (owner_id, created_at DESC, id DESC);

CREATE TABLE messages (
    id         bigserial PRIMARY KEY,
    session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    author     text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX messages_session_created ON messages (session_id, created_at);

INSERT INTO sessions (id, user_id, title, created_at, owner_id, status)
SELECT 's' || g,
       1 + (g * 7919) % 1000,
       'Conversation ' || g,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
       (1 + (g * 7919) % 1000)::text,
       CASE WHEN g % 5 = 0 THEN 'archived' ELSE 'open' END
FROM generate_series(1, :n_sessions) AS g;

INSERT INTO messages (session_id, author, body, created_at)
SELECT 's' || g,
       CASE WHEN k % 2 = 0 THEN 'user' ELSE 'assistant' END,
       'Message ' || k || ' of conversation ' || g,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute' + k * interval '5 seconds'
FROM generate_series(1, :n_sessions) AS g,
     generate_series(1, (g * 31) % 10) AS k;

COMMIT;

ANALYZE sessions;
ANALYZE messages;
