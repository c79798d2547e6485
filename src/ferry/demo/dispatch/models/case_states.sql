-- dispatch_state rows about a case: no instruction, or one that does not exist.
SELECT s.id AS _key,
       s.id AS legacy_state_id,
       s.instance_id AS _instance_id,
       s.instruction_id AS _instruction_id,
       s.status,
       s.note,
       s.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_state s
WHERE s.instruction_id IS NULL
   OR NOT EXISTS (SELECT 1 FROM dispatch_instruction i WHERE i.id = s.instruction_id)
