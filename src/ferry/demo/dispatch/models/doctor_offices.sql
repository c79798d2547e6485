SELECT m.id AS _key,
       m.id AS legacy_member_id,
       m.user_id AS _user_id,
       m.office_id AS _office_id,
       m.is_admin,
       m.created_at AT TIME ZONE 'UTC' AS created_at
FROM dispatch_office_members m
