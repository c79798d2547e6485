-- dispatch_record of kinds comment, system and draft (drafts are excluded by a rule).
SELECT r.id AS _key,
       r.id AS legacy_record_id,
       r.instance_id AS _instance_id,
       r.instruction_id AS _instruction_id,
       r.author_id AS _author_id,
       r.treatment_plan_id AS _treatment_plan_id,
       r.kind AS _kind,
       r.kind,
       r.text AS content,
       r.created_at AT TIME ZONE 'UTC' AS created_at,
       r.updated_at AT TIME ZONE 'UTC' AS updated_at
FROM dispatch_record r
WHERE r.kind <> 'treatment_plan'
