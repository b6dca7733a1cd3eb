// fake-sandbox core: the deterministic sandbox provider (SPEC §13) shared by the plugin worker and the
// in-process twin in gantry/testing. Plain Node only: an inventory file of live sandboxes, a temp dir
// per lease, real processes (one process group per command) and fault injection read from the config.
import { spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { constants as fsConstants, promises as fsp, readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, isAbsolute, join } from "node:path"
import { StringDecoder } from "node:string_decoder"

export const PLUGIN_ID = "fake-sandbox"
export const DRIVER_KEY = "fake"
export const DISPLAY_NAME = "Fake sandbox (deterministic, for tests and demos)"
/** The only variable a command gets besides the `env` of the call (the call's own PATH wins). */
export const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
/** Retained stdout/stderr per command, each (streaming is not capped). */
export const OUTPUT_CAP_BYTES = 1024 * 1024
/** SIGTERM → this long → SIGKILL, on timeout and on cancel. */
export const KILL_GRACE_MS = 250
export const DEFAULT_ROOT = join(tmpdir(), "gantry-fake-sandbox")

/** Operations fault knobs (`failOn`, `hangOn`) may name. SPEC §13 lists the first five. */
export const FAULT_OPS = ["acquire", "resume", "release", "destroy", "execute", "realize", "probe"] as const
export type FaultOp = (typeof FAULT_OPS)[number]
/** Environment-config fields owned by the host (SPEC §6); accepted and passed through untouched. */
const HOST_FIELDS = new Set(["provider", "timeoutMs", "ttlMs", "reuseLease"])

/** The driver's `configSchema` (manifest.json repeats it; a test keeps the two equal). */
export const CONFIG_SCHEMA = {
  type: "object",
  properties: {
    inventoryFile: { type: "string", description: "Absolute path of the JSON inventory of live sandboxes (default <tmp>/gantry-fake-sandbox/inventory.json)", "x-gantry-operator": true },
    workspaceRoot: { type: "string", description: "Absolute directory under which each lease gets a temp workspace (default <tmp>/gantry-fake-sandbox)", "x-gantry-operator": true },
    failOn: { type: "array", items: { type: "string", enum: [...FAULT_OPS] }, description: "Operations that fail (-32002)" },
    failTimes: { type: "integer", minimum: 0, description: "Fault only the first N calls of each faulted operation (default: every call)" },
    latencyMs: { type: "integer", minimum: 0, maximum: 60000, description: "Sleep before every operation" },
    hangOn: { type: "array", items: { type: "string", enum: [...FAULT_OPS] }, description: "Operations that never answer (until cancelled)" },
    loseAcquireResponse: { type: "boolean", description: "acquire creates the sandbox, records it, then fails" },
    expireAfterMs: { type: "integer", minimum: 1, description: "Sandboxes disappear this long after acquire" }
  },
  additionalProperties: true
} as const

// ---- params / results (structurally the protocol's, kept local so this file needs no package) ----
type Json = Record<string, unknown>
export interface BaseParams {
  readonly driverKey?: string
  readonly companyId?: string
  readonly environmentId?: string
  readonly config: Json
}
export interface AcquireParams extends BaseParams {
  readonly runId: string
  readonly agentId?: string | null | undefined
}
export interface LeaseParams extends BaseParams {
  readonly providerLeaseId: string
  readonly cancelActiveWork?: boolean | undefined
}
export interface LeaseRefParams extends BaseParams {
  readonly lease: { readonly providerLeaseId: string }
}
export interface ExecuteParams extends LeaseRefParams {
  readonly command: string
  readonly args?: ReadonlyArray<string> | undefined
  readonly cwd?: string | undefined
  readonly env?: Readonly<Record<string, string>> | undefined
  readonly stdin?: string | undefined
  readonly timeoutMs?: number | undefined
}
export interface ProviderLease {
  providerLeaseId: string | null
  metadata?: Json
  expiresAt?: string | null
}
export interface ExecuteResult {
  exitCode: number | null
  signal: string | null
  timedOut: boolean
  stdout: string
  stderr: string
  metadata: Json
}
export interface ValidateResult {
  ok: boolean
  errors: Array<string>
  warnings: Array<string>
  normalizedConfig: Json
}
export interface ProbeResult {
  ok: boolean
  summary: string
  diagnostics: Array<Json>
  metadata: Json
}
export interface ReleaseResult {
  providerLeaseId: string
  state: "destroyed"
}

export interface OpOptions {
  /** Aborting cancels the operation: a hang or latency ends, a running command's process group is killed. */
  readonly signal?: AbortSignal | undefined
}
export interface ExecuteOptions extends OpOptions {
  readonly onLog?: ((stream: "stdout" | "stderr", chunk: string) => void) | undefined
}

// ---- inventory ----
export interface SandboxProcess {
  readonly pid: number
  /** /proc start time of the group leader, so a reused pid is never killed. */
  readonly startTime: string | null
  readonly command: string
}
export interface SandboxEntry {
  readonly providerLeaseId: string
  readonly runId: string
  readonly companyId: string | null
  readonly environmentId: string | null
  readonly agentId: string | null
  readonly workspace: string
  readonly createdAt: string
  readonly expiresAt: string | null
  readonly processes: ReadonlyArray<SandboxProcess>
}
interface Inventory {
  version: 1
  sandboxes: Array<SandboxEntry>
  /** Ids that expired (most recent last, capped) so execute can say "expired" rather than "not found". */
  expired: Array<string>
}

export type FakeSandboxErrorKind = "fault" | "lost_response" | "expired" | "not_found" | "invalid_config" | "cancelled" | "io"
/** Every failure of the core. The worker sends its message as a -32002 worker error. */
export class FakeSandboxError extends Error {
  override readonly name = "FakeSandboxError"
  constructor(message: string, readonly kind: FakeSandboxErrorKind) {
    super(message)
  }
}

/** `fake-<sha256(runId)[0..12]>`: the same run id always names the same sandbox. */
export const leaseIdFor = (runId: string): string => `fake-${createHash("sha256").update(runId).digest("hex").slice(0, 12)}`

// ---- config ----
export interface Knobs {
  readonly inventoryFile: string
  readonly workspaceRoot: string
  readonly failOn: ReadonlySet<FaultOp>
  readonly hangOn: ReadonlySet<FaultOp>
  readonly failTimes: number | null
  readonly latencyMs: number
  readonly loseAcquireResponse: boolean
  readonly expireAfterMs: number | null
}
export interface Defaults {
  readonly inventoryFile?: string | undefined
  readonly workspaceRoot?: string | undefined
}

const isOp = (u: unknown): u is FaultOp => typeof u === "string" && (FAULT_OPS as ReadonlyArray<string>).includes(u)

/** Check the knobs of an environment config: every problem, with its field. */
export const validateConfig = (raw: unknown, defaults: Defaults = {}): ValidateResult & { knobs: Knobs } => {
  const errors: Array<string> = []
  const warnings: Array<string> = []
  const config: Json = typeof raw === "object" && raw !== null && !Array.isArray(raw) ? { ...(raw as Json) } : {}
  if (!(typeof raw === "object" && raw !== null && !Array.isArray(raw)) && raw !== undefined) errors.push("config: must be an object")
  const normalized: Json = { ...config }
  const ops = (field: "failOn" | "hangOn"): Set<FaultOp> => {
    const v = config[field]
    const out = new Set<FaultOp>()
    if (v === undefined) return out
    if (!Array.isArray(v)) {
      errors.push(`${field}: must be an array of ${FAULT_OPS.join("|")}`)
      return out
    }
    v.forEach((op, i) => {
      if (isOp(op)) out.add(op)
      else errors.push(`${field}[${i}]: unknown operation ${JSON.stringify(op)} (expected one of ${FAULT_OPS.join(", ")})`)
    })
    normalized[field] = [...out]
    return out
  }
  const int = (field: string, min: number, max: number): number | null => {
    const v = config[field]
    if (v === undefined || v === null) {
      delete normalized[field]
      return null
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      errors.push(`${field}: must be an integer between ${min} and ${max}`)
      return null
    }
    return v
  }
  const path = (field: "inventoryFile" | "workspaceRoot"): string | undefined => {
    const v = config[field]
    if (v === undefined || v === null) {
      delete normalized[field]
      return undefined
    }
    if (typeof v !== "string" || v.length === 0 || !isAbsolute(v)) {
      errors.push(`${field}: must be an absolute path`)
      return undefined
    }
    return v
  }
  const failOn = ops("failOn")
  const hangOn = ops("hangOn")
  const failTimes = int("failTimes", 0, 1_000_000)
  const latencyMs = int("latencyMs", 0, 60_000) ?? 0
  const expireAfterMs = int("expireAfterMs", 1, 365 * 24 * 3600 * 1000)
  const lose = config.loseAcquireResponse
  if (lose !== undefined && typeof lose !== "boolean") errors.push("loseAcquireResponse: must be a boolean")
  const inventoryFile = path("inventoryFile") ?? defaults.inventoryFile ?? join(DEFAULT_ROOT, "inventory.json")
  const workspaceRoot = path("workspaceRoot") ?? defaults.workspaceRoot ?? DEFAULT_ROOT
  for (const k of Object.keys(config)) {
    if (!(k in CONFIG_SCHEMA.properties) && !HOST_FIELDS.has(k)) warnings.push(`${k}: unknown field, ignored by the fake sandbox`)
  }
  if (failTimes !== null && failOn.size === 0 && hangOn.size === 0 && lose !== true) warnings.push("failTimes: has no effect without failOn, hangOn or loseAcquireResponse")
  return {
    ok: errors.length === 0,
    errors,
    warnings,
    normalizedConfig: normalized,
    knobs: {
      inventoryFile,
      workspaceRoot,
      failOn,
      hangOn,
      failTimes,
      latencyMs,
      loseAcquireResponse: lose === true,
      expireAfterMs
    }
  }
}

const knobsOf = (config: unknown, defaults: Defaults): Knobs => {
  const r = validateConfig(config, defaults)
  if (!r.ok) throw new FakeSandboxError(`invalid fake-sandbox config: ${r.errors.join("; ")}`, "invalid_config")
  return r.knobs
}

// ---- small async helpers ----
const cancelled = (what: string) => new FakeSandboxError(`fake-sandbox: ${what} cancelled`, "cancelled")

const sleep = (ms: number, signal: AbortSignal | undefined, what: string): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled(what))
    const onAbort = () => {
      clearTimeout(t)
      reject(cancelled(what))
    }
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort)
      resolve()
    }, ms)
    signal?.addEventListener("abort", onAbort, { once: true })
  })

