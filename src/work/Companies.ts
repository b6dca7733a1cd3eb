// Companies (tenants): id, name, optional default environment. Creating one emits `company.created`
// in the same transaction.
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { CapabilityStores } from "../host/Stores.js"

export interface Company {
  readonly id: string
  readonly name: string
  readonly defaultEnvironmentId: string | null
  readonly createdAt: string
}

export class CompanyNotFound extends Schema.TaggedError<CompanyNotFound>()("CompanyNotFound", {
  companyId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class CompanyInvalid extends Schema.TaggedError<CompanyInvalid>()("CompanyInvalid", {
  message: Schema.String
}) {
  get status() { return 422 }
}
export class CompanyConflict extends Schema.TaggedError<CompanyConflict>()("CompanyConflict", {
  message: Schema.String
}) {
  get status() { return 409 }
}

type Row = { id: string; name: string; default_environment_id: string | null; created_at: number }
const toCompany = (r: Row): Company => ({
  id: r.id,
  name: r.name,
  defaultEnvironmentId: r.default_environment_id,
  createdAt: new Date(Number(r.created_at)).toISOString()
})

export class Companies extends Context.Tag("gantry/Companies")<Companies, {
  readonly create: (input: { readonly name: string; readonly id?: string }) => Effect.Effect<Company, CompanyInvalid | CompanyConflict>
  readonly get: (id: string) => Effect.Effect<Company, CompanyNotFound>
  readonly list: Effect.Effect<ReadonlyArray<Company>>
  readonly setDefaultEnvironment: (id: string, environmentId: string | null) => Effect.Effect<Company, CompanyNotFound>
}>() {}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const stores = yield* CapabilityStores
  const get = (id: string) =>
    sql<Row>`SELECT * FROM companies WHERE id = ${id}`.pipe(
      Effect.orDie,
      Effect.flatMap((rows) => rows.length === 0
        ? Effect.fail(new CompanyNotFound({ companyId: id, message: `company "${id}" not found` }))
        : Effect.succeed(toCompany(rows[0]!)))
    )
  return Companies.of({
    create: Effect.fn("Companies.create")(function* (input) {
      const name = typeof input.name === "string" ? input.name.trim() : ""
      if (name.length === 0 || name.length > 200) return yield* new CompanyInvalid({ message: "name: required, 1–200 characters" })
      const id = input.id ?? randomUUID()
      if (!ID_RE.test(id)) return yield* new CompanyInvalid({ message: `id: "${id}" must match ${ID_RE}` })
      const now = yield* Clock.currentTimeMillis
      const existing = yield* sql<{ id: string }>`SELECT id FROM companies WHERE id = ${id} OR name = ${name}`.pipe(Effect.orDie)
      if (existing.length > 0) return yield* new CompanyConflict({ message: `a company with this ${existing[0]!.id === id ? "id" : "name"} already exists` })
      // the company and its event commit together or not at all (outbox, SPEC §16)
      yield* sql.withTransaction(Effect.zipRight(
        sql`INSERT INTO companies (id, name, created_at) VALUES (${id}, ${name}, ${now})`,
        stores.events.emit({
          eventId: randomUUID(), eventType: "company.created", occurredAt: new Date(now).toISOString(),
          entityId: id, entityType: "company", actorType: "system", companyId: id, payload: { companyId: id, name }
        })
      )).pipe(Effect.orDie)
      return { id, name, defaultEnvironmentId: null, createdAt: new Date(now).toISOString() }
    }),
    get,
    list: sql<Row>`SELECT * FROM companies ORDER BY created_at, id`.pipe(Effect.map((rows) => rows.map(toCompany)), Effect.orDie),
    setDefaultEnvironment: (id, environmentId) =>
      Effect.zipRight(get(id), sql`UPDATE companies SET default_environment_id = ${environmentId} WHERE id = ${id}`.pipe(Effect.orDie)).pipe(
        Effect.zipRight(get(id))
      )
  })
})

export const layer = Layer.effect(Companies, make)
