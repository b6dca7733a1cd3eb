// Environments acceptance 2 (chaos): 200 runs through the real fake-sandbox worker while its knobs
// inject failures, hangs, lost acquire answers and expiring sandboxes, runs are cancelled at random
// and the worker is SIGKILLed at random moments. Afterwards the sweeper must converge: no live
// sandbox in any inventory, every lease and run terminal, no sandbox command left running.
// GANTRY_CHAOS_SEED=<n> replays a seed (printed with the counts).
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Environments, type Environment } from "../../src/environments/Environments.js"
import { TERMINAL } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { fakeSandboxPluginDir, readInventory, type FakeSandboxKnobs } from "../../src/testing/fakeSandbox.js"
import { Agents, type Agent } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs, TERMINAL_RUN, type RunStatus } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { appLayer, childPids, eventually } from "../helpers.js"

const RUNS = 200
const IN_FLIGHT = 12
const CANCEL_RATE = 0.15
/** Worker SIGKILLs come every KILL_MIN_MS..KILL_MAX_MS while runs are in flight. */
const KILL_MIN_MS = 300
const KILL_MAX_MS = 2_500
/** How long the sweeper gets to converge once the runs are over (a hung provider call takes 30 s + timeoutMs). */
const CONVERGE_MS = 60_000

/** mulberry32: small, seedable, good enough to pick faults. */
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
const some = <A>(rng: Rng, xs: ReadonlyArray<A>, min: number): Array<A> => {
  const chosen = xs.filter(() => rng() < 0.6)
  for (const x of xs) if (chosen.length < min && !chosen.includes(x)) chosen.push(x)
  return chosen
}

interface EnvSpec {
  readonly name: string
  readonly knobs: FakeSandboxKnobs
  /** Host-side fields of the environment config (timeoutMs, ttlMs, onFailure). */
  readonly host: Record<string, unknown>
}

/** Every fault kind appears; which ops, how often and how slow is random. */
const envSpecs = (rng: Rng): Array<EnvSpec> => [
  // failTimes stays ≤ 2: a lease's cleanup meets at most acquire (re-acquire of a lost answer) and one
  // teardown op, so its injected failures stay under the sweeper's attempt cap of 5
  ...["flaky", "flaky-2"].map((name) => ({
    name,
    knobs: { failOn: some(rng, ["acquire", "realize", "execute", "release", "destroy"] as const, 3), failTimes: int(rng, 1, 2), latencyMs: int(rng, 0, 40) },
    host: {}
  })),
  {
    // each op hangs once; the host gives up after timeoutMs + 30 s unless a kill or cancel ends it first
    name: "hangs",
    knobs: { hangOn: some(rng, ["acquire", "realize", "execute", "release"] as const, 2), failTimes: 1, latencyMs: int(rng, 0, 20) },
    host: { timeoutMs: int(rng, 1, 1_000) }
  },
  { name: "lost-acquire", knobs: { loseAcquireResponse: true, failTimes: 1, latencyMs: int(rng, 0, 30) }, host: {} },
  // sandboxes vanish under running commands
  { name: "expiring", knobs: { expireAfterMs: int(rng, 150, 700), latencyMs: int(rng, 0, 20) }, host: {} },
  // the host-enforced TTL: the sweeper destroys leases (and their commands) that outlive it
  { name: "short-ttl", knobs: { latencyMs: int(rng, 0, 20) }, host: { ttlMs: int(rng, 800, 2_000) } },
  {
    name: "destroy-on-failure",
    knobs: { failOn: some(rng, ["release", "destroy", "execute"] as const, 2), failTimes: int(rng, 1, 3), latencyMs: int(rng, 0, 30) },
    host: { onFailure: "destroy" }
  },
  { name: "calm", knobs: { latencyMs: int(rng, 0, 25) }, host: {} }
]

