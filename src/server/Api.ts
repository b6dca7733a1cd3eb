// The HTTP API (SPEC §12), all under /api: one HttpApiGroup per resource. Bodies are strict (unknown
// fields are refused); every error answers `{error: {code, message, details?}}`.
import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiSchema, OpenApi } from "@effect/platform"
import { JSONSchema, Schema } from "effect"
import { Authentication, RuntimeAuthentication } from "./Auth.js"
import { BadGateway, BadRequest, Conflict, Forbidden, GatewayTimeout, Internal, NotFound, NotImplementedError, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType } from "./errors.js"
import * as L from "./Limits.js"

const strict = <S extends Schema.Schema.Any>(s: S) => s.annotations({ parseOptions: { onExcessProperty: "error" } }) as unknown as S
const Json = Schema.Unknown
const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown })
const opt = Schema.optional

// ---- models ----
export const Company = Schema.Struct({ id: Schema.String, name: Schema.String, defaultEnvironmentId: Schema.NullOr(Schema.String), createdAt: Schema.String })
export const Secret = Schema.Struct({
  id: Schema.String, companyId: Schema.String, name: Schema.String, version: Schema.Int, createdAt: Schema.String, updatedAt: Schema.String
})
export const Environment = Schema.Struct({
  id: Schema.String, companyId: Schema.String, name: Schema.String, description: Schema.NullOr(Schema.String),
  driver: Schema.Literal("local", "sandbox"), status: Schema.Literal("active", "archived"), config: JsonObject,
  createdAt: Schema.String, updatedAt: Schema.String
})
export const Lease = Schema.Struct({
  id: Schema.String, companyId: Schema.String, environmentId: Schema.String, runId: Schema.NullOr(Schema.String),
  provider: Schema.String, providerLeaseId: Schema.NullOr(Schema.String), status: Schema.String, acquiredAt: Schema.NullOr(Schema.Int),
  lastUsedAt: Schema.Int, deadlineAt: Schema.Int, expiresAt: Schema.NullOr(Schema.Int), releasedAt: Schema.NullOr(Schema.Int),
  failureReason: Schema.NullOr(Schema.String), cleanupAttempts: Schema.Int, ownerInstanceId: Schema.String, metadata: JsonObject, policy: Json
})
export const Agent = Schema.Struct({
  id: Schema.String, companyId: Schema.String, name: Schema.String, command: Schema.String, args: Schema.Array(Schema.String),
  env: JsonObject, defaultEnvironmentId: Schema.NullOr(Schema.String), heartbeat: Schema.NullOr(Json), timeoutMs: Schema.Int,
  createdAt: Schema.String, updatedAt: Schema.String
})
export const Run = Schema.Struct({
  id: Schema.String, companyId: Schema.String, agentId: Schema.String, environmentId: Schema.NullOr(Schema.String),
  status: Schema.String, trigger: Schema.String, exitCode: Schema.NullOr(Schema.Int), signal: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.String), stdout: Schema.String, stderr: Schema.String, truncated: Schema.Boolean,
  leaseId: Schema.NullOr(Schema.String), createdAt: Schema.String, startedAt: Schema.NullOr(Schema.String), finishedAt: Schema.NullOr(Schema.String)
})
/** A plugin. A company token sees only its identity and status (`pluginId`, `version`, `displayName`,
 * `status`, `capabilities`); the operational fields are the operator's (admin token). */
