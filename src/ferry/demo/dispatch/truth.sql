-- Rebuilds ferry_demo.truth, the expected fate of every planted row, from the legacy data as it
-- stands now (after generation, or after the delta).
--
-- One line per row whose fate is not "migrated with no repair". Sources of a fate:
--   * ferry_demo.planted: what plant.sql (and the delta) did to a row's own values -- the
--     generator knows which template_context it broke, no need to parse 2M JSON texts;
--   * the data itself for orphans (a parent that does not exist): computed here, so that a parent
--     the delta brings back resolves its orphans;
--   * the parent links for cascades (parent_excluded, parent_quarantined), table by table in
--     dependency order;
--   * ferry_demo.deleted for source rows the delta deleted.
--
-- Precedence, should a row qualify twice (the generator avoids it; tests check it never does):
-- a parent excluded > a parent quarantined > own exclusion > orphan > own rejection or repair.
--
-- Parent links followed (and nothing else):
--   office_members -> office, auth_user        patient -> auth_user (user_id)
--   instance -> patient                        instruction -> instance
--   jaw -> instruction                         file -> instruction (missing: orphan_order)
--   record -> instance, -> instruction when set, -> a record of kind treatment_plan when
--     treatment_plan_id is set (missing: orphan_treatment_plan)
--   state -> instruction when it resolves, else -> instance (neither: missing_case)
--   payment -> instruction                     operation -> instruction, agent
--   agent -> auth_user                         notification -> recipient, actor (when set), template
--   purchases.csv -> office (missing: orphan_office)
--   record_attachments.csv -> record (missing: orphan_record), file (missing: orphan_file)
-- A merged (duplicate) office is not a bad parent: its children are re-pointed to the survivor.

-- @step setup
DROP TABLE IF EXISTS ferry_demo.truth;
CREATE TABLE ferry_demo.truth (
    source_table text NOT NULL,
    source_key text NOT NULL,
    status text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (source_table, source_key)
);

DROP TABLE IF EXISTS ferry_demo.reasons;
CREATE TABLE ferry_demo.reasons (reason text PRIMARY KEY, status text NOT NULL, kind text NOT NULL);
INSERT INTO ferry_demo.reasons (reason, status, kind) VALUES
    ('abandoned', 'excluded', 'exclude'),
    ('draft', 'excluded', 'exclude'),
    ('parent_excluded', 'excluded', 'cascade'),
    ('duplicate_office', 'merged', 'merge'),
    ('invalid_json', 'quarantined', 'reject'),
    ('jaw_type_unknown', 'quarantined', 'reject'),
    ('missing_doctor', 'quarantined', 'reject'),
    ('payment_method_unknown', 'quarantined', 'reject'),
    ('unknown_country', 'quarantined', 'reject'),
    ('unique_violation', 'quarantined', 'reject'),
    ('missing_case', 'quarantined', 'orphan'),
    ('orphan_treatment_plan', 'quarantined', 'orphan'),
    ('orphan_order', 'quarantined', 'orphan'),
    ('orphan_office', 'quarantined', 'orphan'),
    ('orphan_record', 'quarantined', 'orphan'),
    ('orphan_file', 'quarantined', 'orphan'),
    ('parent_quarantined', 'quarantined', 'cascade'),
    ('jaw_type', 'migrated', 'repair'),
    ('doctor_from_case', 'migrated', 'repair'),
    ('method_inferred', 'migrated', 'repair'),
    ('suffix_normalized', 'migrated', 'repair'),
    ('suffix_invalid', 'migrated', 'repair'),
    ('office_from_doctor', 'migrated', 'repair');

-- Keys of a table's rows that have the given status so far.
CREATE OR REPLACE FUNCTION ferry_demo.bad(tbl text, st text) RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT source_key::bigint FROM ferry_demo.truth WHERE source_table = tbl AND status = st
$$;

-- A table's own planted values (not orphans: those are read from the data), keyed by integer.
CREATE OR REPLACE FUNCTION ferry_demo.own(tbl text)
RETURNS TABLE (k bigint, reason text, status text, kind text)
LANGUAGE sql STABLE AS $$
    SELECT pl.source_key::bigint, pl.reason, r.status, r.kind
    FROM ferry_demo.planted pl JOIN ferry_demo.reasons r USING (reason)
    WHERE pl.source_table = tbl AND r.kind <> 'orphan'
$$;

INSERT INTO ferry_demo.truth
SELECT source_table, source_key, 'deleted', '' FROM ferry_demo.deleted;

