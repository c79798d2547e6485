-- One day (2025-10-18) of the legacy application's life, applied after a first migration so that
-- a differential sync has something to find. Run by ferry.demo.world.apply_delta in one
-- transaction, before truth.sql rebuilds the ground truth. Reads ferry_demo.truth as it stood
-- BEFORE the delta to choose clean rows to touch.
--
-- Composition (counts are the params' x_* columns; 673 / ~200 / ~25 at SF=1):
--   inserts  three missing parents (an office, an instruction, a treatment plan) that turn
--            quarantined orphans into migratable rows; new notifications (x_notif_dirty of them
--            with invalid JSON), records (one draft), files (one orphan), states (one
--            missing_case); the rest clean;
--   updates  notifications read, instructions moving on (submitted -> in_production ->
--            shipped), payment methods filled in (x_pay_inferred inferable ones, and one
--            unknown one when there are at least two);
--   deletes  clean leaf records and files nobody refers to, plus one draft record and one
--            orphan file when the scale leaves room for them.
-- Every statement logs its row count in ferry_demo.delta_log; planted/deleted are kept current.

-- @step setup
CREATE TEMP TABLE d_good_case AS
SELECT row_number() OVER (ORDER BY c.id) AS n, c.id, c.doctor_id
FROM dispatch_instance c
WHERE c.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                   WHERE source_table = 'dispatch_instance'
                     AND status IN ('excluded', 'quarantined'));

CREATE TEMP TABLE d_good_instr AS
SELECT row_number() OVER (ORDER BY i.id) AS n, i.id
FROM dispatch_instruction i
WHERE i.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                   WHERE source_table = 'dispatch_instruction'
                     AND status IN ('excluded', 'quarantined'));

CREATE TEMP TABLE d_max AS
SELECT (SELECT max(id) FROM dispatch_notification) AS notif,
       (SELECT max(id) FROM dispatch_record WHERE id < 1000000000) AS rec,
       (SELECT max(id) FROM dispatch_file WHERE id < 1000000000) AS file,
       (SELECT max(id) FROM dispatch_state WHERE id < 1000000000) AS state,
       (SELECT count(*) FROM d_good_case) AS ncase,
       (SELECT count(*) FROM d_good_instr) AS ninstr;

-- @step parents
-- The office that the first orphan_office purchases name.
WITH u AS (
    INSERT INTO dispatch_office (id, name, address, city, country, phone, email, is_active,
                                 created_at, updated_at)
    SELECT 1500000001, 'Harbor Aligner Studio', '5 Quay Street', 'Osaka', 'Japan',
           '+81 00000001', 'office.harbor@clinic.test', true,
           timestamp '2025-10-18 08:00:00', timestamp '2025-10-18 08:00:00'
    WHERE EXISTS (SELECT 1 FROM ferry_demo.purchases_csv WHERE office_id = 1500000001)
    RETURNING id
)
INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_office', count(*) FROM u;

-- The instruction that the first orphan_order files name, in a clean case that has a doctor.
WITH u AS (
    INSERT INTO dispatch_instruction (id, instance_id, doctor_id, status, aligner_count, notes,
                                      submitted_at, created_at, updated_at)
    SELECT 1000000001, c.id, c.doctor_id, 'submitted', 20, 'Order restored from the archive',
           timestamp '2025-10-18 09:00:00', timestamp '2025-10-18 09:00:00',
           timestamp '2025-10-18 09:00:00'
    FROM (SELECT id, doctor_id FROM d_good_case WHERE doctor_id IS NOT NULL ORDER BY id LIMIT 1) c
    WHERE EXISTS (SELECT 1 FROM dispatch_file WHERE instruction_id = 1000000001)
    RETURNING id
)
INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_instruction', count(*) FROM u;

-- The lowest missing treatment plan, in the case its id encodes (1,100,000,000 + case id).
WITH t AS (
    SELECT min(r.treatment_plan_id) AS tp
    FROM dispatch_record r
    WHERE r.treatment_plan_id >= 1100000000
      AND NOT EXISTS (SELECT 1 FROM dispatch_record x WHERE x.id = r.treatment_plan_id)
), u AS (
    INSERT INTO dispatch_record (id, instance_id, instruction_id, author_id, kind, text,
                                 treatment_plan_id, created_at, updated_at)
    SELECT t.tp, c.id, NULL, c.doctor_id, 'treatment_plan',
           'Treatment plan restored from the archive.', NULL,
           timestamp '2025-10-18 10:00:00', timestamp '2025-10-18 10:00:00'
    FROM t JOIN dispatch_instance c ON c.id = t.tp - 1100000000
    RETURNING id
)
INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_record', count(*) FROM u;

