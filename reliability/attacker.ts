// deno-lint-ignore-file no-console -- a command-line program prints its results
/**
 * Runs one attack of `attacks.ts` on a server: `deno run -A
 * reliability/attacker.ts NAME PORT`. Prints `attacking` once its
 * connections are open; on SIGTERM it stops, prints `notes [json]` (what it
 * saw) and exits.
 *
 * @module
 */

import { SERVER_ATTACKS, whenAttacking } from "./attacks.ts";

const [name, port] = Deno.args;
const attack = SERVER_ATTACKS[name ?? ""];
if (attack === undefined || port === undefined) {
  throw new TypeError(
    `Usage: attacker.ts NAME PORT, NAME one of ${
      Object.keys(SERVER_ATTACKS).join(", ")
    }`,
  );
}
const stop = new AbortController();
const onTerm = () => stop.abort();
Deno.addSignalListener("SIGTERM", onTerm);
whenAttacking(() => console.log("attacking"));
const notes = await attack[1](Number(port), stop.signal);
console.log(`notes ${JSON.stringify(notes)}`);
Deno.removeSignalListener("SIGTERM", onTerm);
