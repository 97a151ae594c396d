// The public surface as `deno doc` shows it: what users may call, and how.
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url);
const ENTRY_POINTS = ["mod.ts", "framing/mod.ts"];

async function docJson(): Promise<unknown> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", ...ENTRY_POINTS],
    cwd: ROOT,
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, stderr);
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

/** Every object in the JSON with the names of the symbols above it. */
function* walk(
  value: unknown,
  path: string[] = [],
): Generator<{ node: Record<string, unknown>; path: string[] }> {
  if (Array.isArray(value)) {
    for (const item of value) yield* walk(item, path);
    return;
  }
  if (value === null || typeof value !== "object") return;
  const node = value as Record<string, unknown>;
  yield { node, path };
  const here = typeof node.name === "string" ? [...path, node.name] : path;
  for (const [key, child] of Object.entries(node)) {
    if (key !== "name") yield* walk(child, here);
  }
}

let cached: Promise<unknown> | undefined;
const doc = () => cached ??= docJson();

Deno.test("deno doc: no parameter with a default value shows as required", async () => {
  // `(options: X = {})` is documented as an `assign` pattern whose left side
  // is `optional: false`: callers read it as required. Declare such a
  // parameter `options?: X` and default it inside.
  const found: string[] = [];
  let params = 0;
  for (const { node, path } of walk(await doc())) {
    if (!Array.isArray(node.params)) continue;
    for (const param of node.params as Record<string, unknown>[]) {
      params++;
      if (param.kind === "assign") {
        const left = param.left as Record<string, unknown> | undefined;
        const name = typeof left?.name === "string" ? left.name : "(pattern)";
        found.push(`${path.join(".")}(${name})`);
      }
    }
  }
  assert.ok(params > 100, `only ${params} parameters found: is the JSON read?`);
  assert.deepEqual(found, []);
});

Deno.test("deno doc: nothing documented is tagged @internal", async () => {
  const found: string[] = [];
  for (const { node, path } of walk(await doc())) {
    if (Array.isArray(node.tags)) {
      for (const tag of node.tags as Record<string, unknown>[]) {
        if (tag.kind === "internal") found.push(path.join("."));
      }
    }
    if (typeof node.doc === "string" && /@internal\b/.test(node.doc)) {
      found.push(path.join("."));
    }
  }
  assert.deepEqual(found, []);
});
