import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { refNameOf } from "../cli/upload.js";
import { ExecutionMode, UploadWorkflowRequestSchema, VersionBump } from "../gen/shaker/registry/v1/registry_pb.js";
import {
  checkAccountName,
  checkPage,
  checkUpload,
  executionModes,
  normaliseAccessoryKey,
  parseVersion,
  registryLimits,
  scriptSizeError,
  versionBumps,
  workflowPages,
} from "../services/registry/rules.js";
import { errorMetadata } from "../services/shared/errors.js";
import { toValue } from "../services/shared/json.js";
import { nameMaxLength, namePattern } from "../services/shared/names.js";

const maxTimeout = 600;

/** UploadInit is the fields of an upload request, each optional. */
type UploadInit = Exclude<MessageInitShape<typeof UploadWorkflowRequestSchema>, { $typeName: string }>;

function upload(init: UploadInit = {}) {
  return create(UploadWorkflowRequestSchema, { workflowRefName: "hello", script: "def execute(ctx):\n    return 1\n", ...init });
}

/** refusal runs fn and returns the ConnectError it throws, with the field it names. */
function refusal(fn: () => unknown): { code: Code; message: string; param: string | null; limit: string | null } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConnectError);
    const ce = e as ConnectError;
    return {
      code: ce.code,
      message: ce.rawMessage,
      param: ce.metadata.get(errorMetadata.param),
      limit: ce.metadata.get(errorMetadata.limit),
    };
  }
  throw new Error("expected a refusal, got none");
}

describe("names", () => {
  it("allows lower-case letters, digits, '-' and '_', starting with a letter or digit, up to 64 characters", () => {
    for (const ok of ["a", "hello", "my-flow_2", "0abc", "a".repeat(nameMaxLength)]) expect(namePattern.test(ok), ok).toBe(true);
    for (const bad of ["", "Bad", "bad name", "-x", "_x", "a.b", "a/b", "a".repeat(nameMaxLength + 1), "é"]) {
      expect(namePattern.test(bad), bad).toBe(false);
    }
  });

  it("is quoted in refusals as the pattern the protos document", () => {
    expect(namePattern.source).toBe("^[a-z0-9][a-z0-9_-]{0,63}$");
  });

  it("the CLI derives a valid name from any file name", () => {
    for (const file of ["My Flow.py", "--x.py", "ÄÖÜ.py", `${"x".repeat(200)}.py`, "a.b.c.py", "dir/Hello World!.py"]) {
      expect(refNameOf(file), file).toMatch(namePattern);
    }
    expect(refNameOf("My Flow.py")).toBe("my-flow");
  });

  it("the upstream-status key is the one the edge reads", () => {
    expect(errorMetadata.upstreamStatus).toBe("shaker-upstream-status");
  });
});

describe("checkUpload", () => {
  it("accepts a valid upload and returns its accessories as the store keeps them", () => {
    const accessories = checkUpload(
      upload({
        timeoutSeconds: maxTimeout,
        env: { API_URL: "https://example.com", _x: "" },
        accessories: [
          { key: " Prices ", content: toValue({ a: [1, 2] }) },
          { key: "faq", content: toValue("text") },
        ],
        datastores: [{ name: "docs", write: true }],
      }),
      maxTimeout,
    );
    expect(accessories).toEqual([
      { key: "Prices", content: '{"a":[1,2]}' },
      { key: "faq", content: '"text"' },
    ]);
    expect(checkUpload(upload(), maxTimeout)).toEqual([]);
  });

  it.each([
    [
      "a bad reference name",
      { workflowRefName: "Bad Name" },
      "workflow_ref_name",
      "workflow_ref_name must match ^[a-z0-9][a-z0-9_-]{0,63}$",
    ],
    ["an empty reference name", { workflowRefName: "" }, "workflow_ref_name", "workflow_ref_name must match ^[a-z0-9][a-z0-9_-]{0,63}$"],
    ["a blank script", { script: " \n\t" }, "script", "script is required"],
    ["a negative timeout", { timeoutSeconds: -1 }, "timeout_seconds", `timeout_seconds must be between 1 and ${maxTimeout}`],
    [
      "a timeout over the limit",
      { timeoutSeconds: maxTimeout + 1 },
      "timeout_seconds",
      `timeout_seconds must be between 1 and ${maxTimeout}`,
    ],
    ["an env name with '='", { env: { "A=B": "1" } }, "env.A=B", "env name 'A=B' must match ^[A-Za-z_][A-Za-z0-9_]*$"],
    ["an env name starting with a digit", { env: { "1X": "1" } }, "env.1X", "env name '1X' must match ^[A-Za-z_][A-Za-z0-9_]*$"],
    ["an env value with NUL", { env: { X: "a\0b" } }, "env.X", "env.X must not contain NUL characters"],
    [
      "too many env entries",
      { env: Object.fromEntries(Array.from({ length: registryLimits.envEntries + 1 }, (_, i) => [`V${i}`, ""])) },
      "env",
      `env has more than ${registryLimits.envEntries} entries`,
    ],
    [
      "a blank accessory key",
      { accessories: [{ key: "  ", content: toValue(1) }] },
      "accessories[0].key",
      "accessories[0].key is required",
    ],
    [
      "an accessory key over 256 characters",
      { accessories: [{ key: "k".repeat(257), content: toValue(1) }] },
      "accessories[0].key",
      "accessories[0].key is longer than 256 characters",
    ],
    [
      "two accessory keys that are the same key",
      {
        accessories: [
          { key: "My-Key", content: toValue(1) },
          { key: "my_key", content: toValue(2) },
        ],
      },
      "accessories[1].key",
      "accessories[1].key 'my_key' is the same key as 'My-Key' (keys are case-insensitive, '-' and '_' alike)",
    ],
    ["an accessory without content", { accessories: [{ key: "k" }] }, "accessories[0].content", "accessories[0].content is required"],
    [
      "too many accessories",
      { accessories: Array.from({ length: registryLimits.accessoriesPerWorkflow + 1 }, (_, i) => ({ key: `k${i}`, content: toValue(i) })) },
      "accessories",
      `a workflow may have at most ${registryLimits.accessoriesPerWorkflow} accessories, got ${registryLimits.accessoriesPerWorkflow + 1}`,
    ],
    [
      "a bad datastore name",
      { datastores: [{ name: "ok" }, { name: "Not OK" }] },
      "datastores[1].name",
      "datastores[1].name must match ^[a-z0-9][a-z0-9_-]{0,63}$",
    ],
  ] as const)("refuses %s, naming the field", (_what, init, param, message) => {
    expect(refusal(() => checkUpload(upload(init as UploadInit), maxTimeout))).toEqual({
      code: Code.InvalidArgument,
      message,
      param,
      limit: null,
    });
  });

  it("checks the fields in order: the first field at fault is the one named", () => {
    const r = refusal(() => checkUpload(upload({ workflowRefName: "Bad", script: "", env: { "=": "" } }), maxTimeout));
    expect(r.param).toBe("workflow_ref_name");
  });

  it("refuses an accessory larger than the limit as a size limit (413), naming it", () => {
    const big = "x".repeat(registryLimits.accessoryBytes);
    const r = refusal(() => checkUpload(upload({ accessories: [{ key: "big", content: toValue(big) }] }), maxTimeout));
    expect(r).toEqual({
      code: Code.ResourceExhausted,
      message: `accessories[0] ('big') is ${registryLimits.accessoryBytes + 2} bytes of JSON; the limit is ${registryLimits.accessoryBytes} bytes (50 MiB) per accessory`,
      param: "accessories[0]",
      limit: "size",
    });
  });
});

