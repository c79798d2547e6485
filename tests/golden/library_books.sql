-- expected
WITH _ferry_chunk AS MATERIALIZED (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_book_id", "c"."title" COLLATE "C", "c"."isbn" COLLATE "C", "c"."price", "c"."published_at", "c"."author_id"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 10 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 10 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"author_id\\" of relation \\"books\\" violates not-null constraint","null value in column \\"title\\" of relation \\"books\\" violates not-null constraint","null value in column \\"price\\" of relation \\"books\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,excluded,pending,excluded,quarantined,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,draft,NULL,parent_excluded,orphan_author,parent_quarantined,survivor_excluded,survivor_quarantined,missing_survivor,NULL,merged,not_null_violation,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, '{}'::text[] AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_book', (m._key)::text) END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_book_id")::bigint END AS "legacy_book_id", CASE
WHEN m._ferry_fate = 0 THEN (m."title")::text END AS "title", CASE
WHEN m._ferry_fate = 0 THEN (m."isbn")::text END AS "isbn", CASE
WHEN m._ferry_fate = 0 THEN (m."price")::numeric(8,2) END AS "price", CASE
WHEN m._ferry_fate = 0 THEN (m."published_at")::timestamp with time zone END AS "published_at", CASE
WHEN m._ferry_fate = 0 THEN (m._ferry_pu0)::uuid END AS "author_id"
FROM (SELECT m.*, "p0".target_uuid AS "_ferry_pu0", CASE
WHEN m."_ferry_r0" THEN 1
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') AND false THEN 2
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'excluded' THEN 3
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') THEN 4
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'quarantined' THEN 5
WHEN false THEN 6
WHEN false THEN 7
WHEN false THEN 8
WHEN false THEN 9
WHEN false THEN 10
WHEN "p0".target_uuid IS NULL THEN 11
WHEN m."title" IS NULL THEN 12
WHEN m."price" IS NULL THEN 13
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (_status = 'draft') AS "_ferry_r0"
FROM (SELECT b.id AS _key,
       b.id AS legacy_book_id,
       b.author_id AS _author_id,
       b.status AS _status,
       b.title,
       b.isbn,
       b.price,
       b.published AT TIME ZONE 'UTC' AS published_at
FROM lib_book b) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m
LEFT
JOIN "ferry"."ledger_authors" "p0" ON "p0".model = 'authors' AND "p0".source_key = "m"."_author_id"::text OFFSET 0) m OFFSET 0) c), _ferry_probed AS MATERIALIZED (SELECT y.*, CASE
WHEN y."_ferry_w0" AND NOT y."_ferry_d0" THEN (SELECT "id"
FROM "public"."books"
WHERE (lower(isbn)) = y."_ferry_u0_0" AND "id" IS DISTINCT
FROM y._ferry_uuid LIMIT 1) END AS "_ferry_h0"
FROM (SELECT x.*, x._ferry_i > 0 AS _ferry_bad, ('{check_violation}'::text[])[x._ferry_i] AS _ferry_rreason, ('{23514}'::text[])[x._ferry_i] AS _ferry_rstate, ( E'{"new row for relation \\"books\\" violates check constraint \\"books_price_check\\""}'::text[])[x._ferry_i] AS _ferry_rmessage, (lower(isbn)) AS "_ferry_u0_0", x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL AS "_ferry_w0", CASE
WHEN x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL THEN row_number() OVER (PARTITION BY x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL, (lower(isbn))
ORDER BY x._ferry_k) > 1
ELSE false END AS "_ferry_d0"
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((price >= (0)::numeric)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM _ferry_chunk x OFFSET 0) x OFFSET 0) y OFFSET 0)
SELECT v._ferry_key, v._ferry_n, v._ferry_k, v._ferry_f AS _ferry_fate, CASE v._ferry_f
WHEN -1 THEN 'quarantined'
WHEN -2 THEN 'blocked'
ELSE v._ferry_status END AS _ferry_status, CASE v._ferry_f
WHEN -1 THEN v._ferry_rr
WHEN -2 THEN NULL
ELSE v._ferry_reason END AS _ferry_reason, CASE
WHEN v._ferry_f < 0 THEN '{}'::text[]
ELSE v._ferry_repairs END AS _ferry_repairs, CASE
WHEN v._ferry_f < 0 THEN NULL
ELSE v._ferry_uuid END AS _ferry_uuid, v."legacy_book_id", v."title", v."isbn", v."price", v."published_at", v."author_id", v._ferry_hash, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rs
ELSE v._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rm
ELSE v._ferry_message END AS _ferry_message, CASE
WHEN v._ferry_f = -2 THEN v._ferry_hold END AS _ferry_holder
FROM (SELECT w.*, CASE
WHEN w._ferry_bad OR w._ferry_dup OR (w._ferry_held IS NOT NULL AND NOT (w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k))) THEN -1
WHEN CASE
WHEN w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k) THEN w._ferry_held END IS NOT NULL THEN -2
ELSE w._ferry_fate END AS _ferry_f, CASE
WHEN w._ferry_bad THEN w._ferry_rreason
ELSE 'unique_violation' END AS _ferry_rr, CASE
WHEN w._ferry_bad THEN w._ferry_rstate
ELSE '23505' END AS _ferry_rs, CASE
WHEN w._ferry_bad THEN w._ferry_rmessage
ELSE 'duplicate key value violates unique constraint "' || coalesce(w._ferry_dname, w._ferry_hname) || '"' END AS _ferry_rm, (CASE
WHEN w._ferry_hkey::integer > w._ferry_k THEN w._ferry_hkey END)::text AS _ferry_hold
FROM (SELECT z.*, z."_ferry_d0" AS _ferry_dup, CASE
WHEN z."_ferry_d0"  THEN 'books_isbn_key' END AS _ferry_dname, coalesce(z."_ferry_h0") AS _ferry_held, CASE
WHEN z."_ferry_h0" IS NOT NULL THEN 'books_isbn_key' END AS _ferry_hname, hk.source_key AS _ferry_hkey
FROM _ferry_probed z
LEFT
JOIN (SELECT DISTINCT ON (l.target_uuid) l.target_uuid, l.source_key
FROM "ferry"."ledger_books" l
WHERE l.model = 'books' AND l.status = 'migrated' AND l.target_uuid IN (SELECT coalesce(z."_ferry_h0")
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL) AND EXISTS (SELECT
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL)) hk ON hk.target_uuid = coalesce(z."_ferry_h0") OFFSET 0) w OFFSET 0) v

