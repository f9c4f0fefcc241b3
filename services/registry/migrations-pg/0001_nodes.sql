CREATE TABLE "registry"."nodes" (
	"id" text PRIMARY KEY NOT NULL,
	"services" json NOT NULL,
	"url" text NOT NULL,
	"capacity" integer NOT NULL,
	"runs_in_flight" integer NOT NULL,
	"started_at" bigint NOT NULL,
	"last_heartbeat" bigint NOT NULL
);