export const Plugin = Schema.Struct({
  pluginId: Schema.String, version: Schema.String, displayName: Schema.String, status: Schema.String, capabilities: Schema.Array(Schema.String),
  workerStatus: opt(Schema.String), mode: opt(Schema.String), pid: opt(Schema.NullOr(Schema.Int)), supportedMethods: opt(Schema.Array(Schema.String)),
  inactiveCapabilities: opt(Schema.Array(Schema.String)), ignoredFields: opt(Schema.Array(Schema.String)),
  lastError: opt(Schema.NullOr(Schema.String)), health: opt(Schema.NullOr(Json)), restarts: opt(Schema.Int), crashesInWindow: opt(Schema.Int),
  isolation: opt(Schema.NullOr(Schema.Literal("sandboxed", "trusted", "unsandboxed"))),
  source: opt(Schema.NullOr(Schema.Struct({
    kind: Schema.String, location: Schema.String, sha512: Schema.NullOr(Schema.String), packageName: Schema.NullOr(Schema.String), linked: Schema.Boolean
  })))
})
export const TokenRole = Schema.Literal("admin", "company", "company-read")
/** A token as listed: never its value. */
export const Token = Schema.Struct({
  id: Schema.String, role: TokenRole, companyId: Schema.NullOr(Schema.String), name: Schema.NullOr(Schema.String), createdAt: Schema.String,
  lastUsedAt: Schema.NullOr(Schema.String), expiresAt: Schema.NullOr(Schema.String), revokedAt: Schema.NullOr(Schema.String)
})
/** A token with its value: answered once, when it is created or rotated. */
export const TokenWithValue = Schema.Struct({ ...Token.fields, token: Schema.String })
export const LocalGrant = Schema.Struct({ companyId: Schema.String, granted: Schema.Boolean, grantedAt: Schema.NullOr(Schema.String) })
export const ProviderPolicy = Schema.Struct({
  provider: Schema.String,
  policy: Schema.Struct({ set: JsonObject, allow: Schema.Record({ key: Schema.String, value: Schema.Array(Json) }) }),
  operatorFields: Schema.Array(Schema.Struct({ field: Schema.String, kind: Schema.Literal("field", "values"), values: opt(Schema.Array(Json)) }))
})
export const Health = Schema.Struct({
  ok: Schema.Boolean, status: Schema.Literal("ok", "degraded"), reason: opt(Schema.String),
  instanceId: opt(Schema.String), version: opt(Schema.String), database: opt(Schema.String)
})
const PluginInstall = strict(Schema.Struct({
  source: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(4096)).annotations({ description: "an absolute folder or .tgz path on the server's machine, or an npm package spec (name, name@version)" }),
  allowDowngrade: opt(Schema.Boolean),
  linked: opt(Schema.Boolean.annotations({ description: "folders only: run the folder in place instead of a copy (the dev loop)" }))
}))
const PluginUpgrade = strict(Schema.Struct({
  ...PluginInstall.fields,
  drain: opt(Schema.Boolean.annotations({ description: "wait (bounded) for the provider's live leases to end instead of refusing" })),
  drainTimeoutMs: opt(Schema.Int.pipe(Schema.between(0, 3_600_000)))
}))

/** `/api/runs/:id/output` (Server-Sent Events): one `stdout`/`stderr`/`system` event per chunk (its
 * `id:` is `seq`, so `Last-Event-ID` resumes), then one `end` event carrying the finished run. */
export const RunOutputChunk = Schema.Struct({ seq: Schema.Int, stream: Schema.Literal("stdout", "stderr", "system"), chunk: Schema.String })
export const RunOutputEnd = Run
/** The last event of a stream that failed: reconnect with Last-Event-ID. */
export const RunOutputError = Schema.Struct({ error: Schema.Struct({ code: Schema.Literal("stream_failed"), message: Schema.String }) })
export const RunOutputEvents: Record<string, Schema.Schema<any, any>> = { stdout: RunOutputChunk, stderr: RunOutputChunk, system: RunOutputChunk, end: RunOutputEnd, error: RunOutputError }
const sseDescription = "Server-Sent Events. Each chunk of output is an event named after its stream (`stdout`, `stderr`, `system`) " +
  "whose `id:` is its `seq` (send `Last-Event-ID` to resume after it) and whose `data:` is a RunOutputChunk; the stream ends with " +
  "one `end` event whose `data:` is the finished Run, or, when the stream fails, one `error` event ({error:{code:\"stream_failed\"}}). The schema of each event's data is under `x-sse-events`."

