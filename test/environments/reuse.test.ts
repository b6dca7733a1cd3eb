// Reusable leases (SPEC §7.5): a successful run parks its lease; the next run resumes the same
// sandbox through environmentResumeLease, also after a host restart; a gone sandbox → a fresh lease.
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Environments } from "../../src/environments/Environments.js"
import { Leases } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import * as App from "../../src/server/App.js"
import { fakeSandboxPluginDir, readInventory } from "../../src/testing/fakeSandbox.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import { childPids, eventually } from "../helpers.js"

const dir = () => mkdtempSync(join(tmpdir(), "gantry-reuse-"))
const host = (dataDir: string) =>
  App.layer({ dataDir, databaseUrl: join(dataDir, "gantry.db"), host: { restartBaseMs: 50 }, leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 } })

const startFake = Effect.gen(function* () {
  const h = yield* PluginHost.PluginHost
  yield* h.restore
  if ((yield* h.list).every((p) => p.pluginId !== "fake-sandbox")) yield* h.install(fakeSandboxPluginDir)
  yield* h.start("fake-sandbox")
})

describe("reusable leases", () => {
  it.live("a parked lease is resumed by the next run, across a host restart; failure releases it; a gone sandbox gets a fresh lease", () =>
    Effect.gen(function* () {
      const before = childPids()
      const data = dir()
      const inventoryFile = join(data, "inventory.json")
      const ids = yield* Effect.scoped(Effect.gen(function* () {
        yield* startFake
        const company = yield* (yield* Companies).create({ name: "reuse-co" })
        const env = yield* (yield* Environments).create(company.id, {
          name: "reusable", driver: "sandbox", config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(data, "ws"), reuseLease: true }
        })
        const agent = yield* (yield* Agents).create(company.id, { name: "a", command: "sh", args: ["-c", "echo run >> ran.txt; cat ran.txt | wc -l"], defaultEnvironmentId: env.id })
        const runs = yield* Runs
        const leases = yield* Leases
        const r1 = yield* runs.await((yield* runs.start(company.id, agent.id)).id)
        expect(r1.status).toBe("succeeded")
        const r2 = yield* runs.await((yield* runs.start(company.id, agent.id)).id)
        expect(r2.status).toBe("succeeded")
        expect(r2.leaseId).toBe(r1.leaseId)
        // the same workspace: the file written by run 1 is still there
        expect(r2.stdout.trim()).toBe("2")
        const lease = yield* leases.get(r1.leaseId!)
        expect(lease.status).toBe("active")
        expect(yield* readInventory(inventoryFile)).toHaveLength(1)
        return { company: company.id, agent: agent.id, env: env.id, lease: r1.leaseId!, owner: lease.ownerInstanceId }
      }).pipe(Effect.provide(host(data))))

      // a new host on the same database resumes the parked lease
      yield* Effect.scoped(Effect.gen(function* () {
        yield* startFake
        const runs = yield* Runs
        const leases = yield* Leases
        const r3 = yield* runs.await((yield* runs.start(ids.company, ids.agent)).id)
        expect(r3.status).toBe("succeeded")
        expect(r3.leaseId).toBe(ids.lease)
        expect(r3.stdout.trim()).toBe("3")
        const resumed = yield* leases.get(ids.lease)
        expect(resumed.ownerInstanceId).not.toBe(ids.owner)
        // a failed run releases the reusable lease instead of parking it
        yield* (yield* Agents).update(ids.agent, { args: ["-c", "exit 4"] })
        const r4 = yield* runs.await((yield* runs.start(ids.company, ids.agent)).id)
        expect(r4.status).toBe("failed")
        expect(r4.leaseId).toBe(ids.lease)
        expect((yield* leases.get(ids.lease)).status).toBe("failed")
        expect(yield* readInventory(inventoryFile)).toEqual([])

        // a sandbox that expired while parked: resume answers "gone", the run gets a fresh lease
        yield* (yield* Environments).patch(ids.env, { config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(data, "ws"), reuseLease: true, expireAfterMs: 2000 } })
        yield* (yield* Agents).update(ids.agent, { args: ["-c", "true"] })
        const r5 = yield* runs.await((yield* runs.start(ids.company, ids.agent)).id)
        expect(r5.status).toBe("succeeded")
        // wait for the provider to drop the expired sandbox (reading the inventory prunes it)
        yield* eventually(Effect.filterOrFail(readInventory(inventoryFile), (l) => l.length === 0))
        // (no expiry for the next one: its run must not race the clock on a loaded machine)
        yield* (yield* Environments).patch(ids.env, { config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(data, "ws"), reuseLease: true } })
        const r6 = yield* runs.await((yield* runs.start(ids.company, ids.agent)).id)
        expect(r6.status).toBe("succeeded")
        expect(r6.leaseId).not.toBe(r5.leaseId)
        const gone = yield* leases.get(r5.leaseId!)
        expect(gone.status).toBe("released")
        expect(gone.failureReason).toContain("gone")
      }).pipe(Effect.provide(host(data))))
      expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    }))
})

