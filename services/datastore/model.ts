// The Datastore's records as the store layer sees them, on either database.
import type * as schema from "./schema.js";

/** StoreRow is a record store of an account. */
export type StoreRow = typeof schema.stores.$inferSelect;

/** RecordInput is a record ready to write: its vector already packed as float32. */
export interface RecordInput {
  id: string;
  text: string;
  /** metadata is the JSON text of an object. */
  metadata: string;
  vector: Float32Array;
}

/** RecordRow is a stored record. */
export interface RecordRow {
  id: string;
  text: string;
  metadata: string;
  vector: Float32Array;
}

/** Hit is a search result; score is higher for better hits. */
export interface Hit {
  id: string;
  text: string;
  metadata: string;
  score: number;
}

/** UpsertResult is the outcome of an all-or-nothing write. */
export type UpsertResult = { ok: true; upserted: number } | { ok: false; index: number; got: number; want: number };

/** Refused carries a refused write's result out of its transaction, which it rolls back. */
export class Refused extends Error {
  constructor(readonly result: UpsertResult) {
    super("refused");
  }
}

/** annFromDefault is the store size from which vector search asks the ANN index (below it, exact or KNN scans are as fast). */
export const annFromDefault = 20_000;

/** annCandidates is how many ANN candidates are re-ranked exactly per search, at least (4 x limit when larger). */
const annCandidates = 64;

/** annK is the first number of ANN candidates a search asks for: more when a filter may drop most of them. */
export function annK(limit: number, filtered: boolean): number {
  return Math.max(annCandidates, limit * (filtered ? 16 : 4));
}

/** blobOf is a vector's float32 bytes, as both databases' `vector` columns take them. */
export function blobOf(v: Float32Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * hasDirection is false for a vector of zeros: it has no cosine with anything (its score is null,
 * and it ranks after every scored record).
 */
export function hasDirection(v: Float32Array): boolean {
  for (let i = 0; i < v.length; i++) if (v[i] !== 0) return true;
  return false;
}

/** floatsOf reads a stored vector back. */
export function floatsOf(b: Buffer): Float32Array {
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** queryWords are the distinct lower-cased words of a keyword query; a record matches when it holds any of them. */
export function queryWords(text: string): string[] {
  return [...new Set(text.toLowerCase().match(/[\p{L}\p{N}]+/gu))];
}

/** CandidateSearch is vector search through an approximate index that proposes candidates, re-ranked exactly. */
export interface CandidateSearch<K extends { length: number }> {
  limit: number;
  filtered: boolean;
  /** maxK is the most candidates the index is asked for; past it the filtered records are scanned exactly. */
  maxK: number;
  /** propose asks the index for up to k candidates (undefined when the store has no usable index). */
  propose(k: number): Promise<K | undefined>;
  /** rerank scores candidates exactly, applying the filter; candidates gone meanwhile are dropped. */
  rerank(keys: K): Promise<Hit[]>;
  exact(): Promise<Hit[]>;
}

/**
 * searchCandidates asks the index for candidates and re-ranks them exactly; a filter that leaves
 * fewer than `limit` asks for 4x more, up to maxK, then scans the filtered records exactly, so a
 * filtered search still returns `limit` hits when they exist. Undefined when there is no usable index.
 */
export async function searchCandidates<K extends { length: number }>(s: CandidateSearch<K>): Promise<Hit[] | undefined> {
  for (let k = annK(s.limit, s.filtered); ; k *= 4) {
    if (k > s.maxK) return s.exact();
    const keys = await s.propose(k);
    if (!keys) return undefined;
    const hits = await s.rerank(keys);
    if (hits.length >= s.limit || keys.length < k) return hits;
  }
}
