-- records.vector_bytes: each vector's little-endian float32s (the bytes of SQLite's blob), for the
-- exact scan to read. Records written before it get theirs from `vector`: float4send gives each
-- float's big-endian bytes, reversed here; NaN and -0 go through bit for bit.
ALTER TABLE "datastore"."records" ADD COLUMN "vector_bytes" "bytea";--> statement-breakpoint
UPDATE "datastore"."records" SET "vector_bytes" = (
	SELECT coalesce(string_agg(substr(b, 4, 1) || substr(b, 3, 1) || substr(b, 2, 1) || substr(b, 1, 1), ''::bytea ORDER BY i), ''::bytea)
	FROM unnest("vector") WITH ORDINALITY AS u(x, i), float4send(x) AS b
);--> statement-breakpoint
ALTER TABLE "datastore"."records" ALTER COLUMN "vector_bytes" SET NOT NULL;
--> statement-breakpoint
-- Both vectors make a row of 384 dimensions about 3.1 KB, past the 2 KB from which PostgreSQL moves
-- values out of line: the real[] goes (EXTERNAL: never tried for compression, as floats do not
-- compress), the bytes the scan reads stay in the row (MAIN).
ALTER TABLE "datastore"."records" ALTER COLUMN "vector" SET STORAGE EXTERNAL, ALTER COLUMN "vector_bytes" SET STORAGE MAIN;