// ---- payload rules (SPEC §14): the same schemas decode requests and generate the document ----
const SecretRef = strict(Schema.Struct({ type: Schema.Literal("secret_ref"), secretId: L.Id, version: opt(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))) }))
const AgentEnv = Schema.Record({ key: L.CallerVarName, value: Schema.Union(Schema.String, SecretRef) })
const Heartbeat = Schema.Union(
  strict(Schema.Struct({ cron: L.Cron5 })),
  strict(Schema.Struct({ everySeconds: Schema.Int.pipe(Schema.greaterThanOrEqualTo(1)) }))
)
const VarMap = Schema.Record({ key: L.VarName, value: Schema.String })
const LocalConfig = strict(Schema.Struct({ env: opt(VarMap), workspacePath: opt(Schema.String) }))
/** The host's fields of a sandbox config; any other field is the provider's (checked against its config schema). */
const SandboxConfig = Schema.Struct({
  provider: L.Name(L.MAX_NAME).annotations({ description: "\"<pluginId>/<driverKey>\" or \"<driverKey>\"" }),
  timeoutMs: opt(L.PositiveMs), ttlMs: opt(L.PositiveMs), reuseLease: opt(Schema.Boolean),
  onFailure: opt(Schema.Literal("release", "destroy")), env: opt(VarMap)
}, Schema.Record({ key: Schema.String, value: Schema.Unknown }))
const Description = Schema.NullOr(Schema.String.pipe(Schema.maxLength(L.MAX_DESCRIPTION)))

// ---- params ----
const companyId = HttpApiSchema.param("companyId", Schema.String)
const id = HttpApiSchema.param("id", Schema.String)
const pluginId = HttpApiSchema.param("pluginId", Schema.String)

// ---- groups ----
/** No token needed: `{ok, status}` (and a generic reason when degraded); with the admin token also the
 * instance id, version, database and the failure's own message. 503 when degraded. */
export class HealthGroup extends HttpApiGroup.make("health")
  .add(HttpApiEndpoint.get("health", "/api/health").addSuccess(Health).addError(Health, { status: 503 })) {}

export class CompaniesGroup extends HttpApiGroup.make("companies")
  .add((HttpApiEndpoint.get("list", "/api/companies").addSuccess(Schema.Array(Company))))
  .add((HttpApiEndpoint.post("create", "/api/companies").setPayload(strict(Schema.Struct({ name: L.Name(L.MAX_COMPANY_NAME), id: opt(L.CompanyId) }))).addSuccess(Company, { status: 201 })))
  .add((HttpApiEndpoint.get("get")`/api/companies/${companyId}`.addSuccess(Company)))
  .add((HttpApiEndpoint.put("setDefaultEnvironment")`/api/companies/${companyId}/default-environment`
    .setPayload(strict(Schema.Struct({ environmentId: Schema.NullOr(L.Id) }))).addSuccess(Company)))
  .add((HttpApiEndpoint.post("createToken")`/api/companies/${companyId}/tokens`
    .setPayload(strict(Schema.Struct({
      name: opt(L.Name(L.MAX_NAME)),
      role: opt(Schema.Literal("company", "company-read")),
      expiresAt: opt(Schema.String.annotations({ description: "ISO 8601 date-time in the future; the token stops working then" }))
    }))).addSuccess(TokenWithValue, { status: 201 })))
  .middleware(Authentication) {}

/** Token lifecycle: admin token only. */
export class TokensGroup extends HttpApiGroup.make("tokens")
  .add((HttpApiEndpoint.get("list", "/api/tokens").setUrlParams(Schema.Struct({ companyId: opt(Schema.String) })).addSuccess(Schema.Array(Token))))
  .add((HttpApiEndpoint.get("get")`/api/tokens/${id}`.addSuccess(Token)))
  .add((HttpApiEndpoint.post("revoke")`/api/tokens/${id}/revoke`.addSuccess(Token)))
  .add((HttpApiEndpoint.post("rotate")`/api/tokens/${id}/rotate`.addSuccess(TokenWithValue)))
  .middleware(Authentication)
  .annotate(OpenApi.Description, "Admin token only. Values are shown once (create, rotate); revoked tokens stay listed; the admin token cannot be revoked, only rotated; lastUsedAt is written at most once a minute.") {}

