import type { Auth } from "./auth.js";
import type { Clients } from "./clients.js";
import type { Config } from "./config.js";

/** ServiceDeps is what the composition root hands every service factory. */
export interface ServiceDeps {
  config: Config;
  /** auth identifies callers (API keys checked through the Registry) and mints run tokens. */
  auth: Auth;
  /** clients reach the other services; never their modules or tables. */
  clients: Clients;
  /** dbFile is this service's SQLite file under the data directory (":memory:" in unit tests). */
  dbFile: string;
}
