// HTTP benchmark: a child `gantry serve` process (a fresh SQLite file, or PostgreSQL database when a URL is
// set; a temp data dir, the bundled plugins, port 0)
// driven over real HTTP by this process: runs started and completed per second with 16 concurrent
// clients (agent command `true` on the fake-sandbox provider; a run is complete when its SSE output
// stream ends with the final run), then p50/p99 latency of GET /api/companies/:id/environments.
// The clients share the machine with the server (2 cores): the figures include that contention.
import { spawn, type ChildProcess } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import { setTimeout as sleep } from "node:timers/promises"
import { assertNoChildren, benchDbKinds, type BenchDb, childPidsNow, freshDb, loadAvg1m, percentile, round } from "./capabilities.js"

const ROOT = resolve(import.meta.dirname, "..")
const CLIENTS = 16
const RUNS_PER_CLIENT = 15
const LIST_REQUESTS = 2_000
const LIST_WARMUP = 100
const START_TIMEOUT_MS = 60_000

/** Every descendant of `pid` (from /proc ppid links). */
const descendants = (pid: number): Array<number> => {
  const parent = new Map<number, number>()
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8")
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]))
    } catch {
      // gone
    }
  }
  const out: Array<number> = []
  const walk = (p: number) => {
    for (const [c, pp] of parent) if (pp === p) {
      out.push(c)
      walk(c)
    }
  }
  walk(pid)
  return out
}
const alive = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return false
  }
}

export interface Served {
  readonly child: ChildProcess
  readonly url: string
  readonly token: string
  readonly stderrTail: () => string
}

export const startServer = (dataDir: string, databaseUrl: string | undefined): Promise<Served> =>
  new Promise((resolveStart, rejectStart) => {
    const env: Record<string, string> = {}
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("GANTRY_")) env[k] = v
    if (databaseUrl) env.GANTRY_DATABASE_URL = databaseUrl
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src", "cli", "main.ts"), "serve", "--port", "0", "--host", "127.0.0.1", "--data-dir", dataDir], {
      cwd: ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    let done = false
    const timer = setTimeout(() => fail(new Error(`gantry serve did not start within ${START_TIMEOUT_MS} ms; stderr: ${err.slice(-2000)}`)), START_TIMEOUT_MS)
    const fail = (e: Error) => {
      if (done) return
      done = true
      clearTimeout(timer)
      child.kill("SIGKILL")
      rejectStart(e)
    }
    child.stdout.setEncoding("utf8")
    child.stderr.setEncoding("utf8")
    child.stderr.on("data", (c: string) => {
      err = (err + c).slice(-8000)
    })
    child.stdout.on("data", (c: string) => {
      if (done) return
      out += c
      const url = /serving on (http:\/\/\S+)/.exec(out)?.[1]
      const token = /Admin token[^:]*: (gantry_admin_\S+)/.exec(out)?.[1]
      if (url && token) {
        done = true
        clearTimeout(timer)
        resolveStart({ child, url, token, stderrTail: () => err })
      }
    })
    child.once("exit", (code, signal) => fail(new Error(`gantry serve exited (${signal ?? code}) before it was ready; stderr: ${err.slice(-2000)}`)))
  })

export const stopServer = async (s: Served): Promise<Array<number>> => {
  const pids = descendants(s.child.pid!)
  const exited = new Promise<void>((r) => (s.child.exitCode !== null || s.child.signalCode !== null ? r() : s.child.once("exit", () => r())))
  s.child.kill("SIGTERM")
  const gone = await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)])
  if (!gone) {
    console.error("[bench http] gantry serve ignored SIGTERM for 20 s; killing it")
    s.child.kill("SIGKILL")
    await exited
  }
  // workers (and commands) the server should have stopped with it
  const deadline = Date.now() + 5_000
  while (pids.some(alive) && Date.now() < deadline) await sleep(50)
  const left = pids.filter(alive)
  for (const p of left) {
    try {
      process.kill(p, "SIGKILL")
    } catch {
      // gone
    }
  }
  return left
}

