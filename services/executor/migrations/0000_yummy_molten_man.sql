CREATE TABLE `runs` (
	`id` text PRIMARY KEY NOT NULL,
	`account_id` text NOT NULL,
	`workflow_ref_name` text NOT NULL,
	`version` text NOT NULL,
	`version_id` text NOT NULL,
	`session_id` text NOT NULL,
	`status` integer NOT NULL,
	`input` text,
	`metadata` text,
	`output` text,
	`error` text,
	`created_at` integer NOT NULL,
	`started_at` integer,
	`finished_at` integer,
	`emitted` text,
	`logs` text,
	`http_calls` text,
	`warnings` text,
	`parent_run_id` text DEFAULT '' NOT NULL,
	`depth` integer DEFAULT 0 NOT NULL,
	`prompt_tokens` integer DEFAULT 0 NOT NULL,
	`completion_tokens` integer DEFAULT 0 NOT NULL,
	`duration_ms` real
);
--> statement-breakpoint
CREATE INDEX `runs_account_id_created_at_idx` ON `runs` (`account_id`,`created_at`);--> statement-breakpoint
CREATE INDEX `runs_session_id_idx` ON `runs` (`session_id`);--> statement-breakpoint
CREATE INDEX `runs_account_id_workflow_ref_name_created_at_idx` ON `runs` (`account_id`,`workflow_ref_name`,`created_at`);--> statement-breakpoint
CREATE INDEX `runs_status_idx` ON `runs` (`status`);