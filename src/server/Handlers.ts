// Handlers of every API group: thin mappings from HTTP to the services, with the company-scope check
// (`requireCompany`) before any work and domain errors mapped to the API error format.
import { HttpApiBuilder, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Cause, Clock, Duration, Effect, Layer, Option, Stream } from "effect"
import { randomUUID } from "node:crypto"
import { Environments, type Saver } from "../environments/Environments.js"
import { OperatorPolicy } from "../environments/Operator.js"
import { Leases } from "../environments/Leases.js"
import { PluginAdmin } from "../environments/PluginAdmin.js"
import * as JobScheduler from "../host/capabilities/JobScheduler.js"
import { Redactor } from "../host/capabilities/Redactor.js"
import { SecretStore } from "../host/capabilities/SecretStore.js"
import { HostOptions, HOST_VERSION } from "../host/HostOptions.js"
import { PluginConfigs } from "../host/PluginConfigs.js"
import { PluginHost, type PluginSnapshot } from "../host/PluginHost.js"
import { CapabilityStores } from "../host/Stores.js"
import { Database } from "../store/Database.js"
import { Agents } from "../work/Agents.js"
import { Companies } from "../work/Companies.js"
import { Runs, type RunOutput } from "../work/Runs.js"
import { Runtime } from "../work/Runtime.js"
import { GantryApi } from "./Api.js"
import { ApiTokens, CurrentActor, requireAdmin, requireCompany, requireOwner, type TokenInfo } from "./Auth.js"
import { api, apiError, toApiError } from "./errors.js"

const bearerOf = Effect.map(HttpServerRequest.HttpServerRequest, (req) => (req.headers.authorization ?? "").replace(/^Bearer\s+/i, ""))

/** Who is asking, when a route does not require a token: the admin, or anyone else. */
const callerIsAdmin = Effect.gen(function* () {
  const token = yield* bearerOf
  if (token.length === 0 || token.split(".").length === 3) return false
  const actor = yield* Effect.either((yield* ApiTokens).authenticate(token))
  return actor._tag === "Right" && actor.right.kind === "admin"
})

const HEALTH_DB_TIMEOUT = Duration.seconds(3)

const HealthLive = HttpApiBuilder.group(GantryApi, "health", (h) =>
  h.handle("health", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const check = yield* sql`SELECT 1 AS one`.pipe(
        Effect.timeoutFail({ duration: HEALTH_DB_TIMEOUT, onTimeout: () => new Error(`no answer within ${Duration.format(HEALTH_DB_TIMEOUT)}`) }),
        Effect.either
      )
      const admin = yield* callerIsAdmin
      const o = yield* HostOptions
      const db = yield* Database
      const details = admin ? { instanceId: o.instanceId, version: HOST_VERSION, database: db.dialect } : {}
      if (check._tag === "Right") return { ok: true, status: "ok" as const, ...details }
      const why = String((check.left as { message?: unknown }).message ?? check.left)
      // anonymous callers learn that the database is the problem, not how it is set up
      return yield* Effect.fail({ ok: false, status: "degraded" as const, reason: admin ? `database: ${why}` : "database unavailable", ...details })
    })))

const tokenJson = (t: TokenInfo) => ({ ...t })
const actorSaver = Effect.map(CurrentActor, (a): Saver => (a.kind === "admin" ? "operator" : "company"))

const CompaniesLive = HttpApiBuilder.group(GantryApi, "companies", (h) =>
  h
    .handle("list", () =>
      Effect.gen(function* () {
        const actor = yield* CurrentActor
        const all = yield* (yield* Companies).list
        return actor.kind === "admin" ? all : all.filter((c) => actor.kind === "company" && c.id === actor.companyId)
      }))
    .handle("create", ({ payload }) => Effect.zipRight(requireAdmin, Effect.flatMap(Companies, (c) => api(c.create(payload.id ? { name: payload.name, id: payload.id } : { name: payload.name })))))
    .handle("get", ({ path }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(Companies, (c) => api(c.get(path.companyId)))))
    .handle("setDefaultEnvironment", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireCompany(path.companyId)
        if (payload.environmentId !== null) {
          const env = yield* api((yield* Environments).get(payload.environmentId))
          if (env.companyId !== path.companyId) return yield* Effect.fail(apiError(404, "environment_not_found", `environment "${payload.environmentId}" not found`))
          if (env.status === "archived") return yield* Effect.fail(apiError(422, "environment_unavailable", `environment "${env.name}" is archived`))
        }
        return yield* api((yield* Companies).setDefaultEnvironment(path.companyId, payload.environmentId))
      }))
    .handle("createToken", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        yield* api((yield* Companies).get(path.companyId))
        let expiresAt: number | null = null
        if (payload.expiresAt !== undefined) {
          expiresAt = Date.parse(payload.expiresAt)
          if (!Number.isFinite(expiresAt)) return yield* Effect.fail(apiError(422, "token_invalid", "expiresAt: must be an ISO 8601 date-time"))
        }
        const t = yield* api((yield* ApiTokens).createCompanyToken(path.companyId, {
          name: payload.name ?? null, ...(payload.role ? { role: payload.role } : {}), expiresAt
        }))
        return { ...tokenJson(t.info), token: t.token }
      })))

