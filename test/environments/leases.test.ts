import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, readdirSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Environments } from "../../src/environments/Environments.js"
import { Leases, type LeaseRecord } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { fakeSandboxPluginDir, readInventory, type FakeSandboxKnobs } from "../../src/testing/fakeSandbox.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { appLayer, childPids, eventually } from "../helpers.js"

const setup = (knobs: FakeSandboxKnobs, agent: { command: string; args?: Array<string>; timeoutMs?: number }) =>
  Effect.gen(function* () {
    const host = yield* PluginHost.PluginHost
    yield* host.install(fakeSandboxPluginDir)
    yield* host.start("fake-sandbox")
    const dir = mkdtempSync(join(tmpdir(), "gantry-lease-test-"))
    const inventoryFile = join(dir, "inventory.json")
    const companies = yield* Companies
    const company = yield* companies.create({ name: `co-${Math.random().toString(36).slice(2, 8)}` })
    const env = yield* (yield* Environments).create(company.id, {
      name: "sandbox", driver: "sandbox",
      config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(dir, "ws"), ...knobs }
    })
    const a = yield* (yield* Agents).create(company.id, { name: "agent", command: agent.command, args: agent.args ?? [], timeoutMs: agent.timeoutMs ?? 20_000, defaultEnvironmentId: env.id })
    return { company, env, agent: a, inventoryFile }
  })

const fast = { host: { restartBaseMs: 50 }, leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 } }

for (const db of testDbs) {
  describe(`lease lifecycle through the real fake-sandbox worker [${db.kind}]`, () => {
    it.live("success → released; command failure → run failed, lease failed, torn down", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.gen(function* () {
          const runs = yield* Runs
          const leases = yield* Leases
          const s = yield* setup({}, { command: "sh", args: ["-c", "echo hello from the sandbox; pwd"] })
          const run = yield* runs.start(s.company.id, s.agent.id)
          const done = yield* runs.await(run.id)
          expect(done.status).toBe("succeeded")
          expect(done.stdout).toContain("hello from the sandbox")
          const [lease] = yield* leases.list({ runId: run.id })
          expect(lease?.status).toBe("released")
          expect(lease?.providerLeaseId).toMatch(/^fake-[0-9a-f]{12}$/)
          expect(yield* readInventory(s.inventoryFile)).toEqual([])

          const agents = yield* Agents
          const failing = yield* agents.update(s.agent.id, { command: "sh", args: ["-c", "echo doomed >&2; exit 3"] })
          const run2 = yield* runs.start(s.company.id, failing.id)
          const done2 = yield* runs.await(run2.id)
          expect(done2.status).toBe("failed")
          expect(done2.exitCode).toBe(3)
          expect(done2.stderr).toContain("doomed")
          const [lease2] = yield* leases.list({ runId: run2.id })
          expect(lease2?.status).toBe("failed")
          expect(yield* readInventory(s.inventoryFile)).toEqual([])
        }).pipe(Effect.scoped, Effect.provide(appLayer(db, fast)))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("cancel mid-execute → provider told cancelActiveWork, lease expired, command killed", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.gen(function* () {
          const runs = yield* Runs
          const leases = yield* Leases
          const marker = `gantry-cancel-${Math.random().toString(36).slice(2, 10)}`
          const s = yield* setup({}, { command: "sh", args: ["-c", `echo started; sleep 30; echo ${marker}`] })
          const run = yield* runs.start(s.company.id, s.agent.id)
          yield* eventually(Effect.filterOrFail(Effect.sync(() => processesMatching(marker)), (n) => n > 0))
          const cancelled = yield* runs.cancel(run.id)
          expect(cancelled.status).toBe("cancelled")
          const [lease] = yield* leases.list({ runId: run.id })
          expect(lease?.status).toBe("expired")
          expect(yield* readInventory(s.inventoryFile)).toEqual([])
          yield* eventually(Effect.filterOrFail(Effect.sync(() => processesMatching(marker)), (n) => n === 0))
        }).pipe(Effect.scoped, Effect.provide(appLayer(db, fast)))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("release failing twice then working → released via the sweeper", () =>
      Effect.gen(function* () {
        const runs = yield* Runs
        const leases = yield* Leases
        const s = yield* setup({ failOn: ["release"], failTimes: 2 }, { command: "true" })
        const run = yield* runs.start(s.company.id, s.agent.id)
        expect((yield* runs.await(run.id)).status).toBe("succeeded")
        const lease = yield* eventually(Effect.filterOrFail(Effect.map(leases.list({ runId: run.id }), (l) => l[0]), (l: LeaseRecord | undefined) => l !== undefined && l.status === "released"), 15_000)
        expect(lease.cleanupAttempts).toBe(1)
        expect(yield* readInventory(s.inventoryFile)).toEqual([])
      }).pipe(Effect.scoped, Effect.provide(appLayer(db, fast))))

    it.live("provider down during cleanup → deferred without spending an attempt, then cleaned", () =>
      Effect.gen(function* () {
        const runs = yield* Runs
        const leases = yield* Leases
        const host = yield* PluginHost.PluginHost
        const sql = yield* SqlClient.SqlClient
        const s = yield* setup({ failOn: ["release"], failTimes: 1 }, { command: "true" })
        const run = yield* runs.start(s.company.id, s.agent.id)
        yield* runs.await(run.id)
        const [pending] = yield* leases.list({ runId: run.id })
        expect(pending?.status).toBe("pending_cleanup")
        yield* host.stop("fake-sandbox")
        const report = yield* leases.sweep
        expect(report.deferred).toBe(1)
        const deferred = yield* leases.get(pending!.id)
        expect(deferred.status).toBe("pending_cleanup")
        expect(deferred.cleanupAttempts).toBe(0)
        yield* host.start("fake-sandbox")
        yield* sql`UPDATE leases SET next_cleanup_at = 0 WHERE id = ${pending!.id}`
        const report2 = yield* leases.sweep
        expect(report2.cleaned).toBe(1)
        const done = yield* leases.get(pending!.id)
        expect(done.status).toBe("released")
        expect(done.cleanupAttempts).toBe(0)
        expect(yield* readInventory(s.inventoryFile)).toEqual([])
      }).pipe(Effect.scoped, Effect.provide(appLayer(db, { ...fast, leases: { sweepIntervalMs: 3_600_000, cleanupBaseMs: 50, deferMs: 50 } }))))
  })
}

/** Live processes whose command line contains `marker`. */
const processesMatching = (marker: string): number => {
  let n = 0
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8")
      const stat = readFileSync(`/proc/${p}/stat`, "utf8")
      if (cmd.includes(marker) && !cmd.includes("vitest") && stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z") n++
    } catch {
      // gone
    }
  }
  return n
}
