import { randomBytes } from "node:crypto";

/** newId returns a random, URL-safe identifier with a readable prefix, such as `run_3k…`. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(12).toString("base64url")}`;
}
