-- Rows the NEW application created in the target before the migration started (DOMAIN.md:
-- "about 50 cases with their orders and messages, legacy ids NULL"). ferry must leave them
-- untouched on every run and count them as target-only.
--
-- Fixed content, independent of seed and scale; UUIDs are md5 of a fixed label (deterministic,
-- and no collision with ferry's own key function, which hashes a different namespace).
--   auth.users 52, profiles 52 (2 doctors, 50 patients), offices 1, doctors 2,
--   doctor_offices 2, patients 50, cases 50, orders 50, case_messages 100.

INSERT INTO auth.users (id, email, created_at)
SELECT md5('ferry-demo/target-only/user/' || n)::uuid,
       CASE n WHEN 1 THEN 'dr.mori@newapp.test' WHEN 2 THEN 'dr.okafor@newapp.test'
              ELSE 'patient' || lpad((n - 2)::text, 2, '0') || '@newapp.test' END,
       timestamptz '2025-10-01 09:00:00+00' + n * interval '1 hour'
FROM generate_series(1, 52) n;

INSERT INTO public.profiles (id, user_id, legacy_user_id, email, username, first_name,
                             last_name, role, is_staff, is_active, created_at, updated_at)
SELECT md5('ferry-demo/target-only/profile/' || n)::uuid,
       u.id, NULL, u.email, split_part(u.email, '@', 1),
       CASE n WHEN 1 THEN 'Aiko' WHEN 2 THEN 'Chidi' ELSE 'Patient' END,
       CASE n WHEN 1 THEN 'Mori' WHEN 2 THEN 'Okafor' ELSE lpad((n - 2)::text, 2, '0') END,
       CASE WHEN n <= 2 THEN 'doctor' ELSE 'patient' END::public.user_role,
       false, true, u.created_at, u.created_at
FROM generate_series(1, 52) n
JOIN auth.users u ON u.id = md5('ferry-demo/target-only/user/' || n)::uuid;

INSERT INTO public.offices (id, legacy_office_id, name, address, city, country_code, phone,
                            email, is_active, created_at, updated_at)
VALUES (md5('ferry-demo/target-only/office/1')::uuid, NULL, 'Shibuya Aligner Lounge',
        '1-2-3 Jingumae', 'Tokyo', 'JP', '+81 300000000', 'hello@newapp.test', true,
        timestamptz '2025-10-01 08:00:00+00', timestamptz '2025-10-01 08:00:00+00');

INSERT INTO public.doctors (id, legacy_user_id, profile_id, created_at)
SELECT md5('ferry-demo/target-only/doctor/' || n)::uuid, NULL,
       md5('ferry-demo/target-only/profile/' || n)::uuid,
       timestamptz '2025-10-01 10:00:00+00'
FROM generate_series(1, 2) n;

INSERT INTO public.doctor_offices (id, legacy_member_id, doctor_id, office_id, is_admin,
                                   created_at)
SELECT md5('ferry-demo/target-only/doctor_office/' || n)::uuid, NULL,
       md5('ferry-demo/target-only/doctor/' || n)::uuid,
       md5('ferry-demo/target-only/office/1')::uuid, n = 1,
       timestamptz '2025-10-01 10:00:00+00'
FROM generate_series(1, 2) n;

INSERT INTO public.patients (id, legacy_patient_id, profile_id, doctor_id, office_id,
                             first_name, last_name, birth_date, country, suffix, created_at,
                             updated_at)
SELECT md5('ferry-demo/target-only/patient/' || n)::uuid, NULL,
       md5('ferry-demo/target-only/profile/' || (n + 2))::uuid,
       md5('ferry-demo/target-only/doctor/' || (1 + n % 2))::uuid,
       md5('ferry-demo/target-only/office/1')::uuid,
       'Patient', lpad(n::text, 2, '0'), date '1990-01-01' + n * 97, 'Japan',
       'N' || lpad(n::text, 3, '0'),
       timestamptz '2025-10-02 09:00:00+00' + n * interval '1 hour',
       timestamptz '2025-10-02 09:00:00+00' + n * interval '1 hour'
FROM generate_series(1, 50) n;

INSERT INTO public.cases (id, legacy_instance_id, patient_id, doctor_id, office_id, title,
                          status, created_at, updated_at, closed_at)
SELECT md5('ferry-demo/target-only/case/' || n)::uuid, NULL,
       md5('ferry-demo/target-only/patient/' || n)::uuid,
       md5('ferry-demo/target-only/doctor/' || (1 + n % 2))::uuid,
       md5('ferry-demo/target-only/office/1')::uuid,
       'New-platform case ' || n, 'active',
       timestamptz '2025-10-03 09:00:00+00' + n * interval '1 hour',
       timestamptz '2025-10-03 09:00:00+00' + n * interval '1 hour', NULL
FROM generate_series(1, 50) n;

INSERT INTO public.orders (id, legacy_instruction_id, case_id, doctor_id, status, aligner_count,
                           notes, submitted_at, created_at, updated_at)
SELECT md5('ferry-demo/target-only/order/' || n)::uuid, NULL,
       md5('ferry-demo/target-only/case/' || n)::uuid,
       md5('ferry-demo/target-only/doctor/' || (1 + n % 2))::uuid,
       'submitted', 24, 'Created in the new platform',
       timestamptz '2025-10-04 09:00:00+00' + n * interval '1 hour',
       timestamptz '2025-10-04 09:00:00+00' + n * interval '1 hour',
       timestamptz '2025-10-04 09:00:00+00' + n * interval '1 hour'
FROM generate_series(1, 50) n;

INSERT INTO public.case_messages (id, legacy_record_id, case_id, order_id, author_id,
                                  treatment_discussion_id, kind, content, created_at, updated_at)
SELECT md5('ferry-demo/target-only/message/' || n || '/' || k)::uuid, NULL,
       md5('ferry-demo/target-only/case/' || n)::uuid,
       md5('ferry-demo/target-only/order/' || n)::uuid,
       CASE WHEN k = 1 THEN md5('ferry-demo/target-only/profile/' || (1 + n % 2))::uuid
            ELSE md5('ferry-demo/target-only/profile/' || (n + 2))::uuid END,
       NULL, 'comment',
       CASE WHEN k = 1 THEN 'Welcome to the new platform.' ELSE 'Thank you, received.' END,
       timestamptz '2025-10-05 09:00:00+00' + (2 * n + k) * interval '1 hour',
       timestamptz '2025-10-05 09:00:00+00' + (2 * n + k) * interval '1 hour'
FROM generate_series(1, 50) n CROSS JOIN generate_series(1, 2) k;