// every command that could leak sleeps 60 s, far past the test, so a leaked one is still there to be found
const agentSpecs = [
  { name: "echo", command: "sh", args: ["-c", "echo hello"], timeoutMs: 3_000, weight: 3 },
  { name: "sleepy", command: "sh", args: ["-c", "echo start; sleep 0.3; echo done"], timeoutMs: 3_000, weight: 3 },
  { name: "failing", command: "sh", args: ["-c", "echo doomed >&2; exit 3"], timeoutMs: 3_000, weight: 2 },
  // leaves a background child behind: the group kill when the command ends must take it
  { name: "forker", command: "sh", args: ["-c", "sleep 60 & echo spawned; sleep 0.2"], timeoutMs: 3_000, weight: 2 },
  // outlives its own timeout: SIGTERM, grace, SIGKILL → timed_out
  { name: "overrun", command: "sh", args: ["-c", "echo slow; sleep 60"], timeoutMs: 700, weight: 1 },
  // the cancel target (times out when no cancel comes)
  { name: "long", command: "sh", args: ["-c", "echo long; sleep 60"], timeoutMs: 2_500, weight: 2 }
] as const

/** Live (non-zombie) processes whose environment carries `marker` (every sandbox command gets it), with their run and cwd. */
const markedProcesses = (marker: string): Array<string> => {
  const out: Array<string> = []
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue
    try {
      const environ = readFileSync(`/proc/${p}/environ`, "utf8")
      if (!environ.includes(marker)) continue
      const stat = readFileSync(`/proc/${p}/stat`, "utf8")
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z") continue
      const run = environ.split("\0").find((v) => v.startsWith("GANTRY_RUN_ID=")) ?? "no run id"
      out.push(`${p}: ${readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").join(" ").trim()} (${run}, cwd ${readlinkSync(`/proc/${p}/cwd`)})`)
    } catch {
      // gone, or not ours to read
    }
  }
  return out
}

const readJson = (file: string): Record<string, number> => {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, number>
  } catch {
    return {}
  }
}

const tally = (xs: ReadonlyArray<string>) => {
  const out: Record<string, number> = {}
  for (const x of xs) out[x] = (out[x] ?? 0) + 1
  return out
}

