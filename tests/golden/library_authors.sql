-- expected
SELECT x._ferry_key, x._ferry_n, x._ferry_k, CASE
WHEN x._ferry_i > 0 THEN -1
ELSE x._ferry_fate END AS _ferry_fate, CASE
WHEN x._ferry_i > 0 THEN 'quarantined'
ELSE x._ferry_status END AS _ferry_status, CASE
WHEN x._ferry_i > 0 THEN ('{check_violation}'::text[])[x._ferry_i]
ELSE x._ferry_reason END AS _ferry_reason, CASE
WHEN x._ferry_i > 0 THEN '{}'::text[]
ELSE x._ferry_repairs END AS _ferry_repairs, CASE
WHEN x._ferry_i > 0 THEN NULL
ELSE x._ferry_uuid END AS _ferry_uuid, x."legacy_author_id", x."name", x."country_code", x._ferry_hash, CASE
WHEN x._ferry_i > 0 THEN ('{23514}'::text[])[x._ferry_i]
ELSE x._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN x._ferry_i > 0 THEN ( E'{"new row for relation \\"authors\\" violates check constraint \\"authors_country_code_check\\""}'::text[])[x._ferry_i]
ELSE x._ferry_message END AS _ferry_message, NULL::text AS _ferry_holder
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((country_code ~ '^[A-Z]{2}$'::text)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_author_id", "c"."name" COLLATE "C", "c"."country_code"::text COLLATE "C"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 6 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 6 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"name\\" of relation \\"authors\\" violates not-null constraint","null value in column \\"country_code\\" of relation \\"authors\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,unknown_country,survivor_excluded,survivor_quarantined,missing_survivor,NULL,duplicate_author,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, CASE
WHEN m._ferry_fate = 0 THEN array_remove(ARRAY[CASE
WHEN m."_ferry_r1" THEN 'country_normalized' END]::text[], NULL)
ELSE '{}'::text[] END AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_author', (m._key)::text)
WHEN 6 THEN m._ferry_su END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_author_id")::bigint END AS "legacy_author_id", CASE
WHEN m._ferry_fate = 0 THEN (m."name")::text END AS "name", CASE
WHEN m._ferry_fate = 0 THEN (m."country_code")::character(2) END AS "country_code"
FROM (SELECT m.*, s.target_uuid AS _ferry_su, CASE
WHEN m."_ferry_r0" THEN 1
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'excluded' THEN 2
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'quarantined' THEN 3
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') AND false THEN 4
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') THEN 5
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text THEN 6
WHEN m."name" IS NULL THEN 7
WHEN m."country_code" IS NULL THEN 8
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (country_code IS NULL) AS "_ferry_r0", (_country_fixed) AS "_ferry_r1"
FROM (SELECT a.id AS _key, a.id AS legacy_author_id, a.name,
       CASE upper(trim(a.country))
WHEN 'UK' THEN 'GB'
WHEN 'FRANCE' THEN 'FR' END AS country_code,
       a.country IS DISTINCT
FROM upper(trim(a.country)) AS _country_fixed,
       a.same_as AS _same_as
FROM lib_author a) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m 
LEFT
JOIN "ferry"."ledger_authors" s ON s.model = 'authors' AND s.source_key = m."_same_as"::text OFFSET 0) m OFFSET 0) c) x OFFSET 0) x

