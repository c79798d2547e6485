-- dispatch_notification -> system_messages. template_context is text that should hold JSON:
-- it is passed on as text; ferry casts it to jsonb for migrated rows only.
SELECT n.id AS _key,
       n.id AS legacy_notification_id,
       n.recipient_id AS _recipient_id,
       n.actor_id AS _actor_id,
       n.template_id AS _template_id,
       n.verb,
       n.template_context AS context,
       n.read,
       n.created AT TIME ZONE 'UTC' AS created_at
FROM dispatch_notification n
