// bwrap-sandbox leases through the real worker: idempotent acquire, resume, release/destroy (idempotent,
// keep-on-failure), streaming, stdin, cancel, a SIGKILLed worker; and the whole host path (environment,
// probe, agent run) with the plugin installed in an app. Every test checks nothing is left behind.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import * as Core from "../../plugins/bwrap-sandbox/src/core.js"
import { Environments } from "../../src/environments/Environments.js"
import { Leases } from "../../src/environments/Leases.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { appLayer, childPids, eventually } from "../helpers.js"
import {
  acquire, base, bwrap, bwrapPluginDir, destroy, execute, failureOf, freshRoot, PLUGIN, processesWith, release, resume, sh, uniqueMarker, withWorker
} from "./helpers.js"

describe.skipIf(!bwrap.ok)("bwrap-sandbox leases (real worker)", () => {
  it.live("supported methods; acquire is idempotent per run id; realize, resume, release and destroy keep the lease directories exact", () =>
    withWorker(({ call, config, host, workspaceRoot }) =>
      Effect.gen(function* () {
        const snap = yield* host.status(PLUGIN)
        expect(snap.supportedMethods).toEqual(expect.arrayContaining([
          "environmentValidateConfig", "environmentProbe", "environmentAcquireLease", "environmentResumeLease",
          "environmentReleaseLease", "environmentDestroyLease", "environmentRealizeWorkspace", "environmentExecute"
        ]))
        const cfg = config()
        const v = (yield* call("environmentValidateConfig", { driverKey: "bwrap", config: cfg })) as { ok: boolean }
        expect(v.ok).toBe(true)
        const a = yield* acquire(call, cfg, "run-1")
        const again = yield* acquire(call, cfg, "run-1")
        expect(a.providerLeaseId).toBe(Core.leaseIdFor("run-1"))
        expect(a.providerLeaseId).toMatch(/^bwrap-[0-9a-f]{12}$/)
        expect(again).toMatchObject({ providerLeaseId: a.providerLeaseId, metadata: { reused: true, workspace: "/workspace" } })
        const b = yield* acquire(call, cfg, "run-2")
        let leases = yield* Effect.promise(() => Core.listLeases(workspaceRoot))
        expect(leases.map((l) => [l.providerLeaseId, l.state])).toEqual([[a.providerLeaseId, "live"], [b.providerLeaseId, "live"]].sort())
        expect(leases.find((l) => l.providerLeaseId === a.providerLeaseId)!.record).toMatchObject({ runId: "run-1", companyId: "acme", environmentId: "env-1" })

        const realized = (yield* call("environmentRealizeWorkspace", { ...base(cfg), lease: { providerLeaseId: a.providerLeaseId }, workspace: {} })) as { cwd: string }
        expect(realized.cwd).toBe("/workspace")
        const pwd = yield* sh(call, cfg, a.providerLeaseId!, "pwd; mkdir -p sub; echo kept > sub/file")
        expect(pwd.stdout).toBe("/workspace\n")
        const inSub = yield* execute(call, cfg, a.providerLeaseId!, { command: "cat", args: ["file"], cwd: "sub" })
        expect(inSub.stdout).toBe("kept\n")
        // files persist for the lease: a later command (a resumed lease) sees them
        expect((yield* resume(call, cfg, a.providerLeaseId!)).providerLeaseId).toBe(a.providerLeaseId)
        expect((yield* sh(call, cfg, a.providerLeaseId!, "cat sub/file")).stdout).toBe("kept\n")

        expect(yield* release(call, cfg, a.providerLeaseId!)).toEqual({ providerLeaseId: a.providerLeaseId, state: "destroyed" })
        expect(existsSync(join(workspaceRoot, a.providerLeaseId!))).toBe(false)
        expect(yield* resume(call, cfg, a.providerLeaseId!)).toEqual({ providerLeaseId: null })
        const gone = failureOf(yield* Effect.exit(sh(call, cfg, a.providerLeaseId!, "true")))
        expect(gone.message).toContain("not found")
        // teardown of a gone lease is success, as often as asked; foreign ids are nothing of ours
        expect(yield* release(call, cfg, a.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(yield* destroy(call, cfg, a.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(yield* destroy(call, cfg, "bwrap-000000000000")).toMatchObject({ state: "destroyed" })
        expect(yield* destroy(call, cfg, "../../etc")).toMatchObject({ state: "destroyed" })
        expect(yield* resume(call, cfg, "../../etc")).toEqual({ providerLeaseId: null })
        // the same run id after teardown gets a fresh, empty workspace under the same id
        const fresh = yield* acquire(call, cfg, "run-1")
        expect(fresh.metadata).toMatchObject({ reused: false })
        expect((yield* sh(call, cfg, fresh.providerLeaseId!, "ls -A")).stdout).toBe("")
        yield* destroy(call, cfg, fresh.providerLeaseId!)
        yield* destroy(call, cfg, b.providerLeaseId!)
        leases = yield* Effect.promise(() => Core.listLeases(workspaceRoot))
        expect(leases).toEqual([])
      })))

  it.live("keepOnFailure: release keeps a failed lease's workspace (stopped); destroy removes it; success and cancel do not keep", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config({ keepOnFailure: true })
        const failed = yield* acquire(call, cfg, "run-fail")
        const r = yield* sh(call, cfg, failed.providerLeaseId!, "echo evidence > log.txt; exit 3")
        expect(r.exitCode).toBe(3)
        expect(yield* release(call, cfg, failed.providerLeaseId!)).toEqual({ providerLeaseId: failed.providerLeaseId, state: "stopped" })
        const dir = join(workspaceRoot, failed.providerLeaseId!)
        expect(readFileSync(join(dir, "workspace", "log.txt"), "utf8")).toBe("evidence\n")
        const kept = yield* Effect.promise(() => Core.listLeases(workspaceRoot))
        expect(kept.map((l) => l.state)).toEqual(["kept"])
        // a kept lease is not resumable and runs nothing; releasing it again keeps it
        expect(yield* resume(call, cfg, failed.providerLeaseId!)).toEqual({ providerLeaseId: null })
        expect(failureOf(yield* Effect.exit(sh(call, cfg, failed.providerLeaseId!, "true"))).message).toContain("was released")
        expect(yield* release(call, cfg, failed.providerLeaseId!)).toMatchObject({ state: "stopped" })
        expect(yield* destroy(call, cfg, failed.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(existsSync(dir)).toBe(false)

        const ok = yield* acquire(call, cfg, "run-ok")
        yield* sh(call, cfg, ok.providerLeaseId!, "exit 0")
        expect(yield* release(call, cfg, ok.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        const cancelled = yield* acquire(call, cfg, "run-cancelled")
        yield* sh(call, cfg, cancelled.providerLeaseId!, "exit 1")
        expect(yield* release(call, cfg, cancelled.providerLeaseId!, { cancelActiveWork: true })).toMatchObject({ state: "destroyed" })
        // without the knob a failed lease goes too
        const plain = config()
        const lost = yield* acquire(call, plain, "run-fail-plain")
        yield* sh(call, plain, lost.providerLeaseId!, "exit 3")
        expect(yield* release(call, plain, lost.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(yield* Effect.promise(() => Core.listLeases(workspaceRoot))).toEqual([])
      })))

  it.live("output streams while the command runs; stdin reaches it; exit codes, not-found commands and a bad cwd", () =>
    withWorker(({ call, config }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-stream")
        const id = lease.providerLeaseId!
        const chunks: Array<{ stream: string; chunk: string; at: number }> = []
        const started = Date.now()
        const r = yield* sh(call, cfg, id, "read line; echo \"got $line\"; cat; echo to-stderr >&2; sleep 1; echo late", { stdin: "first\nrest of stdin\n" })
        expect(r).toMatchObject({ exitCode: 0, timedOut: false, stdout: "got first\nrest of stdin\nlate\n", stderr: "to-stderr\n" })
        const streamed = yield* execute(call, cfg, id, { command: "sh", args: ["-c", "echo early; sleep 1.5; echo late"] }, {
          onExecuteLog: (stream, chunk) => chunks.push({ stream, chunk, at: Date.now() })
        })
        expect(streamed.stdout).toBe("early\nlate\n")
        const early = chunks.find((c) => c.chunk.includes("early"))!
        const late = chunks.find((c) => c.chunk.includes("late"))!
        // "early" arrived well before the command ended (1.5 s; margin for a loaded machine)
        expect(late.at - early.at).toBeGreaterThanOrEqual(800)
        expect(started).toBeLessThanOrEqual(early.at)
        const missing = yield* execute(call, cfg, id, { command: "no-such-command-here" })
        expect(missing.exitCode).toBe(127)
        expect(missing.stderr).toContain("no-such-command-here")
        const badCwd = failureOf(yield* Effect.exit(execute(call, cfg, id, { command: "true", cwd: "/nowhere" })))
        expect(badCwd.message).toContain("sandbox setup failed: bwrap: Can't chdir to /nowhere")
        yield* destroy(call, cfg, id)
      })))

  it.live("cancel (interrupting the call) kills the sandbox; release with cancelActiveWork kills what runs", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-cancel")
        const id = lease.providerLeaseId!
        const marker = uniqueMarker("cancel")
        const fiber = yield* Effect.fork(sh(call, cfg, id, `sleep 60 & sleep 61; : ${marker}`, { env: { M: marker } }))
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length >= 3))
        yield* Fiber.interrupt(fiber)
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length === 0), 5_000)
        const record = (yield* Effect.promise(() => Core.listLeases(workspaceRoot)))[0]!.record!
        yield* eventually(Effect.filterOrFail(Effect.promise(() => Core.listLeases(workspaceRoot)), (l) => l[0]?.record?.lastExecute?.cancelled === true))
        expect(record.state).toBe("live")

        const marker2 = uniqueMarker("release")
        const running = yield* Effect.fork(Effect.exit(sh(call, cfg, id, `sleep 60; : ${marker2}`, { env: { M: marker2 } })))
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker2)), (l) => l.length > 0))
        expect(yield* release(call, cfg, id, { cancelActiveWork: true })).toMatchObject({ state: "destroyed" })
        expect(processesWith(marker2)).toEqual([])
        const exit = yield* Fiber.join(running)
        expect(failureOf(exit).message).toContain("cancelled")
        expect(existsSync(join(workspaceRoot, id))).toBe(false)
      })))

  it.live("a SIGKILLed worker takes its sandboxes with it; the restarted worker resumes and destroys the lease", () =>
    withWorker(({ call, config, host, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-crash")
        const id = lease.providerLeaseId!
        yield* sh(call, cfg, id, "echo survives > note")
        const marker = uniqueMarker("crash")
        const fiber = yield* Effect.fork(Effect.exit(sh(call, cfg, id, `sleep 60 & sleep 61; : ${marker}`, { env: { M: marker } })))
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length >= 3))
        const pid = (yield* host.status(PLUGIN)).pid!
        process.kill(pid, "SIGKILL")
        // --die-with-parent: the sandbox goes with the worker
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length === 0), 5_000)
        expect(failureOf(yield* Fiber.join(fiber))._tag).toBe("WorkerUnavailable")
        yield* eventually(Effect.filterOrFail(host.status(PLUGIN), (s) => s.workerStatus === "running" && s.pid !== pid), 15_000)
        const resumed = yield* resume(call, cfg, id)
        expect(resumed).toMatchObject({ providerLeaseId: id, metadata: { reused: true } })
        expect((yield* sh(call, cfg, id, "cat note")).stdout).toBe("survives\n")
        expect(yield* destroy(call, cfg, id)).toMatchObject({ state: "destroyed" })
        expect(yield* Effect.promise(() => Core.listLeases(workspaceRoot))).toEqual([])
      }), { restartBaseMs: 50 }))
})

