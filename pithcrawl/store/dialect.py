"""The one place where the archive's SQL differs between SQLite and PostgreSQL.

The store's queries are written once, in the SQL both databases share, with SQLite's
parameters (`?`, `?N`). On PostgreSQL `translate` rewrites each statement once (cached):

- parameters become PostgreSQL's `$N` (a bare `?` numbered as SQLite numbers it: one
  more than the largest before it);
- SQLite's unary `+` that keeps a column off its index (`+suffix`) is dropped;
- `x IS NOT 'text'` (SQLite's null-safe comparison with a value) becomes
  `x IS DISTINCT FROM 'text'`;

`BEGIN IMMEDIATE` (SQLite's "take the write lock now") is `begin`: a `BEGIN` that takes
the archive's one transaction-level write lock (`WRITE_LOCK`), so writers take turns
exactly as on SQLite.

String literals, quoted names and comments are never rewritten. What cannot be
rewritten is provided instead: `COMPAT_FUNCTIONS` defines, in the archive's database,
the SQLite functions the queries call (`julianday`, `json_each`, `json_valid`,
`json_type`, `json_extract`) with SQLite's results for what pithcrawl stores.
Everything else in the queries is SQL both databases read alike; a query that is not
is written so (see `tests/test_store_backends.py`, which runs the store on both).
"""

from __future__ import annotations

import re
from functools import lru_cache

#: The first half of the advisory lock every PostgreSQL write transaction takes: one
#: writer at a time, as SQLite's `BEGIN IMMEDIATE`. The second half is the archive's
#: schema's (`hashtext(current_schema())`): archives in two schemas of one database are
#: two archives.
WRITE_LOCK = 0x70697468  # "pith"
#: The first half of the session lock the archive's one crawling process holds (SQLite's
#: `DB.lock` file).
WRITER_PROCESS_LOCK = WRITE_LOCK + 1

_TOKENS = re.compile(
    r"""
      (?P<literal>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*)
    | \?(?P<number>\d*)
    | (?<=[\s(,=])\+(?=[A-Za-z_])
    | (?P<is_not>\bIS\s+NOT)(?=\s+')
    """,
    re.VERBOSE | re.IGNORECASE,
)


def begin(schema_key: int) -> str:
    """PostgreSQL's `BEGIN IMMEDIATE` for the archive in the schema of `schema_key`."""
    return f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}, {schema_key})"


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`sql` (SQLite's dialect of the store's queries) as PostgreSQL reads it."""
    largest = 0

    def one(m: re.Match[str]) -> str:
        nonlocal largest
        if m.group("literal") is not None:
            return m.group(0)
        if m.group("is_not") is not None:
            return "IS DISTINCT FROM"
        number = m.group("number")
        if number is None:
            return ""  # a unary plus
        n = int(number) if number else largest + 1
        largest = max(largest, n)
        return f"${n}"

    return _TOKENS.sub(one, sql)


#: SQLite's functions the store's queries call, for PostgreSQL, with SQLite's results
#: for what pithcrawl stores (RFC 3339 times, JSON text). Created with the schema.
COMPAT_FUNCTIONS = r"""
CREATE FUNCTION julianday(t text) RETURNS double precision
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    -- SQLite reads YYYY-MM-DD[ T]HH:MM[:SS[.fff]][Z|+HH:MM]; so must this (PostgreSQL
    -- would also read 'now' or 'epoch'), and it answers NULL to anything else.
    IF t IS NULL OR t !~ ('^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?'
                         '(Z|[+-]\d{2}:\d{2})?$') THEN
        RETURN NULL;
    END IF;
    RETURN extract(epoch FROM
               (CASE WHEN t ~ '(Z|[+-]\d{2}:\d{2})$' THEN t ELSE t || 'Z' END)::timestamptz)
           / 86400.0 + 2440587.5;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

CREATE FUNCTION json_valid(t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF t IS NULL THEN RETURN NULL; END IF;
    PERFORM t::jsonb;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$;

CREATE FUNCTION pithcrawl_json_kind(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
        WHEN 'string' THEN 'text'
        WHEN 'boolean' THEN j::text
        WHEN 'number' THEN CASE WHEN j::text ~ '^-?\d+$' THEN 'integer' ELSE 'real' END
        ELSE jsonb_typeof(j) END
$$;

CREATE FUNCTION json_type(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT pithcrawl_json_kind(t::jsonb) $$;

CREATE FUNCTION json_type(t text, path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pithcrawl_json_kind(t::jsonb -> substr(path, 3)) WHERE path ~ '^\$\.[A-Za-z_]+$'
$$;

CREATE FUNCTION json_extract(t text, path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t::jsonb ->> substr(path, 3) WHERE path ~ '^\$\.[A-Za-z_]+$'
$$;

CREATE FUNCTION json_each(t text) RETURNS TABLE (key text, value text, type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (n - 1)::text, CASE WHEN jsonb_typeof(e) = 'string' THEN e #>> '{}' ELSE e::text END,
           pithcrawl_json_kind(e)
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t::jsonb) = 'array' THEN t::jsonb
                                   ELSE '[]'::jsonb END) WITH ORDINALITY AS a (e, n)
    UNION ALL
    SELECT k, CASE WHEN jsonb_typeof(e) = 'string' THEN e #>> '{}' ELSE e::text END,
           pithcrawl_json_kind(e)
    FROM jsonb_each(CASE WHEN jsonb_typeof(t::jsonb) = 'object' THEN t::jsonb
                         ELSE '{}'::jsonb END) AS o (k, e)
$$;
"""
