// Run by test/young-garbage.test.ts under --trace-gc-nvp: calls through the in-process transport and
// the service clients, one kind after another, each kind's scavenges after a "kind:" line.
import type { HandlerContext } from "@connectrpc/connect";
import { ModelProxyService } from "../gen/shaker/modelproxy/v1/modelproxy_pb.js";
import { createClients } from "../services/shared/clients.js";
import { createDirectTransport } from "../services/shared/direct-transport.js";

const transport = createDirectTransport((router) => {
  router.service(ModelProxyService, {
    async chatCompletion(_req: unknown, ctx: HandlerContext) {
      ctx.requestHeader.get("authorization");
      return { callId: "call_1", completion: { id: "x", choices: [] } };
    },
    async *chatCompletionStream(_req: unknown, _ctx: HandlerContext) {
      for (let i = 0; i < 3; i++) yield { callId: "call_1", chunk: { id: "x", choices: [] } };
    },
  } as never);
});
const { modelproxy } = createClients(transport);
const body = { model: "m", messages: [{ role: "user", content: "hi" }] };
const headers = { authorization: "Bearer k" };
const calls = Number(process.argv[2] ?? 40_000);

const kinds: Record<string, () => Promise<unknown>> = {
  unary: () => modelproxy.chatCompletion({ body }, { headers }),
  stream: async () => {
    for await (const _ of modelproxy.chatCompletionStream({ body }, { headers })) {
    }
  },
};
for (const [kind, call] of Object.entries(kinds)) {
  console.log(`kind: ${kind}`);
  for (let i = 0; i < calls; i++) {
    await call();
    // Each call on a turn of its own, as a server's calls are.
    if (i % 4 === 0) await new Promise((r) => setImmediate(r));
  }
}
console.log("kind: end");