const client = (s: Served) => {
  const headers = { authorization: `Bearer ${s.token}`, "content-type": "application/json" }
  const request = async (method: string, path: string, body?: unknown): Promise<any> => {
    const res = await fetch(`${s.url}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 500)}`)
    return JSON.parse(text)
  }
  /** Start a run and read its SSE output to the end; the final run's status. */
  const run = async (agentId: string): Promise<string> => {
    const started = (await request("POST", `/api/agents/${agentId}/runs`, {})) as { id: string }
    const res = await fetch(`${s.url}/api/runs/${started.id}/output`, { headers })
    const text = await res.text()
    if (!res.ok) throw new Error(`GET /api/runs/${started.id}/output: ${res.status} ${text.slice(0, 500)}`)
    const end = /event: end\ndata: (.*)\n/.exec(text)?.[1]
    return end ? (JSON.parse(end) as { status: string }).status : "no end frame"
  }
  return { request, run, headers }
}

export const http = async (): Promise<void> => {
  for (const kind of benchDbKinds("http")) {
    const db = await freshDb(kind)
    try {
      await httpOn(db)
    } finally {
      await db.drop()
    }
  }
}

const httpOn = async (db: BenchDb): Promise<void> => {
  const before = childPidsNow()
  const dir = mkdtempSync(join(tmpdir(), "gantry-bench-http-"))
  let served: Served | undefined
  try {
    served = await startServer(join(dir, "data"), db.url)
    const c = client(served)
    const company = (await c.request("POST", "/api/companies", { name: "bench" })) as { id: string }
    const env = (await c.request("POST", `/api/companies/${company.id}/environments`, {
      name: "sandbox",
      driver: "sandbox",
      config: { provider: "fake-sandbox/fake", inventoryFile: join(dir, "sandbox", "inventory.json"), workspaceRoot: join(dir, "sandbox", "ws") }
    })) as { id: string }
    const agent = (await c.request("POST", `/api/companies/${company.id}/agents`, {
      name: "bench-agent", command: "true", args: [], defaultEnvironmentId: env.id, timeoutMs: 30_000
    })) as { id: string }

    // runs: 16 clients, each starting a run and following its output to the end, again and again
    const statuses = new Map<string, number>()
    const lanes = async (perClient: number) => {
      await Promise.all(Array.from({ length: CLIENTS }, async () => {
        for (let i = 0; i < perClient; i++) {
          const st = await c.run(agent.id)
          statuses.set(st, (statuses.get(st) ?? 0) + 1)
        }
      }))
    }
    await lanes(1)
    statuses.clear()
    const t0 = performance.now()
    await lanes(RUNS_PER_CLIENT)
    const runsMs = performance.now() - t0
    const total = CLIENTS * RUNS_PER_CLIENT
    if ((statuses.get("succeeded") ?? 0) !== total) throw new Error(`runs: ${JSON.stringify(Object.fromEntries(statuses))} of ${total}`)

    // GET environments: 2,000 requests, 16 in flight
    const listPath = `/api/companies/${company.id}/environments`
    const latencies: Array<number> = []
    let next = 0
    const listLane = async (count: number, record: boolean) => {
      while (next < count) {
        next++
        const t = performance.now()
        const res = await fetch(`${served!.url}${listPath}`, { headers: c.headers })
        const body = await res.text()
        if (!res.ok) throw new Error(`GET ${listPath}: ${res.status} ${body.slice(0, 300)}`)
        if (record) latencies.push(performance.now() - t)
      }
    }
    await Promise.all(Array.from({ length: CLIENTS }, () => listLane(LIST_WARMUP, false)))
    next = 0
    const l0 = performance.now()
    await Promise.all(Array.from({ length: CLIENTS }, () => listLane(LIST_REQUESTS, true)))
    const listMs = performance.now() - l0

    console.log(JSON.stringify({
      bench: "http",
      db: db.kind,
      runsPerS: round(total / (runsMs / 1000), 1),
      envListP50Ms: round(percentile(latencies, 50), 2),
      envListP99Ms: round(percentile(latencies, 99), 2),
      runs: total,
      clients: CLIENTS,
      envListRequests: latencies.length,
      envListPerS: Math.round(latencies.length / (listMs / 1000)),
      loadAvg1m: loadAvg1m()
    }))
  } finally {
    if (served) {
      const left = await stopServer(served)
      if (left.length > 0) {
        console.error(`[bench http] processes of gantry serve left after it exited (killed now): ${left.join(", ")}`)
        process.exitCode = 1
      }
    }
    rmSync(dir, { recursive: true, force: true })
    assertNoChildren("http", before)
  }
}