/** Never settles unless aborted. */
const hang = (signal: AbortSignal | undefined, what: string): Promise<never> =>
  new Promise((_, reject) => {
    if (signal?.aborted) return reject(cancelled(what))
    signal?.addEventListener("abort", () => reject(cancelled(what)), { once: true })
  })

const errno = (e: unknown): string | undefined => (e as { code?: string } | null)?.code

// ---- the inventory lock: in-process queue + a cross-process lock file (pid inside, stale if dead) ----
const tails = new Map<string, Promise<void>>()

const pidAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return errno(e) === "EPERM"
  }
}

const takeFileLock = async (lock: string): Promise<void> => {
  const started = Date.now()
  for (;;) {
    try {
      const h = await fsp.open(lock, "wx")
      await h.writeFile(String(process.pid))
      await h.close()
      return
    } catch (e) {
      if (errno(e) !== "EEXIST") throw e
    }
    try {
      const [text, st] = await Promise.all([fsp.readFile(lock, "utf8"), fsp.stat(lock)])
      const owner = Number(text)
      const age = Date.now() - st.mtimeMs
      const stale = (owner > 0 && owner !== process.pid && !pidAlive(owner)) || age > 10_000 || (text === "" && age > 1_000)
      if (stale) await fsp.rm(lock, { force: true })
    } catch {
      // the holder just released it
    }
    if (Date.now() - started > 15_000) throw new FakeSandboxError(`fake-sandbox: could not lock ${lock}`, "io")
    await new Promise((r) => setTimeout(r, 3))
  }
}

