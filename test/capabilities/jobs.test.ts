// Job scheduler (SPEC §5.4) through real worker processes, on SQLite and PostgreSQL: schedules,
// manual runs, retries, timeouts, no overlap, bad input; and two hosts on one Postgres claiming
// each due run exactly once.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Clock, Context, Duration, Effect, Exit, Layer } from "effect"
import * as Capabilities from "../../src/host/capabilities/index.js"
import * as JobScheduler from "../../src/host/capabilities/JobScheduler.js"
import * as Redactor from "../../src/host/capabilities/Redactor.js"
import { HostOptions } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import * as Database from "../../src/store/Database.js"
import { freshDatabaseUrl, testDbs, type TestDb } from "../db.js"
import { childPids, durableHostLayer, eventually, fixture, trusting } from "../helpers.js"

const PLUGIN = "jobs-basic"
type Env = JobScheduler.JobScheduler | PluginHost.PluginHost | SqlClient.SqlClient | HostOptions

/** Run `body` against a host + scheduler on a fresh database; no worker process outlives it. */
const withHost = <A, E>(db: TestDb, body: Effect.Effect<A, E, Env>) =>
  Effect.gen(function* () {
    const before = childPids()
    yield* body.pipe(Effect.provide(JobScheduler.layer.pipe(Layer.provideMerge(durableHostLayer(db)))))
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
  })

const startPlugin = Effect.gen(function* () {
  const host = yield* PluginHost.PluginHost
  yield* host.install(fixture(PLUGIN))
  yield* host.start(PLUGIN)
})

/** All runs of a job, oldest first. */
const runsOf = (jobKey: string) =>
  Effect.flatMap(JobScheduler.JobScheduler, (s) => s.runs(PLUGIN, jobKey, 1000)).pipe(
    Effect.map((rs) => [...rs].sort((a, b) => a.scheduledAt.localeCompare(b.scheduledAt) || a.attempt - b.attempt))
  )

/** Executions the worker recorded for a job: one state row per execution. */
const executions = (jobKey: string) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ state_key: string; value: string }>`SELECT state_key, value FROM plugin_state
      WHERE plugin_id = ${PLUGIN} AND state_key LIKE ${`exec:${jobKey}:%`}`
    return rows.map((r) => {
      const [, , scheduledAt, runId] = /^exec:([^:]+):(.+):([0-9a-f-]{36})$/.exec(r.state_key)!
      return { scheduledAt: scheduledAt!, runId: runId!, ...(JSON.parse(r.value) as { pid: number; trigger: string }) }
    })
  }).pipe(Effect.orDie)

const workerState = (stateKey: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ value: string }>`SELECT value FROM plugin_state WHERE plugin_id = ${PLUGIN} AND state_key = ${stateKey}`).pipe(
    Effect.map((rows) => (rows.length === 0 ? null : JSON.parse(rows[0]!.value) as unknown)),
    Effect.orDie
  )

const until = <A, E, R>(eff: Effect.Effect<A, E, R>, ok: (a: A) => boolean, timeoutMs = 10_000) =>
  eventually(Effect.filterOrFail(eff, ok, () => "condition not met yet"), timeoutMs)

const failureOf = <A, E>(exit: Exit.Exit<A, E>) => (Exit.isFailure(exit) ? Cause.squash(exit.cause) as { _tag: string; message: string; problems?: ReadonlyArray<string> } : null)
const ms = (iso: string | null) => (iso === null ? NaN : Date.parse(iso))

/** A complete host (own PluginHost, workers, scheduler) on the database at `url`. */
const replica = (url: string, instanceId: string) =>
  JobScheduler.layer.pipe(
    Layer.provideMerge(PluginHost.layer),
    Layer.provideMerge(Capabilities.layerSql),
    // trusted: a sandboxed worker has its own pid namespace, and the test tells the replicas' workers apart by pid
    Layer.provideMerge(Layer.mergeAll(HostOptions.layer({ instanceId, ...trusting("jobs-basic") }), Redactor.layer)),
    Layer.provideMerge(Database.layer({ url }))
  )