-- @step people
INSERT INTO ferry_demo.truth
SELECT 'auth_user', o.k::text, o.status, o.reason FROM ferry_demo.own('auth_user') o
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_office', o.k::text, o.status, o.reason FROM ferry_demo.own('dispatch_office') o
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_office_members', x.id::text,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' ELSE 'parent_quarantined' END
FROM (SELECT m.id,
             m.office_id IN (SELECT ferry_demo.bad('dispatch_office', 'excluded'))
             OR m.user_id IN (SELECT ferry_demo.bad('auth_user', 'excluded')) AS pe,
             m.office_id IN (SELECT ferry_demo.bad('dispatch_office', 'quarantined'))
             OR m.user_id IN (SELECT ferry_demo.bad('auth_user', 'quarantined')) AS pq
      FROM dispatch_office_members m) x
WHERE x.pe OR x.pq
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_agent', x.id::text,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' ELSE 'parent_quarantined' END
FROM (SELECT a.id,
             a.user_id IN (SELECT ferry_demo.bad('auth_user', 'excluded')) AS pe,
             a.user_id IN (SELECT ferry_demo.bad('auth_user', 'quarantined')) AS pq
      FROM dispatch_agent a) x
WHERE x.pe OR x.pq
ON CONFLICT DO NOTHING;

-- patient -> auth_user; own repairs.
INSERT INTO ferry_demo.truth
SELECT 'dispatch_patient', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT t.id, o.status AS st, o.reason AS rs,
             t.user_id IN (SELECT ferry_demo.bad('auth_user', 'excluded')) AS pe,
             t.user_id IN (SELECT ferry_demo.bad('auth_user', 'quarantined')) AS pq
      FROM dispatch_patient t LEFT JOIN ferry_demo.own('dispatch_patient') o ON o.k = t.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

-- @step cases
INSERT INTO ferry_demo.truth
SELECT 'dispatch_instance', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT c.id, o.status AS st, o.reason AS rs,
             c.patient_id IN (SELECT ferry_demo.bad('dispatch_patient', 'excluded')) AS pe,
             c.patient_id IN (SELECT ferry_demo.bad('dispatch_patient', 'quarantined')) AS pq
      FROM dispatch_instance c LEFT JOIN ferry_demo.own('dispatch_instance') o ON o.k = c.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_instruction', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT i.id, o.status AS st, o.reason AS rs,
             i.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'excluded')) AS pe,
             i.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'quarantined')) AS pq
      FROM dispatch_instruction i
      LEFT JOIN ferry_demo.own('dispatch_instruction') o ON o.k = i.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

-- @step orders
INSERT INTO ferry_demo.truth
SELECT 'dispatch_jaw', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT j.id, o.status AS st, o.reason AS rs,
             j.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded')) AS pe,
             j.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined')) AS pq
      FROM dispatch_jaw j LEFT JOIN ferry_demo.own('dispatch_jaw') o ON o.k = j.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_file', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined'
            ELSE 'orphan_order' END
FROM (SELECT f.id,
             f.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded')) AS pe,
             f.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined')) AS pq,
             i.id IS NULL AS orphan
      FROM dispatch_file f LEFT JOIN dispatch_instruction i ON i.id = f.instruction_id) x
WHERE x.pe OR x.pq OR x.orphan
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_payment', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT y.id, o.status AS st, o.reason AS rs,
             y.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded')) AS pe,
             y.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined')) AS pq
      FROM dispatch_payment y LEFT JOIN ferry_demo.own('dispatch_payment') o ON o.k = y.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_operation', x.id::text,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' ELSE 'parent_quarantined' END
FROM (SELECT op.id,
             op.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded'))
             OR op.agent_id IN (SELECT ferry_demo.bad('dispatch_agent', 'excluded')) AS pe,
             op.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined'))
             OR op.agent_id IN (SELECT ferry_demo.bad('dispatch_agent', 'quarantined')) AS pq
      FROM dispatch_operation op) x
WHERE x.pe OR x.pq
ON CONFLICT DO NOTHING;

-- state -> its instruction when that resolves, else -> its case; neither: missing_case.
INSERT INTO ferry_demo.truth
SELECT 'dispatch_state', x.id::text,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined'
            ELSE 'missing_case' END
FROM (SELECT s.id,
             CASE WHEN i.id IS NOT NULL
                  THEN i.id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded'))
                  ELSE c.id IN (SELECT ferry_demo.bad('dispatch_instance', 'excluded')) END AS pe,
             CASE WHEN i.id IS NOT NULL
                  THEN i.id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined'))
                  ELSE c.id IN (SELECT ferry_demo.bad('dispatch_instance', 'quarantined')) END AS pq,
             i.id IS NULL AND c.id IS NULL AS orphan
      FROM dispatch_state s
      LEFT JOIN dispatch_instruction i ON i.id = s.instruction_id
      LEFT JOIN dispatch_instance c ON c.id = s.instance_id) x
WHERE x.pe OR x.pq OR x.orphan
ON CONFLICT DO NOTHING;