const driverKey = HttpApiSchema.param("driverKey", Schema.String)
const PolicyPayload = strict(Schema.Struct({ set: opt(JsonObject), allow: opt(Schema.Record({ key: Schema.String, value: Schema.Array(Json) })) }))
/** What only the operator decides: local-driver grants and provider policies. Admin token only. */
export class OperatorGroup extends HttpApiGroup.make("operator")
  .add((HttpApiEndpoint.get("localGrants", "/api/local-grants").addSuccess(Schema.Array(LocalGrant))))
  .add((HttpApiEndpoint.put("grantLocal")`/api/companies/${companyId}/local-grant`.addSuccess(LocalGrant)))
  .add((HttpApiEndpoint.del("revokeLocal")`/api/companies/${companyId}/local-grant`.addSuccess(LocalGrant)))
  .add((HttpApiEndpoint.get("policies", "/api/provider-policies").addSuccess(Schema.Array(ProviderPolicy))))
  .add((HttpApiEndpoint.get("getPolicy")`/api/plugins/${pluginId}/drivers/${driverKey}/policy`.addSuccess(ProviderPolicy)))
  .add((HttpApiEndpoint.put("setPolicy")`/api/plugins/${pluginId}/drivers/${driverKey}/policy`.setPayload(PolicyPayload).addSuccess(ProviderPolicy)))
  .add((HttpApiEndpoint.del("clearPolicy")`/api/plugins/${pluginId}/drivers/${driverKey}/policy`.addSuccess(ProviderPolicy)))
  .middleware(Authentication)
  .annotate(OpenApi.Description, "Admin token only. A company runs in a local environment only with a local grant. A policy's `set` may name only the provider's operator fields (configSchema `x-gantry-operator`); `allow` only their operator-only values.") {}

export class SecretsGroup extends HttpApiGroup.make("secrets")
  .add((HttpApiEndpoint.get("list")`/api/companies/${companyId}/secrets`.addSuccess(Schema.Array(Secret))))
  .add((HttpApiEndpoint.post("create")`/api/companies/${companyId}/secrets`
    .setPayload(strict(Schema.Struct({ name: L.SecretName, value: L.SecretValue }))).addSuccess(Secret, { status: 201 })))
  .add((HttpApiEndpoint.post("rotate")`/api/companies/${companyId}/secrets/${id}/rotate`
    .setPayload(strict(Schema.Struct({ value: L.SecretValue }))).addSuccess(Secret)))
  .add((HttpApiEndpoint.get("get")`/api/companies/${companyId}/secrets/${id}`.addSuccess(Secret)))
  .add((HttpApiEndpoint.del("delete")`/api/companies/${companyId}/secrets/${id}`.addSuccess(Schema.Struct({ deleted: Schema.Boolean }))))
  .middleware(Authentication) {}