for (const db of testDbs) {
  describe(`job scheduler [${db.kind}]`, () => {
    it.live("jobs sync from the manifest (settings kept, removed jobs disabled); bad input is refused and changes nothing", () =>
      withHost(db, Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const scheduler = yield* JobScheduler.JobScheduler
        const host = yield* PluginHost.PluginHost
        // rows left by an earlier version of the plugin: settings survive, a vanished job is disabled
        yield* sql`INSERT INTO plugin_jobs (plugin_id, job_key, display_name, schedule, max_retries, status, created_at, updated_at)
          VALUES (${PLUGIN}, 'tick', 'Old tick', '* * * * *', 3, 'active', 1, 1), (${PLUGIN}, 'gone', 'Gone', NULL, NULL, 'active', 1, 1)`
        // runs of other host instances: a live one blocks its job (no overlap across replicas) and can
        // only be cancelled where it runs; one whose lease ran out (its host died) is marked failed
        const t = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO job_runs (id, plugin_id, job_key, trigger, scheduled_at, attempt, status, due_at, lease_until, started_at, owner, created_at)
          VALUES ('live-run', ${PLUGIN}, 'flaky', 'schedule', ${t}, 0, 'running', ${t}, ${t + 60_000}, ${t}, 'other-host', ${t}),
                 ('dead-run', ${PLUGIN}, 'hang', 'schedule', ${t - 60_000}, 0, 'running', ${t - 60_000}, ${t - 1}, ${t - 60_000}, 'dead-host', ${t - 60_000})`
        yield* startPlugin
        const jobs = yield* scheduler.jobs(PLUGIN)
        const byKey = Object.fromEntries(jobs.map((j) => [j.jobKey, j]))
        expect(jobs.map((j) => j.jobKey)).toEqual(["flaky", "gone", "hang", "long", "slow", "tick"])
        expect(byKey.gone!.status).toBe("disabled")
        expect(byKey.tick).toMatchObject({ status: "active", displayName: "Tick", schedule: "0 0 1 1 *", maxRetries: 3, timeoutMs: 300_000, everySeconds: null, scheduleError: null })
        expect(byKey.flaky).toMatchObject({ status: "active", schedule: null, maxRetries: 0, nextRunAt: null })
        // cron in UTC: the next 1 January, 00:00Z
        const now = yield* Clock.currentTimeMillis
        expect(byKey.tick!.nextRunAt).toBe(`${new Date(now).getUTCFullYear() + 1}-01-01T00:00:00.000Z`)
        // everySeconds overrides the cron while set; null gives the cron back
        const every = yield* scheduler.configure(PLUGIN, "tick", { everySeconds: 3600 })
        expect(every.everySeconds).toBe(3600)
        expect(ms(every.nextRunAt) % 3_600_000).toBe(0)
        expect(ms(every.nextRunAt) - now).toBeLessThanOrEqual(3_600_000)
        const back = yield* scheduler.configure(PLUGIN, "tick", { everySeconds: null, timeoutMs: 2000 })
        expect(back).toMatchObject({ everySeconds: null, timeoutMs: 2000, maxRetries: 3, nextRunAt: byKey.tick!.nextRunAt })

        // bad input: typed errors, nothing changes
        const bad = failureOf(yield* Effect.exit(scheduler.configure(PLUGIN, "tick", { maxRetries: -1, timeoutMs: 1.5, everySeconds: 0, bogus: 1 } as never)))
        expect(bad?._tag).toBe("JobInvalidInput")
        expect(bad?.problems).toHaveLength(4)
        expect(bad?.problems).toEqual(expect.arrayContaining([
          "maxRetries: must be an integer from 0 to 20, or null for the default (0)",
          "timeoutMs: must be an integer from 100 to 86400000 (ms), or null for the host default",
          "everySeconds: must be an integer from 1 to 2592000, or null to use the manifest's cron",
          "bogus: unknown setting (known: maxRetries, timeoutMs, everySeconds)"
        ]))
        expect(failureOf(yield* Effect.exit(scheduler.configure(PLUGIN, "tick", null as never)))?.problems).toEqual(["settings: must be an object"])
        expect((yield* scheduler.jobs(PLUGIN)).find((j) => j.jobKey === "tick")).toMatchObject({ maxRetries: 3, timeoutMs: 2000, everySeconds: null })
        expect(failureOf(yield* Effect.exit(scheduler.configure("nope", "tick", {})))?._tag).toBe("PluginNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.configure(PLUGIN, "nope", { maxRetries: 1 })))?._tag).toBe("JobNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.configure(PLUGIN, "gone", { maxRetries: 1 })))?._tag).toBe("JobNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "nope")))?._tag).toBe("JobNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "gone")))?._tag).toBe("JobNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.run("no-such-run")))?._tag).toBe("JobRunNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.cancel("no-such-run")))?._tag).toBe("JobRunNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.runs(PLUGIN, "tick", 0)))?._tag).toBe("JobInvalidInput")
        expect(failureOf(yield* Effect.exit(scheduler.runs(PLUGIN, "nope")))?._tag).toBe("JobNotFound")
        expect(failureOf(yield* Effect.exit(scheduler.runs("nope")))?._tag).toBe("PluginNotFound")

        expect(failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "flaky")))?._tag).toBe("JobBusy")
        expect(failureOf(yield* Effect.exit(scheduler.cancel("live-run")))?.message).toMatch(/other-host/)
        const dead = yield* until(scheduler.run("dead-run"), (r) => r.status !== "running")
        expect(dead).toMatchObject({ status: "failed", owner: "dead-host", error: expect.stringMatching(/abandoned/) })

        yield* host.stop(PLUGIN)
        expect(failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "tick")))?._tag).toBe("JobUnavailable")
        expect((yield* scheduler.runs(PLUGIN)).map((r) => r.id).sort()).toEqual(["dead-run", "live-run"])
      })))

    it.live("manual trigger; scheduled runs happen on time, once per slot, and are recorded", () =>
      withHost(db, Effect.gen(function* () {
        const scheduler = yield* JobScheduler.JobScheduler
        const { instanceId } = yield* HostOptions
        yield* startPlugin
        const manual = yield* scheduler.trigger(PLUGIN, "tick")
        expect(manual).toMatchObject({ pluginId: PLUGIN, jobKey: "tick", trigger: "manual", status: "queued", attempt: 0, owner: instanceId })
        const done = yield* until(scheduler.run(manual.id), (r) => r.status === "succeeded")
        expect(done.error).toBeNull()
        expect(done.durationMs).toBeGreaterThanOrEqual(0)
        expect(ms(done.startedAt)).toBeGreaterThanOrEqual(ms(manual.createdAt))
        expect(yield* executions("tick")).toEqual([expect.objectContaining({ runId: manual.id, trigger: "manual", scheduledAt: manual.scheduledAt })])

        yield* scheduler.configure(PLUGIN, "tick", { everySeconds: 1 })
        const scheduled = (yield* until(runsOf("tick"), (rs) => rs.filter((r) => r.trigger === "schedule" && r.status === "succeeded").length >= 3))
          .filter((r) => r.trigger === "schedule")
        yield* scheduler.configure(PLUGIN, "tick", { everySeconds: null })
        const first3 = scheduled.slice(0, 3)
        for (const [i, r] of first3.entries()) {
          expect(r).toMatchObject({ status: "succeeded", attempt: 0, owner: instanceId, error: null })
          expect(ms(r.scheduledAt) % 1000).toBe(0)
          // consecutive slots (a tick loop stalled past a whole second on a loaded machine fires the
          // missed slot once, so a later slot is allowed too: still whole seconds apart)
          if (i > 0) {
            const gap = ms(r.scheduledAt) - ms(first3[i - 1]!.scheduledAt)
            expect(gap % 1000).toBe(0)
            expect(gap).toBeGreaterThanOrEqual(1000)
          }
          // on time: started within the tick interval (plus slack for a loaded machine)
          const lateness = ms(r.startedAt) - ms(r.scheduledAt)
          expect(lateness).toBeGreaterThanOrEqual(0)
          expect(lateness).toBeLessThan(5000)
        }
        // the worker saw each scheduled run exactly once, with its run id and scheduled time
        const seen = yield* executions("tick")
        for (const r of first3) {
          expect(seen.filter((e) => e.scheduledAt === r.scheduledAt)).toEqual([expect.objectContaining({ runId: r.id, trigger: "schedule" })])
        }
      })))

    it.live("a failed run retries with exponential backoff up to maxRetries (default 0: no retry)", () =>
      withHost(db, Effect.gen(function* () {
        const scheduler = yield* JobScheduler.JobScheduler
        yield* startPlugin
        const once = yield* scheduler.trigger(PLUGIN, "flaky")
        const failed = yield* until(scheduler.run(once.id), (r) => r.status !== "queued" && r.status !== "running")
        expect(failed).toMatchObject({ status: "failed", error: "flaky failure 1" })
        // a retry would have been inserted with the failure, in the same transaction
        expect(yield* runsOf("flaky")).toHaveLength(1)

        yield* scheduler.configure(PLUGIN, "flaky", { maxRetries: 3 })
        const first = yield* scheduler.trigger(PLUGIN, "flaky")
        const chain = yield* until(
          Effect.map(runsOf("flaky"), (rs) => rs.filter((r) => r.scheduledAt === first.scheduledAt)),
          (rs) => rs.some((r) => r.status === "succeeded"),
          15_000
        )
        expect(chain.map((r) => [r.attempt, r.trigger, r.status, r.error])).toEqual([
          [0, "manual", "failed", "flaky failure 2"],
          [1, "retry", "failed", "flaky failure 3"],
          [2, "retry", "succeeded", null]
        ])
        // backoff 1 s, then 2 s (JobScheduler.retryDelay)
        const gap1 = ms(chain[1]!.startedAt) - ms(chain[0]!.finishedAt)
        const gap2 = ms(chain[2]!.startedAt) - ms(chain[1]!.finishedAt)
        expect(gap1).toBeGreaterThanOrEqual(1000)
        expect(gap1).toBeLessThan(6000)
        expect(gap2).toBeGreaterThanOrEqual(2000)
        expect(ms(chain[1]!.dueAt) - ms(chain[0]!.finishedAt)).toBe(1000)
        expect(yield* executions("flaky")).toHaveLength(4)
      })))

    it.live("a run over its timeout is timed_out and its handler interrupted; the next run still happens; cancel", () =>
      withHost(db, Effect.gen(function* () {
        const scheduler = yield* JobScheduler.JobScheduler
        yield* startPlugin
        yield* scheduler.configure(PLUGIN, "slow", { timeoutMs: 500, everySeconds: 1 })
        const rs = yield* until(runsOf("slow"), (rs) => rs.some((r) => r.status === "succeeded"))
        yield* scheduler.configure(PLUGIN, "slow", { everySeconds: null })
        const timedOut = rs[0]!
        expect(timedOut).toMatchObject({ trigger: "schedule", status: "timed_out", error: "timed out after 500 ms", attempt: 0 })
        // (a timer may fire a millisecond early by the wall clock)
        expect(timedOut.durationMs).toBeGreaterThanOrEqual(499)
        expect(timedOut.durationMs).toBeLessThan(10_000)
        const next = rs.find((r) => r.status === "succeeded")!
        expect(ms(next.scheduledAt)).toBeGreaterThan(ms(timedOut.scheduledAt))
        // the host call was interrupted: $/cancelRequest reached the worker and interrupted the handler
        yield* until(workerState(`interrupted:slow:${timedOut.id}`), (v) => v === true)

        const hang = yield* scheduler.trigger(PLUGIN, "hang")
        yield* until(scheduler.run(hang.id), (r) => r.status === "running")
        const busy = failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "hang")))
        expect(busy?._tag).toBe("JobBusy")
        const cancelled = yield* scheduler.cancel(hang.id)
        expect(cancelled).toMatchObject({ status: "cancelled", error: "cancelled by request" })
        yield* until(workerState(`interrupted:hang:${hang.id}`), (v) => v === true)
        expect(failureOf(yield* Effect.exit(scheduler.cancel(hang.id)))?._tag).toBe("JobRunNotCancellable")
        // the job is free again
        const again = yield* scheduler.trigger(PLUGIN, "hang")
        yield* scheduler.cancel(again.id)
      })))

    it.live("a run in flight when the host shuts down is recorded cancelled", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.scoped(Effect.gen(function* () {
          const url = yield* freshDatabaseUrl(db)
          const runId = yield* Effect.scoped(Effect.gen(function* () {
            const ctx = yield* Layer.build(replica(url, "doomed"))
            yield* Effect.provide(startPlugin, ctx)
            const scheduler = Context.get(ctx, JobScheduler.JobScheduler)
            const run = yield* scheduler.trigger(PLUGIN, "hang")
            yield* until(scheduler.run(run.id), (r) => r.status === "running")
            return run.id
          }))
          // the host is gone; read what it recorded
          const after = yield* Effect.scoped(Effect.gen(function* () {
            const ctx = yield* Layer.build(Database.layer({ url }))
            const sql = Context.get(ctx, SqlClient.SqlClient)
            return yield* sql<{ status: string; error: string }>`SELECT status, error FROM job_runs WHERE id = ${runId}`
          }))
          expect(after).toEqual([{ status: "cancelled", error: "cancelled: the host is shutting down" }])
        }))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("no overlap: a slot that comes due while the job runs is skipped", () =>
      withHost(db, Effect.gen(function* () {
        const scheduler = yield* JobScheduler.JobScheduler
        yield* startPlugin
        yield* scheduler.configure(PLUGIN, "long", { everySeconds: 1 })
        const running = yield* until(runsOf("long"), (rs) => rs.some((r) => r.status === "running"))
        const busy = failureOf(yield* Effect.exit(scheduler.trigger(PLUGIN, "long")))
        expect(busy?._tag).toBe("JobBusy")
        const rs = yield* until(runsOf("long"), (rs) => rs.filter((r) => r.status === "succeeded").length >= 2, 15_000)
        yield* scheduler.configure(PLUGIN, "long", { everySeconds: null })
        const finished = rs.filter((r) => r.status === "succeeded")
        expect(running.length).toBeGreaterThanOrEqual(1)
        for (let i = 1; i < finished.length; i++) {
          // each run started after the previous one finished, and the slot(s) in between left no row
          expect(ms(finished[i]!.startedAt)).toBeGreaterThanOrEqual(ms(finished[i - 1]!.finishedAt))
          expect(ms(finished[i]!.scheduledAt) - ms(finished[i - 1]!.scheduledAt)).toBeGreaterThanOrEqual(2000)
        }
        expect(rs.every((r) => r.trigger === "schedule" && r.attempt === 0)).toBe(true)
        expect(yield* workerState("long:max")).toBe(1)
      })))
  })
}

const pg = testDbs.find((d) => d.kind === "pg")

describe("job scheduler: replicas on one Postgres", () => {
  if (!pg) {
    it.skip("two hosts claim each due run exactly once (needs GANTRY_TEST_PG_URL)", () => {})
    console.warn("[gantry tests] replica job test skipped: it needs PostgreSQL (GANTRY_TEST_PG_URL)")
    return
  }
  it.live("two hosts, each with its own worker, run a job due every second: each due run executes exactly once", () =>
    Effect.gen(function* () {
      const before = childPids()
      yield* Effect.scoped(Effect.gen(function* () {
        const url = yield* freshDatabaseUrl(pg)
        const hosts = [yield* Layer.build(replica(url, "replica-a")), yield* Layer.build(replica(url, "replica-b"))]
        for (const ctx of hosts) {
          const host = Context.get(ctx, PluginHost.PluginHost)
          yield* host.install(fixture(PLUGIN))
          yield* host.start(PLUGIN)
        }
        const [a, b] = hosts.map((ctx) => Context.get(ctx, JobScheduler.JobScheduler))
        const sql = Context.get(hosts[0]!, SqlClient.SqlClient)
        yield* a!.configure(PLUGIN, "tick", { everySeconds: 1 })
        const t0 = yield* Clock.currentTimeMillis
        // the observation window itself, not a settle-sleep
        yield* Effect.sleep(Duration.seconds(20))
        yield* b!.configure(PLUGIN, "tick", { everySeconds: null })
        const t1 = yield* Clock.currentTimeMillis
        yield* until(sql<{ n: number }>`SELECT COUNT(*) AS n FROM job_runs WHERE status IN ('queued', 'running')`, (r) => Number(r[0]!.n) === 0)

        const rows = yield* sql<{ scheduled_at: number; owner: string; status: string; attempt: number; trigger: string; id: string }>`
          SELECT id, scheduled_at, owner, status, attempt, trigger FROM job_runs WHERE plugin_id = ${PLUGIN} AND job_key = 'tick'
          ORDER BY scheduled_at`
        const slots = rows.map((r) => Number(r.scheduled_at))
        const execs = yield* Effect.provide(executions("tick"), Context.pick(SqlClient.SqlClient)(hosts[0]!))
        const owners = new Map<string, number>()
        for (const r of rows) owners.set(r.owner, (owners.get(r.owner) ?? 0) + 1)
        console.info(`[jobs replicas] ${rows.length} runs in ${t1 - t0} ms; by owner: ${JSON.stringify(Object.fromEntries(owners))}; worker pids: ${[...new Set(execs.map((e) => e.pid))].join(", ")}`)

        expect(rows.every((r) => r.status === "succeeded" && r.attempt === 0 && r.trigger === "schedule")).toBe(true)
        // one row per scheduled time, and no scheduled time missing between the first and the last
        expect(new Set(slots).size).toBe(slots.length)
        // (whole seconds apart: on a loaded machine a slot can be skipped — both replicas' tick loops
        // stalled past it, or it came due while the previous run was still active, no overlap — and a
        // skipped slot leaves no row; what may never happen is a slot run twice, checked below)
        for (let i = 1; i < slots.length; i++) {
          expect((slots[i]! - slots[i - 1]!) % 1000).toBe(0)
          expect(slots[i]! - slots[i - 1]!).toBeGreaterThanOrEqual(1000)
        }
        // the window is covered, except the partial first and last second
        expect(slots[0]!).toBeLessThanOrEqual(t0 + 2000)
        expect(slots[slots.length - 1]!).toBeGreaterThanOrEqual(t1 - 2000)
        expect(slots.length).toBeGreaterThanOrEqual(18)
        // each due run executed exactly once, across both workers
        const perSlot = new Map<string, number>()
        for (const e of execs) perSlot.set(e.scheduledAt, (perSlot.get(e.scheduledAt) ?? 0) + 1)
        expect([...perSlot.values()].every((n) => n === 1)).toBe(true)
        expect([...perSlot.keys()].sort()).toEqual(slots.map((s) => new Date(s).toISOString()))
        expect(new Set(execs.map((e) => e.runId))).toEqual(new Set(rows.map((r) => r.id)))
        // both replicas took part (jittered ticks interleave them)
        expect([...owners.keys()].sort()).toEqual(["replica-a", "replica-b"])
        expect(new Set(execs.map((e) => e.pid)).size).toBe(2)
      }))
      expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    }), 60_000)
})
