// Environments acceptance 3 (host kill): a real host process (test/fixtures/host-main) holds an active
// sandbox lease with `sleep 30` running in it and is SIGKILLed. A new host on the same database (this
// process) sees the old instance's heartbeat go stale, marks the orphaned run failed, destroys the
// lease's sandbox (lease `expired`) and the inventory reaches 0. Two ways to die: the host alone
// (its worker then loses its stdin and exits by itself, taking its commands with it), and the host
// with its worker (as when the whole machine or container goes: the command, in its own process
// group, outlives both and only the reaper's destroy kills it).
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Deferred, Duration, Effect, Layer } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { Leases } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import * as App from "../../src/server/App.js"
import * as Database from "../../src/store/Database.js"
import { fakeSandboxPluginDir, readInventory } from "../../src/testing/fakeSandbox.js"
import { Runs } from "../../src/work/Runs.js"
import { freshDatabaseUrl, testDbs } from "../db.js"
import { childPids, eventually, fixture, isAlive, root } from "../helpers.js"

interface Started {
  readonly pid: number
  readonly workerPid: number
  readonly instanceId: string
  readonly companyId: string
  readonly runId: string
  readonly leaseId: string
  readonly providerLeaseId: string
}

const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href

/** Live (non-zombie) processes whose environment carries `marker` (the sandbox command gets it). */
const markedProcesses = (marker: string): Array<number> => {
  const out: Array<number> = []
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue
    try {
      if (readFileSync(`/proc/${p}/environ`, "utf8").includes(marker) && isAlive(Number(p))) out.push(Number(p))
    } catch {
      // gone, or not ours to read
    }
  }
  return out
}

const kill = (pid: number) => {
  try {
    process.kill(pid, "SIGKILL")
  } catch {
    // gone
  }
}

/** The first host: a real process, killed (if still alive) when the scope closes. */
const startHost = (databaseUrl: string, dataDir: string, inventoryFile: string, marker: string) =>
  Effect.gen(function* () {
    const ready = yield* Deferred.make<Started, string>()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const c = spawn(process.execPath, ["--import", tsx, fixture("host-main/main.ts"), databaseUrl, dataDir, inventoryFile, marker], {
          cwd: root,
          // a short heartbeat, so its leftovers are recognisably stale soon after it dies
          env: { ...process.env, GANTRY_INSTANCE_HEARTBEAT_MS: "200" },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let out = ""
        let err = ""
        c.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
          out += chunk
          const line = out.split("\n").find((l) => l.startsWith("GANTRY_HOST_MAIN "))
          if (line) Deferred.unsafeDone(ready, Effect.succeed(JSON.parse(line.slice("GANTRY_HOST_MAIN ".length)) as Started))
        })
        c.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
          err = (err + chunk).slice(-4000)
        })
        c.on("exit", (code, signal) => Deferred.unsafeDone(ready, Effect.fail(`host exited (${signal ?? code}) before it was ready; stderr: ${err}; stdout: ${out.slice(-2000)}`)))
        return c
      }),
      (c) => Effect.sync(() => {
        if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL")
      })
    )
    const started = yield* Deferred.await(ready).pipe(
      Effect.timeoutFail({ duration: Duration.seconds(60), onTimeout: () => "the host did not get its lease active within 60 s" })
    )
    // whatever the test does, the old worker does not outlive it
    yield* Effect.addFinalizer(() => Effect.sync(() => kill(started.workerPid)))
    const exited = Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
    })
    return { started, exited }
  })

/** The second host, in this process: an old instance counts as dead 1 s after its last heartbeat. */
const secondHost = (databaseUrl: string, dataDir: string) =>
  App.layer({
    databaseUrl,
    dataDir,
    host: { restartBaseMs: 50 },
    leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 },
    runs: { pollIntervalMs: 100 }
  }).pipe(
    Layer.provide(Layer.setConfigProvider(
      ConfigProvider.fromMap(new Map([["GANTRY_INSTANCE_HEARTBEAT_MS", "200"], ["GANTRY_INSTANCE_STALE_MS", "1000"]])).pipe(
        ConfigProvider.orElse(() => ConfigProvider.fromEnv())
      )
    ))
  )

