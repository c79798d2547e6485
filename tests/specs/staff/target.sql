CREATE TABLE staff (id uuid PRIMARY KEY, legacy_staff_id bigint UNIQUE, name text NOT NULL,
                    manager_id uuid REFERENCES staff (id));
