CREATE TABLE src_group (id integer PRIMARY KEY, name text);
CREATE TABLE src_item (id integer PRIMARY KEY, group_id integer, sku text, qty text, state text);
CREATE TABLE src_note (id integer PRIMARY KEY, item_id integer, body text);
