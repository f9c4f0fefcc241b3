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

/**
 * throughputAB is the runs per second of two sides (two servers of one build), 16 calls in flight,
 * measured in alternating rounds (A B, B A, …) so a drift of the machine's speed hits both alike.
 */
export async function throughputAB<S>(a: S, b: S, invoke: (side: S) => Promise<void>): Promise<[number, number]> {
  const perRound = Number(process.env.BENCH_THROUGHPUT_RUNS ?? 600) / 2;
  const totals = new Map<S, { runs: number; seconds: number }>([
    [a, { runs: 0, seconds: 0 }],
    [b, { runs: 0, seconds: 0 }],
  ]);
  for (let round = 0; round < 4; round++) {
    for (const side of round % 2 === 0 ? [a, b] : [b, a]) {
      let next = 0;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next++ < perRound) await invoke(side);
        }),
      );
      const t = totals.get(side)!;
      t.seconds += (performance.now() - t0) / 1000;
      t.runs += perRound;
    }
  }
  const rate = (side: S) => totals.get(side)!.runs / totals.get(side)!.seconds;
  return [rate(a), rate(b)];
}
