/** REDACTED replaces every secret value in what Shaker stores or prints. */
export const REDACTED = "[REDACTED]";

/** createRedactor returns a function that blanks out every given secret value in a text. */
export function createRedactor(secrets: Record<string, string> | readonly string[]): (text: string) => string {
  const values = (Array.isArray(secrets) ? [...secrets] : Object.values(secrets))
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

/** What ends a URL's authority (and so its user-info) in free text: a path, query, fragment, space, quote or bracket. */
const authorityEnd = /[\s/?#"'<>(){}\\]/;
const schemeChar = /[a-z0-9+.-]/i;

/**
 * redactUrlUserInfo blanks the user-info of every URL in a text, up to the last "@" of its
 * authority as a URL parser reads it: `https://u:p@host` becomes `https://[REDACTED]@host`.
 * One pass over the text, whatever it holds.
 */
export function redactUrlUserInfo(text: string): string {
  if (!text.includes("@") || !text.includes("://")) return text;
  let out = "";
  let copied = 0;
  let from = 0;
  for (;;) {
    const sep = text.indexOf("://", from);
    if (sep < 0) break;
    let s = sep;
    while (s > 0 && sep - s < 32 && schemeChar.test(text[s - 1])) s--;
    while (s < sep && !/[a-z]/i.test(text[s])) s++;
    let end = sep + 3;
    let at = -1;
    for (; end < text.length && !authorityEnd.test(text[end]); end++) if (text[end] === "@") at = end;
    if (s < sep && at >= 0) {
      out += text.slice(copied, sep + 3) + REDACTED;
      copied = at;
    }
    from = end;
  }
  return copied === 0 ? text : out + text.slice(copied);
}

/**
 * createRunRedactor is what a run's record is cleaned with: every secret value, each line of a
 * multi-line secret (captured output is recorded line by line, so a printed PEM key never appears
 * whole), and the user-info of every URL.
 */
export function createRunRedactor(secrets: Iterable<string>): (text: string) => string {
  const values = new Set<string>();
  for (const v of secrets) {
    if (typeof v !== "string" || v.length === 0) continue;
    values.add(v);
    if (/[\r\n]/.test(v)) for (const line of v.split(/\r?\n|\r/)) if (line.trim().length >= 8) values.add(line.trim());
  }
  const redactSecrets = createRedactor([...values]);
  // User-info first: a secret blanked inside it would otherwise end its authority early.
  return (text) => redactSecrets(redactUrlUserInfo(text));
}
