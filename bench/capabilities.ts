// Capabilities benchmark: host capabilities exercised from real workers, one JSON line per database
// (SQLite temp file; PostgreSQL fresh database when GANTRY_BENCH_PG_URL or GANTRY_TEST_PG_URL is set).
// stateOpsPerS: state.set/state.get issued by a worker in a loop (one op = one set or one get);
// eventsPerS: events emitted → delivered → acked to one plugin; eventsFanout10PerS: deliveries acked per
// second with 10 subscriber plugins (10 workers); secretResolvesPerS: secrets.resolve of a bound ref in a loop.
// Both databases run side by side in one process: each figure is taken in rounds, alternating databases.
import { SqlClient } from "@effect/sql"
import { childPids } from "../test/helpers.js"
import { Duration, Effect, Layer, Logger, ManagedRuntime, Redacted, Schedule } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import pg from "pg"
import * as Capabilities from "../src/host/capabilities/index.js"
import * as Redactor from "../src/host/capabilities/Redactor.js"
import * as SecretStore from "../src/host/capabilities/SecretStore.js"
import { HostOptions } from "../src/host/HostOptions.js"
import * as PluginHost from "../src/host/PluginHost.js"
import { CapabilityStores } from "../src/host/Stores.js"
import * as Database from "../src/store/Database.js"

// ---- shared by the bench modules (databases, statistics, process hygiene) ----

export type DbKind = "sqlite" | "postgres"
export const pgBaseUrl = process.env.GANTRY_BENCH_PG_URL || process.env.GANTRY_TEST_PG_URL || ""

/** The databases to run: SQLite always, PostgreSQL when a URL is set (a note on stderr otherwise). */
export const benchDbKinds = (bench: string): ReadonlyArray<DbKind> => {
  if (pgBaseUrl) return ["sqlite", "postgres"]
  console.error(`[bench ${bench}] PostgreSQL skipped: GANTRY_BENCH_PG_URL / GANTRY_TEST_PG_URL not set (sqlite only)`)
  return ["sqlite"]
}

export interface BenchDb {
  readonly kind: DbKind
  readonly url: string
  readonly drop: () => Promise<void>
}

/** A fresh database: a SQLite file in a temp dir, or a new PostgreSQL database (dropped by `drop`). */
export const freshDb = async (kind: DbKind): Promise<BenchDb> => {
  if (kind === "sqlite") {
    const dir = mkdtempSync(join(tmpdir(), "gantry-bench-db-"))
    return { kind, url: join(dir, "gantry.db"), drop: async () => rmSync(dir, { recursive: true, force: true }) }
  }
  const name = `gantry_bench_${process.pid}_${randomBytes(4).toString("hex")}`
  const admin = new pg.Client({ connectionString: pgBaseUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(pgBaseUrl)
  url.pathname = `/${name}`
  return {
    kind,
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: pgBaseUrl })
      await c.connect()
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await c.end()
    }
  }
}

/** Effect logs go to stderr: stdout carries only the JSON lines. */
export const logToStderr = Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))

export const median = (xs: ReadonlyArray<number>): number => percentile(xs, 50)
/** Nearest-rank percentile. */
export const percentile = (xs: ReadonlyArray<number>, p: number): number => {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}
export const round = (x: number, digits = 0) => Math.round(x * 10 ** digits) / 10 ** digits
export const loadAvg1m = () => round(loadavg()[0]!, 2)

/** Pids of this process's live children (the test helpers' /proc reader). */
export const childPidsNow = childPids

/** Fail loudly (stderr, exit code) when a benchmark left child processes behind. */
export const assertNoChildren = (bench: string, before: ReadonlyArray<number> = []) => {
  const left = childPidsNow().filter((p) => !before.includes(p))
  if (left.length > 0) {
    console.error(`[bench ${bench}] child processes left behind: ${left.join(", ")}`)
    process.exitCode = 1
  }
}

// ---- the benchmark ----

const FIXTURE = resolve(import.meta.dirname, "fixtures", "bench-caps")
const FANOUT = 10
const ROUNDS = 3
const STATE_CHUNK = 250 // iterations per getData call: 500 ops
const STATE_CHUNKS = 8
const SECRET_CHUNK = 250
const SECRET_CHUNKS = 6
const EVENTS = 3_000
const FANOUT_EVENTS = 1_000
const EMIT_CONCURRENCY = 8
const COMPANY = "acme"
/** Replaces the default 30 resolutions/min per (plugin, company), which would cap the figure at 0.5/s. */
const BENCH_RATE_LIMIT = { limit: 100_000_000, windowMs: 60_000 }

