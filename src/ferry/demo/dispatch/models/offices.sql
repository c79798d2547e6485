-- dispatch_office -> offices. A clinic typed twice (same name and city, up to case and
-- spacing) is merged into its lowest id; free-text countries map to ISO 3166 alpha-2.
SELECT o.id AS _key,
       o.id AS legacy_office_id,
       o.name,
       o.address,
       o.city,
       CASE lower(btrim(o.country))
           WHEN 'united states' THEN 'US' WHEN 'usa' THEN 'US' WHEN 'u.s.a.' THEN 'US'
           WHEN 'us' THEN 'US'
           WHEN 'japan' THEN 'JP' WHEN 'jp' THEN 'JP'
           WHEN 'thailand' THEN 'TH' WHEN 'th' THEN 'TH'
           WHEN 'india' THEN 'IN' WHEN 'in' THEN 'IN'
           WHEN 'australia' THEN 'AU' WHEN 'au' THEN 'AU'
       END AS country_code,
       o.phone,
       o.email,
       o.is_active,
       o.created_at AT TIME ZONE 'UTC' AS created_at,
       o.updated_at AT TIME ZONE 'UTC' AS updated_at,
       min(o.id) OVER (PARTITION BY lower(regexp_replace(btrim(o.name), '\s+', ' ', 'g')),
                                    lower(btrim(o.city))) AS _survivor_id
FROM dispatch_office o
