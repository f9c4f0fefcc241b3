import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    testTimeout: 600_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 1,
    projects: [
      { extends: true, test: { name: "sqlite", include: ["test/reliability/**/*.test.ts"] } },
      // A crash and restart on PostgreSQL too (see vitest.config.ts): the runs resume from the same database.
      ...(process.env.SHAKER_TEST_DATABASE_URL
        ? [
            {
              extends: true,
              test: { name: "postgresql", include: ["test/reliability/durable.test.ts"], env: { SHAKER_TEST_DIALECT: "postgresql" } },
            },
          ]
        : []),
    ],
  },
});
