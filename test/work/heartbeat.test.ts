// Heartbeat scheduler (SPEC §10): one run per tick, never two at once per agent; a slow run makes
// ticks skip; a run past its timeout ends timed_out with its lease torn down.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, Schedule } from "effect"
import { Environments } from "../../src/environments/Environments.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { Leases, TERMINAL } from "../../src/environments/Leases.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs, TERMINAL_RUN } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { childPids, eventually } from "../helpers.js"
import { FakeSandboxControl, twinApp } from "./support.js"

type RunRow = { id: string; status: string; trigger: string; scheduled_at: number | null; started_at: number | null; finished_at: number | null }

const runRows = (agentId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<RunRow>`SELECT id, status, trigger, scheduled_at, started_at, finished_at FROM runs WHERE agent_id = ${agentId} ORDER BY created_at`.pipe(
      Effect.orDie,
      Effect.map((rows) => rows.map((r) => ({
        ...r,
        scheduled_at: r.scheduled_at === null ? null : Number(r.scheduled_at),
        started_at: r.started_at === null ? null : Number(r.started_at),
        finished_at: r.finished_at === null ? null : Number(r.finished_at)
      })))
    ))

/**
 * Watch an agent's heartbeat for `ms`: samples how many of its runs are active at once (every 20 ms),
 * then turns the heartbeat off and waits for the last run to end.
 */
const observe = (agentId: string, ms: number) =>
  Effect.gen(function* () {
    const agents = yield* Agents
    let maxActive = 0
    const sampler = yield* Effect.fork(Effect.repeat(
      Effect.map(runRows(agentId), (rows) => {
        maxActive = Math.max(maxActive, rows.filter((r) => r.status === "queued" || r.status === "running").length)
      }),
      Schedule.spaced("20 millis")
    ))
    const t0 = yield* Clock.currentTimeMillis
    yield* Effect.sleep(Duration.millis(ms))
    yield* agents.update(agentId, { heartbeat: null })
    const t1 = yield* Clock.currentTimeMillis
    yield* eventually(Effect.filterOrFail(runRows(agentId), (rows) => rows.every((r) => TERMINAL_RUN.includes(r.status as never))), 40_000)
    yield* Fiber.interrupt(sampler)
    return { rows: yield* runRows(agentId), maxActive, t0, t1 }
  })

/** Runs ordered by start never overlap: each starts after the previous one finished. */
const expectNoOverlap = (rows: ReadonlyArray<RunRow>) => {
  const sorted = [...rows].sort((a, b) => a.started_at! - b.started_at!)
  for (let i = 1; i < sorted.length; i++) expect(sorted[i]!.started_at!).toBeGreaterThanOrEqual(sorted[i - 1]!.finished_at!)
}

