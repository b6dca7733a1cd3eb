// Leases benchmark: acquire → execute `true` → release through the real fake-sandbox worker (the app's
// Leases + Executor over the PluginHost; SQLite, and PostgreSQL when a URL is set), sequential and 16 at a time; the host's overhead per
// lease against the same fake-sandbox core called in-process (plugins/fake-sandbox/src/core.ts, no host),
// interleaved chunk by chunk so both see the same machine load; and host RSS growth while 1,000 leases
// are held open at once.
import { Effect, Exit, Layer, ManagedRuntime, Scope } from "effect"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { setTimeout as sleep } from "node:timers/promises"
import { performance } from "node:perf_hooks"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import * as Core from "../plugins/fake-sandbox/src/core.js"
import { Environments } from "../src/environments/Environments.js"
import { Executor } from "../src/environments/Execution.js"
import { Leases, type LeaseRequest } from "../src/environments/Leases.js"
import * as PluginHost from "../src/host/PluginHost.js"
import * as App from "../src/server/App.js"
import { fakeSandboxPluginDir } from "../src/testing/fakeSandbox.js"
import { Companies } from "../src/work/Companies.js"
import { assertNoChildren, benchDbKinds, type BenchDb, childPidsNow, freshDb, loadAvg1m, logToStderr, median, round } from "./capabilities.js"

const CHUNKS = 10
const PER_CHUNK = 10
const WIDTH = 16
const PER_LANE = 8
const HELD = 1_000
const HOLD_CONCURRENCY = 16
const EXEC = { command: "true", env: {}, timeoutMs: 10_000 } as const

setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void
const rssMiB = (pid: number | "self" = "self"): number => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"))
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024
}
/** RSS and V8 heap after full collections, once RSS has stopped moving (freed pages go back lazily). */
const settledMemory = async () => {
  let last = Number.NaN
  for (let i = 0; i < 20; i++) {
    gc()
    await sleep(100)
    const rss = rssMiB()
    if (Math.abs(rss - last) < 0.5) break
    last = rss
  }
  return { rss: rssMiB(), heap: process.memoryUsage().heapUsed / 1024 / 1024 }
}

interface Phases {
  readonly total: number
  readonly acquire: number
  readonly execute: number
  readonly release: number
}
const phases = (t: ReadonlyArray<number>, end: number): Phases =>
  ({ total: end - t[0]!, acquire: t[1]! - t[0]!, execute: t[2]! - t[1]!, release: end - t[2]! })

export const leases = async (): Promise<void> => {
  for (const kind of benchDbKinds("leases")) {
    const db = await freshDb(kind)
    try {
      await leasesOn(db)
    } finally {
      await db.drop()
    }
  }
}

