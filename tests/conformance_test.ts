/**
 * The conformance suite (tests/conformance/) under Deno, sanitizers on; the
 * same cases run on Node and Bun through `deno task test:runtimes`.
 *
 * @module
 */

import { cases } from "./conformance/_harness.ts";
import { hasOpenssl } from "./conformance/_support.ts";
import "./conformance/suite.ts";

const openssl = hasOpenssl();

for (const c of cases) {
  const ignore = c.needsOpenssl && !openssl;
  Deno.test({
    name: `conformance: ${c.name}${ignore ? " (ignored: no openssl)" : ""}`,
    ignore,
    fn: () => c.run(),
  });
}
