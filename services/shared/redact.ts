/** REDACTED replaces every secret value in what Shaker stores or prints. */
export const REDACTED = "[REDACTED]";

/** createRedactor returns a function that blanks out every given secret value in a text. */
export function createRedactor(secrets: Record<string, string>): (text: string) => string {
  const values = Object.values(secrets)
    .filter((v) => typeof v === "string" && v.length > 0)
    .sort((a, b) => b.length - a.length);
  if (values.length === 0) return (text) => text;
  return (text) => {
    let out = text;
    for (const v of values) if (out.includes(v)) out = out.split(v).join(REDACTED);
    return out;
  };
}

/** redactJson blanks secret values in every string (and object key) inside a JSON value. */
export function redactJson<T>(value: T, redact: (text: string) => string): T {
  if (typeof value === "string") return redact(value) as T;
  if (Array.isArray(value)) return value.map((v) => redactJson(v, redact)) as T;
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[redact(k)] = redactJson(v, redact);
    return out as T;
  }
  return value;
}
