import { CliError, call, parse, printJson, serverOf, table } from "./http.js";
import type { CliIo } from "./io.js";

export const clusterUsage = `usage: shaker cluster [--json]
  Lists the nodes of the Shaker at SHAKER_URL (an admin account's key): each process, the services
  it runs, its URL, its last heartbeat, and its executor's runs in flight and capacity.`;

/** NodeJson is one node as GET /v1/cluster lists it. */
interface NodeJson {
  id: string;
  services: string[];
  url: string;
  capacity: number;
  runs_in_flight: number;
  last_heartbeat: string;
  live: boolean;
}

/** ago shows how long ago an RFC 3339 time was, for people. */
function ago(ts: unknown, now: number): string {
  if (typeof ts !== "string" || !ts) return "-";
  const s = Math.max(0, Math.round((now - Date.parse(ts)) / 1000));
  return `${s}s ago`;
}

/** runCluster lists the cluster's nodes. */
export async function runCluster(argv: string[], io: CliIo): Promise<void> {
  const { values, positionals } = parse(argv, { json: { type: "boolean" } }, clusterUsage);
  if (positionals.length > 0) throw new CliError(`shaker cluster takes no arguments\n${clusterUsage}`, 2);
  const resp = await call<{ data: NodeJson[]; dead_after_seconds: number }>(serverOf(values, io.env), "GET", "/v1/cluster");
  if (values.json) return printJson(io, resp);
  const now = Date.now();
  io.stdout(
    table(
      ["NODE", "STATE", "SERVICES", "URL", "HEARTBEAT", "RUNS"],
      resp.data.map((n) => [
        n.id,
        n.live ? "live" : "dead",
        n.services.join(","),
        n.url,
        ago(n.last_heartbeat, now),
        n.capacity > 0 ? `${n.runs_in_flight}/${n.capacity}` : "-",
      ]),
    ),
  );
  io.stdout(`(a node silent for ${resp.dead_after_seconds}s is dead)\n`);
}