const TokensLive = HttpApiBuilder.group(GantryApi, "tokens", (h) =>
  h
    .handle("list", ({ urlParams }) =>
      Effect.zipRight(requireAdmin, Effect.flatMap(ApiTokens, (t) =>
        Effect.map(t.list(urlParams.companyId !== undefined ? { companyId: urlParams.companyId } : {}), (ts) => ts.map(tokenJson)))))
    .handle("get", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(ApiTokens, (t) => Effect.map(api(t.get(path.id)), tokenJson))))
    .handle("revoke", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(ApiTokens, (t) => Effect.map(api(t.revoke(path.id)), tokenJson))))
    .handle("rotate", ({ path }) =>
      Effect.zipRight(requireAdmin, Effect.flatMap(ApiTokens, (t) => Effect.map(api(t.rotate(path.id)), (r) => ({ ...tokenJson(r.info), token: r.token }))))))

const OperatorLive = HttpApiBuilder.group(GantryApi, "operator", (h) => {
  const grantOf = (companyId: string) =>
    Effect.map((Effect.flatMap(OperatorPolicy, (o) => o.localGrants)), (gs) => {
      const g = gs.find((x) => x.companyId === companyId)
      return { companyId, granted: g !== undefined, grantedAt: g?.grantedAt ?? null }
    })
  const provider = (p: { readonly pluginId: string; readonly driverKey: string }) => `${p.pluginId}/${p.driverKey}`
  return h
    .handle("localGrants", () =>
      Effect.zipRight(requireAdmin, Effect.flatMap(OperatorPolicy, (o) =>
        Effect.map(o.localGrants, (gs) => gs.map((g) => ({ companyId: g.companyId, granted: true, grantedAt: g.grantedAt }))))))
    .handle("grantLocal", ({ path }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        yield* api((yield* Companies).get(path.companyId))
        const g = yield* (yield* OperatorPolicy).grantLocal(path.companyId)
        return { companyId: g.companyId, granted: true, grantedAt: g.grantedAt }
      }))
    .handle("revokeLocal", ({ path }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        yield* api((yield* Companies).get(path.companyId))
        yield* (yield* OperatorPolicy).revokeLocal(path.companyId)
        return yield* grantOf(path.companyId)
      }))
    .handle("policies", () =>
      Effect.zipRight(requireAdmin, Effect.flatMap(OperatorPolicy, (o) => o.policies)).pipe(
        Effect.flatMap((ps) => Effect.forEach(ps, (p) =>
          Effect.flatMap(Environments, (e) => e.getPolicy(p.provider)).pipe(
            // a provider no longer installed: its stored policy, no field list
            Effect.orElseSucceed(() => ({ provider: p.provider, policy: p.policy, operatorFields: [] })))))))
    .handle("getPolicy", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(Environments, (e) => api(e.getPolicy(provider(path))))))
    .handle("setPolicy", ({ path, payload }) =>
      Effect.zipRight(requireAdmin, Effect.flatMap(Environments, (e) => api(e.setPolicy(provider(path), {
        ...(payload.set !== undefined ? { set: payload.set } : {}), ...(payload.allow !== undefined ? { allow: payload.allow } : {})
      })))))
    .handle("clearPolicy", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(Environments, (e) => api(e.clearPolicy(provider(path))))))
})

