// Plugin packages on disk (SPEC §15): where a source points (folder, .tgz, npm spec), fetching a
// tarball with the machine's npm client (`npm pack --ignore-scripts`), unpacking it after every
// entry was inspected (no `..`, no absolute paths, no links out, no devices), copying a folder, and
// the sha512 of what was installed. Nothing here runs package code.
import { Effect, Schema } from "effect"
import { execFile } from "node:child_process"
import { createHash } from "node:crypto"
import {
  existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, symlinkSync, writeFileSync
} from "node:fs"
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path"
import { gunzipSync } from "node:zlib"

/** A package that may not be installed: unsafe archive, entrypoint outside, link escaping, too big. */
export class UnsafePackage extends Schema.TaggedError<UnsafePackage>()("UnsafePackage", {
  source: Schema.String,
  problems: Schema.Array(Schema.String),
  message: Schema.String
}) {
  get status() { return 422 }
}

/** The source cannot be read or fetched (no such folder or file, unknown npm package, npm failed). */
export class SourceUnavailable extends Schema.TaggedError<SourceUnavailable>()("SourceUnavailable", {
  source: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}

export type SourceKind = "folder" | "tarball" | "npm"

export interface ResolvedSource {
  readonly kind: SourceKind
  /** Absolute path for folder/tarball; the npm spec as given otherwise. */
  readonly location: string
}

// `name`, `@scope/name`, optionally `@version|range|tag`; never starting with `-` (not an option)
const NPM_SPEC = /^(@[a-z0-9~][a-z0-9._~-]*\/)?[a-z0-9~][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=*|+ -]+)?$/

export const MAX_TARBALL_BYTES = 100 * 1024 * 1024
export const MAX_UNPACKED_BYTES = 512 * 1024 * 1024
export const MAX_ENTRIES = 20_000
const SKIP_IN_FOLDER = new Set([".git", "node_modules"])

/** What a source string means. Paths must be absolute (the CLI resolves relative ones). */
export const resolveSource = (source: string): Effect.Effect<ResolvedSource, SourceUnavailable> =>
  Effect.suspend((): Effect.Effect<ResolvedSource, SourceUnavailable> => {
    const s = source.trim()
    const unavailable = (message: string) => Effect.fail(new SourceUnavailable({ source, message }))
    if (s.length === 0) return unavailable("source is empty")
    if (isAbsolute(s)) {
      if (!existsSync(s)) return unavailable(`no such file or folder: ${s}`)
      const st = statSync(s)
      if (st.isDirectory()) return Effect.succeed({ kind: "folder" as const, location: s })
      if (st.isFile() && /\.(tgz|tar\.gz)$/.test(s)) return Effect.succeed({ kind: "tarball" as const, location: s })
      return unavailable(`${s} is neither a folder nor a .tgz file`)
    }
    if (s.startsWith(".") || s.includes("\\") || (s.includes("/") && !s.startsWith("@"))) {
      return unavailable(`"${s}" is not an absolute path nor an npm package spec (name or name@version)`)
    }
    if (!NPM_SPEC.test(s)) return unavailable(`"${s}" is not an npm package spec (name, @scope/name, name@version)`)
    return Effect.succeed({ kind: "npm" as const, location: s })
  })

const run = (file: string, args: ReadonlyArray<string>, cwd: string, timeoutMs: number) =>
  Effect.async<{ readonly code: number; readonly stdout: string; readonly stderr: string }>((resume) => {
    const child = execFile(file, [...args], { cwd, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, env: process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0
      resume(Effect.succeed({ code, stdout: String(stdout), stderr: String(stderr) }))
    })
    return Effect.sync(() => void child.kill("SIGKILL"))
  })