-- @step notifications
WITH u AS (
    INSERT INTO dispatch_notification (id, recipient_id, actor_id, verb, template_id,
                                       template_context, read, created)
    SELECT m.notif + k,
           1 + ferry_demo.h(p.seed, 200, k) % (p.n_doc + p.n_tech + p.n_pat),
           CASE WHEN k % 2 = 0 THEN 1 + ferry_demo.h(p.seed, 201, k) % (p.n_doc + p.n_tech) END,
           'commented',
           1 + ferry_demo.h(p.seed, 202, k) % p.n_template,
           CASE WHEN k <= p.x_notif_dirty
                THEN '{"case_id": ' || (1 + ferry_demo.h(p.seed, 203, k) % p.n_case)
                     || ', "verb": "commented"'
                ELSE '{"case_id": ' || (1 + ferry_demo.h(p.seed, 203, k) % p.n_case)
                     || ', "verb": "commented", "seen_by": 0}' END,
           false,
           timestamp '2025-10-18 00:00:00' + k * interval '2 minutes'
    FROM ferry_demo.params p, d_max m, generate_series(1, p.x_notif) k
    RETURNING id
), l AS (
    INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_notification', count(*) FROM u
)
INSERT INTO ferry_demo.planted
SELECT 'dispatch_notification', u.id::text, 'invalid_json'
FROM u, d_max m, ferry_demo.params p
WHERE u.id <= m.notif + p.x_notif_dirty;

