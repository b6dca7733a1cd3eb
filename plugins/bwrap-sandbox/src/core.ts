// bwrap-sandbox core: a local sandbox provider on bubblewrap (Linux namespaces). Plain Node only:
// one directory per lease under `workspaceRoot` (its record, its /workspace and /tmp, a journal of
// running sandboxes), each command in a fresh `bwrap` with rlimits set by `prlimit` inside the sandbox.
import { spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { constants as fsConstants, lstatSync, mkdirSync, promises as fsp, readFileSync, readlinkSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs"
import { homedir, tmpdir } from "node:os"
import { isAbsolute, join, posix } from "node:path"
import { StringDecoder } from "node:string_decoder"

export const PLUGIN_ID = "bwrap-sandbox"
export const DRIVER_KEY = "bwrap"
export const DISPLAY_NAME = "Local sandbox (bubblewrap)"
/** The only variable a command gets besides the config's and the call's `env` (either's PATH wins). */
export const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
/** Retained stdout/stderr per command, each (streaming is not capped). */
export const OUTPUT_CAP_BYTES = 1024 * 1024
/** SIGTERM to the sandbox's process group → this long → SIGKILL of the sandbox, on timeout and cancel. */
export const KILL_GRACE_MS = 250
/** Where the lease's workspace is mounted inside the sandbox. */
export const WORKSPACE = "/workspace"
/** The user commands run as inside the sandbox (no capabilities). */
export const SANDBOX_UID = 1000
export const SANDBOX_GID = 1000
export const SANDBOX_HOSTNAME = "gantry-sandbox"
export const DEFAULT_ROOT = join(tmpdir(), "gantry-bwrap")
/** nobody/nogroup: the host uid/gid sandboxes run as when the worker is root. */
export const DEFAULT_RUN_AS = 65534
export const DEFAULT_MEMORY_MIB = 4096
export const DEFAULT_PIDS = 1024
/** Host paths bound read-only by default: the OS tree and the few /etc entries common tools need.
 * Not /etc as a whole (no shadow, ssh keys, sudoers, package-manager credentials); /etc/passwd and
 * /etc/group are synthetic (the sandbox user only). Missing entries are skipped. */
export const DEFAULT_READ_ONLY_PATHS: ReadonlyArray<string> = [
  "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
  "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
  "/etc/ssl", "/etc/ca-certificates", "/etc/ca-certificates.conf", "/etc/pki",
  "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf",
  "/etc/protocols", "/etc/services", "/etc/localtime", "/etc/timezone", "/etc/os-release",
  "/etc/debian_version", "/etc/mime.types", "/etc/magic", "/etc/magic.mime", "/etc/terminfo",
  "/etc/inputrc", "/etc/profile", "/etc/bash.bashrc", "/etc/shells", "/etc/locale.alias"
]
/** Mount points the sandbox manages itself; a read-only path may be neither one of them nor inside one. */
const MANAGED_MOUNTS = ["/proc", "/dev", "/tmp", WORKSPACE]
/** Environment-config fields owned by the host (SPEC §6): accepted here, passed through untouched.
 * `timeoutMs` and `env` are also ours: the host keeps them for itself when they come from an environment. */
const HOST_FIELDS = new Set(["provider", "ttlMs", "reuseLease", "onFailure"])
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/
export const LEASE_ID_RE = /^bwrap-[0-9a-f]{12}$/

/** The driver's `configSchema` (manifest.json repeats it; a test keeps the two equal). */
export const CONFIG_SCHEMA = {
  type: "object",
  properties: {
    network: { type: "string", enum: ["none", "host"], description: "none (default): a private network namespace with only loopback; host: share the host's network" },
    readOnlyPaths: {
      type: "array",
      items: { type: "string" },
      description: "Absolute host paths bound read-only at the same place (default: /usr, /bin, /sbin, /lib*, and a minimal set of /etc files). Never /, /root, /home or the workspaceRoot"
    },
    workspaceRoot: { type: "string", description: "Absolute directory holding one directory per lease (default <tmp>/gantry-bwrap)" },
    memoryMiB: { type: "integer", minimum: 16, maximum: 1048576, description: "Address-space limit of each sandbox process (RLIMIT_AS), and the size of /dev/shm (default 4096)" },
    cpuSeconds: { type: "integer", minimum: 1, maximum: 31536000, description: "CPU-time limit of each sandbox process (RLIMIT_CPU; default none)" },
    pids: { type: "integer", minimum: 4, maximum: 1000000, description: "Processes and threads a sandbox may have at once (RLIMIT_NPROC in the sandbox's own user namespace; default 1024)" },
    timeoutMs: { type: "integer", minimum: 1, maximum: 2147483647, description: "Cap on every command's wall time (the call's timeoutMs applies when smaller)" },
    env: { type: "object", additionalProperties: { type: "string" }, description: "Non-secret default variables of every command (the call's env wins)" },
    keepOnFailure: { type: "boolean", description: "Release keeps the workspace when the lease's last command failed (destroy always removes it)" },
    runAsUid: { type: "integer", minimum: 0, maximum: 4294967294, description: "When the worker runs as root: the unprivileged host uid sandboxes run as (default 65534)" },
    runAsGid: { type: "integer", minimum: 0, maximum: 4294967294, description: "When the worker runs as root: the host gid sandboxes run as (default 65534)" }
  },
  // unknown fields reach environmentValidateConfig, which names them (a schema error would not)
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
export interface Diagnostic {
  level: "info" | "warn" | "error"
  check: string
  message: string
  fix?: string
}
export interface ProbeResult {
  ok: boolean
  summary: string
  diagnostics: Array<Json>
  metadata: Json
}
export interface ReleaseResult {
  providerLeaseId: string
  state: "destroyed" | "stopped"
}
export interface OpOptions {
  /** Aborting cancels the operation: a running command's sandbox is killed. */
  readonly signal?: AbortSignal | undefined
}
export interface ExecuteOptions extends OpOptions {
  readonly onLog?: ((stream: "stdout" | "stderr", chunk: string) => void) | undefined
}

export type BwrapSandboxErrorKind = "not_found" | "invalid_config" | "invalid_request" | "cancelled" | "setup" | "unavailable" | "io"
/** Every failure of the core. The worker sends its message as a -32002 worker error. */
export class BwrapSandboxError extends Error {
  override readonly name = "BwrapSandboxError"
  constructor(message: string, readonly kind: BwrapSandboxErrorKind) {
    super(message)
  }
}

/** `bwrap-<sha256(runId)[0..12]>`: the same run id (the host's idempotency key) always names the same lease. */
export const leaseIdFor = (runId: string): string => `bwrap-${createHash("sha256").update(runId).digest("hex").slice(0, 12)}`

// ---- the lease record ----
export interface LastExecute {
  readonly exitCode: number | null
  readonly signal: string | null
  readonly timedOut: boolean
  readonly cancelled: boolean
  readonly error: string | null
  readonly at: string
}
export interface LeaseRecord {
  readonly version: 1
  readonly providerLeaseId: string
  readonly runId: string
  readonly companyId: string | null
  readonly environmentId: string | null
  readonly agentId: string | null
  readonly createdAt: string
  /** live: in use; kept: released after a failure with keepOnFailure (only destroy removes it). */
  readonly state: "live" | "kept"
  /** Owner of the workspace on the host (the uid/gid the sandboxes run as). */
  readonly hostUid: number
  readonly hostGid: number
  readonly lastExecute: LastExecute | null
}
/** One lease directory under a workspaceRoot. `partial`: the directory exists but its record does not
 * (a worker died while creating it); it is still a leak to count and to destroy. */
export interface LeaseEntry {
  readonly providerLeaseId: string
  readonly state: "live" | "kept" | "partial"
  readonly dir: string
  readonly record: LeaseRecord | null
}

const leaseDir = (root: string, id: string) => join(root, id)
const recordFile = (dir: string) => join(dir, "lease.json")
const workspaceDir = (dir: string) => join(dir, "workspace")
const tmpDir = (dir: string) => join(dir, "tmp")
const journalDir = (dir: string) => join(dir, "procs")

const errno = (e: unknown): string | undefined => (e as { code?: string } | null)?.code
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e))
const iso = (ms: number) => new Date(ms).toISOString()

const readRecord = async (dir: string): Promise<LeaseRecord | null> => {
  try {
    return JSON.parse(await fsp.readFile(recordFile(dir), "utf8")) as LeaseRecord
  } catch (e) {
    if (errno(e) === "ENOENT" || e instanceof SyntaxError) return null
    throw new BwrapSandboxError(`bwrap-sandbox: cannot read ${recordFile(dir)}: ${messageOf(e)}`, "io")
  }
}

/** Write via a temp file + rename, so a reader never sees half a file. */
const writeAtomic = async (file: string, value: unknown): Promise<void> => {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`
  await fsp.writeFile(tmp, JSON.stringify(value, null, 2) + "\n", { mode: 0o600 })
  await fsp.rename(tmp, file)
}

/** The lease directories under `root` (the live-lease record: what exists is what leaked, if anything). */
export const listLeases = async (root: string): Promise<Array<LeaseEntry>> => {
  const names = await fsp.readdir(root).catch((e: unknown) => {
    if (errno(e) === "ENOENT") return [] as Array<string>
    throw new BwrapSandboxError(`bwrap-sandbox: cannot list ${root}: ${messageOf(e)}`, "io")
  })
  const out: Array<LeaseEntry> = []
  for (const n of names.filter((x) => LEASE_ID_RE.test(x)).sort()) {
    const dir = leaseDir(root, n)
    const record = await readRecord(dir)
    out.push({ providerLeaseId: n, state: record?.state ?? "partial", dir, record })
  }
  return out
}

// ---- config ----
export interface Knobs {
  readonly network: "none" | "host"
  readonly readOnlyPaths: ReadonlyArray<string>
  readonly workspaceRoot: string
  readonly memoryMiB: number
  readonly cpuSeconds: number | null
  readonly pids: number
  readonly timeoutMs: number | null
  readonly env: Readonly<Record<string, string>>
  readonly keepOnFailure: boolean
  readonly runAsUid: number
  readonly runAsGid: number
}

/** What the core assumes about the machine; tests replace parts of it. */
export interface System {
  /** bwrap binary; default: found on `searchPath`. */
  readonly bwrapPath?: string | undefined
  /** prlimit binary (util-linux); default: found on `searchPath`. */
  readonly prlimitPath?: string | undefined
  /** Directories searched for bwrap and prlimit (default: the worker's PATH plus the usual ones). */
  readonly searchPath?: ReadonlyArray<string> | undefined
  /** Where sysctls are read (default /proc/sys). */
  readonly procSysRoot?: string | undefined
  /** Effective uid/gid of this process (default: the real ones). */
  readonly euid?: number | undefined
  readonly egid?: number | undefined
  /** Default workspaceRoot. */
  readonly workspaceRoot?: string | undefined
}

const under = (p: string, dir: string) => dir === "/" || p === dir || p.startsWith(`${dir}/`)
const normalizePath = (p: string) => {
  const n = posix.normalize(p)
  return n.length > 1 && n.endsWith("/") ? n.slice(0, -1) : n
}

/** Where readOnlyPaths may point, after symlinks are resolved: the OS tree and the default /etc
 * entries (and where they resolve to). Not /var, /srv, /opt, /root, /home, nor anything else. */
export const READ_ONLY_ALLOWED: ReadonlyArray<string> = [...new Set([
  "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
  ...DEFAULT_READ_ONLY_PATHS.filter((p) => p.startsWith("/etc/"))
])]
/** Directories a workspaceRoot (written by sandboxes) may not be, contain, or lie inside of. */
const WORKSPACE_FORBIDDEN = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/boot", "/proc", "/sys", "/dev", "/run",
  "/root", "/home", "/srv", "/opt", "/var/lib", "/var/log", "/var/spool", "/var/mail", "/var/cache", "/var/backups", "/var/run"]
/** Files that mark Gantry's data dir: a path at or below a directory holding one is refused. */
const DATA_DIR_MARKERS = ["secrets.key", "gantry.db"]

/** The real path of `p`, or of its nearest existing ancestor joined with the rest. */
export const realPathOf = (p: string): string => {
  let head = normalizePath(p)
  const rest: Array<string> = []
  for (;;) {
    try {
      return posix.join(realpathSync(head), ...rest)
    } catch {
      const up = posix.dirname(head)
      if (up === head) return normalizePath(p)
      rest.unshift(posix.basename(head))
      head = up
    }
  }
}

/** A directory at or above `p` that holds Gantry's data (its database or secrets key), if any. */
const dataDirAbove = (p: string): string | null => {
  for (let dir = p; ; dir = posix.dirname(dir)) {
    for (const m of DATA_DIR_MARKERS) {
      try {
        lstatSync(posix.join(dir, m))
        return dir
      } catch {
        // not here
      }
    }
    if (posix.dirname(dir) === dir) return null
  }
}

/** The real path of a readOnlyPaths entry when it is allowed, else why not. */
export const checkReadOnlyPath = (p: string): { readonly real: string } | { readonly error: string } => {
  const real = realPathOf(p)
  if (!READ_ONLY_ALLOWED.some((a) => under(real, a) || under(real, realPathOf(a)))) {
    return { error: `${p}${real !== p ? ` (resolves to ${real})` : ""} is not a system directory on the allow-list (${READ_ONLY_ALLOWED.slice(0, 7).join(", ")}, /etc/ssl, …)` }
  }
  const data = dataDirAbove(real)
  if (data) return { error: `${p} is inside Gantry's data dir (${data})` }
  return { real }
}

/** Check a workspaceRoot after symlinks are resolved. */
export const checkWorkspaceRoot = (p: string): string | null => {
  const real = realPathOf(p)
  if (real === "/") return `${p} resolves to /`
  const hit = WORKSPACE_FORBIDDEN.find((d) => under(real, d) || under(d, real))
  if (hit) return `${p}${real !== p ? ` (resolves to ${real})` : ""} is ${under(real, hit) ? "inside" : "a parent of"} ${hit}, a system or private directory; use a directory of its own such as ${DEFAULT_ROOT}`
  const data = dataDirAbove(real)
  if (data) return `${p} is inside Gantry's data dir (${data})`
  return null
}

/** Check an environment config's fields (no host checks): every problem, with its field. */
export const validateFields = (raw: unknown, sys: System = {}): ValidateResult & { knobs: Knobs } => {
  const errors: Array<string> = []
  const warnings: Array<string> = []
  const isObj = typeof raw === "object" && raw !== null && !Array.isArray(raw)
  if (!isObj && raw !== undefined) errors.push("config: must be an object")
  const config: Json = isObj ? { ...(raw as Json) } : {}
  const normalized: Json = { ...config }
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
  const bool = (field: string): boolean => {
    const v = config[field]
    if (v === undefined || v === null) return false
    if (typeof v !== "boolean") errors.push(`${field}: must be a boolean`)
    return v === true
  }

  let network: "none" | "host" = "none"
  if (config.network !== undefined && config.network !== null) {
    if (config.network === "none" || config.network === "host") network = config.network
    else errors.push(`network: must be "none" or "host"`)
  }

  let workspaceRoot = sys.workspaceRoot ?? DEFAULT_ROOT
  if (config.workspaceRoot !== undefined && config.workspaceRoot !== null) {
    const v = config.workspaceRoot
    if (typeof v !== "string" || v.length === 0 || !isAbsolute(v)) errors.push("workspaceRoot: must be an absolute path")
    else {
      workspaceRoot = normalizePath(v)
      normalized.workspaceRoot = workspaceRoot
      if (workspaceRoot === "/") errors.push("workspaceRoot: must not be /")
      else {
        const bad = checkWorkspaceRoot(workspaceRoot)
        if (bad) errors.push(`workspaceRoot: ${bad}`)
      }
    }
  }

  let readOnlyPaths: Array<string> = [...DEFAULT_READ_ONLY_PATHS]
  if (config.readOnlyPaths !== undefined && config.readOnlyPaths !== null) {
    const v = config.readOnlyPaths
    if (!Array.isArray(v)) errors.push("readOnlyPaths: must be an array of absolute paths")
    else {
      const seen: Array<string> = []
      const home = normalizePath(homedir())
      const protectedDirs = [
        ["/root", "the host's root home"],
        ["/home", "the host's home directories"],
        [home, `the worker's home (${home})`],
        [workspaceRoot, "the workspaceRoot (other leases' workspaces)"]
      ] as const
      v.forEach((p, i) => {
        if (typeof p !== "string" || !isAbsolute(p)) {
          errors.push(`readOnlyPaths[${i}]: must be an absolute path`)
          return
        }
        const n = normalizePath(p)
        if (n === "/") {
          errors.push(`readOnlyPaths[${i}]: / would expose the whole host (homes, Gantry's data, other workspaces); list directories such as /usr instead`)
          return
        }
        const hit = protectedDirs.find(([d]) => under(d, n) || under(n, d))
        if (hit) {
          errors.push(`readOnlyPaths[${i}]: ${n} would expose ${hit[1]}`)
          return
        }
        const managed = MANAGED_MOUNTS.find((m) => under(n, m))
        if (managed) {
          errors.push(`readOnlyPaths[${i}]: ${n} is inside ${managed}, which the sandbox provides itself`)
          return
        }
        const checked = checkReadOnlyPath(n)
        if ("error" in checked) {
          errors.push(`readOnlyPaths[${i}]: ${checked.error}`)
          return
        }
        if (seen.includes(n)) warnings.push(`readOnlyPaths[${i}]: ${n} is listed twice`)
        else seen.push(n)
      })
      readOnlyPaths = seen
      normalized.readOnlyPaths = seen
    }
  }

  const memoryMiB = int("memoryMiB", 16, 1048576) ?? DEFAULT_MEMORY_MIB
  const cpuSeconds = int("cpuSeconds", 1, 31536000)
  const pids = int("pids", 4, 1000000) ?? DEFAULT_PIDS
  const timeoutMs = int("timeoutMs", 1, 2147483647)
  const runAsUid = int("runAsUid", 0, 4294967294) ?? DEFAULT_RUN_AS
  const runAsGid = int("runAsGid", 0, 4294967294) ?? DEFAULT_RUN_AS
  // sandboxes as host root would make every escape a root escape: refused, not warned about
  if (config.runAsUid === 0) errors.push("runAsUid: 0 (root) is refused: sandboxes run as an unprivileged host user (leave it unset for 65534)")
  if (config.runAsGid === 0) errors.push("runAsGid: 0 (root) is refused: sandboxes run as an unprivileged host group (leave it unset for 65534)")
  const keepOnFailure = bool("keepOnFailure")
  if (memoryMiB < 1024) warnings.push(`memoryMiB: ${memoryMiB} MiB of address space per process is too little for runtimes that reserve large ranges up front (node needs about 1024)`)

  const env: Record<string, string> = {}
  if (config.env !== undefined && config.env !== null) {
    const v = config.env
    if (typeof v !== "object" || Array.isArray(v)) errors.push("env: must map variable names to strings")
    else {
      for (const [k, val] of Object.entries(v as Json)) {
        if (!ENV_NAME_RE.test(k)) errors.push(`env: invalid variable name "${k}"`)
        else if (typeof val !== "string" || val.includes("\0")) errors.push(`env.${k}: must be a string without NUL`)
        else env[k] = val
      }
    }
  }

  for (const k of Object.keys(config)) {
    if (!(k in CONFIG_SCHEMA.properties) && !HOST_FIELDS.has(k)) errors.push(`${k}: unknown field (known: ${Object.keys(CONFIG_SCHEMA.properties).join(", ")})`)
  }
  return {
    ok: errors.length === 0,
    errors,
    warnings,
    normalizedConfig: normalized,
    knobs: { network, readOnlyPaths, workspaceRoot, memoryMiB, cpuSeconds, pids, timeoutMs, env, keepOnFailure, runAsUid, runAsGid }
  }
}

const knobsOf = (config: unknown, sys: System): Knobs => {
  const r = validateFields(config, sys)
  if (!r.ok) throw new BwrapSandboxError(`invalid bwrap-sandbox config: ${r.errors.join("; ")}`, "invalid_config")
  return r.knobs
}

// ---- the machine ----
const isExecutable = (p: string): boolean => {
  try {
    return statSync(p).isFile() && (statSync(p).mode & 0o111) !== 0
  } catch {
    return false
  }
}
const which = (name: string, dirs: ReadonlyArray<string>): string | null => {
  for (const d of dirs) {
    const p = join(d, name)
    if (isExecutable(p)) return p
  }
  return null
}
const defaultSearchPath = (): Array<string> => {
  const fromEnv = (process.env.PATH ?? "").split(":").filter((d) => d.length > 0 && isAbsolute(d))
  return [...new Set([...fromEnv, "/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"])]
}
const readSysctl = (root: string, name: string): number | null => {
  try {
    const n = Number(readFileSync(join(root, name), "utf8").trim())
    return Number.isFinite(n) ? n : null
  } catch {
    return null
  }
}

/** bwrap ≥ 0.8 knows --disable-userns and --size; older ones run without them. */
interface Tools {
  readonly bwrap: string
  readonly version: string
  readonly modern: boolean
  readonly prlimit: string
}

/** Who the sandboxes run as on the host, and who owns the workspaces. */
interface Identity {
  /** Spawn bwrap as this uid/gid (the worker is root and runAsUid ≠ 0); null: as the worker itself. */
  readonly runAs: { readonly uid: number; readonly gid: number } | null
  readonly owner: { readonly uid: number; readonly gid: number }
  /** bwrap runs without privileges (it needs unprivileged user namespaces). */
  readonly unprivileged: boolean
}
/** A lease keeps running as the host user that owns its workspace, whatever the config says now. */
const identityOfRecord = (r: LeaseRecord, sys: System): Identity => {
  const euid = sys.euid ?? process.geteuid?.() ?? -1
  if (euid === 0 && r.hostUid !== 0) return { runAs: { uid: r.hostUid, gid: r.hostGid }, owner: { uid: r.hostUid, gid: r.hostGid }, unprivileged: true }
  return { runAs: null, owner: { uid: r.hostUid, gid: r.hostGid }, unprivileged: euid !== 0 }
}
const identityOf = (k: Knobs, sys: System): Identity => {
  const euid = sys.euid ?? process.geteuid?.() ?? -1
  const egid = sys.egid ?? process.getegid?.() ?? -1
  if (euid === 0 && k.runAsUid !== 0) return { runAs: { uid: k.runAsUid, gid: k.runAsGid }, owner: { uid: k.runAsUid, gid: k.runAsGid }, unprivileged: true }
  return { runAs: null, owner: { uid: euid, gid: egid }, unprivileged: euid !== 0 }
}

/** Every ancestor of `p` (and `p`) must be searchable by uid/gid for bwrap to bind it. */
const unreachableBy = (p: string, uid: number, gid: number): { dir: string; mode: number } | null => {
  const parts = p.split("/").filter(Boolean)
  let cur = "/"
  for (let i = 0; i <= parts.length; i++) {
    try {
      const st = statSync(cur)
      const bit = st.uid === uid ? 0o100 : st.gid === gid ? 0o010 : 0o001
      if ((st.mode & bit) === 0) return { dir: cur, mode: st.mode & 0o7777 }
    } catch {
      return null
    }
    if (i < parts.length) cur = join(cur, parts[i]!)
  }
  return null
}

const run = (file: string, args: ReadonlyArray<string>, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string; error?: string }> =>
  new Promise((resolve) => {
    let stdout = ""
    let stderr = ""
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(file, [...args], { env: {}, stdio: ["ignore", "pipe", "pipe"] })
    } catch (e) {
      return resolve({ code: null, stdout, stderr, error: messageOf(e) })
    }
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.stdout!.on("data", (d: Buffer) => (stdout += d.toString("utf8")))
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")))
    child.on("error", (e) => {
      clearTimeout(t)
      resolve({ code: null, stdout, stderr, error: e.message })
    })
    child.on("close", (code) => {
      clearTimeout(t)
      resolve({ code, stdout, stderr })
    })
  })

const realpathOr = (p: string) => {
  try {
    return realpathSync(p)
  } catch {
    return p
  }
}

const parseVersion = (s: string): [number, number, number] | null => {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(s)
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : null
}

const FIX_BWRAP = "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; Fedora: dnf install bubblewrap; Arch: pacman -S bubblewrap)"
const FIX_PRLIMIT = "install util-linux (Debian/Ubuntu: apt-get install -y util-linux), which provides prlimit"
const FIX_USERNS = "enable user namespaces: sysctl -w user.max_user_namespaces=15000; on Debian/Ubuntu kernels also sysctl -w kernel.unprivileged_userns_clone=1; " +
  "on Ubuntu 23.10+ allow bwrap in AppArmor (the bubblewrap package's profile) or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0; persist in /etc/sysctl.d/"

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
/** Alive and not a zombie. */
const running = (pid: number): boolean => {
  const st = procStat(pid)
  return st !== null && st[0] !== "Z"
}
const kill = (pid: number, signal: NodeJS.Signals): void => {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

interface ProcRef {
  readonly pid: number
  readonly start: string | null
}
/** A running sandbox as journaled on disk: the outer bwrap and, once known, the sandbox's pid 1. */
interface JournalEntry {
  readonly outer: ProcRef
  readonly inner: ProcRef | null
}
const sameProcess = (r: ProcRef) => running(r.pid) && (r.start === null || startTimeOf(r.pid) === r.start)

/** Kill sandboxes recorded by another process (a worker that died): the sandbox's pid 1 takes its
 * whole pid namespace with it; the outer bwrap's group goes too. */
const killJournaled = async (entries: ReadonlyArray<JournalEntry>): Promise<void> => {
  const targets: Array<ProcRef> = []
  for (const e of entries) {
    if (e.inner && sameProcess(e.inner)) {
      kill(-e.inner.pid, "SIGKILL")
      kill(e.inner.pid, "SIGKILL")
      targets.push(e.inner)
    }
    if (sameProcess(e.outer)) {
      kill(-e.outer.pid, "SIGKILL")
      targets.push(e.outer)
    }
  }
  const deadline = Date.now() + 3_000
  while (targets.some((t) => running(t.pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
}

const readJournal = async (dir: string): Promise<Array<JournalEntry>> => {
  const names = await fsp.readdir(journalDir(dir)).catch(() => [] as Array<string>)
  const out: Array<JournalEntry> = []
  for (const n of names) {
    try {
      out.push(JSON.parse(await fsp.readFile(join(journalDir(dir), n), "utf8")) as JournalEntry)
    } catch {
      // half-written by a worker that died: the outer pid is the file name
      if (/^\d+$/.test(n)) out.push({ outer: { pid: Number(n), start: null }, inner: null })
    }
  }
  return out
}

/** rm -rf that also copes with directories the sandbox made unwritable (a non-root worker needs u+w). */
const removeTree = async (p: string): Promise<void> => {
  try {
    await fsp.rm(p, { recursive: true, force: true, maxRetries: 3 })
    return
  } catch (e) {
    if (errno(e) !== "EACCES" && errno(e) !== "EPERM") throw e
  }
  const fix = async (d: string): Promise<void> => {
    await fsp.chmod(d, 0o700).catch(() => undefined)
    const entries = await fsp.readdir(d, { withFileTypes: true }).catch(() => [])
    for (const e of entries) if (e.isDirectory()) await fix(join(d, e.name))
  }
  await fix(p)
  await fsp.rm(p, { recursive: true, force: true, maxRetries: 3 })
}

/** Smoke-run directories of a process that died mid-probe (`.probe-<pid>-<rand>`, pid no longer alive). */
const removeStaleProbes = async (root: string): Promise<void> => {
  const names = await fsp.readdir(root).catch(() => [] as Array<string>)
  for (const n of names) {
    const m = /^\.probe-(\d+)-[0-9a-f]+$/.exec(n)
    if (m && Number(m[1]) !== process.pid && !running(Number(m[1]))) await removeTree(join(root, n)).catch(() => undefined)
  }
}

interface Proc {
  readonly leaseId: string
  readonly outer: number
  /** Kill the sandbox (SIGTERM to its group, grace, SIGKILL); resolves once the command has finished. */
  readonly kill: () => Promise<void>
  readonly killNow: () => void
}

export interface BwrapSandbox {
  /** Fields, then the host checks (bwrap, prlimit, user namespaces, workspaceRoot, a smoke run). */
  readonly validateConfig: (config: unknown) => Promise<ValidateResult>
  readonly probe: (p: BaseParams, o?: OpOptions) => Promise<ProbeResult>
  /** Idempotent per run id: a live lease with the same id is returned, not created again. */
  readonly acquire: (p: AcquireParams, o?: OpOptions) => Promise<ProviderLease>
  /** `{providerLeaseId: null}` when the lease is gone (released, destroyed, kept, never existed). */
  readonly resume: (p: LeaseParams, o?: OpOptions) => Promise<ProviderLease>
  /** Kills the lease's sandboxes and removes its directory — or keeps it (`stopped`) after a failure
   * when keepOnFailure is set. Gone already = success. */
  readonly release: (p: LeaseParams, o?: OpOptions) => Promise<ReleaseResult>
  /** Kills the lease's sandboxes and removes its directory, kept or not. Gone already = success. */
  readonly destroy: (p: LeaseParams, o?: OpOptions) => Promise<ReleaseResult>
  readonly realize: (p: LeaseRefParams, o?: OpOptions) => Promise<{ cwd: string; metadata: Json }>
  readonly execute: (p: ExecuteParams, o?: ExecuteOptions) => Promise<ExecuteResult>
  /** Kill every sandbox this instance runs for the lease; resolves when they are gone. */
  readonly cancel: (providerLeaseId: string) => Promise<number>
  /** Sandboxes this instance is running right now. */
  readonly activeProcesses: () => number
  /** Kill every running sandbox. Leases stay on disk (resumable). */
  readonly shutdown: () => Promise<void>
  /** Synchronous last resort for `process.on("exit")`: SIGKILL every sandbox still running. */
  readonly killAllSync: () => void
}

const passwd = `root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:${SANDBOX_UID}:${SANDBOX_GID}:sandbox:${WORKSPACE}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`
const group = `root:x:0:\nsandbox:x:${SANDBOX_GID}:\nnogroup:x:65534:\n`

/** `p` itself is a directory, not a symlink (the lease directory and its workspace and tmp are
 * checked one by one; what lies above the workspaceRoot is the operator's). */
export const assertRealDirectory = (p: string): void => {
  const st = lstatSync(p)
  if (st.isSymbolicLink() || !st.isDirectory()) throw new Error(`${p} is ${st.isSymbolicLink() ? "a symlink" : "not a directory"}; refusing to bind it into a sandbox`)
}

/** The bwrap options (passed on fd 3, so the env never shows in a host `ps`). */
const bwrapOptions = (k: Knobs, tools: Tools, dir: string, cwd: string, env: Readonly<Record<string, string>>): Array<string> => {
  const o: Array<string> = ["--unshare-all"]
  if (k.network === "host") o.push("--share-net")
  o.push("--unshare-user", "--uid", String(SANDBOX_UID), "--gid", String(SANDBOX_GID))
  if (tools.modern) o.push("--disable-userns")
  o.push("--die-with-parent", "--new-session", "--hostname", SANDBOX_HOSTNAME, "--info-fd", "4")
  // checked again here, whatever config arrives: a path must still resolve inside the allow-list
  const roots = k.readOnlyPaths.filter((p) => !("error" in checkReadOnlyPath(p)))
  for (const p of roots) {
    let st
    try {
      st = lstatSync(p)
    } catch {
      continue
    }
    if (st.isSymbolicLink()) {
      // /bin → usr/bin stays a symlink when its target is bound anyway; anything else is bound as its target
      let real: string | null = null
      try {
        real = realpathSync(p)
      } catch {
        continue
      }
      if (roots.some((r) => r !== p && under(real!, r))) {
        o.push("--symlink", readlinkSync(p), p)
        continue
      }
    }
    // bind what the path resolves to (checked above), so a symlink swapped in later binds nothing else
    o.push("--ro-bind-try", realPathOf(p), p)
  }
  o.push("--perms", "0644", "--ro-bind-data", "5", "/etc/passwd", "--perms", "0644", "--ro-bind-data", "6", "/etc/group")
  o.push("--dev", "/dev")
  if (tools.modern) o.push("--perms", "1777", "--size", String(k.memoryMiB * 1024 * 1024), "--tmpfs", "/dev/shm")
  o.push("--proc", "/proc")
  // the lease's own directories, never through a symlink (a planted link would bind elsewhere read-write)
  for (const d of [dir, workspaceDir(dir), tmpDir(dir)]) assertRealDirectory(d)
  o.push("--bind", workspaceDir(dir), WORKSPACE, "--bind", tmpDir(dir), "/tmp")
  // nothing but /workspace, /tmp (and /dev/shm) is writable: not the root tmpfs, not /dev
  o.push("--remount-ro", "/dev", "--remount-ro", "/")
  o.push("--chdir", cwd, "--clearenv")
  for (const [name, value] of Object.entries(env)) o.push("--setenv", name, value)
  return o
}

/** One provider instance (the worker has one). */
export const createBwrapSandbox = (sys: System = {}): BwrapSandbox => {
  const procs = new Map<string, Set<Proc>>()
  const tearing = new Set<string>()
  const tails = new Map<string, Promise<unknown>>()
  let toolsCache: Tools | null = null

  /** Operations on one lease run one at a time in this process. */
  const serial = <A>(id: string, f: () => Promise<A>): Promise<A> => {
    const prev = tails.get(id) ?? Promise.resolve()
    const next = prev.then(f, f)
    const tail = next.catch(() => undefined)
    tails.set(id, tail)
    void tail.then(() => {
      if (tails.get(id) === tail) tails.delete(id)
    })
    return next
  }

  const searchPath = () => sys.searchPath ?? defaultSearchPath()

  /** bwrap and prlimit, or a precise diagnostic. */
  const detectTools = async (): Promise<{ tools: Tools | null; diagnostics: Array<Diagnostic> }> => {
    const diagnostics: Array<Diagnostic> = []
    const bwrap = sys.bwrapPath ?? which("bwrap", searchPath())
    if (bwrap === null || !isExecutable(bwrap)) {
      diagnostics.push({ level: "error", check: "bwrap", message: `no bwrap binary (${bwrap ?? `not found in ${searchPath().join(":")}`})`, fix: FIX_BWRAP })
    }
    const prlimit = sys.prlimitPath ?? which("prlimit", searchPath())
    if (prlimit === null || !isExecutable(prlimit)) {
      diagnostics.push({ level: "error", check: "prlimit", message: `no prlimit binary (${prlimit ?? `not found in ${searchPath().join(":")}`}); limits could not be enforced`, fix: FIX_PRLIMIT })
    }
    if (bwrap === null || prlimit === null || diagnostics.length > 0) return { tools: null, diagnostics }
    const v = await run(bwrap, ["--version"], 10_000)
    const parsed = parseVersion(v.stdout)
    if (v.code !== 0 || parsed === null) {
      diagnostics.push({ level: "error", check: "bwrap", message: `${bwrap} --version failed: ${(v.error ?? v.stderr.trim()) || `exit ${v.code}`}`, fix: FIX_BWRAP })
      return { tools: null, diagnostics }
    }
    const modern = parsed[0] > 0 || parsed[1] >= 8
    if (!modern) diagnostics.push({ level: "warn", check: "bwrap", message: `bubblewrap ${parsed.join(".")} is older than 0.8: nested user namespaces stay allowed and /dev/shm is not available`, fix: "upgrade bubblewrap to 0.8 or later" })
    const tools: Tools = { bwrap, version: parsed.join("."), modern, prlimit }
    toolsCache = tools
    return { tools, diagnostics }
  }

  const tools = async (): Promise<Tools> => {
    if (toolsCache) return toolsCache
    const r = await detectTools()
    if (!r.tools) throw new BwrapSandboxError(`bwrap-sandbox unavailable: ${r.diagnostics.filter((d) => d.level === "error").map((d) => `${d.message} — fix: ${d.fix}`).join("; ")}`, "unavailable")
    return r.tools
  }

  const cancel = async (leaseId: string): Promise<number> => {
    const set = procs.get(leaseId)
    if (!set || set.size === 0) return 0
    const list = [...set]
    await Promise.all(list.map((p) => p.kill()))
    return list.length
  }

  /** Make sure a lease directory has its workspace and /tmp, owned by the sandbox's host user. */
  const ensureDirs = async (dir: string, id: Identity): Promise<void> => {
    for (const d of [workspaceDir(dir), tmpDir(dir)]) {
      // not recursive: this never re-creates a lease directory that a teardown removed meanwhile
      const created = await fsp.mkdir(d, { mode: 0o700 }).then(() => true, (e: unknown) => {
        if (errno(e) === "EEXIST") return false
        throw e
      })
      if (created && id.runAs) await fsp.chown(d, id.owner.uid, id.owner.gid)
    }
  }

  // ---- running one sandbox ----
  interface RunSpec {
    readonly k: Knobs
    readonly tools: Tools
    readonly identity: Identity
    readonly dir: string
    readonly leaseId: string
    readonly command: string
    readonly args: ReadonlyArray<string>
    readonly cwd: string
    readonly env: Readonly<Record<string, string>>
    readonly stdin: string | undefined
    readonly timeoutMs: number | null
    readonly journal: boolean
  }
  interface RunOutcome {
    readonly code: number | null
    readonly signal: string | null
    readonly timedOut: boolean
    readonly aborted: boolean
    readonly stdout: string
    readonly stderr: string
    readonly stdoutTruncated: boolean
    readonly stderrTruncated: boolean
    readonly durationMs: number
    readonly pid: number | null
    readonly sandboxPid: number | null
    readonly spawnError: string | null
  }

  /** Spawn bwrap for one command; never rejects (failures are in the outcome). Registered in `procs`
   * synchronously with the spawn, so a concurrent teardown always sees it. */
  const runSandbox = (s: RunSpec, o: ExecuteOptions | undefined): Promise<RunOutcome> =>
    new Promise<RunOutcome>((resolve) => {
      const started = Date.now()
      const options = bwrapOptions(s.k, s.tools, s.dir, s.cwd, s.env)
      const limits = [`--nproc=${s.k.pids}:${s.k.pids}`, `--as=${s.k.memoryMiB * 1024 * 1024}:${s.k.memoryMiB * 1024 * 1024}`, "--core=0:0"]
      if (s.k.cpuSeconds !== null) limits.push(`--cpu=${s.k.cpuSeconds}:${s.k.cpuSeconds + 1}`)
      // RLIMIT_NPROC is set inside the sandbox's own user namespace, so it counts only this sandbox's tasks
      const argv = ["--args", "3", "--", s.tools.prlimit, ...limits, "--", s.command, ...s.args]
      const out = { stdout: [] as Array<Buffer>, stderr: [] as Array<Buffer>, stdoutBytes: 0, stderrBytes: 0, stdoutTruncated: false, stderrTruncated: false }
      const decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") }
      let child: ReturnType<typeof spawn>
      const finishEarly = (message: string) =>
        resolve({ code: null, signal: null, timedOut: false, aborted: false, stdout: "", stderr: "", stdoutTruncated: false, stderrTruncated: false, durationMs: Date.now() - started, pid: null, sandboxPid: null, spawnError: message })
      try {
        child = spawn(s.tools.bwrap, argv, {
          cwd: "/",
          env: {},
          detached: true,
          stdio: ["pipe", "pipe", "pipe", "pipe", "pipe", "pipe", "pipe"],
          ...(s.identity.runAs ? { uid: s.identity.runAs.uid, gid: s.identity.runAs.gid } : {})
        })
      } catch (e) {
        return finishEarly(`cannot start ${s.tools.bwrap}: ${messageOf(e)}`)
      }
      const pid = child.pid
      let inner: ProcRef | null = null
      let timedOut = false
      let aborted = false
      let sent: NodeJS.Signals | null = null
      let killTimer: ReturnType<typeof setTimeout> | undefined
      let timeoutTimer: ReturnType<typeof setTimeout> | undefined
      let closeFallback: ReturnType<typeof setTimeout> | undefined
      let settled = false
      let finished!: () => void
      const done = new Promise<void>((r) => (finished = r))
      const outer: ProcRef | null = pid === undefined ? null : { pid, start: startTimeOf(pid) }
      const journalFile = pid === undefined ? null : join(journalDir(s.dir), String(pid))
      const journal = () => {
        if (!s.journal || !journalFile || !outer) return
        try {
          // not recursive: a lease directory that is gone must stay gone
          try {
            mkdirSync(journalDir(s.dir), { mode: 0o700 })
          } catch (e) {
            if (errno(e) !== "EEXIST") throw e
          }
          writeFileSync(journalFile, JSON.stringify({ outer, inner } satisfies JournalEntry))
        } catch {
          // the lease directory is going away; its teardown kills what runs
        }
      }
      // synchronously, right after spawn: a worker SIGKILLed from here on leaves a record behind
      journal()

      const terminate = () => {
        if (pid === undefined || sent !== null) return
        sent = "SIGTERM"
        // the command's group inside the sandbox gets SIGTERM (the sandbox's pid 1 ignores it); without
        // that group yet, the outer bwrap goes and --die-with-parent takes the sandbox with it
        if (inner) kill(-inner.pid, "SIGTERM")
        else kill(-pid, "SIGTERM")
        killTimer = setTimeout(() => {
          // the signal reported is the one that ended it: an outer bwrap already gone went on SIGTERM
          // (its output may still be draining), the group is still swept
          if (child.exitCode === null && child.signalCode === null) sent = "SIGKILL"
          // pid 1 of the sandbox's pid namespace: the kernel kills every process in it
          if (inner) {
            kill(inner.pid, "SIGKILL")
            kill(-inner.pid, "SIGKILL")
          }
          kill(-pid, "SIGKILL")
        }, KILL_GRACE_MS)
      }
      const killNow = () => {
        if (pid === undefined) return
        if (inner) {
          kill(inner.pid, "SIGKILL")
          kill(-inner.pid, "SIGKILL")
        }
        kill(-pid, "SIGKILL")
      }
      const proc: Proc | undefined = pid === undefined ? undefined : {
        leaseId: s.leaseId,
        outer: pid,
        kill: () => {
          // killed for a release/destroy/shutdown: the command was cancelled, it did not fail
          if (!timedOut) aborted = true
          terminate()
          return done
        },
        killNow
      }
      if (proc) {
        const set = procs.get(s.leaseId) ?? new Set<Proc>()
        set.add(proc)
        procs.set(s.leaseId, set)
      }
      const onAbort = () => {
        aborted = true
        terminate()
      }
      o?.signal?.addEventListener("abort", onAbort, { once: true })
      if (o?.signal?.aborted) onAbort()
      if (s.timeoutMs !== null) {
        timeoutTimer = setTimeout(() => {
          timedOut = true
          terminate()
        }, s.timeoutMs)
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
      let info = ""
      const infoStream = (child.stdio as ReadonlyArray<unknown>)[4] as NodeJS.ReadableStream | null | undefined
      infoStream?.on("data", (d: Buffer) => {
        if (inner) return
        info += d.toString("utf8")
        const m = /"child-pid"\s*:\s*(\d+)/.exec(info)
        if (m) {
          const innerPid = Number(m[1])
          inner = { pid: innerPid, start: startTimeOf(innerPid) }
          journal()
          // a terminate that came before the sandbox existed reached the outer bwrap only
          if (sent !== null) kill(-innerPid, sent)
        }
      })
      infoStream?.on("error", () => undefined)
      for (const [fd, data] of [[3, options.join("\0") + "\0"], [5, passwd], [6, group]] as const) {
        const w = (child.stdio as ReadonlyArray<unknown>)[fd] as NodeJS.WritableStream | null | undefined
        w?.on("error", () => undefined)
        w?.end(data)
      }
      child.stdin!.on("error", () => undefined)
      if (s.stdin !== undefined && s.stdin.length > 0) child.stdin!.end(s.stdin)
      else child.stdin!.end()

      const finish = (code: number | null, sig: NodeJS.Signals | null, spawnError: string | null) => {
        if (settled) return
        settled = true
        if (timeoutTimer) clearTimeout(timeoutTimer)
        if (killTimer) clearTimeout(killTimer)
        if (closeFallback) clearTimeout(closeFallback)
        o?.signal?.removeEventListener("abort", onAbort)
        for (const st of ["stdout", "stderr"] as const) emit(st, decoders[st].end())
        if (proc) {
          const set = procs.get(s.leaseId)
          set?.delete(proc)
          if (set && set.size === 0) procs.delete(s.leaseId)
        }
        if (journalFile && s.journal) {
          try {
            rmSync(journalFile, { force: true })
          } catch {
            // a stale journal entry only costs a check at teardown
          }
        }
        finished()
        resolve({
          code,
          signal: sig ?? (timedOut || aborted ? sent : null),
          timedOut,
          aborted,
          stdout: Buffer.concat(out.stdout).toString("utf8"),
          stderr: Buffer.concat(out.stderr).toString("utf8"),
          stdoutTruncated: out.stdoutTruncated,
          stderrTruncated: out.stderrTruncated,
          durationMs: Date.now() - started,
          pid: pid ?? null,
          sandboxPid: inner?.pid ?? null,
          spawnError
        })
      }
      child.on("error", (err) => {
        if (pid === undefined) finish(null, null, `cannot start ${s.tools.bwrap}: ${err.message}`)
      })
      // done when bwrap has exited and its stdout/stderr are drained; the auxiliary fds (args, info,
      // passwd, group) are never waited for
      const drained = (st: NodeJS.ReadableStream | null) =>
        new Promise<void>((r) => {
          if (!st || (st as { closed?: boolean }).closed === true) return r()
          st.once("close", () => r())
        })
      const outputs = Promise.all([drained(child.stdout), drained(child.stderr)])
      child.on("exit", (code, sig) => {
        // bwrap is gone, so is its pid namespace; pipes held by anything else must not keep us waiting
        killNow()
        for (const fd of [0, 3, 4, 5, 6]) ((child.stdio as ReadonlyArray<unknown>)[fd] as { destroy?: () => void } | null | undefined)?.destroy?.()
        closeFallback = setTimeout(() => {
          child.stdout?.destroy()
          child.stderr?.destroy()
        }, 2_000)
        void outputs.then(() => finish(code, sig, null))
      })
    })

  /** A bwrap failure before the command ran is an error of the provider, not an exit code. */
  const setupFailure = (r: RunOutcome): string | null => {
    if (r.spawnError) return r.spawnError
    if (r.timedOut || r.aborted || r.code !== 1 || r.stdout.length > 0) return null
    const lines = r.stderr.trim().split("\n")
    return lines.length === 1 && lines[0]!.startsWith("bwrap: ") ? lines[0]! : null
  }

  // ---- host checks ----
  const hostChecks = async (k: Knobs, smoke: boolean): Promise<{ diagnostics: Array<Diagnostic>; tools: Tools | null; identity: Identity }> => {
    const identity = identityOf(k, sys)
    const { tools: t, diagnostics } = await detectTools()
    const sysRoot = sys.procSysRoot ?? "/proc/sys"
    let usernsBlocked = false
    if (readSysctl(sysRoot, "user/max_user_namespaces") === 0) {
      usernsBlocked = true
      diagnostics.push({ level: "error", check: "userns", message: "user namespaces are disabled (user.max_user_namespaces = 0)", fix: "sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)" })
    }
    if (identity.unprivileged && readSysctl(sysRoot, "kernel/unprivileged_userns_clone") === 0) {
      usernsBlocked = true
      diagnostics.push({ level: "error", check: "userns", message: "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)", fix: "sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)" })
    }
    if (identity.runAs === null && identity.owner.uid === 0) {
      diagnostics.push({ level: "warn", check: "limits", message: "sandboxes run as host root (runAsUid 0): the kernel does not apply RLIMIT_NPROC to root, so pids is not enforced", fix: "leave runAsUid unset (65534) or set an unprivileged uid" })
    }
    if (t && !k.readOnlyPaths.some((r) => under(t.prlimit, r) || under(realpathOr(t.prlimit), r))) {
      diagnostics.push({ level: "error", check: "prlimit", message: `prlimit (${t.prlimit}) is not inside any readOnlyPaths entry, so the sandbox cannot set its limits`, fix: "add the directory holding prlimit (usually /usr) to readOnlyPaths" })
    }
    // the workspaceRoot: creatable, writable, reachable by the sandbox's host user
    let rootOk = true
    try {
      await fsp.mkdir(k.workspaceRoot, { recursive: true, mode: 0o711 })
      await fsp.access(k.workspaceRoot, fsConstants.W_OK)
      const probeFile = join(k.workspaceRoot, `.write-test-${process.pid}-${randomBytes(4).toString("hex")}`)
      await fsp.writeFile(probeFile, "")
      await fsp.rm(probeFile, { force: true })
    } catch (e) {
      rootOk = false
      diagnostics.push({
        level: "error",
        check: "workspaceRoot",
        message: `workspaceRoot ${k.workspaceRoot} is not writable: ${errno(e) ?? ""} ${messageOf(e)}`.replace(/\s+/g, " "),
        fix: `create it and make it writable by uid ${identity.owner.uid} (mkdir -p ${k.workspaceRoot} && chown ${identity.owner.uid} ${k.workspaceRoot}), or set workspaceRoot to a writable directory (default ${DEFAULT_ROOT})`
      })
    }
    if (rootOk && identity.runAs) {
      const blocked = unreachableBy(k.workspaceRoot, identity.runAs.uid, identity.runAs.gid)
      if (blocked) {
        rootOk = false
        diagnostics.push({
          level: "error",
          check: "workspaceRoot",
          message: `workspaceRoot ${k.workspaceRoot} is not reachable by the sandbox user (host uid ${identity.runAs.uid}): ${blocked.dir} has mode ${blocked.mode.toString(8).padStart(4, "0")}`,
          fix: `chmod o+x ${blocked.dir}, or put workspaceRoot somewhere every user can traverse (default ${DEFAULT_ROOT})`
        })
      }
    }
    const missing = k.readOnlyPaths.filter((p) => {
      try {
        lstatSync(p)
        return false
      } catch {
        return true
      }
    })
    if (missing.length > 0) diagnostics.push({ level: "info", check: "readOnlyPaths", message: `not on this host, skipped: ${missing.join(", ")}` })

    if (rootOk) await removeStaleProbes(k.workspaceRoot)
    if (smoke && t && rootOk && !usernsBlocked && !diagnostics.some((d) => d.level === "error")) {
      const dir = join(k.workspaceRoot, `.probe-${process.pid}-${randomBytes(4).toString("hex")}`)
      try {
        await fsp.mkdir(dir, { mode: 0o711 })
        await ensureDirs(dir, identity)
        const r = await runSandbox({ k, tools: t, identity, dir, leaseId: "", command: "true", args: [], cwd: WORKSPACE, env: { PATH: DEFAULT_PATH }, stdin: undefined, timeoutMs: 15_000, journal: false }, undefined)
        if (r.code !== 0) {
          const why = (r.spawnError ?? r.stderr.trim()) || `exit code ${r.code}`
          const userns = /namespace|uid map|gid map|setgroups|Operation not permitted|Permission denied/i.test(why)
          diagnostics.push(userns
            ? { level: "error", check: "userns", message: `bwrap cannot create its namespaces: ${why}`, fix: FIX_USERNS }
            : { level: "error", check: "smoke", message: `a sandbox running \`true\` failed: ${why}`, fix: "check readOnlyPaths and the bwrap message above" })
        }
      } catch (e) {
        diagnostics.push({ level: "error", check: "smoke", message: `cannot prepare a test sandbox under ${k.workspaceRoot}: ${messageOf(e)}`, fix: "make workspaceRoot writable" })
      } finally {
        await removeTree(dir).catch(() => undefined)
      }
    }
    return { diagnostics, tools: t, identity }
  }
  const render = (d: Diagnostic) => (d.fix ? `${d.check}: ${d.message} — fix: ${d.fix}` : `${d.check}: ${d.message}`)

  const cgroupInfo = (): Json => {
    for (const [where, file] of [["/sys/fs/cgroup", "/sys/fs/cgroup/cgroup.controllers"], ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/cgroup.controllers"]] as const) {
      try {
        const controllers = readFileSync(file, "utf8").trim().split(/\s+/).filter(Boolean)
        return { v2: where, controllers, used: false }
      } catch {
        // not there
      }
    }
    return { v2: null, controllers: [], used: false }
  }

  // ---- teardown ----
  const teardown = async (dir: string, id: string): Promise<void> => {
    tearing.add(id)
    try {
      await cancel(id)
      await killJournaled(await readJournal(dir))
      await removeTree(dir)
    } finally {
      tearing.delete(id)
    }
  }

  const lastFailed = (r: LeaseRecord | null) => {
    const l = r?.lastExecute
    return l !== null && l !== undefined && (l.error !== null || l.timedOut || l.exitCode !== 0)
  }

  const teardownLease = (op: "release" | "destroy", p: LeaseParams): Promise<ReleaseResult> => {
    const k = knobsOf(p.config, sys)
    const id = p.providerLeaseId
    // an id that is not ours names nothing under workspaceRoot: nothing to tear down
    if (!LEASE_ID_RE.test(id)) return Promise.resolve({ providerLeaseId: id, state: "destroyed" })
    return serial(id, async () => {
      const dir = leaseDir(k.workspaceRoot, id)
      const record = await readRecord(dir)
      if (op === "release" && record && (record.state === "kept" || (k.keepOnFailure && p.cancelActiveWork !== true && lastFailed(record)))) {
        await cancel(id)
        await killJournaled(await readJournal(dir))
        if (record.state !== "kept") await writeAtomic(recordFile(dir), { ...record, state: "kept" } satisfies LeaseRecord)
        return { providerLeaseId: id, state: "stopped" }
      }
      await teardown(dir, id)
      return { providerLeaseId: id, state: "destroyed" }
    })
  }

  const toLease = (r: LeaseRecord, dir: string, k: Knobs, reused: boolean): ProviderLease => ({
    providerLeaseId: r.providerLeaseId,
    metadata: {
      workspace: WORKSPACE,
      hostPath: workspaceDir(dir),
      runId: r.runId,
      createdAt: r.createdAt,
      reused,
      network: k.network
    },
    expiresAt: null
  })

  const liveRecord = async (k: Knobs, id: string): Promise<{ record: LeaseRecord; dir: string }> => {
    if (!LEASE_ID_RE.test(id)) throw new BwrapSandboxError(`bwrap-sandbox: lease ${id} not found`, "not_found")
    const dir = leaseDir(k.workspaceRoot, id)
    const record = await readRecord(dir)
    if (!record) throw new BwrapSandboxError(`bwrap-sandbox: lease ${id} not found under ${k.workspaceRoot}`, "not_found")
    if (record.state !== "live") throw new BwrapSandboxError(`bwrap-sandbox: lease ${id} was released (its workspace is kept for inspection)`, "not_found")
    return { record, dir }
  }

  const cancelled = (what: string) => new BwrapSandboxError(`bwrap-sandbox: ${what} cancelled`, "cancelled")

  const execute = async (p: ExecuteParams, o?: ExecuteOptions): Promise<ExecuteResult> => {
    const k = knobsOf(p.config, sys)
    const t = await tools()
    const id = p.lease.providerLeaseId
    const { dir, record: lease } = await liveRecord(k, id)
    if (typeof p.command !== "string" || p.command.length === 0) throw new BwrapSandboxError("bwrap-sandbox: command is required", "invalid_request")
    const env: Record<string, string> = { PATH: DEFAULT_PATH, ...k.env, ...(p.env ?? {}) }
    for (const [name, value] of Object.entries(env)) {
      if (name.length === 0 || name.includes("=") || name.includes("\0") || typeof value !== "string" || value.includes("\0")) {
        throw new BwrapSandboxError(`bwrap-sandbox: invalid environment variable ${JSON.stringify(name)}`, "invalid_request")
      }
    }
    for (const a of [p.command, ...(p.args ?? []), p.cwd ?? ""]) {
      if (a.includes("\0")) throw new BwrapSandboxError("bwrap-sandbox: command, args and cwd must not contain NUL", "invalid_request")
    }
    // cwd is a path inside the sandbox; relative paths are relative to the workspace
    const cwd = p.cwd === undefined || p.cwd === "" ? WORKSPACE : posix.isAbsolute(p.cwd) ? normalizePath(p.cwd) : normalizePath(posix.join(WORKSPACE, p.cwd))
    const timeouts = [p.timeoutMs, k.timeoutMs ?? undefined].filter((x): x is number => typeof x === "number" && x > 0)
    const timeoutMs = timeouts.length > 0 ? Math.min(...timeouts) : null
    if (o?.signal?.aborted) throw cancelled("execute")
    if (tearing.has(id)) throw new BwrapSandboxError(`bwrap-sandbox: lease ${id} is being released`, "not_found")
    const identity = identityOfRecord(lease, sys)
    // from the check above to the registration in runSandbox nothing awaits: a teardown sees this command
    const r = await runSandbox({ k, tools: t, identity, dir, leaseId: id, command: p.command, args: p.args ?? [], cwd, env, stdin: p.stdin, timeoutMs, journal: true }, o)
    const setup = setupFailure(r)
    const record = async (last: Omit<LastExecute, "at">) => {
      if (tearing.has(id)) return
      try {
        const cur = await readRecord(dir)
        if (cur && cur.state === "live") await writeAtomic(recordFile(dir), { ...cur, lastExecute: { ...last, at: iso(Date.now()) } } satisfies LeaseRecord)
      } catch {
        // the lease went away meanwhile
      }
    }
    if (r.aborted && !r.timedOut) {
      await record({ exitCode: null, signal: r.signal, timedOut: false, cancelled: true, error: null })
      throw cancelled("execute")
    }
    if (setup !== null) {
      await record({ exitCode: null, signal: null, timedOut: false, cancelled: false, error: setup })
      throw new BwrapSandboxError(`bwrap-sandbox: sandbox setup failed: ${setup}`, "setup")
    }
    const exitCode = r.timedOut ? null : r.code
    await record({ exitCode, signal: r.signal, timedOut: r.timedOut, cancelled: false, error: null })
    return {
      exitCode,
      signal: r.signal,
      timedOut: r.timedOut,
      stdout: r.stdout,
      stderr: r.stderr,
      metadata: {
        truncated: r.stdoutTruncated || r.stderrTruncated,
        stdoutTruncated: r.stdoutTruncated,
        stderrTruncated: r.stderrTruncated,
        durationMs: r.durationMs,
        cwd,
        providerLeaseId: id,
        pid: r.pid,
        sandboxPid: r.sandboxPid,
        network: k.network
      }
    }
  }

  return {
    validateConfig: async (config) => {
      const f = validateFields(config, sys)
      if (!f.ok) return { ok: false, errors: f.errors, warnings: f.warnings, normalizedConfig: f.normalizedConfig }
      const { diagnostics } = await hostChecks(f.knobs, true)
      const errors = diagnostics.filter((d) => d.level === "error").map(render)
      const warnings = [...f.warnings, ...diagnostics.filter((d) => d.level === "warn").map(render)]
      return { ok: errors.length === 0, errors, warnings, normalizedConfig: f.normalizedConfig }
    },
    probe: async (p) => {
      const f = validateFields(p.config, sys)
      if (!f.ok) return { ok: false, summary: `invalid config: ${f.errors.join("; ")}`, diagnostics: f.errors.map((message) => ({ level: "error", check: "config", message })), metadata: {} }
      const k = f.knobs
      const { diagnostics, tools: t, identity } = await hostChecks(k, true)
      const all: Array<Diagnostic> = [...f.warnings.map((message) => ({ level: "warn" as const, check: "config", message })), ...diagnostics]
      const errors = all.filter((d) => d.level === "error")
      const leases = errors.some((d) => d.check === "workspaceRoot") ? [] : await listLeases(k.workspaceRoot).catch(() => [])
      const metadata: Json = {
        bwrap: t ? { path: t.bwrap, version: t.version } : null,
        prlimit: t?.prlimit ?? null,
        workspaceRoot: k.workspaceRoot,
        liveLeases: leases.filter((l) => l.state !== "kept").length,
        keptLeases: leases.filter((l) => l.state === "kept").length,
        network: k.network,
        runAs: identity.runAs,
        limits: {
          mechanism: "rlimits set by prlimit inside the sandbox",
          memory: `RLIMIT_AS ${k.memoryMiB} MiB per process; /dev/shm ${k.memoryMiB} MiB`,
          pids: `RLIMIT_NPROC ${k.pids} in the sandbox's user namespace${identity.runAs === null && identity.owner.uid === 0 ? " (not enforced for host root)" : ""}`,
          cpu: k.cpuSeconds === null ? "none" : `RLIMIT_CPU ${k.cpuSeconds} s per process`,
          timeoutMs: k.timeoutMs
        },
        cgroups: cgroupInfo()
      }
      if (errors.length > 0) {
        return { ok: false, summary: `bwrap sandbox not usable: ${errors.map(render).join("; ")}`, diagnostics: all.map((d) => ({ ...d })), metadata }
      }
      return {
        ok: true,
        summary: `bwrap sandbox ready: bubblewrap ${t?.version}, network ${k.network}, ${metadata.liveLeases} live lease(s) under ${k.workspaceRoot}`,
        diagnostics: all.map((d) => ({ ...d })),
        metadata
      }
    },
    acquire: async (p) => {
      const k = knobsOf(p.config, sys)
      if (typeof p.runId !== "string" || p.runId.length === 0) throw new BwrapSandboxError("bwrap-sandbox: runId is required", "invalid_request")
      const id = leaseIdFor(p.runId)
      const identity = identityOf(k, sys)
      return serial(id, async () => {
        await fsp.mkdir(k.workspaceRoot, { recursive: true, mode: 0o711 })
        const dir = leaseDir(k.workspaceRoot, id)
        const existing = await readRecord(dir)
        if (existing) {
          await ensureDirs(dir, identityOfRecord(existing, sys))
          if (existing.state === "kept") {
            const revived: LeaseRecord = { ...existing, state: "live" }
            await writeAtomic(recordFile(dir), revived)
            return toLease(revived, dir, k, true)
          }
          return toLease(existing, dir, k, true)
        }
        await fsp.mkdir(dir, { mode: 0o711 }).catch((e: unknown) => {
          // a directory without a record: a creation cut short, completed now
          if (errno(e) !== "EEXIST") throw e
        })
        await ensureDirs(dir, identity)
        const record: LeaseRecord = {
          version: 1,
          providerLeaseId: id,
          runId: p.runId,
          companyId: p.companyId ?? null,
          environmentId: p.environmentId ?? null,
          agentId: p.agentId ?? null,
          createdAt: iso(Date.now()),
          state: "live",
          hostUid: identity.owner.uid,
          hostGid: identity.owner.gid,
          lastExecute: null
        }
        await writeAtomic(recordFile(dir), record)
        return toLease(record, dir, k, false)
      })
    },
    resume: async (p) => {
      const k = knobsOf(p.config, sys)
      const id = p.providerLeaseId
      if (!LEASE_ID_RE.test(id)) return { providerLeaseId: null }
      return serial(id, async () => {
        const dir = leaseDir(k.workspaceRoot, id)
        const record = await readRecord(dir)
        if (record && record.state === "live") {
          await ensureDirs(dir, identityOfRecord(record, sys))
          return toLease(record, dir, k, true)
        }
        // a directory without its record was never handed out complete: nothing to resume, nothing to keep
        if (!record) await teardown(dir, id)
        return { providerLeaseId: null }
      })
    },
    release: (p) => teardownLease("release", p),
    destroy: (p) => teardownLease("destroy", p),
    realize: async (p) => {
      const k = knobsOf(p.config, sys)
      const { dir, record } = await liveRecord(k, p.lease.providerLeaseId)
      await ensureDirs(dir, identityOfRecord(record, sys))
      return { cwd: WORKSPACE, metadata: { providerLeaseId: p.lease.providerLeaseId, hostPath: workspaceDir(dir) } }
    },
    execute,
    cancel,
    activeProcesses: () => [...procs.values()].reduce((n, s) => n + s.size, 0),
    shutdown: async () => {
      await Promise.all([...procs.keys()].map(cancel))
    },
    killAllSync: () => {
      for (const set of procs.values()) for (const p of set) p.killNow()
    }
  }
}
