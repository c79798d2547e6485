-- auth_user -> profiles. Legacy timestamps hold UTC without saying so. A user's role is its
-- first group (a join, not a per-row subquery: the stage has no index on user_id).
SELECT u.id AS _key,
       u.id AS legacy_user_id,
       u.email,
       u.username,
       u.first_name,
       u.last_name,
       r.role,
       u.is_staff,
       u.is_active,
       u.last_login AT TIME ZONE 'UTC' AS last_login_at,
       u.date_joined AT TIME ZONE 'UTC' AS created_at,
       u.date_joined AT TIME ZONE 'UTC' AS updated_at
FROM auth_user u
LEFT JOIN (SELECT DISTINCT ON (ug.user_id) ug.user_id, g.name AS role
           FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id
           ORDER BY ug.user_id, g.id) r ON r.user_id = u.id