-- candidates[0]
CREATE TEMP TABLE _ferry_e ON COMMIT DROP AS WITH _ferry_chunk AS MATERIALIZED (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_book_id", "c"."title" COLLATE "C", "c"."isbn" COLLATE "C", "c"."price", "c"."published_at", "c"."author_id"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 10 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 10 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"author_id\\" of relation \\"books\\" violates not-null constraint","null value in column \\"title\\" of relation \\"books\\" violates not-null constraint","null value in column \\"price\\" of relation \\"books\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,excluded,pending,excluded,quarantined,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,draft,NULL,parent_excluded,orphan_author,parent_quarantined,survivor_excluded,survivor_quarantined,missing_survivor,NULL,merged,not_null_violation,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, '{}'::text[] AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_book', (m._key)::text) END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_book_id")::bigint END AS "legacy_book_id", CASE
WHEN m._ferry_fate = 0 THEN (m."title")::text END AS "title", CASE
WHEN m._ferry_fate = 0 THEN (m."isbn")::text END AS "isbn", CASE
WHEN m._ferry_fate = 0 THEN (m."price")::numeric(8,2) END AS "price", CASE
WHEN m._ferry_fate = 0 THEN (m."published_at")::timestamp with time zone END AS "published_at", CASE
WHEN m._ferry_fate = 0 THEN (m._ferry_pu0)::uuid END AS "author_id"
FROM (SELECT m.*, "p0".target_uuid AS "_ferry_pu0", CASE
WHEN m."_ferry_r0" THEN 1
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') AND false THEN 2
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'excluded' THEN 3
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') THEN 4
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'quarantined' THEN 5
WHEN false THEN 6
WHEN false THEN 7
WHEN false THEN 8
WHEN false THEN 9
WHEN false THEN 10
WHEN "p0".target_uuid IS NULL THEN 11
WHEN m."title" IS NULL THEN 12
WHEN m."price" IS NULL THEN 13
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (_status = 'draft') AS "_ferry_r0"
FROM (SELECT b.id AS _key,
       b.id AS legacy_book_id,
       b.author_id AS _author_id,
       b.status AS _status,
       b.title,
       b.isbn,
       b.price,
       b.published AT TIME ZONE 'UTC' AS published_at
FROM lib_book b) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m
LEFT
JOIN "ferry"."ledger_authors" "p0" ON "p0".model = 'authors' AND "p0".source_key = "m"."_author_id"::text OFFSET 0) m OFFSET 0) c), _ferry_probed AS MATERIALIZED (SELECT y.*, CASE
WHEN y."_ferry_w0" AND NOT y."_ferry_d0" THEN (SELECT "id"
FROM "public"."books"
WHERE (lower(isbn)) = y."_ferry_u0_0" AND "id" IS DISTINCT
FROM y._ferry_uuid LIMIT 1) END AS "_ferry_h0"
FROM (SELECT x.*, x._ferry_i > 0 AS _ferry_bad, ('{check_violation}'::text[])[x._ferry_i] AS _ferry_rreason, ('{23514}'::text[])[x._ferry_i] AS _ferry_rstate, ( E'{"new row for relation \\"books\\" violates check constraint \\"books_price_check\\""}'::text[])[x._ferry_i] AS _ferry_rmessage, (lower(isbn)) AS "_ferry_u0_0", x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL AS "_ferry_w0", CASE
WHEN x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL THEN row_number() OVER (PARTITION BY x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL, (lower(isbn))
ORDER BY x._ferry_k) > 1
ELSE false END AS "_ferry_d0"
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((price >= (0)::numeric)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM _ferry_chunk x OFFSET 0) x OFFSET 0) y OFFSET 0)
SELECT v._ferry_key, v._ferry_n, v._ferry_k, v._ferry_f AS _ferry_fate, CASE v._ferry_f
WHEN -1 THEN 'quarantined'
WHEN -2 THEN 'blocked'
ELSE v._ferry_status END AS _ferry_status, CASE v._ferry_f
WHEN -1 THEN v._ferry_rr
WHEN -2 THEN NULL
ELSE v._ferry_reason END AS _ferry_reason, CASE
WHEN v._ferry_f < 0 THEN '{}'::text[]
ELSE v._ferry_repairs END AS _ferry_repairs, CASE
WHEN v._ferry_f < 0 THEN NULL
ELSE v._ferry_uuid END AS _ferry_uuid, v."legacy_book_id", v."title", v."isbn", v."price", v."published_at", v."author_id", v._ferry_hash, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rs
ELSE v._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rm
ELSE v._ferry_message END AS _ferry_message, CASE
WHEN v._ferry_f = -2 THEN v._ferry_hold END AS _ferry_holder
FROM (SELECT w.*, CASE
WHEN w._ferry_bad OR w._ferry_dup OR (w._ferry_held IS NOT NULL AND NOT (w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k))) THEN -1
WHEN CASE
WHEN w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k) THEN w._ferry_held END IS NOT NULL THEN -2
ELSE w._ferry_fate END AS _ferry_f, CASE
WHEN w._ferry_bad THEN w._ferry_rreason
ELSE 'unique_violation' END AS _ferry_rr, CASE
WHEN w._ferry_bad THEN w._ferry_rstate
ELSE '23505' END AS _ferry_rs, CASE
WHEN w._ferry_bad THEN w._ferry_rmessage
ELSE 'duplicate key value violates unique constraint "' || coalesce(w._ferry_dname, w._ferry_hname) || '"' END AS _ferry_rm, (CASE
WHEN w._ferry_hkey::integer > w._ferry_k THEN w._ferry_hkey END)::text AS _ferry_hold
FROM (SELECT z.*, z."_ferry_d0" AS _ferry_dup, CASE
WHEN z."_ferry_d0"  THEN 'books_isbn_key' END AS _ferry_dname, coalesce(z."_ferry_h0") AS _ferry_held, CASE
WHEN z."_ferry_h0" IS NOT NULL THEN 'books_isbn_key' END AS _ferry_hname, hk.source_key AS _ferry_hkey
FROM _ferry_probed z
LEFT
JOIN (SELECT DISTINCT ON (l.target_uuid) l.target_uuid, l.source_key
FROM "ferry"."ledger_books" l
WHERE l.model = 'books' AND l.status = 'migrated' AND l.target_uuid IN (SELECT coalesce(z."_ferry_h0")
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL) AND EXISTS (SELECT
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL)) hk ON hk.target_uuid = coalesce(z."_ferry_h0") OFFSET 0) w OFFSET 0) v

