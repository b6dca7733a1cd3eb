// The bundled fake-sandbox provider (SPEC §13): through the real worker process, and its in-process
// twin (gantry/testing layerFakeProviders). Every test checks that no command and no worker is left.
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber } from "effect"
import { existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Core from "../../plugins/fake-sandbox/src/core.js"
import { Providers } from "../../src/environments/Provider.js"
import type { HostOptionsShape } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import {
  FakeSandboxControl,
  fakeLeaseId,
  fakeSandboxPluginDir,
  layerFakeProviders,
  readInventory
} from "../../src/testing/index.js"
import { childPids, eventually, hostLayer } from "../helpers.js"

// ---- helpers ----
type Exec = { exitCode: number | null; signal?: string | null; timedOut: boolean; stdout: string; stderr: string; metadata: Record<string, unknown> }
type Lease = { providerLeaseId: string | null; metadata?: Record<string, unknown>; expiresAt?: string | null }

/** Live (non-zombie) processes whose command line contains `needle`. */
const procsWith = (needle: string): Array<number> => {
  const out: Array<number> = []
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0").join(" ")
      if (!cmd.includes(needle)) continue
      const stat = readFileSync(`/proc/${d}/stat`, "utf8")
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z") out.push(Number(d))
    } catch {
      // gone
    }
  }
  return out
}
/** Live `sleep <arg>` processes exactly (not the shells whose script mentions them). */
const sleeps = (arg: string) =>
  procsWith(`sleep ${arg}`).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim() === `sleep ${arg}`
    } catch {
      return false
    }
  })
let marker = 0
/** A `sleep` whose command line is unique to this test, so a /proc scan finds exactly its processes. */
const uniqueSleep = () => `3${++marker}.${process.pid % 1000}${Math.floor(Math.random() * 1000)}`

const failureOf = <A, E>(exit: Exit.Exit<A, E>) => {
  if (Exit.isSuccess(exit)) throw new Error(`expected a failure, got ${JSON.stringify(exit.value)}`)
  return Cause.squash(exit.cause) as { _tag: string; code?: number; message: string }
}

interface Dirs {
  readonly dir: string
  readonly inventoryFile: string
  readonly workspaceRoot: string
}
const freshDirs = (): Dirs => {
  const dir = mkdtempSync(join(tmpdir(), "gantry-fake-sandbox-test-"))
  return { dir, inventoryFile: join(dir, "inventory.json"), workspaceRoot: join(dir, "ws") }
}
const base = (config: Record<string, unknown>) => ({ driverKey: "fake", companyId: "acme", environmentId: "env-1", config })

type Call = (method: string, params: unknown, o?: { timeoutMs?: number; onExecuteLog?: (s: "stdout" | "stderr", c: string) => void }) => Effect.Effect<unknown, unknown>

interface WorkerCtx extends Dirs {
  readonly call: Call
  readonly config: (knobs?: Record<string, unknown>) => Record<string, unknown>
  readonly host: PluginHost.PluginHostShape
}

/** Run `body` against the real fake-sandbox worker; afterwards no child, no test command, no temp dir. */
const withWorker = <A, E>(body: (ctx: WorkerCtx) => Effect.Effect<A, E, PluginHost.PluginHost>, overrides: Partial<HostOptionsShape> = {}) =>
  Effect.gen(function* () {
    const before = childPids()
    const dirs = freshDirs()
    const a = yield* Effect.scoped(
      Effect.gen(function* () {
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dirs.dir, { recursive: true, force: true })))
        const host = yield* PluginHost.PluginHost
        yield* host.install(fakeSandboxPluginDir)
        yield* host.start("fake-sandbox")
        const call: Call = (method, params, o = {}) => host.call("fake-sandbox", method, params, { companyId: "acme", ...o })
        const config = (knobs: Record<string, unknown> = {}) => ({ provider: "fake-sandbox/fake", inventoryFile: dirs.inventoryFile, workspaceRoot: dirs.workspaceRoot, ...knobs })
        return yield* body({ ...dirs, call, config, host })
      }).pipe(Effect.provide(hostLayer(overrides)))
    )
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    return a
  })

const acquire = (call: Call, config: Record<string, unknown>, runId: string) =>
  Effect.map(call("environmentAcquireLease", { ...base(config), runId }), (l) => l as Lease)
const execute = (call: Call, config: Record<string, unknown>, leaseId: string, cmd: { command: string; args?: Array<string>; env?: Record<string, string>; stdin?: string; timeoutMs?: number; cwd?: string }, o?: Parameters<Call>[2]) =>
  Effect.map(call("environmentExecute", { ...base(config), lease: { providerLeaseId: leaseId }, ...cmd }, o), (r) => r as Exec)
