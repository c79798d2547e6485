-- dispatch_state rows about a case: no instruction, or one that does not exist. One NOT
-- EXISTS says both (a NULL matches no instruction): with an OR beside it, the planner read
-- every instruction to look up a sync's few states (60 ms at SF=5, three times a sync).
SELECT s.id AS _key,
       s.id AS legacy_state_id,
       s.instance_id AS _instance_id,
       s.instruction_id AS _instruction_id,
       s.status,
       s.note,
       s.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_state s
WHERE NOT EXISTS (SELECT 1 FROM dispatch_instruction i WHERE i.id = s.instruction_id)