/** `npm pack <spec> --ignore-scripts` into `dest`; returns the tarball's path. */
export const npmPack = (spec: string, dest: string, timeoutMs = 120_000): Effect.Effect<string, SourceUnavailable> =>
  Effect.gen(function* () {
    const r = yield* run("npm", ["pack", spec, "--ignore-scripts", "--json", "--pack-destination", dest, "--loglevel", "error"], dest, timeoutMs)
    const unavailable = (why: string) => new SourceUnavailable({ source: spec, message: `npm could not fetch "${spec}": ${why}` })
    if (r.code !== 0) {
      const text = `${r.stderr}\n${r.stdout}`
      const notFound = /E404|404 Not Found|is not in this registry|No matching version|ETARGET/i.test(text)
      const line = text.split("\n").map((l) => l.replace(/^npm (ERR!|error) ?/, "").trim()).filter((l) => l.length > 0 && !l.startsWith("A complete log"))
      return yield* unavailable(notFound ? `no such package or version in the registry (${line.slice(0, 2).join(" ")})` : line.slice(0, 3).join(" ") || `exit code ${r.code}`)
    }
    const files = readdirSync(dest).filter((f) => f.endsWith(".tgz"))
    if (files.length !== 1) return yield* unavailable(`expected one tarball, npm wrote ${files.length}`)
    return join(dest, files[0]!)
  })

/** npm's integrity string for bytes. */
export const integrity = (bytes: Uint8Array) => `sha512-${createHash("sha512").update(bytes).digest("base64")}`

interface TarEntry {
  readonly path: string
  readonly type: "file" | "dir" | "symlink" | "hardlink" | "other"
  readonly linkname: string
  readonly mode: number
  readonly data: Uint8Array
}

const cstr = (b: Buffer, start: number, len: number) => {
  const s = b.subarray(start, start + len)
  const z = s.indexOf(0)
  return s.subarray(0, z === -1 ? s.length : z).toString("utf8")
}
const octal = (b: Buffer, start: number, len: number) => {
  if ((b[start]! & 0x80) !== 0) return -1 // base-256: files this large are refused anyway
  const t = cstr(b, start, len).trim()
  return t === "" ? 0 : parseInt(t, 8)
}
const paxRecords = (data: Buffer): Record<string, string> => {
  const out: Record<string, string> = {}
  let i = 0
  while (i < data.length) {
    const space = data.indexOf(0x20, i)
    if (space === -1) break
    const len = parseInt(data.subarray(i, space).toString("utf8"), 10)
    if (!Number.isFinite(len) || len <= 0) break
    const rec = data.subarray(space + 1, i + len - 1).toString("utf8")
    const eq = rec.indexOf("=")
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1)
    i += len
  }
  return out
}

/** Every entry of a (gzipped) tar, read without touching the disk. Throws a list of problems. */
export const readTar = (gz: Uint8Array): Array<TarEntry> => {
  const buf = gunzipSync(gz, { maxOutputLength: MAX_UNPACKED_BYTES })
  const out: Array<TarEntry> = []
  let off = 0
  let pax: Record<string, string> = {}
  let longName: string | undefined
  let longLink: string | undefined
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512)
    if (h.every((x) => x === 0)) break
    const size = octal(h, 124, 12)
    if (size < 0) throw [`archive entry at offset ${off}: size not supported`]
    const flag = String.fromCharCode(h[156]!)
    const data = buf.subarray(off + 512, off + 512 + size)
    off += 512 + Math.ceil(size / 512) * 512
    if (flag === "x") { pax = paxRecords(data); continue }
    if (flag === "g") continue
    if (flag === "L") { longName = cstr(data, 0, data.length); continue }
    if (flag === "K") { longLink = cstr(data, 0, data.length); continue }
    const prefix = cstr(h, 257, 6).startsWith("ustar") ? cstr(h, 345, 155) : ""
    const name = pax.path ?? longName ?? (prefix ? `${prefix}/${cstr(h, 0, 100)}` : cstr(h, 0, 100))
    const linkname = pax.linkpath ?? longLink ?? cstr(h, 157, 100)
    pax = {}
    longName = undefined
    longLink = undefined
    const type = flag === "0" || flag === "\0" || flag === "7" ? "file" : flag === "5" ? "dir" : flag === "2" ? "symlink" : flag === "1" ? "hardlink" : "other"
    out.push({ path: name, type, linkname, mode: octal(h, 100, 8), data: Buffer.from(data) })
    if (out.length > MAX_ENTRIES) throw [`archive has more than ${MAX_ENTRIES} entries`]
  }
  return out
}