const release = (call: Call, config: Record<string, unknown>, leaseId: string, extra: Record<string, unknown> = {}) =>
  call("environmentReleaseLease", { ...base(config), providerLeaseId: leaseId, ...extra })
const destroy = (call: Call, config: Record<string, unknown>, leaseId: string) =>
  call("environmentDestroyLease", { ...base(config), providerLeaseId: leaseId })
const resume = (call: Call, config: Record<string, unknown>, leaseId: string) =>
  Effect.map(call("environmentResumeLease", { ...base(config), providerLeaseId: leaseId }), (l) => l as Lease)

const envLines = (stdout: string) => stdout.split("\n").filter((l) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(l))

// ---- through the real worker ----
describe("fake-sandbox plugin (real worker)", () => {
  it.live("manifest, supported methods, validateConfig and probe", () =>
    withWorker(({ call, config, host, inventoryFile }) =>
      Effect.gen(function* () {
        const snap = yield* host.status("fake-sandbox")
        expect(snap.supportedMethods).toEqual(expect.arrayContaining([
          "environmentValidateConfig", "environmentProbe", "environmentAcquireLease", "environmentResumeLease",
          "environmentReleaseLease", "environmentDestroyLease", "environmentRealizeWorkspace", "environmentExecute"
        ]))
        const info = yield* host.manifest("fake-sandbox")
        const driver = info.manifest.environmentDrivers![0]!
        expect(driver).toMatchObject({ driverKey: "fake", kind: "sandbox_provider" })
        // manifest.json repeats core's schema: keep them equal
        expect(driver.configSchema).toEqual(JSON.parse(JSON.stringify(Core.CONFIG_SCHEMA)))

        const ok = yield* call("environmentValidateConfig", { driverKey: "fake", config: config({ failOn: ["acquire", "acquire"], failTimes: 1 }) })
        expect(ok).toMatchObject({ ok: true, errors: [], normalizedConfig: { failOn: ["acquire"], failTimes: 1, provider: "fake-sandbox/fake" } })
        const bad = (yield* call("environmentValidateConfig", {
          driverKey: "fake",
          config: { failOn: ["boot"], failTimes: -1, latencyMs: "slow", hangOn: "acquire", loseAcquireResponse: 1, expireAfterMs: 0, inventoryFile: "rel/inv.json", extra: 1 }
        })) as { ok: boolean; errors: Array<string>; warnings: Array<string> }
        expect(bad.ok).toBe(false)
        expect(bad.errors).toEqual(expect.arrayContaining([
          expect.stringContaining("failOn[0]"), expect.stringContaining("failTimes"), expect.stringContaining("latencyMs"),
          expect.stringContaining("hangOn"), expect.stringContaining("loseAcquireResponse"), expect.stringContaining("expireAfterMs"),
          expect.stringContaining("inventoryFile")
        ]))
        expect(bad.errors).toHaveLength(7)
        expect(bad.warnings).toEqual([expect.stringContaining("extra")])

        const probe = (yield* call("environmentProbe", base(config()))) as { ok: boolean; summary: string; metadata: Record<string, unknown> }
        expect(probe.ok).toBe(true)
        expect(probe.summary).toContain("0 live sandbox")
        expect(probe.metadata).toMatchObject({ inventoryFile, liveSandboxes: 0 })
        // an operation with an invalid config fails (it never guesses)
        const err = failureOf(yield* Effect.exit(acquire(call, { failOn: "x" }, "run-x")))
        expect(err.code).toBe(-32002)
        expect(err.message).toContain("invalid fake-sandbox config")
      })))

  it.live("acquire is idempotent per run id; realize, resume, release and destroy keep the inventory exact", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const cfg = config()
        const a = yield* acquire(call, cfg, "run-1")
        const b = yield* acquire(call, cfg, "run-1")
        expect(a.providerLeaseId).toBe(fakeLeaseId("run-1"))
        expect(a.providerLeaseId).toMatch(/^fake-[0-9a-f]{12}$/)
        expect(b.providerLeaseId).toBe(a.providerLeaseId)
        expect(b.metadata).toMatchObject({ reused: true, workspace: a.metadata!.workspace })
        let inv = yield* readInventory(inventoryFile)
        expect(inv.map((s) => s.providerLeaseId)).toEqual([a.providerLeaseId])
        expect(inv[0]).toMatchObject({ runId: "run-1", companyId: "acme", environmentId: "env-1" })
        const workspace = inv[0]!.workspace
        expect(existsSync(workspace)).toBe(true)

        const other = yield* acquire(call, cfg, "run-2")
        expect(other.providerLeaseId).not.toBe(a.providerLeaseId)
        expect((yield* readInventory(inventoryFile)).length).toBe(2)

        const realized = (yield* call("environmentRealizeWorkspace", { ...base(cfg), lease: { providerLeaseId: a.providerLeaseId }, workspace: {} })) as { cwd: string }
        expect(realized.cwd).toBe(workspace)
        const pwd = yield* execute(call, cfg, a.providerLeaseId!, { command: "pwd" })
        expect(realpathSync(pwd.stdout.trim())).toBe(realpathSync(workspace))

        expect((yield* resume(call, cfg, a.providerLeaseId!)).providerLeaseId).toBe(a.providerLeaseId)
        expect(yield* release(call, cfg, a.providerLeaseId!)).toEqual({ providerLeaseId: a.providerLeaseId, state: "destroyed" })
        inv = yield* readInventory(inventoryFile)
        expect(inv.map((s) => s.providerLeaseId)).toEqual([other.providerLeaseId])
        expect(existsSync(workspace)).toBe(false)
        expect(yield* resume(call, cfg, a.providerLeaseId!)).toEqual({ providerLeaseId: null })
        const gone = failureOf(yield* Effect.exit(execute(call, cfg, a.providerLeaseId!, { command: "true" })))
        expect(gone.message).toContain("not found")

        // teardown of a gone sandbox is success, as often as asked
        expect(yield* destroy(call, cfg, a.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(yield* release(call, cfg, a.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        expect(yield* destroy(call, cfg, "fake-000000000000")).toMatchObject({ state: "destroyed" })
        yield* destroy(call, cfg, other.providerLeaseId!)
        expect(yield* readInventory(inventoryFile)).toEqual([])
        expect(readdirSync(join(inventoryFile, "..", "ws"))).toEqual([])
      })))

  it.live("execute streams stdout/stderr and runs with exactly the given env plus PATH", () => {
    process.env.GANTRY_FAKE_SANDBOX_CANARY = "canary-7f3a"
    return withWorker(({ call, config }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-env")
        const chunks: Array<[string, string]> = []
        const r = yield* execute(call, cfg, lease.providerLeaseId!, {
          command: "sh",
          args: ["-c", "echo hi; echo err >&2; env"],
          env: { FOO: "bar", GANTRY_RUN_ID: "run-env" }
        }, { onExecuteLog: (s, c) => chunks.push([s, c]) })
        expect(r).toMatchObject({ exitCode: 0, timedOut: false, stderr: "err\n" })
        expect(r.stdout.startsWith("hi\n")).toBe(true)
        expect(chunks.filter(([s]) => s === "stdout").map(([, c]) => c).join("")).toBe(r.stdout)
        expect(chunks.filter(([s]) => s === "stderr").map(([, c]) => c).join("")).toBe("err\n")
        // sh adds PWD itself; everything else is exactly what the call gave, plus the default PATH
        expect(envLines(r.stdout).filter((l) => !l.startsWith("PWD=")).sort()).toEqual(
          ["FOO=bar", "GANTRY_RUN_ID=run-env", `PATH=${Core.DEFAULT_PATH}`]
        )
        expect(r.stdout).not.toContain("canary-7f3a")
        const bare = yield* execute(call, cfg, lease.providerLeaseId!, { command: "env", env: { A: "1" } })
        expect(envLines(bare.stdout).sort()).toEqual(["A=1", `PATH=${Core.DEFAULT_PATH}`])
        const ownPath = yield* execute(call, cfg, lease.providerLeaseId!, { command: "/usr/bin/env", env: { PATH: "/bin" } })
        expect(envLines(ownPath.stdout)).toEqual(["PATH=/bin"])

        const stdin = yield* execute(call, cfg, lease.providerLeaseId!, { command: "cat", stdin: "from stdin" })
        expect(stdin.stdout).toBe("from stdin")
        const code = yield* execute(call, cfg, lease.providerLeaseId!, { command: "sh", args: ["-c", "exit 3"] })
        expect(code).toMatchObject({ exitCode: 3, timedOut: false })
        const missing = yield* execute(call, cfg, lease.providerLeaseId!, { command: "no-such-command-xyz" })
        expect(missing).toMatchObject({ exitCode: 127, stderr: "no-such-command-xyz: command not found\n" })
        const sub = yield* execute(call, cfg, lease.providerLeaseId!, { command: "sh", args: ["-c", "mkdir -p sub && cd sub && pwd"] })
        const inSub = yield* execute(call, cfg, lease.providerLeaseId!, { command: "pwd", cwd: "sub" })
        expect(inSub.stdout).toBe(sub.stdout)

        // retained output is capped at 1 MiB per stream and flagged; streaming is not capped
        let streamed = 0
        const big = yield* execute(call, cfg, lease.providerLeaseId!, { command: "sh", args: ["-c", "head -c 1500000 /dev/zero | tr '\\0' a"] }, {
          onExecuteLog: (_, c) => void (streamed += c.length)
        })
        expect(big.stdout.length).toBe(Core.OUTPUT_CAP_BYTES)
        expect(big.metadata).toMatchObject({ truncated: true, stdoutTruncated: true, stderrTruncated: false })
        expect(streamed).toBe(1_500_000)
        yield* release(call, cfg, lease.providerLeaseId!)
      })).pipe(Effect.ensuring(Effect.sync(() => void delete process.env.GANTRY_FAKE_SANDBOX_CANARY)))
  })

  it.live("timeout: SIGTERM, then SIGKILL after 250 ms; exitCode null, timedOut; nothing left running", () =>
    withWorker(({ call, config }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-timeout")
        const s1 = uniqueSleep()
        const r = yield* execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s1], timeoutMs: 300 })
        expect(r).toMatchObject({ exitCode: null, signal: "SIGTERM", timedOut: true })
        expect(procsWith(`sleep ${s1}`)).toEqual([])

        // a command (and its background child) ignoring SIGTERM is SIGKILLed as a group
        const s2 = uniqueSleep()
        const stubborn = yield* execute(call, cfg, lease.providerLeaseId!, {
          command: "sh",
          args: ["-c", `trap '' TERM; sleep ${s2} & sleep ${s2}; wait`],
          // (time for the shell to set its trap first, on a loaded machine too)
          timeoutMs: 1000
        })
        expect(stubborn).toMatchObject({ exitCode: null, signal: "SIGKILL", timedOut: true })
        expect(stubborn.metadata.durationMs as number).toBeGreaterThanOrEqual(1000 + Core.KILL_GRACE_MS - 20)
        expect(procsWith(`sleep ${s2}`)).toEqual([])
        yield* release(call, cfg, lease.providerLeaseId!)
      })))

  it.live("cancel: an interrupted execute and a release with cancelActiveWork kill the whole process group", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-cancel")
        const id = lease.providerLeaseId!
        // 1. the host interrupts the call ($/cancelRequest): the worker kills the command
        const s1 = uniqueSleep()
        let started = false
        const fiber = yield* Effect.fork(execute(call, cfg, id, { command: "sh", args: ["-c", `echo started; sleep ${s1} & sleep ${s1}`] }, {
          onExecuteLog: (_, c) => void (started ||= c.includes("started"))
        }))
        yield* eventually(Effect.suspend(() => (started && sleeps(s1).length === 2 ? Effect.void : Effect.fail("not yet"))))
        // the running command is recorded in the inventory (so a crashed worker's commands can be
        // killed); the record is written right after spawn, not ordered with the command's output
        yield* eventually(Effect.flatMap(readInventory(inventoryFile), (inv) => (inv[0]!.processes.length === 1 ? Effect.void : Effect.fail("not recorded"))))
        yield* Fiber.interrupt(fiber)
        yield* eventually(Effect.suspend(() => (procsWith(`sleep ${s1}`).length === 0 ? Effect.void : Effect.fail("still running"))))
        yield* eventually(Effect.flatMap(readInventory(inventoryFile), (inv) => (inv[0]!.processes.length === 0 ? Effect.void : Effect.fail("recorded"))))

        // 2. release with cancelActiveWork while a command runs: killed, then the sandbox is gone
        const s2 = uniqueSleep()
        const running = yield* Effect.fork(execute(call, cfg, id, { command: "sleep", args: [s2] }))
        yield* eventually(Effect.suspend(() => (procsWith(`sleep ${s2}`).length === 1 ? Effect.void : Effect.fail("not yet"))))
        yield* release(call, cfg, id, { cancelActiveWork: true })
        expect(procsWith(`sleep ${s2}`)).toEqual([])
        const killed = yield* Fiber.join(running)
        expect(killed).toMatchObject({ exitCode: null, signal: "SIGTERM", timedOut: false })
        expect(yield* readInventory(inventoryFile)).toEqual([])
      })))

  it.live("a command of a worker that was SIGKILLed is killed by the next destroy (processes are in the inventory)", () =>
    withWorker(({ call, config, host, inventoryFile }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-crash")
        const s = uniqueSleep()
        const fiber = yield* Effect.fork(Effect.exit(execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s] })))
        yield* eventually(Effect.suspend(() => (sleeps(s).length === 1 ? Effect.void : Effect.fail("not yet"))))
        // the command is recorded in the inventory right after it starts
        yield* eventually(Effect.flatMap(readInventory(inventoryFile), (inv) => (inv[0]!.processes.length === 1 ? Effect.void : Effect.fail("not recorded"))))
        const pid = (yield* host.status("fake-sandbox")).pid!
        process.kill(pid, "SIGKILL")
        const exit = yield* Fiber.join(fiber)
        expect(failureOf(exit).code).toBe(-32000)
        // the orphan survives its worker (own process group) ...
        expect(procsWith(`sleep ${s}`)).toHaveLength(1)
        yield* eventually(Effect.filterOrFail(host.status("fake-sandbox"), (st) => st.workerStatus === "running" && st.pid !== pid))
        // ... the sandbox is still there for the restarted worker, and destroying it kills the orphan
        expect((yield* resume(call, cfg, lease.providerLeaseId!)).providerLeaseId).toBe(lease.providerLeaseId)
        yield* destroy(call, cfg, lease.providerLeaseId!)
        expect(procsWith(`sleep ${s}`)).toEqual([])
        expect(yield* readInventory(inventoryFile)).toEqual([])
      }), { restartBaseMs: 20, restartMaxMs: 100 }))

  it.live("a worker that gets SIGTERM kills its running commands on the way out", () =>
    withWorker(({ call, config, host }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-sigterm")
        const s = uniqueSleep()
        const fiber = yield* Effect.fork(Effect.exit(execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s] })))
        yield* eventually(Effect.suspend(() => (sleeps(s).length === 1 ? Effect.void : Effect.fail("not yet"))))
        const pid = (yield* host.status("fake-sandbox")).pid!
        process.kill(pid, "SIGTERM")
        expect(failureOf(yield* Fiber.join(fiber)).code).toBe(-32000)
        yield* eventually(Effect.suspend(() => (procsWith(`sleep ${s}`).length === 0 ? Effect.void : Effect.fail("still running"))))
        yield* eventually(Effect.filterOrFail(host.status("fake-sandbox"), (st) => st.workerStatus === "running" && st.pid !== pid))
        yield* destroy(call, cfg, lease.providerLeaseId!)
      }), { restartBaseMs: 20, restartMaxMs: 100 }))

  it.live("stopping the worker kills its running commands", () =>
    Effect.gen(function* () {
      const s = uniqueSleep()
      yield* withWorker(({ call, config, host }) =>
        Effect.gen(function* () {
          const cfg = config()
          const lease = yield* acquire(call, cfg, "run-stop")
          yield* Effect.fork(Effect.exit(execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s] })))
          yield* eventually(Effect.suspend(() => (procsWith(`sleep ${s}`).length === 1 ? Effect.void : Effect.fail("not yet"))))
          yield* host.stop("fake-sandbox")
          expect(procsWith(`sleep ${s}`)).toEqual([])
        }))
    }))

  it.live("failOn + failTimes: the first N calls of each listed op fail, then it works; without failTimes always", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const flaky = config({ failOn: ["acquire", "release"], failTimes: 2 })
        for (let i = 0; i < 2; i++) {
          const e = failureOf(yield* Effect.exit(acquire(call, flaky, "run-flaky")))
          expect(e).toMatchObject({ _tag: "WorkerError", code: -32002 })
          expect(e.message).toContain("injected failure on acquire")
        }
        expect(yield* readInventory(inventoryFile)).toEqual([])
        const lease = yield* acquire(call, flaky, "run-flaky")
        expect(lease.providerLeaseId).toBe(fakeLeaseId("run-flaky"))
        // counted per op: release has its own two failures
        expect(failureOf(yield* Effect.exit(release(call, flaky, lease.providerLeaseId!))).message).toContain("injected failure on release")
        expect(failureOf(yield* Effect.exit(release(call, flaky, lease.providerLeaseId!))).message).toContain("injected failure on release")
        expect((yield* readInventory(inventoryFile)).length).toBe(1)
        yield* release(call, flaky, lease.providerLeaseId!)
        expect(yield* readInventory(inventoryFile)).toEqual([])

        // without failTimes every call of the op fails; the others work
        const always = config({ failOn: ["execute", "resume", "destroy"] })
        const l2 = yield* acquire(call, always, "run-always")
        for (let i = 0; i < 3; i++) {
          expect(failureOf(yield* Effect.exit(execute(call, always, l2.providerLeaseId!, { command: "true" }))).message).toContain("injected failure on execute")
        }
        expect(failureOf(yield* Effect.exit(resume(call, always, l2.providerLeaseId!))).message).toContain("injected failure on resume")
        expect(failureOf(yield* Effect.exit(destroy(call, always, l2.providerLeaseId!))).message).toContain("injected failure on destroy")
        yield* destroy(call, config(), l2.providerLeaseId!)
        expect(yield* readInventory(inventoryFile)).toEqual([])
      })))

  it.live("latencyMs delays every op; hangOn never answers (the host's timeout cancels it)", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const slow = config({ latencyMs: 300 })
        const [d, lease] = yield* Effect.timed(acquire(call, slow, "run-slow"))
        expect(Duration.toMillis(d)).toBeGreaterThanOrEqual(290)
        const [d2] = yield* Effect.timed(release(call, slow, lease.providerLeaseId!))
        expect(Duration.toMillis(d2)).toBeGreaterThanOrEqual(290)

        const hung = config({ hangOn: ["acquire", "execute"] })
        const e = failureOf(yield* Effect.exit(call("environmentAcquireLease", { ...base(hung), runId: "run-hang" }, { timeoutMs: 400 })))
        expect(e).toMatchObject({ _tag: "RpcTimeout", code: -32003 })
        expect(yield* readInventory(inventoryFile)).toEqual([])
        // the worker is not stuck; execute hangs too (and is cancelled by the host timeout)
        const l = yield* acquire(call, config(), "run-hang")
        const e2 = failureOf(yield* Effect.exit(execute(call, hung, l.providerLeaseId!, { command: "true" }, { timeoutMs: 300 })))
        expect(e2.code).toBe(-32003)
        // hangOn honours failTimes too: hang once, then answer
        const once = config({ hangOn: ["resume"], failTimes: 1 })
        expect(failureOf(yield* Effect.exit(call("environmentResumeLease", { ...base(once), providerLeaseId: l.providerLeaseId }, { timeoutMs: 300 }))).code).toBe(-32003)
        expect((yield* resume(call, once, l.providerLeaseId!)).providerLeaseId).toBe(l.providerLeaseId)
        yield* destroy(call, config(), l.providerLeaseId!)
      })))

  it.live("loseAcquireResponse: the sandbox is created and recorded, the caller gets an error; re-acquiring finds it", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const lossy = config({ loseAcquireResponse: true, failTimes: 1 })
        const e = failureOf(yield* Effect.exit(acquire(call, lossy, "run-lost")))
        expect(e.code).toBe(-32002)
        expect(e.message).toContain("acquire response lost")
        const inv = yield* readInventory(inventoryFile)
        expect(inv.map((s) => s.providerLeaseId)).toEqual([fakeLeaseId("run-lost")])
        expect(existsSync(inv[0]!.workspace)).toBe(true)
        // same run id → same sandbox, no second one
        const again = yield* acquire(call, lossy, "run-lost")
        expect(again).toMatchObject({ providerLeaseId: fakeLeaseId("run-lost"), metadata: { reused: true } })
        expect((yield* readInventory(inventoryFile)).length).toBe(1)
        // without failTimes it loses every response
        const always = config({ loseAcquireResponse: true })
        expect(failureOf(yield* Effect.exit(acquire(call, always, "run-lost-2"))).message).toContain("acquire response lost")
        expect(failureOf(yield* Effect.exit(acquire(call, always, "run-lost-2"))).message).toContain("acquire response lost")
        expect((yield* readInventory(inventoryFile)).length).toBe(2)
        yield* destroy(call, config(), fakeLeaseId("run-lost"))
        yield* destroy(call, config(), fakeLeaseId("run-lost-2"))
        expect(yield* readInventory(inventoryFile)).toEqual([])
      })))

  it.live("expireAfterMs: the sandbox leaves the inventory; resume → null, execute → expired", () =>
    withWorker(({ call, config, inventoryFile }) =>
      Effect.gen(function* () {
        const cfg = config({ expireAfterMs: 2000 })
        const lease = yield* acquire(call, cfg, "run-expire")
        expect(typeof lease.expiresAt).toBe("string")
        const workspace = lease.metadata!.workspace as string
        expect((yield* resume(call, cfg, lease.providerLeaseId!)).providerLeaseId).toBe(lease.providerLeaseId)
        // the worker's own timer prunes it: the raw file shows it gone without anyone asking, and
        // its workspace is removed right after (teardown runs once the inventory write is out of the lock)
        yield* eventually(Effect.suspend(() => {
          const raw = JSON.parse(readFileSync(inventoryFile, "utf8")) as { sandboxes: Array<unknown> }
          return raw.sandboxes.length === 0 && !existsSync(workspace) ? Effect.void : Effect.fail("still there")
        }))
        expect(yield* resume(call, cfg, lease.providerLeaseId!)).toEqual({ providerLeaseId: null })
        const e = failureOf(yield* Effect.exit(execute(call, cfg, lease.providerLeaseId!, { command: "true" })))
        expect(e.message).toContain("expired")
        expect(yield* destroy(call, cfg, lease.providerLeaseId!)).toMatchObject({ state: "destroyed" })
        // acquiring the same run id again makes a fresh sandbox
        const fresh = yield* acquire(call, config(), "run-expire")
        expect(fresh.metadata).toMatchObject({ reused: false })
        yield* destroy(call, config(), fresh.providerLeaseId!)
      })))
})

