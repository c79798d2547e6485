SELECT i.id AS _key,
       i.id AS legacy_instance_id,
       i.patient_id AS _patient_id,
       i.doctor_id AS _doctor_id,
       i.office_id AS _office_id,
       i.status AS _status,
       i.title,
       i.status,
       i.created_at AT TIME ZONE 'UTC' AS created_at,
       i.updated_at AT TIME ZONE 'UTC' AS updated_at,
       i.closed_at AT TIME ZONE 'UTC' AS closed_at
FROM dispatch_instance i
