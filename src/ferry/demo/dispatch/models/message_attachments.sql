-- record_attachments.csv (every column staged as text). The CSV has no time of its own: an
-- attachment is as old as its message.
SELECT a.id AS _key,
       a.id::bigint AS legacy_attachment_id,
       a.record_id::bigint AS _record_id,
       a.file_id::bigint AS _file_id,
       coalesce(r.created_at AT TIME ZONE 'UTC', timestamptz '1970-01-01 00:00:00+00') AS created_at
FROM record_attachments a
LEFT JOIN dispatch_record r ON r.id = a.record_id::bigint
