/**
 * CliIo is everything of its process a `shaker` command touches: where it writes, the environment it
 * reads, and the exit code it ends with. bin/shaker.js passes the real process's (processIo); tests
 * pass their own and run the command in process.
 */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  env: NodeJS.ProcessEnv;
  /** stderrIsTTY says stderr is a terminal: progress bars are drawn only there (unless forced). */
  stderrIsTTY: boolean;
  /** exitCode is how the command ended; main sets it (0, 1 for a failure, 2 for a usage mistake). */
  exitCode: number;
  /** signal, when given, stops `shaker serve` as SIGINT or SIGTERM do. */
  signal?: AbortSignal;
}

/** processIo is the CliIo of this process: its stdout, stderr and environment. */
export function processIo(): CliIo {
  return {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    env: process.env,
    stderrIsTTY: process.stderr.isTTY === true,
    exitCode: 0,
  };
}
