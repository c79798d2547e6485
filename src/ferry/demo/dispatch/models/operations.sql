SELECT o.id AS _key,
       o.id AS legacy_operation_id,
       o.instruction_id AS _instruction_id,
       o.agent_id AS _agent_id,
       o.step,
       o.notes,
       o.started_at AT TIME ZONE 'UTC' AS started_at,
       o.finished_at AT TIME ZONE 'UTC' AS finished_at
FROM dispatch_operation o
