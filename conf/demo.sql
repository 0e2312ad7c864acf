-- batchd demo schema: chat sessions and their messages.
--
--   psql -v n_sessions=5000 -f conf/demo.sql      (5000 is the default)
--
-- Session ids are "s1" .. "sN". Every session has 0 to 9 messages, so the
-- "list conversations with their last message" query in conf/batchd.ini
-- has something to count. Re-running the file rebuilds the tables.

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
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id         bigserial PRIMARY KEY,
    session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    author     text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX messages_session_created ON messages (session_id, created_at);

INSERT INTO sessions (id, user_id, title, created_at)
SELECT 's' || g,
       1 + (g * 7919) % 1000,
       'Conversation ' || g,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute'
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