const inside = (root: string, p: string) => p === root || p.startsWith(root.endsWith(sep) ? root : root + sep)

/** Archive path → path relative to the package root (npm's first component stripped), or a problem. */
const entryPath = (raw: string): { readonly rel: string } | { readonly problem: string } => {
  if (raw.includes("\0")) return { problem: `archive entry "${raw}": NUL in the name` }
  if (raw.startsWith("/") || /^[A-Za-z]:/.test(raw)) return { problem: `archive entry "${raw}": absolute path` }
  const parts = raw.replace(/\\/g, "/").split("/").filter((p) => p !== "" && p !== ".")
  if (parts.includes("..")) return { problem: `archive entry "${raw}": ".." escapes the package` }
  return { rel: parts.slice(1).join("/") }
}

/** Inspect every entry, then write files and directories, then symlinks; every link must stay inside `dest`. */
export const extractTarball = (gz: Uint8Array, dest: string): void => {
  const entries = readTar(gz)
  const problems: Array<string> = []
  const planned: Array<TarEntry & { readonly rel: string }> = []
  const links = new Set<string>()
  let total = 0
  for (const e of entries) {
    const p = entryPath(e.path)
    if ("problem" in p) { problems.push(p.problem); continue }
    if (p.rel === "") continue
    if (e.type === "hardlink") { problems.push(`archive entry "${e.path}": hard links are not allowed`); continue }
    if (e.type === "other") { problems.push(`archive entry "${e.path}": special files (devices, fifos) are not allowed`); continue }
    if (e.type === "symlink") {
      if (isAbsolute(e.linkname)) { problems.push(`archive entry "${e.path}": symlink to an absolute path (${e.linkname})`); continue }
      const target = resolve(dirname(join(dest, p.rel)), e.linkname)
      if (!inside(dest, target)) { problems.push(`archive entry "${e.path}": symlink points outside the package (${e.linkname})`); continue }
      links.add(p.rel)
    }
    total += e.data.length
    planned.push({ ...e, rel: p.rel })
  }
  for (const e of planned) {
    const parts = e.rel.split("/")
    for (let i = 1; i < parts.length; i++) {
      if (links.has(parts.slice(0, i).join("/"))) problems.push(`archive entry "${e.path}": written through a symlink`)
    }
  }
  if (total > MAX_UNPACKED_BYTES) problems.push(`archive unpacks to more than ${MAX_UNPACKED_BYTES} bytes`)
  if (problems.length > 0) throw problems
  mkdirSync(dest, { recursive: true })
  for (const e of planned) {
    const target = join(dest, e.rel)
    if (e.type === "dir") mkdirSync(target, { recursive: true })
    else if (e.type === "file") {
      mkdirSync(dirname(target), { recursive: true })
      writeFileSync(target, e.data, { mode: (e.mode & 0o111) !== 0 ? 0o755 : 0o644, flag: "wx" })
    }
  }
  for (const e of planned) {
    if (e.type !== "symlink") continue
    const target = join(dest, e.rel)
    mkdirSync(dirname(target), { recursive: true })
    symlinkSync(e.linkname, target)
  }
  checkLinks(dest)
}

/** Every symlink under `root` resolves inside it (chains included), names in `skip` left out. Throws a
 * list of problems. */
export const checkLinks = (root: string, skip: ReadonlySet<string> = new Set()): void => {
  const real = realpathSync(root)
  const problems: Array<string> = []
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      if (skip.has(name)) continue
      const p = join(dir, name)
      const st = lstatSync(p)
      if (st.isSymbolicLink()) {
        let to: string | undefined
        try {
          to = realpathSync(p)
        } catch {
          to = undefined
        }
        if (to === undefined) problems.push(`${relative(root, p)}: dangling symlink`)
        else if (!inside(real, to)) problems.push(`${relative(root, p)}: symlink points outside the package (${readlinkSync(p)})`)
      } else if (st.isDirectory()) walk(p)
    }
  }
  walk(root)
  if (problems.length > 0) throw problems
}