for (const db of testDbs) {
  describe.skipIf(!bwrap.ok)(`bwrap-sandbox through the host [${db.kind}]`, () => {
    it.live("an environment on bwrap-sandbox: probe, an agent run in /workspace, the lease released, nothing left", () => {
      const before = childPids()
      const { dir, workspaceRoot } = freshRoot()
      return Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        yield* host.install(bwrapPluginDir)
        yield* host.start(PLUGIN)
        const company = yield* (yield* Companies).create({ name: `co-${Math.random().toString(36).slice(2, 8)}` })
        const environments = yield* Environments
        // a typo is refused with the field named
        const bad = yield* Effect.flip(environments.create(company.id, { name: "typo", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", netwrk: "none" } }))
        expect(bad.message).toContain("netwrk")
        const env = yield* environments.create(company.id, {
          name: "bwrap", driver: "sandbox",
          config: { provider: "bwrap-sandbox/bwrap", workspaceRoot, network: "none", memoryMiB: 2048, pids: 256, keepOnFailure: true, env: { GREETING: "hello from the sandbox" } }
        })
        const probe = yield* environments.probe(env.id)
        expect(probe.ok).toBe(true)
        const agents = yield* Agents
        const agent = yield* agents.create(company.id, {
          name: "agent", command: "sh", args: ["-c", "echo \"$GREETING\" > out.txt; cat out.txt; pwd; id -un; test -n \"$GANTRY_RUN_TOKEN\" && echo has-token"],
          timeoutMs: 20_000, defaultEnvironmentId: env.id
        })
        const runs = yield* Runs
        const leases = yield* Leases
        const run = yield* runs.start(company.id, agent.id)
        const done = yield* runs.await(run.id)
        expect(done.status).toBe("succeeded")
        expect(done.stdout).toBe("hello from the sandbox\n/workspace\nsandbox\nhas-token\n")
        const [lease] = yield* leases.list({ runId: run.id })
        expect(lease).toMatchObject({ status: "released", providerLeaseId: expect.stringMatching(/^bwrap-[0-9a-f]{12}$/) })
        expect(yield* Effect.promise(() => Core.listLeases(workspaceRoot))).toEqual([])

        // a failing run with keepOnFailure: the lease is failed, its workspace kept for inspection
        const failing = yield* agents.update(agent.id, { command: "sh", args: ["-c", "echo partial > work.txt; exit 4"] })
        const run2 = yield* runs.start(company.id, failing.id)
        const done2 = yield* runs.await(run2.id)
        expect(done2).toMatchObject({ status: "failed", exitCode: 4 })
        const [lease2] = yield* leases.list({ runId: run2.id })
        expect(lease2?.status).toBe("failed")
        const kept = yield* Effect.promise(() => Core.listLeases(workspaceRoot))
        expect(kept.map((l) => [l.providerLeaseId, l.state])).toEqual([[lease2!.providerLeaseId, "kept"]])
        expect(readFileSync(join(kept[0]!.dir, "workspace", "work.txt"), "utf8")).toBe("partial\n")
        yield* host.call(PLUGIN, "environmentDestroyLease", { ...base({ workspaceRoot }), providerLeaseId: lease2!.providerLeaseId }, { companyId: company.id })
        expect(yield* Effect.promise(() => Core.listLeases(workspaceRoot))).toEqual([])
      }).pipe(
        Effect.scoped,
        Effect.provide(appLayer(db, { host: { restartBaseMs: 50 }, leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 } })),
        Effect.ensuring(Effect.sync(() => {
          expect(childPids().filter((p) => !before.includes(p))).toEqual([])
        })),
        Effect.ensuring(Effect.promise(() => import("node:fs/promises").then((f) => f.rm(dir, { recursive: true, force: true }))))
      )
    })
  })
}
