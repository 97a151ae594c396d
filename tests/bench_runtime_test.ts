/**
 * `deno task bench --runtime node`: tcpbutler's bench processes start on
 * Node (bundled) and a tiny run completes with its ratios. No timing is
 * asserted; the machine's speed is not under test.
 */

import assert from "node:assert/strict";
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url);

async function hasNode(): Promise<boolean> {
  try {
    const out = await new Deno.Command("node", { args: ["--version"] })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

interface Result {
  median: { reqPerSec: number; errors: number };
  ratioToRaw: number | null;
  ratioToNet?: number | null;
}

Deno.test({
  name:
    "bench/run.ts --runtime node completes a tiny run with tcpbutler on Node, with ratios to raw Deno and to Node net",
  ignore: !await hasNode(),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tcpbutler-bench-test-" });
    try {
      const output = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "bench/run.ts",
          "--runtime",
          "node",
          "--quick",
          "--filter",
          "64B 1inf",
          "--duration",
          "200",
          "--warmup",
          "50",
          "--no-idle",
          "--impls",
          "raw,node,tcpbutler",
          "--out",
          join(dir, "smoke"),
        ],
        cwd: ROOT,
        stdin: "null",
      }).output();
      const decoder = new TextDecoder();
      assert.equal(
        output.code,
        0,
        decoder.decode(output.stdout) + decoder.decode(output.stderr),
      );
      const report = JSON.parse(
        await Deno.readTextFile(join(dir, "smoke.json")),
      );
      assert.equal(report.settings.runtime, "node");
      assert.equal(report.scenarios.length, 1);
      const results: Record<string, Result> = report.scenarios[0].results;
      for (const name of ["raw", "node", "tcpbutler"]) {
        const r = results[name];
        assert.ok(r, `${name} has no result`);
        assert.ok(r.median.reqPerSec > 0, `${name} answered nothing`);
        assert.equal(r.median.errors, 0, `${name} had errors`);
        assert.equal(typeof r.ratioToRaw, "number");
        assert.equal(typeof r.ratioToNet, "number");
      }
      assert.equal(results.node!.ratioToNet, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