const SecretsLive = HttpApiBuilder.group(GantryApi, "secrets", (h) =>
  h
    .handle("list", ({ path }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(SecretStore, (s) => Effect.zipRight(api((Effect.flatMap(Companies, (c) => c.get(path.companyId)))), s.list(path.companyId)))))
    .handle("create", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireCompany(path.companyId)
        yield* api((yield* Companies).get(path.companyId))
        return yield* api((yield* SecretStore).create(path.companyId, payload.name, payload.value))
      }))
    .handle("rotate", ({ path, payload }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(SecretStore, (s) => api(s.rotate(path.id, payload.value, { companyId: path.companyId })))))
    .handle("get", ({ path }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(SecretStore, (s) => api(s.get(path.id, { companyId: path.companyId })))))
    .handle("delete", ({ path }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(SecretStore, (s) => Effect.as(api(s.delete(path.id, { companyId: path.companyId })), { deleted: true })))))

/** What a company token sees of a plugin: identity and status; the rest is the operator's. */
const pluginView = (admin: boolean) => (p: PluginSnapshot) =>
  admin ? p : { pluginId: p.pluginId, version: p.version, displayName: p.displayName, status: p.status, capabilities: p.capabilities }

/** A plugin stopped by its state (disabled, failed, stopped) answers 409 with that state; a worker
 * between states (starting, restarting) is the host's condition and stays a 503. */
const requireRunning = (pluginId: string) =>
  Effect.gen(function* () {
    const s = yield* api((yield* PluginHost).status(pluginId))
    if (s.workerStatus === "running") return
    if (s.status === "disabled" || s.status === "error" || s.workerStatus === "stopped" || s.workerStatus === "crashed") {
      return yield* Effect.fail(apiError(409, "plugin_not_running", `plugin "${pluginId}" is not running (status ${s.status}, worker ${s.workerStatus})`,
        { status: s.status, workerStatus: s.workerStatus }))
    }
  })

/** Whether a plugin call failed because the worker has no handler for `key`. Gantry's SDK says so in
 * `data.reason`; a Paperclip-SDK worker only in its message, which names the key — matched exactly. */
const isUnknownKey = (kind: "data" | "action", key: string) => (e: unknown) => {
  const err = e as { code?: unknown; message?: unknown; data?: unknown }
  if (err?.code !== -32002) return false
  const data = err.data as { reason?: unknown; key?: unknown } | undefined
  return (data?.reason === "unknown_key" && data.key === key) || err.message === `No ${kind} handler registered for key "${key}"`
}

/** Call a plugin's data/action handler: an unknown key is a 404, a plugin not running a 409. */
const callKeyed = (kind: "data" | "action", pluginId: string, key: string, call: Effect.Effect<unknown, unknown, PluginHost>) =>
  Effect.gen(function* () {
    yield* requireRunning(pluginId)
    return yield* call.pipe(
      Effect.catchIf(isUnknownKey(kind, key), () => Effect.fail(apiError(404, `${kind}_key_not_found`, `plugin "${pluginId}" has no ${kind} handler "${key}"`))),
      // stopped while the call was on its way: answer with the state it is in now
      Effect.catchIf((e: unknown) => (e as { _tag?: unknown })?._tag === "WorkerUnavailable", (e) => Effect.zipRight(requireRunning(pluginId), Effect.fail(e))),
      Effect.mapError(toApiError)
    )
  })

