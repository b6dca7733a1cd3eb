// Bearer-token auth (SPEC §12): an instance admin token created on first start (printed once,
// stored hashed), company-scoped tokens, and run tokens (JWT) that only reach /api/runtime.
import { HttpApiMiddleware, HttpApiSecurity } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Option, Redacted } from "effect"
import { createHash, randomBytes, randomUUID } from "node:crypto"
import { RunTokens } from "../environments/RunToken.js"
import { Database } from "../store/Database.js"
import { Runs } from "../work/Runs.js"
import { apiError, Forbidden, Unauthorized, type ApiError } from "./errors.js"

export type Actor =
  | { readonly kind: "admin" }
  | { readonly kind: "company"; readonly companyId: string }
  | { readonly kind: "run"; readonly runId: string; readonly companyId: string; readonly agentId: string }

export class CurrentActor extends Context.Tag("gantry/CurrentActor")<CurrentActor, Actor>() {}

const hash = (token: string) => createHash("sha256").update(token).digest("hex")
const newToken = (kind: "admin" | "company") => `gantry_${kind}_${randomBytes(24).toString("base64url")}`

export class ApiTokens extends Context.Tag("gantry/ApiTokens")<ApiTokens, {
  /** Creates the admin token when the instance has none; returns it (the only time it is seen). */
  readonly ensureAdmin: Effect.Effect<Option.Option<string>>
  readonly createCompanyToken: (companyId: string, name: string | null) => Effect.Effect<{ readonly id: string; readonly token: string }>
  /** Admin and company tokens. */
  readonly authenticate: (token: string) => Effect.Effect<Actor, ApiError>
}>() {}

export const layerTokens = Layer.effect(
  ApiTokens,
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const insert = (kind: "admin" | "company", companyId: string | null, name: string | null) =>
      Effect.gen(function* () {
        const token = newToken(kind)
        const id = randomUUID()
        const now = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO api_tokens (id, hash, kind, company_id, name, created_at) VALUES (${id}, ${hash(token)}, ${kind}, ${companyId}, ${name}, ${now})`
        return { id, token }
      }).pipe(Effect.orDie)
    const dialect = (yield* Database).dialect
    const ensureAdmin = Effect.gen(function* () {
      const existing = yield* sql`SELECT id FROM api_tokens WHERE kind = 'admin' LIMIT 1`.pipe(Effect.orDie)
      if (existing.length > 0) return Option.none<string>()
      return Option.some((yield* insert("admin", null, "instance admin")).token)
    })
    return ApiTokens.of({
      // replicas starting together on one Postgres: one creates (and prints) the admin token
      ensureAdmin: dialect === "pg"
        ? sql.withTransaction(Effect.zipRight(sql.unsafe(`SELECT pg_advisory_xact_lock(7346002)`), ensureAdmin)).pipe(Effect.orDie)
        : ensureAdmin,
      createCompanyToken: (companyId, name) => insert("company", companyId, name),
      authenticate: (token) =>
        Effect.gen(function* () {
          const rows = yield* sql<{ id: string; kind: "admin" | "company"; company_id: string | null }>`SELECT id, kind, company_id FROM api_tokens
            WHERE hash = ${hash(token)}`.pipe(Effect.orDie)
          const row = rows[0]
          if (!row) return yield* Effect.fail(apiError(401, "unauthorized", "invalid or unknown bearer token"))
          return row.kind === "admin" ? { kind: "admin" as const } : { kind: "company" as const, companyId: row.company_id! }
        })
    })
  })
)

/** Admin and company tokens; a run token is refused here (it only reaches /api/runtime). */
export class Authentication extends HttpApiMiddleware.Tag<Authentication>()("gantry/Authentication", {
  failure: Unauthorized,
  provides: CurrentActor,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

/** Run tokens only: the runtime API. */
export class RuntimeAuthentication extends HttpApiMiddleware.Tag<RuntimeAuthentication>()("gantry/RuntimeAuthentication", {
  failure: Unauthorized,
  provides: CurrentActor,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const unauthorized = (message: string) => apiError(401, "unauthorized", message) as Unauthorized

export const layerAuthentication = Layer.effect(
  Authentication,
  Effect.map(ApiTokens, (tokens) => Authentication.of({
    bearer: (token) => {
      const t = Redacted.value(token)
      if (t.length === 0) return Effect.fail(unauthorized("missing bearer token"))
      if (t.split(".").length === 3) return Effect.fail(unauthorized("run tokens only reach /api/runtime"))
      return Effect.mapError(tokens.authenticate(t), () => unauthorized("invalid or unknown bearer token"))
    }
  }))
)

export const layerRuntimeAuthentication = Layer.effect(
  RuntimeAuthentication,
  Effect.gen(function* () {
    const runTokens = yield* RunTokens
    const runs = yield* Runs
    return RuntimeAuthentication.of({
      bearer: (token) =>
        runTokens.verifyForRun(Redacted.value(token), runs.isActive).pipe(
          Effect.map((c): Actor => ({ kind: "run", runId: c.sub, companyId: c.cid, agentId: c.aid })),
          Effect.mapError((e) => unauthorized(`run token refused: ${e.message}`))
        )
    })
  })
)

/** The actor may act for `companyId` (admin: any company). */
export const requireCompany = (companyId: string) =>
  Effect.flatMap(CurrentActor, (actor) =>
    actor.kind === "admin" || (actor.kind === "company" && actor.companyId === companyId)
      ? Effect.void
      : Effect.fail(apiError(403, "forbidden", `this token may not act for company "${companyId}"`) as Forbidden))

export const requireAdmin = Effect.flatMap(CurrentActor, (actor) =>
  actor.kind === "admin" ? Effect.void : Effect.fail(apiError(403, "forbidden", "this route needs the instance admin token") as Forbidden))
