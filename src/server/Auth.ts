// Bearer-token auth (SPEC §12, §16): the instance admin token (the operator) created on first start
// (printed once, stored hashed), company tokens (read-write `company` or read-only `company-read`),
// and run tokens (JWT) that only reach /api/runtime. Tokens are listed, revoked, rotated, may expire,
// and record when they were last used (at most one write a minute per token).
import { HttpApiMiddleware, HttpApiSecurity, HttpServerRequest } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { createHash, randomBytes, randomUUID } from "node:crypto"
import { RunTokens } from "../environments/RunToken.js"
import { Database } from "../store/Database.js"
import { Runs } from "../work/Runs.js"
import { apiError, Forbidden, NotFound, Unauthorized, type ApiError } from "./errors.js"

export type TokenRole = "admin" | "company" | "company-read"
export const COMPANY_ROLES = ["company", "company-read"] as const

export type Actor =
  | { readonly kind: "admin"; readonly tokenId: string | null }
  | { readonly kind: "company"; readonly companyId: string; readonly role: "company" | "company-read"; readonly tokenId: string }
  | { readonly kind: "run"; readonly runId: string; readonly companyId: string; readonly agentId: string }

export class CurrentActor extends Context.Tag("gantry/CurrentActor")<CurrentActor, Actor>() {}

/** A token as the API shows it: never its value or hash. */
export interface TokenInfo {
  readonly id: string
  readonly role: TokenRole
  readonly companyId: string | null
  readonly name: string | null
  readonly createdAt: string
  readonly lastUsedAt: string | null
  readonly expiresAt: string | null
  readonly revokedAt: string | null
}

