-- groups.name: a CHECK no rule predicts. items.sku: a unique index no rule predicts (the
-- application writes items too). items.qty: integer, fed from text, and under an exclusion
-- constraint. notes.body: varchar(11), which a cast to it would cut and an INSERT refuses.
CREATE TABLE groups (id uuid PRIMARY KEY, legacy_group_id bigint UNIQUE,
                     name text NOT NULL CHECK (length(name) <= 4));
CREATE TABLE items (id uuid PRIMARY KEY, legacy_item_id bigint UNIQUE,
                    group_id uuid REFERENCES groups (id), sku text, qty integer);
CREATE UNIQUE INDEX items_sku_key ON items (lower(sku));
-- An exclusion constraint no rule predicts, on some rows only: two items of one qty >= 2
-- collide.
ALTER TABLE items ADD CONSTRAINT items_qty_excl
    EXCLUDE USING gist (int4range(qty, qty, '[]') WITH &&) WHERE (qty >= 2);
CREATE TABLE notes (id uuid PRIMARY KEY, legacy_note_id bigint UNIQUE,
                    item_id uuid NOT NULL REFERENCES items (id), body varchar(11) NOT NULL);
CREATE TABLE tags (id uuid PRIMARY KEY, legacy_tag_id text UNIQUE,
                   item_id uuid NOT NULL REFERENCES items (id), label text NOT NULL);
CREATE TABLE logs (id uuid PRIMARY KEY, item_id uuid REFERENCES items (id), word text);
CREATE TABLE staff (id uuid PRIMARY KEY, legacy_person_id bigint UNIQUE);
CREATE TABLE guests (id uuid PRIMARY KEY, legacy_person_id bigint UNIQUE);