for (const db of testDbs) {
  describe(`a SIGKILLed host's lease is reaped by the next host [${db.kind}]`, () => {
    for (const how of ["host only", "host and its worker"] as const) {
      it.live(`killed: ${how} → orphaned run failed, lease expired, sandbox destroyed, nothing left running`, () => {
        const dataDir = mkdtempSync(join(tmpdir(), "gantry-host-kill-"))
        const inventoryFile = join(dataDir, "inventory.json")
        const marker = `gantry-host-kill-${process.pid}-${Math.random().toString(36).slice(2, 10)}`
        const before = childPids()
        return Effect.gen(function* () {
          const databaseUrl = yield* freshDatabaseUrl(db)
          const t0 = Date.now()
          const { started, exited } = yield* startHost(databaseUrl, dataDir, inventoryFile, marker)
          const tReady = Date.now()
          // the lease is active at the provider, and its command runs
          const [sandbox] = yield* readInventory(inventoryFile)
          expect(sandbox?.providerLeaseId).toBe(started.providerLeaseId)
          const command = markedProcesses(marker)
          expect(command).toHaveLength(1)
          expect(isAlive(started.workerPid)).toBe(true)

          // the worker is frozen first, so it cannot see its host go and clean up on its way out
          if (how === "host and its worker") process.kill(started.workerPid, "SIGSTOP")
          process.kill(started.pid, "SIGKILL")
          if (how === "host and its worker") kill(started.workerPid)
          yield* exited
          const tKilled = Date.now()
          if (how === "host only") {
            // the worker is not in a process group of its own and nothing kills it with the host: it
            // lives on as an orphan until it reads EOF on its stdin, then exits and kills its commands
            yield* eventually(Effect.filterOrFail(Effect.sync(() => isAlive(started.workerPid)), (alive) => !alive), 10_000)
            yield* eventually(Effect.filterOrFail(Effect.sync(() => markedProcesses(marker)), (l) => l.length === 0), 5_000)
          } else {
            // the command has its own process group: it outlives the host and the worker
            expect(markedProcesses(marker)).toEqual(command)
          }
          // either way the sandbox is still in the inventory: only the lease's reaper can destroy it
          expect((yield* readInventory(inventoryFile)).map((s) => s.providerLeaseId)).toEqual([started.providerLeaseId])

          // what the dead host left behind (read before a new host's sweeper can touch it)
          yield* Effect.gen(function* () {
            const sql = yield* SqlClient.SqlClient
            const [lease] = yield* sql<{ status: string; owner_instance_id: string }>`SELECT status, owner_instance_id FROM leases WHERE id = ${started.leaseId}`
            expect(lease).toEqual({ status: "active", owner_instance_id: started.instanceId })
            const [run] = yield* sql<{ status: string }>`SELECT status FROM runs WHERE id = ${started.runId}`
            expect(run?.status).toBe("running")
          }).pipe(Effect.scoped, Effect.provide(Database.layer({ url: databaseUrl })))

          yield* Effect.gen(function* () {
            const leases = yield* Leases
            const runs = yield* Runs
            const host = yield* PluginHost.PluginHost
            yield* host.install(fakeSandboxPluginDir)
            yield* host.start("fake-sandbox")
            const lease = yield* eventually(Effect.filterOrFail(leases.get(started.leaseId), (l) => l.status === "expired"), 20_000)
            expect(lease.failureReason).toContain(`owner instance ${started.instanceId} died`)
            expect(lease.releasedAt).not.toBeNull()
            const run = yield* eventually(Effect.filterOrFail(runs.get(started.runId), (r) => r.status === "failed"), 20_000)
            expect(run.error).toBe("the host running it died")
            expect(yield* readInventory(inventoryFile)).toEqual([])
            yield* eventually(Effect.filterOrFail(Effect.sync(() => markedProcesses(marker)), (l) => l.length === 0), 5_000)
            const tReaped = Date.now()
            console.log(`[host-kill ${db.kind}, ${how}] host ready in ${tReady - t0} ms; reaped ${tReaped - tKilled} ms after the kill`)
          }).pipe(Effect.scoped, Effect.provide(secondHost(databaseUrl, dataDir)))
        }).pipe(
          Effect.scoped,
          Effect.ensuring(Effect.sync(() => rmSync(dataDir, { recursive: true, force: true }))),
          Effect.zipRight(Effect.sync(() => {
            expect(markedProcesses(marker)).toEqual([])
            expect(childPids().filter((p) => !before.includes(p))).toEqual([])
          }))
        )
      }, 120_000)
    }
  })
}