// ---- the in-process twin ----
const withTwin = <A, E>(body: Effect.Effect<A, E, Providers | FakeSandboxControl>, options?: Parameters<typeof layerFakeProviders>[0]) =>
  Effect.gen(function* () {
    const before = childPids()
    const a = yield* Effect.scoped(Effect.provide(body, layerFakeProviders(options)))
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    return a
  })

describe("layerFakeProviders (in-process twin)", () => {
  it.live("resolve/list/isAvailable; acquire/execute/release with the plugin's ids, env rule and inventory", () => {
    process.env.GANTRY_FAKE_SANDBOX_CANARY = "canary-twin"
    return withTwin(Effect.gen(function* () {
      const providers = yield* Providers
      const control = yield* FakeSandboxControl
      expect((yield* providers.resolve("fake")).pluginId).toBe("fake-sandbox")
      expect((yield* providers.resolve("fake-sandbox/fake")).driverKey).toBe("fake")
      expect(failureOf(yield* Effect.exit(providers.resolve("other/fake")))._tag).toBe("ProviderNotFound")
      expect((yield* providers.list).map((p) => `${p.pluginId}/${p.driverKey}`)).toEqual(["fake-sandbox/fake"])
      expect(yield* providers.isAvailable("fake-sandbox")).toBe(true)

      const cfg = control.environmentConfig()
      const call: Call = (m, p, o = {}) => providers.call("fake-sandbox", m as never, p, { companyId: "acme", ...o })
      const a = yield* acquire(call, cfg, "run-1")
      const b = yield* acquire(call, cfg, "run-1")
      expect(a.providerLeaseId).toBe(fakeLeaseId("run-1"))
      expect(b.providerLeaseId).toBe(a.providerLeaseId)
      expect((yield* control.inventory()).length).toBe(1)
      expect((yield* readInventory(control.inventoryFile)).length).toBe(1)

      const chunks: Array<string> = []
      const r = yield* execute(call, cfg, a.providerLeaseId!, { command: "sh", args: ["-c", "echo hi; echo err >&2; env"], env: { FOO: "bar" } }, {
        onExecuteLog: (s, c) => void chunks.push(`${s}:${c}`)
      })
      expect(r).toMatchObject({ exitCode: 0, stderr: "err\n" })
      expect(envLines(r.stdout).filter((l) => !l.startsWith("PWD=")).sort()).toEqual(["FOO=bar", `PATH=${Core.DEFAULT_PATH}`])
      expect(r.stdout).not.toContain("canary-twin")
      expect(chunks).toContain("stderr:err\n")

      // params are checked like the worker does (-32602 naming the field)
      const bad = failureOf(yield* Effect.exit(call("environmentAcquireLease", { ...base(cfg) })))
      expect(bad).toMatchObject({ _tag: "InvalidParams", code: -32602 })
      expect(bad.message).toContain("runId")

      const workspace = (yield* control.inventory())[0]!.workspace
      yield* release(call, cfg, a.providerLeaseId!, { cancelActiveWork: true })
      expect(yield* control.inventory()).toEqual([])
      expect(existsSync(workspace)).toBe(false)
      const calls = yield* control.calls
      expect(calls.map((c) => `${c.method}:${c.outcome}`)).toEqual([
        "environmentAcquireLease:success", "environmentAcquireLease:success", "environmentExecute:success",
        "environmentReleaseLease:success"
      ])
      expect(calls[3]!.params).toMatchObject({ cancelActiveWork: true })

      yield* control.setAvailable(false)
      expect(yield* providers.isAvailable("fake-sandbox")).toBe(false)
      expect(failureOf(yield* Effect.exit(acquire(call, cfg, "run-2")))).toMatchObject({ _tag: "WorkerUnavailable", code: -32000 })
      yield* control.setAvailable(true)
      expect((yield* acquire(call, cfg, "run-2")).providerLeaseId).toBe(fakeLeaseId("run-2"))
      yield* destroy(call, cfg, fakeLeaseId("run-2"))
    })).pipe(Effect.ensuring(Effect.sync(() => void delete process.env.GANTRY_FAKE_SANDBOX_CANARY)))
  })

  it.live("knobs, timeouts and interruption: the call returns only once the command is dead", () =>
    withTwin(Effect.gen(function* () {
      const providers = yield* Providers
      const control = yield* FakeSandboxControl
      const call: Call = (m, p, o = {}) => providers.call("fake-sandbox", m as never, p, { companyId: "acme", ...o })
      const flaky = control.environmentConfig({ failOn: ["acquire"], failTimes: 1, loseAcquireResponse: false })
      expect(failureOf(yield* Effect.exit(acquire(call, flaky, "run-k"))).code).toBe(-32002)
      const lease = yield* acquire(call, flaky, "run-k")
      const cfg = control.environmentConfig()

      // provider-side timeout
      const s1 = uniqueSleep()
      const r = yield* execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s1], timeoutMs: 200 })
      expect(r).toMatchObject({ exitCode: null, timedOut: true, signal: "SIGTERM" })
      expect(procsWith(`sleep ${s1}`)).toEqual([])
      // host-side (call) timeout: RpcTimeout, and the command is already gone
      const s2 = uniqueSleep()
      const t = failureOf(yield* Effect.exit(execute(call, cfg, lease.providerLeaseId!, { command: "sleep", args: [s2] }, { timeoutMs: 300 })))
      expect(t).toMatchObject({ _tag: "RpcTimeout", code: -32003 })
      expect(procsWith(`sleep ${s2}`)).toEqual([])
      // interruption
      const s3 = uniqueSleep()
      const fiber = yield* Effect.fork(execute(call, cfg, lease.providerLeaseId!, { command: "sh", args: ["-c", `sleep ${s3} & sleep ${s3}`] }))
      yield* eventually(Effect.suspend(() => (sleeps(s3).length === 2 ? Effect.void : Effect.fail("not yet"))))
      yield* Fiber.interrupt(fiber)
      expect(procsWith(`sleep ${s3}`)).toEqual([])
      expect(yield* control.activeProcesses).toBe(0)
      // hangOn with a short call timeout
      const hung = control.environmentConfig({ hangOn: ["resume"] })
      expect(failureOf(yield* Effect.exit(call("environmentResumeLease", { ...base(hung), providerLeaseId: lease.providerLeaseId }, { timeoutMs: 200 }))).code).toBe(-32003)
      // expiry
      const exp = control.environmentConfig({ expireAfterMs: 200 })
      const short = yield* acquire(call, exp, "run-exp")
      yield* eventually(Effect.flatMap(control.inventory(), (inv) => (inv.some((s) => s.providerLeaseId === short.providerLeaseId) ? Effect.fail("alive") : Effect.void)))
      expect(yield* resume(call, exp, short.providerLeaseId!)).toEqual({ providerLeaseId: null })
      expect(failureOf(yield* Effect.exit(execute(call, exp, short.providerLeaseId!, { command: "true" }))).message).toContain("expired")
      yield* release(call, cfg, lease.providerLeaseId!)
      expect(yield* control.inventory()).toEqual([])
      const outcomes = (yield* control.calls).map((c) => c.outcome)
      expect(outcomes).toContain("interrupted")
    })))

  it.live("the twin and the plugin worker share one inventory file: same ids, either side sees the other's sandboxes", () => {
    const dirs = freshDirs()
    return Effect.gen(function* () {
      yield* withTwin(Effect.gen(function* () {
        const providers = yield* Providers
        const control = yield* FakeSandboxControl
        expect(control.inventoryFile).toBe(dirs.inventoryFile)
        const lease = (yield* providers.call("fake-sandbox", "environmentAcquireLease", { ...base(control.environmentConfig()), runId: "shared-run" }, { companyId: "acme" })) as Lease
        expect(lease.providerLeaseId).toBe(fakeLeaseId("shared-run"))
      }), { inventoryFile: dirs.inventoryFile, workspaceRoot: dirs.workspaceRoot })
      // closing the twin left the sandbox (sandboxes outlive their provider process, like real ones)
      expect((yield* readInventory(dirs.inventoryFile)).map((s) => s.providerLeaseId)).toEqual([fakeLeaseId("shared-run")])
      yield* withWorker(({ call }) =>
        Effect.gen(function* () {
          const cfg = { inventoryFile: dirs.inventoryFile, workspaceRoot: dirs.workspaceRoot }
          // acquire through the worker finds the twin's sandbox; destroy through it empties the inventory
          const again = yield* acquire(call, cfg, "shared-run")
          expect(again).toMatchObject({ providerLeaseId: fakeLeaseId("shared-run"), metadata: { reused: true } })
          const r = yield* execute(call, cfg, again.providerLeaseId!, { command: "sh", args: ["-c", "echo shared"] })
          expect(r.stdout).toBe("shared\n")
          yield* destroy(call, cfg, again.providerLeaseId!)
          expect(yield* readInventory(dirs.inventoryFile)).toEqual([])
        }))
    }).pipe(Effect.ensuring(Effect.sync(() => rmSync(dirs.dir, { recursive: true, force: true }))))
  })
})
