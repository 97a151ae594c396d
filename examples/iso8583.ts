// deno-lint-ignore-file no-console -- an example program prints what it does
/**
 * An ISO 8583-style link: `deno run --allow-net examples/iso8583.ts`.
 *
 * A toy "card switch" (server) and an acquirer (client) in one process,
 * talking the way payment hosts do: a 2-byte binary length header, messages
 * correlated by STAN (system trace audit number), a sign-on (0800, code 001)
 * before the session takes traffic, echo tests (0800, code 301) as
 * heartbeat, and a network message pushed by the host that the client's
 * handler answers (0810). The message body is simplified to
 * `MTI|STAN|field…` text so the example stays readable; a real one would
 * plug an ISO 8583 packer into `encode`/`decode`.
 *
 * @module
 */

import { dial, serve, type Session } from "../mod.ts";
import { lengthPrefixed } from "../framing/mod.ts";

/** A decoded message: MTI, STAN and the other fields. */
interface IsoMessage {
  mti: string;
  stan: string;
  fields: string[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const toBytes = (m: IsoMessage) =>
  encoder.encode([m.mti, m.stan, ...m.fields].join("|"));
const fromBytes = (bytes: Uint8Array): IsoMessage => {
  const [mti = "", stan = "", ...fields] = decoder.decode(bytes).split("|");
  return { mti, stan, fields };
};

// The framing: 2-byte big-endian length header. Correlation: the STAN.
const frames = lengthPrefixed({ headerBytes: 2 });
const codec = {
  decoder() {
    const inner = frames.decoder();
    return {
      decode: (chunk: Uint8Array) => inner.decode(chunk).map(fromBytes),
      end: () => inner.end?.(),
    };
  },
  encode: (message: IsoMessage) => frames.encode(toBytes(message)),
  correlationId: (message: IsoMessage) => message.stan,
};

let stan = 0;
const nextStan = () => String(++stan % 1_000_000).padStart(6, "0");

// --- the "switch" ---------------------------------------------------------
const signedOn = new WeakSet<Session<IsoMessage>>();
await using host = serve({
  hostname: "127.0.0.1",
  port: 0,
  codec,
  handler: (message, { session }) => {
    if (message.mti === "0800") {
      if (message.fields[0] === "001") signedOn.add(session);
      return { mti: "0810", stan: message.stan, fields: ["00"] };
    }
    if (message.mti === "0810") return; // answer to our network message
    if (!signedOn.has(session)) {
      return { mti: "0210", stan: message.stan, fields: ["91"] }; // not signed on
    }
    // 0200 purchase: approve amounts under 1000.
    const amount = Number(message.fields[0]);
    return {
      mti: "0210",
      stan: message.stan,
      fields: [amount < 1000 ? "00" : "51", `auth=${message.stan.slice(-4)}`],
    };
  },
});

// --- the acquirer ------------------------------------------------------------
let networkMessages = 0;
const cutover = Promise.withResolvers<void>();
await using link = await dial(
  { hostname: "127.0.0.1", port: host.port },
  codec,
  {
    sessions: 2,
    // Sign on before the session takes traffic.
    onConnect: async (session) => {
      const reply = await session.request({
        mti: "0800",
        stan: nextStan(),
        fields: ["001"],
      });
      if (reply.fields[0] !== "00") throw new Error("sign-on refused");
    },
    // Echo test after 15 s of silence: a request like any other.
    heartbeat: {
      interval: 30_000,
      message: () => ({ mti: "0800", stan: nextStan(), fields: ["301"] }),
    },
    // Network messages pushed by the host: answer them.
    handler: (message) => {
      console.log("host says", message.mti, message.fields.join(" "));
      if (++networkMessages === 2) cutover.resolve();
      return { mti: "0810", stan: message.stan, fields: ["00"] };
    },
  },
);

for (const amount of [250, 4200]) {
  const reply = await link.request({
    mti: "0200",
    stan: nextStan(),
    fields: [String(amount)],
  });
  console.log(`purchase ${amount}: response code ${reply.fields[0]}`);
}

// The host pushes a network management message (cutover) to every session.
const sessions = host.broadcast({
  mti: "0800",
  stan: "900001",
  fields: ["201"],
});
console.log(`cutover pushed to ${sessions} sessions`);
await cutover.promise; // both sessions answered
console.log("stats", JSON.stringify(link.stats()));
