// The one SqlClient of the host: embedded SQLite (a file under the data dir, WAL) by default,
// PostgreSQL when GANTRY_DATABASE_URL is a postgres URL. Migrations run when the layer is built.
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Config, Context, Effect, Layer, Redacted } from "effect"
import { join, resolve } from "node:path"
import PgTypesDefault from "pg-types"
import { ensurePrivateFile } from "./DataDir.js"
import { migrate } from "./migrations.js"

export type Dialect = "sqlite" | "pg"

export class Database extends Context.Tag("gantry/Database")<Database, {
  readonly dialect: Dialect
  /** Where the database lives, for humans (a file path or a redacted URL). */
  readonly location: string
}>() {}

export interface DatabaseOptions {
  /** `postgres://…` for PostgreSQL; otherwise a SQLite file path. */
  readonly url?: string | undefined
  /** SQLite default location: `<dataDir>/gantry.db`. */
  readonly dataDir?: string | undefined
}

const isPg = (url: string | undefined): boolean => !!url && /^postgres(ql)?:\/\//.test(url)

const pgTypes = {
  // int8 and numeric come back as numbers (timestamps and counters fit in 2^53)
  getTypeParser: (oid: number, format?: unknown) =>
    oid === 20 || oid === 1700 ? (v: string) => (v === null ? null : Number(v)) : (PgTypesDefault as any).getTypeParser(oid, format)
}

const sqliteLayer = (filename: string) =>
  Layer.effectDiscard(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe("PRAGMA synchronous = NORMAL")
      // fewer automatic checkpoints inside commits: each one waits on an fsync (bench/capabilities)
      yield* sql.unsafe("PRAGMA wal_autocheckpoint = 4000")
      yield* sql.unsafe("PRAGMA busy_timeout = 10000")
      yield* sql.unsafe("PRAGMA foreign_keys = ON")
    })
  ).pipe(
    Layer.provideMerge(SqliteClient.layer({ filename })),
    Layer.provideMerge(Layer.succeed(Database, { dialect: "sqlite", location: filename }))
  )

const pgLayer = (url: string) =>
  PgClient.layer({ url: Redacted.make(url), types: pgTypes as never, maxConnections: 10 }).pipe(
    Layer.provideMerge(Layer.succeed(Database, { dialect: "pg", location: url.replace(/:[^:@/]*@/, ":***@") }))
  )

/** Build the database layer and run migrations. */
export const layer = (options: DatabaseOptions = {}) => {
  const base = isPg(options.url)
    ? pgLayer(options.url!)
    : Layer.unwrapEffect(Effect.sync(() => {
        const file = options.url && options.url !== "" ? resolve(options.url.replace(/^sqlite:(\/\/)?/, "")) : join(resolve(options.dataDir ?? ".gantry"), "gantry.db")
        // 0600 from the start (and only once the layer is built, after the data dir check): SQLite
        // gives its -wal and -shm files the database file's mode
        ensurePrivateFile(file)
        return sqliteLayer(file)
      }))
  return Layer.effectDiscard(Effect.flatMap(Database, (db) => migrate(db.dialect))).pipe(Layer.provideMerge(base))
}

/** From config: GANTRY_DATABASE_URL, GANTRY_DATA_DIR (default `.gantry`). */
export const layerConfig = Layer.unwrapEffect(
  Effect.gen(function* () {
    const url = yield* Config.string("GANTRY_DATABASE_URL").pipe(Config.withDefault(""))
    const dataDir = yield* Config.string("GANTRY_DATA_DIR").pipe(Config.withDefault(".gantry"))
    return layer({ url: url === "" ? undefined : url, dataDir })
  })
)