const withLock = async <A>(file: string, f: () => Promise<A>): Promise<A> => {
  const prev = tails.get(file) ?? Promise.resolve()
  let done!: () => void
  const mine = new Promise<void>((r) => (done = r))
  const tail = prev.then(() => mine)
  tails.set(file, tail)
  await prev
  const lock = `${file}.lock`
  try {
    await fsp.mkdir(dirname(file), { recursive: true })
    await takeFileLock(lock)
    try {
      return await f()
    } finally {
      await fsp.rm(lock, { force: true })
    }
  } finally {
    done()
    if (tails.get(file) === tail) tails.delete(file)
  }
}

const readJson = async <A>(file: string, empty: A): Promise<A> => {
  try {
    return JSON.parse(await fsp.readFile(file, "utf8")) as A
  } catch (e) {
    if (errno(e) === "ENOENT") return empty
    throw new FakeSandboxError(`fake-sandbox: cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, "io")
  }
}

/** Write via a temp file + rename, so a reader never sees half a file. */
const writeAtomic = async (file: string, value: unknown): Promise<void> => {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`
  await fsp.writeFile(tmp, JSON.stringify(value, null, 2) + "\n")
  await fsp.rename(tmp, file)
}

const emptyInventory = (): Inventory => ({ version: 1, sandboxes: [], expired: [] })
const EXPIRED_CAP = 1000

/** Load under the lock; move entries past their `expiresAt` to `expired` (returned for teardown). */
const load = async (file: string): Promise<{ inv: Inventory; pruned: Array<SandboxEntry> }> => {
  const raw = await readJson<Partial<Inventory>>(file, emptyInventory())
  const inv: Inventory = { version: 1, sandboxes: [...(raw.sandboxes ?? [])], expired: [...(raw.expired ?? [])] }
  const now = Date.now()
  const pruned = inv.sandboxes.filter((s) => s.expiresAt !== null && Date.parse(s.expiresAt) <= now)
  if (pruned.length > 0) {
    inv.sandboxes = inv.sandboxes.filter((s) => !pruned.includes(s))
    inv.expired = [...inv.expired.filter((id) => !pruned.some((p) => p.providerLeaseId === id)), ...pruned.map((p) => p.providerLeaseId)].slice(-EXPIRED_CAP)
  }
  return { inv, pruned }
}

// ---- processes ----
const procStat = (pid: number): Array<string> | null => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  } catch {
    return null
  }
}
const startTimeOf = (pid: number): string | null => procStat(pid)?.[19] ?? null
/** Alive and not a zombie (a zombie is dead, just not reaped yet by its parent). */
const running = (pid: number): boolean => {
  const st = procStat(pid)
  if (st) return st[0] !== "Z"
  return pidAlive(pid)
}
const killGroup = (pid: number, signal: NodeJS.Signals): void => {
  try {
    process.kill(-pid, signal)
  } catch {
    // group already gone
  }
}