export class TokenNotFound extends Schema.TaggedError<TokenNotFound>()("TokenNotFound", {
  tokenId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class TokenInvalid extends Schema.TaggedError<TokenInvalid>()("TokenInvalid", {
  message: Schema.String
}) {
  get status() { return 422 }
}
export class TokenConflict extends Schema.TaggedError<TokenConflict>()("TokenConflict", {
  message: Schema.String
}) {
  get status() { return 409 }
}

/** `last_used_at` is written at most this often per token (a write per request would be a hot row). */
export const LAST_USED_RESOLUTION_MS = 60_000

const hash = (token: string) => createHash("sha256").update(token).digest("hex")
const newToken = (role: TokenRole) => `gantry_${role === "admin" ? "admin" : role === "company" ? "company" : "read"}_${randomBytes(24).toString("base64url")}`
const iso = (n: number | null) => (n === null ? null : new Date(Number(n)).toISOString())

type Row = {
  id: string; kind: TokenRole; company_id: string | null; name: string | null; created_at: number
  last_used_at: number | null; expires_at: number | null; revoked_at: number | null
}
const toInfo = (r: Row): TokenInfo => ({
  id: r.id,
  role: r.kind,
  companyId: r.company_id,
  name: r.name,
  createdAt: iso(r.created_at)!,
  lastUsedAt: iso(r.last_used_at === null ? null : Number(r.last_used_at)),
  expiresAt: iso(r.expires_at === null ? null : Number(r.expires_at)),
  revokedAt: iso(r.revoked_at === null ? null : Number(r.revoked_at))
})

export interface CreateTokenInput {
  readonly name?: string | null
  readonly role?: "company" | "company-read"
  /** Epoch ms; must be in the future. */
  readonly expiresAt?: number | null
}

export class ApiTokens extends Context.Tag("gantry/ApiTokens")<ApiTokens, {
  /** Creates the admin token when the instance has none; returns it (the only time it is seen). */
  readonly ensureAdmin: Effect.Effect<Option.Option<string>>
  /** Replaces the admin token (or creates it): the old value stops working; returns the new one once. */
  readonly rotateAdmin: Effect.Effect<string>
  readonly createCompanyToken: (companyId: string, input?: CreateTokenInput) => Effect.Effect<{ readonly token: string; readonly info: TokenInfo }, TokenInvalid>
  readonly list: (filter?: { readonly companyId?: string }) => Effect.Effect<ReadonlyArray<TokenInfo>>
  readonly get: (id: string) => Effect.Effect<TokenInfo, TokenNotFound>
  /** Revoked tokens stay listed; the admin token cannot be revoked (rotate it). */
  readonly revoke: (id: string) => Effect.Effect<TokenInfo, TokenNotFound | TokenConflict>
  /** A new value for the same token (role, company, name, expiry kept); the old value stops working. */
  readonly rotate: (id: string) => Effect.Effect<{ readonly token: string; readonly info: TokenInfo }, TokenNotFound | TokenConflict>
  /** Admin and company tokens. */
  readonly authenticate: (token: string) => Effect.Effect<Actor, ApiError>
}>() {}

export const makeTokens = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const dialect = (yield* Database).dialect
  const get = (id: string) =>
    sql<Row>`SELECT id, kind, company_id, name, created_at, last_used_at, expires_at, revoked_at FROM api_tokens WHERE id = ${id}`.pipe(
      Effect.orDie,
      Effect.flatMap((rows) => rows.length === 0
        ? Effect.fail(new TokenNotFound({ tokenId: id, message: `token "${id}" not found` }))
        : Effect.succeed(toInfo(rows[0]!)))
    )
  const insert = (role: TokenRole, companyId: string | null, name: string | null, expiresAt: number | null) =>
    Effect.gen(function* () {
      const token = newToken(role)
      const id = randomUUID()
      const now = yield* Clock.currentTimeMillis
      yield* sql`INSERT INTO api_tokens (id, hash, kind, company_id, name, created_at, expires_at)
        VALUES (${id}, ${hash(token)}, ${role}, ${companyId}, ${name}, ${now}, ${expiresAt})`
      return { id, token }
    }).pipe(Effect.orDie)
  const ensureAdmin = Effect.gen(function* () {
    const existing = yield* sql`SELECT id FROM api_tokens WHERE kind = 'admin' AND revoked_at IS NULL LIMIT 1`.pipe(Effect.orDie)
    if (existing.length > 0) return Option.none<string>()
    return Option.some((yield* insert("admin", null, "instance admin", null)).token)
  })
  // replicas starting together on one Postgres: one creates (and prints) the admin token
  const adminLock = <A, E, R>(eff: Effect.Effect<A, E, R>) =>
    dialect === "pg" ? sql.withTransaction(Effect.zipRight(sql.unsafe(`SELECT pg_advisory_xact_lock(7346002)`), eff)).pipe(Effect.orDie) : eff
  const rotateAdmin = sql.withTransaction(Effect.gen(function* () {
    const token = newToken("admin")
    const rows = yield* sql<{ id: string }>`SELECT id FROM api_tokens WHERE kind = 'admin' ORDER BY created_at`
    if (rows.length === 0) return (yield* insert("admin", null, "instance admin", null)).token
    yield* sql`UPDATE api_tokens SET hash = ${hash(token)}, revoked_at = NULL, expires_at = NULL, last_used_at = NULL WHERE id = ${rows[0]!.id}`
    // one admin token per instance: any other admin row goes
    yield* sql`DELETE FROM api_tokens WHERE kind = 'admin' AND id <> ${rows[0]!.id}`
    return token
  })).pipe(Effect.orDie)

  return ApiTokens.of({
    ensureAdmin: adminLock(ensureAdmin),
    rotateAdmin: adminLock(rotateAdmin),
    createCompanyToken: (companyId, input = {}) =>
      Effect.gen(function* () {
        const role = input.role ?? "company"
        if (role !== "company" && role !== "company-read") return yield* new TokenInvalid({ message: `role: must be "company" or "company-read"` })
        const name = input.name ?? null
        if (name !== null && (typeof name !== "string" || name.length > 200)) return yield* new TokenInvalid({ message: "name: at most 200 characters" })
        const now = yield* Clock.currentTimeMillis
        const expiresAt = input.expiresAt ?? null
        if (expiresAt !== null && (!Number.isFinite(expiresAt) || expiresAt <= now)) return yield* new TokenInvalid({ message: "expiresAt: must be a date in the future" })
        const { id, token } = yield* insert(role, companyId, name, expiresAt)
        return { token, info: yield* Effect.orDie(get(id)) }
      }),
    list: (filter = {}) =>
      (filter.companyId !== undefined
        ? sql<Row>`SELECT id, kind, company_id, name, created_at, last_used_at, expires_at, revoked_at FROM api_tokens WHERE company_id = ${filter.companyId} ORDER BY created_at, id`
        : sql<Row>`SELECT id, kind, company_id, name, created_at, last_used_at, expires_at, revoked_at FROM api_tokens ORDER BY created_at, id`).pipe(
        Effect.map((rows) => rows.map(toInfo)),
        Effect.orDie
      ),
    get,
    revoke: (id) =>
      Effect.gen(function* () {
        const info = yield* get(id)
        if (info.role === "admin") return yield* new TokenConflict({ message: "the admin token cannot be revoked; rotate it instead (POST /api/tokens/:id/rotate or `gantry tokens rotate-admin`)" })
        if (info.revokedAt !== null) return info
        const now = yield* Clock.currentTimeMillis
        yield* sql`UPDATE api_tokens SET revoked_at = ${now} WHERE id = ${id} AND revoked_at IS NULL`.pipe(Effect.orDie)
        return yield* Effect.orDie(get(id))
      }),
    rotate: (id) =>
      Effect.gen(function* () {
        const info = yield* get(id)
        if (info.revokedAt !== null) return yield* new TokenConflict({ message: `token "${id}" is revoked; create a new one` })
        const token = newToken(info.role)
        yield* sql`UPDATE api_tokens SET hash = ${hash(token)} WHERE id = ${id}`.pipe(Effect.orDie)
        return { token, info: yield* Effect.orDie(get(id)) }
      }),
    authenticate: (token) =>
      Effect.gen(function* () {
        const rows = yield* sql<Row>`SELECT id, kind, company_id, name, created_at, last_used_at, expires_at, revoked_at FROM api_tokens
          WHERE hash = ${hash(token)}`.pipe(Effect.orDie)
        const row = rows[0]
        if (!row) return yield* Effect.fail(apiError(401, "unauthorized", "invalid or unknown bearer token"))
        const now = yield* Clock.currentTimeMillis
        if (row.revoked_at !== null) return yield* Effect.fail(apiError(401, "unauthorized", "this token was revoked"))
        if (row.expires_at !== null && Number(row.expires_at) <= now) return yield* Effect.fail(apiError(401, "unauthorized", "this token has expired"))
        if (row.last_used_at === null || Number(row.last_used_at) <= now - LAST_USED_RESOLUTION_MS) {
          // conditional: concurrent requests write it once
          yield* sql`UPDATE api_tokens SET last_used_at = ${now} WHERE id = ${row.id}
            AND (last_used_at IS NULL OR last_used_at <= ${now - LAST_USED_RESOLUTION_MS})`.pipe(Effect.ignore)
        }
        if (row.kind === "admin") return { kind: "admin" as const, tokenId: row.id }
        return { kind: "company" as const, companyId: row.company_id!, role: row.kind === "company-read" ? "company-read" as const : "company" as const, tokenId: row.id }
      })
  })
})

