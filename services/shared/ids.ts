import { randomFillSync } from "node:crypto";

const idBytes = 12;
// Random bytes for ids, drawn from the CSPRNG 256 ids at a time: randomBytes for each id (a Buffer
// and a call into OpenSSL) cost 20x more, and every run takes two ids.
const pool = Buffer.allocUnsafe(idBytes * 256);
let next = pool.length;

/** newId returns a random, URL-safe identifier with a readable prefix, such as `run_3k…`. */
export function newId(prefix: string): string {
  if (next + idBytes > pool.length) {
    randomFillSync(pool);
    next = 0;
  }
  const id = pool.toString("base64url", next, next + idBytes);
  next += idBytes;
  return `${prefix}_${id}`;
}
