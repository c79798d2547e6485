CREATE TABLE lib_author (id serial PRIMARY KEY, name text NOT NULL, country text, same_as integer);
CREATE TABLE lib_book (id serial PRIMARY KEY, author_id integer, title text, status text,
                       isbn text, price numeric(8,2), published timestamp);
INSERT INTO lib_author (id, name, country, same_as) VALUES
  (1, 'Ann', 'UK', NULL), (2, 'Bob', 'france', NULL), (3, 'Ann (dup)', 'UK', 1),
  (4, 'Cid', 'Atlantis', NULL), (5, 'Dee', 'uk', NULL);
INSERT INTO lib_book (id, author_id, title, status, isbn, price, published) VALUES
  (10, 1, 'One', 'published', 'isbn-1', 10.50, '2020-01-02 03:04:05'),
  (11, 3, 'Two', 'published', 'isbn-2', 0, '2021-01-01 00:00:00'),
  (12, 2, 'Draft', 'draft', 'isbn-3', 5, NULL),
  (13, 4, 'Lost', 'published', 'isbn-4', 5, NULL),
  (14, 99, 'Orphan', 'published', 'isbn-5', 5, NULL),
  (15, 5, 'Again', 'published', 'ISBN-1', 7, NULL),
  (16, 2, 'Cheap', 'published', 'isbn-6', -1, NULL),
  (17, 2, 'Fine', 'published', NULL, 3, NULL);
