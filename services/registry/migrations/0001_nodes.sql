CREATE TABLE `nodes` (
	`id` text PRIMARY KEY NOT NULL,
	`services` text NOT NULL,
	`url` text NOT NULL,
	`capacity` integer NOT NULL,
	`runs_in_flight` integer NOT NULL,
	`started_at` integer NOT NULL,
	`last_heartbeat` integer NOT NULL
);
