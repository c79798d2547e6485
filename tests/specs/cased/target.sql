-- The new schema, also made by an ORM that quotes: "Person" and "Animal", camelCase columns.
CREATE TABLE public."Person" (
    id uuid PRIMARY KEY,
    "legacyId" integer UNIQUE,
    "displayName" text NOT NULL
);
CREATE TABLE public."Animal" (
    id uuid PRIMARY KEY,
    "legacyId" integer UNIQUE,
    "personId" uuid REFERENCES public."Person" (id),
    "Name" text,
    "order" integer
);
CREATE INDEX "Animal_personId_idx" ON public."Animal" ("personId");
