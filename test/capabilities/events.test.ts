// Durable at-least-once events (SPEC §5.3) on SQLite and PostgreSQL: delivery through real workers,
// filters, one record per (plugin, pattern, filter), retirement, retries in order, a worker killed
// with -9 under load, a host restarted over the same database, and two replicas on one database.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as EventBus from "../../src/host/capabilities/EventBus.js"
import * as Capabilities from "../../src/host/capabilities/index.js"
import * as Redactor from "../../src/host/capabilities/Redactor.js"
import { HostOptions, type HostOptionsShape } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { PluginRecords } from "../../src/host/PluginRecords.js"
import { CapabilityStores, type Deliver } from "../../src/host/Stores.js"
import type { EventEnvelope, EventFilter } from "../../src/protocol/methods.js"
import { filterMatches, patternMatches } from "../../src/protocol/events.js"
import * as Database from "../../src/store/Database.js"
import { freshDatabaseUrl, testDbs } from "../db.js"
import { childPids, eventually, fixture, trusting } from "../helpers.js"

const ID = "events-recorder"
const DIR = fixture(ID)

interface Handled {
  readonly tag: string
  readonly id: string
  readonly type: string
  readonly n: number
}

/** The fixture's record of handled events, in handling order (a torn last line is ignored). */
const handled = (file: string): Array<Handled> =>
  existsSync(file)
    ? readFileSync(file, "utf8").split("\n").flatMap((l) => {
        try {
          return l ? [JSON.parse(l) as Handled] : []
        } catch {
          return []
        }
      })
    : []

const envelope = (eventType: string, n: number, extra: Partial<EventEnvelope> = {}): EventEnvelope => ({
  eventId: randomUUID(),
  eventType,
  occurredAt: new Date().toISOString(),
  companyId: "acme",
  payload: { n },
  ...extra
})

const tempFile = Effect.map(
  Effect.acquireRelease(Effect.sync(() => mkdtempSync(join(tmpdir(), "gantry-events-"))), (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))),
  (d) => join(d, "handled.ndjson")
)

/** A durable host over the database at `url` (kept across hosts, unlike durableHostLayer's). */
const hostOn = (url: string, overrides: Partial<HostOptionsShape> = {}) =>
  PluginHost.layer.pipe(
    Layer.provideMerge(Layer.merge(Capabilities.layerSql, PluginRecords.layerSql)),
    // events-recorder appends to a log file the test reads: trusted (no worker sandbox)
    Layer.provideMerge(Layer.mergeAll(HostOptions.layer({ healthIntervalMs: 60_000, ...trusting("events-recorder"), ...overrides }), Redactor.layer)),
    Layer.provideMerge(Database.layer({ url }))
  )

const storesOn = (url: string, instanceId: string) =>
  Capabilities.layerSql.pipe(
    Layer.provideMerge(Layer.mergeAll(HostOptions.layer({ instanceId }), Redactor.layer)),
    Layer.provideMerge(Database.layer({ url }))
  )

/** Install and start the fixture with `config` for company acme. */
const startRecorder = (config: Record<string, unknown>) =>
  Effect.gen(function* () {
    const host = yield* PluginHost.PluginHost
    yield* host.install(DIR)
    yield* host.configChanged(ID, "acme", config)
    return yield* host.start(ID)
  })

const count = (q: Effect.Effect<ReadonlyArray<{ n: number }>, unknown>) => Effect.map(Effect.orDie(q), (r) => Number(r[0]!.n))

const noChildrenLeft = eventually(Effect.suspend(() => (childPids().length === 0 ? Effect.void : Effect.fail("children left"))), 10_000)

