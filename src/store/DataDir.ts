// The data dir on disk (SPEC §16): created 0700, the database and key files 0600, checked at start.
// A secrets key file that group or others can read stops the start (with the fix); a data dir or
// database file Gantry finds too open is tightened (Gantry owns them). No workspace lives under it.
import { Config, Context, Data, Effect, Layer, Option } from "effect"
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, realpathSync, statSync } from "node:fs"
import { dirname, isAbsolute, join, relative, resolve } from "node:path"

export class DataDirError extends Data.TaggedError("DataDirError")<{ readonly message: string }> {}

export const KEY_FILE = "secrets.key"
export const DB_FILES = ["gantry.db", "gantry.db-wal", "gantry.db-shm"] as const

/** The real path of `p`, or of its nearest existing ancestor joined with the rest (a path that does
 * not exist yet still resolves through the symlinks above it). */
export const realPathOf = (p: string): string => {
  const abs = resolve(p)
  let head = abs
  const rest: Array<string> = []
  while (!existsSync(head)) {
    const parent = dirname(head)
    if (parent === head) break
    rest.unshift(head.slice(parent.length).replace(/^\//, ""))
    head = parent
  }
  return join(realpathSync(head), ...rest)
}

/** Whether `child` is `parent` or lies under it, symlinks resolved. */
export const isInside = (child: string, parent: string): boolean => {
  const rel = relative(realPathOf(parent), realPathOf(child))
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel))
}

/** Default local workspaces root: beside the data dir, never in it (`<dataDir>-workspaces`). */
export const defaultWorkspacesDir = (dataDir: string): string => `${resolve(dataDir)}-workspaces`

const modeOf = (p: string) => statSync(p).mode & 0o777
const octal = (m: number) => m.toString(8).padStart(4, "0")

/**
 * Create or check the data dir. Returns notes for the log (what was tightened). Fails when the key
 * file is readable by group or others, or is not a regular file, or the workspaces root is inside.
 */
export const prepare = (dataDir: string, o: { readonly workspacesDir?: string | undefined } = {}): Effect.Effect<ReadonlyArray<string>, DataDirError> =>
  Effect.try({
    try: () => {
      const notes: Array<string> = []
      const dir = resolve(dataDir)
      if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 })
      if (!statSync(dir).isDirectory()) throw new DataDirError({ message: `data dir ${dir} is not a directory` })
      if ((modeOf(dir) & 0o077) !== 0) {
        notes.push(`data dir ${dir} had mode ${octal(modeOf(dir))}; set to 0700`)
        chmodSync(dir, 0o700)
      }
      const key = join(dir, KEY_FILE)
      if (existsSync(key)) {
        const st = lstatSync(key)
        if (!st.isFile()) throw new DataDirError({ message: `secrets key file ${key} is not a regular file; replace it with one (mode 0600)` })
        if ((st.mode & 0o077) !== 0) {
          throw new DataDirError({
            message: `secrets key file ${key} has mode ${octal(st.mode & 0o777)}: group or others can read it. Fix: chmod 600 ${key}`
          })
        }
      }
      for (const name of DB_FILES) {
        const f = join(dir, name)
        if (existsSync(f) && (modeOf(f) & 0o077) !== 0) {
          notes.push(`${f} had mode ${octal(modeOf(f))}; set to 0600`)
          chmodSync(f, 0o600)
        }
      }
      if (o.workspacesDir !== undefined && isInside(o.workspacesDir, dir)) {
        throw new DataDirError({
          message: `the workspaces root ${resolve(o.workspacesDir)} is inside the data dir ${dir}: agents would reach the database and keys. Set GANTRY_WORKSPACES_DIR outside it`
        })
      }
      return notes
    },
    catch: (e) => e instanceof DataDirError ? e : new DataDirError({ message: `data dir ${resolve(dataDir)}: ${e instanceof Error ? e.message : String(e)}` })
  })

/** Create a SQLite file 0600 before SQLite opens it (SQLite creates its -wal/-shm with the same mode). */
export const ensurePrivateFile = (file: string): void => {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  if (!existsSync(file)) {
    // "a": create if absent, never truncate a file that appeared meanwhile
    closeSync(openSync(file, "a", 0o600))
  }
  if ((modeOf(file) & 0o077) !== 0) chmodSync(file, 0o600)
}

/** The data dir, checked at start: provided by the app layer, so a bad one stops the host. */
export class DataDir extends Context.Tag("gantry/DataDir")<DataDir, {
  readonly path: string
  readonly workspacesDir: string
}>() {}

/** `workspacesDir` wins over GANTRY_WORKSPACES_DIR, which wins over `<dataDir>-workspaces`. */
export const layer = (dataDir: string, workspacesDir?: string) =>
  Layer.effect(DataDir, Effect.gen(function* () {
    const configured = yield* Config.option(Config.nonEmptyString("GANTRY_WORKSPACES_DIR")).pipe(Effect.orElseSucceed(() => Option.none<string>()))
    const ws = workspacesDir ?? Option.getOrElse(configured, () => defaultWorkspacesDir(dataDir))
    const notes = yield* prepare(dataDir, { workspacesDir: ws })
    for (const n of notes) yield* Effect.logWarning(n)
    return { path: resolve(dataDir), workspacesDir: resolve(ws) }
  }))
