-- The legacy "dispatch" database of DOMAIN.md, as the old Django application left it.
--
-- Django conventions, kept on purpose because they are what a migration meets in the wild:
--   * serial integer primary keys (dispatch_notification, the big one, is bigserial);
--   * `timestamp without time zone` columns that hold UTC;
--   * almost no declared foreign keys: the application enforced them in Python, so dangling
--     references exist (only auth_user_groups and dispatch_agent.user_id are declared);
--   * plain types only: no enums, no domains; free text where the old app took free text
--     (dispatch_office.country, dispatch_patient.suffix, dispatch_jaw.jaw,
--     dispatch_notification.template_context, dispatch_template.view_groups, dispatch_agent.roles).
--
-- The file has two steps (split on the `-- @step` lines by ferry.demo.world): the tables, created
-- bare so that the generator can load them fast, then the keys and indexes a Django migration would
-- have created. Run in that order by hand, it is also a valid plain-SQL script.

-- @step tables
DROP TABLE IF EXISTS auth_user_groups, auth_group, auth_user, dispatch_office,
    dispatch_office_members, dispatch_patient, dispatch_instance, dispatch_instruction,
    dispatch_jaw, dispatch_file, dispatch_record, dispatch_state, dispatch_notification,
    dispatch_template, dispatch_payment, dispatch_agent, dispatch_operation CASCADE;

CREATE TABLE auth_group (
    id serial NOT NULL,
    name varchar(150) NOT NULL
);

CREATE TABLE auth_user (
    id serial NOT NULL,
    password varchar(128) NOT NULL,
    last_login timestamp NULL,
    is_superuser boolean NOT NULL,
    username varchar(150) NOT NULL,
    first_name varchar(150) NOT NULL,
    last_name varchar(150) NOT NULL,
    email varchar(254) NOT NULL,            -- not unique: two rows differ only in case
    is_staff boolean NOT NULL,
    is_active boolean NOT NULL,
    date_joined timestamp NOT NULL
);

CREATE TABLE auth_user_groups (
    id serial NOT NULL,
    user_id integer NOT NULL,
    group_id integer NOT NULL
);

CREATE TABLE dispatch_office (
    id serial NOT NULL,
    name varchar(200) NOT NULL,
    address varchar(255) NOT NULL,
    city varchar(100) NOT NULL,
    country varchar(100) NULL,              -- free text: "Japan", "JP", "japan ", "U.S.A.", ...
    phone varchar(50) NOT NULL,
    email varchar(254) NOT NULL,
    is_active boolean NOT NULL,
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL
);