-- candidates[1]
SET LOCAL enable_hashjoin = off

-- candidates[2]
SET LOCAL enable_mergejoin = off

-- candidates[3]
CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS
SELECT c.*, l.status AS _old_status, l.target_uuid AS _old_uuid, l.row_hash AS _old_hash, false AS _conflict
FROM _ferry_e c
LEFT
JOIN "ferry"."ledger_books" l ON l.model = 'books' AND l.source_key = c._ferry_key
WHERE (l.model IS NULL OR l.status IS DISTINCT
FROM c._ferry_status OR l.reason IS DISTINCT
FROM c._ferry_reason OR l.repairs <> c._ferry_repairs OR l.target_uuid IS DISTINCT
FROM c._ferry_uuid OR (l.row_hash IS DISTINCT
FROM c._ferry_hash AND NOT coalesce(l.row_hash IN (hash_record_extended(ROW("c"."legacy_book_id", "c"."title", "c"."isbn", "c"."price", "c"."published_at", "c"."author_id"), 0)::text, (hash_record_extended(ROW("c"."legacy_book_id", "c"."title", "c"."isbn", "c"."price", "c"."published_at", "c"."author_id"), 0) # CASE
WHEN "c"."price" = 0 THEN 6364136223846793008::int8
ELSE 0 END)::text), false)) OR l.sqlstate IS DISTINCT
FROM c._ferry_sqlstate) AND NOT coalesce(NOT false AND l.status = 'quarantined' AND c._ferry_fate = 0 AND l.sqlstate NOT IN ('23505', '23503', '23P01') AND l.row_hash = md5("c"._ferry_hash || 'd2'), false) AND l.decided_by IS NULL

