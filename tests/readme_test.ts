/**
 * Every TypeScript block of the README type-checks. Blocks without `ignore`
 * also run as doc tests (`deno test --doc`); `ignore` marks blocks that need
 * a remote host, a fixed port or systemd, so this is their only check. The
 * names such a block leaves to the reader (certificates, the application's
 * own message functions) are declared here, per block.
 */

import assert from "node:assert/strict";
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url);

interface Block {
  line: number;
  info: string;
  code: string;
}

/** The fenced ```ts blocks of a Markdown text, with their info strings. */
function tsBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(ts|typescript)\b(.*)$/.exec(lines[i]!);
    if (open === null) continue;
    const start = i;
    const body: string[] = [];
    while (++i < lines.length && lines[i] !== "```") body.push(lines[i]!);
    blocks.push({
      line: start + 1,
      info: open[2]!.trim(),
      code: body.join("\n"),
    });
  }
  return blocks;
}

/**
 * What the reader supplies in each block, keyed by a line of the block.
 * A block that needs a name not declared here fails the check.
 */
const SUPPLIED: Record<string, string> = {
  "lengthPrefixed({ headerBytes: 2 })": `
    import type { Session as IsoSession } from "@tcpbutler/core";
    interface IsoMessage { mti: string; stan: string; responseCode?: string }
    declare const caPem: string, clientCertPem: string, clientKeyPem: string;
    declare function pack(message: IsoMessage): Uint8Array;
    declare function unpack(bytes: Uint8Array): IsoMessage;
    declare function nextStan(): string;
    declare function signOn(stan: string): IsoMessage;
    declare function echoTest(stan: string): IsoMessage;
    declare function purchase(stan: string, amount: number): IsoMessage;
    declare function answerNetworkMessage(message: IsoMessage): IsoMessage | undefined;
    export type { IsoSession };
  `,
  'dial("127.0.0.1:6379", resp()': `declare const password: string;`,
  'await dial("switch.example:5443", codec, {': `
    import type { Codec, Handler } from "@tcpbutler/core";
    declare const codec: Codec<Uint8Array>;
    declare const caPem: string, clientCertPem: string, clientKeyPem: string;
    declare const serverCertPem: string, serverKeyPem: string;
    declare const cert: string, key: string, clientCaPem: string;
    declare const handler: Handler<Uint8Array>;
  `,
  "muxListener(Deno.listen({ port: 9000 }))": `
    import type { Handler } from "@tcpbutler/core";
    declare const onRequest: Handler<Uint8Array>;
    declare const onLine: Handler<Uint8Array>;
  `,
  "consoleLogger({ level:": `declare const target: string;`,
};

function suppliedFor(code: string): string {
  let prelude = "";
  for (const [marker, declarations] of Object.entries(SUPPLIED)) {
    if (code.includes(marker)) prelude += declarations + "\n";
  }
  return prelude;
}

Deno.test("README: every ts block type-checks (ignore blocks included)", async () => {
  const markdown = await Deno.readTextFile(new URL("README.md", ROOT));
  const blocks = tsBlocks(markdown);
  assert.ok(blocks.some((block) => block.info.includes("ignore")));
  // Inside the project, so "@tcpbutler/core" and the import map resolve.
  const dir = await Deno.makeTempDir({
    dir: new URL("tests", ROOT).pathname,
    prefix: ".readme_",
  });
  try {
    const files: string[] = [];
    for (const block of blocks) {
      const file = join(dir, `readme_line_${block.line}.ts`);
      // A module of its own: top-level await and no name clashes.
      await Deno.writeTextFile(
        file,
        `${suppliedFor(block.code)}\n${block.code}\nexport {};\n`,
      );
      files.push(file);
    }
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", ...files],
      cwd: ROOT,
      stdin: "null",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
