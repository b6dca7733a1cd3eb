// Test databases: every store-backed test runs against SQLite (a temp file) and PostgreSQL (a fresh
// database on the server named by GANTRY_TEST_PG_URL; skipped with a printed reason when unset).
import { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import * as Database from "../src/store/Database.js"

export const PG_URL = process.env.GANTRY_TEST_PG_URL ?? ""

if (!PG_URL) {
  // printed once per test file that imports this module
  console.warn("[gantry tests] PostgreSQL variants skipped: GANTRY_TEST_PG_URL is not set (.ci/run sets it)")
}

export interface TestDb {
  readonly kind: "sqlite" | "pg"
  /** A fresh database: returns its URL (file path or postgres URL) and a cleanup. */
  readonly create: () => Promise<{ url: string; drop: () => Promise<void> }>
}

const sqlite: TestDb = {
  kind: "sqlite",
  create: async () => {
    const dir = mkdtempSync(join(tmpdir(), "gantry-test-"))
    return { url: join(dir, "gantry.db"), drop: async () => rmSync(dir, { recursive: true, force: true }) }
  }
}

const postgres: TestDb = {
  kind: "pg",
  create: async () => {
    const name = `gantry_t_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
    const admin = new pg.Client({ connectionString: PG_URL })
    await admin.connect()
    await admin.query(`CREATE DATABASE ${name}`)
    await admin.end()
    const url = new URL(PG_URL)
    url.pathname = `/${name}`
    return {
      url: url.toString(),
      drop: async () => {
        const c = new pg.Client({ connectionString: PG_URL })
        await c.connect()
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
        await c.end()
      }
    }
  }
}

/** The databases to run store-backed tests against. */
export const testDbs: ReadonlyArray<TestDb> = PG_URL ? [sqlite, postgres] : [sqlite]

/** A scoped layer with a fresh database of `db`'s kind (migrated), dropped when the scope closes. */
export const freshDatabase = (db: TestDb) =>
  Layer.unwrapScoped(
    Effect.map(
      Effect.acquireRelease(Effect.promise(() => db.create()), (d) => Effect.promise(() => d.drop())),
      (d) => Database.layer({ url: d.url })
    )
  )

/** The URL of a fresh database (for child processes), dropped with the scope. */
export const freshDatabaseUrl = (db: TestDb) =>
  Effect.map(Effect.acquireRelease(Effect.promise(() => db.create()), (d) => Effect.promise(() => d.drop())), (d) => d.url)

export type { SqlClient }
