// Installing plugin packages into a running host (SPEC §15): fetch or copy the source into a staging
// dir under `<dataDir>/plugins/.staging`, inspect it (manifest, entrypoint, links), move it to
// `<dataDir>/plugins/<id>/<version>/` and run it only from there. Every refusal removes what it wrote.
import { Context, Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmdirSync, rmSync, statSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { semverLess } from "../protocol/manifest.js"
import { ConfigIncompatible, DowngradeRefused, ManifestInvalid, PluginConflict, PluginNotFound, PluginStartRefused } from "./errors.js"
import { HostOptions } from "./HostOptions.js"
import { validateAgainst } from "./jsonSchema.js"
import { loadPluginFolder } from "./loader.js"
import {
  checkLinks, copyFolder, entrypointProblem, extractTarball, integrity, isInside, MAX_TARBALL_BYTES, npmPack, packageName,
  resolveSource, SourceUnavailable, UnsafePackage
} from "./packages.js"
import { PluginHost, type InstallSource, type PluginSnapshot } from "./PluginHost.js"
import { PluginRecords } from "./PluginRecords.js"
import { CapabilityStores } from "./Stores.js"

export type InstallError = SourceUnavailable | UnsafePackage | ManifestInvalid | PluginConflict | PluginStartRefused
export type UpgradeError = InstallError | PluginNotFound | DowngradeRefused | ConfigIncompatible

export interface InstallOptions {
  /** Run the folder in place (the dev loop) instead of a copy. Folders only. */
  readonly linked?: boolean
}
export interface UpgradeOptions extends InstallOptions {
  readonly allowDowngrade?: boolean
}

export class PluginInstaller extends Context.Tag("gantry/PluginInstaller")<PluginInstaller, {
  /** Install a new plugin from a folder, a .tgz or an npm spec, and start it. */
  readonly install: (source: string, options?: InstallOptions) => Effect.Effect<PluginSnapshot, InstallError>
  /** Replace an installed plugin's package; calls switch to the new version once it is healthy. */
  readonly upgrade: (pluginId: string, source: string, options?: UpgradeOptions) => Effect.Effect<PluginSnapshot, UpgradeError>
  /** Stop and remove the package; config, state and logs stay unless `purge`. */
  readonly uninstall: (pluginId: string, options?: { readonly purge?: boolean }) => Effect.Effect<void, PluginNotFound>
  /** Where packages live: `<dataDir>/plugins`. */
  readonly directory: string
}>() {}

interface Staged {
  readonly root: string
  readonly id: string
  readonly version: string
  readonly info: { readonly manifest: { readonly id: string; readonly version: string; readonly instanceConfigSchema?: Record<string, unknown> | undefined } }
  readonly source: InstallSource
}

const problemsOf = (e: unknown): ReadonlyArray<string> =>
  Array.isArray(e) ? e.map(String) : [e instanceof Error ? e.message : String(e)]

export const make = (dataDir: string) =>
  Effect.gen(function* () {
    const host = yield* PluginHost
    const records = yield* PluginRecords
    const stores = yield* CapabilityStores
    const options = yield* HostOptions
    const directory = join(resolve(dataDir), "plugins")
    const remove = (path: string) => Effect.sync(() => rmSync(path, { recursive: true, force: true }))

    /** Fetch/copy/unpack into `staging/package` and inspect it. */
    const stage = (source: string, staging: string, linked: boolean) =>
      Effect.gen(function* () {
        const resolved = yield* resolveSource(source)
        if (linked && resolved.kind !== "folder") {
          return yield* new SourceUnavailable({ source, message: "only a folder can be installed linked" })
        }
        const unsafe = (problems: ReadonlyArray<string>) =>
          new UnsafePackage({ source, problems, message: `refused to install ${source}: ${problems.join("; ")}` })
        const pkg = join(staging, "package")
        let root = pkg
        let sha512: string | null = null
        if (resolved.kind === "folder" && linked) {
          root = realpathSync(resolved.location)
          yield* Effect.try({ try: () => checkLinks(root), catch: (e) => unsafe(problemsOf(e)) })
        } else if (resolved.kind === "folder") {
          sha512 = yield* Effect.try({ try: () => copyFolder(resolved.location, pkg), catch: (e) => unsafe(problemsOf(e)) })
        } else {
          const tarball = resolved.kind === "npm"
            ? yield* Effect.zipRight(Effect.sync(() => mkdirSync(join(staging, "fetch"), { recursive: true })), npmPack(resolved.location, join(staging, "fetch")))
            : resolved.location
          if (statSync(tarball).size > MAX_TARBALL_BYTES) return yield* unsafe([`the tarball is larger than ${MAX_TARBALL_BYTES} bytes`])
          const bytes = readFileSync(tarball)
          sha512 = integrity(bytes)
          yield* Effect.try({ try: () => extractTarball(bytes, pkg), catch: (e) => unsafe(problemsOf(e)) })
        }
        const loaded = yield* Effect.mapError(loadPluginFolder(root, options.hostVersion, { isolated: true }), (e) =>
          new ManifestInvalid({ path: source, problems: e.problems, message: `invalid plugin at ${source}: ${e.problems.join("; ")}` }))
        const bad = entrypointProblem(root, loaded.workerEntry)
        if (bad !== undefined) {
          if (bad.outside) return yield* unsafe([bad.message])
          return yield* new ManifestInvalid({ path: source, problems: [bad.message], message: `invalid plugin at ${source}: ${bad.message}` })
        }
        const staged: Staged = {
          root,
          id: loaded.info.manifest.id,
          version: loaded.info.manifest.version,
          info: loaded.info,
          source: {
            kind: resolved.kind,
            location: resolved.location,
            sha512,
            packageName: packageName(root),
            linked
          }
        }
        return staged
      })

    /** Move a staged copy to its final place: `<id>/<version>`, or `<id>/<version>~<n>` when that one is in use. */
    const place = (s: Staged) =>
      Effect.sync(() => {
        if (s.source.linked) return s.root
        let target = join(directory, s.id, s.version)
        for (let n = 2; existsSync(target); n++) target = join(directory, s.id, `${s.version}~${n}`)
        mkdirSync(dirname(target), { recursive: true })
        renameSync(s.root, target)
        return target
      })

    /** Run `f` on a staged package; the staging dir is always removed afterwards. */
    const withStaged = <A, E>(source: string, linked: boolean, f: (s: Staged) => Effect.Effect<A, E>) =>
      Effect.acquireUseRelease(
        Effect.sync(() => {
          const staging = join(directory, ".staging", randomUUID())
          mkdirSync(staging, { recursive: true })
          return staging
        }),
        (staging) => Effect.flatMap(stage(source, staging, linked), f),
        (staging) => Effect.zipRight(remove(staging), Effect.sync(() => {
          // leave no empty directories behind either
          for (const d of [join(directory, ".staging"), directory]) {
            try {
              rmdirSync(d)
            } catch {
              // not empty, or gone
            }
          }
        }))
      )

    /** Remove a placed copy (and its plugin dir when that leaves it empty). */
    const unplace = (s: Staged, path: string) =>
      s.source.linked ? Effect.void : Effect.sync(() => {
        rmSync(path, { recursive: true, force: true })
        try {
          rmdirSync(join(directory, s.id))
          rmdirSync(directory)
        } catch {
          // not empty
        }
      })

    const install = (source: string, o: InstallOptions = {}) =>
      withStaged(source, o.linked === true, (s) =>
        Effect.gen(function* () {
          const existing = yield* Effect.option(host.status(s.id))
          if (existing._tag === "Some") {
            return yield* new PluginConflict({
              pluginId: s.id,
              message: `plugin "${s.id}" is already installed (version ${existing.value.version}${existing.value.source ? ` from ${existing.value.source.location}` : ""}); use upgrade to replace it`
            })
          }
          const hadRecord = (yield* records.list).find((r) => r.id === s.id)
          const path = yield* place(s)
          const undo = Effect.gen(function* () {
            yield* Effect.ignore(host.uninstall(s.id))
            // a kept record of an earlier uninstall (config, state) stays as it was; a new one goes entirely
            if (hadRecord) yield* records.upsert(hadRecord)
            else yield* records.purge(s.id)
            yield* unplace(s, path)
          })
          yield* Effect.onError(host.install(path, s.source), () => undo)
          const started = yield* Effect.either(host.start(s.id))
          if (started._tag === "Left") {
            const status = yield* Effect.option(host.status(s.id))
            yield* undo
            return yield* new PluginStartRefused({
              pluginId: s.id,
              message: `plugin "${s.id}" ${s.version} did not start: ${started.left.message}${status._tag === "Some" && status.value.lastError && status.value.lastError !== started.left.message ? ` (${status.value.lastError})` : ""}`
            })
          }
          return started.right
        }))

    const upgrade = (pluginId: string, source: string, o: UpgradeOptions = {}) =>
      Effect.gen(function* () {
        const current = yield* host.status(pluginId)
        return yield* withStaged(source, o.linked === true, (s) =>
          Effect.gen(function* () {
            if (s.id !== pluginId) {
              return yield* new PluginConflict({ pluginId, message: `the package at ${source} is plugin "${s.id}", not "${pluginId}"` })
            }
            const installedName = current.source?.packageName ?? null
            if (installedName !== null && s.source.packageName !== null && installedName !== s.source.packageName) {
              return yield* new PluginConflict({
                pluginId,
                message: `plugin "${pluginId}" was installed from package "${installedName}"; "${s.source.packageName}" declares the same id but is another package (uninstall first to replace it)`
              })
            }
            if (semverLess(s.version, current.version) && o.allowDowngrade !== true) {
              return yield* new DowngradeRefused({
                pluginId, installed: current.version, offered: s.version,
                message: `plugin "${pluginId}" ${current.version} is installed; ${s.version} is lower (pass allowDowngrade to install it anyway)`
              })
            }
            const schema = s.info.manifest.instanceConfigSchema
            if (schema) {
              const problems: Array<string> = []
              for (const companyId of yield* stores.config.companies(pluginId)) {
                const config = yield* stores.config.get(pluginId, companyId)
                for (const p of validateAgainst(schema, config)) problems.push(`company ${companyId}: ${p}`)
              }
              if (problems.length > 0) {
                return yield* new ConfigIncompatible({
                  pluginId, problems,
                  message: `saved configs of plugin "${pluginId}" do not validate against version ${s.version}'s instanceConfigSchema: ${problems.join("; ")}`
                })
              }
            }
            const oldRecord = (yield* records.list).find((r) => r.id === pluginId)
            const path = yield* place(s)
            const swapped = yield* Effect.either(host.upgrade(pluginId, path, s.source))
            if (swapped._tag === "Left") {
              yield* unplace(s, path)
              const e = swapped.left
              if (e._tag === "PluginStartFailed") return yield* new PluginStartRefused({ pluginId, message: e.message })
              return yield* e
            }
            // the old copy (not a linked folder, not a bundled plugin) is no longer needed
            if (oldRecord && oldRecord.root !== path && isInside(join(directory, pluginId), oldRecord.root) && oldRecord.source?.linked !== true) {
              yield* remove(oldRecord.root)
            }
            return swapped.right
          }))
      })

    const uninstall = (pluginId: string, o: { readonly purge?: boolean } = {}) =>
      Effect.gen(function* () {
        yield* host.status(pluginId)
        yield* host.uninstall(pluginId)
        yield* remove(join(directory, pluginId))
        if (o.purge === true) yield* records.purge(pluginId)
      })

    return PluginInstaller.of({ install, upgrade, uninstall, directory })
  })

export const layer = (dataDir: string) => Layer.effect(PluginInstaller, make(dataDir))
