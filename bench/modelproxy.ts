// Added latency of the ModelProxy: the same chat request sent to a fake OpenAI-compatible upstream
// directly and through the edge (edge → ModelProxy → its HTTP/1.1 client → upstream), interleaved in one
// run so machine noise falls on both alike. Reports p50/p99 of the per-pair difference, for plain
// requests and for the time to first token of streams.
import { startFakeUpstream } from "../test/fake-upstream.js";
import { startTestServer } from "../test/helpers.js";
import { fmt, percentile, report } from "./stats.js";

async function firstChunk(res: Response): Promise<void> {
  const reader = res.body!.getReader();
  const { value } = await reader.read();
  if (!value || !new TextDecoder().decode(value).includes("data:")) throw new Error("no first chunk");
  await reader.cancel();
}

export async function benchModelProxy(iterations = Number(process.env.BENCH_ITERATIONS ?? 500)): Promise<void> {
  const upstream = await startFakeUpstream();
  const server = await startTestServer({}, { OPENAI_BASE_URL: upstream.url, OPENAI_API_KEY: "sk-bench" });
  try {
    const body = (stream: boolean) =>
      JSON.stringify({ model: "bench-model", stream, messages: [{ role: "user", content: "the same short question every time" }] });
    const direct = (stream: boolean) =>
      fetch(`${upstream.url}/chat/completions`, {
        method: "POST",
        headers: { authorization: "Bearer sk-bench", "content-type": "application/json" },
        body: body(stream),
      });
    const proxied = (stream: boolean) =>
      fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: body(stream),
      });
    const plain = async (send: (s: boolean) => Promise<Response>) => {
      const t = performance.now();
      const res = await send(false);
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
      await res.arrayBuffer();
      return performance.now() - t;
    };
    const ttft = async (send: (s: boolean) => Promise<Response>) => {
      const t = performance.now();
      const res = await send(true);
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
      await firstChunk(res);
      return performance.now() - t;
    };
    for (let i = 0; i < 100; i++) {
      await plain(direct);
      await plain(proxied);
      await ttft(direct);
      await ttft(proxied);
    }
    // CPU time of this process (client, edge, services and fake upstream all live in it) is far less
    // sensitive to other load on a shared machine than wall time: report the added CPU per call too.
    const cpu = { direct: 0, proxied: 0 };
    const timed = async (kind: "direct" | "proxied", probe: (send: (s: boolean) => Promise<Response>) => Promise<number>) => {
      const before = process.cpuUsage();
      const ms = await probe(kind === "direct" ? direct : proxied);
      const used = process.cpuUsage(before);
      cpu[kind] += (used.user + used.system) / 1000;
      return ms;
    };
    const measure = async (probe: (send: (s: boolean) => Promise<Response>) => Promise<number>) => {
      const d: number[] = [];
      const p: number[] = [];
      const diff: number[] = [];
      cpu.direct = 0;
      cpu.proxied = 0;
      for (let i = 0; i < iterations; i++) {
        // Alternate which goes first, so neither always runs on a warmer machine.
        const first = i % 2 === 0;
        const a = first ? await timed("direct", probe) : 0;
        const b = await timed("proxied", probe);
        const c = first ? a : await timed("direct", probe);
        d.push(c);
        p.push(b);
        diff.push(b - c);
      }
      return { d, p, diff, cpuDirect: cpu.direct / iterations, cpuProxied: cpu.proxied / iterations };
    };
    const m = await measure(plain);
    report(
      "modelproxy: added latency, plain chat (p50)",
      `+${fmt(percentile(m.diff, 50))} ms (p99 +${fmt(percentile(m.diff, 99))})`,
      `direct p50 ${fmt(percentile(m.d, 50))} ms`,
      percentile(m.p, 50) / percentile(m.d, 50),
      `(proxied p50 ${fmt(percentile(m.p, 50))} ms; target ≤ 0.5 ms added, p99 ≤ 2 ms)`,
    );
    report(
      "modelproxy: CPU per plain call (whole process)",
      `${fmt(m.cpuProxied)} ms proxied (+${fmt(m.cpuProxied - m.cpuDirect)})`,
      `${fmt(m.cpuDirect)} ms direct`,
      m.cpuProxied / m.cpuDirect,
      `(load average ${(await import("node:os")).loadavg()[0].toFixed(1)})`,
    );
    const s = await measure(ttft);
    report(
      "modelproxy: added time to first token, stream",
      `+${fmt(percentile(s.diff, 50))} ms (p99 +${fmt(percentile(s.diff, 99))})`,
      `direct p50 ${fmt(percentile(s.d, 50))} ms`,
      percentile(s.p, 50) / percentile(s.d, 50),
      `(proxied p50 ${fmt(percentile(s.p, 50))} ms)`,
    );
  } finally {
    await server.close();
    await upstream.close();
  }
}
