-- method NULL: the reference tells the processor ("ch_"/"pi_" card, "WIRE-" bank transfer,
-- "CHK" check); when it tells nothing, the payment is quarantined, never guessed.
SELECT p.id AS _key,
       p.id AS legacy_payment_id,
       p.instruction_id AS _instruction_id,
       p.method AS _method_raw,
       p.amount,
       p.currency,
       coalesce(p.method, CASE
           WHEN p.reference LIKE 'ch\_%' OR p.reference LIKE 'pi\_%' THEN 'card'
           WHEN p.reference LIKE 'WIRE-%' THEN 'bank_transfer'
           WHEN p.reference LIKE 'CHK%' THEN 'check'
       END) AS method,
       p.reference,
       p.paid_at AT TIME ZONE 'UTC' AS paid_at,
       p.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_payment p
