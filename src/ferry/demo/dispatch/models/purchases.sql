-- purchases.csv (every column staged as text), keyed by the billing system's external id.
SELECT p.external_id AS _key,
       p.external_id AS legacy_purchase_id,
       p.office_id::bigint AS _office_id,
       p.item,
       p.quantity::integer AS quantity,
       p.amount::numeric(12,2) AS amount,
       p.purchased_at::timestamptz AS purchased_at
FROM purchases p
