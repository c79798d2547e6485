-- dispatch_jaw.jaw is free text: "U", "Upper Jaw", "maxillary", "mandibular", ...
SELECT j.id AS _key,
       j.id AS legacy_jaw_id,
       j.instruction_id AS _instruction_id,
       j.jaw AS _jaw_raw,
       CASE lower(btrim(j.jaw))
           WHEN 'upper' THEN 'upper' WHEN 'u' THEN 'upper' WHEN 'upper jaw' THEN 'upper'
           WHEN 'maxillary' THEN 'upper'
           WHEN 'lower' THEN 'lower' WHEN 'l' THEN 'lower' WHEN 'lower jaw' THEN 'lower'
           WHEN 'mandibular' THEN 'lower'
       END AS jaw_type,
       j.data,
       j.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_jaw j
