-- auth_user -> profiles. Legacy timestamps hold UTC without saying so.
SELECT u.id AS _key,
       u.id AS legacy_user_id,
       u.email,
       u.username,
       u.first_name,
       u.last_name,
       (SELECT g.name FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
        WHERE ug.user_id = u.id ORDER BY g.id LIMIT 1) AS role,
       u.is_staff,
       u.is_active,
       u.last_login AT TIME ZONE 'UTC' AS last_login_at,
       u.date_joined AT TIME ZONE 'UTC' AS created_at,
       u.date_joined AT TIME ZONE 'UTC' AS updated_at
FROM auth_user u