CREATE TABLE dispatch_office_members (
    id serial NOT NULL,
    office_id integer NOT NULL,             -- -> dispatch_office (not declared)
    user_id integer NOT NULL,               -- -> auth_user in group doctor (not declared)
    is_admin boolean NOT NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_patient (
    id serial NOT NULL,
    user_id integer NOT NULL,               -- -> auth_user
    doctor_id integer NULL,                 -- -> auth_user in group doctor
    office_id integer NULL,                 -- -> dispatch_office, often NULL
    first_name varchar(150) NOT NULL,
    last_name varchar(150) NOT NULL,
    birth_date date NULL,
    country varchar(100) NULL,
    suffix varchar(20) NULL,                -- treatment-status code, free text
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL
);

CREATE TABLE dispatch_instance (
    id serial NOT NULL,
    patient_id integer NOT NULL,            -- -> dispatch_patient
    doctor_id integer NULL,                 -- -> auth_user in group doctor
    office_id integer NULL,                 -- -> dispatch_office
    title varchar(200) NOT NULL,
    status varchar(20) NOT NULL,            -- active, completed, abandoned
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    closed_at timestamp NULL
);

CREATE TABLE dispatch_instruction (
    id serial NOT NULL,
    instance_id integer NOT NULL,           -- -> dispatch_instance
    doctor_id integer NULL,                 -- -> auth_user; sometimes NULL or dangling
    status varchar(20) NOT NULL,            -- draft, submitted, in_production, shipped, cancelled
    aligner_count integer NOT NULL,
    notes text NOT NULL,
    submitted_at timestamp NULL,
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL
);

CREATE TABLE dispatch_jaw (
    id serial NOT NULL,
    instruction_id integer NOT NULL,        -- -> dispatch_instruction
    jaw varchar(30) NULL,                   -- free text: "upper", "U", "maxillary", "", NULL, ...
    data jsonb NOT NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_file (
    id serial NOT NULL,
    instruction_id integer NOT NULL,        -- -> dispatch_instruction (may dangle)
    name varchar(255) NOT NULL,
    path varchar(500) NOT NULL,
    content_type varchar(100) NOT NULL,
    size bigint NOT NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_record (
    id serial NOT NULL,
    instance_id integer NOT NULL,           -- -> dispatch_instance
    instruction_id integer NULL,            -- -> dispatch_instruction
    author_id integer NULL,                 -- -> auth_user
    kind varchar(20) NOT NULL,              -- comment, treatment_plan, system, draft
    text text NOT NULL,
    treatment_plan_id integer NULL,         -- -> dispatch_record of kind treatment_plan (may dangle)
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL
);

CREATE TABLE dispatch_state (
    id serial NOT NULL,
    instance_id integer NULL,               -- -> dispatch_instance
    instruction_id integer NULL,            -- -> dispatch_instruction; set: the row is about it
    status varchar(30) NOT NULL,
    note text NOT NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_template (
    id serial NOT NULL,
    name varchar(100) NOT NULL,
    subject varchar(200) NOT NULL,
    body text NOT NULL,
    view_groups text NOT NULL,              -- comma-separated group names
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL
);

CREATE TABLE dispatch_notification (
    id bigserial NOT NULL,
    recipient_id integer NOT NULL,          -- -> auth_user
    actor_id integer NULL,                  -- -> auth_user
    verb varchar(50) NOT NULL,
    template_id integer NOT NULL,           -- -> dispatch_template
    template_context text NOT NULL,         -- should hold JSON
    read boolean NOT NULL,
    created timestamp NOT NULL
);

CREATE TABLE dispatch_payment (
    id serial NOT NULL,
    instruction_id integer NOT NULL,        -- -> dispatch_instruction
    amount numeric(12,2) NOT NULL,
    currency varchar(3) NOT NULL,
    method varchar(20) NULL,                -- card, bank_transfer, check; sometimes NULL
    reference varchar(100) NULL,            -- ch_/pi_ card, WIRE- bank transfer, CHK check
    paid_at timestamp NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_agent (
    id serial NOT NULL,
    user_id integer NOT NULL,               -- -> auth_user in group technician
    roles text NOT NULL,                    -- comma-separated
    active boolean NOT NULL,
    created_at timestamp NOT NULL
);

CREATE TABLE dispatch_operation (
    id serial NOT NULL,
    instruction_id integer NOT NULL,        -- -> dispatch_instruction
    agent_id integer NOT NULL,              -- -> dispatch_agent
    step varchar(30) NOT NULL,
    notes text NOT NULL,
    started_at timestamp NOT NULL,
    finished_at timestamp NULL
);

-- @step constraints
ALTER TABLE auth_group ADD PRIMARY KEY (id), ADD UNIQUE (name);
ALTER TABLE auth_user ADD PRIMARY KEY (id), ADD UNIQUE (username);
ALTER TABLE auth_user_groups ADD PRIMARY KEY (id), ADD UNIQUE (user_id, group_id),
    ADD FOREIGN KEY (user_id) REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
    ADD FOREIGN KEY (group_id) REFERENCES auth_group (id) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE dispatch_office ADD PRIMARY KEY (id);
ALTER TABLE dispatch_office_members ADD PRIMARY KEY (id);
ALTER TABLE dispatch_patient ADD PRIMARY KEY (id);
ALTER TABLE dispatch_instance ADD PRIMARY KEY (id);
ALTER TABLE dispatch_instruction ADD PRIMARY KEY (id);
ALTER TABLE dispatch_jaw ADD PRIMARY KEY (id);
ALTER TABLE dispatch_file ADD PRIMARY KEY (id);
ALTER TABLE dispatch_record ADD PRIMARY KEY (id);
ALTER TABLE dispatch_state ADD PRIMARY KEY (id);
ALTER TABLE dispatch_template ADD PRIMARY KEY (id);
ALTER TABLE dispatch_notification ADD PRIMARY KEY (id);
ALTER TABLE dispatch_payment ADD PRIMARY KEY (id);
ALTER TABLE dispatch_agent ADD PRIMARY KEY (id), ADD UNIQUE (user_id),
    ADD FOREIGN KEY (user_id) REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE dispatch_operation ADD PRIMARY KEY (id);

CREATE INDEX dispatch_office_members_office_id ON dispatch_office_members (office_id);
CREATE INDEX dispatch_office_members_user_id ON dispatch_office_members (user_id);
CREATE INDEX dispatch_patient_user_id ON dispatch_patient (user_id);
CREATE INDEX dispatch_patient_doctor_id ON dispatch_patient (doctor_id);
CREATE INDEX dispatch_instance_patient_id ON dispatch_instance (patient_id);
CREATE INDEX dispatch_instruction_instance_id ON dispatch_instruction (instance_id);
CREATE INDEX dispatch_jaw_instruction_id ON dispatch_jaw (instruction_id);
CREATE INDEX dispatch_file_instruction_id ON dispatch_file (instruction_id);
CREATE INDEX dispatch_record_instance_id ON dispatch_record (instance_id);
CREATE INDEX dispatch_record_treatment_plan_id ON dispatch_record (treatment_plan_id);
CREATE INDEX dispatch_state_instance_id ON dispatch_state (instance_id);
CREATE INDEX dispatch_notification_recipient_id ON dispatch_notification (recipient_id);
CREATE INDEX dispatch_payment_instruction_id ON dispatch_payment (instruction_id);
CREATE INDEX dispatch_operation_instruction_id ON dispatch_operation (instruction_id);