/** Copy a plugin folder (without .git and node_modules); symlinks must stay inside it. Returns a sha512
 * over the copied files (sorted paths, each `path NUL content NUL`; symlinks as `path -> target`). */
export const copyFolder = (from: string, dest: string): string => {
  const root = realpathSync(from)
  checkLinks(root, SKIP_IN_FOLDER)
  const hash = createHash("sha512")
  const files: Array<string> = []
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      if (SKIP_IN_FOLDER.has(name)) continue
      const p = join(dir, name)
      const st = lstatSync(p)
      if (st.isDirectory()) walk(p)
      else if (st.isSymbolicLink() || st.isFile()) files.push(relative(root, p))
      else throw [`${relative(root, p)}: special files (devices, fifos, sockets) are not allowed`]
    }
  }
  walk(root)
  if (files.length > MAX_ENTRIES) throw [`folder has more than ${MAX_ENTRIES} files`]
  let total = 0
  mkdirSync(dest, { recursive: true })
  for (const rel of files) {
    const src = join(root, rel)
    const target = join(dest, rel)
    mkdirSync(dirname(target), { recursive: true })
    const st = lstatSync(src)
    if (st.isSymbolicLink()) {
      const link = readlinkSync(src)
      // an absolute link inside the folder is rewritten relative, so the copy does not point back at the source
      const rewritten = isAbsolute(link) ? relative(dirname(src), realpathSync(src)) : link
      symlinkSync(rewritten, target)
      hash.update(`${rel} -> ${rewritten}\0`)
    } else {
      const data = readFileSync(src)
      total += data.length
      if (total > MAX_UNPACKED_BYTES) throw [`folder holds more than ${MAX_UNPACKED_BYTES} bytes`]
      writeFileSync(target, data, { mode: (st.mode & 0o111) !== 0 ? 0o755 : 0o644, flag: "wx" })
      hash.update(`${rel}\0`).update(data).update("\0")
    }
  }
  checkLinks(dest)
  return `sha512-${hash.digest("base64")}`
}


/** The worker entry, after symlinks are resolved, must be a file inside the package root. */
export const entrypointProblem = (root: string, entry: string): { readonly outside: boolean; readonly message: string } | undefined => {
  const real = realpathSync(root)
  const lexical = resolve(root, entry)
  if (!inside(resolve(root), lexical)) return { outside: true, message: `entrypoints.worker: ${entry} is outside the package root` }
  let to: string
  try {
    to = realpathSync(lexical)
  } catch {
    return { outside: false, message: `entrypoints.worker: file not found: ${relative(root, lexical)}` }
  }
  if (!inside(real, to)) return { outside: true, message: `entrypoints.worker: ${relative(root, lexical)} resolves outside the package root (${to})` }
  if (!statSync(to).isFile()) return { outside: false, message: `entrypoints.worker: ${relative(root, lexical)} is not a file` }
  return undefined
}

/** The package.json `name`, if any. */
export const packageName = (root: string): string | null => {
  const p = join(root, "package.json")
  if (!existsSync(p)) return null
  try {
    const name = (JSON.parse(readFileSync(p, "utf8")) as { name?: unknown }).name
    return typeof name === "string" ? name : null
  } catch {
    return null
  }
}

/** The package.json `scripts.build`, if any (the dev loop runs it). */
export const buildScript = (root: string): string | null => {
  const p = join(root, "package.json")
  if (!existsSync(p)) return null
  try {
    const s = (JSON.parse(readFileSync(p, "utf8")) as { scripts?: { build?: unknown } }).scripts?.build
    return typeof s === "string" ? s : null
  } catch {
    return null
  }
}

export const isInside = inside