const pluginId = (i: number) => (i === 0 ? "bench-caps" : `bench-caps-${i}`)

/** Plugin folders: the fixture itself, then copies of it under other ids (each its own worker). */
const pluginFolders = (root: string): Array<string> => {
  const manifest = JSON.parse(readFileSync(join(FIXTURE, "manifest.json"), "utf8")) as Record<string, unknown>
  const out = [FIXTURE]
  for (let i = 1; i < FANOUT; i++) {
    const dir = join(root, pluginId(i))
    mkdirSync(join(dir, "dist"), { recursive: true })
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, id: pluginId(i) }))
    copyFileSync(join(FIXTURE, "package.json"), join(dir, "package.json"))
    copyFileSync(join(FIXTURE, "dist", "worker.js"), join(dir, "dist", "worker.js"))
    out.push(dir)
  }
  return out
}

const hostLayer = (url: string) =>
  PluginHost.layer.pipe(
    Layer.provideMerge(Capabilities.layerSql),
    // layerSql takes the SecretStore from context when there is one: this one has the bench's rate limit
    Layer.provideMerge(SecretStore.layer({ key: Redacted.make(randomBytes(32).toString("hex")), rateLimit: BENCH_RATE_LIMIT })),
    Layer.provideMerge(Layer.mergeAll(HostOptions.layer({ healthIntervalMs: 60_000 }), Redactor.layer)),
    Layer.provideMerge(Database.layer({ url })),
    Layer.provideMerge(logToStderr)
  )

type Runtime = ManagedRuntime.ManagedRuntime<PluginHost.PluginHost | CapabilityStores | SecretStore.SecretStore | SqlClient.SqlClient, unknown>

interface Target {
  readonly db: BenchDb
  readonly runtime: Runtime
  secretId: string
}

const timed = async (f: () => Promise<unknown>): Promise<number> => {
  const t = performance.now()
  await f()
  return performance.now() - t
}

const getData = (t: Target, id: string, key: string, params: Record<string, unknown>) =>
  t.runtime.runPromise(Effect.flatMap(PluginHost.PluginHost, (h) => h.call(id, "getData", { key, params }, { companyId: COMPANY })))

/** Emit `count` events (EMIT_CONCURRENCY at a time) and wait until no delivery row is pending; ms. */
const emitAndDrain = (t: Target, count: number) =>
  t.runtime.runPromise(
    Effect.gen(function* () {
      const stores = yield* CapabilityStores
      const sql = yield* SqlClient.SqlClient
      const t0 = performance.now()
      yield* Effect.forEach(
        Array.from({ length: count }, (_, n) => n),
        (n) =>
          stores.events.emit({
            eventId: randomUUID(),
            eventType: "bench.tick",
            occurredAt: new Date().toISOString(),
            companyId: COMPANY,
            payload: { n }
          }),
        { discard: true, concurrency: EMIT_CONCURRENCY }
      )
      // pending rows of the subscriptions, counted through their index (a scan of every delivery row
      // would cost the host's one SQLite connection milliseconds per poll)
      const subs = yield* Effect.orDie(sql<{ id: string }>`SELECT id FROM event_subscriptions WHERE status = 'active'`)
      const pending = Effect.map(
        Effect.orDie(sql<{ n: number }>`SELECT COUNT(*) AS n FROM event_deliveries
          WHERE subscription_id IN ${sql.in(subs.map((r) => r.id))} AND status = 'pending'`),
        (r) => Number(r[0]!.n)
      )
      yield* Effect.repeat(pending, { until: (n) => n === 0, schedule: Schedule.spaced(Duration.millis(10)) })
      return performance.now() - t0
    })
  )

const deliveredCount = (t: Target) =>
  t.runtime.runPromise(
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.map(Effect.orDie(sql<{ n: number }>`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'delivered'`), (r) => Number(r[0]!.n)))
  )

const setup = async (db: BenchDb, folders: ReadonlyArray<string>): Promise<Target> => {
  const runtime: Runtime = ManagedRuntime.make(hostLayer(db.url))
  const t: Target = { db, runtime, secretId: "" }
  const ready = runtime.runPromise(
    Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const secrets = yield* SecretStore.SecretStore
      for (const f of folders) yield* host.install(f)
      const secret = yield* secrets.create(COMPANY, "bench-api-key", `bench-secret-${randomBytes(8).toString("hex")}`)
      t.secretId = secret.id
      // the binding secrets.resolve checks: the plugin's saved config for the company holds the ref
      yield* host.configChanged(pluginId(0), COMPANY, { apiKey: { type: "secret_ref", secretId: secret.id } })
      yield* host.start(pluginId(0))
    })
  )
  try {
    await ready
  } catch (e) {
    await runtime.dispose()
    throw e
  }
  return t
}

