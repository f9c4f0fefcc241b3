CREATE SCHEMA "executor";
--> statement-breakpoint
CREATE TABLE "executor"."run_calls" (
	"run_id" text NOT NULL,
	"seq" integer NOT NULL,
	"method" text NOT NULL,
	"request_hash" text NOT NULL,
	"journaled" integer NOT NULL,
	"messages" "bytea",
	"error" json,
	"created_at" bigint NOT NULL,
	CONSTRAINT "run_calls_run_id_seq_pk" PRIMARY KEY("run_id","seq")
);
--> statement-breakpoint
CREATE TABLE "executor"."runs" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"workflow_ref_name" text NOT NULL,
	"version" text NOT NULL,
	"version_id" text NOT NULL,
	"session_id" text NOT NULL,
	"status" integer NOT NULL,
	"input" json,
	"metadata" json,
	"output" json,
	"error" json,
	"created_at" bigint NOT NULL,
	"started_at" bigint,
	"finished_at" bigint,
	"emitted" json,
	"logs" json,
	"http_calls" json,
	"warnings" json,
	"parent_run_id" text DEFAULT '' NOT NULL,
	"depth" integer DEFAULT 0 NOT NULL,
	"prompt_tokens" integer DEFAULT 0 NOT NULL,
	"completion_tokens" integer DEFAULT 0 NOT NULL,
	"duration_ms" double precision,
	"idempotency_key" text DEFAULT '' NOT NULL,
	"request_hash" text DEFAULT '' NOT NULL,
	"detached" integer DEFAULT 0 NOT NULL,
	"has_secrets" integer DEFAULT 0 NOT NULL,
	"timeout_ms" bigint DEFAULT 0 NOT NULL,
	"resume" json,
	"attempt" integer DEFAULT 1 NOT NULL,
	"attempts" json,
	"unjournaled_calls" integer DEFAULT 0 NOT NULL,
	"executor" text DEFAULT '' NOT NULL
);
--> statement-breakpoint
CREATE INDEX "runs_account_id_created_at_idx" ON "executor"."runs" USING btree ("account_id","created_at");--> statement-breakpoint
CREATE INDEX "runs_session_id_idx" ON "executor"."runs" USING btree ("session_id");--> statement-breakpoint
CREATE INDEX "runs_account_id_workflow_ref_name_created_at_idx" ON "executor"."runs" USING btree ("account_id","workflow_ref_name","created_at");--> statement-breakpoint
CREATE INDEX "runs_status_idx" ON "executor"."runs" USING btree ("status");--> statement-breakpoint
CREATE INDEX "runs_account_id_idempotency_key_idx" ON "executor"."runs" USING btree ("account_id","idempotency_key");--> statement-breakpoint
CREATE INDEX "runs_account_id_request_hash_idx" ON "executor"."runs" USING btree ("account_id","request_hash");