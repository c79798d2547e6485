-- qty is text in the legacy table and integer in the target: a value that is not a number
-- fails the cast, which no rule predicts.
SELECT i.id AS _key, i.id AS legacy_item_id, i.group_id AS _group_id, i.state AS _state,
       i.sku AS _raw_sku, trim(i.sku) AS sku, i.qty
FROM src_item i
