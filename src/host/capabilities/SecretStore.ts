// Host-owned secret store (SPEC §5.5): values encrypted at rest with AES-256-GCM, versioned, readable
// only as metadata; a plugin resolves a value only through a ref its saved company config binds, at
// most `rateLimit.limit` times per window per (plugin, company). Every value seen goes to the Redactor.
import { SqlClient } from "@effect/sql"
import { Clock, Config, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from "node:crypto"
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, statSync, writeSync } from "node:fs"
import { join, resolve } from "node:path"
import { InternalError, InvalidParams, WorkerError, type RpcError } from "../../protocol/errors.js"
import type { SecretRef } from "../../protocol/methods.js"
import type { CapabilityStoresShape } from "../Stores.js"
import * as ConfigStore from "./ConfigStore.js"
import { Redactor } from "./Redactor.js"

// ---------------------------------------------------------------------------------------------------
// Model and errors

/** What the API and every listing see: never the value. */
export interface SecretMetadata {
  readonly id: string
  readonly companyId: string
  readonly name: string
  /** Current version (1 after create, +1 per rotate). */
  readonly version: number
  readonly createdAt: string
  readonly updatedAt: string
}

export class SecretNotFound extends Schema.TaggedError<SecretNotFound>()("SecretNotFound", {
  secretId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}

export class SecretNameConflict extends Schema.TaggedError<SecretNameConflict>()("SecretNameConflict", {
  companyId: Schema.String,
  name: Schema.String,
  message: Schema.String
}) {
  get status() { return 409 }
}

/** Bad input to create/rotate/resolve (name, value, ref shape). */
export class SecretInvalid extends Schema.TaggedError<SecretInvalid>()("SecretInvalid", {
  field: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}

/** The ref is not bound to this plugin and company by the saved config (SPEC §5.5). */
export class SecretBindingMissing extends Schema.TaggedError<SecretBindingMissing>()("SecretBindingMissing", {
  pluginId: Schema.String,
  companyId: Schema.String,
  secretId: Schema.String,
  message: Schema.String
}) {
  get status() { return 403 }
}

export class SecretRateLimited extends Schema.TaggedError<SecretRateLimited>()("SecretRateLimited", {
  pluginId: Schema.String,
  companyId: Schema.String,
  retryAfterMs: Schema.Number,
  message: Schema.String
}) {
  get status() { return 429 }
}

/** The master key is missing/malformed, or a stored value does not decrypt with it (wrong key, tampering). */
export class SecretKeyError extends Schema.TaggedError<SecretKeyError>()("SecretKeyError", {
  message: Schema.String
}) {
  get status() { return 500 }
}

export type SecretResolveError = SecretBindingMissing | SecretRateLimited | SecretNotFound | SecretInvalid | SecretKeyError

export interface SecretStoreShape {
  readonly create: (companyId: string, name: string, value: string) => Effect.Effect<SecretMetadata, SecretNameConflict | SecretInvalid | SecretKeyError>
  /** Store `value` as a new version; it becomes the current one. `companyId`, when given, must own the secret. */
  readonly rotate: (secretId: string, value: string, options?: { readonly companyId?: string }) => Effect.Effect<SecretMetadata, SecretNotFound | SecretInvalid | SecretKeyError>
  /** Remove the secret and every version (ciphertext included). */
  readonly delete: (secretId: string, options?: { readonly companyId?: string }) => Effect.Effect<void, SecretNotFound>
  readonly get: (secretId: string, options?: { readonly companyId?: string }) => Effect.Effect<SecretMetadata, SecretNotFound>
  readonly list: (companyId: string) => Effect.Effect<ReadonlyArray<SecretMetadata>>
  /** A plugin's resolution (the `secrets.resolve` method). Bound = the plugin's saved config for the
   * company holds `{type:"secret_ref", secretId}` in some field (at `configPath`, dot-separated, when
   * given; there a bare id string also binds). A `version` in the config pins it; otherwise the ref's
   * `version` or the current one. Every attempt counts against the rate limit. */
  readonly resolve: (pluginId: string, companyId: string, ref: SecretRef | string, configPath: string | null) => Effect.Effect<string, SecretResolveError>
  /** The host's own read of a company's secret (a run's env); registered with the Redactor. */
  readonly reveal: (companyId: string, secretId: string, version?: number | null) => Effect.Effect<string, SecretNotFound | SecretKeyError | SecretInvalid>
}

export class SecretStore extends Context.Tag("gantry/SecretStore")<SecretStore, SecretStoreShape>() {}

export interface SecretStoreOptions {
  /** Master key, 32 bytes as base64 (standard or url-safe) or 64 hex digits. Wins over the key file. */
  readonly key?: Redacted.Redacted<string> | undefined
  /** Where `secrets.key` is generated (0600) when no key is given; default `.gantry`. */
  readonly dataDir?: string | undefined
  /** Resolutions per window per (plugin, company); default 30 per 60 000 ms. */
  readonly rateLimit?: { readonly limit: number; readonly windowMs: number } | undefined
}

export const DEFAULT_RATE_LIMIT = { limit: 30, windowMs: 60_000 } as const
export const KEY_FILE = "secrets.key"
const MAX_VALUE_BYTES = 64 * 1024
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
const CIPHER_PREFIX = "v1."
const IV_BYTES = 12
const TAG_BYTES = 16

// ---------------------------------------------------------------------------------------------------
// Master key

/** Parse a 32-byte key given as hex or base64; the error never contains the key. */
export const parseKey = (text: string, source: string): Effect.Effect<Buffer, SecretKeyError> =>
  Effect.suspend(() => {
    const t = text.trim()
    if (/^[0-9a-fA-F]{64}$/.test(t)) return Effect.succeed(Buffer.from(t, "hex"))
    if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(t)) {
      const bytes = Buffer.from(t.replace(/-/g, "+").replace(/_/g, "/"), "base64")
      if (bytes.length === 32) return Effect.succeed(bytes)
      return Effect.fail(new SecretKeyError({ message: `${source} must be 32 bytes (base64 or 64 hex digits); it decodes to ${bytes.length} bytes` }))
    }
    return Effect.fail(new SecretKeyError({ message: `${source} must be 32 bytes as base64 or 64 hex digits` }))
  })

/** Read `<dataDir>/secrets.key`, creating it (32 random bytes, base64, mode 0600) if absent. A key file
 * that group or others can read is refused rather than silently used. */
const keyFromFile = (dataDir: string): Effect.Effect<Buffer, SecretKeyError> =>
  Effect.flatMap(
    Effect.try({
      try: () => {
        const dir = resolve(dataDir)
        const file = join(dir, KEY_FILE)
        mkdirSync(dir, { recursive: true, mode: 0o700 })
        let fd: number | undefined
        try {
          fd = openSync(file, "wx", 0o600)
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
        }
        if (fd !== undefined) {
          try {
            writeSync(fd, `${randomBytes(32).toString("base64")}\n`)
            chmodSync(file, 0o600)
          } finally {
            closeSync(fd)
          }
        }
        const mode = statSync(file).mode & 0o777
        if ((mode & 0o077) !== 0) return { file, text: null, mode }
        return { file, text: readFileSync(file, "utf8"), mode }
      },
      catch: (e) => new SecretKeyError({ message: `secrets key file in ${dataDir}: ${e instanceof Error ? e.message : String(e)}` })
    }),
    ({ file, mode, text }) =>
      text === null
        ? Effect.fail(new SecretKeyError({ message: `secrets key file ${file} has mode ${mode.toString(8).padStart(4, "0")}; it must be 0600 (chmod 600 it)` }))
        : parseKey(text, `secrets key file ${file}`)
  )

const aad = (companyId: string, secretId: string, version: number) => Buffer.from(JSON.stringify([companyId, secretId, version]))

/** `v1.` + base64(iv ‖ tag ‖ ciphertext); the AAD binds it to its (company, secret, version) row. */
export const encrypt = (key: Buffer, value: string, companyId: string, secretId: string, version: number): string => {
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv("aes-256-gcm", key, iv, { authTagLength: TAG_BYTES })
  cipher.setAAD(aad(companyId, secretId, version))
  const body = Buffer.concat([cipher.update(value, "utf8"), cipher.final()])
  return CIPHER_PREFIX + Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64")
}

export const decrypt = (key: Buffer, stored: string, companyId: string, secretId: string, version: number): Effect.Effect<string, SecretKeyError> =>
  Effect.try({
    try: () => {
      if (!stored.startsWith(CIPHER_PREFIX)) throw new Error("unknown format")
      const raw = Buffer.from(stored.slice(CIPHER_PREFIX.length), "base64")
      // a truncated tag would be accepted by setAuthTag (4–16 bytes) and make forgery cheap: pin 16
      if (raw.length < IV_BYTES + TAG_BYTES) throw new Error("too short")
      const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES })
      decipher.setAAD(aad(companyId, secretId, version))
      decipher.setAuthTag(raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES))
      return Buffer.concat([decipher.update(raw.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString("utf8")
    },
    catch: () => new SecretKeyError({ message: `secret "${secretId}" version ${version} does not decrypt: wrong secrets key or tampered data` })
  })

// ---------------------------------------------------------------------------------------------------
// Bindings: a saved config field holding a ref to the secret

interface Binding {
  readonly path: string
  /** A version the binding pins, or null (any version; the current one by default). */
  readonly version: number | null
}

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const refIn = (u: unknown, secretId: string): { version: number | null } | undefined =>
  isObject(u) && u.type === "secret_ref" && u.secretId === secretId
    ? { version: typeof u.version === "number" ? u.version : null }
    : undefined

/** Every config field (any depth) that holds a `secret_ref` object for `secretId`. */
const findBindings = (config: unknown, secretId: string): Array<Binding> => {
  const out: Array<Binding> = []
  const walk = (u: unknown, path: Array<string>, depth: number) => {
    if (depth > 32) return
    const ref = refIn(u, secretId)
    if (ref) return void out.push({ path: path.join("."), version: ref.version })
    if (Array.isArray(u)) u.forEach((v, i) => walk(v, [...path, String(i)], depth + 1))
    else if (isObject(u)) for (const [k, v] of Object.entries(u)) walk(v, [...path, k], depth + 1)
  }
  walk(config, [], 0)
  return out
}

/** The binding at a dot-separated path: a `secret_ref` object there, or the bare secret id string. */
const bindingAt = (config: unknown, configPath: string, secretId: string): Binding | undefined => {
  const segments = configPath.split(".")
  if (segments.some((s) => s === "")) return undefined
  let cur: unknown = config
  for (const s of segments) {
    if (Array.isArray(cur) && /^\d+$/.test(s)) cur = cur[Number(s)]
    else if (isObject(cur) && Object.hasOwn(cur, s)) cur = cur[s]
    else return undefined
  }
  if (cur === secretId) return { path: configPath, version: null }
  const ref = refIn(cur, secretId)
  return ref ? { path: configPath, version: ref.version } : undefined
}

// ---------------------------------------------------------------------------------------------------
// Service

interface SecretRow {
  readonly id: string
  readonly company_id: string
  readonly name: string
  readonly current_version: number
  readonly created_at: number
  readonly updated_at: number
}

const toMetadata = (r: SecretRow): SecretMetadata => ({
  id: r.id,
  companyId: r.company_id,
  name: r.name,
  version: Number(r.current_version),
  createdAt: new Date(Number(r.created_at)).toISOString(),
  updatedAt: new Date(Number(r.updated_at)).toISOString()
})

const checkValue = (value: unknown): Effect.Effect<string, SecretInvalid> =>
  typeof value !== "string" || value.length === 0
    ? Effect.fail(new SecretInvalid({ field: "value", message: "secret value must be a non-empty string" }))
    : Buffer.byteLength(value) > MAX_VALUE_BYTES
    ? Effect.fail(new SecretInvalid({ field: "value", message: `secret value is over ${MAX_VALUE_BYTES} bytes` }))
    : Effect.succeed(value)

export const make = (options: SecretStoreOptions = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const redactor = yield* Redactor
    const configs = yield* ConfigStore.make
    const rate = options.rateLimit ?? DEFAULT_RATE_LIMIT
    // a given key is checked now; the key file is only created on first use (a host that never
    // touches secrets leaves no file behind)
    const given = options.key === undefined ? undefined : yield* parseKey(Redacted.value(options.key), "GANTRY_SECRETS_KEY")
    const key = yield* Effect.cached(given ? Effect.succeed(given) : keyFromFile(options.dataDir ?? ".gantry"))

    // sliding log per (plugin, company): at most `limit` resolution attempts in any `windowMs`
    const attempts = new Map<string, Array<number>>()
    const take = (pluginId: string, companyId: string) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const k = JSON.stringify([pluginId, companyId])
        const recent = (attempts.get(k) ?? []).filter((t) => t > now - rate.windowMs)
        if (recent.length < rate.limit) {
          recent.push(now)
          attempts.set(k, recent)
          return Effect.void
        }
        attempts.set(k, recent)
        const retryAfterMs = Math.max(1, recent[0]! + rate.windowMs - now)
        return Effect.fail(new SecretRateLimited({
          pluginId,
          companyId,
          retryAfterMs,
          message: `secrets.resolve rate limited: plugin "${pluginId}" may resolve ${rate.limit} secrets per ${rate.windowMs} ms for company "${companyId}"; retry after ${retryAfterMs} ms`
        }))
      })

    const row = (secretId: string, companyId?: string) =>
      sql<SecretRow>`SELECT id, company_id, name, current_version, created_at, updated_at FROM secrets WHERE id = ${secretId}`.pipe(
        Effect.orDie,
        Effect.flatMap((rows) =>
          rows.length === 0 || (companyId !== undefined && rows[0]!.company_id !== companyId)
            ? Effect.fail(new SecretNotFound({ secretId, message: `secret "${secretId}" not found${companyId !== undefined ? ` in company "${companyId}"` : ""}` }))
            : Effect.succeed(rows[0]!))
      )

    const byName = (companyId: string, name: string) =>
      Effect.map(sql<{ id: string }>`SELECT id FROM secrets WHERE company_id = ${companyId} AND name = ${name}`.pipe(Effect.orDie), (rows) => rows.length > 0)

    const nameConflict = (companyId: string, name: string) =>
      new SecretNameConflict({ companyId, name, message: `company "${companyId}" already has a secret named "${name}"` })

    const create = Effect.fn("SecretStore.create")(function* (companyId: string, name: string, value: string) {
      if (typeof companyId !== "string" || companyId === "") {
        return yield* new SecretInvalid({ field: "companyId", message: "companyId must be a non-empty string" })
      }
      if (typeof name !== "string" || !NAME_RE.test(name)) {
        return yield* new SecretInvalid({ field: "name", message: `secret name must match ${NAME_RE.source}` })
      }
      yield* checkValue(value)
      const k = yield* key
      const id = randomUUID()
      const now = yield* Clock.currentTimeMillis
      const ciphertext = encrypt(k, value, companyId, id, 1)
      yield* redactor.register(value)
      if (yield* byName(companyId, name)) return yield* nameConflict(companyId, name)
      yield* sql.withTransaction(Effect.zipRight(
        sql`INSERT INTO secrets (id, company_id, name, current_version, created_at, updated_at) VALUES (${id}, ${companyId}, ${name}, 1, ${now}, ${now})`,
        sql`INSERT INTO secret_versions (secret_id, version, ciphertext, created_at) VALUES (${id}, 1, ${ciphertext}, ${now})`
      )).pipe(
        // a concurrent create of the same name loses on the unique constraint
        Effect.catchAll((e) => Effect.flatMap(byName(companyId, name), (taken) => (taken ? Effect.fail(nameConflict(companyId, name)) : Effect.die(e))))
      )
      return toMetadata({ id, company_id: companyId, name, current_version: 1, created_at: now, updated_at: now })
    })

    const rotate = Effect.fn("SecretStore.rotate")(function* (secretId: string, value: string, o?: { readonly companyId?: string }) {
      yield* checkValue(value)
      const k = yield* key
      yield* redactor.register(value)
      return yield* sql.withTransaction(Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        // the UPDATE takes the row lock (PostgreSQL) / write lock (SQLite): concurrent rotations serialize
        const updated = yield* sql<SecretRow>`UPDATE secrets SET current_version = current_version + 1, updated_at = ${now}
          WHERE id = ${secretId} RETURNING id, company_id, name, current_version, created_at, updated_at`.pipe(Effect.orDie)
        const r = updated[0]
        if (!r || (o?.companyId !== undefined && r.company_id !== o.companyId)) {
          return yield* new SecretNotFound({ secretId, message: `secret "${secretId}" not found${o?.companyId !== undefined ? ` in company "${o.companyId}"` : ""}` })
        }
        const version = Number(r.current_version)
        const ciphertext = encrypt(k, value, r.company_id, r.id, version)
        yield* sql`INSERT INTO secret_versions (secret_id, version, ciphertext, created_at) VALUES (${secretId}, ${version}, ${ciphertext}, ${now})`.pipe(Effect.orDie)
        return toMetadata(r)
      })).pipe(Effect.catchTag("SqlError", Effect.die))
    })

    const del = Effect.fn("SecretStore.delete")(function* (secretId: string, o?: { readonly companyId?: string }) {
      yield* row(secretId, o?.companyId)
      yield* sql.withTransaction(Effect.zipRight(
        sql`DELETE FROM secret_versions WHERE secret_id = ${secretId}`,
        sql`DELETE FROM secrets WHERE id = ${secretId}`
      )).pipe(Effect.orDie)
    })

    const get = Effect.fn("SecretStore.get")(function* (secretId: string, o?: { readonly companyId?: string }) {
      return toMetadata(yield* row(secretId, o?.companyId))
    })

    const list = Effect.fn("SecretStore.list")(function* (companyId: string) {
      const rows = yield* sql<SecretRow>`SELECT id, company_id, name, current_version, created_at, updated_at FROM secrets
        WHERE company_id = ${companyId} ORDER BY name`.pipe(Effect.orDie)
      return rows.map(toMetadata)
    })

    const resolveRef = Effect.fn("SecretStore.resolve")(function* (pluginId: string, companyId: string, ref: SecretRef | string, configPath: string | null) {
      yield* take(pluginId, companyId)
      const secretId = typeof ref === "string" ? ref : ref?.secretId
      if (typeof secretId !== "string" || secretId === "") {
        return yield* new SecretInvalid({ field: "secretRef", message: `secretRef must be {type:"secret_ref", secretId, version?} or a secret id` })
      }
      const asked = typeof ref === "string" ? null : ref.version ?? null
      if (asked !== null && (!Number.isInteger(asked) || asked < 1)) {
        return yield* new SecretInvalid({ field: "secretRef.version", message: `secretRef.version must be a positive integer` })
      }
      const missing = (why: string) =>
        new SecretBindingMissing({ pluginId, companyId, secretId, message: `secret binding missing: ${why}` })

      const config = yield* configs.get(pluginId, companyId)
      const bindings = configPath !== null
        ? Option.toArray(Option.fromNullable(bindingAt(config, configPath, secretId)))
        : findBindings(config, secretId)
      if (bindings.length === 0) {
        return yield* missing(configPath !== null
          ? `config of plugin "${pluginId}" for company "${companyId}" has no ref to secret "${secretId}" at "${configPath}"`
          : `config of plugin "${pluginId}" for company "${companyId}" has no field holding a ref to secret "${secretId}"`)
      }
      const pins = bindings.map((b) => b.version)
      const anyVersion = pins.includes(null)
      if (asked !== null && !anyVersion && !pins.includes(asked)) {
        return yield* missing(`the config of plugin "${pluginId}" for company "${companyId}" binds secret "${secretId}" at version ${pins.join(", ")}, not ${asked}`)
      }
      const secret = yield* row(secretId, companyId)
      const version = asked ?? (anyVersion ? Number(secret.current_version) : pins[0]!)
      const versions = yield* sql<{ ciphertext: string }>`SELECT ciphertext FROM secret_versions WHERE secret_id = ${secretId} AND version = ${version}`.pipe(Effect.orDie)
      if (versions.length === 0) {
        return yield* new SecretNotFound({ secretId, message: `secret "${secretId}" has no version ${version}` })
      }
      const value = yield* decrypt(yield* key, versions[0]!.ciphertext, secret.company_id, secret.id, version)
      yield* redactor.register(value)
      return value
    })

    /** The host's own resolution for a run's env (SPEC §8): the secret must belong to the company. */
    const reveal = Effect.fn("SecretStore.reveal")(function* (companyId: string, secretId: string, version?: number | null) {
      const secret = yield* row(secretId, companyId)
      const v = version ?? Number(secret.current_version)
      const versions = yield* sql<{ ciphertext: string }>`SELECT ciphertext FROM secret_versions WHERE secret_id = ${secretId} AND version = ${v}`.pipe(Effect.orDie)
      if (versions.length === 0) return yield* new SecretNotFound({ secretId, message: `secret "${secretId}" has no version ${v}` })
      const value = yield* decrypt(yield* key, versions[0]!.ciphertext, secret.company_id, secret.id, v)
      yield* redactor.register(value)
      return value
    })

    return SecretStore.of({ create, rotate, delete: del, get, list, resolve: resolveRef, reveal })
  })