const PluginsLive = HttpApiBuilder.group(GantryApi, "plugins", (h) =>
  h
    .handle("list", () => Effect.gen(function* () {
      const view = pluginView((yield* CurrentActor).kind === "admin")
      return (yield* (yield* PluginHost).list).map(view)
    }))
    .handle("get", ({ path }) => Effect.gen(function* () {
      const view = pluginView((yield* CurrentActor).kind === "admin")
      return view(yield* api((yield* PluginHost).status(path.pluginId)))
    }))
    .handle("install", ({ payload }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        return yield* api((yield* PluginAdmin).install(payload.source, payload.linked === true ? { linked: true } : {}))
      }))
    .handle("upgrade", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        return yield* api((yield* PluginAdmin).upgrade(path.pluginId, payload.source, {
          allowDowngrade: payload.allowDowngrade === true,
          linked: payload.linked === true,
          drain: payload.drain === true,
          ...(payload.drainTimeoutMs !== undefined ? { drainTimeoutMs: payload.drainTimeoutMs } : {})
        }))
      }))
    .handle("uninstall", ({ path, urlParams }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        const purge = urlParams.purge === "true"
        yield* api((yield* PluginAdmin).uninstall(path.pluginId, {
          purge,
          drain: urlParams.drain === "true",
          ...(urlParams.drainTimeoutMs !== undefined ? { drainTimeoutMs: urlParams.drainTimeoutMs } : {})
        }))
        return { pluginId: path.pluginId, uninstalled: true, purged: purge }
      }))
    .handle("enable", ({ path }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        const host = yield* PluginHost
        yield* api(host.start(path.pluginId))
        return yield* api(host.status(path.pluginId))
      }))
    .handle("disable", ({ path }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        const host = yield* PluginHost
        yield* api(host.disable(path.pluginId))
        return yield* api(host.status(path.pluginId))
      }))
    .handle("logs", ({ path, urlParams }) =>
      Effect.gen(function* () {
        yield* requireAdmin
        yield* api((yield* PluginHost).status(path.pluginId))
        return yield* (yield* CapabilityStores).log.list(path.pluginId, Math.min(Math.max(urlParams.limit ?? 200, 1), 5_000))
      }))
    .handle("getConfig", ({ path }) =>
      Effect.gen(function* () {
        yield* requireCompany(path.companyId)
        yield* api((yield* Companies).get(path.companyId))
        return yield* api((yield* PluginConfigs).get(path.pluginId, path.companyId))
      }))
    .handle("putConfig", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireCompany(path.companyId)
        yield* api((yield* Companies).get(path.companyId))
        const r = yield* api((yield* PluginConfigs).save(path.pluginId, path.companyId, payload))
        return { ok: r.ok, warnings: [...r.warnings], errors: [...r.errors] }
      }))
    .handle("testConfig", ({ path, payload }) =>
      Effect.zipRight(requireAdmin,
        Effect.map(Effect.flatMap(PluginConfigs, (c) => api(c.test(path.pluginId, payload))), (r) => ({ ok: r.ok, warnings: [...r.warnings], errors: [...r.errors] }))))
    .handle("jobs", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(JobScheduler.JobScheduler, (j) => api(j.jobs(path.pluginId)))))
    .handle("jobRuns", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(JobScheduler.JobScheduler, (j) => api(j.runs(path.pluginId, path.jobKey)))))
    .handle("triggerJob", ({ path }) => Effect.zipRight(requireAdmin, Effect.flatMap(JobScheduler.JobScheduler, (j) => api(j.trigger(path.pluginId, path.jobKey)))))
    .handle("data", ({ path, payload }) =>
      Effect.gen(function* () {
        yield* requireCompany(path.companyId)
        yield* api((yield* Companies).get(path.companyId))
        return yield* callKeyed("data", path.pluginId, path.key,
          Effect.flatMap(PluginHost, (h) => h.call(path.pluginId, "getData", { key: path.key, companyId: path.companyId, params: payload.params ?? {} }, { companyId: path.companyId })))
      }))
    .handle("action", ({ path, payload }) =>
      Effect.gen(function* () {
        const actor = yield* CurrentActor
        yield* requireCompany(path.companyId)
        yield* api((yield* Companies).get(path.companyId))
        return yield* callKeyed("action", path.pluginId, path.key, Effect.flatMap(PluginHost, (h) => h.call(path.pluginId, "performAction", {
          key: path.key, companyId: path.companyId, params: payload.params ?? {},
          actorContext: { type: "user", userId: actor.kind === "admin" ? "admin" : null, companyId: path.companyId }
        }, { companyId: path.companyId })))
      })))

const MAX_WEBHOOK_BYTES = 1024 * 1024

