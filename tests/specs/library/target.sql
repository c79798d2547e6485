CREATE TABLE authors (id uuid PRIMARY KEY, legacy_author_id bigint UNIQUE, name text NOT NULL,
                      country_code char(2) NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'));
CREATE TABLE books (id uuid PRIMARY KEY, legacy_book_id bigint UNIQUE,
                    author_id uuid NOT NULL REFERENCES authors (id), title text NOT NULL,
                    isbn text, price numeric(8,2) NOT NULL CHECK (price >= 0),
                    published_at timestamptz);
CREATE UNIQUE INDEX books_isbn_key ON books (lower(isbn));
CREATE TABLE loans (id uuid PRIMARY KEY, legacy_loan_id text UNIQUE,
                    book_id uuid NOT NULL REFERENCES books (id), member text NOT NULL);
-- A row the new application wrote itself: ferry must never touch it.
INSERT INTO authors (id, legacy_author_id, name, country_code)
VALUES ('00000000-0000-4000-8000-000000000001', NULL, 'App author', 'DE');
