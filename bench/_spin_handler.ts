/**
 * The handler `bench/scale.ts` serves from workers: a server-bound load,
 * the CPU time per request that the request's first 4 bytes give in µs
 * (big-endian), then the payload back.
 *
 * @module
 */

/** Spins as long as the payload asks, then echoes. */
export function handler(payload: Uint8Array): Uint8Array {
  const us = new DataView(payload.buffer, payload.byteOffset).getUint32(0);
  const end = performance.now() + us / 1000;
  while (performance.now() < end) {
    // The work a real handler would do.
  }
  return payload;
}
