-- A doctor is an auth_user in group 'doctor' (there is no dispatch_doctor table).
SELECT u.id AS _key,
       u.id AS _user_id,
       u.id AS legacy_user_id,
       u.date_joined AT TIME ZONE 'UTC' AS created_at
FROM auth_user u
WHERE EXISTS (SELECT 1 FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
              WHERE ug.user_id = u.id AND g.name = 'doctor')
