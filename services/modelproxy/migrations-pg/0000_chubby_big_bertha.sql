CREATE SCHEMA "modelproxy";
--> statement-breakpoint
CREATE TABLE "modelproxy"."calls" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"session_id" text NOT NULL,
	"run_id" text NOT NULL,
	"workflow_ref_name" text NOT NULL,
	"intent" text NOT NULL,
	"application" text NOT NULL,
	"kind" text NOT NULL,
	"model" text NOT NULL,
	"provider" text NOT NULL,
	"attempts" integer NOT NULL,
	"attempt_log" json,
	"status" text NOT NULL,
	"error" text NOT NULL,
	"latency_ms" double precision NOT NULL,
	"ttft_ms" double precision NOT NULL,
	"prompt_tokens" integer NOT NULL,
	"completion_tokens" integer NOT NULL,
	"request" json,
	"response" json,
	"created_at" double precision NOT NULL
);
--> statement-breakpoint
CREATE INDEX "calls_account_id_session_id_created_at_idx" ON "modelproxy"."calls" USING btree ("account_id","session_id","created_at");--> statement-breakpoint
CREATE INDEX "calls_account_id_run_id_idx" ON "modelproxy"."calls" USING btree ("account_id","run_id");--> statement-breakpoint
CREATE INDEX "calls_account_id_created_at_idx" ON "modelproxy"."calls" USING btree ("account_id","created_at");