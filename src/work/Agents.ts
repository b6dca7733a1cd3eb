// Agents (SPEC §10): a command to run, its explicit env (values may be secret refs resolved per run),
// a default environment, an optional heartbeat (cron or everySeconds) and a timeout.
import { SqlClient } from "@effect/sql"
import { Clock, Context, Cron, Effect, Either, Layer, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { validateCron } from "../protocol/manifest.js"
import { isSecretRef } from "../host/jsonSchema.js"
import { CapabilityStores } from "../host/Stores.js"
import { Companies, type CompanyNotFound } from "./Companies.js"

export type Heartbeat = { readonly cron: string } | { readonly everySeconds: number }
export type EnvValue = string | { readonly type: "secret_ref"; readonly secretId: string; readonly version?: number }

export interface Agent {
  readonly id: string
  readonly companyId: string
  readonly name: string
  readonly command: string
  readonly args: ReadonlyArray<string>
  readonly env: Readonly<Record<string, EnvValue>>
  readonly defaultEnvironmentId: string | null
  readonly heartbeat: Heartbeat | null
  readonly timeoutMs: number
  readonly createdAt: string
  readonly updatedAt: string
}

export interface AgentInput {
  readonly name?: unknown
  readonly command?: unknown
  readonly args?: unknown
  readonly env?: unknown
  readonly defaultEnvironmentId?: unknown
  readonly heartbeat?: unknown
  readonly timeoutMs?: unknown
}

export class AgentNotFound extends Schema.TaggedError<AgentNotFound>()("AgentNotFound", {
  agentId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class AgentInvalid extends Schema.TaggedError<AgentInvalid>()("AgentInvalid", {
  message: Schema.String,
  errors: Schema.Array(Schema.String)
}) {
  get status() { return 422 }
}
export class AgentConflict extends Schema.TaggedError<AgentConflict>()("AgentConflict", {
  message: Schema.String
}) {
  get status() { return 409 }
}

export const DEFAULT_AGENT_TIMEOUT_MS = 10 * 60_000
const MAX_TIMEOUT_MS = 24 * 60 * 60_000
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/
const KNOWN = new Set(["name", "command", "args", "env", "defaultEnvironmentId", "heartbeat", "timeoutMs"])

type Row = {
  id: string; company_id: string; name: string; command: string; args: string; env: string
  default_environment_id: string | null; heartbeat: string | null; timeout_ms: number; created_at: number; updated_at: number
}
const toAgent = (r: Row): Agent => ({
  id: r.id,
  companyId: r.company_id,
  name: r.name,
  command: r.command,
  args: JSON.parse(r.args),
  env: JSON.parse(r.env),
  defaultEnvironmentId: r.default_environment_id,
  heartbeat: r.heartbeat === null ? null : JSON.parse(r.heartbeat),
  timeoutMs: Number(r.timeout_ms),
  createdAt: new Date(Number(r.created_at)).toISOString(),
  updatedAt: new Date(Number(r.updated_at)).toISOString()
})

/** The next heartbeat after `from` (ms), or null when the agent has none. */
export const nextHeartbeat = (hb: Heartbeat | null, from: number): number | null => {
  if (!hb) return null
  if ("everySeconds" in hb) return from + hb.everySeconds * 1000
  const parsed = Cron.parse(hb.cron, "UTC")
  return Either.isRight(parsed) ? Cron.next(parsed.right, new Date(from)).getTime() : null
}

export class Agents extends Context.Tag("gantry/Agents")<Agents, {
  readonly create: (companyId: string, input: AgentInput) => Effect.Effect<Agent, AgentInvalid | AgentConflict | CompanyNotFound>
  readonly get: (id: string) => Effect.Effect<Agent, AgentNotFound>
  readonly list: (companyId: string) => Effect.Effect<ReadonlyArray<Agent>, CompanyNotFound>
  readonly update: (id: string, input: AgentInput) => Effect.Effect<Agent, AgentNotFound | AgentInvalid | AgentConflict>
  readonly remove: (id: string) => Effect.Effect<void, AgentNotFound>
}>() {}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const companies = yield* Companies
  const stores = yield* CapabilityStores

  const get = (id: string) =>
    sql<Row>`SELECT * FROM agents WHERE id = ${id}`.pipe(
      Effect.orDie,
      Effect.flatMap((rows) => rows.length === 0
        ? Effect.fail(new AgentNotFound({ agentId: id, message: `agent "${id}" not found` }))
        : Effect.succeed(toAgent(rows[0]!)))
    )

  const emit = (eventType: string, a: Agent) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) => stores.events.emit({
      eventId: randomUUID(), eventType, occurredAt: new Date(now).toISOString(), entityId: a.id, entityType: "agent",
      actorType: "system", companyId: a.companyId, payload: { agentId: a.id, name: a.name }
    })).pipe(Effect.orDie)

  /** Validate a full (create) or partial (update) input against the previous agent. */
  const validate = (companyId: string, input: AgentInput, prev: Agent | undefined) =>
    Effect.gen(function* () {
      const errors: Array<string> = []
      if (typeof input !== "object" || input === null || Array.isArray(input)) return yield* new AgentInvalid({ message: "body: must be an object", errors: ["body: must be an object"] })
      for (const k of Object.keys(input)) if (!KNOWN.has(k)) errors.push(`${k}: unknown field`)
      const name = input.name === undefined ? prev?.name : input.name
      if (typeof name !== "string" || name.trim().length === 0 || name.length > 100) errors.push("name: required, 1–100 characters")
      const command = input.command === undefined ? prev?.command : input.command
      if (typeof command !== "string" || command.length === 0) errors.push("command: required non-empty string")
      const args = input.args === undefined ? prev?.args ?? [] : input.args
      if (!Array.isArray(args) || !args.every((a) => typeof a === "string")) errors.push("args: must be an array of strings")
      const env = input.env === undefined ? prev?.env ?? {} : input.env
      if (typeof env !== "object" || env === null || Array.isArray(env)) errors.push("env: must be an object")
      else for (const [k, v] of Object.entries(env)) {
        if (!ENV_NAME_RE.test(k)) errors.push(`env.${k}: invalid variable name`)
        else if (typeof v !== "string" && !isSecretRef(v)) errors.push(`env.${k}: must be a string or a secret reference {type:"secret_ref", secretId}`)
        else if (k.startsWith("GANTRY_")) errors.push(`env.${k}: GANTRY_* variables are set by the host`)
        else if (typeof v !== "string") {
          // a ref must name a secret of this company (SPEC §14: never another company's)
          const secretId = (v as { secretId: string }).secretId
          const owner = yield* sql<{ company_id: string }>`SELECT company_id FROM secrets WHERE id = ${secretId}`.pipe(Effect.orDie)
          if (owner.length === 0 || owner[0]!.company_id !== companyId) errors.push(`env.${k}: secret "${secretId}" not found in this company`)
        }
      }
      const timeoutMs = input.timeoutMs === undefined ? prev?.timeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS : input.timeoutMs
      if (typeof timeoutMs !== "number" || !Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_TIMEOUT_MS) errors.push(`timeoutMs: must be an integer between 1 and ${MAX_TIMEOUT_MS}`)
      const heartbeat = input.heartbeat === undefined ? prev?.heartbeat ?? null : input.heartbeat
      if (heartbeat !== null) {
        const hb = heartbeat as Record<string, unknown>
        if (typeof hb !== "object" || Array.isArray(hb)) errors.push("heartbeat: must be {cron} or {everySeconds}")
        else if ("cron" in hb && !("everySeconds" in hb)) {
          const e = typeof hb.cron === "string" ? validateCron(hb.cron) : "must be a 5-field cron string"
          if (e) errors.push(`heartbeat.cron: ${e}`)
          else if (Either.isLeft(Cron.parse(hb.cron as string, "UTC"))) errors.push(`heartbeat.cron: invalid cron "${hb.cron}"`)
        } else if ("everySeconds" in hb && !("cron" in hb)) {
          if (typeof hb.everySeconds !== "number" || !Number.isInteger(hb.everySeconds) || hb.everySeconds < 1) errors.push("heartbeat.everySeconds: must be a positive integer")
        } else errors.push("heartbeat: must be {cron} or {everySeconds}, not both")
      }
      const defaultEnvironmentId = input.defaultEnvironmentId === undefined ? prev?.defaultEnvironmentId ?? null : input.defaultEnvironmentId
      if (defaultEnvironmentId !== null) {
        if (typeof defaultEnvironmentId !== "string") errors.push("defaultEnvironmentId: must be a string or null")
        else {
          const env = yield* sql<{ company_id: string; status: string }>`SELECT company_id, status FROM environments WHERE id = ${defaultEnvironmentId}`.pipe(Effect.orDie)
          if (env.length === 0 || env[0]!.company_id !== companyId) errors.push(`defaultEnvironmentId: environment "${defaultEnvironmentId}" not found in this company`)
          else if (env[0]!.status === "archived") errors.push(`defaultEnvironmentId: environment "${defaultEnvironmentId}" is archived`)
        }
      }
      if (errors.length > 0) return yield* new AgentInvalid({ message: `invalid agent: ${errors.join("; ")}`, errors })
      return {
        name: (name as string).trim(), command: command as string, args: args as Array<string>, env: env as Record<string, EnvValue>,
        timeoutMs: timeoutMs as number, heartbeat: heartbeat as Heartbeat | null, defaultEnvironmentId: defaultEnvironmentId as string | null
      }
    })

  const nameTaken = (companyId: string, name: string, except: string) =>
    sql`SELECT id FROM agents WHERE company_id = ${companyId} AND name = ${name} AND id <> ${except}`.pipe(Effect.orDie, Effect.map((r) => r.length > 0))

  return Agents.of({
    create: Effect.fn("Agents.create")(function* (companyId, input) {
      yield* companies.get(companyId)
      const v = yield* validate(companyId, input, undefined)
      if (yield* nameTaken(companyId, v.name, "")) return yield* new AgentConflict({ message: `an agent named "${v.name}" already exists in this company` })
      const id = randomUUID()
      const now = yield* Clock.currentTimeMillis
      // the change and its event commit together (outbox)
      return yield* sql.withTransaction(Effect.gen(function* () {
        yield* sql`INSERT INTO agents (id, company_id, name, command, args, env, default_environment_id, heartbeat, timeout_ms, next_heartbeat_at, created_at, updated_at)
          VALUES (${id}, ${companyId}, ${v.name}, ${v.command}, ${JSON.stringify(v.args)}, ${JSON.stringify(v.env)}, ${v.defaultEnvironmentId},
          ${v.heartbeat ? JSON.stringify(v.heartbeat) : null}, ${v.timeoutMs}, ${nextHeartbeat(v.heartbeat, now)}, ${now}, ${now})`
        const agent = yield* Effect.orDie(get(id))
        yield* emit("agent.created", agent)
        return agent
      })).pipe(Effect.catchTag("SqlError", Effect.die))
    }),
    get,
    list: (companyId) =>
      Effect.zipRight(companies.get(companyId), sql<Row>`SELECT * FROM agents WHERE company_id = ${companyId} ORDER BY created_at, id`.pipe(
        Effect.map((rows) => rows.map(toAgent)), Effect.orDie)),
    update: Effect.fn("Agents.update")(function* (id, input) {
      const prev = yield* get(id)
      const v = yield* validate(prev.companyId, input, prev)
      if (yield* nameTaken(prev.companyId, v.name, id)) return yield* new AgentConflict({ message: `an agent named "${v.name}" already exists in this company` })
      const now = yield* Clock.currentTimeMillis
      const hbChanged = JSON.stringify(v.heartbeat) !== JSON.stringify(prev.heartbeat)
      return yield* sql.withTransaction(Effect.gen(function* () {
        yield* sql`UPDATE agents SET name = ${v.name}, command = ${v.command}, args = ${JSON.stringify(v.args)}, env = ${JSON.stringify(v.env)},
          default_environment_id = ${v.defaultEnvironmentId}, heartbeat = ${v.heartbeat ? JSON.stringify(v.heartbeat) : null},
          timeout_ms = ${v.timeoutMs}, updated_at = ${now} WHERE id = ${id}`
        if (hbChanged) yield* sql`UPDATE agents SET next_heartbeat_at = ${nextHeartbeat(v.heartbeat, now)} WHERE id = ${id}`
        const agent = yield* Effect.orDie(get(id))
        yield* emit("agent.updated", agent)
        return agent
      })).pipe(Effect.catchTag("SqlError", Effect.die))
    }),
    remove: (id) => Effect.zipRight(get(id), sql`DELETE FROM agents WHERE id = ${id}`.pipe(Effect.asVoid, Effect.orDie))
  })
})

export const layer = Layer.effect(Agents, make)