const JobRun = Json
export class PluginsGroup extends HttpApiGroup.make("plugins")
  .add((HttpApiEndpoint.get("list", "/api/plugins").addSuccess(Schema.Array(Plugin))))
  .add((HttpApiEndpoint.post("install", "/api/plugins").setPayload(PluginInstall).addSuccess(Plugin, { status: 201 })))
  .add((HttpApiEndpoint.post("upgrade")`/api/plugins/${pluginId}/upgrade`.setPayload(PluginUpgrade).addSuccess(Plugin)))
  .add((HttpApiEndpoint.del("uninstall")`/api/plugins/${pluginId}`
    .setUrlParams(Schema.Struct({ purge: opt(Schema.Literal("true", "false")), drain: opt(Schema.Literal("true", "false")), drainTimeoutMs: opt(Schema.NumberFromString) }))
    .addSuccess(Schema.Struct({ pluginId: Schema.String, uninstalled: Schema.Boolean, purged: Schema.Boolean }))))
  .add((HttpApiEndpoint.get("get")`/api/plugins/${pluginId}`.addSuccess(Plugin)))
  .add((HttpApiEndpoint.post("enable")`/api/plugins/${pluginId}/enable`.addSuccess(Plugin)))
  .add((HttpApiEndpoint.post("disable")`/api/plugins/${pluginId}/disable`.addSuccess(Plugin)))
  .add((HttpApiEndpoint.get("logs")`/api/plugins/${pluginId}/logs`.setUrlParams(Schema.Struct({ limit: opt(L.LimitParam) }))
    .addSuccess(Schema.Array(Schema.Struct({ at: Schema.String, level: Schema.String, message: Schema.String, meta: opt(Json) })))))
  .add((HttpApiEndpoint.get("getConfig")`/api/plugins/${pluginId}/companies/${companyId}/config`.addSuccess(JsonObject)))
  .add((HttpApiEndpoint.put("putConfig")`/api/plugins/${pluginId}/companies/${companyId}/config`.setPayload(JsonObject)
    .addSuccess(Schema.Struct({ ok: Schema.Boolean, warnings: Schema.Array(Schema.String), errors: Schema.Array(Schema.String) }))))
  .add((HttpApiEndpoint.post("testConfig")`/api/plugins/${pluginId}/config/test`.setPayload(JsonObject)
    .addSuccess(Schema.Struct({ ok: Schema.Boolean, warnings: Schema.Array(Schema.String), errors: Schema.Array(Schema.String) }))))
  .add((HttpApiEndpoint.get("jobs")`/api/plugins/${pluginId}/jobs`.addSuccess(Schema.Array(Json))))
  .add((HttpApiEndpoint.get("jobRuns")`/api/plugins/${pluginId}/jobs/${HttpApiSchema.param("jobKey", Schema.String)}/runs`.addSuccess(Schema.Array(JobRun))))
  .add((HttpApiEndpoint.post("triggerJob")`/api/plugins/${pluginId}/jobs/${HttpApiSchema.param("jobKey", Schema.String)}/trigger`.addSuccess(JobRun, { status: 202 })))
  .add((HttpApiEndpoint.post("data")`/api/plugins/${pluginId}/companies/${companyId}/data/${HttpApiSchema.param("key", Schema.String)}`
    .setPayload(strict(Schema.Struct({ params: opt(JsonObject) }))).addSuccess(Json)))
  .add((HttpApiEndpoint.post("action")`/api/plugins/${pluginId}/companies/${companyId}/actions/${HttpApiSchema.param("key", Schema.String)}`
    .setPayload(strict(Schema.Struct({ params: opt(JsonObject) }))).addSuccess(Json)))
  .middleware(Authentication)
  .annotate(OpenApi.Description, "A company token sees pluginId, version, displayName, status and capabilities; enable, disable, logs, jobs, job runs, trigger and config/test need the admin token. Config, data and actions: the caller's own company (another company's id answers 404).") {}

/** Plugin webhooks: called by third parties, no bearer token (the plugin verifies signatures). */
export class WebhooksGroup extends HttpApiGroup.make("webhooks")
  .add((HttpApiEndpoint.post("deliver")`/api/plugins/${pluginId}/webhooks/${HttpApiSchema.param("endpointKey", Schema.String)}`
    .addSuccess(Schema.Struct({ ok: Schema.Boolean, requestId: Schema.String }), { status: 202 }))) {}