-- @step records
-- Two passes: the records that name no treatment plan (the plans among them), then the rest,
-- whose fate may follow their plan's.
INSERT INTO ferry_demo.truth
SELECT 'dispatch_record', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT r.id, o.status AS st, o.reason AS rs,
             r.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'excluded'))
             OR r.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded')) AS pe,
             r.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'quarantined'))
             OR r.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined'))
                 AS pq
      FROM dispatch_record r LEFT JOIN ferry_demo.own('dispatch_record') o ON o.k = r.id
      WHERE r.treatment_plan_id IS NULL) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'dispatch_record', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined'
            WHEN x.kind = 'exclude' THEN x.st WHEN x.orphan THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined'
            WHEN x.kind = 'exclude' THEN x.rs WHEN x.orphan THEN 'orphan_treatment_plan'
            ELSE x.rs END
FROM (SELECT r.id, o.status AS st, o.reason AS rs, o.kind,
             r.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'excluded'))
             OR r.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'excluded'))
             OR r.treatment_plan_id IN (SELECT ferry_demo.bad('dispatch_record', 'excluded')) AS pe,
             r.instance_id IN (SELECT ferry_demo.bad('dispatch_instance', 'quarantined'))
             OR r.instruction_id IN (SELECT ferry_demo.bad('dispatch_instruction', 'quarantined'))
             OR r.treatment_plan_id IN (SELECT ferry_demo.bad('dispatch_record', 'quarantined'))
                 AS pq,
             tp.id IS NULL AS orphan
      FROM dispatch_record r
      LEFT JOIN dispatch_record tp ON tp.id = r.treatment_plan_id AND tp.kind = 'treatment_plan'
      LEFT JOIN ferry_demo.own('dispatch_record') o ON o.k = r.id
      WHERE r.treatment_plan_id IS NOT NULL) x
WHERE x.pe OR x.pq OR x.orphan OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

-- @step notifications
INSERT INTO ferry_demo.truth
SELECT 'dispatch_notification', x.id::text,
       CASE WHEN x.pe THEN 'excluded' WHEN x.pq THEN 'quarantined' ELSE x.st END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined' ELSE x.rs END
FROM (SELECT n.id, o.status AS st, o.reason AS rs,
             n.recipient_id IN (SELECT ferry_demo.bad('auth_user', 'excluded'))
             OR n.actor_id IN (SELECT ferry_demo.bad('auth_user', 'excluded'))
             OR n.template_id IN (SELECT ferry_demo.bad('dispatch_template', 'excluded')) AS pe,
             n.recipient_id IN (SELECT ferry_demo.bad('auth_user', 'quarantined'))
             OR n.actor_id IN (SELECT ferry_demo.bad('auth_user', 'quarantined'))
             OR n.template_id IN (SELECT ferry_demo.bad('dispatch_template', 'quarantined')) AS pq
      FROM dispatch_notification n
      LEFT JOIN ferry_demo.own('dispatch_notification') o ON o.k = n.id) x
WHERE x.pe OR x.pq OR x.rs IS NOT NULL
ON CONFLICT DO NOTHING;

-- @step csv
INSERT INTO ferry_demo.truth
SELECT 'purchases.csv', x.external_id,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined'
            ELSE 'orphan_office' END
FROM (SELECT c.external_id,
             c.office_id IN (SELECT ferry_demo.bad('dispatch_office', 'excluded')) AS pe,
             c.office_id IN (SELECT ferry_demo.bad('dispatch_office', 'quarantined')) AS pq,
             o.id IS NULL AS orphan
      FROM ferry_demo.purchases_csv c LEFT JOIN dispatch_office o ON o.id = c.office_id) x
WHERE x.pe OR x.pq OR x.orphan
ON CONFLICT DO NOTHING;

INSERT INTO ferry_demo.truth
SELECT 'record_attachments.csv', x.id::text,
       CASE WHEN x.pe THEN 'excluded' ELSE 'quarantined' END,
       CASE WHEN x.pe THEN 'parent_excluded' WHEN x.pq THEN 'parent_quarantined'
            WHEN x.no_record THEN 'orphan_record' ELSE 'orphan_file' END
FROM (SELECT a.id,
             a.record_id IN (SELECT ferry_demo.bad('dispatch_record', 'excluded'))
             OR a.file_id IN (SELECT ferry_demo.bad('dispatch_file', 'excluded')) AS pe,
             a.record_id IN (SELECT ferry_demo.bad('dispatch_record', 'quarantined'))
             OR a.file_id IN (SELECT ferry_demo.bad('dispatch_file', 'quarantined')) AS pq,
             r.id IS NULL AS no_record,
             f.id IS NULL AS no_file
      FROM ferry_demo.record_attachments_csv a
      LEFT JOIN dispatch_record r ON r.id = a.record_id
      LEFT JOIN dispatch_file f ON f.id = a.file_id) x
WHERE x.pe OR x.pq OR x.no_record OR x.no_file
ON CONFLICT DO NOTHING;
