// The ModelProxy's field rules, shared by its handlers and the edge.
import { invalidArgument } from "../shared/errors.js";

/** callPage bounds ListCalls: at most `max` calls a page, `fallback` when the caller names none. */
export const callPage = { max: 1000, fallback: 100 } as const;

/** checkCallLimit returns ListCalls' page size, or throws InvalidArgument naming `limit`. */
export function checkCallLimit(limit: number): number {
  if (limit < 0 || limit > callPage.max) throw invalidArgument(`limit must be between 1 and ${callPage.max}`, "limit");
  return limit || callPage.fallback;
}