interface Figures {
  state: Array<number>
  events: Array<number>
  fanout: Array<number>
  secrets: Array<number>
}

export const capabilities = async (): Promise<void> => {
  const kinds = benchDbKinds("capabilities")
  const before = childPidsNow()
  const copies = mkdtempSync(join(tmpdir(), "gantry-bench-caps-"))
  const targets: Array<Target> = []
  const figures = new Map<DbKind, Figures>()
  try {
    const folders = pluginFolders(copies)
    for (const kind of kinds) {
      const db = await freshDb(kind)
      try {
        targets.push(await setup(db, folders))
      } catch (e) {
        await db.drop()
        throw e
      }
      figures.set(kind, { state: [], events: [], fanout: [], secrets: [] })
    }
    // rounds alternate the database that goes first, so both see the same mix of machine load
    const inRounds = async (measure: (t: Target) => Promise<number>, into: keyof Figures) => {
      for (let r = 0; r < ROUNDS; r++) {
        for (let i = 0; i < targets.length; i++) {
          const t = targets[(i + r) % targets.length]!
          figures.get(t.db.kind)![into].push(await measure(t))
        }
      }
    }

    // state: ops issued by the worker (set + get per iteration), STATE_CHUNKS getData calls per round
    for (const t of targets) await getData(t, pluginId(0), "state", { n: 100 })
    await inRounds(async (t) => {
      let ms = 0
      for (let c = 0; c < STATE_CHUNKS; c++) ms += await timed(() => getData(t, pluginId(0), "state", { n: STATE_CHUNK }))
      return (STATE_CHUNKS * STATE_CHUNK * 2) / (ms / 1000)
    }, "state")

    // events → one plugin
    for (const t of targets) await emitAndDrain(t, 200)
    await inRounds(async (t) => EVENTS / ((await emitAndDrain(t, EVENTS)) / 1000), "events")

    // fan-out: 10 subscribers, each its own worker; the figure counts deliveries
    for (const t of targets) {
      await t.runtime.runPromise(Effect.flatMap(PluginHost.PluginHost, (h) =>
        Effect.forEach(Array.from({ length: FANOUT - 1 }, (_, i) => pluginId(i + 1)), (id) => h.start(id), { discard: true })))
      await emitAndDrain(t, 100)
    }
    await inRounds(async (t) => {
      const d0 = await deliveredCount(t)
      const ms = await emitAndDrain(t, FANOUT_EVENTS)
      const delivered = (await deliveredCount(t)) - d0
      if (delivered !== FANOUT_EVENTS * FANOUT) throw new Error(`fan-out: ${delivered} deliveries acked, expected ${FANOUT_EVENTS * FANOUT}`)
      return delivered / (ms / 1000)
    }, "fanout")

    // secrets last: once a value is resolved, the Redactor scrubs every later call result and state value
    for (const t of targets) await getData(t, pluginId(0), "secrets", { n: 50, secretId: t.secretId })
    await inRounds(async (t) => {
      let ms = 0
      for (let c = 0; c < SECRET_CHUNKS; c++) ms += await timed(() => getData(t, pluginId(0), "secrets", { n: SECRET_CHUNK, secretId: t.secretId }))
      return (SECRET_CHUNKS * SECRET_CHUNK) / (ms / 1000)
    }, "secrets")

    for (const kind of kinds) {
      const f = figures.get(kind)!
      console.log(JSON.stringify({
        bench: "capabilities",
        db: kind,
        stateOpsPerS: Math.round(median(f.state)),
        eventsPerS: Math.round(median(f.events)),
        eventsFanout10PerS: Math.round(median(f.fanout)),
        secretResolvesPerS: Math.round(median(f.secrets)),
        loadAvg1m: loadAvg1m(),
        notes: `median of ${ROUNDS} rounds; state: ${STATE_CHUNKS * STATE_CHUNK * 2} worker-issued ops per round; events: ${EVENTS} (fan-out ${FANOUT_EVENTS} x ${FANOUT} plugins) emitted ${EMIT_CONCURRENCY} at a time, timed until no delivery is pending; ` +
          `secrets rate limit raised to ${BENCH_RATE_LIMIT.limit}/${BENCH_RATE_LIMIT.windowMs} ms via SecretStore.layer({ rateLimit }) provided to Capabilities.layerSql (default 30/min per plugin+company)`
      }))
    }
  } finally {
    for (const t of targets) {
      await t.runtime.dispose()
      await t.db.drop()
    }
    rmSync(copies, { recursive: true, force: true })
    assertNoChildren("capabilities", before)
  }
}
