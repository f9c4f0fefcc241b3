import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["test/reliability/**", "node_modules/**"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Each file starts its own server and Python workers; two cores run two files at a time well.
    maxWorkers: 2,
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