const EnvironmentCreate = Schema.Union(
  strict(Schema.Struct({ name: L.Name(L.MAX_NAME), description: opt(Description), driver: Schema.Literal("local"), config: opt(LocalConfig) })),
  strict(Schema.Struct({ name: L.Name(L.MAX_NAME), description: opt(Description), driver: Schema.Literal("sandbox"), config: SandboxConfig }))
)
/** The config's rules depend on the environment's driver (see EnvironmentCreate); the server checks them against it. */
const EnvironmentPatch = strict(Schema.Struct({
  name: opt(L.Name(L.MAX_NAME)), description: opt(Description),
  config: opt(Schema.Union(LocalConfig, SandboxConfig).annotations({ description: "a local config for a local environment, a sandbox config for a sandbox one" }))
}))
const ProbeReport = Schema.Struct({
  ok: Schema.Boolean, summary: Schema.String,
  steps: Schema.Array(Schema.Struct({ step: Schema.String, ok: Schema.Boolean, ms: Schema.Number, detail: opt(Schema.String) })),
  diagnostics: opt(Schema.Array(Json))
})
export class EnvironmentsGroup extends HttpApiGroup.make("environments")
  .add((HttpApiEndpoint.get("list")`/api/companies/${companyId}/environments`.setUrlParams(Schema.Struct({ includeArchived: opt(Schema.Literal("true", "false")) })).addSuccess(Schema.Array(Environment))))
  .add((HttpApiEndpoint.post("create")`/api/companies/${companyId}/environments`.setPayload(EnvironmentCreate).addSuccess(Environment, { status: 201 })))
  .add((HttpApiEndpoint.post("probeConfig")`/api/companies/${companyId}/environments/probe`.setPayload(EnvironmentCreate).addSuccess(ProbeReport)))
  .add((HttpApiEndpoint.get("get")`/api/environments/${id}`.addSuccess(Environment)))
  .add((HttpApiEndpoint.patch("patch")`/api/environments/${id}`.setPayload(EnvironmentPatch).addSuccess(Environment)))
  .add((HttpApiEndpoint.post("archive")`/api/environments/${id}/archive`.addSuccess(Environment)))
  .add((HttpApiEndpoint.del("delete")`/api/environments/${id}`.addSuccess(Schema.Struct({ deleted: Schema.Boolean }))))
  .add((HttpApiEndpoint.post("probe")`/api/environments/${id}/probe`.addSuccess(ProbeReport)))
  .add((HttpApiEndpoint.get("leases")`/api/environments/${id}/leases`.addSuccess(Schema.Array(Lease))))
  .middleware(Authentication)
  .annotate(OpenApi.Description, "Local environments are created, changed, archived and deleted with the admin token only (403 operator_only). A company config may not set a provider's operator fields (422, field named). Another company's environment answers 404.") {}

const Command = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(L.MAX_COMMAND))
const AgentCreate = strict(Schema.Struct({
  name: L.Name(L.MAX_NAME), command: Command, args: opt(Schema.Array(Schema.String)), env: opt(AgentEnv),
  defaultEnvironmentId: opt(Schema.NullOr(L.Id)), heartbeat: opt(Schema.NullOr(Heartbeat)), timeoutMs: opt(L.AgentTimeoutMs)
}))
const AgentPatch = strict(Schema.Struct({
  name: opt(L.Name(L.MAX_NAME)), command: opt(Command), args: opt(Schema.Array(Schema.String)), env: opt(AgentEnv),
  defaultEnvironmentId: opt(Schema.NullOr(L.Id)), heartbeat: opt(Schema.NullOr(Heartbeat)), timeoutMs: opt(L.AgentTimeoutMs)
}))
export class AgentsGroup extends HttpApiGroup.make("agents")
  .add((HttpApiEndpoint.get("list")`/api/companies/${companyId}/agents`.addSuccess(Schema.Array(Agent))))
  .add((HttpApiEndpoint.post("create")`/api/companies/${companyId}/agents`.setPayload(AgentCreate).addSuccess(Agent, { status: 201 })))
  .add((HttpApiEndpoint.get("get")`/api/agents/${id}`.addSuccess(Agent)))
  .add((HttpApiEndpoint.patch("patch")`/api/agents/${id}`.setPayload(AgentPatch).addSuccess(Agent)))
  .add((HttpApiEndpoint.put("setDefaultEnvironment")`/api/agents/${id}/default-environment`
    .setPayload(strict(Schema.Struct({ environmentId: Schema.NullOr(L.Id) }))).addSuccess(Agent)))
  .add((HttpApiEndpoint.del("delete")`/api/agents/${id}`.addSuccess(Schema.Struct({ deleted: Schema.Boolean }))))
  .middleware(Authentication) {}