// SQLite always, PostgreSQL when GANTRY_TEST_PG_URL is set (each takes 10–20 s on 2 cores)
for (const db of testDbs) {
  describe(`chaos through the real fake-sandbox worker [${db.kind}]`, () => {
    it.live(`${RUNS} runs under injected faults, random cancels and worker SIGKILLs → nothing leaks`, () => {
      const seed = Number(process.env.GANTRY_CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31))
      const rng = prng(seed)
      const dir = mkdtempSync(join(tmpdir(), "gantry-chaos-"))
      const marker = `gantry-chaos-${seed}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
      const specs = envSpecs(rng)
      const t0 = Date.now()
      const before = childPids()
      return Effect.gen(function* () {
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const runs = yield* Runs
          const sql = yield* SqlClient.SqlClient
          yield* host.install(fakeSandboxPluginDir)
          yield* host.start("fake-sandbox")
          const company = yield* (yield* Companies).create({ name: `chaos-${seed}` })
          const environments = yield* Environments
          const envs: Array<{ spec: EnvSpec; env: Environment; inventoryFile: string }> = []
          for (const spec of specs) {
            const inventoryFile = join(dir, spec.name, "inventory.json")
            const env = yield* environments.create(company.id, {
              name: spec.name, driver: "sandbox",
              config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(dir, spec.name, "ws"), env: { GANTRY_CHAOS_MARKER: marker }, ...spec.knobs, ...spec.host }
            })
            envs.push({ spec, env, inventoryFile })
          }
          const agentsSvc = yield* Agents
          const agents: Array<{ agent: Agent; weight: number }> = []
          for (const a of agentSpecs) {
            agents.push({ agent: yield* agentsSvc.create(company.id, { name: a.name, command: a.command, args: [...a.args], timeoutMs: a.timeoutMs }), weight: a.weight })
          }
          const weighted = agents.flatMap((a) => Array.from({ length: a.weight }, () => a.agent))

          // the plan is drawn up front so a seed replays the same runs, cancels and kill intervals
          const plan = Array.from({ length: RUNS }, () => ({
            env: pick(rng, envs),
            agent: pick(rng, weighted),
            cancelAfterMs: rng() < CANCEL_RATE ? int(rng, 0, 1_500) : null,
            ignoreDown: rng() < 0.1
          }))
          const killGaps = Array.from({ length: 500 }, () => int(rng, KILL_MIN_MS, KILL_MAX_MS))

          const counts = { kills: 0, cancelsRequested: 0, startRejected: 0, startedWhileDown: 0 }
          const restartMs: Array<number> = []
          const finals: Array<RunStatus> = []
          const workerUp = Effect.map(host.status("fake-sandbox"), (s) => s.workerStatus === "running" && s.pid !== null)
          // kill, wait for the host to restart the worker, leave it up for a random while, again
          const killer = yield* Effect.fork(Effect.gen(function* () {
            for (const gap of killGaps) {
              yield* Effect.sleep(Duration.millis(gap))
              const s = yield* host.status("fake-sandbox")
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
              const tKill = Date.now()
              yield* eventually(Effect.filterOrFail(host.status("fake-sandbox"), (x) => x.workerStatus === "running" && x.pid !== pid), 15_000)
              restartMs.push(Date.now() - tKill)
            }
          }))

          const tRuns = Date.now()
          yield* Effect.forEach(plan, (p) =>
            Effect.gen(function* () {
              // like a scheduler, mostly wait for the provider to be up; some runs start regardless
              if (!p.ignoreDown) yield* Effect.ignore(eventually(Effect.filterOrFail(workerUp, (up) => up), 15_000))
              else if (!(yield* workerUp)) counts.startedWhileDown++
              const started = yield* Effect.either(runs.start(company.id, p.agent.id, { environmentId: p.env.env.id }))
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

          // the sweeper gets a bounded time to clean up after the chaos
          const tConverge = Date.now()
          const state = Effect.gen(function* () {
            const live: Record<string, number> = {}
            for (const e of envs) live[e.spec.name] = (yield* readInventory(e.inventoryFile)).length
            const leaseRows = yield* sql<{ status: string; n: number }>`SELECT status, COUNT(*) AS n FROM leases GROUP BY status`
            const runRows = yield* sql<{ status: string; n: number }>`SELECT status, COUNT(*) AS n FROM runs GROUP BY status`
            return {
              live,
              liveTotal: Object.values(live).reduce((a, b) => a + b, 0),
              leases: Object.fromEntries(leaseRows.map((r) => [r.status, Number(r.n)])),
              runs: Object.fromEntries(runRows.map((r) => [r.status, Number(r.n)]))
            }
          })
          const settled = (s: Effect.Effect.Success<typeof state>) =>
            s.liveTotal === 0 &&
            Object.keys(s.leases).every((k) => (TERMINAL as ReadonlyArray<string>).includes(k)) &&
            Object.keys(s.runs).every((k) => (TERMINAL_RUN as ReadonlyArray<string>).includes(k))
          const final = yield* eventually(Effect.filterOrFail(state, settled), CONVERGE_MS).pipe(Effect.catchAll(() => state))
          const convergeMs = Date.now() - tConverge
          // a torn-down sandbox has no process left; the grace covers an expiry teardown, which runs
          // just after the inventory write (every leak-prone command sleeps 60 s, so a leak cannot hide in it)
          const leftover = yield* eventually(Effect.filterOrFail(Effect.sync(() => markedProcesses(marker)), (l) => l.length === 0), 5_000).pipe(
            Effect.catchAll(() => Effect.sync(() => markedProcesses(marker)))
          )

          // what was injected: the fake counts every check of a faulted op; at most failTimes of them faulted
          const injected: Record<string, number> = {}
          for (const e of envs) {
            const c = readJson(`${e.inventoryFile}.faults.json`)
            for (const [k, n] of Object.entries(c)) injected[`${e.spec.name} ${k}`] = Math.min(n, e.spec.knobs.failTimes ?? n)
          }
          const expiredSandboxes = envs.reduce((n, e) => n + ((readJson(e.inventoryFile) as unknown as { expired?: Array<string> }).expired?.length ?? 0), 0)
          const leaseDetail = yield* sql<{ reason: string | null; attempts: number }>`SELECT failure_reason AS reason, cleanup_attempts AS attempts FROM leases`
          const errorRows = yield* sql<{ error: string | null }>`SELECT error FROM runs WHERE error IS NOT NULL`
          const report = {
            db: db.kind,
            seed,
            runs: RUNS,
            inFlight: IN_FLIGHT,
            environments: Object.fromEntries(specs.map((s) => [s.name, { ...s.knobs, ...s.host }])),
            injectedFaults: injected,
            workerKills: counts.kills,
            workerRestartMs: { min: Math.min(...restartMs), median: [...restartMs].sort((a, b) => a - b)[Math.floor(restartMs.length / 2)], max: Math.max(...restartMs) },
            runsStartedWhileWorkerDown: counts.startedWhileDown,
            cancelsRequested: counts.cancelsRequested,
            startRejected: counts.startRejected,
            runStatuses: tally(finals),
            runErrors: tally(errorRows.map((r) => (r.error ?? "").replace(/[0-9a-f]{8}-[0-9a-f-]{27}|fake-[0-9a-f]{12}|\d+ ms|pid \d+/g, "…").slice(0, 120))),
            leaseStatuses: final.leases,
            // the finalizer could not tear down (provider error, dead worker, lost acquire): the sweeper did
            leasesThroughPendingCleanup: leaseDetail.filter((l) => /Lease failed:|did not complete|\(attempt \d+\)/.test(l.reason ?? "")).length,
            cleanupAttemptsSpent: leaseDetail.reduce((n, l) => n + Number(l.attempts), 0),
            cleanupGaveUp: leaseDetail.filter((l) => (l.reason ?? "").startsWith("cleanup gave up")).length,
            reapedDeadOwnerOrTtl: leaseDetail.filter((l) => (l.reason ?? "").includes("deadline passed") || (l.reason ?? "").includes("died")).length,
            sandboxesExpiredByProvider: expiredSandboxes,
            liveSandboxes: final.live,
            leftoverProcesses: leftover,
            timingsMs: { runs: runsMs, converge: convergeMs, total: Date.now() - t0 }
          }
          console.log(`[chaos] ${JSON.stringify(report, null, 2)}`)

          expect(finals.length + counts.startRejected).toBe(RUNS)
          expect(final.liveTotal).toBe(0)
          expect(leftover).toEqual([])
          expect(Object.keys(final.leases).filter((k) => !(TERMINAL as ReadonlyArray<string>).includes(k))).toEqual([])
          expect(Object.keys(final.runs).filter((k) => !(TERMINAL_RUN as ReadonlyArray<string>).includes(k))).toEqual([])
          expect(Object.values(final.runs).reduce((a, b) => a + b, 0)).toBe(RUNS - counts.startRejected)
          // faults really happened
          expect(counts.kills).toBeGreaterThan(0)
          expect(Object.values(injected).reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
        }).pipe(
          Effect.scoped,
          Effect.provide(appLayer(db, {
            // restarts stay fast and the crash-loop breaker never opens: the kills are the test
            host: { restartBaseMs: 50, restartMaxMs: 200, crashLimit: 1_000_000, callTimeoutMs: 2_000 },
            leases: { sweepIntervalMs: 100, cleanupBaseMs: 20, deferMs: 50 },
            runs: { pollIntervalMs: 200 }
          }))
        )
        // the worker and every command are gone with the scope
        yield* eventually(Effect.filterOrFail(Effect.sync(() => childPids().filter((p) => !before.includes(p))), (l) => l.length === 0), 10_000)
        expect(markedProcesses(marker)).toEqual([])
      }).pipe(Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true }))))
    }, 150_000)
  })
}
