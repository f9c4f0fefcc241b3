CREATE TABLE `records` (
	`rowid` integer PRIMARY KEY NOT NULL,
	`store_id` integer NOT NULL,
	`record_id` text NOT NULL,
	`text` text NOT NULL,
	`metadata` text NOT NULL,
	`vector` blob NOT NULL,
	FOREIGN KEY (`store_id`) REFERENCES `stores`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `records_store_id_record_id_idx` ON `records` (`store_id`,`record_id`);--> statement-breakpoint
CREATE TABLE `staged_records` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`upload_id` text NOT NULL,
	`record_id` text NOT NULL,
	`text` text NOT NULL,
	`metadata` text NOT NULL,
	`vector` blob NOT NULL
);
--> statement-breakpoint
CREATE INDEX `staged_records_upload_id_seq_idx` ON `staged_records` (`upload_id`,`seq`);--> statement-breakpoint
CREATE TABLE `stores` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`account_id` text NOT NULL,
	`name` text NOT NULL,
	`embedding_model` text DEFAULT '' NOT NULL,
	`dimension` integer DEFAULT 0 NOT NULL,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `stores_account_id_name_idx` ON `stores` (`account_id`,`name`);