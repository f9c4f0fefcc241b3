CREATE SCHEMA "registry";
--> statement-breakpoint
CREATE TABLE "registry"."accessories" (
	"version_id" text NOT NULL,
	"key" text NOT NULL,
	"original_key" text NOT NULL,
	"content" text NOT NULL,
	CONSTRAINT "accessories_version_id_key_pk" PRIMARY KEY("version_id","key")
);
--> statement-breakpoint
CREATE TABLE "registry"."accounts" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"admin" boolean DEFAULT false NOT NULL,
	"created_at" bigint NOT NULL,
	CONSTRAINT "accounts_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "registry"."api_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"prefix" text NOT NULL,
	"hash" text NOT NULL,
	"created_at" bigint NOT NULL,
	"revoked_at" bigint,
	CONSTRAINT "api_keys_hash_unique" UNIQUE("hash")
);
--> statement-breakpoint
CREATE TABLE "registry"."workflow_versions" (
	"id" text PRIMARY KEY NOT NULL,
	"workflow_id" text NOT NULL,
	"major" integer NOT NULL,
	"minor" integer NOT NULL,
	"patch" integer NOT NULL,
	"workflow_name" text NOT NULL,
	"description" text DEFAULT '' NOT NULL,
	"script" text NOT NULL,
	"input_schema" json,
	"output_schema" json,
	"env" json NOT NULL,
	"timeout_seconds" integer NOT NULL,
	"execution_mode" integer NOT NULL,
	"datastores" json NOT NULL,
	"notes" text DEFAULT '' NOT NULL,
	"published" boolean NOT NULL,
	"created_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "registry"."workflows" (
	"id" text PRIMARY KEY NOT NULL,
	"account_id" text NOT NULL,
	"ref_name" text NOT NULL,
	"created_at" bigint NOT NULL,
	"updated_at" bigint NOT NULL,
	"deleted_at" bigint
);
--> statement-breakpoint
ALTER TABLE "registry"."accessories" ADD CONSTRAINT "accessories_version_id_workflow_versions_id_fk" FOREIGN KEY ("version_id") REFERENCES "registry"."workflow_versions"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "registry"."api_keys" ADD CONSTRAINT "api_keys_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "registry"."accounts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "registry"."workflow_versions" ADD CONSTRAINT "workflow_versions_workflow_id_workflows_id_fk" FOREIGN KEY ("workflow_id") REFERENCES "registry"."workflows"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "registry"."workflows" ADD CONSTRAINT "workflows_account_id_accounts_id_fk" FOREIGN KEY ("account_id") REFERENCES "registry"."accounts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "api_keys_account_id_idx" ON "registry"."api_keys" USING btree ("account_id");--> statement-breakpoint
CREATE UNIQUE INDEX "workflow_versions_workflow_id_major_minor_patch_idx" ON "registry"."workflow_versions" USING btree ("workflow_id","major","minor","patch");--> statement-breakpoint
CREATE UNIQUE INDEX "workflows_account_id_ref_name_idx" ON "registry"."workflows" USING btree ("account_id","ref_name") WHERE deleted_at IS NULL;