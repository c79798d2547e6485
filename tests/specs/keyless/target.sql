CREATE TABLE members (id uuid PRIMARY KEY, legacy_id integer UNIQUE, name text);
CREATE TABLE lines (id uuid PRIMARY KEY, order_id integer, line_no integer, sku text);
CREATE TABLE visits (
    id uuid PRIMARY KEY, member_id uuid REFERENCES members (id), day date, note text
);
CREATE TABLE tags (id uuid PRIMARY KEY, legacy_code text UNIQUE, label text);
CREATE TABLE notes (id uuid PRIMARY KEY, who text, said text);
CREATE TABLE codes (id uuid PRIMARY KEY, legacy_code text UNIQUE, label text);
CREATE TABLE staff (id uuid PRIMARY KEY, legacy_id integer UNIQUE, name text);
CREATE TABLE guests (id uuid PRIMARY KEY, legacy_id integer UNIQUE, name text);
