-- A legacy schema with every kind of column: enums, domains, arrays, ranges, bytea, interval,
-- money, inet, timestamptz, a generated column; a partitioned and an inherited table; a
-- text-keyed table for encodings. ASCII only: the tests plant non-ASCII bytes themselves.
CREATE TYPE kind AS ENUM ('a', 'b', 'c');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN label AS varchar(40);
CREATE TABLE things (
    id integer PRIMARY KEY,
    k kind,
    ks kind[],
    d posint,
    lbl label,
    tags text[],
    r int4range,
    period tstzrange,
    blob bytea,
    iv interval,
    m money,
    ip inet,
    seen timestamptz,
    amount numeric(10, 2),
    ratio float8,
    at timestamp,
    born date,
    body text,
    doc json,
    twice numeric GENERATED ALWAYS AS (amount * 2) STORED
);
CREATE TABLE readings (id integer PRIMARY KEY, note text, v numeric) PARTITION BY RANGE (id);
CREATE TABLE readings_low PARTITION OF readings FOR VALUES FROM (1) TO (100);
CREATE TABLE readings_high PARTITION OF readings FOR VALUES FROM (100) TO (100000);
CREATE TABLE events (id integer PRIMARY KEY, note text);
CREATE TABLE events_archive () INHERITS (events);
CREATE TABLE words (code text PRIMARY KEY, word text, k kind);

INSERT INTO things (id, k, ks, d, lbl, tags, r, period, blob, iv, m, ip, seen, amount, ratio,
                    at, born, body, doc) VALUES
  (1, 'a', '{a,b}', 1, 'one', '{x,"y z"}', '[1,10)', '[2020-01-01 10:00+05,2020-01-02 00:00-03)',
   '\x00ff10', '1 day 02:03:04', 12.34, '10.0.0.1/8', '2020-06-01 12:00:00+02', 0.00, 0,
   '2020-01-01 00:00', '2020-01-01', 'plain', '{"a": 1}'),
  (2, 'b', '{}', 2, 'nan', NULL, 'empty', NULL, '', '-1 mons', -1.5, '::1', NULL, 'NaN',
   'NaN', NULL, NULL, NULL, '[1, 2]'),
  (3, 'c', NULL, NULL, NULL, '{}', '(,5]', '(,)', NULL, '0', 0, NULL, '2020-06-01 12:00:00+02',
   -0.00, '-0', NULL,
   NULL, '', 'null'),
  (4, 'a', '{c}', 4, 'edges', NULL, NULL, '[-infinity,infinity]', NULL, '1000000 years', NULL,
   NULL, '-infinity', 1, 'Infinity', 'infinity', '0044-03-15 BC', NULL, '{}'),
  (5, 'a', NULL, 5, 'big', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', 1, 1, NULL,
   '5874897-12-31', repeat('x', 1048576), NULL),
  (6, 'b', NULL, 6, 'nul json', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 2, 2, NULL,
   NULL, NULL, '{"a": "\u0000"}'),
  (7, 'b', NULL, 7, 'surrogate', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 2, 2, NULL,
   NULL, NULL, '["\ud800"]');
INSERT INTO readings VALUES (1, 'low', 1.5), (2, 'low', 'NaN'), (150, 'high', 'Infinity'),
  (151, 'high', '-Infinity');
INSERT INTO events VALUES (1, 'parent');
INSERT INTO events_archive VALUES (2, 'child'), (3, 'child');
INSERT INTO words VALUES ('plain', 'ascii', 'a');
