// Emit-to-client latency: time from ctx.emit in the child to the chunk parsed by a client reading
// the SSE stream, against a floor measured in the same run: a bare python3 process writing the same
// values to a pipe that this process reads (no platform in between).
import { spawn } from "node:child_process";
import { startBenchServer } from "./server.js";
import { fmt, report, summary } from "./stats.js";

const count = Number(process.env.BENCH_EMITS ?? 400);
const emitter = `
import time
def execute(ctx):
    for i in range(ctx.input["n"]):
        ctx.emit({"i": i, "t": time.time()})
        time.sleep(0.002)
    return "done"
`;

function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

async function floor(n: number): Promise<number[]> {
  const code = `import json, sys, time\nfor i in range(${n}):\n    sys.stdout.write(json.dumps({"i": i, "t": time.time()}) + "\\n"); sys.stdout.flush(); time.sleep(0.002)\n`;
  const child = spawn("python3", ["-c", code], { stdio: ["ignore", "pipe", "inherit"] });
  const samples: number[] = [];
  let buf = "";
  for await (const chunk of child.stdout) {
    const at = nowMs();
    buf += chunk.toString();
    const lines = buf.split("\n");
    buf = lines.pop()!;
    for (const line of lines) samples.push(at - JSON.parse(line).t * 1000);
  }
  return samples;
}

export async function benchEdge(): Promise<void> {
  const server = await startBenchServer({ workers: 1 });
  try {
    await server.upload("emitter", emitter);
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "workflow:emitter", input: { n: count }, stream: true }),
    });
    const samples: number[] = [];
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      const events = buf.split("\n\n");
      buf = events.pop()!;
      for (const e of events) {
        if (!e.startsWith("data: {")) continue;
        const data = JSON.parse(e.slice(6));
        const at = nowMs();
        if (data.emitted) samples.push(at - data.emitted.t * 1000);
      }
    }
    const base = await floor(count);
    const s = summary(samples.slice(10));
    const b = summary(base.slice(10));
    report(
      "emit-to-client latency (SSE, parsed)",
      `p50 ${fmt(s.p50)} ms p99 ${fmt(s.p99)} ms`,
      `p50 ${fmt(b.p50)} ms (bare pipe)`,
      s.p50 / b.p50,
      "(shaker/floor: lower is better)",
    );
  } finally {
    await server.close();
  }
}