for (const db of testDbs) {
  describe(`heartbeat scheduler [${db.kind}]`, () => {
    it.live("everySeconds: 1 → one run per tick, distinct scheduled_at, never two at once", () =>
      Effect.gen(function* () {
        const co = yield* (yield* Companies).create({ name: `co-${Math.random().toString(36).slice(2, 8)}` })
        yield* (yield* OperatorPolicy).grantLocal(co.id)
        const agent = yield* (yield* Agents).create(co.id, { name: "ticker", command: "true", heartbeat: { everySeconds: 1 } })
        const { rows, maxActive, t0, t1 } = yield* observe(agent.id, 5_500)
        const elapsed = t1 - t0
        expect(maxActive).toBeLessThanOrEqual(1)
        // ticks ≈ elapsed seconds (the scheduler polls every 100 ms, so a tick may come a little late,
        // and on a loaded machine the lateness adds up over a few ticks)
        expect(rows.length).toBeGreaterThanOrEqual(Math.floor(elapsed / 1_000) - 2)
        expect(rows.length).toBeLessThanOrEqual(Math.floor(elapsed / 1_000) + 1)
        expect(rows.length).toBeGreaterThanOrEqual(3)
        for (const r of rows) {
          expect(r.trigger).toBe("heartbeat")
          expect(r.status).toBe("succeeded")
          expect(r.scheduled_at).not.toBeNull()
        }
        const scheduled = rows.map((r) => r.scheduled_at!)
        expect(new Set(scheduled).size).toBe(rows.length)
        for (let i = 1; i < scheduled.length; i++) expect(scheduled[i]! - scheduled[i - 1]!).toBeGreaterThanOrEqual(1_000)
        expectNoOverlap(rows)
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("a command slower than the interval → ticks skipped while it runs, no overlap", () =>
      Effect.gen(function* () {
        const co = yield* (yield* Companies).create({ name: `co-${Math.random().toString(36).slice(2, 8)}` })
        yield* (yield* OperatorPolicy).grantLocal(co.id)
        const agent = yield* (yield* Agents).create(co.id, { name: "slow", command: "sleep", args: ["2.2"], heartbeat: { everySeconds: 1 } })
        const { rows, maxActive, t0, t1 } = yield* observe(agent.id, 6_000)
        const ticks = Math.floor((t1 - t0) / 1_000)
        expect(maxActive).toBe(1)
        expect(rows.length).toBeGreaterThanOrEqual(2)
        // a run covers ~2 further ticks, which are skipped rather than queued behind it
        expect(rows.length).toBeLessThan(ticks)
        expect(rows.length).toBeLessThanOrEqual(3)
        expect(new Set(rows.map((r) => r.scheduled_at)).size).toBe(rows.length)
        for (const r of rows) expect(r.status).toBe("succeeded")
        expectNoOverlap(rows)
        const starts = rows.map((r) => r.started_at!).sort((a, b) => a - b)
        for (let i = 1; i < starts.length; i++) expect(starts[i]! - starts[i - 1]!).toBeGreaterThanOrEqual(2_200)
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("a run past its timeout ends timed_out, its lease torn down (sandbox and local)", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.gen(function* () {
          const control = yield* FakeSandboxControl
          const leases = yield* Leases
          const co = yield* (yield* Companies).create({ name: `co-${Math.random().toString(36).slice(2, 8)}` })
          yield* (yield* OperatorPolicy).grantLocal(co.id)
          const sandbox = yield* (yield* Environments).create(co.id, { name: "sandbox", driver: "sandbox", config: control.environmentConfig() })
          const agents = yield* Agents
          const agent = yield* agents.create(co.id, {
            name: "overrunner", command: "sleep", args: ["30"], timeoutMs: 400, defaultEnvironmentId: sandbox.id, heartbeat: { everySeconds: 1 }
          })
          // the first heartbeat run times out; then the schedule is switched off
          yield* eventually(Effect.filterOrFail(runRows(agent.id), (rows) => rows.some((r) => r.status === "timed_out")), 15_000)
          yield* agents.update(agent.id, { heartbeat: null })
          const rows = yield* eventually(Effect.filterOrFail(runRows(agent.id), (rs) => rs.every((r) => TERMINAL_RUN.includes(r.status as never))), 15_000)
          for (const r of rows) {
            expect(r.status).toBe("timed_out")
            expect(r.finished_at! - r.started_at!).toBeLessThan(10_000)
            const ls = yield* leases.list({ runId: r.id })
            expect(ls).toHaveLength(1)
            expect(TERMINAL).toContain(ls[0]!.status)
          }
          expect(yield* control.inventory()).toEqual([])
          expect(yield* control.activeProcesses).toBe(0)

          // the same on the local driver: the process is killed, the run timed_out
          const local = yield* (yield* Environments).local(co.id)
          const localAgent = yield* agents.create(co.id, { name: "local-overrunner", command: "sleep", args: ["30"], timeoutMs: 300, defaultEnvironmentId: local.id })
          const svc = yield* Runs
          const run = yield* svc.start(co.id, localAgent.id)
          const done = yield* svc.await(run.id)
          expect(done.status).toBe("timed_out")
          expect(done.error).toContain("timed out")
          expect(done.leaseId).toBeNull()
        }).pipe(Effect.scoped, Effect.provide(twinApp(db)))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))
  })
}
