/** percentile returns the p-th percentile (0..100) of the samples, nearest-rank. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/** summary formats p50/p99 of millisecond samples. */
export function summary(samples: number[]): { p50: number; p99: number; mean: number; n: number } {
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  return { p50: percentile(samples, 50), p99: percentile(samples, 99), mean, n: samples.length };
}

/** fmt prints milliseconds with sensible precision. */
export function fmt(ms: number): string {
  return ms < 10 ? ms.toFixed(2) : ms.toFixed(1);
}

/** report prints one benchmark line: the figure, the baseline, and their ratio. */
export function report(name: string, value: string, baseline: string, ratio: number, note = ""): void {
  process.stdout.write(`${name.padEnd(44)} ${value.padEnd(26)} baseline ${baseline.padEnd(26)} ratio ${ratio.toFixed(2)}x ${note}\n`);
}
