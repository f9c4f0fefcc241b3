// The database layer's own rules (services/shared/db.ts), on SQLite.
import { sql } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import * as registrySchema from "../services/registry/schema.js";
import * as registryPgSchema from "../services/registry/schema.pg.js";
import { openServiceDatabase } from "../services/shared/db.js";

describe("SQLite statements kept between queries", () => {
  it("hands a kept statement out in object mode after drizzle read rows from it as arrays", async () => {
    const db = await openServiceDatabase({ service: "registry", location: ":memory:", schema: registrySchema, pgSchema: registryPgSchema });
    try {
      const query = sql`SELECT 1 AS a, 'x' AS b`;
      expect(await db.rows(query)).toEqual([{ a: 1, b: "x" }]);
      // drizzle's values() reads through the same statement in raw (array) mode.
      expect(await db.orm.values(query)).toEqual([[1, "x"]]);
      expect(await db.rows(query)).toEqual([{ a: 1, b: "x" }]);
      // Many distinct texts: each still answers (the least recently used are let go).
      for (let i = 0; i < 1200; i++) expect(await db.rows(sql.raw(`SELECT ${i} AS n`))).toEqual([{ n: i }]);
    } finally {
      await db.close();
    }
  });
});
