CREATE TYPE mood AS ENUM ('a', 'b', 'c');
CREATE TABLE things (
    id uuid PRIMARY KEY, legacy_id bigint UNIQUE, k mood NOT NULL, ks mood[], d integer CHECK (d > 0),
    lbl varchar(40), tags text[], r int4range, period tstzrange, blob bytea, iv interval,
    m money, ip inet, seen timestamptz, amount numeric(10, 2), ratio float8, at timestamp,
    born date, body text, doc jsonb, twice numeric
);
CREATE TABLE readings (id uuid PRIMARY KEY, legacy_id bigint UNIQUE, note text, v numeric);
CREATE TABLE events (id uuid PRIMARY KEY, legacy_id bigint UNIQUE, note text);
CREATE TABLE words (id uuid PRIMARY KEY, legacy_code text UNIQUE, word text, k mood);