-- candidates[0]
CREATE TEMP TABLE _ferry_e ON COMMIT DROP AS
SELECT x._ferry_key, x._ferry_n, x._ferry_k, CASE
WHEN x._ferry_i > 0 THEN -1
ELSE x._ferry_fate END AS _ferry_fate, CASE
WHEN x._ferry_i > 0 THEN 'quarantined'
ELSE x._ferry_status END AS _ferry_status, CASE
WHEN x._ferry_i > 0 THEN ('{check_violation}'::text[])[x._ferry_i]
ELSE x._ferry_reason END AS _ferry_reason, CASE
WHEN x._ferry_i > 0 THEN '{}'::text[]
ELSE x._ferry_repairs END AS _ferry_repairs, CASE
WHEN x._ferry_i > 0 THEN NULL
ELSE x._ferry_uuid END AS _ferry_uuid, x."legacy_author_id", x."name", x."country_code", x._ferry_hash, CASE
WHEN x._ferry_i > 0 THEN ('{23514}'::text[])[x._ferry_i]
ELSE x._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN x._ferry_i > 0 THEN ( E'{"new row for relation \\"authors\\" violates check constraint \\"authors_country_code_check\\""}'::text[])[x._ferry_i]
ELSE x._ferry_message END AS _ferry_message, NULL::text AS _ferry_holder
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((country_code ~ '^[A-Z]{2}$'::text)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_author_id", "c"."name" COLLATE "C", "c"."country_code"::text COLLATE "C"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 6 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 6 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"name\\" of relation \\"authors\\" violates not-null constraint","null value in column \\"country_code\\" of relation \\"authors\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,unknown_country,survivor_excluded,survivor_quarantined,missing_survivor,NULL,duplicate_author,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, CASE
WHEN m._ferry_fate = 0 THEN array_remove(ARRAY[CASE
WHEN m."_ferry_r1" THEN 'country_normalized' END]::text[], NULL)
ELSE '{}'::text[] END AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_author', (m._key)::text)
WHEN 6 THEN m._ferry_su END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_author_id")::bigint END AS "legacy_author_id", CASE
WHEN m._ferry_fate = 0 THEN (m."name")::text END AS "name", CASE
WHEN m._ferry_fate = 0 THEN (m."country_code")::character(2) END AS "country_code"
FROM (SELECT m.*, s.target_uuid AS _ferry_su, CASE
WHEN m."_ferry_r0" THEN 1
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'excluded' THEN 2
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'quarantined' THEN 3
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') AND false THEN 4
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') THEN 5
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text THEN 6
WHEN m."name" IS NULL THEN 7
WHEN m."country_code" IS NULL THEN 8
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (country_code IS NULL) AS "_ferry_r0", (_country_fixed) AS "_ferry_r1"
FROM (SELECT a.id AS _key, a.id AS legacy_author_id, a.name,
       CASE upper(trim(a.country))
WHEN 'UK' THEN 'GB'
WHEN 'FRANCE' THEN 'FR' END AS country_code,
       a.country IS DISTINCT
FROM upper(trim(a.country)) AS _country_fixed,
       a.same_as AS _same_as
FROM lib_author a) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m 
LEFT
JOIN "ferry"."ledger_authors" s ON s.model = 'authors' AND s.source_key = m."_same_as"::text OFFSET 0) m OFFSET 0) c) x OFFSET 0) x

-- candidates[1]
SET LOCAL enable_hashjoin = off

-- candidates[2]
SET LOCAL enable_mergejoin = off

-- candidates[3]
CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS
SELECT c.*, l.status AS _old_status, l.target_uuid AS _old_uuid, l.row_hash AS _old_hash, false AS _conflict
FROM _ferry_e c
LEFT
JOIN "ferry"."ledger_authors" l ON l.model = 'authors' AND l.source_key = c._ferry_key
WHERE (l.model IS NULL OR l.status IS DISTINCT
FROM c._ferry_status OR l.reason IS DISTINCT
FROM c._ferry_reason OR l.repairs <> c._ferry_repairs OR l.target_uuid IS DISTINCT
FROM c._ferry_uuid OR (l.row_hash IS DISTINCT
FROM c._ferry_hash AND NOT coalesce(l.row_hash IN (hash_record_extended(ROW("c"."legacy_author_id", "c"."name", "c"."country_code"), 0)::text), false)) OR l.sqlstate IS DISTINCT
FROM c._ferry_sqlstate) AND NOT coalesce(NOT false AND l.status = 'quarantined' AND c._ferry_fate = 0 AND l.sqlstate NOT IN ('23505', '23503', '23P01') AND l.row_hash = md5("c"._ferry_hash || 'd1'), false) AND l.decided_by IS NULL

-- candidates[4]
SET LOCAL enable_hashjoin = on

-- candidates[5]
SET LOCAL enable_mergejoin = on

-- candidates[6]
DROP TABLE _ferry_e

