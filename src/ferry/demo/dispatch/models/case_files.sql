SELECT f.id AS _key,
       f.id AS legacy_file_id,
       f.instruction_id AS _instruction_id,
       f.name,
       f.path AS storage_path,
       f.content_type,
       f.size AS size_bytes,
       f.created_at AT TIME ZONE 'UTC' AS uploaded_at
FROM dispatch_file f
