-- dispatch_patient -> patients.
-- suffix: exactly 4 of [A-Z0-9]; a sloppy one (" a1b2 ") is normalized; an impossible one
-- ("ZZ") becomes NULL with a warning: a patient is never lost over a suffix.
-- office: when NULL, the office of the doctor's first membership.
SELECT p.id AS _key,
       p.id AS legacy_patient_id,
       p.user_id AS _user_id,
       p.doctor_id AS _doctor_id,
       coalesce(p.office_id, dm.office_id) AS _office_id,
       p.office_id IS NULL AND dm.office_id IS NOT NULL AS _office_from_doctor,
       p.first_name,
       p.last_name,
       p.birth_date,
       p.country,
       CASE WHEN upper(btrim(p.suffix)) ~ '^[A-Z0-9]{4}$' THEN upper(btrim(p.suffix)) END AS suffix,
       CASE WHEN p.suffix IS NULL OR p.suffix ~ '^[A-Z0-9]{4}$' THEN NULL
            WHEN upper(btrim(p.suffix)) ~ '^[A-Z0-9]{4}$' THEN 'normalized'
            ELSE 'invalid' END AS _suffix_fix,
       p.created_at AT TIME ZONE 'UTC' AS created_at,
       p.updated_at AT TIME ZONE 'UTC' AS updated_at
FROM dispatch_patient p
LEFT JOIN (SELECT DISTINCT ON (user_id) user_id, office_id
           FROM dispatch_office_members ORDER BY user_id, id) dm
       ON dm.user_id = p.doctor_id
