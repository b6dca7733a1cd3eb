// Schema migrations, the same for SQLite and PostgreSQL (portable types: TEXT for JSON, BIGINT for
// epoch milliseconds). Each migration is a list of statements applied once, in order.
import { SqlClient } from "@effect/sql"
import { Clock, Effect } from "effect"
import type { Dialect } from "./Database.js"

type Statements = (d: { autoId: string }) => ReadonlyArray<string>

export const migrations: ReadonlyArray<readonly [number, string, Statements]> = [
  [1, "capabilities", ({ autoId }) => [
    `CREATE TABLE IF NOT EXISTS companies (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, started_at BIGINT NOT NULL, heartbeat_at BIGINT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS plugins (id TEXT PRIMARY KEY, root TEXT NOT NULL, version TEXT NOT NULL, manifest TEXT NOT NULL,
      status TEXT NOT NULL, last_error TEXT, installed_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS plugin_configs (plugin_id TEXT NOT NULL, company_id TEXT NOT NULL, config TEXT NOT NULL,
      updated_at BIGINT NOT NULL, PRIMARY KEY (plugin_id, company_id))`,
    `CREATE TABLE IF NOT EXISTS plugin_state (plugin_id TEXT NOT NULL, scope_kind TEXT NOT NULL, scope_id TEXT NOT NULL,
      namespace TEXT NOT NULL, state_key TEXT NOT NULL, value TEXT NOT NULL, updated_at BIGINT NOT NULL,
      PRIMARY KEY (plugin_id, scope_kind, scope_id, namespace, state_key))`,
    `CREATE TABLE IF NOT EXISTS plugin_logs (id ${autoId}, plugin_id TEXT NOT NULL, at BIGINT NOT NULL, level TEXT NOT NULL,
      message TEXT NOT NULL, meta TEXT)`,
    `CREATE INDEX IF NOT EXISTS plugin_logs_by_plugin ON plugin_logs (plugin_id, id)`,
    `CREATE TABLE IF NOT EXISTS secrets (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, name TEXT NOT NULL,
      current_version INTEGER NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, UNIQUE (company_id, name))`,
    `CREATE TABLE IF NOT EXISTS secret_versions (secret_id TEXT NOT NULL, version INTEGER NOT NULL, ciphertext TEXT NOT NULL,
      created_at BIGINT NOT NULL, PRIMARY KEY (secret_id, version))`,
    `CREATE TABLE IF NOT EXISTS events (seq ${autoId}, event_id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL,
      company_id TEXT NOT NULL, envelope TEXT NOT NULL, created_at BIGINT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS event_subscriptions (id TEXT PRIMARY KEY, plugin_id TEXT NOT NULL, pattern TEXT NOT NULL,
      filter TEXT, filter_key TEXT NOT NULL, status TEXT NOT NULL, owner TEXT, owner_until BIGINT NOT NULL DEFAULT 0,
      created_at BIGINT NOT NULL, UNIQUE (plugin_id, pattern, filter_key))`,
    `CREATE TABLE IF NOT EXISTS event_deliveries (id ${autoId}, subscription_id TEXT NOT NULL, event_seq BIGINT NOT NULL,
      status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL, last_error TEXT,
      delivered_at BIGINT, UNIQUE (subscription_id, event_seq))`,
    `CREATE INDEX IF NOT EXISTS event_deliveries_pending ON event_deliveries (subscription_id, status, event_seq)`,
    `CREATE TABLE IF NOT EXISTS plugin_jobs (plugin_id TEXT NOT NULL, job_key TEXT NOT NULL, schedule TEXT,
      every_seconds INTEGER, max_retries INTEGER NOT NULL DEFAULT 0, timeout_ms INTEGER NOT NULL DEFAULT 300000,
      next_run_at BIGINT, PRIMARY KEY (plugin_id, job_key))`,
    `CREATE TABLE IF NOT EXISTS job_runs (id TEXT PRIMARY KEY, plugin_id TEXT NOT NULL, job_key TEXT NOT NULL,
      trigger TEXT NOT NULL, scheduled_at BIGINT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
      started_at BIGINT, finished_at BIGINT, error TEXT, owner TEXT, created_at BIGINT NOT NULL,
      UNIQUE (plugin_id, job_key, scheduled_at, attempt))`,
    `CREATE INDEX IF NOT EXISTS job_runs_by_job ON job_runs (plugin_id, job_key, status)`
  ]]
]

/** Apply pending migrations. Safe to run from several replicas at once (Postgres: advisory lock). */
export const migrate = (dialect: Dialect) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const autoId = dialect === "pg" ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT"
    const run = Effect.gen(function* () {
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS gantry_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`)
      const done = new Set((yield* sql<{ version: number }>`SELECT version FROM gantry_migrations`).map((r) => Number(r.version)))
      for (const [version, name, statements] of migrations) {
        if (done.has(version)) continue
        const now = yield* Clock.currentTimeMillis
        yield* sql.withTransaction(
          Effect.gen(function* () {
            for (const s of statements({ autoId })) yield* sql.unsafe(s)
            yield* sql`INSERT INTO gantry_migrations (version, name, applied_at) VALUES (${version}, ${name}, ${now})`
          })
        )
      }
    })
    if (dialect === "pg") {
      yield* sql.withTransaction(Effect.zipRight(sql.unsafe(`SELECT pg_advisory_xact_lock(7346001)`), run))
    } else {
      yield* run
    }
  }).pipe(Effect.orDie)