-- first load
CREATE TEMP TABLE _ferry_c ON COMMIT DROP AS
SELECT c.*, NULL::text AS _old_status, NULL::uuid AS _old_uuid, NULL::text AS _old_hash, false AS _conflict
FROM (SELECT x._ferry_key, x._ferry_n, x._ferry_k, CASE
WHEN x._ferry_i > 0 THEN -1
ELSE x._ferry_fate END AS _ferry_fate, CASE
WHEN x._ferry_i > 0 THEN 'quarantined'
ELSE x._ferry_status END AS _ferry_status, CASE
WHEN x._ferry_i > 0 THEN ('{check_violation}'::text[])[x._ferry_i]
ELSE x._ferry_reason END AS _ferry_reason, CASE
WHEN x._ferry_i > 0 THEN '{}'::text[]
ELSE x._ferry_repairs END AS _ferry_repairs, CASE
WHEN x._ferry_i > 0 THEN NULL
ELSE x._ferry_uuid END AS _ferry_uuid, x."legacy_author_id", x."name", x."country_code", x._ferry_hash, CASE
WHEN x._ferry_i > 0 THEN ('{23514}'::text[])[x._ferry_i]
ELSE x._ferry_sqlstate END AS _ferry_sqlstate, CASE
WHEN x._ferry_i > 0 THEN ( E'{"new row for relation \\"authors\\" violates check constraint \\"authors_country_code_check\\""}'::text[])[x._ferry_i]
ELSE x._ferry_message END AS _ferry_message, NULL::text AS _ferry_holder
FROM (SELECT x.*, CASE
WHEN x._ferry_fate = 0 THEN CASE
WHEN ((country_code ~ '^[A-Z]{2}$'::text)) IS FALSE THEN 1
ELSE 0 END
ELSE 0 END AS _ferry_i
FROM (SELECT c.*, CASE
WHEN c._ferry_fate = 0 THEN hash_record_extended(ROW(3, "c"."legacy_author_id", "c"."name" COLLATE "C", "c"."country_code"::text COLLATE "C"), 0)::text END AS _ferry_hash, CASE
WHEN c._ferry_fate > 6 THEN ('{NULL,NULL,NULL,NULL,NULL,NULL,NULL,23502,23502}'::text[])[c._ferry_fate + 1] END AS _ferry_sqlstate, CASE
WHEN c._ferry_fate > 6 THEN ( E'{NULL,NULL,NULL,NULL,NULL,NULL,NULL,"null value in column \\"name\\" of relation \\"authors\\" violates not-null constraint","null value in column \\"country_code\\" of relation \\"authors\\" violates not-null constraint"}'::text[])[c._ferry_fate + 1] END AS _ferry_message
FROM (SELECT m._key::text AS _ferry_key, row_number() OVER (ORDER BY m._key) AS _ferry_n, m._key AS _ferry_k, m._ferry_fate, ('{migrated,quarantined,excluded,quarantined,quarantined,pending,merged,quarantined,quarantined}'::text[])[m._ferry_fate + 1] AS _ferry_status, ('{NULL,unknown_country,survivor_excluded,survivor_quarantined,missing_survivor,NULL,duplicate_author,not_null_violation,not_null_violation}'::text[])[m._ferry_fate + 1] AS _ferry_reason, CASE
WHEN m._ferry_fate = 0 THEN array_remove(ARRAY[CASE
WHEN m."_ferry_r1" THEN 'country_normalized' END]::text[], NULL)
ELSE '{}'::text[] END AS _ferry_repairs, CASE m._ferry_fate
WHEN 0 THEN "ferry"."key_uuid"('3f0e4a52-6a55-4c1c-9a3e-6d0c2f7a9b11'::uuid, 'lib_author', (m._key)::text)
WHEN 6 THEN m._ferry_su END AS _ferry_uuid, CASE
WHEN m._ferry_fate = 0 THEN (m."legacy_author_id")::bigint END AS "legacy_author_id", CASE
WHEN m._ferry_fate = 0 THEN (m."name")::text END AS "name", CASE
WHEN m._ferry_fate = 0 THEN (m."country_code")::character(2) END AS "country_code"
FROM (SELECT m.*, s.target_uuid AS _ferry_su, CASE
WHEN m."_ferry_r0" THEN 1
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'excluded' THEN 2
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND s.status = 'quarantined' THEN 3
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') AND false THEN 4
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text AND (s.status IS NULL OR s.status = 'deleted') THEN 5
WHEN m."_same_as" IS NOT NULL AND m."_same_as"::text <> m._key::text THEN 6
WHEN m."name" IS NULL THEN 7
WHEN m."country_code" IS NULL THEN 8
ELSE 0 END AS _ferry_fate
FROM (SELECT m0.*, (country_code IS NULL) AS "_ferry_r0", (_country_fixed) AS "_ferry_r1"
FROM (SELECT a.id AS _key, a.id AS legacy_author_id, a.name,
       CASE upper(trim(a.country))
WHEN 'UK' THEN 'GB'
WHEN 'FRANCE' THEN 'FR' END AS country_code,
       a.country IS DISTINCT
FROM upper(trim(a.country)) AS _country_fixed,
       a.same_as AS _same_as
FROM lib_author a) m0
WHERE m0._key >= 10 AND m0._key < 20 OFFSET 0) m 
LEFT
JOIN "ferry"."ledger_authors" s ON s.model = 'authors' AND s.source_key = m."_same_as"::text OFFSET 0) m OFFSET 0) c) x OFFSET 0) x) c

