"""chatstore_write_batch(): the worker writes a whole batch in one statement

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

The rules are the ones worker/ingest/store.py describes; this is where they
run. Each step is one set-based statement, so the function costs a few plans
per batch, not one per event. It is VOLATILE (the default): under READ
COMMITTED every statement in it takes a fresh snapshot, which the last
comparison needs to see a row a concurrent worker committed while this one
waited for a lock. SECURITY INVOKER (the default too): it runs with the
caller's privileges on the tables, so EXECUTE on it grants nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "chatstore_write_batch(uuid[], varchar[], uuid[], varchar[], text[], jsonb, timestamptz[])"
)

# Outcomes while the function runs: NULL is "not decided yet".
# `v_writes` keeps the outcomes as they stood before the messages were
# inserted: an event still undecided there (a message) or archived was
# written, and so touches its conversation, unless it turned out a conflict.
CREATE = """
CREATE FUNCTION chatstore_write_batch(
    conversation_ids uuid[],
    user_ids varchar[],
    message_ids uuid[],
    roles varchar[],
    contents text[],
    metadata jsonb,
    ats timestamptz[]
) RETURNS TABLE (event integer, outcome text)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
AS $function$
DECLARE
    n constant integer := coalesce(cardinality(conversation_ids), 0);
    v_metadata jsonb[];
    v_outcome text[];
    v_writes text[];
    v_inserted uuid[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(user_ids) IS DISTINCT FROM n OR cardinality(message_ids) IS DISTINCT FROM n
       OR cardinality(roles) IS DISTINCT FROM n OR cardinality(contents) IS DISTINCT FROM n
       OR cardinality(ats) IS DISTINCT FROM n OR jsonb_array_length(metadata) IS DISTINCT FROM n
    THEN
        RAISE EXCEPTION 'chatstore_write_batch: the arguments hold different numbers of events';
    END IF;

    -- The metadata come as one JSON array; a JSON null is no metadata.
    v_metadata := ARRAY(
        SELECT nullif(m.value, 'null'::jsonb)
        FROM jsonb_array_elements(metadata) WITH ORDINALITY AS m(value, i)
        ORDER BY m.i
    );

    -- 1 and 2: an unknown user is refused; a message stored already is
    -- compared with the stored row (jsonb equality, timestamps as instants).
    SELECT array_agg(
        CASE
            WHEN u.id IS NULL THEN 'unknown_user'
            WHEN m.id IS NULL THEN NULL
            WHEN m.conversation_id = t.conversation_id
                 AND m.user_id = t.user_id
                 AND m.role = t.role
                 AND m.content = t.content
                 AND m.metadata IS NOT DISTINCT FROM t.metadata
                 AND m.created_at = t.at THEN 'duplicate'
            ELSE 'conflict'
        END ORDER BY t.i)
    INTO v_outcome
    FROM unnest(conversation_ids, user_ids, message_ids, roles, contents, v_metadata, ats)
        WITH ORDINALITY AS t(conversation_id, user_id, message_id, role, content, metadata, at, i)
    LEFT JOIN users AS u ON u.id = t.user_id
    LEFT JOIN messages AS m ON m.id = t.message_id;

    IF array_position(v_outcome, NULL) IS NULL THEN
        -- Nothing to write. If some events were stored already, perhaps by an
        -- attempt whose commit reached only the primary (its wait for a
        -- synchronous standby was cancelled), lock their conversations: a row
        -- lock is written to the WAL (a plain read is not), so this commit
        -- too waits for the standby, and the batch is acknowledged only once
        -- the standby has it. Id order: the lock order of every batch.
        IF array_position(v_outcome, 'duplicate') IS NOT NULL THEN
            PERFORM c.id FROM conversations AS c
            WHERE c.id IN (
                SELECT t.conversation_id FROM unnest(conversation_ids, v_outcome)
                    AS t(conversation_id, outcome)
                WHERE t.outcome = 'duplicate'
            )
            ORDER BY c.id
            FOR NO KEY UPDATE;
        END IF;
        RETURN QUERY SELECT t.i::integer, t.outcome
            FROM unnest(v_outcome) WITH ORDINALITY AS t(outcome, i);
        RETURN;
    END IF;

    -- 3: every conversation of the remaining events, inserted with the user
    -- of its first event (delivery order) or, if it exists, locked, in one
    -- statement in id order. DO UPDATE ... WHERE false updates nothing but
    -- locks the existing row. Two workers lock in the same order, so they
    -- cannot deadlock, and a conversation new to both gets exactly one
    -- owner: the second insert waits for the first and finds its row.
    INSERT INTO conversations AS c (id, user_id)
    SELECT DISTINCT ON (t.conversation_id) t.conversation_id, t.user_id
    FROM unnest(conversation_ids, user_ids, v_outcome) WITH ORDINALITY
        AS t(conversation_id, user_id, outcome, i)
    WHERE t.outcome IS NULL
    ORDER BY t.conversation_id, t.i
    ON CONFLICT (id) DO UPDATE SET status = c.status WHERE false;

    -- 4: the owners, read back (the rows are locked by us now). An event of
    -- another user is refused; so, conservatively, would be one whose
    -- conversation could not be read (it cannot happen: nothing deletes a
    -- row this transaction holds locked).
    SELECT array_agg(
        CASE
            WHEN t.outcome IS NOT NULL THEN t.outcome
            WHEN c.user_id IS DISTINCT FROM t.user_id THEN 'ownership_mismatch'
            WHEN t.message_id IS NULL THEN 'archived'
        END ORDER BY t.i)
    INTO v_outcome
    FROM unnest(conversation_ids, user_ids, message_ids, v_outcome) WITH ORDINALITY
        AS t(conversation_id, user_id, message_id, outcome, i)
    LEFT JOIN conversations AS c ON c.id = t.conversation_id AND t.outcome IS NULL;
    v_writes := v_outcome;

    -- 5: the messages, inserted in id order; of two with one id, only the
    -- earlier is tried (the later could only collide with it). An event is
    -- 'inserted' if it is the first of its id and that id came back from the
    -- insert; the others (the same id again in this batch, or a row a
    -- concurrent worker stored since step 2) stay undecided for the
    -- comparison below. Usually every id tried came back, which the counts
    -- show without looking any id up. No join between two of these derived
    -- sets: PostgreSQL's generic plans guess such sets at ten rows or one
    -- and would pair them in a nested loop, quadratic in the batch.
    IF array_position(v_outcome, NULL) IS NOT NULL THEN
        WITH inserted AS (
            INSERT INTO messages (id, conversation_id, user_id, role, content, metadata, created_at)
            SELECT DISTINCT ON (t.message_id)
                t.message_id, t.conversation_id, t.user_id, t.role, t.content, t.metadata, t.at
            FROM unnest(
                message_ids, conversation_ids, user_ids, roles, contents, v_metadata, ats,
                v_outcome
            ) WITH ORDINALITY
                AS t(message_id, conversation_id, user_id, role, content, metadata, at, outcome, i)
            WHERE t.outcome IS NULL
            ORDER BY t.message_id, t.i
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        SELECT coalesce(array_agg(inserted.id), '{}') INTO v_inserted FROM inserted;

        SELECT array_agg(
            CASE
                WHEN f.outcome IS NOT NULL THEN f.outcome
                WHEN f.first AND (f.firsts = cardinality(v_inserted)
                                  OR f.message_id = ANY(v_inserted)) THEN 'inserted'
            END ORDER BY f.i)
        INTO v_outcome
        FROM (
            SELECT s.outcome, s.i, s.message_id, s.first,
                   count(*) FILTER (WHERE s.first) OVER () AS firsts
            FROM (
                SELECT t.outcome, t.i, t.message_id,
                       t.outcome IS NULL AND row_number() OVER (
                           PARTITION BY t.outcome IS NULL, t.message_id ORDER BY t.i
                       ) = 1 AS first
                FROM unnest(message_ids, v_outcome) WITH ORDINALITY AS t(message_id, outcome, i)
            ) AS s
        ) AS f;

        -- The ones not inserted are stored now, visible to this statement's
        -- snapshot: identical is a duplicate, anything else (or, which cannot
        -- happen, no row at all) a conflict.
        IF array_position(v_outcome, NULL) IS NOT NULL THEN
            SELECT array_agg(
                CASE
                    WHEN t.outcome IS NOT NULL THEN t.outcome
                    WHEN m.conversation_id = t.conversation_id
                         AND m.user_id = t.user_id
                         AND m.role = t.role
                         AND m.content = t.content
                         AND m.metadata IS NOT DISTINCT FROM t.metadata
                         AND m.created_at = t.at THEN 'duplicate'
                    ELSE 'conflict'
                END ORDER BY t.i)
            INTO v_outcome
            FROM unnest(
                conversation_ids, user_ids, message_ids, roles, contents, v_metadata, ats,
                v_outcome
            ) WITH ORDINALITY
                AS t(conversation_id, user_id, message_id, role, content, metadata, at, outcome, i)
            LEFT JOIN messages AS m ON m.id = t.message_id AND t.outcome IS NULL;
        END IF;
    END IF;

    -- 6: each conversation's timestamps and status, from the events written,
    -- with LEAST/GREATEST (arrival order cannot matter) and a sticky archive.
    UPDATE conversations AS c SET
        created_at = least(c.created_at, f.first_at),
        updated_at = greatest(c.updated_at, f.last_at),
        status = CASE WHEN f.archived THEN 'archived' ELSE c.status END
    FROM (
        SELECT t.conversation_id AS id, min(t.at) AS first_at, max(t.at) AS last_at,
               bool_or(t.message_id IS NULL) AS archived
        FROM unnest(conversation_ids, message_ids, ats, v_writes, v_outcome)
            AS t(conversation_id, message_id, at, written, outcome)
        WHERE (t.written IS NULL OR t.written = 'archived') AND t.outcome <> 'conflict'
        GROUP BY t.conversation_id
    ) AS f
    WHERE c.id = f.id;

    RETURN QUERY SELECT t.i::integer, t.outcome
        FROM unnest(v_outcome) WITH ORDINALITY AS t(outcome, i);
END;
$function$
"""

COMMENT = (
    f"COMMENT ON FUNCTION {SIGNATURE} IS "
    "'Written by chatstore migration 0002: writes one batch of events, "
    "the rules of worker/ingest/store.py.'"
)


def upgrade() -> None:
    op.execute(CREATE)
    op.execute(COMMENT)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
