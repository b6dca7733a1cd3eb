// Persisted plugin records (SPEC §4 status machine): what is installed, from where, in which status.
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer } from "effect"
import type { InstallSource } from "./PluginHost.js"

export type PersistedStatus = "installed" | "ready" | "disabled" | "error" | "uninstalled"

export interface PluginRecord {
  readonly id: string
  readonly root: string
  readonly version: string
  readonly manifest: unknown
  readonly status: PersistedStatus
  readonly lastError: string | null
  /** How the package was installed (SPEC §15); absent for a plugin registered in place. */
  readonly source?: InstallSource | null
}

export class PluginRecords extends Context.Tag("gantry/PluginRecords")<PluginRecords, {
  readonly upsert: (record: PluginRecord) => Effect.Effect<void>
  readonly setStatus: (id: string, status: PersistedStatus, lastError: string | null) => Effect.Effect<void>
  readonly list: Effect.Effect<ReadonlyArray<PluginRecord>>
  /** Forget the plugin entirely: its record, config, state, logs, jobs and subscriptions (uninstall --purge). */
  readonly purge: (id: string) => Effect.Effect<void>
}>() {
  static readonly layerMemory = Layer.sync(PluginRecords, () => {
    const m = new Map<string, PluginRecord>()
    return PluginRecords.of({
      upsert: (r) => Effect.sync(() => void m.set(r.id, r)),
      setStatus: (id, status, lastError) =>
        Effect.sync(() => {
          const r = m.get(id)
          if (r) m.set(id, { ...r, status, lastError })
        }),
      list: Effect.sync(() => [...m.values()]),
      purge: (id) => Effect.sync(() => void m.delete(id))
    })
  })

  static readonly layerSql = Layer.effect(
    PluginRecords,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      return PluginRecords.of({
        upsert: (r) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            sql`INSERT INTO plugins (id, root, version, manifest, status, last_error, source, installed_at, updated_at)
              VALUES (${r.id}, ${r.root}, ${r.version}, ${JSON.stringify(r.manifest)}, ${r.status}, ${r.lastError},
                ${r.source ? JSON.stringify(r.source) : null}, ${now}, ${now})
              ON CONFLICT (id) DO UPDATE SET root = excluded.root, version = excluded.version, manifest = excluded.manifest,
                status = excluded.status, last_error = excluded.last_error, source = excluded.source, updated_at = excluded.updated_at`).pipe(Effect.asVoid, Effect.orDie),
        setStatus: (id, status, lastError) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            sql`UPDATE plugins SET status = ${status}, last_error = ${lastError}, updated_at = ${now} WHERE id = ${id}`).pipe(Effect.asVoid, Effect.orDie),
        list: sql<{ id: string; root: string; version: string; manifest: string; status: PersistedStatus; last_error: string | null; source: string | null }>`
          SELECT id, root, version, manifest, status, last_error, source FROM plugins ORDER BY id`.pipe(
          Effect.map((rows) => rows.map((r) => ({
            id: r.id, root: r.root, version: r.version, manifest: JSON.parse(r.manifest), status: r.status, lastError: r.last_error,
            source: r.source ? JSON.parse(r.source) as InstallSource : null
          }))),
          Effect.orDie
        ),
        purge: (id) =>
          sql.withTransaction(Effect.gen(function* () {
            yield* sql`DELETE FROM event_deliveries WHERE subscription_id IN (SELECT id FROM event_subscriptions WHERE plugin_id = ${id})`
            for (const table of ["event_subscriptions", "plugin_configs", "plugin_state", "plugin_logs", "plugin_jobs", "job_runs"]) {
              yield* sql`DELETE FROM ${sql(table)} WHERE plugin_id = ${id}`
            }
            yield* sql`DELETE FROM plugins WHERE id = ${id}`
          })).pipe(Effect.asVoid, Effect.orDie)
      })
    })
  )
}
