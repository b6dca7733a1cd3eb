// bwrap-sandbox acceptance 3 (chaos), the environments chaos test with the real bwrap provider and
// fewer runs: 30 runs through the host while runs are cancelled at random and the provider worker is
// SIGKILLed at random moments. Afterwards the sweeper must converge: no lease directory left under any
// workspaceRoot, every lease and run terminal, no sandbox process left on the host.
// GANTRY_CHAOS_SEED=<n> replays a seed (printed with the counts).
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { rmSync } from "node:fs"
import { join } from "node:path"
import * as Core from "../../plugins/bwrap-sandbox/src/core.js"
import { Environments, type Environment } from "../../src/environments/Environments.js"
import { TERMINAL } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { Agents, type Agent } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs, TERMINAL_RUN, type RunStatus } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { appLayer, childPids, eventually } from "../helpers.js"
import { bwrap, bwrapPluginDir, freshRoot, PLUGIN, processesWith } from "./helpers.js"

const RUNS = 30
const IN_FLIGHT = 4
const CANCEL_RATE = 0.2
/** Worker SIGKILLs come every KILL_MIN_MS..KILL_MAX_MS while runs are in flight (bwrap runs are short). */
const KILL_MIN_MS = 150
const KILL_MAX_MS = 700
const CONVERGE_MS = 60_000

/** mulberry32: small, seedable. */
const prng = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
type Rng = () => number
const int = (rng: Rng, lo: number, hi: number) => lo + Math.floor(rng() * (hi - lo + 1))
const pick = <A>(rng: Rng, xs: ReadonlyArray<A>): A => xs[Math.floor(rng() * xs.length)]!

const envSpecs = [
  { name: "calm", knobs: {}, host: {} },
  { name: "destroy-on-failure", knobs: { pids: 64, memoryMiB: 1024 }, host: { onFailure: "destroy" } },
  { name: "host-net", knobs: { network: "host", timeoutMs: 2_000 }, host: { ttlMs: 20_000 } }
] as const

const agentSpecs = [
  { name: "echo", command: "sh", args: ["-c", "echo hello > out.txt; cat out.txt"], timeoutMs: 5_000, weight: 3 },
  { name: "sleepy", command: "sh", args: ["-c", "echo start; sleep 0.3; echo done"], timeoutMs: 5_000, weight: 3 },
  { name: "failing", command: "sh", args: ["-c", "echo doomed >&2; exit 3"], timeoutMs: 5_000, weight: 2 },
  // leaves a background child behind: the sandbox's pid namespace takes it when the shell ends
  { name: "forker", command: "sh", args: ["-c", "sleep 25 & echo spawned; sleep 0.2"], timeoutMs: 5_000, weight: 2 },
  { name: "overrun", command: "sh", args: ["-c", "echo slow; sleep 20"], timeoutMs: 700, weight: 1 },
  { name: "long", command: "sh", args: ["-c", "echo long; sleep 3; echo end"], timeoutMs: 8_000, weight: 2 }
] as const

const tally = (xs: ReadonlyArray<string>) => {
  const out: Record<string, number> = {}
  for (const x of xs) out[x] = (out[x] ?? 0) + 1
  return out
}

const db = testDbs.find((d) => d.kind === "sqlite")!

