-- The new platform of DOMAIN.md: a Supabase-style PostgreSQL database.
--
-- Plain SQL, no psql meta-commands: ferry.demo.world runs it with psycopg in one transaction,
-- as a superuser, on a database that may hold a previous run (everything is dropped first).
--
-- What it models of Supabase, because ferry must cope with each point:
--   * the roles anon, authenticated and service_role (cluster-wide: created only if missing);
--   * an `auth` schema with a stub of auth.users;
--   * every table in `public` owned by `migrator`, a role that is NOT a superuser (Supabase's
--     `postgres` role is not one either): ferry connects as it and must manage with ownership;
--   * row-level security enabled on every public table, nothing granted to anon, and only the
--     own profile readable by authenticated;
--   * UUID keys with gen_random_uuid() (core since PostgreSQL 13: no extension), timestamptz,
--     declared foreign keys, checks and enums;
--   * on every table fed by the legacy data, a nullable UNIQUE legacy_*_id column: the legacy key
--     of the row ferry wrote, NULL for rows the new application created itself.

-- Roles (cluster-wide, so the script must tolerate them existing already).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'migrator') THEN
        CREATE ROLE migrator LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- ferry creates its own schemas (stage, ledger) in the target database.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE, CONNECT, TEMPORARY ON DATABASE %I TO migrator', current_database());
END
$$;

DROP SCHEMA IF EXISTS public CASCADE;
DROP SCHEMA IF EXISTS auth CASCADE;

-- The auth schema belongs to Supabase, not to the application: migrator may only reference it.
CREATE SCHEMA auth;
CREATE TABLE auth.users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Supabase's helper: the user id of the request's JWT (NULL outside a request).
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO migrator, anon, authenticated, service_role;
GRANT SELECT, REFERENCES ON auth.users TO migrator;
GRANT EXECUTE ON FUNCTION auth.uid() TO migrator, anon, authenticated, service_role;

CREATE SCHEMA public AUTHORIZATION migrator;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

-- From here on, everything in public is created by (and so owned by) migrator.
SET ROLE migrator;
SET search_path = public;

CREATE TYPE public.jaw_type AS ENUM ('upper', 'lower');
CREATE TYPE public.payment_method AS ENUM ('card', 'bank_transfer', 'check');
CREATE TYPE public.case_status AS ENUM ('active', 'completed', 'abandoned');
CREATE TYPE public.order_status AS ENUM ('draft', 'submitted', 'in_production', 'shipped', 'cancelled');
CREATE TYPE public.message_kind AS ENUM ('comment', 'system');
CREATE TYPE public.user_role AS ENUM ('patient', 'doctor', 'technician', 'admin');

-- auth_user
CREATE TABLE public.profiles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid UNIQUE REFERENCES auth.users (id),
    legacy_user_id bigint UNIQUE,
    email text NOT NULL,
    username text,
    first_name text,
    last_name text,
    role public.user_role,
    is_staff boolean NOT NULL DEFAULT false,
    is_active boolean NOT NULL DEFAULT true,
    last_login_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Email is unique regardless of case: the legacy data has pairs that differ only in case.
CREATE UNIQUE INDEX profiles_email_lower_key ON public.profiles (lower(email));

