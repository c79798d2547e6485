CREATE TABLE orders (id uuid PRIMARY KEY, legacy_order_id integer UNIQUE, customer text NOT NULL);
CREATE TABLE lines (id uuid PRIMARY KEY, legacy_line_key text UNIQUE,
                    order_id uuid NOT NULL REFERENCES orders (id), sku text NOT NULL,
                    qty integer CHECK (qty > 0));
CREATE TABLE notes (id uuid PRIMARY KEY, line_id uuid NOT NULL REFERENCES lines (id),
                    body text NOT NULL);
CREATE TABLE returns (id uuid PRIMARY KEY, line_id uuid NOT NULL REFERENCES lines (id),
                      reason text);
