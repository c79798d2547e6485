-- Generates the CLEAN legacy world of DOMAIN.md; plant.sql then plants the defects.
--
-- Run by ferry.demo.world in one transaction, right after legacy.sql's `tables` step and the
-- creation of ferry_demo.params (one row: the seed and every row count for the chosen scale).
-- Everything is set-based (INSERT ... SELECT over generate_series): no per-row round trips.
--
-- Determinism: no random(). Every "random" choice is ferry_demo.h(seed, tag, n), a pure integer
-- hash of the seed, a tag unique to the column/decision, and a row number; same seed and scale
-- give byte-identical tables on any machine (no hashint8/hashtext: their output is not promised
-- stable across platforms). Choices of "exactly k rows" are ORDER BY h(...), id LIMIT k.
--
-- Shape of the ids (row counts are the params' n_* columns):
--   auth_user: doctors 1..n_doc, technicians .., patients .., admins (the last n_dup_user admins
--     repeat an earlier doctor's email with different case);
--   dispatch_office: 1..n_clinic are the clinics (the survivors of any merge; the last
--     n_office_unknown of them have a country that maps to no ISO code), then the duplicates;
--   instructions, records, jaws and files are contiguous per parent, so a case's files are one
--     id range (g_case / g_instr keep the ranges for plant.sql, in this session).

-- @step functions
-- lowbias32 (Chris Wellons' hash-prospector) over i*golden-ratio + seed/tag offsets, all in
-- bigint arithmetic that never overflows (seed < 2^31, i < 2^31). Written out in full rather than
-- as nested functions so that the planner inlines it: an inlined expression costs ~0.25 us per
-- call, a SQL function call costs ten times that.
CREATE FUNCTION ferry_demo.h(s bigint, t int, i bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ((((((((((((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295) >> 16) # ((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295)) * 569420461) & 4294967295) >> 15) # ((((((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295) >> 16) # ((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295)) * 569420461) & 4294967295)) * 1935289751) & 4294967295) >> 15) # ((((((((((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295) >> 16) # ((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295)) * 569420461) & 4294967295) >> 15) # ((((((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295) >> 16) # ((i * 2654435761 + s * 1000003 + t * 7919) & 4294967295)) * 569420461) & 4294967295)) * 1935289751) & 4294967295))
$$;

-- The i-th of n moments spread over the legacy app's life (2018-01-01 .. early Oct 2025), plus
-- j seconds of jitter: ids and times grow together, as they do in a real table.
CREATE FUNCTION ferry_demo.ts(i bigint, n bigint, j bigint) RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT timestamp '2018-01-01 00:00:00' + ((i * 245000000) / n + j) * interval '1 second'
$$;

-- One element of a constant array, chosen by a hash.
CREATE FUNCTION ferry_demo.pick(a text[], x bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT a[(1 + x % cardinality(a))::int]
$$;

CREATE TABLE ferry_demo.country_variant (code text, k int, variant text, canonical text, n int);
INSERT INTO ferry_demo.country_variant (code, k, variant, canonical)
VALUES ('US', 0, 'United States', 'United States'), ('US', 1, 'USA', 'United States'),
       ('US', 2, 'U.S.A.', 'United States'), ('US', 3, 'US', 'United States'),
       ('US', 4, 'united states', 'United States'),
       ('JP', 0, 'Japan', 'Japan'), ('JP', 1, 'JP', 'Japan'), ('JP', 2, 'japan ', 'Japan'),
       ('JP', 3, 'JAPAN', 'Japan'),
       ('TH', 0, 'Thailand', 'Thailand'), ('TH', 1, 'TH', 'Thailand'),
       ('TH', 2, 'thailand', 'Thailand'),
       ('IN', 0, 'India', 'India'), ('IN', 1, 'IN', 'India'), ('IN', 2, 'india ', 'India'),
       ('AU', 0, 'Australia', 'Australia'), ('AU', 1, 'AU', 'Australia'),
       ('AU', 2, 'australia', 'Australia');
UPDATE ferry_demo.country_variant v
SET n = (SELECT count(*) FROM ferry_demo.country_variant w WHERE w.code = v.code);

-- @step users
INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, last_name,
                       email, is_staff, is_active, date_joined)
SELECT i,
       '!' || to_hex(r1) || to_hex(r2),
       CASE WHEN r2 % 10 < 8 THEN joined + ((r2 >> 8) % 20000000) * interval '1 second' END,
       i = n_doc + n_tech + n_pat + 1,
       lower(fn) || '.' || lower(ln) || i,
       fn,
       ln,
       lower(fn) || '.' || lower(ln) || '.' || i || '@' || dom,
       i > n_doc AND (i <= n_doc + n_tech OR i > n_doc + n_tech + n_pat),
       (r2 >> 4) % 100 < 97,
       joined
FROM (
    SELECT q.*,
           ferry_demo.pick(ARRAY['Anna', 'Ben', 'Chloe', 'Daniel', 'Emma', 'Felix', 'Grace',
               'Hiro', 'Isha', 'Jack', 'Kenji', 'Lena', 'Mai', 'Noah', 'Olivia', 'Priya', 'Quinn',
               'Ravi', 'Sakura', 'Tom', 'Uma', 'Victor', 'Wei', 'Yuki', 'Zoe', 'Arjun', 'Bella',
               'Carlos', 'Divya', 'Ethan', 'Fatima', 'George', 'Hana', 'Ivan', 'Julia', 'Kai',
               'Leo', 'Mia', 'Nina', 'Oscar'], q.r1) AS fn,
           ferry_demo.pick(ARRAY['Tanaka', 'Smith', 'Suzuki', 'Johnson', 'Sato', 'Williams',
               'Patel', 'Brown', 'Nakamura', 'Jones', 'Kobayashi', 'Garcia', 'Sharma', 'Miller',
               'Watanabe', 'Davis', 'Ito', 'Wilson', 'Chaiyaporn', 'Anderson', 'Yamamoto',
               'Taylor', 'Singh', 'Thomas', 'Kato', 'Moore', 'Srisuk', 'Martin', 'Yoshida', 'Lee',
               'Gupta', 'White', 'Yamada', 'Harris', 'Sasaki', 'Clark', 'Kumar', 'Lewis', 'Inoue',
               'Walker'], q.r1 >> 8) AS ln,
           ferry_demo.pick(ARRAY['mail.test', 'inbox.test', 'post.test', 'clinic.test'],
               q.r1 >> 16) AS dom,
           ferry_demo.ts(q.i, q.n_user, q.r2 % 3600) AS joined
    FROM (SELECT i, p.n_doc, p.n_tech, p.n_pat, p.n_user,
                 ferry_demo.h(p.seed, 1, i) AS r1, ferry_demo.h(p.seed, 2, i) AS r2
          FROM ferry_demo.params p, generate_series(1, p.n_user - p.n_dup_user) i
          OFFSET 0) q
) u;

-- The duplicates: an admin account that repeats an earlier doctor's email, first letter upper-cased.
INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, last_name,
                       email, is_staff, is_active, date_joined)
SELECT p.n_user - p.n_dup_user + k,
       '!' || to_hex(ferry_demo.h(p.seed, 3, k)),
       NULL,
       false,
       'admin.' || lower(o.first_name) || (p.n_user - p.n_dup_user + k),
       o.first_name,
       o.last_name,
       upper(left(o.email, 1)) || substr(o.email, 2),
       true,
       true,
       ferry_demo.ts(p.n_user - p.n_dup_user + k, p.n_user, 0)
FROM ferry_demo.params p
CROSS JOIN generate_series(1, p.n_dup_user) k
JOIN auth_user o ON o.id = 1 + ((k - 1) * p.n_doc) / p.n_dup_user;

-- @step groups
INSERT INTO auth_group (id, name)
VALUES (1, 'doctor'), (2, 'technician'), (3, 'patient'), (4, 'admin');

INSERT INTO auth_user_groups (id, user_id, group_id)
SELECT i, i, CASE WHEN i <= p.n_doc THEN 1
                  WHEN i <= p.n_doc + p.n_tech THEN 2
                  WHEN i <= p.n_doc + p.n_tech + p.n_pat THEN 3
                  ELSE 4 END
FROM ferry_demo.params p, generate_series(1, p.n_user) i;

-- @step offices
CREATE TEMP TABLE g_clinic AS
SELECT c, r, code, name,
       CASE code
           WHEN 'US' THEN ferry_demo.pick(ARRAY['New York', 'Chicago', 'Houston', 'Phoenix',
                              'Seattle', 'Denver', 'Boston', 'Austin'], r >> 8)
           WHEN 'JP' THEN ferry_demo.pick(ARRAY['Tokyo', 'Osaka', 'Nagoya', 'Sapporo',
                              'Fukuoka', 'Kyoto'], r >> 8)
           WHEN 'TH' THEN ferry_demo.pick(ARRAY['Bangkok', 'Chiang Mai', 'Phuket',
                              'Khon Kaen'], r >> 8)
           WHEN 'IN' THEN ferry_demo.pick(ARRAY['Mumbai', 'Delhi', 'Bengaluru', 'Chennai'],
                              r >> 8)
           WHEN 'AU' THEN ferry_demo.pick(ARRAY['Sydney', 'Melbourne', 'Brisbane', 'Perth'],
                              r >> 8)
           ELSE ferry_demo.pick(ARRAY['Springfield', 'Riverside', 'Fairview'], c)
       END AS city
FROM (
    SELECT c, r,
           CASE WHEN c > n_good_clinic THEN NULL
                WHEN r % 100 < 60 THEN 'US'
                WHEN r % 100 < 80 THEN 'JP'
                WHEN r % 100 < 92 THEN 'TH'
                WHEN r % 100 < 98 THEN 'IN'
                ELSE 'AU' END AS code,
           -- unique by construction: (c-1) = prefix + 30 * kind + 240 * (number - 1)
           ferry_demo.pick(ARRAY['Sakura', 'Maple', 'Cedar', 'Lotus', 'Summit', 'Riverside',
               'Sunrise', 'Bamboo', 'Golden Gate', 'Pacific', 'Oak', 'Willow', 'Bright', 'Pearl',
               'Coral', 'Jade', 'Evergreen', 'Lakeside', 'Crescent', 'Meadow', 'Orchid', 'Silver',
               'Northern', 'Eastside', 'Coastal', 'Valley', 'Parkside', 'Central', 'Hillcrest',
               'Unity'], c - 1)
           || ' ' || ferry_demo.pick(ARRAY['Dental Clinic', 'Orthodontics', 'Smile Center',
               'Dental Care', 'Family Dentistry', 'Dental Studio', 'Ortho Lab', 'Dental Group'],
               (c - 1) / 30)
           || CASE WHEN (c - 1) / 240 = 0 THEN '' ELSE ' ' || ((c - 1) / 240 + 1) END AS name
    FROM (SELECT c, ferry_demo.h(p.seed, 10, c) AS r, p.n_good_clinic
          FROM ferry_demo.params p, generate_series(1, p.n_clinic) c) q
) x;

-- Each duplicate is the same clinic typed again: case, spacing and country spelling differ.
CREATE TEMP TABLE g_dup AS
SELECT j, p.n_clinic + j AS id, 1 + ferry_demo.h(p.seed, 11, j) % p.n_good_clinic AS clinic,
       ferry_demo.h(p.seed, 12, j) AS r
FROM ferry_demo.params p, generate_series(1, p.n_office_dup) j;

INSERT INTO dispatch_office (id, name, address, city, country, phone, email, is_active,
                             created_at, updated_at)
SELECT o.id, o.name,
       (1 + g.r % 300) || ' ' || ferry_demo.pick(ARRAY['Main St', 'Oak Ave', 'Sakura-dori',
           'Station Rd', 'Market St', 'Park Lane', 'Rama IV Rd', 'MG Road', 'George St'],
           g.r >> 9),
       o.city,
       coalesce(v.variant, ferry_demo.pick(ARRAY['Narnia', 'Europe', 'N/A'], g.c)),
       '+' || (10 + g.r % 89) || ' ' || lpad(((g.r >> 7) % 100000000)::text, 8, '0'),
       'office.' || g.c || '@clinic.test',
       true,
       ferry_demo.ts(o.id, p.n_office, g.r % 3600),
       ferry_demo.ts(o.id, p.n_office, g.r % 3600) + interval '30 days'
FROM (
    SELECT c AS id, c AS clinic, name, city, r AS vr FROM g_clinic
    UNION ALL
    SELECT d.id, d.clinic,
           CASE d.r % 4 WHEN 0 THEN upper(c.name) WHEN 1 THEN lower(c.name)
                        WHEN 2 THEN c.name || ' ' ELSE replace(c.name, ' ', '  ') END,
           CASE (d.r >> 2) % 3 WHEN 0 THEN c.city WHEN 1 THEN lower(c.city)
                               ELSE c.city || ' ' END,
           d.r
    FROM g_dup d JOIN g_clinic c ON c.c = d.clinic
) o
JOIN g_clinic g ON g.c = o.clinic
LEFT JOIN ferry_demo.country_variant v ON v.code = g.code AND v.k = (o.vr >> 12) % v.n
CROSS JOIN ferry_demo.params p;

CREATE TEMP TABLE g_office AS
SELECT id, clinic,
       row_number() OVER (PARTITION BY clinic ORDER BY id) AS k,
       count(*) OVER (PARTITION BY clinic) AS cnt
FROM (SELECT c AS id, c AS clinic FROM g_clinic UNION ALL SELECT id, clinic FROM g_dup) x;

-- @step members
-- Membership d is doctor d's first ("home") office; some doctors work in a second clinic too.
-- The row may name a duplicate office: the migration re-points it to the surviving one.
CREATE TEMP TABLE g_doctor AS
SELECT d, 1 + ferry_demo.h(p.seed, 13, d) % p.n_good_clinic AS home_clinic,
       ferry_demo.h(p.seed, 14, d) AS r
FROM ferry_demo.params p, generate_series(1, p.n_doc) d;

INSERT INTO dispatch_office_members (id, office_id, user_id, is_admin, created_at)
SELECT d.d, o.id, d.d, d.r % 4 = 0, ferry_demo.ts(d.d, p.n_doc, d.r % 3600)
FROM g_doctor d
JOIN g_office o ON o.clinic = d.home_clinic AND o.k = 1 + (d.r >> 4) % o.cnt
CROSS JOIN ferry_demo.params p;

INSERT INTO dispatch_office_members (id, office_id, user_id, is_admin, created_at)
SELECT p.n_doc + x.m, o.id, x.d, false, ferry_demo.ts(p.n_doc + x.m, p.n_member, 0)
FROM (SELECT d, home_clinic, r,
             row_number() OVER (ORDER BY ferry_demo.h(p.seed, 15, d), d) AS m
      FROM g_doctor, ferry_demo.params p) x
JOIN ferry_demo.params p ON x.m <= p.n_member - p.n_doc
JOIN g_office o
  ON o.clinic = 1 + (x.home_clinic + (x.r >> 12) % greatest(p.n_good_clinic - 1, 1))
                    % p.n_good_clinic
 AND o.k = 1;

-- @step patients
INSERT INTO dispatch_patient (id, user_id, doctor_id, office_id, first_name, last_name,
                              birth_date, country, suffix, created_at, updated_at)
SELECT q.i, u.id, q.doc, m.office_id, u.first_name, u.last_name,
       date '1950-01-01' + (q.r % 23000)::int,
       cv.canonical,
       CASE WHEN (q.r >> 16) % 100 < 15 THEN NULL
            ELSE substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 1 + (q.s % 36)::int, 1)
                 || substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 1 + ((q.s / 36) % 36)::int, 1)
                 || substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 1 + ((q.s / 1296) % 36)::int, 1)
                 || substr('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 1 + ((q.s / 46656) % 36)::int, 1)
       END,
       u.date_joined + interval '1 hour',
       u.date_joined + interval '1 hour' + ((q.r >> 8) % 8000000) * interval '1 second'
FROM (SELECT i, p.n_doc + p.n_tech + i AS uid,
             1 + ferry_demo.h(p.seed, 20, i) % p.n_doc AS doc,
             ferry_demo.h(p.seed, 21, i) AS r, ferry_demo.h(p.seed, 22, i) AS s
      FROM ferry_demo.params p, generate_series(1, p.n_pat) i) q
JOIN auth_user u ON u.id = q.uid
JOIN dispatch_office_members m ON m.id = q.doc
JOIN g_office go ON go.id = m.office_id
JOIN g_clinic gc ON gc.c = go.clinic
JOIN ferry_demo.country_variant cv ON cv.code = gc.code AND cv.k = 0;

-- @step cases
-- Weighted, exact partitions: case k owns instructions instr_first .. +instr_cnt-1 and records
-- rec_first .. +rec_cnt-1, and the totals are exactly n_instr and n_record.
CREATE TEMP TABLE g_case AS
WITH w AS (
    SELECT k, (1 + ferry_demo.h(p.seed, 30, k) % 5)::int AS wi,
           (1 + ferry_demo.h(p.seed, 31, k) % 16)::int AS wr
    FROM ferry_demo.params p, generate_series(1, p.n_case) k
), c AS (
    SELECT k, wi, wr, sum(wi) OVER (ORDER BY k) AS ci, sum(wr) OVER (ORDER BY k) AS cr,
           sum(wi) OVER () AS ti, sum(wr) OVER () AS tr
    FROM w
)
SELECT k,
       (p.n_instr * (ci - wi)) / ti + 1 AS instr_first,
       (p.n_instr * ci) / ti - (p.n_instr * (ci - wi)) / ti AS instr_cnt,
       (p.n_record * (cr - wr)) / tr + 1 AS rec_first,
       (p.n_record * cr) / tr - (p.n_record * (cr - wr)) / tr AS rec_cnt
FROM c, ferry_demo.params p;

INSERT INTO dispatch_instance (id, patient_id, doctor_id, office_id, title, status, created_at,
                               updated_at, closed_at)
SELECT g.k, pt.id, pt.doctor_id, pt.office_id,
       ferry_demo.pick(ARRAY['Full arch aligners', 'Upper arch refinement', 'Lower crowding',
           'Spacing closure', 'Relapse retreatment', 'Overbite correction',
           'Crossbite correction'], g.r),
       CASE WHEN (g.r >> 8) % 100 < 35 THEN 'completed' ELSE 'active' END,
       g.created,
       g.created + ((g.r >> 4) % 5000000) * interval '1 second',
       CASE WHEN (g.r >> 8) % 100 < 35
            THEN g.created + (200 + (g.r >> 16) % 300) * interval '1 day' END
FROM (SELECT g.k, ferry_demo.h(p.seed, 32, g.k) AS r,
             ferry_demo.ts(g.k, p.n_case, ferry_demo.h(p.seed, 33, g.k) % 3600) AS created
      FROM g_case g, ferry_demo.params p) g
JOIN dispatch_patient pt ON pt.id = g.k;

-- @step instructions
-- An instruction has two jaws (upper, lower) or one; exactly n_jaw - n_instr have two.
CREATE TEMP TABLE g_instr AS
WITH b AS (
    SELECT j, g.k AS case_id, (1 + ferry_demo.h(p.seed, 40, j) % 25)::int AS wf,
           ferry_demo.h(p.seed, 41, j) AS r
    FROM g_case g, ferry_demo.params p,
         generate_series(g.instr_first, g.instr_first + g.instr_cnt - 1) j
), t AS (
    SELECT b.*, (row_number() OVER (ORDER BY r, j) <= p.n_jaw - p.n_instr)::int + 1 AS jaw_cnt
    FROM b, ferry_demo.params p
), c AS (
    SELECT t.*, sum(jaw_cnt) OVER (ORDER BY j) AS cj, sum(wf) OVER (ORDER BY j) AS cf,
           sum(wf) OVER () AS tf
    FROM t
)
SELECT j, case_id, r, cj - jaw_cnt + 1 AS jaw_first, jaw_cnt,
       (p.n_file * (cf - wf)) / tf + 1 AS file_first,
       (p.n_file * cf) / tf - (p.n_file * (cf - wf)) / tf AS file_cnt
FROM c, ferry_demo.params p;

INSERT INTO dispatch_instruction (id, instance_id, doctor_id, status, aligner_count, notes,
                                  submitted_at, created_at, updated_at)
SELECT q.j, q.case_id, ins.doctor_id, q.st, 10 + (q.s >> 8) % 40,
       ferry_demo.pick(ARRAY['Standard aligner set', 'Refinement after scan', 'Add attachments',
           'Rush order', 'Replacement trays', 'Retainers only', ''], q.s >> 16),
       CASE WHEN q.st <> 'draft' THEN q.created + ((q.s >> 4) % 200000) * interval '1 second' END,
       q.created,
       q.created + ((q.s >> 3) % 900000) * interval '1 second'
FROM (SELECT gi.j, gi.case_id, x.s,
             CASE WHEN x.s % 100 < 50 THEN 'shipped'
                  WHEN x.s % 100 < 65 THEN 'in_production'
                  WHEN x.s % 100 < 80 THEN 'submitted'
                  WHEN x.s % 100 < 90 THEN 'draft'
                  ELSE 'cancelled' END AS st,
             ferry_demo.ts(gi.j, p.n_instr, x.s % 3600) AS created
      FROM g_instr gi CROSS JOIN ferry_demo.params p
      CROSS JOIN LATERAL (SELECT ferry_demo.h(p.seed, 42, gi.j) AS s) x) q
JOIN dispatch_instance ins ON ins.id = q.case_id;

-- @step jaws
INSERT INTO dispatch_jaw (id, instruction_id, jaw, data, created_at)
SELECT gi.jaw_first + n - 1, gi.j,
       CASE WHEN gi.jaw_cnt = 2 THEN (CASE WHEN n = 1 THEN 'upper' ELSE 'lower' END)
            WHEN (gi.r >> 20) % 2 = 0 THEN 'upper'
            ELSE 'lower' END,
       jsonb_build_object('teeth', 10 + (gi.r >> (n * 3)) % 7,
                          'attachments', (gi.r >> (9 + n)) % 2 = 0,
                          'scanner', ferry_demo.pick(ARRAY['iTero', '3Shape', 'Medit',
                              'Carestream'], gi.r >> 11)),
       ferry_demo.ts(gi.j, p.n_instr, 3600) + n * interval '1 minute'
FROM g_instr gi CROSS JOIN ferry_demo.params p CROSS JOIN generate_series(1, gi.jaw_cnt) n;

-- @step files
INSERT INTO dispatch_file (id, instruction_id, name, path, content_type, size, created_at)
SELECT f, j, nm, 'uploads/' || case_id || '/' || j || '/' || nm,
       (ARRAY['model/stl', 'image/jpeg', 'image/png', 'application/pdf'])[x],
       20000 + (r >> 8) % 50000000,
       ferry_demo.ts(j, n_instr, 3600) + (f - file_first) * interval '3 minutes'
FROM (
    SELECT f, j, case_id, r, x, file_first, n_instr,
           (ARRAY['scan', 'photo', 'xray', 'report'])[x] || '_' || (f - file_first + 1) || '.'
           || (ARRAY['stl', 'jpg', 'png', 'pdf'])[x] AS nm
    FROM (SELECT f, gi.j, gi.case_id, gi.file_first, p.n_instr,
                 ferry_demo.h(p.seed, 50, f) AS r,
                 (1 + ferry_demo.h(p.seed, 51, f) % 4)::int AS x
          FROM g_instr gi CROSS JOIN ferry_demo.params p
          CROSS JOIN generate_series(gi.file_first, gi.file_first + gi.file_cnt - 1) f
          OFFSET 0) q
) y;

-- @step records
-- A comment may refer to the latest treatment plan of its case (treatment_plan_id).
INSERT INTO dispatch_record (id, instance_id, instruction_id, author_id, kind, text,
                             treatment_plan_id, created_at, updated_at)
WITH b AS (
    SELECT rid, g.k AS case_id, g.instr_first, g.instr_cnt,
           ferry_demo.h(p.seed, 60, rid) AS r1, ferry_demo.h(p.seed, 61, rid) AS r2,
           p.n_doc, p.n_tech, p.n_record
    FROM g_case g CROSS JOIN ferry_demo.params p
    CROSS JOIN generate_series(g.rec_first, g.rec_first + g.rec_cnt - 1) rid
), k AS (
    SELECT b.*, CASE WHEN r1 % 100 < 10 THEN 'treatment_plan'
                     WHEN r1 % 100 < 35 THEN 'system'
                     ELSE 'comment' END AS kind
    FROM b
), w AS (
    SELECT k.*, max(rid) FILTER (WHERE kind = 'treatment_plan')
                    OVER (PARTITION BY case_id ORDER BY rid) AS last_tp
    FROM k
)
SELECT w.rid, w.case_id,
       CASE WHEN w.instr_cnt > 0 AND w.r2 % 100 < 40
            THEN w.instr_first + (w.r2 >> 8) % w.instr_cnt END,
       CASE w.kind
           WHEN 'comment' THEN CASE WHEN (w.r2 >> 7) % 2 = 0 THEN ins.doctor_id
                                    ELSE w.n_doc + w.n_tech + ins.patient_id END
           WHEN 'treatment_plan' THEN CASE WHEN (w.r2 >> 7) % 2 = 0 THEN ins.doctor_id
                                           ELSE w.n_doc + 1 + (w.r2 >> 9) % w.n_tech END
       END,
       w.kind,
       CASE w.kind
           WHEN 'comment' THEN ferry_demo.pick(ARRAY[
               'Please check the new scans of the lower arch.',
               'Patient reports discomfort with tray 4.',
               'Can we add attachments on 13 and 23?',
               'Approved, please proceed.',
               'Scan retaken, see the new upload.',
               'IPR needed between 32 and 33?',
               'Refinement requested after tray 12.',
               'Shipping address updated.'], w.r1 >> 8)
           WHEN 'treatment_plan' THEN ferry_demo.pick(ARRAY[
               'Treatment plan: 18 upper and 16 lower aligners.',
               'Treatment plan v2 after the refinement scan.',
               'Revised plan: less IPR on the lower anterior teeth.',
               'Plan with extra attachments on the premolars.'], w.r1 >> 8)
           ELSE ferry_demo.pick(ARRAY['Order submitted.', 'Order shipped.', 'Files received.',
               'Status changed.', 'Payment received.'], w.r1 >> 8)
       END,
       CASE WHEN w.kind = 'comment' AND (w.r2 >> 5) % 2 = 0 THEN w.last_tp END,
       ferry_demo.ts(w.rid, w.n_record, w.r1 % 3600),
       ferry_demo.ts(w.rid, w.n_record, w.r1 % 3600) + ((w.r2 >> 12) % 100000) * interval '1 second'
FROM w JOIN dispatch_instance ins ON ins.id = w.case_id;

-- @step states
-- 60% are about an instruction (instruction_id and its case set), the rest about a case only.
INSERT INTO dispatch_state (id, instance_id, instruction_id, status, note, created_at)
SELECT q.s,
       CASE WHEN q.is_order THEN gi.case_id ELSE 1 + (q.r >> 8) % p.n_case END,
       CASE WHEN q.is_order THEN gi.j END,
       CASE WHEN q.is_order
            THEN ferry_demo.pick(ARRAY['submitted', 'in_production', 'shipped', 'cancelled'],
                                 q.r >> 16)
            ELSE ferry_demo.pick(ARRAY['active', 'on_hold', 'completed', 'reopened'], q.r >> 16)
       END,
       ferry_demo.pick(ARRAY['', 'changed by staff', 'automatic', 'doctor request'], q.r >> 20),
       ferry_demo.ts(q.s, p.n_state, q.r % 3600)
FROM (SELECT s, ferry_demo.h(p.seed, 70, s) AS r,
             ferry_demo.h(p.seed, 71, s) % 100 < 60 AS is_order,
             1 + ferry_demo.h(p.seed, 72, s) % p.n_instr AS j
      FROM ferry_demo.params p, generate_series(1, p.n_state) s) q
JOIN g_instr gi ON gi.j = q.j
CROSS JOIN ferry_demo.params p;

-- @step templates
INSERT INTO dispatch_template (id, name, subject, body, view_groups, created_at, updated_at)
SELECT t,
       ferry_demo.pick(ARRAY['case_created', 'order_submitted', 'order_shipped', 'comment_added',
           'payment_received', 'file_uploaded', 'plan_ready', 'state_changed'], t - 1)
       || '_v' || (1 + (t - 1) / 8),
       ferry_demo.pick(ARRAY['Your case was updated', 'New message', 'Order update',
           'Payment confirmation', 'Action needed'], r),
       'Hello {{ recipient }}, {{ actor }} {{ verb }} on case {{ case_id }}.',
       ferry_demo.pick(ARRAY['doctor', 'doctor,patient', 'doctor,technician', 'admin', 'patient',
           'doctor,admin,technician', 'technician'], r >> 8),
       ferry_demo.ts(t, p.n_template, r % 3600),
       ferry_demo.ts(t, p.n_template, r % 3600) + interval '10 days'
FROM ferry_demo.params p
CROSS JOIN generate_series(1, p.n_template) t
CROSS JOIN LATERAL (SELECT ferry_demo.h(p.seed, 75, t) AS r) x;

-- @step notifications
-- The big one (2M rows at SF=1): two hashes per row, computed once (OFFSET 0 keeps the planner
-- from copying the hash expression into every column that uses it).
INSERT INTO dispatch_notification (id, recipient_id, actor_id, verb, template_id,
                                   template_context, read, created)
SELECT i,
       1 + r1 % nr,
       CASE WHEN r2 % 10 < 4 THEN NULL ELSE 1 + (r2 >> 8) % na END,
       verb,
       1 + (r1 >> 16) % nt,
       '{"case_id": ' || (1 + (r2 >> 12) % nc) || ', "verb": "' || verb || '", "seen_by": '
           || ((r1 >> 24) % 5) || '}',
       (r2 >> 4) % 10 < 7,
       ferry_demo.ts(i, n, r1 % 600)
FROM (SELECT i, r1, r2, nr, na, nt, nc, n,
             (ARRAY['commented', 'submitted', 'shipped', 'uploaded', 'paid', 'approved',
                    'assigned', 'reminded'])[(1 + (r2 >> 28) % 8)::int] AS verb
      FROM (SELECT i, ferry_demo.h(p.seed, 80, i) AS r1, ferry_demo.h(p.seed, 81, i) AS r2,
                   p.n_doc + p.n_tech + p.n_pat AS nr, p.n_doc + p.n_tech AS na,
                   p.n_template AS nt, p.n_case AS nc, p.n_notif AS n
            FROM ferry_demo.params p, generate_series(1::bigint, p.n_notif) i
            OFFSET 0) q0
      OFFSET 0) q;

-- @step payments
INSERT INTO dispatch_payment (id, instruction_id, amount, currency, method, reference, paid_at,
                              created_at)
SELECT y, 1 + r1 % n_instr,
       ((5000 + (r1 >> 8) % 495000)::numeric / 100)::numeric(12,2),
       ferry_demo.pick(ARRAY['USD', 'USD', 'USD', 'JPY', 'THB', 'INR', 'AUD'], r2 >> 20),
       method,
       CASE method
           WHEN 'card' THEN CASE WHEN (r2 >> 8) % 2 = 0 THEN 'ch_' ELSE 'pi_' END
                            || lpad(to_hex(r1), 8, '0') || lpad(to_hex(r2), 8, '0')
           WHEN 'bank_transfer' THEN 'WIRE-' || lpad(((r1 >> 4) % 100000000)::text, 8, '0')
           ELSE 'CHK' || lpad(((r1 >> 4) % 1000000)::text, 6, '0')
       END,
       created + ((r2 >> 12) % 86400) * interval '1 second',
       created
FROM (SELECT y, r1, r2, n_instr, ferry_demo.ts(y, n_payment, r1 % 3600) AS created,
             CASE WHEN r2 % 100 < 65 THEN 'card'
                  WHEN r2 % 100 < 90 THEN 'bank_transfer'
                  ELSE 'check' END AS method
      FROM (SELECT y, ferry_demo.h(p.seed, 85, y) AS r1, ferry_demo.h(p.seed, 86, y) AS r2,
                   p.n_instr, p.n_payment
            FROM ferry_demo.params p, generate_series(1, p.n_payment) y OFFSET 0) q0) q;

-- @step agents
INSERT INTO dispatch_agent (id, user_id, roles, active, created_at)
SELECT a, p.n_doc + a,
       ferry_demo.pick(ARRAY['designer', 'designer,qa', 'scanner', 'printer,qa',
           'scanner,designer', 'shipping', 'qa', 'lead,designer,qa'], x.r),
       (x.r >> 8) % 10 < 9,
       ferry_demo.ts(p.n_doc + a, p.n_user, 7200)
FROM ferry_demo.params p
CROSS JOIN generate_series(1, p.n_tech) a
CROSS JOIN LATERAL (SELECT ferry_demo.h(p.seed, 88, a) AS r) x;

-- @step operations
INSERT INTO dispatch_operation (id, instruction_id, agent_id, step, notes, started_at,
                                finished_at)
SELECT o, 1 + r1 % n_instr, 1 + (r1 >> 16) % n_tech,
       ferry_demo.pick(ARRAY['design', 'print', 'trim', 'qa', 'pack'], r2),
       ferry_demo.pick(ARRAY['', 'redo after QA', 'rush', 'checked twice'], r2 >> 4),
       started,
       CASE WHEN (r2 >> 8) % 10 < 9 THEN started + ((r2 >> 12) % 20000) * interval '1 second' END
FROM (SELECT o, r1, r2, n_instr, n_tech, ferry_demo.ts(o, n_operation, r1 % 3600) AS started
      FROM (SELECT o, ferry_demo.h(p.seed, 89, o) AS r1, ferry_demo.h(p.seed, 90, o) AS r2,
                   p.n_instr, p.n_tech, p.n_operation
            FROM ferry_demo.params p, generate_series(1, p.n_operation) o OFFSET 0) q0) q;

-- @step csv
-- The two CSV exports are kept here as tables too (ferry_demo is not a legacy schema: ferry
-- never reads it), so that plant.sql, truth.sql and the delta can reason about them.
CREATE TABLE ferry_demo.purchases_csv (
    external_id text PRIMARY KEY,
    office_id integer NOT NULL,
    item text NOT NULL,
    quantity integer NOT NULL,
    amount numeric(12,2) NOT NULL,
    purchased_at timestamp NOT NULL
);
-- Any office that is not quarantined: a survivor or one of its duplicates.
INSERT INTO ferry_demo.purchases_csv
SELECT 'PO-' || lpad(n::text, 6, '0'),
       CASE WHEN x < n_good_clinic THEN x + 1 ELSE n_clinic + 1 + (x - n_good_clinic) END,
       ferry_demo.pick(ARRAY['Aligner cases (box of 50)', 'Chewies', 'Retainer cases',
           'Impression trays', 'Cleaning tablets', 'Intraoral camera sleeves',
           'Polishing strips'], r),
       qty,
       (qty * (500 + (r >> 12) % 19500))::numeric(12,2) / 100,
       ferry_demo.ts(n, n_purchase, r % 3600)
FROM (SELECT n, r, p.n_good_clinic, p.n_clinic, p.n_purchase,
             (r >> 4) % (p.n_good_clinic + p.n_office_dup) AS x, (1 + (r >> 24) % 20)::int AS qty
      FROM ferry_demo.params p
      CROSS JOIN generate_series(1, p.n_purchase) n
      CROSS JOIN LATERAL (SELECT ferry_demo.h(p.seed, 95, n) AS r) h) q;

CREATE TABLE ferry_demo.record_attachments_csv (
    id integer PRIMARY KEY,
    record_id integer NOT NULL,
    file_id integer NOT NULL
);
-- A comment gets one file of its own case (a case's files are one id range).
CREATE TEMP TABLE g_case_files AS
SELECT case_id, min(file_first) AS ff, sum(file_cnt) AS fc FROM g_instr GROUP BY case_id;

INSERT INTO ferry_demo.record_attachments_csv (id, record_id, file_id)
SELECT row_number() OVER (ORDER BY x.id), x.id, cf.ff + ferry_demo.h(p.seed, 97, x.id) % cf.fc
FROM (SELECT r.id, r.instance_id
      FROM dispatch_record r
      JOIN g_case_files cf ON cf.case_id = r.instance_id AND cf.fc > 0
      CROSS JOIN ferry_demo.params p
      WHERE r.kind = 'comment'
      ORDER BY ferry_demo.h(p.seed, 96, r.id), r.id
      LIMIT (SELECT n_attach FROM ferry_demo.params)) x
JOIN g_case_files cf ON cf.case_id = x.instance_id
CROSS JOIN ferry_demo.params p;
