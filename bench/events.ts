// Durable events benchmark: emitted → delivered → acked events/s to one plugin worker (the
// events-recorder fixture) on SQLite (a temp file) or on GANTRY_BENCH_PG_URL when set.
// `tsx bench/events.ts [count]` after `node scripts/build.mjs`; prints one JSON line per emit mode
// (1 or 8 emits at a time while the worker runs; and a backlog emitted while it was stopped, then drained).
import { SqlClient } from "@effect/sql"
import { Duration, Effect, Layer, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import * as Capabilities from "../src/host/capabilities/index.js"
import * as Redactor from "../src/host/capabilities/Redactor.js"
import { HostOptions } from "../src/host/HostOptions.js"
import * as PluginHost from "../src/host/PluginHost.js"
import { CapabilityStores } from "../src/host/Stores.js"
import * as Database from "../src/store/Database.js"

const FIXTURE = resolve(import.meta.dirname, "..", "test", "fixtures", "events-recorder")
const ID = "events-recorder"

/** CPU milliseconds (user + system) of a child process so far, from /proc (Linux). */
const childCpuMs = (pid: number | null): number => {
  if (pid === null || !existsSync(`/proc/${pid}/stat`)) return 0
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100
}
const hostCpuMs = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

const lines = (file: string) => (existsSync(file) ? readFileSync(file, "utf8").split("\n").length - 1 : 0)

const run = (url: string, file: string, count: number, concurrency: number) =>
  Effect.gen(function* () {
    const host = yield* PluginHost.PluginHost
    const stores = yield* CapabilityStores
    const sql = yield* SqlClient.SqlClient
    yield* host.install(FIXTURE)
    yield* host.configChanged(ID, "acme", { logFile: file, subscriptions: [{ pattern: "bench.*" }] })
    const { pid } = yield* host.start(ID)
    if (concurrency === 0) {
      // backlog: emitted while the worker is stopped, then drained by a started worker
      yield* host.stop(ID)
      const e0 = performance.now()
      const c0 = hostCpuMs()
      yield* Effect.forEach(Array.from({ length: count }, (_, n) => n), (n) =>
        stores.events.emit({ eventId: randomUUID(), eventType: "bench.tick", occurredAt: new Date().toISOString(), companyId: "acme", payload: { n } }), { discard: true })
      const emitted = { perS: Math.round((count / (performance.now() - e0)) * 1000), hostCpuUsPerEvent: Math.round(((hostCpuMs() - c0) * 1000) / count) }
      const t0 = performance.now()
      const c1 = hostCpuMs()
      const { pid: drainer } = yield* host.start(ID)
      const w0 = childCpuMs(drainer)
      yield* Effect.repeat(Effect.sync(() => lines(file)), { until: (n) => n >= count, schedule: Schedule.spaced(Duration.millis(20)) })
      return {
        bench: "events-backlog",
        db: url.startsWith("postgres") ? "pg" : "sqlite",
        count,
        emitOnly: emitted,
        drainedPerS: Math.round((count / (performance.now() - t0)) * 1000),
        drainHostCpuUsPerEvent: Math.round(((hostCpuMs() - c1) * 1000) / count),
        drainWorkerCpuUsPerEvent: Math.round(((childCpuMs(drainer) - w0) * 1000) / count),
        loadAvg1m: Math.round(loadavg()[0]! * 10) / 10
      }
    }
    const t0 = performance.now()
    const cpu0 = { host: hostCpuMs(), worker: childCpuMs(pid) }
    yield* Effect.forEach(
      Array.from({ length: count }, (_, n) => n),
      (n) => stores.events.emit({ eventId: randomUUID(), eventType: "bench.tick", occurredAt: new Date().toISOString(), companyId: "acme", payload: { n } }),
      { discard: true, concurrency }
    )
    const emitted = performance.now() - t0
    yield* Effect.repeat(Effect.sync(() => lines(file)), { until: (n) => n >= count, schedule: Schedule.spaced(Duration.millis(20)) })
    const handled = performance.now() - t0
    yield* Effect.repeat(
      Effect.map(Effect.orDie(sql<{ n: number }>`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'delivered'`), (r) => Number(r[0]!.n)),
      { until: (n) => n >= count, schedule: Schedule.spaced(Duration.millis(20)) }
    )
    const acked = performance.now() - t0
    const perS = (ms: number) => Math.round((count / ms) * 1000)
    const cpuUs = (ms: number) => Math.round((ms * 1000) / count)
    return {
      bench: "events",
      db: url.startsWith("postgres") ? "pg" : "sqlite",
      count,
      emitConcurrency: concurrency,
      emitPerS: perS(emitted),
      handledPerS: perS(handled),
      ackedPerS: perS(acked),
      // CPU per event (emit + delivery in the host; onEvent in the worker): the load-independent figure
      hostCpuUsPerEvent: cpuUs(hostCpuMs() - cpu0.host),
      workerCpuUsPerEvent: cpuUs(childCpuMs(pid) - cpu0.worker),
      loadAvg1m: Math.round(loadavg()[0]! * 10) / 10
    }
  }).pipe(
    Effect.scoped,
    Effect.provide(
      PluginHost.layer.pipe(
        Layer.provideMerge(Capabilities.layerSql),
        Layer.provideMerge(Layer.mergeAll(HostOptions.layer({ healthIntervalMs: 60_000 }), Redactor.layer)),
        Layer.provideMerge(Database.layer({ url }))
      )
    )
  )

export const events = async (count = 5_000) => {
  for (const concurrency of (process.env.BENCH_MODES ?? "1,8,0").split(",").map(Number)) {
    const dir = mkdtempSync(join(tmpdir(), "gantry-bench-events-"))
    try {
      const url = process.env.GANTRY_BENCH_PG_URL || join(dir, "gantry.db")
      console.log(JSON.stringify(await Effect.runPromise(run(url, join(dir, "handled.ndjson"), count, concurrency))))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  events(Number(process.argv[2] ?? 5_000)).catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })
}
