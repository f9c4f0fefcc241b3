import { defineConfig } from "vitest/config";

// The files that run a second time on PostgreSQL (SHAKER_TEST_DIALECT=postgresql; see test/databases.ts)
// when SHAKER_TEST_DATABASE_URL names a server, as .ci/run sets it: every test of a store, and the
// end-to-end tests whose answers come from the services' tables.
const onPostgres = [
  "test/accounts.test.ts",
  "test/keys.test.ts",
  "test/registry*.test.ts",
  "test/modelproxy*.test.ts",
  "test/executor.test.ts",
  "test/executor-store.test.ts",
  "test/durable-runs.test.ts",
  "test/retry-safety.test.ts",
  "test/datastore.test.ts",
  "test/datastore.service.test.ts",
  "test/datastore-scope.test.ts",
  "test/datastore-ann.test.ts",
  "test/datastore-pg-scan.test.ts",
  "test/cluster.test.ts",
  "test/ctx.test.ts",
  "test/edge.e2e.test.ts",
  "test/clients.e2e.test.ts",
  "test/skeleton.e2e.test.ts",
];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Each file starts its own server and Python workers; two cores run two files at a time well.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: { name: "sqlite", include: ["test/**/*.test.ts"], exclude: ["test/reliability/**", "node_modules/**"] },
      },
      ...(process.env.SHAKER_TEST_DATABASE_URL
        ? [{ extends: true, test: { name: "postgresql", include: onPostgres, env: { SHAKER_TEST_DIALECT: "postgresql" } } }]
        : []),
    ],
    // `npm run test:coverage`: what the tests run of the services and the CLI, in the test processes
    // (code run by a spawned `shaker` or by Python is not counted).
    coverage: {
      provider: "v8",
      include: ["services/**/*.ts", "cli/**/*.ts"],
      reporter: ["text-summary", "json-summary", "text"],
      reportsDirectory: "test-output/coverage",
    },
  },
});
