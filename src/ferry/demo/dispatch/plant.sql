-- Plants the defects of DOMAIN.md's "Defects and their expected fate" into the clean world that
-- generate.sql built (same session: it reads the g_* temporary tables), and writes down in
-- ferry_demo.planted what it did to which row.
--
-- Rules that keep the ground truth unambiguous:
--   * one defect per row: ferry_demo.planted's primary key refuses a second one;
--   * no defect under an abandoned case or under a quarantined parent (only the cascade rows
--     themselves live there), so that a row's fate never depends on a precedence rule;
--   * an orphan points into a range no sequence will reach, one range per kind, so that no row
--     inserted later adopts it by accident -- only the delta's deliberate "missing parents" do:
--       1,000,000,000 + k  instruction of an orphan_order file (the delta restores k = 1)
--       1,100,000,000 + c  treatment plan of an orphan_treatment_plan record, c = its case id
--       1,200,000,000 + n  case (and half the time instruction) of a missing_case state
--       1,300,000,000 + n  record or file of an orphan_record / orphan_file attachment
--       1,400,000,000 + n  dangling doctor of a doctor_from_case instruction
--       1,500,000,000 + k  office of an orphan_office purchase (the delta restores k = 1);
--   * "exactly k rows": ORDER BY ferry_demo.h(seed, tag, id), id LIMIT k among eligible rows.
--
-- The reasons are the names the migration spec uses (see world.py, REASONS).

-- @step setup
CREATE TABLE ferry_demo.planted (
    source_table text NOT NULL,
    source_key text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (source_table, source_key)
);
-- Source rows the delta deleted (their fate in the truth: deleted).
CREATE TABLE ferry_demo.deleted (
    source_table text NOT NULL,
    source_key text NOT NULL,
    PRIMARY KEY (source_table, source_key)
);
-- What the delta did, one row per statement (apply_delta sums it).
CREATE TABLE ferry_demo.delta_log (op text NOT NULL, source_table text NOT NULL, n bigint NOT NULL);
-- The delta is applied at most once per generated world.
CREATE TABLE ferry_demo.meta (delta_applied boolean NOT NULL);
INSERT INTO ferry_demo.meta VALUES (false);

-- @step users
-- The later of two emails that differ only in case: the target's unique index rejects it.
INSERT INTO ferry_demo.planted
SELECT 'auth_user', u.id::text, 'unique_violation'
FROM auth_user u, ferry_demo.params p
WHERE u.id > p.n_user - p.n_dup_user;

-- @step offices
INSERT INTO ferry_demo.planted
SELECT 'dispatch_office', id::text, 'duplicate_office'
FROM ferry_demo.params p, generate_series(p.n_clinic + 1, p.n_office) id;

INSERT INTO ferry_demo.planted
SELECT 'dispatch_office', id::text, 'unknown_country'
FROM ferry_demo.params p, generate_series(p.n_good_clinic + 1, p.n_clinic) id;

-- @step cases
-- Hosts of missing_doctor: a case without a doctor whose first instruction has none either.
CREATE TEMP TABLE g_host AS
SELECT g.k
FROM g_case g, ferry_demo.params p
WHERE g.instr_cnt > 0
ORDER BY ferry_demo.h(p.seed, 100, g.k), g.k
LIMIT (SELECT d_missing_doctor FROM ferry_demo.params);

UPDATE dispatch_instance SET doctor_id = NULL WHERE id IN (SELECT k FROM g_host);