for (const db of testDbs) {
  describe(`durable events [${db.kind}]`, () => {
    it.live("core and plugin events reach subscribed workers; filters; one record and one delivery for a double subscription; plugin. names refused", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const file = yield* tempFile
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          const sql = yield* SqlClient.SqlClient
          yield* startRecorder({
            logFile: file,
            subscriptions: [
              { pattern: "company.created", tag: "core" },
              { pattern: "company.created", tag: "core-again" },
              { pattern: `plugin.${ID}.*`, tag: "plugin" },
              { pattern: "agent.*", filter: { companyId: "acme", agentId: "a1" }, tag: "agent-a1" }
            ]
          })
          const subs = yield* sql<{ pattern: string; status: string }>`SELECT pattern, status FROM event_subscriptions WHERE plugin_id = ${ID} ORDER BY pattern`
          expect(subs).toEqual([
            { pattern: "agent.*", status: "active" },
            { pattern: "company.created", status: "active" },
            { pattern: `plugin.${ID}.*`, status: "active" }
          ])

          const created = envelope("company.created", 1, { entityType: "company", entityId: "acme" })
          yield* stores.events.emit(created)
          yield* stores.events.emit(created) // the same event id again: written once
          yield* stores.events.emit(envelope("agent.created", 2, { entityType: "agent", entityId: "a1" }))
          yield* stores.events.emit(envelope("agent.updated", 3, { payload: { n: 3, agentId: "a2" } }))
          yield* stores.events.emit(envelope("agent.created", 4, { companyId: "other", entityType: "agent", entityId: "a1" }))
          yield* stores.events.emit(envelope("agent.run.started", 6, { payload: { n: 6, agentId: "a1" } }))
          const emitted = yield* host.call(ID, "getData", { key: "emit", companyId: "acme", params: { name: "thing.done", companyId: "acme", payload: { n: 5 } } }, { companyId: "acme" })
          expect(emitted).toEqual({ ok: true })

          yield* eventually(Effect.suspend(() => {
            const tags = handled(file).map((h) => `${h.tag}:${h.n}`).sort()
            return tags.length >= 5 ? Effect.succeed(tags) : Effect.fail("waiting")
          }), 10_000)
          // pending rows drain to delivered
          yield* eventually(Effect.flatMap(count(sql`SELECT COUNT(*) AS n FROM event_deliveries WHERE status <> 'delivered'`), (n) => (n === 0 ? Effect.void : Effect.fail("pending"))))
          const h = handled(file)
          // both handlers of the worker see the one delivery; the agent filter lets a1 of acme through only
          expect(h.map((x) => `${x.tag}:${x.n}`).sort()).toEqual(["agent-a1:2", "agent-a1:6", "core-again:1", "core:1", "plugin:5"])
          expect(h.find((x) => x.n === 5)!.type).toBe(`plugin.${ID}.thing.done`)
          const perEvent = yield* sql<{ event_type: string; deliveries: number }>`SELECT e.event_type, COUNT(d.id) AS deliveries
            FROM events e LEFT JOIN event_deliveries d ON d.event_seq = e.seq GROUP BY e.seq, e.event_type ORDER BY e.seq`
          expect(perEvent.map((r) => [r.event_type, Number(r.deliveries)])).toEqual([
            ["company.created", 1], ["agent.created", 1], ["agent.updated", 0], ["agent.created", 0], ["agent.run.started", 1], [`plugin.${ID}.thing.done`, 1]
          ])

          // a plugin may not emit a name starting "plugin.": -32602, nothing written
          const before = yield* count(sql`SELECT COUNT(*) AS n FROM events`)
          const refused = yield* host.call(ID, "getData", { key: "emit", companyId: "acme", params: { name: "plugin.other.x", companyId: "acme", payload: {} } }, { companyId: "acme" })
          expect((refused as { code: number }).code).toBe(-32602)
          expect(yield* count(sql`SELECT COUNT(*) AS n FROM events`)).toBe(before)
        }).pipe(Effect.provide(hostOn(url)))
        yield* noChildrenLeft
      }).pipe(Effect.scoped))

    it.live("a crashed worker comes back with one subscription per pattern; a stale subscription is retired with its pending rows", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const file = yield* tempFile
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          const sql = yield* SqlClient.SqlClient
          const first = yield* startRecorder({ logFile: file, subscriptions: [{ pattern: "company.created" }, { pattern: "agent.created" }] })
          process.kill(first.pid!, "SIGKILL")
          const again = yield* eventually(Effect.flatMap(host.status(ID), (s) =>
            s.workerStatus === "running" && s.pid !== null && s.pid !== first.pid ? Effect.succeed(s) : Effect.fail("restarting")), 15_000)
          expect(again.restarts).toBeGreaterThanOrEqual(1)
          const subs = yield* sql<{ pattern: string }>`SELECT pattern FROM event_subscriptions WHERE plugin_id = ${ID} AND status = 'active' ORDER BY pattern`
          expect(subs.map((s) => s.pattern)).toEqual(["agent.created", "company.created"])
          const ev = envelope("company.created", 1)
          yield* stores.events.emit(ev)
          yield* eventually(Effect.suspend(() => (handled(file).length === 1 ? Effect.void : Effect.fail("waiting"))))
          // the handler logs before it acks: the row turns delivered a moment after the log line
          const rows = yield* eventually(Effect.flatMap(
            sql<{ status: string; attempts: number }>`SELECT d.status, d.attempts FROM event_deliveries d
              JOIN events e ON e.seq = d.event_seq WHERE e.event_id = ${ev.eventId}`,
            (rows) => rows[0]?.status === "delivered" ? Effect.succeed(rows) : Effect.fail("marking")))
          expect(rows.map((r) => [r.status, Number(r.attempts)])).toEqual([["delivered", 0]])

          // while the worker is down events queue; the restarted worker no longer subscribes to agent.created
          yield* host.stop(ID)
          for (let n = 10; n < 13; n++) yield* stores.events.emit(envelope("agent.created", n))
          for (let n = 20; n < 22; n++) yield* stores.events.emit(envelope("company.created", n))
          expect(yield* count(sql`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'pending'`)).toBe(5)
          yield* host.configChanged(ID, "acme", { logFile: file, subscriptions: [{ pattern: "company.created" }] })
          yield* host.start(ID)
          yield* eventually(Effect.suspend(() => (handled(file).length === 3 ? Effect.void : Effect.fail("waiting"))))
          expect(handled(file).map((h) => h.n)).toEqual([1, 20, 21])
          const status = yield* sql<{ pattern: string; status: string }>`SELECT pattern, status FROM event_subscriptions WHERE plugin_id = ${ID} ORDER BY pattern`
          expect(status).toEqual([{ pattern: "agent.created", status: "retired" }, { pattern: "company.created", status: "active" }])
          expect(yield* count(sql`SELECT COUNT(*) AS n FROM event_deliveries d JOIN event_subscriptions s ON s.id = d.subscription_id
            WHERE s.pattern = 'agent.created'`)).toBe(0)
          const logs = yield* stores.log.list(ID)
          expect(logs.some((l) => l.message.includes("retired stale event subscriptions: 3 undelivered deliveries dropped"))).toBe(true)
          // a retired record gets no rows
          yield* stores.events.emit(envelope("agent.created", 30))
          expect(yield* count(sql`SELECT COUNT(*) AS n FROM event_deliveries d JOIN event_subscriptions s ON s.id = d.subscription_id
            WHERE s.pattern = 'agent.created'`)).toBe(0)
        }).pipe(Effect.provide(hostOn(url, { restartBaseMs: 50 })))
        yield* noChildrenLeft
      }).pipe(Effect.scoped))

    it.live("a failing delivery is retried with backoff and later events wait for it (order kept)", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const file = yield* tempFile
        yield* Effect.gen(function* () {
          const stores = yield* CapabilityStores
          const sql = yield* SqlClient.SqlClient
          yield* startRecorder({ logFile: file, failEvery: 10, subscriptions: [{ pattern: "company.*" }] })
          for (let n = 1; n <= 40; n++) yield* stores.events.emit(envelope("company.updated", n))
          yield* eventually(Effect.suspend(() => (handled(file).length === 40 ? Effect.void : Effect.fail("waiting"))))
          expect(handled(file).map((h) => h.n)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
          const retried = yield* sql<{ attempts: number; last_error: string | null }>`SELECT attempts, last_error FROM event_deliveries WHERE attempts > 0 ORDER BY event_seq`
          expect(retried.length).toBe(4)
          expect(retried.every((r) => Number(r.attempts) === 1 && (r.last_error ?? "").includes("planned failure"))).toBe(true)
        }).pipe(Effect.provide(hostOn(url)))
        yield* noChildrenLeft
      }).pipe(Effect.scoped))

    it.live("kill -9 of the subscribing worker with 1,000 events in flight: every event handled, in order, after the restart", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const file = yield* tempFile
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          const sql = yield* SqlClient.SqlClient
          const first = yield* startRecorder({ logFile: file, subscriptions: [{ pattern: "company.created" }] })
          const ids = Array.from({ length: 1000 }, (_, n) => envelope("company.created", n))
          const emitter = yield* Effect.fork(Effect.forEach(ids, (e) => stores.events.emit(e), { discard: true }))
          yield* eventually(Effect.suspend(() => (handled(file).length >= 100 ? Effect.void : Effect.fail("waiting"))), 20_000)
          process.kill(first.pid!, "SIGKILL")
          const atKill = handled(file).length
          yield* Fiber.join(emitter)
          yield* eventually(Effect.suspend(() => (new Set(handled(file).map((h) => h.id)).size === 1000 ? Effect.void : Effect.fail("waiting"))), 30_000)
          const h = handled(file)
          // first occurrences in emit order; duplicates (at-least-once) only around the kill
          const firsts: Array<number> = []
          const seen = new Set<string>()
          for (const x of h) {
            if (!seen.has(x.id)) firsts.push(x.n)
            seen.add(x.id)
          }
          expect(firsts).toEqual(ids.map((_, n) => n))
          expect(atKill).toBeLessThan(1000)
          const s = yield* host.status(ID)
          expect(s.restarts).toBeGreaterThanOrEqual(1)
          expect(s.pid).not.toBe(first.pid)
          yield* eventually(Effect.flatMap(count(sql`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'delivered'`), (n) => (n === 1000 ? Effect.void : Effect.fail("marking"))))
          console.info(`[events ${db.kind}] kill -9 at ${atKill}/1000 handled; ${h.length - 1000} redelivered`)
        }).pipe(Effect.provide(hostOn(url, { restartBaseMs: 50 })))
        yield* noChildrenLeft
      }).pipe(Effect.scoped))

    it.live("host killed and restarted over the same database: undelivered events are delivered", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const file = yield* tempFile
        const config = { logFile: file, subscriptions: [{ pattern: "company.created" }] }
        const sent = Array.from({ length: 30 }, (_, n) => envelope("company.created", n))
        // host 1: the worker subscribes, is stopped, then events are emitted and the host goes away
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          yield* startRecorder(config)
          yield* host.stop(ID)
          yield* Effect.forEach(sent.slice(0, 20), (e) => stores.events.emit(e), { discard: true })
        }).pipe(Effect.provide(hostOn(url)), Effect.scoped)
        // host 1': events emitted with no worker ever started in this process
        yield* Effect.gen(function* () {
          const stores = yield* CapabilityStores
          yield* Effect.forEach(sent.slice(20), (e) => stores.events.emit(e), { discard: true })
        }).pipe(Effect.provide(hostOn(url)), Effect.scoped)
        expect(handled(file)).toEqual([])
        // host 2 on the same database: starting the plugin delivers the backlog
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          yield* host.install(DIR)
          yield* host.start(ID)
          yield* eventually(Effect.suspend(() => (handled(file).length === 30 ? Effect.void : Effect.fail("waiting"))))
          expect(handled(file).map((h) => h.id)).toEqual(sent.map((e) => e.eventId))
        }).pipe(Effect.provide(hostOn(url)), Effect.scoped)
        yield* noChildrenLeft
      }).pipe(Effect.scoped))

    it.live("matching in SQL agrees with patternMatches/filterMatches", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const ctx = yield* Layer.build(storesOn(url, "solo"))
        const stores = Context.get(ctx, CapabilityStores)
        const subs: ReadonlyArray<readonly [string, EventFilter | null]> = [
          ["*", null], ["company.*", null], ["company.created", null], ["agent.*", { agentId: "a1" }],
          ["agent.run.*", { companyId: "acme", projectId: "p1" }], ["plugin.my_plugin.*", null], ["agent.created", { companyId: "other" }]
        ]
        const got = new Map<string, Set<string>>()
        for (const [pattern, filter] of subs) {
          const key = JSON.stringify([pattern, filter])
          got.set(key, new Set())
          const deliver: Deliver = (e) => Effect.sync(() => void got.get(key)!.add(e.eventId))
          yield* stores.events.subscribe("matcher", pattern, filter, deliver)
        }
        const events = [
          envelope("company.created", 1), envelope("company.updated", 2), envelope("companyx.created", 3),
          envelope("agent.created", 4, { entityType: "agent", entityId: "a1" }), envelope("agent.created", 5, { companyId: "other" }),
          envelope("agent.run.started", 6, { payload: { agentId: "a1", projectId: "p1" } }), envelope("agent.run.failed", 7, { payload: { projectId: "p2" } }),
          envelope("plugin.my_plugin.x", 8), envelope("plugin.myXplugin.x", 9), envelope("agent", 10)
        ]
        for (const e of events) yield* stores.events.emit(e)
        const expected = new Map(subs.map(([p, f]) => [JSON.stringify([p, f]), new Set(events.filter((e) => patternMatches(p, e.eventType) && filterMatches(f, e)).map((e) => e.eventId))]))
        yield* eventually(Effect.suspend(() => {
          for (const [k, want] of expected) if (got.get(k)!.size !== want.size) return Effect.fail("waiting")
          return Effect.void
        }))
        for (const [k, want] of expected) expect([...got.get(k)!].sort()).toEqual([...want].sort())
      }).pipe(Effect.scoped))

    it.live("delivered rows and the events no delivery row needs are pruned after the retention", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const dbCtx = yield* Layer.build(Layer.mergeAll(Database.layer({ url }), HostOptions.layer({ instanceId: "pruner" })))
        const sql = Context.get(dbCtx, SqlClient.SqlClient)
        const log = () => Effect.void
        const got: Array<number> = []
        const scope = yield* Scope.make()
        const bus = yield* EventBus.make({ log }).pipe(Scope.extend(scope), Effect.provide(dbCtx))
        yield* bus.subscribe("pruned", "company.created", null, (e) => Effect.sync(() => void got.push((e.payload as { n: number }).n))).pipe(Scope.extend(scope))
        for (let n = 0; n < 5; n++) yield* bus.emit(envelope("company.created", n))
        yield* eventually(Effect.flatMap(count(sql`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'delivered'`), (n) => (n === 5 ? Effect.void : Effect.fail("waiting"))))
        yield* Scope.close(scope, Exit.void)
        // the worker is gone: these stay pending
        const other = yield* EventBus.make({ log }).pipe(Effect.provide(dbCtx))
        for (let n = 5; n < 8; n++) yield* other.emit(envelope("company.created", n))
        // a bus with retention 0 prunes when it starts
        yield* EventBus.make({ log, retention: 0 }).pipe(Effect.provide(dbCtx))
        yield* eventually(Effect.flatMap(count(sql`SELECT COUNT(*) AS n FROM event_deliveries`), (n) => (n === 3 ? Effect.void : Effect.fail("pruning"))))
        yield* eventually(Effect.flatMap(count(sql`SELECT COUNT(*) AS n FROM events`), (n) => (n === 3 ? Effect.void : Effect.fail("pruning"))))
        expect(yield* count(sql`SELECT COUNT(*) AS n FROM event_deliveries WHERE status = 'pending'`)).toBe(3)
        expect(got).toEqual([0, 1, 2, 3, 4])
      }).pipe(Effect.scoped))

    it.live("two replicas on one database: one delivers a subscription at a time, each event once and in order; the other takes over on detach", () =>
      Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(db)
        const a = Context.get(yield* Layer.build(storesOn(url, "replica-a")), CapabilityStores)
        const b = Context.get(yield* Layer.build(storesOn(url, "replica-b")), CapabilityStores)
        const got = { a: [] as Array<number>, b: [] as Array<number> }
        const recorder = (xs: Array<number>): Deliver => (e) => Effect.sync(() => void xs.push((e.payload as { n: number }).n))
        const until = (ok: () => boolean) => eventually(Effect.suspend(() => (ok() ? Effect.void : Effect.fail("waiting"))), 15_000)
        // the same plugin's subscription is attached on both replicas; a claims it first
        const scopeA = yield* Scope.make()
        yield* Scope.extend(a.events.subscribe("rep", "company.created", null, recorder(got.a)), scopeA)
        yield* a.events.emit(envelope("company.created", 0))
        yield* until(() => got.a.length === 1)
        yield* b.events.subscribe("rep", "company.created", null, recorder(got.b))
        for (let n = 1; n < 200; n++) yield* (n % 2 === 0 ? a : b).events.emit(envelope("company.created", n))
        yield* until(() => got.a.length === 200)
        expect(got.a).toEqual(Array.from({ length: 200 }, (_, n) => n))
        expect(got.b).toEqual([])
        // a detaches (its worker stopped): its claim is released and b delivers the rest
        yield* Scope.close(scopeA, Exit.void)
        for (let n = 200; n < 250; n++) yield* a.events.emit(envelope("company.created", n))
        yield* until(() => got.b.length === 50)
        expect(got.b).toEqual(Array.from({ length: 50 }, (_, n) => 200 + n))
        expect(got.a.length).toBe(200)
      }).pipe(Effect.scoped))
  })
}
