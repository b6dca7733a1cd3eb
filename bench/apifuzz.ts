// API fuzz benchmark (issue 13): 20,000 requests generated from the API's Schemas (the same
// generator as test/server/apifuzz.test.ts) against a child `gantry serve` process; the server's RSS
// after the first 1,000 and after all of them (the acceptance: within 10 %), requests per second,
// and any answer that broke the contract (a 5xx, an undocumented status, a body off its schema).
// GANTRY_FUZZ_SEED replays a seed; GANTRY_FUZZ_TOTAL changes the number of requests.
import { readFileSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { performance } from "node:perf_hooks"
import { operations, runFuzz, setupFixture } from "../test/server/apifuzz.js"
import { startServer, stopServer } from "./http.js"

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "0")

export const apifuzz = async () => {
  // an npm spec a mutated install body may carry goes to a registry that refuses at once (no network)
  process.env.npm_config_registry = "http://127.0.0.1:9/"
  const total = Number(process.env.GANTRY_FUZZ_TOTAL ?? 20_000)
  const seed = Number(process.env.GANTRY_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
  const perOperation = Math.ceil(total / operations().length)
  const dataDir = mkdtempSync(join(tmpdir(), "gantry-bench-fuzz-"))
  const server = await startServer(dataDir, undefined)
  const pid = server.child.pid!
  try {
    const fx = await setupFixture(server.url, server.token)
    const samples: Array<{ requests: number; rssKiB: number }> = []
    let rssAt1k = 0
    const started = performance.now()
    const result = await runFuzz({
      base: server.url, fixture: fx, seed, perOperation, concurrency: 4,
      onRequest: (n) => {
        if (n === 1_000) rssAt1k = rssKiB(pid)
        if (n % 2_000 === 0) samples.push({ requests: n, rssKiB: rssKiB(pid) })
      }
    })
    const seconds = (performance.now() - started) / 1000
    const rssEnd = rssKiB(pid)
    const growth = rssAt1k > 0 ? (rssEnd - rssAt1k) / rssAt1k : 0
    console.log(JSON.stringify({
      bench: "apifuzz", seed, requests: result.total, operations: Object.keys(result.requests).length, seconds: Math.round(seconds),
      requestsPerSecond: Math.round(result.total / seconds), rssAfter1kMiB: Math.round(rssAt1k / 1024), rssAfterAllMiB: Math.round(rssEnd / 1024),
      rssGrowthPct: Math.round(growth * 1000) / 10, rssWithin10Pct: Math.abs(growth) <= 0.1,
      rssSamplesMiB: samples.map((s) => [s.requests, Math.round(s.rssKiB / 1024)]), contractViolations: result.problems.length
    }))
    for (const p of result.problems.slice(0, 20)) console.error(p)
  } finally {
    await stopServer(server)
    rmSync(dataDir, { recursive: true, force: true })
  }
}
