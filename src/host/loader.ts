// Read a plugin folder: package.json pointers (`paperclipPlugin` or `gantryPlugin`), the manifest
// (module or manifest.json), validation with every problem listed, the worker entry path.
import { Effect, Either } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { isAbsolute, join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { validateManifest, type ManifestInfo } from "../protocol/manifest.js"
import { ManifestInvalid } from "./errors.js"

export interface LoadedPlugin {
  readonly root: string
  readonly info: ManifestInfo
  readonly workerEntry: string
}

const readJson = (path: string): unknown => JSON.parse(readFileSync(path, "utf8"))

export const loadPluginFolder = (folder: string, hostVersion: string): Effect.Effect<LoadedPlugin, ManifestInvalid> =>
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
    const raw: unknown = manifestPath.endsWith(".json")
      ? yield* Effect.try({ try: () => readJson(manifestPath!), catch: (e) => invalid([`manifest: ${String(e)}`]) })
      : yield* Effect.tryPromise({
          try: () => import(pathToFileURL(manifestPath!).href).then((m: any) => m.default ?? m.manifest),
          catch: (e) => invalid([`manifest: cannot load module: ${String(e)}`])
        })
    const checked = validateManifest(raw, { hostVersion })
    if (Either.isLeft(checked)) return yield* invalid(checked.left)
    const info = checked.right
    const rel = workerOverride ?? info.manifest.entrypoints.worker
    const workerEntry = isAbsolute(rel) ? rel : join(root, rel)
    if (!existsSync(workerEntry)) return yield* invalid([`entrypoints.worker: file not found: ${workerEntry}`])
    return { root, info, workerEntry }
  })