WITH u AS (
    UPDATE dispatch_instruction i SET doctor_id = NULL
    FROM g_host h JOIN g_case g ON g.k = h.k
    WHERE i.id = g.instr_first
    RETURNING i.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_instruction', id::text, 'missing_doctor' FROM u;

WITH pick AS (
    SELECT g.k
    FROM g_case g, ferry_demo.params p
    WHERE g.k NOT IN (SELECT k FROM g_host)
    ORDER BY ferry_demo.h(p.seed, 101, g.k), g.k
    LIMIT (SELECT d_abandoned FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_instance i
    SET status = 'abandoned', closed_at = i.created_at + interval '120 days',
        updated_at = i.created_at + interval '120 days'
    FROM pick WHERE i.id = pick.k
    RETURNING i.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_instance', id::text, 'abandoned' FROM u;

-- Nothing else is planted under these: abandoned cases and quarantined instructions.
CREATE TEMP TABLE g_bad_case AS
SELECT id FROM dispatch_instance WHERE status = 'abandoned';

CREATE TEMP TABLE g_bad_instr AS
SELECT id FROM dispatch_instruction WHERE instance_id IN (SELECT id FROM g_bad_case)
UNION
SELECT source_key::int FROM ferry_demo.planted WHERE reason = 'missing_doctor';

-- @step instructions
-- No usable doctor (two thirds NULL, one third dangling), but the case has one.
WITH pick0 AS (
    SELECT i.id
    FROM dispatch_instruction i, ferry_demo.params p
    WHERE i.id NOT IN (SELECT id FROM g_bad_instr)
      AND i.instance_id NOT IN (SELECT k FROM g_host)
    ORDER BY ferry_demo.h(p.seed, 102, i.id), i.id
    LIMIT (SELECT d_doctor_from_case FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM pick0
), u AS (
    UPDATE dispatch_instruction i
    SET doctor_id = CASE WHEN pick.n % 3 = 0 THEN 1400000000 + pick.n::int END
    FROM pick WHERE i.id = pick.id
    RETURNING i.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_instruction', id::text, 'doctor_from_case' FROM u;

-- @step jaws
WITH pick0 AS (
    SELECT j.id
    FROM dispatch_jaw j, ferry_demo.params p
    WHERE j.instruction_id NOT IN (SELECT id FROM g_bad_instr)
    ORDER BY ferry_demo.h(p.seed, 103, j.id), j.id
    LIMIT (SELECT d_jaw_type_unknown + d_jaw_type FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY ferry_demo.h(p.seed, 103, id), id) AS n
    FROM pick0, ferry_demo.params p
), u AS (
    UPDATE dispatch_jaw j
    SET jaw = CASE
        WHEN pick.n <= p.d_jaw_type_unknown
            THEN (ARRAY['', NULL, 'both', '?'])[(1 + pick.n % 4)::int]
        WHEN j.jaw = 'upper'
            THEN (ARRAY['U', 'Upper Jaw', 'maxillary', 'UPPER', 'Upper', ' upper'])[(1 + pick.n % 6)::int]
        ELSE (ARRAY['L', 'Lower Jaw', 'mandibular', 'LOWER', 'Lower', 'lower '])[(1 + pick.n % 6)::int]
    END
    FROM pick, ferry_demo.params p
    WHERE j.id = pick.id
    RETURNING j.id, pick.n <= p.d_jaw_type_unknown AS unknown
)
INSERT INTO ferry_demo.planted
SELECT 'dispatch_jaw', id::text, CASE WHEN unknown THEN 'jaw_type_unknown' ELSE 'jaw_type' END
FROM u;

-- @step attachments
-- CSV orphans, on attachments whose record and file are otherwise clean.
WITH pick0 AS (
    SELECT a.id
    FROM ferry_demo.record_attachments_csv a
    JOIN dispatch_record r ON r.id = a.record_id
    JOIN dispatch_file f ON f.id = a.file_id
    CROSS JOIN ferry_demo.params p
    WHERE r.instance_id NOT IN (SELECT id FROM g_bad_case)
      AND coalesce(r.instruction_id, 0) NOT IN (SELECT id FROM g_bad_instr)
      AND r.treatment_plan_id IS NULL
      AND f.instruction_id NOT IN (SELECT id FROM g_bad_instr)
    ORDER BY ferry_demo.h(p.seed, 104, a.id), a.id
    LIMIT (SELECT d_orphan_record + d_orphan_file FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY ferry_demo.h(p.seed, 104, id), id) AS n
    FROM pick0, ferry_demo.params p
), u AS (
    UPDATE ferry_demo.record_attachments_csv a
    SET record_id = CASE WHEN pick.n <= p.d_orphan_record THEN 1300000000 + pick.n::int
                         ELSE a.record_id END,
        file_id = CASE WHEN pick.n > p.d_orphan_record THEN 1300000000 + pick.n::int
                       ELSE a.file_id END
    FROM pick, ferry_demo.params p
    WHERE a.id = pick.id
    RETURNING a.id, pick.n <= p.d_orphan_record AS rec
)
INSERT INTO ferry_demo.planted
SELECT 'record_attachments.csv', id::text,
       CASE WHEN rec THEN 'orphan_record' ELSE 'orphan_file' END
FROM u;

-- @step files
-- Files of an instruction that does not exist; the orphans share k_dangling_instr missing ids,
-- and the delta brings back the first of them.
WITH pick0 AS (
    SELECT f.id
    FROM dispatch_file f, ferry_demo.params p
    WHERE f.instruction_id NOT IN (SELECT id FROM g_bad_instr)
      AND f.id NOT IN (SELECT file_id FROM ferry_demo.record_attachments_csv)
    ORDER BY ferry_demo.h(p.seed, 105, f.id), f.id
    LIMIT (SELECT d_orphan_order FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM pick0
), u AS (
    UPDATE dispatch_file f
    SET instruction_id = 1000000001 + ((pick.n - 1) % p.k_dangling_instr)::int
    FROM pick, ferry_demo.params p
    WHERE f.id = pick.id
    RETURNING f.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_file', id::text, 'orphan_order' FROM u;

-- @step records
-- Drafts: comments that nothing refers to (no attachment, no treatment plan link).
WITH pick AS (
    SELECT r.id
    FROM dispatch_record r, ferry_demo.params p
    WHERE r.kind = 'comment'
      AND r.treatment_plan_id IS NULL
      AND r.instance_id NOT IN (SELECT id FROM g_bad_case)
      AND coalesce(r.instruction_id, 0) NOT IN (SELECT id FROM g_bad_instr)
      AND r.id NOT IN (SELECT record_id FROM ferry_demo.record_attachments_csv)
    ORDER BY ferry_demo.h(p.seed, 106, r.id), r.id
    LIMIT (SELECT d_draft FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_record r SET kind = 'draft' FROM pick WHERE r.id = pick.id RETURNING r.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_record', id::text, 'draft' FROM u;

-- A treatment_plan_id that points nowhere: at most one per case, and the missing plan's id is
-- 1,100,000,000 + the case id, so that the delta can bring one back into the right case.
WITH cand AS (
    SELECT DISTINCT ON (r.instance_id) r.id, r.instance_id
    FROM dispatch_record r, ferry_demo.params p
    WHERE r.kind = 'comment'
      AND r.instance_id NOT IN (SELECT id FROM g_bad_case)
      AND coalesce(r.instruction_id, 0) NOT IN (SELECT id FROM g_bad_instr)
      AND r.id NOT IN (SELECT a.record_id
                       FROM ferry_demo.record_attachments_csv a
                       JOIN ferry_demo.planted pl
                         ON pl.source_table = 'record_attachments.csv'
                        AND pl.source_key = a.id::text)
    ORDER BY r.instance_id, ferry_demo.h(p.seed, 107, r.id), r.id
), pick AS (
    SELECT c.id, c.instance_id
    FROM cand c, ferry_demo.params p
    ORDER BY ferry_demo.h(p.seed, 108, c.instance_id), c.instance_id
    LIMIT (SELECT d_orphan_treatment_plan FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_record r SET treatment_plan_id = 1100000000 + pick.instance_id
    FROM pick WHERE r.id = pick.id
    RETURNING r.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_record', id::text, 'orphan_treatment_plan' FROM u;

-- @step states
-- Neither the case nor the instruction resolves: half with instruction_id NULL, half dangling.
WITH pick0 AS (
    SELECT s.id
    FROM dispatch_state s, ferry_demo.params p
    ORDER BY ferry_demo.h(p.seed, 109, s.id), s.id
    LIMIT (SELECT d_missing_case FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM pick0
), u AS (
    UPDATE dispatch_state s
    SET instance_id = 1200000000 + pick.n::int,
        instruction_id = CASE WHEN pick.n % 2 = 0 THEN 1200000000 + pick.n::int END
    FROM pick WHERE s.id = pick.id
    RETURNING s.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_state', id::text, 'missing_case' FROM u;

-- @step payments
WITH pick0 AS (
    SELECT y.id
    FROM dispatch_payment y, ferry_demo.params p
    WHERE y.instruction_id NOT IN (SELECT id FROM g_bad_instr)
    ORDER BY ferry_demo.h(p.seed, 110, y.id), y.id
    LIMIT (SELECT d_payment_method_unknown + d_method_inferred FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY ferry_demo.h(p.seed, 110, id), id) AS n
    FROM pick0, ferry_demo.params p
), u AS (
    UPDATE dispatch_payment y
    SET method = NULL,
        reference = CASE WHEN pick.n <= p.d_payment_method_unknown
                         THEN (ARRAY[NULL, 'cash', 'N/A', 'manual entry', 'REF-' || y.id])[(1 + pick.n % 5)::int]
                         ELSE y.reference END
    FROM pick, ferry_demo.params p
    WHERE y.id = pick.id
    RETURNING y.id, pick.n <= p.d_payment_method_unknown AS unknown
)
INSERT INTO ferry_demo.planted
SELECT 'dispatch_payment', id::text,
       CASE WHEN unknown THEN 'payment_method_unknown' ELSE 'method_inferred' END
FROM u;

-- @step notifications
-- Invalid JSON, one row in each of d_invalid_json equal slices of the id range (no scan needed).
WITH pick AS (
    SELECT m, ((m - 1) * p.n_notif) / p.d_invalid_json + 1
              + ferry_demo.h(p.seed, 111, m) % greatest(p.n_notif / p.d_invalid_json, 1) AS id
    FROM ferry_demo.params p, generate_series(1, p.d_invalid_json) m
), u AS (
    UPDATE dispatch_notification n
    SET template_context = CASE pick.m % 5
        WHEN 0 THEN left(n.template_context, length(n.template_context) - 1)
        WHEN 1 THEN replace(n.template_context, '"', '''')
        WHEN 2 THEN 'None'
        WHEN 3 THEN rtrim(n.template_context, '}') || ',}'
        ELSE '' END
    FROM pick WHERE n.id = pick.id
    RETURNING n.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_notification', id::text, 'invalid_json' FROM u;

-- @step patients
WITH pick AS (
    SELECT t.id
    FROM dispatch_patient t, ferry_demo.params p
    ORDER BY ferry_demo.h(p.seed, 112, t.id), t.id
    LIMIT (SELECT d_office_from_doctor FROM ferry_demo.params)
), u AS (
    UPDATE dispatch_patient t SET office_id = NULL FROM pick WHERE t.id = pick.id RETURNING t.id
)
INSERT INTO ferry_demo.planted SELECT 'dispatch_patient', id::text, 'office_from_doctor' FROM u;

WITH pick0 AS (
    SELECT t.id
    FROM dispatch_patient t, ferry_demo.params p
    WHERE t.suffix IS NOT NULL AND t.office_id IS NOT NULL
    ORDER BY ferry_demo.h(p.seed, 113, t.id), t.id
    LIMIT (SELECT d_suffix_invalid + d_suffix_normalized FROM ferry_demo.params)
), pick AS (
    SELECT id, row_number() OVER (ORDER BY ferry_demo.h(p.seed, 113, id), id) AS n
    FROM pick0, ferry_demo.params p
), u AS (
    UPDATE dispatch_patient t
    SET suffix = CASE
        WHEN pick.n <= p.d_suffix_invalid
            THEN (ARRAY['ZZ', 'A1B2C3', 'A1-B2', '12345', 'N/A'])[(1 + pick.n % 5)::int]
        ELSE CASE pick.n % 4 WHEN 0 THEN ' ' || lower(t.suffix) || ' '
                             WHEN 1 THEN lower(t.suffix) || ' '
                             WHEN 2 THEN t.suffix || ' '
                             ELSE '  ' || t.suffix END
    END
    FROM pick, ferry_demo.params p
    WHERE t.id = pick.id
    RETURNING t.id, pick.n <= p.d_suffix_invalid AS invalid
)
INSERT INTO ferry_demo.planted
SELECT 'dispatch_patient', id::text,
       CASE WHEN invalid THEN 'suffix_invalid' ELSE 'suffix_normalized' END
FROM u;

-- @step purchases
-- Purchases of an office that does not exist (k_dangling_office missing ids; the delta brings
-- back the first).
WITH pick0 AS (
    SELECT c.external_id
    FROM ferry_demo.purchases_csv c, ferry_demo.params p
    ORDER BY ferry_demo.h(p.seed, 114, substr(c.external_id, 4)::bigint), c.external_id COLLATE "C"
    LIMIT (SELECT d_orphan_office FROM ferry_demo.params)
), pick AS (
    SELECT external_id, row_number() OVER (ORDER BY external_id COLLATE "C") AS n FROM pick0
), u AS (
    UPDATE ferry_demo.purchases_csv c
    SET office_id = 1500000001 + ((pick.n - 1) % p.k_dangling_office)::int
    FROM pick, ferry_demo.params p
    WHERE c.external_id = pick.external_id
    RETURNING c.external_id
)
INSERT INTO ferry_demo.planted SELECT 'purchases.csv', external_id, 'orphan_office' FROM u;

-- @step sequences
-- The application's sequences continue after the highest ordinary id.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['auth_group', 'auth_user', 'auth_user_groups', 'dispatch_office',
        'dispatch_office_members', 'dispatch_patient', 'dispatch_instance', 'dispatch_instruction',
        'dispatch_jaw', 'dispatch_file', 'dispatch_record', 'dispatch_state', 'dispatch_template',
        'dispatch_notification', 'dispatch_payment', 'dispatch_agent', 'dispatch_operation']
    LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, ''id''), '
                       'coalesce((SELECT max(id) FROM %I WHERE id < 1000000000), 1))', t, t);
    END LOOP;
END
$$;
