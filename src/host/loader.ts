// Read a plugin folder: package.json pointers (`paperclipPlugin` or `gantryPlugin`), the manifest
// (module or manifest.json), validation with every problem listed, the worker entry path.
import { Effect, Either } from "effect"
import { execFile } from "node:child_process"
import { existsSync, readFileSync, realpathSync } from "node:fs"
import { createRequire } from "node:module"
import { isAbsolute, join, resolve, sep } from "node:path"
import { pathToFileURL } from "node:url"
import { validateManifest, type ManifestInfo } from "../protocol/manifest.js"
import { ManifestInvalid } from "./errors.js"

export interface LoadedPlugin {
  readonly root: string
  readonly info: ManifestInfo
  readonly workerEntry: string
}

const readJson = (path: string): unknown => JSON.parse(readFileSync(path, "utf8"))

export interface LoadOptions {
  /** Evaluate a module manifest in a child process with a minimal environment, never in the host
   * (installed packages: their code only ever runs as a worker). */
  readonly isolated?: boolean
}

const require = createRequire(import.meta.url)

/** Import a manifest module in a separate `node` and read its JSON from stdout. */
const importIsolated = (path: string) =>
  Effect.async<unknown, string>((resume) => {
    const script = `const m = await import(${JSON.stringify(pathToFileURL(path).href)}); process.stdout.write(JSON.stringify(m.default ?? m.manifest ?? null))`
    const args = [...(path.endsWith(".ts") ? ["--import", pathToFileURL(require.resolve("tsx")).href] : []), "--input-type=module", "-e", script]
    const child = execFile(process.execPath, args, { timeout: 15_000, env: { PATH: process.env.PATH ?? "/usr/bin:/bin" }, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) return resume(Effect.fail(`cannot load module: ${String(stderr).trim().split("\n").slice(-3).join(" ") || err.message}`))
      try {
        resume(Effect.succeed(JSON.parse(String(stdout)) as unknown))
      } catch {
        resume(Effect.fail("the module's manifest is not JSON-serializable"))
      }
    })
    return Effect.sync(() => void child.kill("SIGKILL"))
  })

export const loadPluginFolder = (folder: string, hostVersion: string, o: LoadOptions = {}): Effect.Effect<LoadedPlugin, ManifestInvalid> =>
  Effect.gen(function* () {
    const root = resolve(folder)
    const invalid = (problems: ReadonlyArray<string>) =>
      new ManifestInvalid({ path: root, problems, message: `invalid plugin at ${root}: ${problems.join("; ")}` })
    const pkgPath = join(root, "package.json")
    let manifestPath: string | undefined
    let workerOverride: string | undefined
    if (existsSync(pkgPath)) {
      const pkg = yield* Effect.try({ try: () => readJson(pkgPath) as Record<string, any>, catch: (e) => invalid([`package.json: ${String(e)}`]) })
      const ptr = pkg.gantryPlugin ?? pkg.paperclipPlugin
      if (ptr && typeof ptr.manifest === "string") manifestPath = join(root, ptr.manifest)
      if (ptr && typeof ptr.worker === "string") workerOverride = ptr.worker
    }
    if (!manifestPath) {
      for (const name of ["manifest.json", "manifest.js", "manifest.mjs", "manifest.ts"]) {
        if (existsSync(join(root, name))) {
          manifestPath = join(root, name)
          break
        }
      }
    }
    if (!manifestPath || !existsSync(manifestPath)) return yield* invalid(["manifest: not found (manifest.json, manifest.js or package.json paperclipPlugin.manifest)"])
    if (o.isolated) {
      const real = realpathSync(root)
      const at = realpathSync(manifestPath)
      if (at !== real && !at.startsWith(real + sep)) return yield* invalid([`manifest: ${manifestPath} resolves outside the package root`])
    }
    const raw: unknown = manifestPath.endsWith(".json")
      ? yield* Effect.try({ try: () => readJson(manifestPath!), catch: (e) => invalid([`manifest: ${String(e)}`]) })
      : o.isolated
      ? yield* Effect.mapError(importIsolated(manifestPath), (why) => invalid([`manifest: ${why}`]))
      : yield* Effect.tryPromise({
          try: () => import(pathToFileURL(manifestPath!).href).then((m: any) => m.default ?? m.manifest),
          catch: (e) => invalid([`manifest: cannot load module: ${String(e)}`])
        })
    const checked = validateManifest(raw, { hostVersion })
    if (Either.isLeft(checked)) return yield* invalid(checked.left)
    const info = checked.right
    const rel = workerOverride ?? info.manifest.entrypoints.worker
    const workerEntry = isAbsolute(rel) ? rel : join(root, rel)
    // installed packages: the installer checks the entry (inside the root first, then that it exists)
    if (!o.isolated && !existsSync(workerEntry)) return yield* invalid([`entrypoints.worker: file not found: ${workerEntry}`])
    return { root, info, workerEntry }
  })
