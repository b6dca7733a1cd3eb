// Shared test helpers: host layers, child-process accounting, waiting on conditions.
import { Duration, Effect, Layer, Schedule } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { HostOptions, type HostOptionsShape } from "../src/host/HostOptions.js"
import * as PluginHost from "../src/host/PluginHost.js"
import { defaultIsolation } from "../src/host/WorkerSandbox.js"
import * as Stores from "../src/host/Stores.js"

export const root = resolve(import.meta.dirname, "..")
export const examples = (name: string) => join(root, "plugins", "examples", name)
export const fixture = (name: string) => join(root, "test", "fixtures", name)

/** Host options that trust these fixtures (no worker sandbox): fixtures that write host files or
 * import files outside their own package directory. */
export const trusting = (...pluginIds: ReadonlyArray<string>): Partial<HostOptionsShape> => ({
  workerIsolation: { ...defaultIsolation, trusted: [...defaultIsolation.trusted, ...pluginIds] }
})

export const hostLayer = (overrides: Partial<HostOptionsShape> = {}) =>
  PluginHost.layer.pipe(Layer.provideMerge(Layer.merge(HostOptions.layer(overrides), Stores.layerMemory)))

/** Pids of this process's live children (zombies excluded). */
export const childPids = (): Array<number> => {
  const out: Array<number> = []
  for (const tid of readdirSync("/proc/self/task")) {
    let text = ""
    try {
      text = readFileSync(`/proc/self/task/${tid}/children`, "utf8")
    } catch {
      continue
    }
    for (const p of text.split(/\s+/).filter(Boolean)) {
      try {
        const stat = readFileSync(`/proc/${p}/stat`, "utf8")
        const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3)
        if (state !== "Z") out.push(Number(p))
      } catch {
        // gone
      }
    }
  }
  return out
}

export const isAlive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return false
  }
}

/** Retry `check` until it succeeds or `timeoutMs` passes (no fixed sleeps). */
export const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, timeoutMs = 10_000) =>
  Effect.retry(check, Schedule.spaced("25 millis").pipe(Schedule.upTo(Duration.millis(timeoutMs))))

import * as Capabilities from "../src/host/capabilities/index.js"
import { PluginRecords } from "../src/host/PluginRecords.js"
import * as Redactor from "../src/host/capabilities/Redactor.js"
import { freshDatabase, type TestDb } from "./db.js"

/** Host on durable stores over a fresh database of `db`'s kind. */
export const durableHostLayer = (db: TestDb, overrides: Partial<HostOptionsShape> = {}) =>
  PluginHost.layer.pipe(
    Layer.provideMerge(Layer.merge(Capabilities.layerSql, PluginRecords.layerSql)),
    Layer.provideMerge(Layer.mergeAll(HostOptions.layer(overrides), Redactor.layer)),
    Layer.provideMerge(freshDatabase(db))
  )

import * as App from "../src/server/App.js"
import { mkdtempSync as mkdtempSync_ } from "node:fs"
import { tmpdir as tmpdir_ } from "node:os"
import { freshDatabaseUrl } from "./db.js"

/** The whole application over a fresh database of `db`'s kind and a temp data dir. */
export const appLayer = (db: TestDb, o: Omit<App.AppOptions, "dataDir" | "databaseUrl"> & { readonly dataDir?: string } = {}) =>
  Layer.unwrapScoped(
    Effect.map(freshDatabaseUrl(db), (url) =>
      App.layer({ ...o, databaseUrl: url, dataDir: o.dataDir ?? mkdtempSync_(join(tmpdir_(), "gantry-app-")) }))
  )
