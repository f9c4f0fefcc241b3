/** FieldSchema is one field of an INPUT_SCHEMA or OUTPUT_SCHEMA literal. */
export interface FieldSchema {
  type: "string" | "number" | "boolean" | "object" | "array";
  description?: string;
  required?: boolean;
}

/** SchemaProblem names the field that does not fit, as a dotted path ("input.query"). */
export interface SchemaProblem {
  param: string;
  message: string;
}

function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/**
 * checkAgainstSchema checks a value against a workflow's schema literal: every required field
 * present, every present field of its declared type. Returns the first problem, or undefined.
 */
export function checkAgainstSchema(
  root: string,
  value: unknown,
  schema: Record<string, FieldSchema> | undefined,
): SchemaProblem | undefined {
  if (!schema || Object.keys(schema).length === 0) return undefined;
  const object = value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  if (value !== null && value !== undefined && !object) {
    return { param: root, message: `${root} must be a JSON object with the fields of the workflow's schema, got ${typeOf(value)}` };
  }
  for (const [name, field] of Object.entries(schema)) {
    const param = `${root}.${name}`;
    const present = object !== undefined && object[name] !== undefined && object[name] !== null;
    if (!present) {
      if (field.required) return { param, message: `${param} is required (${field.type})` };
      continue;
    }
    const actual = typeOf(object![name]);
    if (actual !== field.type) return { param, message: `${param} must be of type ${field.type}, got ${actual}` };
  }
  return undefined;
}
