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
    // prefix: NULL for an exact pattern, else the pattern without its trailing `*`; filter_*: the
    // filter's fields, so an emit matches subscriptions in SQL (src/host/capabilities/EventBus.ts)
    `CREATE TABLE IF NOT EXISTS event_subscriptions (id TEXT PRIMARY KEY, plugin_id TEXT NOT NULL, pattern TEXT NOT NULL,
      prefix TEXT, filter TEXT, filter_key TEXT NOT NULL, filter_company_id TEXT, filter_agent_id TEXT, filter_project_id TEXT,
      status TEXT NOT NULL, owner TEXT, owner_until BIGINT NOT NULL DEFAULT 0,
      created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, UNIQUE (plugin_id, pattern, filter_key))`,
    `CREATE TABLE IF NOT EXISTS event_deliveries (id ${autoId}, subscription_id TEXT NOT NULL, event_seq BIGINT NOT NULL,
      status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL, last_error TEXT,
      delivered_at BIGINT)`,
    // the one index of the hot table (every index is a page written per emit): a subscription's rows in order
    `CREATE INDEX IF NOT EXISTS event_deliveries_pending ON event_deliveries (subscription_id, status, event_seq)`,
    // jobs (src/host/capabilities/JobScheduler.ts): schedule comes from the manifest; every_seconds,
    // max_retries, timeout_ms are operator settings (NULL = default) kept across manifest syncs
    `CREATE TABLE IF NOT EXISTS plugin_jobs (plugin_id TEXT NOT NULL, job_key TEXT NOT NULL, display_name TEXT NOT NULL,
      description TEXT, schedule TEXT, every_seconds INTEGER, max_retries INTEGER, timeout_ms INTEGER,
      status TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (plugin_id, job_key))`,
    // a run is claimed by inserting its row (unique key); lease_until bounds how long a queued/running
    // row blocks the job (no overlap) if its owner dies
    `CREATE TABLE IF NOT EXISTS job_runs (id TEXT PRIMARY KEY, plugin_id TEXT NOT NULL, job_key TEXT NOT NULL,
      trigger TEXT NOT NULL, scheduled_at BIGINT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
      due_at BIGINT NOT NULL, lease_until BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT, error TEXT,
      owner TEXT NOT NULL, created_at BIGINT NOT NULL, UNIQUE (plugin_id, job_key, scheduled_at, attempt))`,
    `CREATE INDEX IF NOT EXISTS job_runs_by_job ON job_runs (plugin_id, job_key, status)`,
    `CREATE INDEX IF NOT EXISTS job_runs_recent ON job_runs (plugin_id, created_at)`,
    `CREATE INDEX IF NOT EXISTS job_runs_active ON job_runs (status, lease_until)`
  ]],
  [2, "environments", ({ autoId }) => [
    `ALTER TABLE companies ADD COLUMN default_environment_id TEXT`,
    `CREATE TABLE IF NOT EXISTS environments (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, name TEXT NOT NULL,
      description TEXT, driver TEXT NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL, created_at BIGINT NOT NULL,
      updated_at BIGINT NOT NULL, UNIQUE (company_id, name))`,
    `CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, environment_id TEXT NOT NULL,
      run_id TEXT, provider TEXT NOT NULL, provider_lease_id TEXT, status TEXT NOT NULL, policy TEXT NOT NULL,
      config TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE, acquired_at BIGINT, last_used_at BIGINT NOT NULL,
      deadline_at BIGINT NOT NULL, expires_at BIGINT, released_at BIGINT, failure_reason TEXT,
      cleanup_action TEXT, intended_status TEXT, cleanup_attempts INTEGER NOT NULL DEFAULT 0,
      next_cleanup_at BIGINT NOT NULL DEFAULT 0, sweeper_until BIGINT NOT NULL DEFAULT 0,
      owner_instance_id TEXT NOT NULL, metadata TEXT NOT NULL, created_at BIGINT NOT NULL)`,
    `CREATE INDEX IF NOT EXISTS leases_by_status ON leases (status, next_cleanup_at)`,
    `CREATE INDEX IF NOT EXISTS leases_by_env ON leases (environment_id, status)`,
    `CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, name TEXT NOT NULL,
      command TEXT NOT NULL, args TEXT NOT NULL, env TEXT NOT NULL, default_environment_id TEXT, heartbeat TEXT,
      timeout_ms INTEGER NOT NULL, next_heartbeat_at BIGINT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
      UNIQUE (company_id, name))`,
    `CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, agent_id TEXT NOT NULL,
      environment_id TEXT, status TEXT NOT NULL, trigger TEXT NOT NULL, scheduled_at BIGINT, exit_code INTEGER,
      signal TEXT, error TEXT, stdout TEXT NOT NULL DEFAULT '', stderr TEXT NOT NULL DEFAULT '',
      truncated INTEGER NOT NULL DEFAULT 0, lease_id TEXT, owner_instance_id TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
      extra_env TEXT NOT NULL DEFAULT '{}',
      deadline_at BIGINT, created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT)`,
    `CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent_id, status)`,
    `CREATE UNIQUE INDEX IF NOT EXISTS runs_heartbeat_once ON runs (agent_id, trigger, scheduled_at)`,
    `CREATE TABLE IF NOT EXISTS run_logs (id ${autoId}, run_id TEXT NOT NULL, at BIGINT NOT NULL, stream TEXT NOT NULL,
      chunk TEXT NOT NULL)`,
    `CREATE INDEX IF NOT EXISTS run_logs_by_run ON run_logs (run_id, id)`
  ]],
  // runtime API liveness (src/work/Runtime.ts): when the run's runtime last called heartbeat
  [3, "run heartbeats", () => [
    `ALTER TABLE runs ADD COLUMN last_heartbeat_at BIGINT`
  ]],
  [4, "auth", () => [
    `CREATE TABLE IF NOT EXISTS api_tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
      company_id TEXT, name TEXT, created_at BIGINT NOT NULL, last_used_at BIGINT)`
  ]],
  [5, "reusable leases", () => [
    `ALTER TABLE leases ADD COLUMN idle_since BIGINT`
  ]],
  // operator vs tenant (SPEC §16): token lifecycle (kind = admin | company | company-read), the
  // operator's per-company grant of the local driver, and per-provider operator policies
  [6, "operator and token lifecycle", () => [
    `ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT`,
    `ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT`,
    `CREATE TABLE IF NOT EXISTS local_grants (company_id TEXT PRIMARY KEY, granted_at BIGINT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS provider_policies (provider TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at BIGINT NOT NULL)`
  ]],
  // plugin distribution (src/host/Installer.ts): how a package was installed, JSON {kind, location, sha512, packageName, linked}
  [8, "plugin sources", () => [
    `ALTER TABLE plugins ADD COLUMN source TEXT`
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