const WebhooksLive = HttpApiBuilder.group(GantryApi, "webhooks", (h) =>
  h.handle("deliver", ({ path }) =>
    Effect.gen(function* () {
      const host = yield* PluginHost
      const status = yield* api(host.status(path.pluginId))
      const info = yield* api(host.manifest(path.pluginId))
      // the capability first: a manifest cannot declare webhooks without it, so checked second it could never answer
      if (!info.activeCapabilities.includes("webhooks.receive")) {
        return yield* Effect.fail(apiError(403, "capability_missing", `plugin "${path.pluginId}" lacks the webhooks.receive capability`))
      }
      if (!(info.manifest.webhooks ?? []).some((w) => w.endpointKey === path.endpointKey)) {
        return yield* Effect.fail(apiError(404, "webhook_not_found", `plugin "${path.pluginId}" declares no webhook "${path.endpointKey}"`))
      }
      if (status.workerStatus !== "running") yield* requireRunning(path.pluginId)
      const req = yield* HttpServerRequest.HttpServerRequest
      const rawBody = yield* req.text.pipe(Effect.mapError(() => apiError(400, "bad_request", "could not read the request body")))
      if (Buffer.byteLength(rawBody) > MAX_WEBHOOK_BYTES) return yield* Effect.fail(apiError(413, "payload_too_large", `webhook bodies are limited to ${MAX_WEBHOOK_BYTES} bytes`))
      const parsedBody: unknown = (req.headers["content-type"] ?? "").includes("json")
        ? yield* Effect.try(() => JSON.parse(rawBody) as unknown).pipe(Effect.orElseSucceed(() => undefined))
        : undefined
      const requestId = req.headers["x-request-id"] ?? req.headers["x-gantry-request-id"] ?? randomUUID()
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(req.headers)) if (k !== "authorization" && k !== "cookie") headers[k] = String(v)
      yield* api(host.call(path.pluginId, "handleWebhook", {
        endpointKey: path.endpointKey, headers, rawBody, ...(parsedBody !== undefined ? { parsedBody } : {}), requestId
      }))
      return { ok: true, requestId }
    })))

const EnvironmentsLive = HttpApiBuilder.group(GantryApi, "environments", (h) => {
  const owned = (id: string) =>
    Effect.gen(function* () {
      const env = yield* api((yield* Environments).get(id))
      yield* requireOwner("environment", id, env.companyId)
      return env
    })
  /** Archiving or deleting a local environment is changing it: the operator's. */
  const changeable = (id: string) =>
    Effect.gen(function* () {
      const env = yield* owned(id)
      if (env.driver === "local" && (yield* actorSaver) === "company") {
        return yield* Effect.fail(apiError(403, "operator_only", "local environments run on the host: only the operator (admin token) creates or changes them"))
      }
      return env
    })
  return h
    .handle("list", ({ path, urlParams }) => Effect.zipRight(requireCompany(path.companyId),
      Effect.flatMap(Environments, (e) => api(e.list(path.companyId, { includeArchived: urlParams.includeArchived === "true" })))))
    .handle("create", ({ path, payload }) => Effect.gen(function* () {
      yield* requireCompany(path.companyId)
      const actor = yield* actorSaver
      return yield* api((yield* Environments).create(path.companyId, payload as never, { actor }))
    }))
    .handle("probeConfig", ({ path, payload }) => Effect.gen(function* () {
      yield* requireCompany(path.companyId)
      const actor = yield* actorSaver
      return yield* api((yield* Environments).probeConfig(path.companyId, payload as never, { actor }))
    }))
    .handle("get", ({ path }) => owned(path.id))
    .handle("patch", ({ path, payload }) => Effect.gen(function* () {
      yield* owned(path.id)
      const actor = yield* actorSaver
      return yield* api((yield* Environments).patch(path.id, payload as never, { actor }))
    }))
    .handle("archive", ({ path }) => Effect.zipRight(changeable(path.id), Effect.flatMap(Environments, (e) => api(e.archive(path.id)))))
    .handle("delete", ({ path }) => Effect.zipRight(changeable(path.id), Effect.flatMap(Environments, (e) => Effect.as(api(e.remove(path.id)), { deleted: true }))))
    .handle("probe", ({ path }) => Effect.zipRight(owned(path.id), Effect.flatMap(Environments, (e) => api(e.probe(path.id)))))
    .handle("leases", ({ path }) => Effect.zipRight(owned(path.id), Effect.flatMap(Leases, (l) => l.list({ environmentId: path.id }))))
})

const AgentsLive = HttpApiBuilder.group(GantryApi, "agents", (h) => {
  const owned = (id: string) =>
    Effect.gen(function* () {
      const a = yield* api((yield* Agents).get(id))
      yield* requireOwner("agent", id, a.companyId)
      return a
    })
  return h
    .handle("list", ({ path }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(Agents, (a) => api(a.list(path.companyId)))))
    .handle("create", ({ path, payload }) => Effect.zipRight(requireCompany(path.companyId), Effect.flatMap(Agents, (a) => api(a.create(path.companyId, payload)))))
    .handle("get", ({ path }) => owned(path.id))
    .handle("patch", ({ path, payload }) => Effect.zipRight(owned(path.id), Effect.flatMap(Agents, (a) => api(a.update(path.id, payload)))))
    .handle("setDefaultEnvironment", ({ path, payload }) => Effect.zipRight(owned(path.id), Effect.flatMap(Agents, (a) => api(a.update(path.id, { defaultEnvironmentId: payload.environmentId })))))
    .handle("delete", ({ path }) => Effect.zipRight(owned(path.id), Effect.flatMap(Agents, (a) => Effect.as(api(a.remove(path.id)), { deleted: true }))))
})

