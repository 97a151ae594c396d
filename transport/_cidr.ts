/**
 * Address ranges (CIDR) for the peers a server trusts, IPv4 and IPv6.
 *
 * @module
 */

/** Tells whether a peer's IP address is in one of a set of ranges. */
export type AddressMatcher = (hostname: string) => boolean;

interface Range {
  bytes: Uint8Array;
  bits: number;
}

/**
 * Compiles addresses and CIDR ranges (`"10.0.0.0/8"`, `"127.0.0.1"`,
 * `"fd00::/8"`, `"::1"`) into a matcher. An IPv4-mapped IPv6 peer
 * (`::ffff:10.1.2.3`) matches IPv4 ranges.
 *
 * @throws {TypeError} An entry that is not an address or range.
 */
export function addressMatcher(entries: readonly string[]): AddressMatcher {
  const ranges = entries.map((entry) => {
    const [address, bits, extra] = entry.split("/");
    const bytes = ipBytes(address ?? "");
    const width = bytes === undefined ? 0 : bytes.length * 8;
    const prefix = bits === undefined ? width : Number(bits);
    if (
      bytes === undefined || extra !== undefined ||
      !Number.isInteger(prefix) || prefix < 0 || prefix > width ||
      (bits !== undefined && !/^\d+$/.test(bits))
    ) {
      throw new TypeError(
        `Cannot use trusted proxy ${
          JSON.stringify(entry)
        }: expected an IP address or CIDR range`,
      );
    }
    return { bytes, bits: prefix };
  });
  return (hostname) => {
    const bytes = unmapped(ipBytes(hostname));
    return bytes !== undefined && ranges.some((range) => inRange(bytes, range));
  };
}

function inRange(bytes: Uint8Array, range: Range): boolean {
  if (bytes.length !== range.bytes.length) return false;
  let bits = range.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i]! & mask) !== (range.bytes[i]! & mask)) return false;
  }
  return true;
}

/** An IPv4-mapped IPv6 address as its IPv4 bytes. */
function unmapped(bytes: Uint8Array | undefined): Uint8Array | undefined {
  if (bytes === undefined || bytes.length !== 16) return bytes;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return bytes;
  return bytes[10] === 0xff && bytes[11] === 0xff ? bytes.slice(12) : bytes;
}

/** The bytes of a dotted IPv4 or an IPv6 address, or undefined. */
function ipBytes(text: string): Uint8Array | undefined {
  if (text.startsWith("[") && text.endsWith("]")) text = text.slice(1, -1);
  return text.includes(":") ? ipv6(text) : ipv4(text);
}

function ipv4(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!;
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return undefined;
    bytes[i] = Number(part);
  }
  return bytes;
}

function ipv6(text: string): Uint8Array | undefined {
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const words = (half: string): number[] | undefined => {
    if (half === "") return [];
    const out: number[] = [];
    const groups = half.split(":");
    for (let i = 0; i < groups.length; i++) {
      const group = groups[i]!;
      if (i === groups.length - 1 && group.includes(".")) {
        const v4 = ipv4(group);
        if (v4 === undefined) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(group)) {
        out.push(parseInt(group, 16));
      } else return undefined;
    }
    return out;
  };
  const head = words(halves[0]!);
  const tail = halves.length === 2 ? words(halves[1]!) : [];
  if (head === undefined || tail === undefined) return undefined;
  const gap = 8 - head.length - tail.length;
  if (halves.length === 2 ? gap < 1 : gap !== 0) return undefined;
  const all = [...head, ...new Array(gap).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((word, i) => {
    bytes[2 * i] = word >> 8;
    bytes[2 * i + 1] = word & 0xff;
  });
  return bytes;
}
