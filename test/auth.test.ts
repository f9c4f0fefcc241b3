// Run tokens at the unit level: expired, edited, re-signed elsewhere or malformed tokens never verify,
// and identify() answers every one of them with Unauthenticated. The end-to-end half (tokens sent to
// the real services by a workflow's child) is test/reliability/isolation.test.ts.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createAuth, type RunClaims } from "../services/shared/auth.js";

const claims = (exp: number): RunClaims => ({
  account: "acc_a",
  workflow: "wf",
  version: "1.0.0",
  versionId: "ver_1",
  run: "run_1",
  session: "sess_1",
  datastores: [{ name: "kb", write: false }],
  depth: 0,
  exp,
});

const auth = createAuth({ serviceSecret: "secret-one", authenticateKey: async () => undefined });
const other = createAuth({ serviceSecret: "secret-two", authenticateKey: async () => undefined });

async function refused(token: string): Promise<void> {
  expect(auth.verifyRunToken(token)).toBeUndefined();
  const err = await auth.identify(new Headers({ authorization: `Bearer ${token}` })).then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  expect(err?.code, token).toBe(Code.Unauthenticated);
}

function edit(token: string, change: (c: RunClaims) => void): string {
  const [payload, signature] = token.slice("srt.".length).split(".");
  const c = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as RunClaims;
  change(c);
  return `srt.${Buffer.from(JSON.stringify(c)).toString("base64url")}.${signature}`;
}

describe("run tokens", () => {
  it("verifies a fresh token of its own secret, through identify too", async () => {
    const token = auth.mintRunToken(claims(Date.now() + 60_000));
    expect(auth.verifyRunToken(token)?.run).toBe("run_1");
    const identity = await auth.identify(new Headers({ authorization: `Bearer ${token}` }));
    expect(identity).toMatchObject({ kind: "run", accountId: "acc_a" });
  });

  it("refuses an expired token, even by a millisecond", async () => {
    await refused(auth.mintRunToken(claims(Date.now() - 1)));
    await refused(auth.mintRunToken(claims(0)));
  });

  it("refuses a token whose payload was edited and its signature reused", async () => {
    const token = auth.mintRunToken(claims(Date.now() + 60_000));
    await refused(edit(token, (c) => (c.exp = Date.now() + 3_600_000)));
    await refused(edit(token, (c) => (c.exp = Date.now() - 1)));
    await refused(edit(token, (c) => (c.account = "acc_b")));
    await refused(edit(token, (c) => (c.datastores = [{ name: "kb", write: true }])));
    await refused(edit(token, (c) => (c.depth = -100)));
  });

  it("refuses another secret's token, random signatures and malformed tokens", async () => {
    const token = auth.mintRunToken(claims(Date.now() + 60_000));
    const [payload, signature] = token.slice(4).split(".");
    await refused(other.mintRunToken(claims(Date.now() + 60_000)));
    await refused(`srt.${payload}.${Buffer.alloc(32, 7).toString("base64url")}`);
    await refused(`srt.${payload}.${signature.slice(0, -2)}`);
    await refused(`srt.${payload}.`);
    await refused(`srt.${payload}`);
    await refused(`srt..${signature}`);
    await refused(`srt.${payload}.${signature}.extra`);
    await refused("srt.");
    // Signed correctly but with a non-numeric expiry: still refused.
    const noExp = auth.mintRunToken({ ...claims(0), exp: "9999999999999" as unknown as number });
    await refused(noExp);
  });

  it("refuses a valid token once its run has ended, where the server knows which runs are live", async () => {
    const live = new Set(["run_1"]);
    const tracked = createAuth({ serviceSecret: "secret-one", authenticateKey: async () => undefined, runIsLive: (id) => live.has(id) });
    const token = tracked.mintRunToken(claims(Date.now() + 60_000));
    const identify = () =>
      tracked.identify(new Headers({ authorization: `Bearer ${token}` })).then(
        (i) => i.kind,
        (e: unknown) => ConnectError.from(e),
      );
    expect(await identify()).toBe("run");
    live.delete("run_1");
    const err = await identify();
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unauthenticated);
    expect((err as ConnectError).rawMessage).toBe("the run this token was given to has ended");
  });
  it("takes a run's token without asking whether the run is live when its Executor vouches for it, and only then", async () => {
    const asked: string[] = [];
    const tracked = createAuth({
      serviceSecret: "secret-one",
      authenticateKey: async () => undefined,
      runIsLive: (id) => {
        asked.push(id);
        return false;
      },
    });
    const token = tracked.mintRunToken(claims(Date.now() + 60_000));
    const identify = (h: Record<string, string>) =>
      tracked.identify(new Headers({ authorization: `Bearer ${token}`, ...h })).then(
        (i) => i,
        (e: unknown) => ConnectError.from(e),
      );
    // Vouched: the run, its claims, and no question asked.
    const vouched = await identify(tracked.vouchFor(claims(0)));
    expect(vouched).toMatchObject({ kind: "run", accountId: "acc_a", claims: { run: "run_1" } });
    expect(asked).toEqual([]);
    // A voucher naming another run, a voucher without the service credential, or with another
    // secret's, or a vouched token that is not valid: none is taken.
    const refusal = (x: unknown) => (x instanceof ConnectError ? x.code : (x as { kind: string }).kind);
    expect(refusal(await identify({ ...tracked.vouchFor(claims(0)), "x-shaker-live-run": "run_2" }))).toBe(Code.Unauthenticated);
    expect(refusal(await identify({ "x-shaker-live-run": "run_1" }))).toBe(Code.Unauthenticated);
    expect(asked).toEqual(["run_1"]);
    expect(refusal(await identify(other.vouchFor(claims(0))))).toBe(Code.Unauthenticated);
    const expired = tracked.mintRunToken(claims(Date.now() - 1));
    const stale = await tracked
      .identify(new Headers({ authorization: `Bearer ${expired}`, ...tracked.vouchFor(claims(0)) }))
      .catch((e: unknown) => ConnectError.from(e));
    expect(refusal(stale)).toBe(Code.Unauthenticated);
    // The service credential alone is still a service's call.
    expect(await identify({ "x-shaker-service-token": "secret-one" })).toMatchObject({ kind: "service" });
  });
  it("looks an API key up once for the requests that miss its cached owner together, and again once that look-up is over", async () => {
    let lookups = 0;
    const keyed = createAuth({
      serviceSecret: "secret-one",
      keyCacheMs: 0,
      authenticateKey: async (key) => {
        lookups++;
        await new Promise((r) => setTimeout(r, 20));
        return key === "sk-good" ? { accountId: "acc_a", admin: false, keyId: "key_1" } : undefined;
      },
    });
    const identify = (key: string) =>
      keyed.identify(new Headers({ authorization: `Bearer ${key}` })).then(
        (i) => i.accountId,
        (e: unknown) => ConnectError.from(e).code,
      );
    expect(await Promise.all(Array.from({ length: 10 }, () => identify("sk-good")))).toEqual(Array(10).fill("acc_a"));
    expect(lookups).toBe(1);
    expect(await Promise.all([identify("sk-bad"), identify("sk-bad")])).toEqual([Code.Unauthenticated, Code.Unauthenticated]);
    expect(lookups).toBe(2);
    expect(await identify("sk-good")).toBe("acc_a");
    expect(lookups).toBe(3);
  });
});
