-- dispatch_template.view_groups is comma-separated text: one target row per distinct group.
SELECT DISTINCT t.id || ':' || btrim(g.name) AS _key,
       t.id || ':' || btrim(g.name) AS legacy_template_group,
       t.id AS _template_id,
       btrim(g.name) AS group_name
FROM dispatch_template t
CROSS JOIN unnest(string_to_array(t.view_groups, ',')) AS g(name)
WHERE btrim(g.name) <> ''
