CREATE TABLE `run_calls` (
	`run_id` text NOT NULL,
	`seq` integer NOT NULL,
	`method` text NOT NULL,
	`request_hash` text NOT NULL,
	`journaled` integer NOT NULL,
	`messages` blob,
	`error` text,
	`created_at` integer NOT NULL,
	PRIMARY KEY(`run_id`, `seq`)
);
--> statement-breakpoint
ALTER TABLE `runs` ADD `idempotency_key` text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `request_hash` text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `detached` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `has_secrets` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `timeout_ms` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `resume` text;--> statement-breakpoint
ALTER TABLE `runs` ADD `attempt` integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE `runs` ADD `attempts` text;--> statement-breakpoint
ALTER TABLE `runs` ADD `unjournaled_calls` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX `runs_account_id_idempotency_key_idx` ON `runs` (`account_id`,`idempotency_key`);--> statement-breakpoint
CREATE INDEX `runs_account_id_request_hash_idx` ON `runs` (`account_id`,`request_hash`);