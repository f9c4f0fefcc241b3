// What generic OpenAI consumers see of a workflow, streamed and not, with the real clients: the
// `openai` npm client, LangChain's ChatOpenAI and the AI SDK's openai-compatible provider. The rule
// checked is docs/api.md §3, "The stream's text": a workflow that emits nothing streams exactly its
// non-streamed content; one that emits gets its output text after its emitted values, unless they
// already spelled it.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { ChatOpenAI } from "@langchain/openai";
import { generateText, streamText } from "ai";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers.js";

const workflows: Record<string, string> = {
  // Emits nothing, answers text.
  quiet: "def execute(ctx):\n    return 'Paris is the capital of France.'\n",
  // Emits nothing, answers JSON.
  "quiet-json": "def execute(ctx):\n    return {'answer': 'Paris', 'sources': 2}\n",
  // Emits progress, then answers: the stream's text is the progress, a blank line, the answer.
  progress: "def execute(ctx):\n    ctx.emit('searching…')\n    ctx.emit(' reading 2 pages…')\n    return 'Paris.'\n",
  // Emits the beginning of its answer, token by token: the stream's text is the answer.
  tokens: "def execute(ctx):\n    for t in ['Par', 'is', ' is']:\n        ctx.emit(t)\n    return 'Paris is the capital.'\n",
};

/** streamedText is what a stream's text is for each workflow, by the rule of docs/api.md §3. */
const streamedText: Record<string, string> = {
  quiet: "Paris is the capital of France.",
  "quiet-json": '{"answer":"Paris","sources":2}',
  progress: "searching… reading 2 pages…\n\nParis.",
  tokens: "Paris is the capital.",
};

describe("generic OpenAI clients read a workflow's answer from its stream", () => {
  let server: TestServer;
  let baseURL: string;
  let openai: OpenAI;

  beforeAll(async () => {
    server = await startTestServer();
    baseURL = `${server.url}/v1`;
    openai = new OpenAI({ apiKey: server.apiKey, baseURL, maxRetries: 0 });
    for (const [name, script] of Object.entries(workflows)) await server.upload(name, script);
  });
  afterAll(async () => {
    await server?.close();
  });

  const messages = [{ role: "user" as const, content: "What is the capital of France?" }];

  /** nonStreamed is the `message.content` of a non-streamed completion. */
  async function nonStreamed(name: string): Promise<string> {
    const completion = await openai.chat.completions.create({ model: `workflow:${name}`, messages });
    return completion.choices[0].message.content ?? "";
  }

  describe("the openai npm client", () => {
    for (const name of Object.keys(workflows)) {
      it(`streams the text of the rule for '${name}'`, async () => {
        const stream = await openai.chat.completions.create({ model: `workflow:${name}`, messages, stream: true });
        let text = "";
        const marked: string[] = [];
        let final: any;
        for await (const chunk of stream as AsyncIterable<any>) {
          const delta = chunk.choices[0]?.delta?.content ?? "";
          text += delta;
          if (chunk.output_text) marked.push(delta);
          if (chunk.choices[0]?.finish_reason === "stop") final = chunk;
        }
        expect(text).toBe(streamedText[name]);
        expect(final.output).toEqual(JSON.parse(JSON.stringify(final.output)));
        // At most one chunk is the output's text, marked so that a Shaker-aware client can tell it from emitted values.
        expect(marked.length).toBeLessThanOrEqual(1);
        if (name === "quiet" || name === "quiet-json") expect(text).toBe(await nonStreamed(name));
      });
    }

    it("sends no output-text chunk when the emitted values are the whole output", async () => {
      await server.upload("echoes", "def execute(ctx):\n    ctx.emit('all of it')\n    return 'all of it'\n");
      const stream = await openai.chat.completions.create({ model: "workflow:echoes", messages, stream: true });
      const chunks: any[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.map((c) => c.choices[0].delta.content ?? null)).toEqual(["all of it", null]);
      expect(chunks.some((c) => c.output_text)).toBe(false);
    });

    it("sends nothing more for an empty output", async () => {
      await server.upload("empty", "def execute(ctx):\n    ctx.emit('working')\n    return ''\n");
      const stream = await openai.chat.completions.create({ model: "workflow:empty", messages, stream: true });
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      expect(text).toBe("working");
    });
  });

  describe("LangChain's ChatOpenAI", () => {
    const model = (name: string) =>
      new ChatOpenAI({ model: `workflow:${name}`, apiKey: server.apiKey, configuration: { baseURL }, maxRetries: 0 });

    for (const name of Object.keys(workflows)) {
      it(`invokes and streams '${name}'`, async () => {
        const invoked = await model(name).invoke("What is the capital of France?");
        expect(invoked.content).toBe(await nonStreamed(name));
        let text = "";
        for await (const chunk of await model(name).stream("What is the capital of France?")) text += chunk.content as string;
        expect(text).toBe(streamedText[name]);
        if (name === "quiet" || name === "quiet-json") expect(text).toBe(invoked.content);
      });
    }

    it("runs a failing workflow once when each call carries an Idempotency-Key, whatever its own retries", async () => {
      // ChatOpenAI retries a 500 through its own loop (not the SDK's), and ignores x-should-retry.
      await server.upload("fails", "def execute(ctx):\n    if ctx.input == 1:\n        return 1\n    raise ValueError('no')\n");
      const retrying = new ChatOpenAI({ model: "workflow:fails", apiKey: server.apiKey, configuration: { baseURL }, maxRetries: 2 });
      const err = await retrying
        .invoke("go", { options: { headers: { "Idempotency-Key": "lc-call-1" } } } as object)
        .catch((e: unknown) => e as Error);
      expect(String(err)).toContain("ValueError: no");
      const runs = await server.request("GET", "/v1/runs?workflow=fails");
      expect(runs.body.data).toHaveLength(1);
    });
  });

  describe("the AI SDK (streamText, generateText) with createOpenAICompatible", () => {
    const provider = () => createOpenAICompatible({ name: "shaker", baseURL, apiKey: server.apiKey });

    for (const name of Object.keys(workflows)) {
      it(`generates and streams '${name}'`, async () => {
        const generated = await generateText({
          model: provider()(`workflow:${name}`),
          prompt: "What is the capital of France?",
          maxRetries: 0,
        });
        expect(generated.text).toBe(await nonStreamed(name));
        const errors: unknown[] = [];
        const streamed = streamText({
          model: provider()(`workflow:${name}`),
          prompt: "What is the capital of France?",
          maxRetries: 0,
          onError: ({ error }) => {
            errors.push(error);
          },
        });
        let text = "";
        for await (const part of streamed.textStream) text += part;
        expect(errors).toEqual([]);
        expect(text).toBe(streamedText[name]);
        expect(await streamed.text).toBe(streamedText[name]);
        expect(await streamed.finishReason).toBe("stop");
        if (name === "quiet" || name === "quiet-json") expect(text).toBe(generated.text);
      });
    }
  });
});
