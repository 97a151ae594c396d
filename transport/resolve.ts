/**
 * Name resolution for client discovery: the addresses a host name stands
 * for, through the system resolver (`getaddrinfo` via `node:dns`), so
 * `/etc/hosts`, `localhost` and search domains work as for any other
 * program on the host. `Deno.resolveDns` asks a nameserver directly and
 * would skip all three.
 *
 * @module
 */

import { lookup } from "node:dns/promises";

/** Address families to resolve: 4 (A), 6 (AAAA) or 0 (both). */
export type AddressFamily = 0 | 4 | 6;

/**
 * Resolves `hostname` to every address the system resolver gives.
 *
 * @param hostname The name to resolve.
 * @param family 4, 6 or 0 for both.
 * @returns The addresses, deduplicated, in the resolver's order.
 * @throws {Error} The name does not resolve (`ENOTFOUND` and the like).
 */
export async function resolveHost(
  hostname: string,
  family: AddressFamily,
): Promise<string[]> {
  const found = await lookup(hostname, { all: true, family });
  return [...new Set(found.map((entry) => entry.address))];
}
