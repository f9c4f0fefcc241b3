// The help of the commands whose code needs the server's modules (`serve`, `keys`): kept here, apart
// from that code, so `shaker help keys` and `shaker serve --help` answer from the prebuilt light CLI
// without loading it (see cli/prebuilt.js).

export const serveUsage = `usage: shaker serve [--services LIST]
  runs Shaker: every service and the REST edge on one port, until SIGINT or SIGTERM. It reads its
  environment: PORT (default 8080, 0 picks a free port), SHAKER_HOST (default 127.0.0.1),
  SHAKER_DATA_DIR (default ./data), SHAKER_DATABASE_URL (postgres://…: every service's tables in
  PostgreSQL instead of SQLite files), SHAKER_API_KEY (a key of the default account; one is created
  and shown once when the account has none), SHAKER_SANDBOX, SHAKER_WORKERS. README.md lists the rest.

  --services LIST   run only these (comma-separated: registry,executor,modelproxy,datastore,edge; also
                    SHAKER_SERVICES). The others are reached at SHAKER_REGISTRY_URL, SHAKER_MODELPROXY_URL
                    and SHAKER_DATASTORE_URL; executors are found through the cluster (shaker cluster
                    lists it). Every process needs the same SHAKER_SERVICE_SECRET, and several
                    executors need SHAKER_DATABASE_URL.`;

export const keysUsage = `usage: shaker keys <command>

commands:
  create --account NAME [--admin]   create a key (and the account when it does not exist); the key is shown once
  list [--account NAME]             list keys (never their secret); every account's without --account
  revoke ID                         revoke a key by its id (or prefix); requests with it fail from then on

Add --json for machine-readable output.
With SHAKER_URL set, the commands go to that running server with SHAKER_API_KEY (an admin account's key);
otherwise they work on the data directory (SHAKER_DATA_DIR, default ./data) directly.
`;

/** UsageError is a mistake on the `shaker keys` command line: its message is printed with the usage, exit 2. */
export class UsageError extends Error {}