-- candidates[4]
SET LOCAL enable_hashjoin = on

-- candidates[5]
SET LOCAL enable_mergejoin = on

-- candidates[6]
DROP TABLE _ferry_e

-- first load
CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS
SELECT c.*, NULL::text AS _old_status, NULL::uuid AS _old_uuid, NULL::text AS _old_hash, false AS _conflict
FROM (WITH _ferry_chunk AS MATERIALIZED (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_book_id", "c"."title" COLLATE "C", "c"."isbn" COLLATE "C", "c"."price", "c"."published_at", "c"."author_id"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 10 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 10 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"author_id\\" of relation \\"books\\" violates not-null constraint","null value in column \\"title\\" of relation \\"books\\" violates not-null constraint","null value in column \\"price\\" of relation \\"books\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,excluded,pending,excluded,quarantined,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,draft,NULL,parent_excluded,orphan_author,parent_quarantined,survivor_excluded,survivor_quarantined,missing_survivor,NULL,merged,not_null_violation,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, '{}'::text[] AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_book', (m._key)::text) END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_book_id")::bigint END AS "legacy_book_id", CASE
WHEN m._ferry_fate = 0 THEN (m."title")::text END AS "title", CASE
WHEN m._ferry_fate = 0 THEN (m."isbn")::text END AS "isbn", CASE
WHEN m._ferry_fate = 0 THEN (m."price")::numeric(8,2) END AS "price", CASE
WHEN m._ferry_fate = 0 THEN (m."published_at")::timestamp with time zone END AS "published_at", CASE
WHEN m._ferry_fate = 0 THEN (m._ferry_pu0)::uuid END AS "author_id"
FROM (SELECT m.*, "p0".target_uuid AS "_ferry_pu0", CASE
WHEN m."_ferry_r0" THEN 1
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') AND false THEN 2
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'excluded' THEN 3
WHEN "m"."_author_id" IS NOT NULL AND ("p0"."status" IS NULL OR "p0"."status" = 'deleted') THEN 4
WHEN "m"."_author_id" IS NOT NULL AND "p0"."status" = 'quarantined' THEN 5
WHEN false THEN 6
WHEN false THEN 7
WHEN false THEN 8
WHEN false THEN 9
WHEN false THEN 10
WHEN "p0".target_uuid IS NULL THEN 11
WHEN m."title" IS NULL THEN 12
WHEN m."price" IS NULL THEN 13
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (_status = 'draft') AS "_ferry_r0"
FROM (SELECT b.id AS _key,
       b.id AS legacy_book_id,
       b.author_id AS _author_id,
       b.status AS _status,
       b.title,
       b.isbn,
       b.price,
       b.published AT TIME ZONE 'UTC' AS published_at
FROM lib_book b) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m
LEFT
JOIN "ferry"."ledger_authors" "p0" ON "p0".model = 'authors' AND "p0".source_key = "m"."_author_id"::text OFFSET 0) m OFFSET 0) c), _ferry_probed AS MATERIALIZED (SELECT y.*, CASE
WHEN y."_ferry_w0" AND NOT y."_ferry_d0" THEN (SELECT "id"
FROM "public"."books"
WHERE (lower(isbn)) = y."_ferry_u0_0" AND "id" IS DISTINCT
FROM y._ferry_uuid LIMIT 1) END AS "_ferry_h0"
FROM (SELECT x.*, x._ferry_i > 0 AS _ferry_bad, ('{check_violation}'::text[])[x._ferry_i] AS _ferry_rreason, ('{23514}'::text[])[x._ferry_i] AS _ferry_rstate, ( E'{"new row for relation \\"books\\" violates check constraint \\"books_price_check\\""}'::text[])[x._ferry_i] AS _ferry_rmessage, (lower(isbn)) AS "_ferry_u0_0", x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL AS "_ferry_w0", CASE
WHEN x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL THEN row_number() OVER (PARTITION BY x._ferry_fate = 0 AND x._ferry_i = 0 AND (lower(isbn)) IS NOT NULL, (lower(isbn))
ORDER BY x._ferry_k) > 1
ELSE false END AS "_ferry_d0"
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((price >= (0)::numeric)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM _ferry_chunk x OFFSET 0) x OFFSET 0) y OFFSET 0)
SELECT v._ferry_key, v._ferry_n, v._ferry_k, v._ferry_f AS _ferry_fate, CASE v._ferry_f
WHEN -1 THEN 'quarantined'
WHEN -2 THEN 'blocked'
ELSE v._ferry_status END AS _ferry_status, CASE v._ferry_f
WHEN -1 THEN v._ferry_rr
WHEN -2 THEN NULL
ELSE v._ferry_reason END AS _ferry_reason, CASE
WHEN v._ferry_f < 0 THEN '{}'::text[]
ELSE v._ferry_repairs END AS _ferry_repairs, CASE
WHEN v._ferry_f < 0 THEN NULL
ELSE v._ferry_uuid END AS _ferry_uuid, v."legacy_book_id", v."title", v."isbn", v."price", v."published_at", v."author_id", v._ferry_hash, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rs
ELSE v._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN v._ferry_f = -1 THEN v._ferry_rm
ELSE v._ferry_message END AS _ferry_message, CASE
WHEN v._ferry_f = -2 THEN v._ferry_hold END AS _ferry_holder
FROM (SELECT w.*, CASE
WHEN w._ferry_bad OR w._ferry_dup OR (w._ferry_held IS NOT NULL AND NOT (w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k))) THEN -1
WHEN CASE
WHEN w._ferry_held IS NOT NULL AND NOT w._ferry_dup AND w._ferry_hkey IS NOT NULL AND (EXISTS (SELECT
FROM _ferry_chunk k
WHERE k._ferry_key = w._ferry_hkey) OR w._ferry_hkey::integer > w._ferry_k) THEN w._ferry_held END IS NOT NULL THEN -2
ELSE w._ferry_fate END AS _ferry_f, CASE
WHEN w._ferry_bad THEN w._ferry_rreason
ELSE 'unique_violation' END AS _ferry_rr, CASE
WHEN w._ferry_bad THEN w._ferry_rstate
ELSE '23505' END AS _ferry_rs, CASE
WHEN w._ferry_bad THEN w._ferry_rmessage
ELSE 'duplicate key value violates unique constraint "' || coalesce(w._ferry_dname, w._ferry_hname) || '"' END AS _ferry_rm, (CASE
WHEN w._ferry_hkey::integer > w._ferry_k THEN w._ferry_hkey END)::text AS _ferry_hold
FROM (SELECT z.*, z."_ferry_d0" AS _ferry_dup, CASE
WHEN z."_ferry_d0"  THEN 'books_isbn_key' END AS _ferry_dname, coalesce(z."_ferry_h0") AS _ferry_held, CASE
WHEN z."_ferry_h0" IS NOT NULL THEN 'books_isbn_key' END AS _ferry_hname, hk.source_key AS _ferry_hkey
FROM _ferry_probed z
LEFT
JOIN (SELECT DISTINCT ON (l.target_uuid) l.target_uuid, l.source_key
FROM "ferry"."ledger_books" l
WHERE l.model = 'books' AND l.status = 'migrated' AND l.target_uuid IN (SELECT coalesce(z."_ferry_h0")
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL) AND EXISTS (SELECT
FROM _ferry_probed z
WHERE coalesce(z."_ferry_h0") IS NOT NULL)) hk ON hk.target_uuid = coalesce(z."_ferry_h0") OFFSET 0) w OFFSET 0) v) c

