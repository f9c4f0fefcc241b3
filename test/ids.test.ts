import { describe, expect, it } from "vitest";
import { newId } from "../services/shared/ids.js";

describe("newId", () => {
  it("gives prefixed, URL-safe, 96-bit random ids, none repeated across refills of its random pool", () => {
    const ids = Array.from({ length: 2000 }, () => newId("run"));
    for (const id of ids) expect(id).toMatch(/^run_[A-Za-z0-9_-]{16}$/);
    expect(new Set(ids).size).toBe(ids.length);
    // Consecutive ids share no bytes: each takes its own 12 bytes of the pool.
    const bytes = ids.slice(0, 300).map((id) => Buffer.from(id.slice(4), "base64url").toString("hex"));
    expect(new Set(bytes).size).toBe(300);
  });
});
