CREATE TABLE staff (id integer PRIMARY KEY, name text NOT NULL, manager_id integer, status text);
INSERT INTO staff VALUES
  (1, 'Ada', NULL, 'active'),      -- the root
  (2, 'Bo', 1, 'active'),
  (3, 'Cy', 2, 'active'),          -- three levels, across chunks of two
  (4, 'Di', 99, 'active'),         -- a manager that does not exist
  (5, 'Ed', 6, 'active'),
  (6, 'Fy', 5, 'active'),          -- 5 and 6 manage each other: neither has a root
  (7, 'Gu', 7, 'active'),          -- manages itself
  (8, 'Hal', 1, 'left'),           -- excluded by a rule
  (9, 'Ivy', 8, 'active'),         -- under an excluded manager
  (10, '', 1, 'active'),           -- rejected by a rule
  (11, 'Jo', 10, 'active'),        -- under a quarantined manager
  (12, 'Kim', 3, 'active');        -- listed before... no: after its manager's manager