/** Options from config: `GANTRY_SECRETS_KEY` (redacted), `GANTRY_DATA_DIR` (default `.gantry`). */
export const optionsFromConfig: Effect.Effect<SecretStoreOptions> = Effect.gen(function* () {
  const key = yield* Config.option(Config.redacted("GANTRY_SECRETS_KEY"))
  const dataDir = yield* Config.string("GANTRY_DATA_DIR").pipe(Config.withDefault(".gantry"))
  return { key: Option.getOrUndefined(key), dataDir }
}).pipe(Effect.orDie)

export const layer = (options: SecretStoreOptions = {}) => Layer.effect(SecretStore, make(options))

export const layerConfig = Layer.effect(SecretStore, Effect.flatMap(optionsFromConfig, make))

// ---------------------------------------------------------------------------------------------------
// The `secrets` capability backend (worker → host `secrets.resolve`)

/** Wire form: bad refs are -32602; everything else -32002 with `data.reason` (and `retryAfterMs`).
 * Messages name ids and paths only, never a value. */
export const toRpcError = (e: SecretResolveError): RpcError => {
  switch (e._tag) {
    case "SecretInvalid":
      return new InvalidParams({ message: e.message, data: { field: e.field } })
    case "SecretBindingMissing":
      return new WorkerError({ message: e.message, data: { reason: "secret_binding_missing", secretId: e.secretId } })
    case "SecretRateLimited":
      return new WorkerError({ message: e.message, data: { reason: "rate_limited", retryAfterMs: e.retryAfterMs } })
    case "SecretNotFound":
      return new WorkerError({ message: e.message, data: { reason: "secret_not_found", secretId: e.secretId } })
    case "SecretKeyError":
      return new InternalError({ message: e.message, data: { reason: "secret_key" } })
  }
}

export const capability = (store: SecretStoreShape): CapabilityStoresShape["secrets"] => ({
  resolve: (pluginId, companyId, ref, configPath) => Effect.mapError(store.resolve(pluginId, companyId, ref, configPath), toRpcError)
})

/** The SecretStore in context (the server provides one, shared with the API), else one from config. */
export const fromContextOrConfig = Effect.flatMap(Effect.serviceOption(SecretStore), (o) =>
  Option.isSome(o) ? Effect.succeed(o.value) : Effect.flatMap(optionsFromConfig, make)).pipe(Effect.orDie)