describe("the other Registry rules", () => {
  it("checkAccountName refuses what is not a name, naming account_name", () => {
    expect(() => checkAccountName("team-a")).not.toThrow();
    expect(refusal(() => checkAccountName("Not Valid"))).toEqual({
      code: Code.InvalidArgument,
      message: "account name 'Not Valid' must match ^[a-z0-9][a-z0-9_-]{0,63}$ (lower-case letters, digits, '-' and '_')",
      param: "account_name",
      limit: null,
    });
  });

  it("checkPage bounds offset and limit; 0 is the default limit", () => {
    expect(() => checkPage(0, 0)).not.toThrow();
    expect(() => checkPage(5, workflowPages.maxLimit)).not.toThrow();
    expect(refusal(() => checkPage(-1, 0))).toMatchObject({ message: "offset must be 0 or more", param: "offset" });
    expect(refusal(() => checkPage(0, workflowPages.maxLimit + 1))).toMatchObject({
      message: "limit must be between 1 and 100",
      param: "limit",
    });
    expect(refusal(() => checkPage(0, -1))).toMatchObject({ param: "limit" });
    expect(workflowPages.defaultLimit).toBeLessThanOrEqual(workflowPages.maxLimit);
  });

  it("scriptSizeError refuses a script over the limit in bytes, not characters", () => {
    expect(scriptSizeError("x".repeat(registryLimits.scriptBytes))).toBeUndefined();
    expect(scriptSizeError("x".repeat(registryLimits.scriptBytes + 1))).toMatchObject({
      line: 0,
      column: 0,
      message: "script is larger than 1048576 bytes",
    });
    expect(scriptSizeError("é".repeat(registryLimits.scriptBytes / 2 + 1))).toBeDefined();
  });

  it("parseVersion reads major.minor.patch of up to nine digits each", () => {
    expect(parseVersion("1.2.3")).toEqual([1, 2, 3]);
    expect(parseVersion("0.0.0")).toEqual([0, 0, 0]);
    for (const bad of ["", "1.2", "1.2.3.4", "v1.2.3", "1.2.x", "1234567890.0.0", " 1.2.3"]) expect(parseVersion(bad), bad).toBeUndefined();
  });

  it("normaliseAccessoryKey makes keys case-insensitive, '-' and '_' alike", () => {
    expect(normaliseAccessoryKey(" My-Key ")).toBe("my_key");
    expect(normaliseAccessoryKey("MY_KEY")).toBe(normaliseAccessoryKey("my-key"));
  });

  it("names every execution mode and version bump but the unspecified one", () => {
    expect(Object.keys(executionModes)).toEqual(["sync", "stream", "async"]);
    expect(Object.keys(versionBumps)).toEqual(["major", "minor", "patch"]);
    const modes = Object.values(ExecutionMode).filter((v) => typeof v === "number" && v !== ExecutionMode.UNSPECIFIED);
    const bumps = Object.values(VersionBump).filter((v) => typeof v === "number" && v !== VersionBump.UNSPECIFIED);
    expect(new Set(Object.values(executionModes))).toEqual(new Set(modes));
    expect(new Set(Object.values(versionBumps))).toEqual(new Set(bumps));
  });
});
