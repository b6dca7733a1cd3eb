// Shared helpers of the bwrap-sandbox tests: a workspaceRoot the sandbox user can reach, the real
// worker behind a PluginHost, provider calls, and /proc scans for a test's sandbox processes.
import { expect } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import { spawnSync } from "node:child_process"
import { accessSync, chmodSync, constants, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { isAbsolute, join } from "node:path"
import type { HostOptionsShape } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { childPids, hostLayer, root } from "../helpers.js"

// ---------------------------------------------------------------- is bwrap usable here?

export interface BwrapCheck {
  readonly ok: boolean
  /** Why the real-bwrap tests are skipped (when not ok). */
  readonly reason: string
}

/** bwrap on this process's PATH that can create its namespaces (a fresh machine may have neither:
 * `npm test` skips the real-bwrap suites there and says why, as the PostgreSQL variants do). */
const checkBwrap = (): BwrapCheck => {
  const dirs = (process.env.PATH ?? "").split(":").filter((d) => d.length > 0 && isAbsolute(d))
  const bin = dirs.map((d) => join(d, "bwrap")).find((p) => {
    try {
      accessSync(p, constants.X_OK)
      return true
    } catch {
      return false
    }
  })
  if (!bin) return { ok: false, reason: "no bwrap binary on PATH (apt-get install -y bubblewrap)" }
  const r = spawnSync(bin, ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"], {
    encoding: "utf8",
    timeout: 20_000
  })
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || `exit ${r.status ?? r.signal}`).trim().split("\n")[0]
    return { ok: false, reason: `${bin} cannot create its namespaces here: ${why}` }
  }
  return { ok: true, reason: "" }
}

export const bwrap: BwrapCheck = checkBwrap()
if (!bwrap.ok) {
  // printed once per test file that imports this module
  console.warn(`[gantry tests] real-bwrap suites skipped: ${bwrap.reason}`)
}

export const bwrapPluginDir = join(root, "plugins", "bwrap-sandbox")
export const PLUGIN = "bwrap-sandbox"

export type Exec = { exitCode: number | null; signal?: string | null; timedOut: boolean; stdout: string; stderr: string; metadata: Record<string, unknown> }
export type Lease = { providerLeaseId: string | null; metadata?: Record<string, unknown>; expiresAt?: string | null }
export type Call = (method: string, params: unknown, o?: { timeoutMs?: number; onExecuteLog?: (s: "stdout" | "stderr", c: string) => void }) => Effect.Effect<unknown, unknown>

/** A fresh directory for lease workspaces. mkdtemp makes it 0700; the sandbox's host user (65534 when
 * the tests run as root) must be able to traverse it, as the provider's own default root allows. */
export const freshRoot = (): { dir: string; workspaceRoot: string } => {
  const dir = mkdtempSync(join(tmpdir(), "gantry-bwrap-test-"))
  chmodSync(dir, 0o711)
  return { dir, workspaceRoot: join(dir, "ws") }
}

export const base = (config: Record<string, unknown>) => ({ driverKey: "bwrap", companyId: "acme", environmentId: "env-1", config })

export interface WorkerCtx {
  readonly dir: string
  readonly workspaceRoot: string
  readonly call: Call
  readonly config: (knobs?: Record<string, unknown>) => Record<string, unknown>
  readonly host: PluginHost.PluginHostShape
}

/** Run `body` against the real bwrap-sandbox worker; afterwards no child process and no temp dir is left. */
export const withWorker = <A, E>(body: (ctx: WorkerCtx) => Effect.Effect<A, E, PluginHost.PluginHost>, overrides: Partial<HostOptionsShape> = {}) =>
  Effect.gen(function* () {
    const before = childPids()
    const dirs = freshRoot()
    const a = yield* Effect.scoped(
      Effect.gen(function* () {
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dirs.dir, { recursive: true, force: true })))
        const host = yield* PluginHost.PluginHost
        yield* host.install(bwrapPluginDir)
        yield* host.start(PLUGIN)
        const call: Call = (method, params, o = {}) => host.call(PLUGIN, method, params, { companyId: "acme", ...o })
        const config = (knobs: Record<string, unknown> = {}) => ({ workspaceRoot: dirs.workspaceRoot, ...knobs })
        return yield* body({ ...dirs, call, config, host })
      }).pipe(Effect.provide(hostLayer(overrides)))
    )
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    return a
  })

export const acquire = (call: Call, config: Record<string, unknown>, runId: string) =>
  Effect.map(call("environmentAcquireLease", { ...base(config), runId }), (l) => l as Lease)
export const execute = (
  call: Call,
  config: Record<string, unknown>,
  leaseId: string,
  cmd: { command: string; args?: ReadonlyArray<string>; env?: Record<string, string>; stdin?: string; timeoutMs?: number; cwd?: string },
  o?: Parameters<Call>[2]
) => Effect.map(call("environmentExecute", { ...base(config), lease: { providerLeaseId: leaseId }, ...cmd }, o), (r) => r as Exec)
/** `sh -c script` in the lease's sandbox. */
export const sh = (call: Call, config: Record<string, unknown>, leaseId: string, script: string, extra: { env?: Record<string, string>; stdin?: string; timeoutMs?: number } = {}) =>
  execute(call, config, leaseId, { command: "sh", args: ["-c", script], ...extra })
export const release = (call: Call, config: Record<string, unknown>, leaseId: string, extra: Record<string, unknown> = {}) =>
  call("environmentReleaseLease", { ...base(config), providerLeaseId: leaseId, ...extra }) as Effect.Effect<{ providerLeaseId: string; state: string }, unknown>
export const destroy = (call: Call, config: Record<string, unknown>, leaseId: string) =>
  call("environmentDestroyLease", { ...base(config), providerLeaseId: leaseId }) as Effect.Effect<{ providerLeaseId: string; state: string }, unknown>
export const resume = (call: Call, config: Record<string, unknown>, leaseId: string) =>
  Effect.map(call("environmentResumeLease", { ...base(config), providerLeaseId: leaseId }), (l) => l as Lease)

export const failureOf = <A, E>(exit: Exit.Exit<A, E>) => {
  if (Exit.isSuccess(exit)) throw new Error(`expected a failure, got ${JSON.stringify(exit.value)}`)
  return Cause.squash(exit.cause) as { _tag: string; code?: number; message: string }
}

export const uniqueMarker = (what: string) => `gantry-bwrap-${what}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`

/** Live (non-zombie) host processes whose command line or environment carries `marker`. */
export const processesWith = (marker: string): Array<number> => {
  const out: Array<number> = []
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8")
      let env = ""
      try {
        env = readFileSync(`/proc/${d}/environ`, "utf8")
      } catch {
        // not readable: the command line decides
      }
      if (!cmd.includes(marker) && !env.includes(marker)) continue
      if (cmd.includes("vitest")) continue
      const stat = readFileSync(`/proc/${d}/stat`, "utf8")
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z") out.push(Number(d))
    } catch {
      // gone
    }
  }
  return out
}