const sseFrame = (m: RunOutput) =>
  m._tag === "chunk"
    ? `id: ${m.seq}\nevent: ${m.stream}\ndata: ${JSON.stringify({ seq: m.seq, stream: m.stream, chunk: m.chunk })}\n\n`
    : `event: end\ndata: ${JSON.stringify(m.run)}\n\n`

const RunsLive = HttpApiBuilder.group(GantryApi, "runs", (h) => {
  const owned = (id: string) =>
    Effect.gen(function* () {
      const r = yield* api((yield* Runs).get(id))
      yield* requireOwner("run", id, r.companyId)
      return r
    })
  return h
    .handle("start", ({ path, payload }) =>
      Effect.gen(function* () {
        const agent = yield* api((yield* Agents).get(path.id))
        yield* requireOwner("agent", path.id, agent.companyId)
        return yield* api((yield* Runs).start(agent.companyId, agent.id, {
          ...(payload.environmentId !== undefined ? { environmentId: payload.environmentId } : {}),
          ...(payload.env ? { env: payload.env } : {})
        }))
      }))
    .handle("list", ({ path, urlParams }) => Effect.zipRight(requireCompany(path.companyId),
      // an unknown company is a 404 like every other company route, not an empty list
      Effect.zipRight(api(Effect.flatMap(Companies, (c) => c.get(path.companyId))), Effect.flatMap(Runs, (r) => r.list(urlParams.agentId ? { agentId: urlParams.agentId, limit: urlParams.limit ?? 100 } : { companyId: path.companyId, limit: urlParams.limit ?? 100 })).pipe(
        Effect.map((runs) => runs.filter((r) => r.companyId === path.companyId))))))
    .handle("get", ({ path }) => owned(path.id))
    .handle("cancel", ({ path }) => Effect.zipRight(owned(path.id), Effect.flatMap(Runs, (r) => api(r.cancel(path.id)))))
    .handleRaw("output", ({ path }) =>
      Effect.gen(function* () {
        yield* owned(path.id)
        const runs = yield* Runs
        const req = yield* HttpServerRequest.HttpServerRequest
        const last = Number(req.headers["last-event-id"] ?? "0")
        const stream = runs.output(path.id, { afterSeq: Number.isFinite(last) ? last : 0 }).pipe(
          Stream.map(sseFrame),
          // a failed stream says so (the client reconnects with Last-Event-ID) instead of just stopping
          Stream.catchAllCause((cause) => Cause.isInterruptedOnly(cause)
            ? Stream.failCause(cause)
            : Stream.succeed(`event: error\ndata: ${JSON.stringify({ error: { code: "stream_failed", message: "the run output stream failed; reconnect with Last-Event-ID" } })}\n\n`)),
          Stream.encodeText
        )
        return HttpServerResponse.stream(stream, {
          contentType: "text/event-stream",
          headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
        })
      }))
    .handle("leases", ({ path }) => Effect.zipRight(owned(path.id), Effect.flatMap(Leases, (l) => l.list({ runId: path.id }))))
})

const RuntimeLive = HttpApiBuilder.group(GantryApi, "runtime", (h) =>
  h
    .handle("run", () => Effect.flatMap(bearerOf, (t) => Effect.flatMap(Runtime, (r) => api(r.whoami(t)))))
    .handle("heartbeat", () => Effect.flatMap(bearerOf, (t) => Effect.flatMap(Runtime, (r) => api(r.heartbeat(t)))))
    .handle("log", ({ payload }) => Effect.flatMap(bearerOf, (t) => Effect.flatMap(Runtime, (r) => api(r.log(t, { stream: payload.stream ?? "stdout", chunk: payload.chunk }))))))

export const layer = Layer.mergeAll(
  HealthLive, CompaniesLive, TokensLive, OperatorLive, SecretsLive, PluginsLive, WebhooksLive, EnvironmentsLive, AgentsLive, RunsLive, RuntimeLive
)

export { Clock, Option, Redactor }
