-- Groups whose names differ only in case are one group: the lowest id survives.
SELECT g.id AS _key, g.id AS legacy_group_id, g.name,
       min(g.id) OVER (PARTITION BY lower(g.name)) AS _same_as
FROM src_group g