const leasesOn = async (db: BenchDb): Promise<void> => {
  const before = childPidsNow()
  const dir = mkdtempSync(join(tmpdir(), "gantry-bench-leases-"))
  const runtime = ManagedRuntime.make(App.layer({
    databaseUrl: db.url,
    dataDir: join(dir, "data"),
    host: { healthIntervalMs: 60_000 }
  }).pipe(Layer.provideMerge(logToStderr)))
  const direct = Core.createFakeSandbox()
  try {
    const hostConfig = { inventoryFile: join(dir, "host", "inventory.json"), workspaceRoot: join(dir, "host", "ws") }
    const directConfig = { inventoryFile: join(dir, "direct", "inventory.json"), workspaceRoot: join(dir, "direct", "ws") }
    const { request, workerPid } = await runtime.runPromise(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      yield* host.install(fakeSandboxPluginDir)
      const snap = yield* host.start(Core.PLUGIN_ID)
      const company = yield* (yield* Companies).create({ name: "bench" })
      const environments = yield* Environments
      const env = yield* environments.create(company.id, {
        name: "sandbox",
        driver: "sandbox",
        config: { provider: `${Core.PLUGIN_ID}/${Core.DRIVER_KEY}`, ...hostConfig }
      })
      const s = yield* environments.sandboxSettings(env)
      const request: LeaseRequest = {
        companyId: company.id,
        environmentId: env.id,
        runId: null,
        provider: s.provider,
        config: s.providerConfig,
        policy: s.policy
      }
      return { request, workerPid: snap.pid! }
    }))

    // one lease through the host: Leases.acquire (scoped) → Executor (sandbox) → release on scope close
    const viaHost = async (): Promise<Phases> => {
      const t = [performance.now(), 0, 0]
      await runtime.runPromise(Effect.scoped(Effect.gen(function* () {
        const lease = yield* (yield* Leases).acquire(request)
        t[1] = performance.now()
        const r = yield* (yield* Executor).execute({ _tag: "sandbox", lease, cwd: undefined }, EXEC)
        t[2] = performance.now()
        if (r.exitCode !== 0) return yield* Effect.dieMessage(`execute true: exit ${r.exitCode}`)
      })))
      return phases(t, performance.now())
    }
    // the same three provider operations on the core, in this process, no host
    let n = 0
    const base = { driverKey: Core.DRIVER_KEY, companyId: request.companyId, environmentId: request.environmentId, config: directConfig }
    const viaCore = async (): Promise<Phases> => {
      const t = [performance.now(), 0, 0]
      const l = await direct.acquire({ ...base, runId: `direct-${n++}` })
      t[1] = performance.now()
      const r = await direct.execute({ ...base, lease: { providerLeaseId: l.providerLeaseId! }, ...EXEC, env: { PATH: Core.DEFAULT_PATH } })
      t[2] = performance.now()
      if (r.exitCode !== 0) throw new Error(`execute true: exit ${r.exitCode}`)
      await direct.release({ ...base, providerLeaseId: l.providerLeaseId! })
      return phases(t, performance.now())
    }

    for (let i = 0; i < 5; i++) {
      await viaHost()
      await viaCore()
    }
    // 1,000 leases held at once, each in its own open scope (first, while the heap is in its warmed-up steady state)
    const workerRss0 = rssMiB(workerPid)
    const mem0 = await settledMemory()
    const t0 = performance.now()
    const scopes = await runtime.runPromise(Effect.forEach(Array.from({ length: HELD }), () =>
      Effect.gen(function* () {
        const scope = yield* Scope.make()
        yield* Scope.extend((yield* Leases).acquire(request), scope)
        return scope
      }), { concurrency: HOLD_CONCURRENCY }))
    const acquireAllMs = performance.now() - t0
    const mem1 = await settledMemory()
    const workerRss1 = rssMiB(workerPid)
    const live = (await Core.readInventory(hostConfig.inventoryFile)).length
    const t1 = performance.now()
    await runtime.runPromise(Effect.forEach(scopes, (s) => Scope.close(s, Exit.void), { concurrency: HOLD_CONCURRENCY, discard: true }))
    const releaseAllMs = performance.now() - t1
    const left = (await Core.readInventory(hostConfig.inventoryFile)).length
    const open = await runtime.runPromise(Effect.flatMap(Leases, (l) => l.liveCount(request.environmentId)))
    if (live !== HELD || left !== 0 || open !== 0) throw new Error(`held ${live} of ${HELD} sandboxes; after release ${left} sandboxes, ${open} live leases`)

    // sequential, interleaved chunk by chunk (alternating who goes first)
    const hostMs: Array<Phases> = []
    const coreMs: Array<Phases> = []
    for (let c = 0; c < CHUNKS; c++) {
      const order = c % 2 === 0 ? [[viaHost, hostMs], [viaCore, coreMs]] as const : [[viaCore, coreMs], [viaHost, hostMs]] as const
      for (const [measure, into] of order) for (let i = 0; i < PER_CHUNK; i++) into.push(await measure())
    }
    const sum = (xs: ReadonlyArray<Phases>) => xs.reduce((a, b) => a + b.total, 0)
    const p50 = (xs: ReadonlyArray<Phases>, k: keyof Phases) => round(median(xs.map((x) => x[k])), 2)
    const phaseP50 = (xs: ReadonlyArray<Phases>) => ({ acquire: p50(xs, "acquire"), execute: p50(xs, "execute"), release: p50(xs, "release") })

    // 16 at a time: two rounds each, alternating who goes first
    const lanes = async (cycle: () => Promise<Phases>) => {
      const t = performance.now()
      await Promise.all(Array.from({ length: WIDTH }, async () => {
        for (let i = 0; i < PER_LANE; i++) await cycle()
      }))
      return performance.now() - t
    }
    let concurrentHostMs = 0
    let concurrentCoreMs = 0
    for (let r = 0; r < 2; r++) {
      if (r === 0) concurrentHostMs += await lanes(viaHost)
      concurrentCoreMs += await lanes(viaCore)
      if (r === 1) concurrentHostMs += await lanes(viaHost)
    }
    const concurrentHost = (2 * WIDTH * PER_LANE) / (concurrentHostMs / 1000)
    const concurrentCore = (2 * WIDTH * PER_LANE) / (concurrentCoreMs / 1000)

    console.log(JSON.stringify({
      bench: "leases",
      db: db.kind,
      seqLeasesPerS: round(hostMs.length / (sum(hostMs) / 1000), 1),
      concurrentLeasesPerS: round(concurrentHost, 1),
      hostOverheadMsP50: round(p50(hostMs, "total") - p50(coreMs, "total"), 2),
      rssGrowthMiBFor1000: round(mem1.rss - mem0.rss, 1),
      hostP50Ms: p50(hostMs, "total"),
      coreP50Ms: p50(coreMs, "total"),
      hostPhasesP50Ms: phaseP50(hostMs),
      corePhasesP50Ms: phaseP50(coreMs),
      heapGrowthMiBFor1000: round(mem1.heap - mem0.heap, 1),
      coreSeqLeasesPerS: round(coreMs.length / (sum(coreMs) / 1000), 1),
      coreConcurrentLeasesPerS: round(concurrentCore, 1),
      workerRssGrowthMiBFor1000: round(workerRss1 - workerRss0, 1),
      acquire1000Ms: Math.round(acquireAllMs),
      release1000Ms: Math.round(releaseAllMs),
      loadAvg1m: loadAvg1m(),
      notes: `overhead = p50 through the host - p50 of the core in-process (${CHUNKS * PER_CHUNK} cycles each, interleaved); ` +
        `the execute phase spawns from the worker through the host but from this (larger, busier) process for the core, ` +
        `so acquire + release phases show the host's own cost; ${HELD} leases held: acquired ${HOLD_CONCURRENCY} at a time, RSS after gc`
    }))
  } finally {
    await runtime.dispose()
    await direct.shutdown()
    rmSync(dir, { recursive: true, force: true })
    assertNoChildren("leases", before)
  }
}
