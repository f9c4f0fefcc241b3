import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

/** Scalar is a value a metadata field is compared with (booleans compare as 1 and 0, as SQLite stores them). */
export type Scalar = string | number | boolean | null;

/** Condition is one test of a metadata field; a Filter holds when all of its conditions do. */
export type Condition =
  | { path: string[]; op: "eq" | "ne"; value: Scalar }
  | { path: string[]; op: "gt" | "gte" | "lt" | "lte"; value: number }
  | { path: string[]; op: "in"; values: Scalar[] };

/** FilterError says what is wrong with a filter, naming the field. */
export class FilterError extends Error {}

const rangeOps = { $gt: "gt", $gte: "gte", $lt: "lt", $lte: "lte" } as const;

function scalar(value: JsonValue, where: string): Scalar {
  // No stored text holds the NUL character (rules.ts), and PostgreSQL refuses it in a query.
  if (typeof value === "string" && value.includes("\0"))
    throw new FilterError(`filter '${where}' must not contain the NUL character (\\u0000)`);
  if (value === null || typeof value === "string" || typeof value === "number" || typeof value === "boolean") return value;
  throw new FilterError(`filter '${where}' must compare with a string, number, boolean or null`);
}

/**
 * parseFilter turns `{"field": value}`, `{"field": {"$in": [...]}}`,
 * `{"field": {"$gte": n, "$lt": m}}` (also `$gt`, `$lte`, `$eq`, `$ne`) into conditions. A dotted
 * field ("a.b") reaches into nested objects. Throws FilterError naming the bad field.
 */
export function parseFilter(filter: JsonObject | undefined): Condition[] {
  const out: Condition[] = [];
  for (const [field, spec] of Object.entries(filter ?? {})) {
    const path = field.split(".");
    if (path.some((p) => !p || /["\\\0]/.test(p)))
      throw new FilterError(`filter field '${field}' must be dotted names without quotes, backslashes or NUL characters`);
    if (spec !== null && typeof spec === "object" && !Array.isArray(spec)) {
      const ops = Object.entries(spec);
      if (ops.length === 0) throw new FilterError(`filter '${field}' has no operator`);
      for (const [op, value] of ops) {
        const where = `${field}.${op}`;
        if (op === "$eq" || op === "$ne") out.push({ path, op: op === "$eq" ? "eq" : "ne", value: scalar(value, where) });
        else if (op === "$in") {
          if (!Array.isArray(value)) throw new FilterError(`filter '${where}' must be an array`);
          out.push({ path, op: "in", values: value.map((v, i) => scalar(v, `${where}[${i}]`)) });
        } else if (op in rangeOps) {
          if (typeof value !== "number") throw new FilterError(`filter '${where}' must be a number`);
          out.push({ path, op: rangeOps[op as keyof typeof rangeOps], value });
        } else {
          throw new FilterError(`filter '${field}' has unknown operator '${op}'; use $eq, $ne, $in, $gt, $gte, $lt or $lte`);
        }
      }
    } else {
      out.push({ path, op: "eq", value: scalar(spec, field) });
    }
  }
  return out;
}
