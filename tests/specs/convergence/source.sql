CREATE TABLE src_group (id integer PRIMARY KEY, name text);
CREATE TABLE src_item (id integer PRIMARY KEY, group_id integer, sku text, qty text, state text);
CREATE TABLE src_note (id integer PRIMARY KEY, item_id integer, body text);
-- No key at all (a log: a row is known by its content, identical rows are two rows), and a
-- declared key nothing enforces whose rows go to two models by kind.
CREATE TABLE src_log (item_id integer, word text);
CREATE TABLE src_person (id integer, kind text);
