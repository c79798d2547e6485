SELECT b.id AS _key,
       b.id AS legacy_book_id,
       b.author_id AS _author_id,
       b.status AS _status,
       b.title,
       b.isbn,
       b.price,
       b.published AT TIME ZONE 'UTC' AS published_at
FROM lib_book b
