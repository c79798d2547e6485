-- Tables with no reliable key (issue 21, item 3): a declared key that repeats, a composite
-- key that repeats, a table with no key at all, and a table whose key holds until a sync.
CREATE TABLE members (id integer, name text);  -- "id" is declared, but nothing enforces it
INSERT INTO members VALUES (1, 'ann'), (2, 'bob'), (3, 'cy'), (3, 'cy again'), (4, 'di'),
    (5, 'ed'), (5, 'ed'), (5, 'ed too');
CREATE TABLE lines (order_id integer, line_no integer, sku text);
INSERT INTO lines VALUES (1, 1, 'a'), (1, 2, 'b'), (1, 2, 'b'), (2, 1, 'c');
-- no key at all: a log, with two identical rows
CREATE TABLE visits (member_id integer, day date, note text);
INSERT INTO visits VALUES (1, '2024-01-01', 'first'), (1, '2024-01-01', 'first'),
    (2, '2024-01-02', NULL), (3, '2024-01-03', 'of a duplicate'), (4, '2024-01-04', '');
CREATE TABLE tags (code text, label text);  -- unique until a sync brings a second 'x'
INSERT INTO tags VALUES ('x', 'ex'), ('y', 'why');
-- one table, two models (by kind): a repeated key's fate is the first model's that yields
-- any of its rows (staff before guests), 12 across the two, 13 within guests
CREATE TABLE people (id integer, kind text, name text);
INSERT INTO people VALUES (10, 'staff', 'sam'), (11, 'guest', 'gus'), (12, 'staff', 'stan'),
    (12, 'guest', 'stan too'), (13, 'guest', 'gil'), (13, 'guest', 'gil too');
