/**
 * A hand-written SVG bar chart of a benchmark report (no dependencies): one
 * row of bars per scenario, tcpbutler beside each baseline; req/s on the
 * left, p99 latency on the right, the idle memory per connection below.
 *
 * Run alone to redraw from a JSON report:
 * `deno run -A bench/chart.ts bench/results/latest.json` (writes the `.svg`
 * beside it).
 *
 * @module
 */

import type { Report } from "./run.ts";

const COLORS: Record<string, string> = {
  raw: "#4c78a8",
  "raw-promise": "#9ecae9",
  node: "#72b7b2",
  "node-cork": "#54a24b",
  tcpbutler: "#e45756",
  "tcpbutler-plain": "#f58518",
  "tcpbutler-srv": "#b279a2",
  "tcpbutler-cli": "#9d755d",
};
const ORDER = [
  "raw",
  "raw-promise",
  "node",
  "node-cork",
  "tcpbutler",
  "tcpbutler-plain",
  "tcpbutler-srv",
  "tcpbutler-cli",
];

function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(
    />/g,
    "&gt;",
  );
}

function compact(x: number): string {
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(x >= 1e5 ? 0 : 1)}k`;
  return x.toFixed(0);
}

function us(x: number): string {
  return x >= 1000
    ? `${(x / 1000).toFixed(x >= 10_000 ? 0 : 1)} ms`
    : `${x.toFixed(0)} µs`;
}

/**
 * Renders the report as an SVG document.
 *
 * @param report The benchmark report.
 * @returns The SVG text.
 */
export function renderChart(report: Report): string {
  const impls = ORDER.filter((name) =>
    report.scenarios.some((sc) => sc.results[name])
  );
  const label = 170;
  const panel = 400;
  const gapX = 110;
  const bar = 11;
  const groupGap = 10;
  const top = 95;
  const width = label + panel * 2 + gapX + 40;
  const groupHeight = Math.max(1, impls.length) * (bar + 1) + groupGap;
  const chartHeight = report.scenarios.length * groupHeight;
  const idle = Object.entries(report.idleMemory).filter(([, r]) =>
    !("error" in r)
  );
  const idleTop = top + chartHeight + 50;
  const height = idleTop + (idle.length ? idle.length * (bar + 4) + 40 : 0) +
    30;

  const maxRate = Math.max(
    1,
    ...report.scenarios.flatMap((sc) =>
      Object.values(sc.results).map((r) => r.median.reqPerSec ?? 0)
    ),
  );
  // Latencies span 20 µs … 10 ms: a log scale keeps every bar readable.
  const p99s = report.scenarios.flatMap((sc) =>
    Object.values(sc.results).map((r) => r.median.p99 ?? 0)
  ).filter((x) => x > 0);
  const lo = Math.log10(Math.max(1, Math.min(...p99s, 10) / 2));
  const hi = Math.log10(Math.max(...p99s, 100) * 1.2);
  const latX = (x: number) =>
    Math.max(2, ((Math.log10(Math.max(x, 1)) - lo) / (hi - lo)) * panel);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
  );
  const m = report.machine;
  out.push(
    `<text x="10" y="20" font-size="14" font-weight="bold">tcpbutler echo benchmark — loopback, ${
      report.settings.quick ? "quick, " : ""
    }median of ${report.settings.runs} run(s), ${report.settings.durationMs} ms windows</text>`,
    `<text x="10" y="38" fill="#555">${
      esc(
        `${m.cpu}, ${m.cores} cores · Deno ${m.deno} · Node ${m.node} · ${m.date}`,
      )
    }</text>`,
  );
  const x0 = label;
  const x1 = label + panel + gapX;
  out.push(
    `<text x="${x0}" y="${
      top - 12
    }" font-weight="bold">requests/s (linear)</text>`,
    `<text x="${x1}" y="${
      top - 12
    }" font-weight="bold">p99 latency (log scale, shorter is better)</text>`,
  );
  // Legend, one line.
  impls.forEach((name, i) => {
    const lx = 10 + i * 130;
    const ly = 48;
    out.push(
      `<rect x="${lx}" y="${ly}" width="10" height="10" fill="${
        COLORS[name]
      }"/>`,
      `<text x="${lx + 14}" y="${ly + 9}">${esc(name)}</text>`,
    );
  });

  report.scenarios.forEach((sc, g) => {
    const gy = top + g * groupHeight;
    out.push(
      `<text x="${label - 8}" y="${
        gy + (groupHeight - groupGap) / 2 + 4
      }" text-anchor="end">${esc(sc.name)}</text>`,
    );
    if (g > 0) {
      out.push(
        `<line x1="10" x2="${width - 10}" y1="${gy - groupGap / 2}" y2="${
          gy - groupGap / 2
        }" stroke="#eee"/>`,
      );
    }
    impls.forEach((name, i) => {
      const y = gy + i * (bar + 1);
      const r = sc.results[name];
      if (!r) {
        out.push(
          `<text x="${x0 + 4}" y="${y + bar - 2}" fill="#999">${
            esc(name)
          }: n/a</text>`,
        );
        return;
      }
      const rate = r.median.reqPerSec ?? 0;
      const w = Math.max(1, (rate / maxRate) * panel);
      const ratio = r.ratioToRaw !== null && name !== "raw"
        ? ` (${r.ratioToRaw.toFixed(2)}×)`
        : "";
      out.push(
        `<rect x="${x0}" y="${y}" width="${
          w.toFixed(1)
        }" height="${bar}" fill="${COLORS[name]}"/>`,
        `<text x="${x0 + w + 4}" y="${y + bar - 2}">${
          compact(rate)
        }${ratio}</text>`,
      );
      const p99 = r.median.p99 ?? 0;
      const lw = latX(p99);
      out.push(
        `<rect x="${x1}" y="${y}" width="${
          lw.toFixed(1)
        }" height="${bar}" fill="${COLORS[name]}"/>`,
        `<text x="${x1 + lw + 4}" y="${y + bar - 2}">${us(p99)}</text>`,
      );
    });
  });

  if (idle.length) {
    out.push(
      `<text x="${x0}" y="${
        idleTop - 12
      }" font-weight="bold">server memory per idle connection (KiB, RSS growth over ${
        (idle[0]![1] as { connections: number }).connections
      } connections)</text>`,
    );
    const maxKiB = Math.max(
      1,
      ...idle.map(([, r]) =>
        (r as { kibPerConnection: number }).kibPerConnection
      ),
    );
    idle.forEach(([name, r], i) => {
      const kib = (r as { kibPerConnection: number }).kibPerConnection;
      const y = idleTop + i * (bar + 4);
      const w = Math.max(1, (kib / maxKiB) * panel);
      out.push(
        `<text x="${label - 8}" y="${y + bar - 2}" text-anchor="end">${
          esc(name)
        }</text>`,
        `<rect x="${x0}" y="${y}" width="${
          w.toFixed(1)
        }" height="${bar}" fill="${COLORS[name] ?? "#888"}"/>`,
        `<text x="${x0 + w + 4}" y="${y + bar - 2}">${
          kib.toFixed(1)
        } KiB</text>`,
      );
    });
  }
  out.push(
    `<text x="10" y="${
      height - 10
    }" fill="#777">Ratios: req/s against raw Deno in the same scenario. "NinF/Ss" = N requests in flight over S connections.</text>`,
  );
  out.push("</svg>");
  return out.join("\n") + "\n";
}

if (import.meta.main) {
  const path = Deno.args[0] ??
    new URL("./results/latest.json", import.meta.url).pathname;
  const report = JSON.parse(await Deno.readTextFile(path)) as Report;
  await Deno.writeTextFile(
    path.replace(/\.json$/, ".svg"),
    renderChart(report),
  );
}