interface Proc {
  readonly pid: number
  readonly leaseId: string
  /** Kill the process group (SIGTERM, grace, SIGKILL); resolves once the command has finished. */
  readonly kill: () => Promise<void>
  readonly killNow: () => void
}

/** Kill processes recorded in the inventory by another process (e.g. a worker that crashed). */
const killRecorded = async (procs: ReadonlyArray<SandboxProcess>, skip: ReadonlySet<number>): Promise<void> => {
  const targets = procs.filter((p) => !skip.has(p.pid) && (p.startTime === null || !running(p.pid) || startTimeOf(p.pid) === p.startTime))
  if (targets.length === 0) return
  for (const p of targets) killGroup(p.pid, "SIGKILL")
  const deadline = Date.now() + 2_000
  while (targets.some((p) => running(p.pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
}

/**
 * SIGKILL every process working inside `workspace`, by process group (except the groups in `skip`):
 * commands of a worker SIGKILLed before their inventory record was written (that write waits for
 * the inventory lock) are found this way. Returns the groups signalled.
 */
const signalInside = (workspace: string, skip: ReadonlySet<number>): Set<number> => {
  const groups = new Set<number>()
  let root: string
  try {
    root = realpathSync(workspace)
  } catch {
    return groups
  }
  const own = procStat(process.pid)?.[2]
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue
    try {
      const cwd = readlinkSync(`/proc/${d}/cwd`)
      if (cwd !== root && !cwd.startsWith(`${root}/`)) continue
      const pgid = procStat(Number(d))?.[2]
      // commands run in their own groups; never signal this process's group
      if (pgid !== undefined && pgid !== own && Number(pgid) > 1) {
        if (!skip.has(Number(pgid))) groups.add(Number(pgid))
      } else process.kill(Number(d), "SIGKILL")
    } catch {
      // gone, or not ours
    }
  }
  for (const g of groups) killGroup(g, "SIGKILL")
  return groups
}
const killInside = async (workspace: string, skip: ReadonlySet<number>): Promise<void> => {
  const groups = signalInside(workspace, skip)
  if (groups.size === 0) return
  const deadline = Date.now() + 2_000
  while ([...groups].some((g) => running(g)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
}

const isDir = (p: string): boolean => {
  try {
    return statSync(p).isDirectory()
  } catch {
    return false
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

const toLease = (e: SandboxEntry, reused: boolean): ProviderLease => ({
  providerLeaseId: e.providerLeaseId,
  metadata: { workspace: e.workspace, runId: e.runId, createdAt: e.createdAt, reused },
  expiresAt: e.expiresAt
})

export interface FakeSandbox {
  readonly validateConfig: (config: unknown) => ValidateResult
  readonly probe: (p: BaseParams, o?: OpOptions) => Promise<ProbeResult>
  /** Idempotent per run id: a live sandbox with the same id is returned, not created again. */
  readonly acquire: (p: AcquireParams, o?: OpOptions) => Promise<ProviderLease>
  /** `{providerLeaseId: null}` when the sandbox is gone (released, destroyed, expired, never existed). */
  readonly resume: (p: LeaseParams, o?: OpOptions) => Promise<ProviderLease>
  /** Kills the lease's processes, deletes its workspace and inventory entry. Gone already = success. */
  readonly release: (p: LeaseParams, o?: OpOptions) => Promise<ReleaseResult>
  readonly destroy: (p: LeaseParams, o?: OpOptions) => Promise<ReleaseResult>
  readonly realize: (p: LeaseRefParams, o?: OpOptions) => Promise<{ cwd: string; metadata: Json }>
  readonly execute: (p: ExecuteParams, o?: ExecuteOptions) => Promise<ExecuteResult>
  /** Kill every command this instance runs for the lease; resolves when they are gone. */
  readonly cancel: (providerLeaseId: string) => Promise<number>
  /** Commands this instance is running right now. */
  readonly activeProcesses: () => number
  /** Live sandboxes of an inventory file (expired ones pruned first). */
  readonly inventory: (file?: string) => Promise<ReadonlyArray<SandboxEntry>>
  /** Forget the fault counters of an inventory file. */
  readonly resetFaults: (file?: string) => Promise<void>
  /** Kill every running command and stop expiry timers. Sandboxes stay in the inventory (resumable). */
  readonly shutdown: () => Promise<void>
  /** Synchronous last resort for `process.on("exit")`: SIGKILL every process group still running. */
  readonly killAllSync: () => void
}

/** Live sandboxes recorded in `file`. */
export const readInventory = async (file: string): Promise<ReadonlyArray<SandboxEntry>> => createFakeSandbox({ inventoryFile: file }).inventory(file)

interface Change<A> {
  readonly result: A
  readonly changed: boolean
}

/** One provider instance (the worker has one; each twin layer has one). */
export const createFakeSandbox = (defaults: Defaults = {}): FakeSandbox => {
  const procs = new Map<string, Set<Proc>>()
  const timers = new Set<ReturnType<typeof setTimeout>>()
  const defaultInventory = defaults.inventoryFile ?? join(DEFAULT_ROOT, "inventory.json")

  const ownPids = () => new Set([...procs.values()].flatMap((s) => [...s].map((p) => p.pid)))

  const cancel = async (leaseId: string): Promise<number> => {
    const set = procs.get(leaseId)
    if (!set || set.size === 0) return 0
    const list = [...set]
    await Promise.all(list.map((p) => p.kill()))
    return list.length
  }

  /** Tear down sandboxes: their processes (ours, recorded, and any still inside), then their workspaces. */
  const teardown = async (entries: ReadonlyArray<SandboxEntry>): Promise<void> => {
    for (const e of entries) {
      await cancel(e.providerLeaseId)
      await killRecorded(e.processes, ownPids())
      await killInside(e.workspace, ownPids())
      await fsp.rm(e.workspace, { recursive: true, force: true })
    }
  }

  /**
   * Signal an expired sandbox's commands synchronously, before its removal is written: this process
   * may be killed right after that write, and then no teardown would ever find them again.
   */
  const stopNow = (e: SandboxEntry): void => {
    for (const p of procs.get(e.providerLeaseId) ?? []) void p.kill()
    const own = ownPids()
    for (const r of e.processes) {
      if (!own.has(r.pid) && (r.startTime === null || !running(r.pid) || startTimeOf(r.pid) === r.startTime)) killGroup(r.pid, "SIGKILL")
    }
    signalInside(e.workspace, own)
  }

  /** Run `f` on the inventory under the lock; writes it back when `f` says it changed. */
  const mutate = async <A>(file: string, f: (inv: Inventory) => Change<A> | Promise<Change<A>>): Promise<A> => {
    const { result, pruned } = await withLock(file, async () => {
      const { inv, pruned } = await load(file)
      for (const e of pruned) stopNow(e)
      const r = await f(inv)
      if (r.changed || pruned.length > 0) await writeAtomic(file, inv)
      return { result: r.result, pruned }
    })
    if (pruned.length > 0) await teardown(pruned)
    return result
  }
  const find = (file: string, id: string) =>
    mutate(file, (inv) => ({
      result: { entry: inv.sandboxes.find((s) => s.providerLeaseId === id), expired: inv.expired.includes(id) },
      changed: false
    }))

  const live = async (k: Knobs, id: string): Promise<SandboxEntry> => {
    const { entry, expired } = await find(k.inventoryFile, id)
    if (entry) return entry
    if (expired) throw new FakeSandboxError(`fake-sandbox: sandbox ${id} expired`, "expired")
    throw new FakeSandboxError(`fake-sandbox: sandbox ${id} not found`, "not_found")
  }

  /** Count one faulted call; true while within `failTimes` (always true without it). */
  const faultHits = async (k: Knobs, kind: "fail" | "hang" | "lose", op: FaultOp): Promise<boolean> => {
    if (k.failTimes === null) return true
    const counters = `${k.inventoryFile}.faults.json`
    const key = `${kind}:${op}`
    const n = await withLock(k.inventoryFile, async () => {
      const c = await readJson<Record<string, number>>(counters, {})
      c[key] = (c[key] ?? 0) + 1
      await writeAtomic(counters, c)
      return c[key]
    })
    return n <= k.failTimes
  }

  /** Latency, then hang, then failure — before the operation touches anything. */
  const preamble = async (op: FaultOp, k: Knobs, signal: AbortSignal | undefined): Promise<void> => {
    if (k.latencyMs > 0) await sleep(k.latencyMs, signal, op)
    if (k.hangOn.has(op) && (await faultHits(k, "hang", op))) await hang(signal, op)
    if (k.failOn.has(op) && (await faultHits(k, "fail", op))) throw new FakeSandboxError(`fake-sandbox: injected failure on ${op}`, "fault")
    if (signal?.aborted) throw cancelled(op)
  }

  const scheduleExpiry = (file: string, ms: number) => {
    const t = setTimeout(() => {
      timers.delete(t)
      void mutate(file, () => ({ result: undefined, changed: false })).catch(() => undefined)
    }, ms + 5)
    t.unref?.()
    timers.add(t)
  }

  const teardownLease = async (op: "release" | "destroy", p: LeaseParams, o?: OpOptions): Promise<ReleaseResult> => {
    const k = knobsOf(p.config, defaults)
    await preamble(op, k, o?.signal)
    const { entry } = await find(k.inventoryFile, p.providerLeaseId)
    if (entry) {
      await teardown([entry])
      await mutate(k.inventoryFile, (inv) => {
        const before = inv.sandboxes.length
        inv.sandboxes = inv.sandboxes.filter((s) => s.providerLeaseId !== p.providerLeaseId)
        return { result: undefined, changed: inv.sandboxes.length !== before }
      })
    } else {
      // nothing recorded, but a command of ours may still run for it
      await cancel(p.providerLeaseId)
    }
    return { providerLeaseId: p.providerLeaseId, state: "destroyed" }
  }

  const recordProcess = (file: string, leaseId: string, proc: SandboxProcess, add: boolean) =>
    mutate(file, (inv) => {
      const i = inv.sandboxes.findIndex((s) => s.providerLeaseId === leaseId)
      if (i < 0) return { result: undefined, changed: false }
      const s = inv.sandboxes[i]!
      const rest = s.processes.filter((x) => x.pid !== proc.pid)
      inv.sandboxes[i] = { ...s, processes: add ? [...rest, proc] : rest }
      return { result: undefined, changed: true }
    }).catch(() => undefined)

  const execute = async (p: ExecuteParams, o?: ExecuteOptions): Promise<ExecuteResult> => {
    const k = knobsOf(p.config, defaults)
    const signal = o?.signal
    await preamble("execute", k, signal)
    const id = p.lease.providerLeaseId
    const entry = await live(k, id)
    const cwd = p.cwd === undefined || p.cwd === "" ? entry.workspace : isAbsolute(p.cwd) ? p.cwd : join(entry.workspace, p.cwd)
    if (!isDir(cwd)) throw new FakeSandboxError(`fake-sandbox: cwd ${cwd} does not exist in sandbox ${id}`, "not_found")
    // exactly the call's env plus a default PATH: never this process's environment
    const env: Record<string, string> = { PATH: DEFAULT_PATH, ...(p.env ?? {}) }
    if (signal?.aborted) throw cancelled("execute")
    const started = Date.now()

    return new Promise<ExecuteResult>((resolve, reject) => {
      let child: ReturnType<typeof spawn>
      try {
        // its own process group (detached), so a timeout or cancel can kill everything it started
        child = spawn(p.command, [...(p.args ?? [])], { cwd, env, detached: true, stdio: ["pipe", "pipe", "pipe"] })
      } catch (e) {
        return reject(new FakeSandboxError(`fake-sandbox: cannot run ${p.command}: ${e instanceof Error ? e.message : String(e)}`, "io"))
      }
      const out = { stdout: [] as Array<Buffer>, stderr: [] as Array<Buffer>, stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false }
      const decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") }
      let timedOut = false
      let aborted = false
      let sent: NodeJS.Signals | null = null
      let killTimer: ReturnType<typeof setTimeout> | undefined
      let timeoutTimer: ReturnType<typeof setTimeout> | undefined
      let closeFallback: ReturnType<typeof setTimeout> | undefined
      let settled = false
      let finished!: () => void
      const done = new Promise<void>((r) => (finished = r))
      const pid = child.pid

      const terminate = () => {
        if (pid === undefined || sent !== null) return
        sent = "SIGTERM"
        killGroup(pid, "SIGTERM")
        killTimer = setTimeout(() => {
          // the signal reported is the one that ended it: a command already gone went on SIGTERM
          // (its output may still be draining), the group is still swept
          if (child.exitCode === null && child.signalCode === null) sent = "SIGKILL"
          killGroup(pid, "SIGKILL")
        }, KILL_GRACE_MS)
      }
      const proc: Proc | undefined = pid === undefined ? undefined : {
        pid,
        leaseId: id,
        kill: () => {
          terminate()
          return done
        },
        killNow: () => killGroup(pid, "SIGKILL")
      }
      const recorded: SandboxProcess | undefined = pid === undefined ? undefined : { pid, startTime: startTimeOf(pid), command: p.command }
      let recording: Promise<unknown> = Promise.resolve()
      if (proc && recorded) {
        const set = procs.get(id) ?? new Set<Proc>()
        set.add(proc)
        procs.set(id, set)
        recording = recordProcess(k.inventoryFile, id, recorded, true)
      }
      const onAbort = () => {
        aborted = true
        terminate()
      }
      signal?.addEventListener("abort", onAbort, { once: true })
      if (p.timeoutMs !== undefined && p.timeoutMs > 0) {
        timeoutTimer = setTimeout(() => {
          timedOut = true
          terminate()
        }, p.timeoutMs)
      }

      const emit = (stream: "stdout" | "stderr", text: string) => {
        if (text.length === 0 || !o?.onLog) return
        try {
          o.onLog(stream, text)
        } catch {
          // a failing listener must not break the command
        }
      }
      const collect = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
        const bytesKey = stream === "stdout" ? "stdoutBytes" : "stderrBytes"
        const truncKey = stream === "stdout" ? "stdoutTruncated" : "stderrTruncated"
        const room = OUTPUT_CAP_BYTES - out[bytesKey]
        if (room > 0) {
          const keep = chunk.length <= room ? chunk : chunk.subarray(0, room)
          out[stream].push(keep)
          out[bytesKey] += keep.length
        }
        if (chunk.length > room) out[truncKey] = true
        emit(stream, decoders[stream].write(chunk))
      }
      child.stdout!.on("data", collect("stdout"))
      child.stderr!.on("data", collect("stderr"))
      child.stdin!.on("error", () => undefined)
      if (p.stdin !== undefined && p.stdin.length > 0) child.stdin!.end(p.stdin)
      else child.stdin!.end()

      const finish = (code: number | null, sig: NodeJS.Signals | null, spawnError?: Error) => {
        if (settled) return
        settled = true
        if (timeoutTimer) clearTimeout(timeoutTimer)
        if (killTimer) clearTimeout(killTimer)
        if (closeFallback) clearTimeout(closeFallback)
        signal?.removeEventListener("abort", onAbort)
        for (const s of ["stdout", "stderr"] as const) {
          emit(s, decoders[s].end())
        }
        if (proc) {
          const set = procs.get(id)
          set?.delete(proc)
          if (set && set.size === 0) procs.delete(id)
        }
        const removal = recorded ? recording.then(() => recordProcess(k.inventoryFile, id, recorded, false)) : Promise.resolve()
        void removal.finally(finished)
        if (aborted && !timedOut) {
          void removal.finally(() => reject(cancelled("execute")))
          return
        }
        const stdout = Buffer.concat(out.stdout).toString("utf8")
        let stderr = Buffer.concat(out.stderr).toString("utf8")
        let exitCode = timedOut ? null : code
        if (spawnError) {
          const why = errno(spawnError) === "ENOENT" ? "command not found" : spawnError.message
          const line = `${p.command}: ${why}\n`
          emit("stderr", line)
          stderr += line
          exitCode = errno(spawnError) === "ENOENT" ? 127 : 126
        }
        const truncated = out.stdoutTruncated || out.stderrTruncated
        const result: ExecuteResult = {
          exitCode,
          signal: sig ?? (timedOut ? sent : null),
          timedOut,
          stdout,
          stderr,
          metadata: {
            truncated,
            stdoutTruncated: out.stdoutTruncated,
            stderrTruncated: out.stderrTruncated,
            durationMs: Date.now() - started,
            cwd,
            providerLeaseId: id,
            pid: pid ?? null
          }
        }
        void removal.finally(() => resolve(result))
      }
      child.on("error", (err) => {
        if (pid === undefined) finish(null, null, err)
      })
      child.on("exit", () => {
        // the command is over: leftovers of its process group go with it
        if (pid !== undefined) killGroup(pid, "SIGKILL")
        closeFallback = setTimeout(() => {
          child.stdout?.destroy()
          child.stderr?.destroy()
        }, 2_000)
      })
      child.on("close", (code, sig) => finish(code, sig))
    })
  }

  return {
    validateConfig: (config) => {
      const { knobs: _knobs, ...r } = validateConfig(config, defaults)
      return r
    },
    probe: async (p, o) => {
      const r = validateConfig(p.config, defaults)
      if (!r.ok) return { ok: false, summary: `invalid config: ${r.errors.join("; ")}`, diagnostics: r.errors.map((message) => ({ level: "error", message })), metadata: {} }
      const k = r.knobs
      await preamble("probe", k, o?.signal)
      const diagnostics: Array<Json> = r.warnings.map((message) => ({ level: "warn", message }))
      try {
        await fsp.mkdir(k.workspaceRoot, { recursive: true })
        await fsp.access(k.workspaceRoot, fsConstants.W_OK)
        const sandboxes = await mutate(k.inventoryFile, (inv) => ({ result: inv.sandboxes.length, changed: false }))
        return {
          ok: true,
          summary: `fake sandbox ready: ${sandboxes} live sandbox(es) in ${k.inventoryFile}, workspaces under ${k.workspaceRoot}`,
          diagnostics,
          metadata: { inventoryFile: k.inventoryFile, workspaceRoot: k.workspaceRoot, liveSandboxes: sandboxes }
        }
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e)
        return { ok: false, summary: `fake sandbox not usable: ${message}`, diagnostics: [...diagnostics, { level: "error", message }], metadata: {} }
      }
    },
    acquire: async (p, o) => {
      const k = knobsOf(p.config, defaults)
      await preamble("acquire", k, o?.signal)
      const id = leaseIdFor(p.runId)
      await fsp.mkdir(k.workspaceRoot, { recursive: true })
      const { entry, created } = await mutate(k.inventoryFile, async (inv) => {
        const existing = inv.sandboxes.find((s) => s.providerLeaseId === id)
        if (existing) return { result: { entry: existing, created: false }, changed: false }
        const now = Date.now()
        const entry: SandboxEntry = {
          providerLeaseId: id,
          runId: p.runId,
          companyId: p.companyId ?? null,
          environmentId: p.environmentId ?? null,
          agentId: p.agentId ?? null,
          workspace: await fsp.mkdtemp(join(k.workspaceRoot, `${id}-`)),
          createdAt: iso(now),
          expiresAt: k.expireAfterMs === null ? null : iso(now + k.expireAfterMs),
          processes: []
        }
        inv.sandboxes.push(entry)
        inv.expired = inv.expired.filter((x) => x !== id)
        return { result: { entry, created: true }, changed: true }
      })
      if (created && k.expireAfterMs !== null) scheduleExpiry(k.inventoryFile, k.expireAfterMs)
      if (k.loseAcquireResponse && (await faultHits(k, "lose", "acquire"))) {
        throw new FakeSandboxError(`fake-sandbox: acquire response lost (sandbox ${id} was created)`, "lost_response")
      }
      return toLease(entry, !created)
    },
    resume: async (p, o) => {
      const k = knobsOf(p.config, defaults)
      await preamble("resume", k, o?.signal)
      const { entry } = await find(k.inventoryFile, p.providerLeaseId)
      return entry ? toLease(entry, true) : { providerLeaseId: null }
    },
    release: (p, o) => teardownLease("release", p, o),
    destroy: (p, o) => teardownLease("destroy", p, o),
    realize: async (p, o) => {
      const k = knobsOf(p.config, defaults)
      await preamble("realize", k, o?.signal)
      const entry = await live(k, p.lease.providerLeaseId)
      await fsp.mkdir(entry.workspace, { recursive: true })
      return { cwd: entry.workspace, metadata: { providerLeaseId: entry.providerLeaseId } }
    },
    execute,
    cancel,
    activeProcesses: () => [...procs.values()].reduce((n, s) => n + s.size, 0),
    inventory: async (file) => mutate(file ?? defaultInventory, (inv) => ({ result: inv.sandboxes, changed: false })),
    resetFaults: async (file) => {
      const f = file ?? defaultInventory
      await withLock(f, () => fsp.rm(`${f}.faults.json`, { force: true }))
    },
    shutdown: async () => {
      for (const t of timers) clearTimeout(t)
      timers.clear()
      await Promise.all([...procs.keys()].map(cancel))
    },
    killAllSync: () => {
      for (const set of procs.values()) for (const p of set) p.killNow()
    }
  }
}