-- dispatch_office, duplicates merged into one row (legacy_office_id = the survivor's id)
CREATE TABLE public.offices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_office_id bigint UNIQUE,
    name text NOT NULL,
    address text,
    city text,
    country_code char(2) NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    phone text,
    email text,
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- auth_user in group doctor
CREATE TABLE public.doctors (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_user_id bigint UNIQUE,
    profile_id uuid NOT NULL UNIQUE REFERENCES public.profiles (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- dispatch_office_members
CREATE TABLE public.doctor_offices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_member_id bigint UNIQUE,
    doctor_id uuid NOT NULL REFERENCES public.doctors (id) ON DELETE CASCADE,
    office_id uuid NOT NULL REFERENCES public.offices (id) ON DELETE CASCADE,
    is_admin boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (doctor_id, office_id)
);
CREATE INDEX doctor_offices_office_id ON public.doctor_offices (office_id);

-- dispatch_patient
CREATE TABLE public.patients (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_patient_id bigint UNIQUE,
    profile_id uuid NOT NULL UNIQUE REFERENCES public.profiles (id),
    doctor_id uuid REFERENCES public.doctors (id),
    office_id uuid REFERENCES public.offices (id),
    first_name text,
    last_name text,
    birth_date date,
    country text,
    suffix text CHECK (suffix ~ '^[A-Z0-9]{4}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_doctor_id ON public.patients (doctor_id);
CREATE INDEX patients_office_id ON public.patients (office_id);

-- dispatch_agent
CREATE TABLE public.technicians (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_agent_id bigint UNIQUE,
    profile_id uuid NOT NULL UNIQUE REFERENCES public.profiles (id),
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- dispatch_agent.roles, one row per role; legacy key '<agent id>:<role>'
CREATE TABLE public.technician_roles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_agent_role text UNIQUE,
    technician_id uuid NOT NULL REFERENCES public.technicians (id) ON DELETE CASCADE,
    role text NOT NULL,
    UNIQUE (technician_id, role)
);

-- dispatch_instance
CREATE TABLE public.cases (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_instance_id bigint UNIQUE,
    patient_id uuid NOT NULL REFERENCES public.patients (id),
    doctor_id uuid REFERENCES public.doctors (id),
    office_id uuid REFERENCES public.offices (id),
    title text,
    status public.case_status NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz
);
CREATE INDEX cases_patient_id ON public.cases (patient_id);
CREATE INDEX cases_doctor_id ON public.cases (doctor_id);

-- dispatch_instruction
CREATE TABLE public.orders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_instruction_id bigint UNIQUE,
    case_id uuid NOT NULL REFERENCES public.cases (id) ON DELETE CASCADE,
    doctor_id uuid NOT NULL REFERENCES public.doctors (id),
    status public.order_status NOT NULL DEFAULT 'draft',
    aligner_count integer CHECK (aligner_count >= 0),
    notes text,
    submitted_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_case_id ON public.orders (case_id);
CREATE INDEX orders_doctor_id ON public.orders (doctor_id);

-- dispatch_jaw
CREATE TABLE public.jaws (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_jaw_id bigint UNIQUE,
    order_id uuid NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    jaw_type public.jaw_type NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jaws_order_id ON public.jaws (order_id);

-- dispatch_file (uploaded_at <- created_at, storage_path <- path)
CREATE TABLE public.case_files (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_file_id bigint UNIQUE,
    order_id uuid NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    name text NOT NULL,
    storage_path text NOT NULL,
    content_type text,
    size_bytes bigint CHECK (size_bytes >= 0),
    uploaded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_files_order_id ON public.case_files (order_id);

-- dispatch_record of kind treatment_plan
CREATE TABLE public.treatment_discussions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_record_id bigint UNIQUE,
    case_id uuid NOT NULL REFERENCES public.cases (id) ON DELETE CASCADE,
    order_id uuid REFERENCES public.orders (id) ON DELETE SET NULL,
    author_id uuid REFERENCES public.profiles (id),
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX treatment_discussions_case_id ON public.treatment_discussions (case_id);

-- dispatch_record of kind comment and system (content <- text)
CREATE TABLE public.case_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_record_id bigint UNIQUE,
    case_id uuid NOT NULL REFERENCES public.cases (id) ON DELETE CASCADE,
    order_id uuid REFERENCES public.orders (id) ON DELETE SET NULL,
    author_id uuid REFERENCES public.profiles (id),
    treatment_discussion_id uuid REFERENCES public.treatment_discussions (id) ON DELETE SET NULL,
    kind public.message_kind NOT NULL DEFAULT 'comment',
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_messages_case_id ON public.case_messages (case_id);
CREATE INDEX case_messages_treatment_discussion_id ON public.case_messages (treatment_discussion_id);

-- record_attachments.csv (its own integer id column)
CREATE TABLE public.message_attachments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_attachment_id bigint UNIQUE,
    message_id uuid NOT NULL REFERENCES public.case_messages (id) ON DELETE CASCADE,
    file_id uuid NOT NULL REFERENCES public.case_files (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, file_id)
);
CREATE INDEX message_attachments_file_id ON public.message_attachments (file_id);

-- dispatch_template
CREATE TABLE public.templates (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_template_id bigint UNIQUE,
    name text NOT NULL UNIQUE,
    subject text,
    body text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- dispatch_template.view_groups, one row per group; legacy key '<template id>:<group>'
CREATE TABLE public.template_view_groups (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_template_group text UNIQUE,
    template_id uuid NOT NULL REFERENCES public.templates (id) ON DELETE CASCADE,
    group_name text NOT NULL,
    UNIQUE (template_id, group_name)
);

-- dispatch_notification (context <- template_context, which must parse as JSON)
CREATE TABLE public.system_messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_notification_id bigint UNIQUE,
    recipient_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
    actor_id uuid REFERENCES public.profiles (id) ON DELETE SET NULL,
    template_id uuid REFERENCES public.templates (id),
    verb text NOT NULL,
    context jsonb NOT NULL,
    read boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX system_messages_recipient_id ON public.system_messages (recipient_id);

-- dispatch_state with instruction_id set
CREATE TABLE public.order_states (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_state_id bigint UNIQUE,
    order_id uuid NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    status text NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_states_order_id ON public.order_states (order_id);

-- dispatch_state about a case only
CREATE TABLE public.case_states (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_state_id bigint UNIQUE,
    case_id uuid NOT NULL REFERENCES public.cases (id) ON DELETE CASCADE,
    status text NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_states_case_id ON public.case_states (case_id);

-- dispatch_payment
CREATE TABLE public.payments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_payment_id bigint UNIQUE,
    order_id uuid NOT NULL REFERENCES public.orders (id),
    amount numeric(12,2) NOT NULL CHECK (amount >= 0),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    method public.payment_method NOT NULL,
    reference text,
    paid_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order_id ON public.payments (order_id);

-- purchases.csv (external id: text)
CREATE TABLE public.purchases (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_purchase_id text UNIQUE,
    office_id uuid NOT NULL REFERENCES public.offices (id),
    item text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    amount numeric(12,2) NOT NULL CHECK (amount >= 0),
    purchased_at timestamptz NOT NULL
);
CREATE INDEX purchases_office_id ON public.purchases (office_id);

-- dispatch_operation
CREATE TABLE public.operations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    legacy_operation_id bigint UNIQUE,
    order_id uuid NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    technician_id uuid NOT NULL REFERENCES public.technicians (id),
    step text NOT NULL,
    notes text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX operations_order_id ON public.operations (order_id);

-- Row-level security on every table of public, and nothing for anon: a table that a later
-- edit of this file forgets is still covered, because the loop asks the catalog.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t.relname);
        EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated', t.relname);
        EXECUTE format('GRANT ALL ON public.%I TO service_role', t.relname);
    END LOOP;
END
$$;

-- A signed-in user may read their own profile, and nothing else.
GRANT SELECT ON public.profiles TO authenticated;
CREATE POLICY profiles_select_own ON public.profiles
    FOR SELECT TO authenticated USING (user_id = auth.uid());

RESET ROLE;
RESET search_path;
