SELECT t.id AS _key, t.id AS legacy_id, t.k::public.mood AS k, t.ks::public.mood[] AS ks,
       t.d, t.lbl, t.tags, t.r, t.period, t.blob, t.iv, t.m, t.ip, t.seen, t.amount, t.ratio,
       t.at, t.born, t.body, t.doc::jsonb AS doc, t.twice
FROM things t