-- @step records
WITH u AS (
    INSERT INTO dispatch_record (id, instance_id, instruction_id, author_id, kind, text,
                                 treatment_plan_id, created_at, updated_at)
    SELECT m.rec + k, c.id, NULL,
           CASE WHEN k % 3 = 0 THEN NULL ELSE c.doctor_id END,
           CASE WHEN k = 1 THEN 'draft' WHEN k % 3 = 0 THEN 'system' ELSE 'comment' END,
           CASE WHEN k % 3 = 0 THEN 'Files received.' ELSE 'Follow-up after the new scans.' END,
           NULL,
           timestamp '2025-10-18 00:00:00' + k * interval '7 minutes',
           timestamp '2025-10-18 00:00:00' + k * interval '7 minutes'
    FROM ferry_demo.params p
    CROSS JOIN d_max m
    CROSS JOIN generate_series(1, p.x_record) k
    JOIN d_good_case c ON c.n = 1 + ferry_demo.h(p.seed, 204, k) % m.ncase
    RETURNING id, kind
), l AS (
    INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_record', count(*) FROM u
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_record', id::text, 'draft' FROM u
WHERE kind = 'draft';

-- @step files
-- The first new file names an instruction that never existed (a fresh orphan).
WITH u AS (
    INSERT INTO dispatch_file (id, instruction_id, name, path, content_type, size, created_at)
    SELECT m.file + k,
           CASE WHEN k = 1 THEN 1000500001 ELSE i.id END,
           'scan_delta_' || k || '.stl',
           'uploads/delta/' || (m.file + k) || '.stl',
           'model/stl',
           100000 + ferry_demo.h(p.seed, 205, k) % 10000000,
           timestamp '2025-10-18 00:00:00' + k * interval '9 minutes'
    FROM ferry_demo.params p
    CROSS JOIN d_max m
    CROSS JOIN generate_series(1, p.x_file) k
    JOIN d_good_instr i ON i.n = 1 + ferry_demo.h(p.seed, 206, k) % m.ninstr
    RETURNING id, instruction_id
), l AS (
    INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_file', count(*) FROM u
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_file', id::text, 'orphan_order' FROM u
WHERE instruction_id = 1000500001;

-- @step states
-- Case states; the first names a case that does not exist (missing_case).
WITH u AS (
    INSERT INTO dispatch_state (id, instance_id, instruction_id, status, note, created_at)
    SELECT m.state + k,
           CASE WHEN k = 1 THEN 1200500001 ELSE c.id END,
           NULL,
           'active',
           'automatic',
           timestamp '2025-10-18 00:00:00' + k * interval '11 minutes'
    FROM ferry_demo.params p
    CROSS JOIN d_max m
    CROSS JOIN generate_series(1, p.x_state) k
    JOIN d_good_case c ON c.n = 1 + ferry_demo.h(p.seed, 207, k) % m.ncase
    RETURNING id, instance_id
), l AS (
    INSERT INTO ferry_demo.delta_log SELECT 'inserted', 'dispatch_state', count(*) FROM u
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_state', id::text, 'missing_case' FROM u
WHERE instance_id = 1200500001;

-- @step updates
-- Notifications read: unread, clean ones, among candidates spread over the original id range.
WITH cand AS (
    SELECT m, ((m - 1) * p.n_notif) / (20 * p.x_read) + 1
              + ferry_demo.h(p.seed, 210, m) % greatest(p.n_notif / (20 * p.x_read), 1) AS id
    FROM ferry_demo.params p, generate_series(1, 20 * p.x_read) m
), pick AS (
    SELECT c.id
    FROM cand c JOIN dispatch_notification n ON n.id = c.id
    WHERE NOT n.read
      AND c.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                       WHERE source_table = 'dispatch_notification')
    ORDER BY c.m
    LIMIT (SELECT x_read FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_notification n SET read = true FROM pick WHERE n.id = pick.id RETURNING n.id
)
INSERT INTO ferry_demo.delta_log SELECT 'updated', 'dispatch_notification', count(*) FROM u;

-- Instructions moving on: clean ones only.
WITH pick AS (
    SELECT i.id
    FROM dispatch_instruction i, ferry_demo.params p
    WHERE i.status IN ('submitted', 'in_production')
      AND i.id < 1000000000
      AND i.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                       WHERE source_table = 'dispatch_instruction')
    ORDER BY ferry_demo.h(p.seed, 211, i.id), i.id
    LIMIT (SELECT x_instr FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_instruction i
    SET status = CASE i.status WHEN 'submitted' THEN 'in_production' ELSE 'shipped' END,
        updated_at = timestamp '2025-10-18 12:00:00'
    FROM pick WHERE i.id = pick.id
    RETURNING i.id
)
INSERT INTO ferry_demo.delta_log SELECT 'updated', 'dispatch_instruction', count(*) FROM u;

-- Payment methods filled in: the method the reference reveals, and (when at least two remain
-- unknown) one unknown method confirmed by the office as card. Both become clean rows.
WITH pick AS (
    (SELECT pl.source_key::int AS id, false AS unknown
     FROM ferry_demo.planted pl, ferry_demo.params p
     WHERE pl.source_table = 'dispatch_payment' AND pl.reason = 'method_inferred'
     ORDER BY ferry_demo.h(p.seed, 212, pl.source_key::bigint), pl.source_key::bigint
     LIMIT (SELECT x_pay_inferred FROM ferry_demo.params))
    UNION ALL
    (SELECT pl.source_key::int, true
     FROM ferry_demo.planted pl, ferry_demo.params p
     WHERE pl.source_table = 'dispatch_payment' AND pl.reason = 'payment_method_unknown'
     ORDER BY ferry_demo.h(p.seed, 213, pl.source_key::bigint), pl.source_key::bigint
     LIMIT (SELECT x_pay_unknown FROM ferry_demo.params))
), u AS (
    UPDATE dispatch_payment y
    SET method = CASE WHEN pick.unknown THEN 'card'
                      WHEN y.reference LIKE 'WIRE-%' THEN 'bank_transfer'
                      WHEN y.reference LIKE 'CHK%' THEN 'check'
                      ELSE 'card' END
    FROM pick WHERE y.id = pick.id
    RETURNING y.id
), d AS (
    DELETE FROM ferry_demo.planted
    WHERE source_table = 'dispatch_payment' AND source_key IN (SELECT id::text FROM u)
)
INSERT INTO ferry_demo.delta_log SELECT 'updated', 'dispatch_payment', count(*) FROM u;

-- @step deletes
-- Records: clean comments and system messages that nothing refers to, plus one draft.
WITH pick AS (
    (SELECT r.id
     FROM dispatch_record r, ferry_demo.params p
     WHERE r.kind IN ('comment', 'system')
       AND r.id <= p.n_record
       AND r.id NOT IN (SELECT record_id FROM ferry_demo.record_attachments_csv)
       AND r.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                        WHERE source_table = 'dispatch_record')
     ORDER BY ferry_demo.h(p.seed, 214, r.id), r.id
     LIMIT (SELECT x_del_record - CASE WHEN x_del_record >= 2 THEN 1 ELSE 0 END
            FROM ferry_demo.params))
    UNION ALL
    (SELECT pl.source_key::int
     FROM ferry_demo.planted pl, ferry_demo.params p
     WHERE pl.source_table = 'dispatch_record' AND pl.reason = 'draft' AND p.x_del_record >= 2
       AND pl.source_key::bigint <= p.n_record
     ORDER BY ferry_demo.h(p.seed, 215, pl.source_key::bigint), pl.source_key::bigint
     LIMIT 1)
), u AS (
    DELETE FROM dispatch_record r USING pick WHERE r.id = pick.id RETURNING r.id
), d AS (
    DELETE FROM ferry_demo.planted
    WHERE source_table = 'dispatch_record' AND source_key IN (SELECT id::text FROM u)
), k AS (
    INSERT INTO ferry_demo.deleted SELECT 'dispatch_record', id::text FROM u
)
INSERT INTO ferry_demo.delta_log SELECT 'deleted', 'dispatch_record', count(*) FROM u;

-- Files: clean files no attachment names, plus one orphan whose parent stays missing.
WITH pick AS (
    (SELECT f.id
     FROM dispatch_file f, ferry_demo.params p
     WHERE f.id <= p.n_file
       AND f.id NOT IN (SELECT file_id FROM ferry_demo.record_attachments_csv)
       AND f.id NOT IN (SELECT source_key::bigint FROM ferry_demo.truth
                        WHERE source_table = 'dispatch_file')
     ORDER BY ferry_demo.h(p.seed, 216, f.id), f.id
     LIMIT (SELECT x_del_file - CASE WHEN x_del_file >= 2 THEN 1 ELSE 0 END
            FROM ferry_demo.params))
    UNION ALL
    (SELECT f.id
     FROM dispatch_file f, ferry_demo.params p
     WHERE f.instruction_id BETWEEN 1000000002 AND 1000000000 + p.k_dangling_instr
       AND p.x_del_file >= 2
     ORDER BY ferry_demo.h(p.seed, 217, f.id), f.id
     LIMIT 1)
), u AS (
    DELETE FROM dispatch_file f USING pick WHERE f.id = pick.id RETURNING f.id
), d AS (
    DELETE FROM ferry_demo.planted
    WHERE source_table = 'dispatch_file' AND source_key IN (SELECT id::text FROM u)
), k AS (
    INSERT INTO ferry_demo.deleted SELECT 'dispatch_file', id::text FROM u
)
INSERT INTO ferry_demo.delta_log SELECT 'deleted', 'dispatch_file', count(*) FROM u;

-- @step resolved
-- Orphans whose parent arrived are plain rows now: planted records what the generator did,
-- and it did not leave these broken any more.
DELETE FROM ferry_demo.planted pl
USING dispatch_file f JOIN dispatch_instruction i ON i.id = f.instruction_id
WHERE pl.source_table = 'dispatch_file' AND pl.reason = 'orphan_order'
  AND f.id = pl.source_key::int;

DELETE FROM ferry_demo.planted pl
USING dispatch_record r JOIN dispatch_record t ON t.id = r.treatment_plan_id
WHERE pl.source_table = 'dispatch_record' AND pl.reason = 'orphan_treatment_plan'
  AND r.id = pl.source_key::int;

DELETE FROM ferry_demo.planted pl
USING ferry_demo.purchases_csv c JOIN dispatch_office o ON o.id = c.office_id
WHERE pl.source_table = 'purchases.csv' AND pl.reason = 'orphan_office'
  AND c.external_id = pl.source_key;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['dispatch_notification', 'dispatch_record', 'dispatch_file',
                             'dispatch_state']
    LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, ''id''), '
                       'coalesce((SELECT max(id) FROM %I WHERE id < 1000000000), 1))', t, t);
    END LOOP;
END
$$;
