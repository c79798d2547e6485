-- A legacy schema made by an ORM that quotes its names (EF Core, Prisma): PascalCase tables,
-- camelCase and reserved-word columns.
CREATE TABLE "Owners" ("Id" integer PRIMARY KEY, "fullName" text NOT NULL);
CREATE TABLE "Pets" (
    "Id" integer PRIMARY KEY,
    "OwnerId" integer REFERENCES "Owners" ("Id"),
    "Name" text,
    "Order" integer
);
INSERT INTO "Owners" SELECT i, 'owner ' || i FROM generate_series(1, 6) i;
INSERT INTO "Pets" SELECT i, 1 + i % 6, 'pet ' || i, i FROM generate_series(1, 30) i;
