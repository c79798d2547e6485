-- dispatch_record of kind treatment_plan (the other kinds go to case_messages).
SELECT r.id AS _key,
       r.id AS legacy_record_id,
       r.instance_id AS _instance_id,
       r.instruction_id AS _instruction_id,
       r.author_id AS _author_id,
       r.text AS content,
       r.created_at AT TIME ZONE 'UTC' AS created_at,
       r.updated_at AT TIME ZONE 'UTC' AS updated_at
FROM dispatch_record r
WHERE r.kind = 'treatment_plan'