export class RunsGroup extends HttpApiGroup.make("runs")
  .add((HttpApiEndpoint.post("start")`/api/agents/${id}/runs`
    .setPayload(strict(Schema.Struct({ environmentId: opt(Schema.NullOr(L.Id)), env: opt(Schema.Record({ key: L.CallerVarName, value: Schema.String })) }))).addSuccess(Run, { status: 201 })))
  .add((HttpApiEndpoint.get("list")`/api/companies/${companyId}/runs`.setUrlParams(Schema.Struct({ agentId: opt(Schema.String), limit: opt(L.LimitParam) })).addSuccess(Schema.Array(Run))))
  .add((HttpApiEndpoint.get("get")`/api/runs/${id}`.addSuccess(Run)))
  .add((HttpApiEndpoint.post("cancel")`/api/runs/${id}/cancel`.addSuccess(Run)))
  .add((HttpApiEndpoint.get("output")`/api/runs/${id}/output`.addSuccess(Schema.String.pipe(HttpApiSchema.withEncoding({ kind: "Text", contentType: "text/event-stream" })).annotations({ description: sseDescription }))
    .annotate(OpenApi.Transform, (op) => ({
      ...op,
      "x-sse-events": Object.fromEntries(Object.entries(RunOutputEvents).map(([event, schema]) => [event, JSONSchema.make(schema)]))
    }))))
  .add((HttpApiEndpoint.get("leases")`/api/runs/${id}/leases`.addSuccess(Schema.Array(Lease))))
  .middleware(Authentication) {}

export class RuntimeGroup extends HttpApiGroup.make("runtime")
  .add((HttpApiEndpoint.get("run", "/api/runtime/run").addSuccess(Json)))
  .add((HttpApiEndpoint.post("heartbeat", "/api/runtime/run/heartbeat").addSuccess(Json)))
  .add((HttpApiEndpoint.post("log", "/api/runtime/run/log")
    .setPayload(strict(Schema.Struct({ stream: opt(Schema.Literal("stdout", "stderr", "system")), chunk: Schema.String.pipe(Schema.maxLength(1024 * 1024)) }))).addSuccess(Schema.Struct({ ok: Schema.Boolean }))))
  .middleware(RuntimeAuthentication) {}

export class GantryApi extends HttpApi.make("gantry")
  .add(HealthGroup)
  .add(CompaniesGroup)
  .add(TokensGroup)
  .add(OperatorGroup)
  .add(SecretsGroup)
  .add(PluginsGroup)
  .add(WebhooksGroup)
  .add(EnvironmentsGroup)
  .add(AgentsGroup)
  .add(RunsGroup)
  .add(RuntimeGroup)
  .addError(BadRequest)
  .addError(Unauthorized)
  .addError(Forbidden)
  .addError(NotFound)
  .addError(Conflict)
  .addError(PayloadTooLarge)
  .addError(UnsupportedMediaType)
  .addError(Unprocessable)
  .addError(TooManyRequests)
  .addError(NotImplementedError)
  .addError(BadGateway)
  .addError(Unavailable)
  .addError(GatewayTimeout)
  .addError(Internal)
  .annotate(OpenApi.Title, "Gantry API")
  .annotate(OpenApi.Description, "Plugin host and sandbox environments for AI-agent control planes. Errors: {error: {code, message, details?}}.") {}

export { BadGateway, BadRequest, Conflict, Forbidden, GatewayTimeout, Internal, NotFound, NotImplementedError, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType }
