// Plugin worker isolation (SPEC §16): by default each worker runs in its own bubblewrap sandbox —
// its package directory read-only, node and the system libraries read-only, a private /tmp, no
// network namespace (its only way out is the host's http capability), no data dir, no host
// secrets — so the capability gates bind even a hostile plugin. Plugins on the operator's trust
// list run as plain child processes; where bwrap cannot create a sandbox, workers run unsandboxed
// and say so on their status and in their log.
import { spawnSync } from "node:child_process"
import { existsSync, lstatSync, readFileSync, readlinkSync, realpathSync } from "node:fs"
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path"
import { fileURLToPath } from "node:url"

export type Isolation = "sandboxed" | "trusted" | "unsandboxed"

export interface WorkerIsolationOptions {
  /** `auto`: sandbox every untrusted worker where bwrap works; `off`: no sandbox (flagged unsandboxed). */
  readonly mode: "auto" | "off"
  /** Plugin ids that run without the sandbox (providers that create sandboxes or processes themselves). */
  readonly trusted: ReadonlyArray<string>
  /** Paths a sandboxed worker must never see (the data dir, the workspaces root): masked when they
   * lie inside something the worker is given. */
  readonly hidden: ReadonlyArray<string>
}

/** The bundled providers create sandboxes and processes themselves: trusted unless the operator says otherwise. */
export const DEFAULT_TRUSTED: ReadonlyArray<string> = ["fake-sandbox", "bwrap-sandbox"]

export const defaultIsolation: WorkerIsolationOptions = { mode: "auto", trusted: DEFAULT_TRUSTED, hidden: [] }

export interface Launch {
  /** Run this instead of node (with `args` before node's own arguments); undefined = node directly. */
  readonly launcher: { readonly command: string; readonly args: ReadonlyArray<string> } | undefined
  readonly isolation: Isolation
  /** Why a worker is not sandboxed, for its log; undefined when sandboxed or trusted. */
  readonly warning: string | undefined
}

let probed: { readonly bwrap: string; readonly error: string | undefined } | undefined

const findBwrap = (): string | undefined => {
  for (const dir of ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"]) {
    const p = join(dir, "bwrap")
    if (existsSync(p)) return p
  }
  return undefined
}

/** Can bwrap create an unprivileged sandbox with every namespace here? Checked once per process. */
export const probe = (): { readonly bwrap: string; readonly error: string | undefined } => {
  if (probed) return probed
  const bwrap = findBwrap()
  if (!bwrap) return (probed = { bwrap: "bwrap", error: "bubblewrap (bwrap) is not installed (apt-get install -y bubblewrap)" })
  const r = spawnSync(bwrap, ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "/bin/true"], { encoding: "utf8", timeout: 10_000 })
  const error = r.status === 0 ? undefined : `bwrap cannot create a sandbox here: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim().slice(0, 300)}`
  return (probed = { bwrap, error })
}

/** Gantry's own package root (for workers run from source through tsx). */
const gantryRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const pkg = join(dir, "package.json")
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, "utf8")) as { name?: unknown }).name === "gantry") return dir
      } catch {
        // not ours; keep looking
      }
    }
    const up = dirname(dir)
    if (up === dir) return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..")
    dir = up
  }
})()

const inside = (child: string, parent: string) => {
  const rel = relative(parent, child)
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel))
}
const depth = (p: string) => p.split(sep).filter(Boolean).length
const real = (p: string) => {
  try {
    return realpathSync(p)
  } catch {
    return resolve(p)
  }
}

type Op = { readonly kind: "ro" | "mask"; readonly path: string; readonly source?: string }

/** The bwrap arguments for one worker (before `-- node …`). */
export const sandboxArgs = (o: {
  readonly root: string
  readonly entry: string
  readonly execArgv: ReadonlyArray<string>
  readonly hidden: ReadonlyArray<string>
}): Array<string> => {
  const args = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
  // system: /usr, the /bin and /lib* trees (symlinks into /usr on merged-/usr systems), a few /etc files
  args.push("--ro-bind", "/usr", "/usr")
  for (const top of ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]) {
    if (!existsSync(top)) continue
    const st = lstatSync(top)
    if (st.isSymbolicLink()) args.push("--symlink", readlinkSync(top), top)
    else args.push("--ro-bind", top, top)
  }
  for (const f of ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives"]) {
    if (existsSync(f)) args.push("--ro-bind", f, f)
  }
  const ops: Array<Op> = []
  const ro = (p: string) => {
    if (!existsSync(p)) return
    const r = real(p)
    ops.push({ kind: "ro", path: r, source: r })
    if (resolve(p) !== r) ops.push({ kind: "ro", path: resolve(p), source: r })
  }
  // node itself (outside /usr when installed by a version manager)
  ro(process.execPath)
  const root = resolve(o.root)
  ro(root)
  if (!inside(resolve(o.entry), root)) ro(dirname(resolve(o.entry)))
  // what module resolution walks up to: node_modules directories and package.json files (module type)
  for (let dir = dirname(root); ; dir = dirname(dir)) {
    ro(join(dir, "node_modules"))
    ro(join(dir, "package.json"))
    if (dirname(dir) === dir) break
  }
  // from source (development, tests): tsx and Gantry's own sources
  const tsx = o.entry.endsWith(".ts") || o.execArgv.some((a) => a.includes("tsx"))
  if (tsx) for (const p of ["src", "node_modules", "package.json", "tsconfig.json"]) ro(join(gantryRoot, p))
  for (const h of o.hidden) {
    // a path that does not exist has nothing to hide (and a mount point cannot be made in a read-only bind)
    if (!existsSync(h)) continue
    const r = real(h)
    if (ops.some((op) => op.kind === "ro" && inside(r, op.path) && r !== op.path)) ops.push({ kind: "mask", path: r })
  }
  // outer first; a mask before the binds that lie inside it (a plugin installed under the data dir)
  ops.sort((a, b) => depth(a.path) - depth(b.path) || (a.kind === b.kind ? 0 : a.kind === "mask" ? -1 : 1))
  for (const op of ops) {
    if (op.kind === "mask") args.push("--tmpfs", op.path)
    else if (!op.path.startsWith("/usr/") && op.path !== "/usr") args.push("--ro-bind", op.source!, op.path)
  }
  args.push("--chdir", root)
  return args
}

/** How to launch one plugin's worker under the isolation policy. */
export const plan = (options: WorkerIsolationOptions, o: {
  readonly pluginId: string
  readonly root: string
  readonly entry: string
  readonly execArgv: ReadonlyArray<string>
}): Launch => {
  if (options.trusted.includes(o.pluginId)) return { launcher: undefined, isolation: "trusted", warning: undefined }
  if (options.mode === "off") {
    return { launcher: undefined, isolation: "unsandboxed", warning: "worker sandbox turned off (GANTRY_PLUGIN_SANDBOX=off): this worker runs with the host's files and network" }
  }
  const p = probe()
  if (p.error) return { launcher: undefined, isolation: "unsandboxed", warning: `worker not sandboxed: ${p.error}; it runs with the host's files and network` }
  return { launcher: { command: p.bwrap, args: [...sandboxArgs({ ...o, hidden: options.hidden }), "--"] }, isolation: "sandboxed", warning: undefined }
}
