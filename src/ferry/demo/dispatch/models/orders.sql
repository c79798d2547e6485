-- dispatch_instruction -> orders. doctor_id is NOT NULL in the target: an instruction whose
-- own doctor is NULL or not a doctor takes its case's doctor.
SELECT i.id AS _key,
       i.id AS legacy_instruction_id,
       i.instance_id AS _instance_id,
       coalesce(d1.user_id, d2.user_id) AS _doctor_id,
       d1.user_id IS NULL AND d2.user_id IS NOT NULL AS _doctor_from_case,
       i.status,
       i.aligner_count,
       i.notes,
       i.submitted_at AT TIME ZONE 'UTC' AS submitted_at,
       i.created_at AT TIME ZONE 'UTC' AS created_at,
       i.updated_at AT TIME ZONE 'UTC' AS updated_at
FROM dispatch_instruction i
LEFT JOIN dispatch_instance c ON c.id = i.instance_id
LEFT JOIN (SELECT ug.user_id FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
           WHERE g.name = 'doctor') d1 ON d1.user_id = i.doctor_id
LEFT JOIN (SELECT ug.user_id FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
           WHERE g.name = 'doctor') d2 ON d2.user_id = c.doctor_id