describe.skipIf(!bwrap.ok)("chaos through the real bwrap-sandbox worker [sqlite]", () => {
  it.live(`${RUNS} runs under random cancels and worker SIGKILLs → no workspace, lease or process leaks`, () => {
    const seed = Number(process.env.GANTRY_CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31))
    const rng = prng(seed)
    const { dir, workspaceRoot } = freshRoot()
    const marker = `gantry-bwrap-chaos-${seed}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
    const roots = envSpecs.map((s) => join(workspaceRoot, s.name))
    const t0 = Date.now()
    const before = childPids()
    return Effect.gen(function* () {
      yield* Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const runs = yield* Runs
        const sql = yield* SqlClient.SqlClient
        yield* host.install(bwrapPluginDir)
        yield* host.start(PLUGIN)
        const company = yield* (yield* Companies).create({ name: `bwrap-chaos-${seed}` })
        const environments = yield* Environments
        const envs: Array<Environment> = []
        for (const spec of envSpecs) {
          envs.push(yield* environments.create(company.id, {
            name: spec.name, driver: "sandbox",
            config: { provider: "bwrap-sandbox/bwrap", workspaceRoot: join(workspaceRoot, spec.name), env: { GANTRY_CHAOS_MARKER: marker }, ...spec.knobs, ...spec.host }
          }))
        }
        const agentsSvc = yield* Agents
        const agents: Array<Agent> = []
        for (const a of agentSpecs) {
          const agent = yield* agentsSvc.create(company.id, { name: a.name, command: a.command, args: [...a.args], timeoutMs: a.timeoutMs })
          for (let i = 0; i < a.weight; i++) agents.push(agent)
        }
        // the plan is drawn up front so a seed replays the same runs, cancels and kill intervals
        const plan = Array.from({ length: RUNS }, () => ({
          env: pick(rng, envs),
          agent: pick(rng, agents),
          cancelAfterMs: rng() < CANCEL_RATE ? int(rng, 0, 800) : null
        }))
        const killGaps = Array.from({ length: 200 }, () => int(rng, KILL_MIN_MS, KILL_MAX_MS))

        const counts = { kills: 0, cancelsRequested: 0, startRejected: 0 }
        const finals: Array<RunStatus> = []
        const workerUp = Effect.map(host.status(PLUGIN), (s) => s.workerStatus === "running" && s.pid !== null)
        const killer = yield* Effect.fork(Effect.gen(function* () {
          for (const gap of killGaps) {
            yield* Effect.sleep(Duration.millis(gap))
            const s = yield* host.status(PLUGIN)
            if (s.workerStatus !== "running" || s.pid === null) continue
            const pid = s.pid
            const killed = yield* Effect.sync(() => {
              try {
                process.kill(pid, "SIGKILL")
                return true
              } catch {
                return false
              }
            })
            if (!killed) continue
            counts.kills++
            yield* eventually(Effect.filterOrFail(host.status(PLUGIN), (x) => x.workerStatus === "running" && x.pid !== pid), 15_000)
          }
        }))

        const tRuns = Date.now()
        yield* Effect.forEach(plan, (p) =>
          Effect.gen(function* () {
            yield* Effect.ignore(eventually(Effect.filterOrFail(workerUp, (up) => up), 15_000))
            const started = yield* Effect.either(runs.start(company.id, p.agent.id, { environmentId: p.env.id }))
            if (started._tag === "Left") {
              counts.startRejected++
              return
            }
            const id = started.right.id
            const canceller = p.cancelAfterMs === null ? undefined : yield* Effect.fork(Effect.gen(function* () {
              yield* Effect.sleep(Duration.millis(p.cancelAfterMs!))
              counts.cancelsRequested++
              yield* Effect.ignore(runs.cancel(id))
            }))
            const done = yield* runs.await(id)
            if (canceller) yield* Fiber.interrupt(canceller)
            finals.push(done.status)
          }), { concurrency: IN_FLIGHT, discard: true })
        const runsMs = Date.now() - tRuns
        yield* Fiber.interrupt(killer)

        const tConverge = Date.now()
        const state = Effect.gen(function* () {
          const dirs: Record<string, number> = {}
          for (const [i, spec] of envSpecs.entries()) dirs[spec.name] = (yield* Effect.promise(() => Core.listLeases(roots[i]!))).length
          const leaseRows = yield* sql<{ status: string; n: number }>`SELECT status, COUNT(*) AS n FROM leases GROUP BY status`
          const runRows = yield* sql<{ status: string; n: number }>`SELECT status, COUNT(*) AS n FROM runs GROUP BY status`
          return {
            dirs,
            dirsTotal: Object.values(dirs).reduce((a, b) => a + b, 0),
            leases: Object.fromEntries(leaseRows.map((r) => [r.status, Number(r.n)])),
            runs: Object.fromEntries(runRows.map((r) => [r.status, Number(r.n)])),
            processes: processesWith(marker)
          }
        })
        const converged = (s: Effect.Effect.Success<typeof state>) =>
          s.dirsTotal === 0 && s.processes.length === 0 &&
          Object.keys(s.leases).every((k) => (TERMINAL as ReadonlyArray<string>).includes(k)) &&
          Object.keys(s.runs).every((k) => (TERMINAL_RUN as ReadonlyArray<string>).includes(k))
        const final = yield* eventually(Effect.filterOrFail(state, converged), CONVERGE_MS).pipe(Effect.catchAll(() => state))
        const convergeMs = Date.now() - tConverge
        const leaseDetail = yield* sql<{ reason: string | null; attempts: number }>`SELECT failure_reason AS reason, cleanup_attempts AS attempts FROM leases`
        const errorRows = yield* sql<{ error: string | null }>`SELECT error FROM runs WHERE error IS NOT NULL`
        console.log(`[bwrap-chaos] ${JSON.stringify({
          seed,
          runs: RUNS,
          inFlight: IN_FLIGHT,
          workerKills: counts.kills,
          cancelsRequested: counts.cancelsRequested,
          startRejected: counts.startRejected,
          runStatuses: tally(finals),
          runErrors: tally(errorRows.map((r) => (r.error ?? "").replace(/[0-9a-f]{8}-[0-9a-f-]{27}|bwrap-[0-9a-f]{12}|\d+ ms|pid \d+/g, "…").slice(0, 100))),
          leaseStatuses: final.leases,
          cleanupRetries: leaseDetail.reduce((n, l) => n + Number(l.attempts), 0),
          leaseDirectoriesLeft: final.dirs,
          leftoverProcesses: final.processes,
          timingsMs: { runs: runsMs, converge: convergeMs, total: Date.now() - t0 }
        })}`)

        expect(finals.length + counts.startRejected).toBe(RUNS)
        expect(final.dirsTotal).toBe(0)
        expect(final.processes).toEqual([])
        expect(Object.keys(final.leases).filter((k) => !(TERMINAL as ReadonlyArray<string>).includes(k))).toEqual([])
        expect(Object.keys(final.runs).filter((k) => !(TERMINAL_RUN as ReadonlyArray<string>).includes(k))).toEqual([])
        expect(Object.values(final.runs).reduce((a, b) => a + b, 0)).toBe(RUNS - counts.startRejected)
        // the faults really happened
        expect(counts.kills).toBeGreaterThan(1)
      }).pipe(
        Effect.scoped,
        Effect.provide(appLayer(db, {
          host: { restartBaseMs: 50, restartMaxMs: 200, crashLimit: 1_000_000, callTimeoutMs: 5_000 },
          leases: { sweepIntervalMs: 100, cleanupBaseMs: 20, deferMs: 50 },
          runs: { pollIntervalMs: 200 }
        }))
      )
      yield* eventually(Effect.filterOrFail(Effect.sync(() => childPids().filter((p) => !before.includes(p))), (l) => l.length === 0), 10_000)
      expect(processesWith(marker)).toEqual([])
    }).pipe(Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true }))))
  }, 150_000)
})
