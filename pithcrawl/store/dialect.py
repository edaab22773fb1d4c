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
#: The first half of the session lock on the archive (the second: its schema's key):
#: each crawling node holds it shared, a command that must be the archive's only writer
#: (`migrate`) holds it alone. SQLite's `DB.lock` file.
WRITER_PROCESS_LOCK = WRITE_LOCK + 1
#: The first half of the session lock each crawling node holds on its name (the second:
#: `hashtext(schema || '/' || node)`): one process per node name, as on SQLite one per
#: archive.
NODE_LOCK = WRITE_LOCK + 2

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
    -- would also read 'now' or 'epoch'), and it answers NULL to anything else. Like
    -- SQLite's, the answer is in whole milliseconds.
    IF t IS NULL OR t !~ ('^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?'
                         '(Z|[+-]\d{2}:\d{2})?$') THEN
        RETURN NULL;
    END IF;
    RETURN round(extract(epoch FROM
               (CASE WHEN t ~ '(Z|[+-]\d{2}:\d{2})$' THEN t ELSE t || 'Z' END)::timestamptz)
                 * 1000) / 86400000.0 + 2440587.5;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

-- JSON is read as `json`, never `jsonb`: jsonb refuses the escape \u0000, which a
-- finding quoting a hostile document may hold (SQLite's JSON functions accept it).
CREATE FUNCTION json_valid(t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF t IS NULL THEN RETURN NULL; END IF;
    PERFORM t::json;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$;

CREATE FUNCTION pithcrawl_json_kind(j json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE json_typeof(j)
        WHEN 'string' THEN 'text'
        WHEN 'boolean' THEN btrim(j::text)
        WHEN 'number' THEN CASE WHEN btrim(j::text) ~ '^-?\d+$' THEN 'integer' ELSE 'real' END
        ELSE json_typeof(j) END
$$;

-- JSON text as PostgreSQL can take it apart: the escape \u0000 (which no text can hold,
-- and which PostgreSQL refuses to decode) read as \u2400, the visible symbol for NUL.
CREATE FUNCTION pithcrawl_json(t text) RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT replace(t, '\u0000', '\u2400')::json $$;

CREATE FUNCTION pithcrawl_json_text(j json) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN json_typeof(j) = 'string' THEN j #>> '{}' ELSE btrim(j::text) END
$$;

CREATE FUNCTION json_type(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT pithcrawl_json_kind(pithcrawl_json(t)) $$;

CREATE FUNCTION json_type(t text, path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pithcrawl_json_kind(pithcrawl_json(t) -> substr(path, 3)) WHERE path ~ '^\$\.[A-Za-z_]+$'
$$;

CREATE FUNCTION json_extract(t text, path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pithcrawl_json_text(pithcrawl_json(t) -> substr(path, 3)) WHERE path ~ '^\$\.[A-Za-z_]+$'
$$;

CREATE FUNCTION json_each(t text) RETURNS TABLE (key text, value text, type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (n - 1)::text, pithcrawl_json_text(e), pithcrawl_json_kind(e)
    FROM pg_catalog.json_array_elements(
        CASE WHEN json_typeof(pithcrawl_json(t)) = 'array' THEN pithcrawl_json(t)
             ELSE '[]'::json END
    ) WITH ORDINALITY AS a (e, n)
    UNION ALL
    SELECT k, pithcrawl_json_text(e), pithcrawl_json_kind(e)
    FROM pg_catalog.json_each(
        CASE WHEN json_typeof(pithcrawl_json(t)) = 'object' THEN pithcrawl_json(t)
             ELSE '{}'::json END
    ) AS o (k, e)
$$;
"""