export const layerTokens = Layer.effect(ApiTokens, makeTokens)

/** Admin and company tokens; a run token is refused here (it only reaches /api/runtime). A read-only
 * company token is refused (403) on every method but GET and HEAD. */
export class Authentication extends HttpApiMiddleware.Tag<Authentication>()("gantry/Authentication", {
  // the error classes are Schema.Class<any>: a union of them would leak `unknown` requirements
  failure: Schema.Union(Unauthorized, Forbidden) as unknown as Schema.Schema<Unauthorized | Forbidden, { readonly error: unknown }, never>,
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
const READ_METHODS = new Set(["GET", "HEAD"])

export const layerAuthentication = Layer.effect(
  Authentication,
  Effect.map(ApiTokens, (tokens) => Authentication.of({
    bearer: (token) =>
      Effect.gen(function* () {
        const t = Redacted.value(token)
        if (t.length === 0) return yield* Effect.fail(unauthorized("missing bearer token"))
        if (t.split(".").length === 3) return yield* Effect.fail(unauthorized("run tokens only reach /api/runtime"))
        const actor = yield* Effect.mapError(tokens.authenticate(t), (e) => unauthorized(e instanceof Unauthorized ? e.error.message : "invalid or unknown bearer token"))
        if (actor.kind === "company" && actor.role === "company-read") {
          const req = yield* Effect.serviceOption(HttpServerRequest.HttpServerRequest)
          if (Option.isNone(req) || !READ_METHODS.has(req.value.method.toUpperCase())) {
            return yield* Effect.fail(apiError(403, "read_only_token", "this token is read-only (company-read): it may only read") as Forbidden)
          }
        }
        return actor
      })
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

/** The answer for an object the actor may not see: exactly the one a missing object gets (SPEC §14). */
export const notFound = (kind: string, id: string) => apiError(404, `${kind}_not_found`, `${kind} "${id}" not found`) as NotFound

/** The actor may act for `companyId` (admin: any company); another company's id is a 404, like a missing one. */
export const requireCompany = (companyId: string) =>
  Effect.flatMap(CurrentActor, (actor) =>
    actor.kind === "admin" || (actor.kind === "company" && actor.companyId === companyId)
      ? Effect.void
      : Effect.fail(notFound("company", companyId)))

/** The object (of company `ownerId`) is the actor's to see; else the same 404 as a missing `kind` `id`. */
export const requireOwner = (kind: string, id: string, ownerId: string) =>
  Effect.flatMap(CurrentActor, (actor) =>
    actor.kind === "admin" || (actor.kind === "company" && actor.companyId === ownerId)
      ? Effect.void
      : Effect.fail(notFound(kind, id)))

export const requireAdmin = Effect.flatMap(CurrentActor, (actor) =>
  actor.kind === "admin" ? Effect.void : Effect.fail(apiError(403, "forbidden", "this route needs the instance admin token (the operator)") as Forbidden))

export const isAdmin = Effect.map(CurrentActor, (actor) => actor.kind === "admin")
