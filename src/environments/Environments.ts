// Environments (SPEC §6): the model and repo, per-company local environment, sandbox config
// validated by the provider plugin (configSchema + environmentValidateConfig, normalizedConfig
// replaces it; secret fields as refs only), selection precedence, probe.
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { secretRefPaths, validateAgainst } from "../host/jsonSchema.js"
import { Companies, type CompanyNotFound } from "../work/Companies.js"
import { CapabilityStores } from "../host/Stores.js"
import { Executor } from "./Execution.js"
import { defaultPolicy, Leases, type LeasePolicy } from "./Leases.js"
import { OperatorPolicy, operatorFields, sameJson, type ProviderPolicy } from "./Operator.js"
import { Providers, type ProviderInfo } from "./Provider.js"

export type Driver = "local" | "sandbox"

export interface Environment {
  readonly id: string
  readonly companyId: string
  readonly name: string
  readonly description: string | null
  readonly driver: Driver
  readonly status: "active" | "archived"
  readonly config: Record<string, unknown>
  readonly createdAt: string
  readonly updatedAt: string
}

export class EnvironmentNotFound extends Schema.TaggedError<EnvironmentNotFound>()("EnvironmentNotFound", {
  environmentId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class EnvironmentConflict extends Schema.TaggedError<EnvironmentConflict>()("EnvironmentConflict", {
  message: Schema.String
}) {
  get status() { return 409 }
}
export class EnvironmentInvalid extends Schema.TaggedError<EnvironmentInvalid>()("EnvironmentInvalid", {
  message: Schema.String,
  errors: Schema.Array(Schema.String)
}) {
  get status() { return 422 }
}
/** Selecting an archived environment, or one whose provider is missing. */
export class EnvironmentUnavailable extends Schema.TaggedError<EnvironmentUnavailable>()("EnvironmentUnavailable", {
  environmentId: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}
export class EnvironmentInUse extends Schema.TaggedError<EnvironmentInUse>()("EnvironmentInUse", {
  environmentId: Schema.String,
  liveLeases: Schema.Number,
  message: Schema.String
}) {
  get status() { return 409 }
}

/** A local environment picked for a run of a company the operator has not granted the local driver. */
export class LocalNotGranted extends Schema.TaggedError<LocalNotGranted>()("LocalNotGranted", {
  companyId: Schema.String,
  message: Schema.String
}) {
  get status() { return 403 }
}
/** Nothing selected and no local grant to fall back on: the run has nowhere to go. */
export class NoEnvironment extends Schema.TaggedError<NoEnvironment>()("NoEnvironment", {
  companyId: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}
/** A company asked for something only the operator (admin token) may do. */
export class OperatorOnly extends Schema.TaggedError<OperatorOnly>()("OperatorOnly", {
  message: Schema.String
}) {
  get status() { return 403 }
}

/** A policy route named a provider no installed plugin offers. */
export class ProviderNotInstalled extends Schema.TaggedError<ProviderNotInstalled>()("ProviderNotInstalled", {
  provider: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}

/** Who saves a config: the operator (admin token, or server code) or a company (its own token). */
export type Saver = "operator" | "company"
export interface SaveOptions {
  readonly actor?: Saver
}

/** Host-owned fields of a sandbox config; every other field belongs to the provider. */
const HOST_FIELDS = ["provider", "timeoutMs", "ttlMs", "reuseLease", "onFailure", "env"] as const

export interface SandboxSettings {
  readonly provider: ProviderInfo
  readonly providerConfig: Record<string, unknown>
  readonly policy: LeasePolicy
  /** Explicit variables of the environment, passed to every command. */
  readonly env: Record<string, string>
}

export interface CreateInput {
  readonly name: string
  readonly description?: string | null
  readonly driver: Driver
  readonly config?: Record<string, unknown>
}
export interface PatchInput {
  readonly name?: string
  readonly description?: string | null
  readonly config?: Record<string, unknown>
}

export interface ProbeStep {
  readonly step: string
  readonly ok: boolean
  readonly ms: number
  readonly detail?: string
}
export interface ProbeReport {
  readonly ok: boolean
  readonly summary: string
  readonly steps: ReadonlyArray<ProbeStep>
  readonly diagnostics?: ReadonlyArray<unknown>
}

type Row = {
  id: string; company_id: string; name: string; description: string | null; driver: Driver
  status: "active" | "archived"; config: string; created_at: number; updated_at: number
}
const toEnv = (r: Row): Environment => ({
  id: r.id,
  companyId: r.company_id,
  name: r.name,
  description: r.description,
  driver: r.driver,
  status: r.status,
  config: JSON.parse(r.config),
  createdAt: new Date(Number(r.created_at)).toISOString(),
  updatedAt: new Date(Number(r.updated_at)).toISOString()
})

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)
const isStringMap = (u: unknown): u is Record<string, string> => isRecord(u) && Object.values(u).every((v) => typeof v === "string")
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/

export interface PolicyView {
  readonly provider: string
  readonly policy: ProviderPolicy
  /** The provider's operator fields: `field` (only the operator sets it) or `values` (these values need the policy's allow). */
  readonly operatorFields: ReadonlyArray<{ readonly field: string; readonly kind: "field" | "values"; readonly values?: ReadonlyArray<unknown> }>
}

export class Environments extends Context.Tag("gantry/Environments")<Environments, {
  readonly create: (companyId: string, input: CreateInput, options?: SaveOptions) => Effect.Effect<Environment, EnvironmentInvalid | EnvironmentConflict | CompanyNotFound | OperatorOnly>
  readonly get: (id: string) => Effect.Effect<Environment, EnvironmentNotFound>
  readonly list: (companyId: string, options?: { readonly includeArchived?: boolean }) => Effect.Effect<ReadonlyArray<Environment>, CompanyNotFound>
  readonly patch: (id: string, input: PatchInput, options?: SaveOptions) => Effect.Effect<Environment, EnvironmentNotFound | EnvironmentInvalid | EnvironmentConflict | OperatorOnly>
  readonly archive: (id: string) => Effect.Effect<Environment, EnvironmentNotFound>
  readonly remove: (id: string) => Effect.Effect<void, EnvironmentNotFound | EnvironmentInUse>
  /** The company's `local` environment, created on demand. */
  readonly local: (companyId: string) => Effect.Effect<Environment, CompanyNotFound>
  /** First that is set: explicit → agent default → company default → local (a local one only with the operator's grant). */
  readonly select: (companyId: string, candidates: { readonly explicit?: string | null; readonly agentDefault?: string | null }) =>
    Effect.Effect<Environment, EnvironmentNotFound | EnvironmentUnavailable | CompanyNotFound | LocalNotGranted | NoEnvironment>
  /** Resolve a sandbox environment's provider and split its config (422 if the provider is gone). */
  readonly sandboxSettings: (env: Environment) => Effect.Effect<SandboxSettings, EnvironmentUnavailable>
  /** Probe an unsaved config (`environmentProbe`) or a saved environment (a real lease cycle). */
  readonly probeConfig: (companyId: string, input: CreateInput, options?: SaveOptions) => Effect.Effect<ProbeReport, EnvironmentInvalid | CompanyNotFound | OperatorOnly>
  readonly probe: (id: string) => Effect.Effect<ProbeReport, EnvironmentNotFound | EnvironmentUnavailable | LocalNotGranted>
  /** The operator's policy of a provider (`"<pluginId>/<driverKey>"` or a bare driver key) and its operator fields. */
  readonly getPolicy: (provider: string) => Effect.Effect<PolicyView, ProviderNotInstalled>
  /** Validate (fields must be the provider's operator fields, values must fit their schema) and store. */
  readonly setPolicy: (provider: string, input: { readonly set?: Record<string, unknown>; readonly allow?: Record<string, ReadonlyArray<unknown>> }) => Effect.Effect<PolicyView, EnvironmentInvalid | ProviderNotInstalled>
  readonly clearPolicy: (provider: string) => Effect.Effect<PolicyView, ProviderNotInstalled>
}>() {}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const providers = yield* Providers
  const companies = yield* Companies
  const leases = yield* Leases
  const executor = yield* Executor
  const stores = yield* CapabilityStores
  const operator = yield* OperatorPolicy
  const providerKey = (p: ProviderInfo) => `${p.pluginId}/${p.driverKey}`

  const emit = (eventType: string, env: Environment) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      stores.events.emit({
        eventId: randomUUID(), eventType, occurredAt: new Date(now).toISOString(), entityId: env.id,
        entityType: "environment", actorType: "system", companyId: env.companyId,
        payload: { environmentId: env.id, name: env.name, driver: env.driver, status: env.status }
      })).pipe(Effect.orDie)
  /** A change and its event commit together (outbox, SPEC §16); a database failure is a defect. */
  const withEvent = <A, E, R>(change: Effect.Effect<A, E, R>) =>
    Effect.catchAll(sql.withTransaction(change), (e) => (e as { _tag?: string })._tag === "SqlError" ? Effect.die(e) : Effect.fail(e as E))

  const get = (id: string) =>
    sql<Row>`SELECT * FROM environments WHERE id = ${id}`.pipe(
      Effect.orDie,
      Effect.flatMap((rows) => rows.length === 0
        ? Effect.fail(new EnvironmentNotFound({ environmentId: id, message: `environment "${id}" not found` }))
        : Effect.succeed(toEnv(rows[0]!)))
    )

  const invalid = (errors: ReadonlyArray<string>) =>
    new EnvironmentInvalid({ message: `invalid environment: ${errors.join("; ")}`, errors })

  /** The provider part of a stored config with the operator's policy merged in: what the provider gets. */
  const effectiveProviderConfig = (provider: ProviderInfo, providerPart: Record<string, unknown>) =>
    Effect.map(operator.policy(providerKey(provider)), (policy) => ({ ...providerPart, ...policy.set }))

  /**
   * Validate a config for its driver; returns the config to store (normalized by the provider). A
   * company may not set the provider's operator fields (nor their operator-only values, unless the
   * policy allows them); keeping a value already saved (`previous`) is not setting it.
   */
  const validateConfig = (companyId: string, driver: unknown, config: unknown, actor: Saver = "operator", previous?: Record<string, unknown>) =>
    Effect.gen(function* () {
      if (driver !== "local" && driver !== "sandbox") return yield* invalid([`driver: must be "local" or "sandbox"`])
      const cfg = config === undefined ? {} : config
      if (!isRecord(cfg)) return yield* invalid(["config: must be an object"])
      const errors: Array<string> = []
      if (cfg.env !== undefined) {
        if (!isStringMap(cfg.env)) errors.push("config.env: must map variable names to strings")
        else for (const k of Object.keys(cfg.env)) if (!ENV_NAME_RE.test(k)) errors.push(`config.env: invalid variable name "${k}"`)
      }
      if (driver === "local") {
        for (const k of Object.keys(cfg)) if (k !== "env" && k !== "workspacePath") errors.push(`config.${k}: unknown field for a local environment`)
        if (cfg.workspacePath !== undefined && typeof cfg.workspacePath !== "string") errors.push("config.workspacePath: must be a string")
        if (errors.length > 0) return yield* invalid(errors)
        return cfg
      }
      if (typeof cfg.provider !== "string" || cfg.provider.length === 0) errors.push(`config.provider: required ("<pluginId>/<driverKey>" or "<driverKey>")`)
      for (const k of ["timeoutMs", "ttlMs"] as const) {
        if (cfg[k] !== undefined && (typeof cfg[k] !== "number" || !Number.isInteger(cfg[k]) || (cfg[k] as number) <= 0)) errors.push(`config.${k}: must be a positive integer`)
      }
      if (cfg.reuseLease !== undefined && typeof cfg.reuseLease !== "boolean") errors.push("config.reuseLease: must be a boolean")
      if (cfg.onFailure !== undefined && cfg.onFailure !== "release" && cfg.onFailure !== "destroy") errors.push(`config.onFailure: must be "release" or "destroy"`)
      if (errors.length > 0) return yield* invalid(errors)
      const provider = yield* Effect.mapError(providers.resolve(cfg.provider as string), (e) => invalid([`config.provider: ${e.message}`]))
      const providerPart: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(cfg)) if (!(HOST_FIELDS as ReadonlyArray<string>).includes(k)) providerPart[k] = v
      const policy = yield* operator.policy(providerKey(provider))
      if (actor === "company") {
        for (const [k, mark] of operatorFields(provider.configSchema)) {
          const v = providerPart[k]
          if (v === undefined || (previous !== undefined && sameJson(previous[k], v))) continue
          if (mark._tag === "field") {
            errors.push(`config.${k}: set by the operator's policy for ${providerKey(provider)}, not by a company`)
          } else if (mark.values.some((x) => sameJson(x, v)) && !(policy.allow[k] ?? []).some((x) => sameJson(x, v))) {
            errors.push(`config.${k}: ${JSON.stringify(v)} needs the operator's permission (allow.${k} in the policy for ${providerKey(provider)})`)
          }
        }
        if (errors.length > 0) return yield* invalid(errors)
      }
      // the provider validates what it will get: the company's part with the policy merged in
      const effective = { ...providerPart, ...policy.set }
      const schemaErrors = validateAgainst(provider.configSchema, effective)
      if (schemaErrors.length > 0) return yield* invalid(schemaErrors.map((e) => `config${e === "/" ? "" : e.startsWith("/") ? e.replace(/^\//, ".").replace(/\//g, ".") : `: ${e}`}`))
      // secret refs must name secrets of this company (SPEC §14: never another company's)
      for (const ref of secretRefPaths(providerPart)) {
        const owner = yield* sql<{ company_id: string }>`SELECT company_id FROM secrets WHERE id = ${ref.secretId}`.pipe(Effect.orDie)
        if (owner.length === 0 || owner[0]!.company_id !== companyId) errors.push(`config.${ref.path}: secret "${ref.secretId}" not found in this company`)
      }
      if (errors.length > 0) return yield* invalid(errors)
      let normalized = effective
      if (provider.supportedMethods.includes("environmentValidateConfig")) {
        const r = (yield* providers.call(provider.pluginId, "environmentValidateConfig", { driverKey: provider.driverKey, config: effective }, { companyId }).pipe(
          Effect.mapError((e) => invalid([`provider validation failed: ${e.message}`]))
        )) as { ok?: boolean; errors?: Array<string>; normalizedConfig?: Record<string, unknown> } | null
        if (!r || r.ok === false) return yield* invalid(r?.errors && r.errors.length > 0 ? r.errors.map((e) => `provider: ${e}`) : ["provider: config rejected"])
        if (r.normalizedConfig && isRecord(r.normalizedConfig)) {
          // the provider may normalize; secret fields must still be refs
          const again = validateAgainst(provider.configSchema, r.normalizedConfig)
          if (again.length > 0) return yield* invalid(again.map((e) => `provider normalizedConfig ${e}`))
          normalized = r.normalizedConfig
        }
      }
      // the policy's values are not stored: a later policy change reaches every environment
      const stored: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(normalized)) if (!(k in policy.set) || k in providerPart) stored[k] = v
      const hostPart: Record<string, unknown> = {}
      for (const k of HOST_FIELDS) if (cfg[k] !== undefined) hostPart[k] = cfg[k]
      hostPart.provider = `${provider.pluginId}/${provider.driverKey}`
      return { ...stored, ...hostPart }
    })

  const checkName = (name: unknown): Effect.Effect<string, EnvironmentInvalid> =>
    typeof name === "string" && name.trim().length > 0 && name.length <= 100
      ? Effect.succeed(name.trim())
      : Effect.fail(invalid(["name: required, 1–100 characters"]))

  const insert = (companyId: string, name: string, description: string | null, driver: Driver, config: Record<string, unknown>) =>
    Effect.gen(function* () {
      const dup = yield* sql`SELECT id FROM environments WHERE company_id = ${companyId} AND name = ${name}`.pipe(Effect.orDie)
      if (dup.length > 0) return yield* new EnvironmentConflict({ message: `an environment named "${name}" already exists in this company` })
      const now = yield* Clock.currentTimeMillis
      const id = randomUUID()
      return yield* withEvent(Effect.gen(function* () {
        yield* sql`INSERT INTO environments (id, company_id, name, description, driver, status, config, created_at, updated_at)
          VALUES (${id}, ${companyId}, ${name}, ${description}, ${driver}, 'active', ${JSON.stringify(config)}, ${now}, ${now})`.pipe(
          Effect.mapError(() => new EnvironmentConflict({ message: `an environment named "${name}" already exists in this company` }))
        )
        const env = yield* Effect.orDie(get(id))
        yield* emit("environment.created", env)
        return env
      }))
    })

  const local = (companyId: string) =>
    Effect.gen(function* () {
      yield* companies.get(companyId)
      const rows = yield* sql<Row>`SELECT * FROM environments WHERE company_id = ${companyId} AND driver = 'local' AND name = 'local'`.pipe(Effect.orDie)
      if (rows.length > 0) return toEnv(rows[0]!)
      return yield* insert(companyId, "local", "This machine (created on demand)", "local", {}).pipe(
        Effect.catchTag("EnvironmentConflict", () =>
          sql<Row>`SELECT * FROM environments WHERE company_id = ${companyId} AND name = 'local'`.pipe(Effect.orDie, Effect.map((r) => toEnv(r[0]!))))
      )
    })

  const localIsTheOperators = new OperatorOnly({
    message: "local environments run on the host: only the operator (admin token) creates or changes them; a company runs in one when the operator grants it"
  })

  const requireLocalGrant = (companyId: string, env: Environment) =>
    Effect.flatMap(operator.localGranted(companyId), (granted) => granted
      ? Effect.void
      : Effect.fail(new LocalNotGranted({
        companyId,
        message: `environment "${env.name}" is local (it runs on the host) and the operator has not granted company "${companyId}" the local driver ` +
          `(gantry local-grants grant ${companyId})`
      })))

  const policyView = (provider: ProviderInfo): Effect.Effect<PolicyView> =>
    Effect.map(operator.policy(providerKey(provider)), (policy) => ({
      provider: providerKey(provider),
      policy,
      operatorFields: [...operatorFields(provider.configSchema)].map(([field, m]) =>
        m._tag === "field" ? { field, kind: "field" as const } : { field, kind: "values" as const, values: m.values })
    }))

  const resolveForPolicy = (provider: string) =>
    Effect.mapError(providers.resolve(provider), (e) => new ProviderNotInstalled({ provider, message: e.message }))

  const sandboxSettings = (env: Environment) =>
    Effect.gen(function* () {
      const c = env.config
      const provider = yield* Effect.mapError(providers.resolve(String(c.provider)), (e) =>
        new EnvironmentUnavailable({ environmentId: env.id, message: `environment "${env.name}": ${e.message}` }))
      const providerPart: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(c)) if (!(HOST_FIELDS as ReadonlyArray<string>).includes(k)) providerPart[k] = v
      const providerConfig = yield* effectiveProviderConfig(provider, providerPart)
      return {
        provider,
        providerConfig,
        policy: {
          onFailure: c.onFailure === "destroy" ? "destroy" : "release",
          ttlMs: typeof c.ttlMs === "number" ? c.ttlMs : defaultPolicy.ttlMs,
          timeoutMs: typeof c.timeoutMs === "number" ? c.timeoutMs : defaultPolicy.timeoutMs,
          reuse: c.reuseLease === true
        },
        env: isStringMap(c.env) ? c.env : {}
      } satisfies SandboxSettings
    })

  const step = <A, E, R>(name: string, eff: Effect.Effect<A, E, R>, steps: Array<ProbeStep>, detail?: (a: A) => string) =>
    Effect.gen(function* () {
      const t0 = yield* Clock.currentTimeMillis
      const r = yield* Effect.either(eff)
      const ms = (yield* Clock.currentTimeMillis) - t0
      if (r._tag === "Left") {
        steps.push({ step: name, ok: false, ms, detail: String((r.left as { message?: unknown })?.message ?? r.left) })
      } else {
        const d = detail?.(r.right)
        steps.push(d === undefined ? { step: name, ok: true, ms } : { step: name, ok: true, ms, detail: d })
      }
      return r
    })

  return Environments.of({
    create: Effect.fn("Environments.create")(function* (companyId, input, options) {
      yield* companies.get(companyId)
      if (!isRecord(input)) return yield* invalid(["body: must be an object"])
      if (input.driver === "local" && options?.actor === "company") return yield* localIsTheOperators
      const name = yield* checkName(input.name)
      if (input.description !== undefined && input.description !== null && typeof input.description !== "string") return yield* invalid(["description: must be a string"])
      const config = yield* validateConfig(companyId, input.driver, input.config, options?.actor)
      return yield* insert(companyId, name, input.description ?? null, input.driver, config)
    }),
    get,
    list: (companyId, o) =>
      Effect.zipRight(companies.get(companyId),
        (o?.includeArchived
          ? sql<Row>`SELECT * FROM environments WHERE company_id = ${companyId} ORDER BY created_at, id`
          : sql<Row>`SELECT * FROM environments WHERE company_id = ${companyId} AND status = 'active' ORDER BY created_at, id`).pipe(
          Effect.map((rows) => rows.map(toEnv)),
          Effect.orDie
        )),
    patch: Effect.fn("Environments.patch")(function* (id, input, options) {
      const env = yield* get(id)
      if (!isRecord(input)) return yield* invalid(["body: must be an object"])
      if (env.driver === "local" && options?.actor === "company") return yield* localIsTheOperators
      const name = input.name === undefined ? env.name : yield* checkName(input.name)
      if (input.description !== undefined && input.description !== null && typeof input.description !== "string") return yield* invalid(["description: must be a string"])
      const config = input.config === undefined ? env.config : yield* validateConfig(env.companyId, env.driver, input.config, options?.actor, env.config)
      if (name !== env.name) {
        const dup = yield* sql`SELECT id FROM environments WHERE company_id = ${env.companyId} AND name = ${name} AND id <> ${id}`.pipe(Effect.orDie)
        if (dup.length > 0) return yield* new EnvironmentConflict({ message: `an environment named "${name}" already exists in this company` })
      }
      const now = yield* Clock.currentTimeMillis
      const description = input.description === undefined ? env.description : input.description
      return yield* withEvent(Effect.gen(function* () {
        yield* sql`UPDATE environments SET name = ${name}, description = ${description}, config = ${JSON.stringify(config)}, updated_at = ${now}
          WHERE id = ${id}`.pipe(Effect.orDie)
        const updated = yield* Effect.orDie(get(id))
        yield* emit("environment.updated", updated)
        return updated
      }))
    }),
    archive: (id) =>
      Effect.gen(function* () {
        yield* get(id)
        const now = yield* Clock.currentTimeMillis
        return yield* withEvent(Effect.gen(function* () {
          yield* sql`UPDATE environments SET status = 'archived', updated_at = ${now} WHERE id = ${id}`.pipe(Effect.orDie)
          const env = yield* Effect.orDie(get(id))
          yield* emit("environment.updated", env)
          return env
        }))
      }),
    remove: (id) =>
      Effect.gen(function* () {
        const env = yield* get(id)
        const live = yield* leases.liveCount(id)
        if (live > 0) return yield* new EnvironmentInUse({ environmentId: id, liveLeases: live, message: `environment "${env.name}" has ${live} live lease(s); archive it or wait for them to end` })
        yield* sql`DELETE FROM environments WHERE id = ${id}`.pipe(Effect.orDie)
        yield* sql`UPDATE companies SET default_environment_id = NULL WHERE default_environment_id = ${id}`.pipe(Effect.orDie)
      }),
    local,
    select: (companyId, c) =>
      Effect.gen(function* () {
        const company = yield* companies.get(companyId)
        const chosen = c.explicit ?? c.agentDefault ?? company.defaultEnvironmentId ?? null
        if (chosen === null) {
          // the implicit fallback: nothing is created unless the operator granted the local driver
          if (!(yield* operator.localGranted(companyId))) {
            return yield* new NoEnvironment({
              companyId,
              message: `company "${companyId}" has no environment to run in: choose one for the run, the agent or the company, ` +
                `or have the operator grant it the local driver (gantry local-grants grant ${companyId})`
            })
          }
          return yield* local(companyId)
        }
        const env = yield* get(chosen)
        if (env.companyId !== companyId) return yield* new EnvironmentNotFound({ environmentId: chosen, message: `environment "${chosen}" not found` })
        if (env.status === "archived") return yield* new EnvironmentUnavailable({ environmentId: env.id, message: `environment "${env.name}" is archived` })
        if (env.driver === "local") yield* requireLocalGrant(companyId, env)
        if (env.driver === "sandbox") yield* sandboxSettings(env)
        return env
      }),
    sandboxSettings,
    probeConfig: (companyId, input, options) =>
      Effect.gen(function* () {
        yield* companies.get(companyId)
        if (isRecord(input) && input.driver === "local" && options?.actor === "company") return yield* localIsTheOperators
        const config = yield* validateConfig(companyId, input.driver, input.config, options?.actor)
        if (input.driver === "local") return { ok: true, summary: "local environment: commands run on this host", steps: [] }
        const provider = yield* Effect.mapError(providers.resolve(String(config.provider)), (e) => invalid([e.message]))
        const providerPart: Record<string, unknown> = {}
        for (const [k, v] of Object.entries(config)) if (!(HOST_FIELDS as ReadonlyArray<string>).includes(k)) providerPart[k] = v
        const providerConfig = yield* effectiveProviderConfig(provider, providerPart)
        if (!provider.supportedMethods.includes("environmentProbe")) return { ok: true, summary: "config valid (the provider has no probe)", steps: [] }
        const steps: Array<ProbeStep> = []
        const r = yield* step("probe", providers.call(provider.pluginId, "environmentProbe", {
          driverKey: provider.driverKey, companyId, environmentId: "unsaved", config: providerConfig
        }, { companyId }), steps)
        if (r._tag === "Left") return { ok: false, summary: steps[0]?.detail ?? "probe failed", steps }
        const p = r.right as { ok?: boolean; summary?: string; diagnostics?: Array<unknown> } | null
        return { ok: p?.ok === true, summary: p?.summary ?? (p?.ok ? "ok" : "probe failed"), steps, ...(p?.diagnostics ? { diagnostics: p.diagnostics } : {}) }
      }),
    probe: (id) =>
      Effect.gen(function* () {
        const env = yield* get(id)
        if (env.status === "archived") return yield* new EnvironmentUnavailable({ environmentId: id, message: `environment "${env.name}" is archived` })
        const steps: Array<ProbeStep> = []
        if (env.driver === "local") {
          yield* requireLocalGrant(env.companyId, env)
          const r = yield* step("execute true", executor.execute({ _tag: "local", cwd: "/" }, { command: "true", env: {}, timeoutMs: 10_000 }), steps, (x) => `exit ${x.exitCode}`)
          const ok = r._tag === "Right" && r.right.exitCode === 0
          return { ok, summary: ok ? "local: ok" : "local: `true` failed", steps }
        }
        const s = yield* sandboxSettings(env)
        const cycle = Effect.scoped(Effect.gen(function* () {
          const acquired = yield* step("acquire", leases.acquire({
            companyId: env.companyId, environmentId: env.id, runId: null, provider: s.provider, config: s.providerConfig,
            policy: { ...s.policy, ttlMs: Math.min(s.policy.ttlMs, 10 * 60_000), reuse: false }
          }), steps, (l) => `lease ${l.id} (${l.providerLeaseId})`)
          if (acquired._tag === "Left") return false
          const exec = yield* step("execute true", executor.execute({ _tag: "sandbox", lease: acquired.right, cwd: undefined }, { command: "true", env: s.env, timeoutMs: s.policy.timeoutMs }), steps, (x) => `exit ${x.exitCode}`)
          return exec._tag === "Right" && exec.right.exitCode === 0
        }))
        const t0 = yield* Clock.currentTimeMillis
        const execOk = yield* cycle
        // the release happened when the cycle's scope closed; report it from the lease record
        const [lease] = yield* leases.list({ environmentId: env.id }).pipe(Effect.map((l) => l.filter((x) => x.runId === null)))
        const released = lease?.status === "released"
        steps.push(released
          ? { step: "release", ok: true, ms: (yield* Clock.currentTimeMillis) - t0 }
          : { step: "release", ok: false, ms: (yield* Clock.currentTimeMillis) - t0, detail: `lease status ${lease?.status ?? "unknown"}${lease?.failureReason ? `: ${lease.failureReason}` : ""}` })
        const ok = execOk && released
        return { ok, summary: ok ? `sandbox ${s.provider.pluginId}/${s.provider.driverKey}: acquire → execute → release ok` : "sandbox probe failed", steps }
      }),
    getPolicy: (provider) => Effect.flatMap(resolveForPolicy(provider), policyView),
    setPolicy: (provider, input) =>
      Effect.gen(function* () {
        const p = yield* resolveForPolicy(provider)
        const marks = operatorFields(p.configSchema)
        const errors: Array<string> = []
        if (!isRecord(input)) return yield* invalid(["body: must be an object"])
        const set = input.set ?? {}
        const allow = input.allow ?? {}
        if (!isRecord(set)) errors.push("set: must be an object")
        if (!isRecord(allow)) errors.push("allow: must be an object")
        if (errors.length > 0) return yield* invalid(errors)
        const props = (isRecord(p.configSchema.properties) ? p.configSchema.properties : {}) as Record<string, Record<string, unknown>>
        for (const [k, v] of Object.entries(set)) {
          if (!marks.has(k)) {
            errors.push(`set.${k}: not an operator field of ${providerKey(p)} (operator fields: ${[...marks.keys()].join(", ") || "none"})`)
            continue
          }
          for (const e of validateAgainst({ type: "object", properties: { [k]: props[k] ?? {} } }, { [k]: v })) {
            errors.push(`set${e.replace(/^\//, ".").replace(/\//g, ".")}`)
          }
        }
        for (const [k, values] of Object.entries(allow)) {
          const mark = marks.get(k)
          if (!mark || mark._tag !== "values") {
            errors.push(`allow.${k}: not a field with operator-only values in ${providerKey(p)}`)
            continue
          }
          if (!Array.isArray(values)) {
            errors.push(`allow.${k}: must be an array`)
            continue
          }
          for (const v of values) if (!mark.values.some((x) => sameJson(x, v))) errors.push(`allow.${k}: ${JSON.stringify(v)} is not one of ${JSON.stringify(mark.values)}`)
        }
        if (errors.length > 0) return yield* invalid(errors)
        yield* operator.storePolicy(providerKey(p), { set, allow: allow as Record<string, ReadonlyArray<unknown>> })
        return yield* policyView(p)
      }),
    clearPolicy: (provider) =>
      Effect.gen(function* () {
        const p = yield* resolveForPolicy(provider)
        yield* operator.clearPolicy(providerKey(p))
        return yield* policyView(p)
      })
  })
})

export const layer = Layer.effect(Environments, make)
