CREATE TABLE shop_order (id integer PRIMARY KEY, customer text);
CREATE TABLE order_line (order_id integer, line_no integer, sku text, qty integer,
                         PRIMARY KEY (order_id, line_no));
CREATE TABLE line_note (order_id integer, line_no integer, tag text, body text,
                        PRIMARY KEY (order_id, line_no, tag));
INSERT INTO shop_order VALUES (1, 'Ann'), (2, 'Bob');
INSERT INTO order_line VALUES
  (1, 1, 'a', 2), (1, 2, 'b', 1), (2, 1, 'c', 3),
  (3, 1, 'd', 1),                    -- its order does not exist
  (2, 2, 'e', 0);                    -- the target's CHECK refuses qty 0
INSERT INTO line_note VALUES
  (1, 1, 'a b', 'spaces in the key'), (1, 2, 'x,y', 'a comma'), (1, 1, 'q"t', 'a quote'),
  (9, 9, 'z', 'its line does not exist'), (2, 2, '', 'under a refused line');
