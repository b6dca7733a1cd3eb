// Params/result schemas of every method of SPEC §3.2 (host→worker) and §3.3 (worker→host).
import { ParseResult, Schema } from "effect"
import { InvalidParams } from "./errors.js"

const Json = Schema.Unknown
const Obj = Schema.Record({ key: Schema.String, value: Schema.Unknown })
const opt = Schema.optional

export const ScopeKind = Schema.Literal("instance", "company", "project", "agent", "run", "environment")
export type ScopeKind = typeof ScopeKind.Type

// ---- host → worker ----
export const InitializeParams = Schema.Struct({
  manifest: Obj,
  config: Schema.NullishOr(Obj),
  instanceInfo: opt(Schema.Struct({ instanceId: Schema.String, hostVersion: Schema.String })),
  apiVersion: opt(Schema.Number)
})
export const InitializeResult = Schema.Struct({ ok: Schema.Boolean, supportedMethods: Schema.Array(Schema.String) })
export const HealthResult = Schema.Struct({
  status: Schema.Literal("ok", "degraded", "error"),
  message: opt(Schema.String),
  details: opt(Json)
})
export type HealthResult = typeof HealthResult.Type
export const ValidateConfigParams = Schema.Struct({ config: Json })
export const ValidateConfigResult = Schema.Struct({
  ok: Schema.Boolean,
  warnings: opt(Schema.Array(Schema.String)),
  errors: opt(Schema.Array(Schema.String))
})
export type ValidateConfigResult = typeof ValidateConfigResult.Type
export const ConfigChangedParams = Schema.Struct({ config: Json, companyId: opt(Schema.NullOr(Schema.String)) })
export const EventEnvelope = Schema.Struct({
  eventId: Schema.String,
  eventType: Schema.String,
  occurredAt: Schema.String,
  actorId: opt(Schema.NullOr(Schema.String)),
  actorType: opt(Schema.NullOr(Schema.String)),
  entityId: opt(Schema.NullOr(Schema.String)),
  entityType: opt(Schema.NullOr(Schema.String)),
  companyId: Schema.String,
  payload: Json
})
export type EventEnvelope = typeof EventEnvelope.Type
export const OnEventParams = Schema.Struct({ event: EventEnvelope })
export const JobTrigger = Schema.Literal("schedule", "manual", "retry")
export const RunJobParams = Schema.Struct({
  job: Schema.Struct({ jobKey: Schema.String, runId: Schema.String, trigger: JobTrigger, scheduledAt: Schema.String })
})
export type JobRun = typeof RunJobParams.Type["job"]
export const HandleWebhookParams = Schema.Struct({
  endpointKey: Schema.String,
  headers: Schema.Record({ key: Schema.String, value: Schema.Union(Schema.String, Schema.Array(Schema.String)) }),
  rawBody: Schema.String,
  parsedBody: opt(Json),
  requestId: Schema.String
})
export type WebhookRequest = typeof HandleWebhookParams.Type
export const HandleApiRequestParams = Schema.Struct({
  routeKey: Schema.String,
  method: Schema.String,
  path: Schema.String,
  params: opt(Obj),
  query: opt(Obj),
  body: opt(Json),
  actor: opt(Json),
  companyId: opt(Schema.NullOr(Schema.String)),
  headers: opt(Obj)
})
export type ApiRequest = typeof HandleApiRequestParams.Type
export const ApiResponse = Schema.Struct({ status: opt(Schema.Number), headers: opt(Obj), body: opt(Json) })
export type ApiResponse = typeof ApiResponse.Type
export const GetDataParams = Schema.Struct({ key: Schema.String, companyId: opt(Schema.NullOr(Schema.String)), params: opt(Obj) })
export const PerformActionParams = Schema.Struct({
  key: Schema.String,
  companyId: opt(Schema.NullOr(Schema.String)),
  params: opt(Obj),
  actorContext: opt(Json)
})

const EnvBase = {
  driverKey: Schema.String,
  companyId: Schema.String,
  environmentId: Schema.String,
  issueId: opt(Schema.NullOr(Schema.String)),
  config: Obj
}
export const EnvironmentValidateConfigParams = Schema.Struct({ driverKey: Schema.String, config: Obj })
export const EnvironmentValidateConfigResult = Schema.Struct({
  ok: Schema.Boolean,
  warnings: opt(Schema.Array(Schema.String)),
  errors: opt(Schema.Array(Schema.String)),
  normalizedConfig: opt(Obj)
})
export type EnvironmentValidateConfigResult = typeof EnvironmentValidateConfigResult.Type
export const EnvironmentBaseParams = Schema.Struct(EnvBase)
export type EnvironmentBase = typeof EnvironmentBaseParams.Type
export const EnvironmentProbeResult = Schema.Struct({
  ok: Schema.Boolean,
  summary: opt(Schema.String),
  diagnostics: opt(Schema.Array(Json)),
  metadata: opt(Obj)
})
export type EnvironmentProbeResult = typeof EnvironmentProbeResult.Type
export const EnvironmentAcquireLeaseParams = Schema.Struct({
  ...EnvBase,
  runId: Schema.String,
  workspaceMode: opt(Schema.NullOr(Schema.String)),
  requestedCwd: opt(Schema.NullOr(Schema.String)),
  agentId: opt(Schema.NullOr(Schema.String)),
  requestedExpiresAt: opt(Schema.NullOr(Schema.String))
})
export type EnvironmentAcquireLeaseParams = typeof EnvironmentAcquireLeaseParams.Type
export const ProviderLease = Schema.Struct({
  providerLeaseId: Schema.NullOr(Schema.String),
  metadata: opt(Obj),
  expiresAt: opt(Schema.NullOr(Schema.String))
})
export type ProviderLease = typeof ProviderLease.Type
export const EnvironmentResumeLeaseParams = Schema.Struct({
  ...EnvBase,
  providerLeaseId: Schema.String,
  leaseMetadata: opt(Obj)
})
export type EnvironmentResumeLeaseParams = typeof EnvironmentResumeLeaseParams.Type
export const EnvironmentReleaseLeaseParams = Schema.Struct({
  ...EnvBase,
  providerLeaseId: Schema.String,
  leaseMetadata: opt(Obj),
  cancelActiveWork: opt(Schema.Boolean)
})
export type EnvironmentReleaseLeaseParams = typeof EnvironmentReleaseLeaseParams.Type
export const ReleaseResult = Schema.NullOr(
  Schema.Struct({ providerLeaseId: Schema.String, state: Schema.Literal("stopped", "destroyed") })
)
export const LeaseRef = Schema.Struct({ providerLeaseId: Schema.String, metadata: opt(Obj) })
export const EnvironmentRealizeWorkspaceParams = Schema.Struct({
  ...EnvBase,
  lease: LeaseRef,
  workspace: Schema.Struct({
    localPath: opt(Schema.String),
    remotePath: opt(Schema.String),
    mode: opt(Schema.String),
    metadata: opt(Obj)
  })
})
export type EnvironmentRealizeWorkspaceParams = typeof EnvironmentRealizeWorkspaceParams.Type
export const RealizeWorkspaceResult = Schema.Struct({ cwd: Schema.String, metadata: opt(Obj) })
export const EnvironmentExecuteParams = Schema.Struct({
  ...EnvBase,
  lease: LeaseRef,
  command: Schema.String,
  args: opt(Schema.Array(Schema.String)),
  cwd: opt(Schema.String),
  env: opt(Schema.Record({ key: Schema.String, value: Schema.String })),
  stdin: opt(Schema.String),
  timeoutMs: opt(Schema.Number)
})
export type EnvironmentExecuteParams = typeof EnvironmentExecuteParams.Type
export const ExecuteResult = Schema.Struct({
  exitCode: Schema.NullOr(Schema.Number),
  signal: opt(Schema.NullOr(Schema.String)),
  timedOut: Schema.Boolean,
  stdout: Schema.String,
  stderr: Schema.String,
  metadata: opt(Obj)
})
export type ExecuteResult = typeof ExecuteResult.Type

// ---- worker → host ----
export const ConfigGetParams = Schema.Struct({ companyId: opt(Schema.NullOr(Schema.String)) })
export const StateKeyParams = Schema.Struct({
  scopeKind: ScopeKind,
  scopeId: opt(Schema.NullOr(Schema.String)),
  namespace: opt(Schema.NullOr(Schema.String)),
  stateKey: Schema.String.pipe(Schema.minLength(1))
})
export type StateKey = typeof StateKeyParams.Type
export const StateSetParams = Schema.Struct({ ...StateKeyParams.fields, value: Json })
export const EventFilter = Schema.Struct({
  companyId: opt(Schema.String),
  agentId: opt(Schema.String),
  projectId: opt(Schema.String)
})
export type EventFilter = typeof EventFilter.Type
export const EventsSubscribeParams = Schema.Struct({ eventPattern: Schema.String.pipe(Schema.minLength(1)), filter: opt(Schema.NullOr(EventFilter)) })
export const EventsEmitParams = Schema.Struct({ name: Schema.String.pipe(Schema.minLength(1)), companyId: Schema.String, payload: opt(Json) })
export const SecretRef = Schema.Struct({
  type: Schema.Literal("secret_ref"),
  secretId: Schema.String,
  version: opt(Schema.NullOr(Schema.Number))
})
export type SecretRef = typeof SecretRef.Type
export const SecretsResolveParams = Schema.Struct({
  secretRef: Schema.Union(SecretRef, Schema.String),
  companyId: opt(Schema.NullOr(Schema.String)),
  configPath: opt(Schema.NullOr(Schema.String))
})
export const HttpFetchParams = Schema.Struct({
  url: Schema.String,
  init: opt(Schema.Struct({
    method: opt(Schema.String),
    headers: opt(Schema.Record({ key: Schema.String, value: Schema.String })),
    body: opt(Schema.NullOr(Schema.String))
  }))
})
export const HttpFetchResult = Schema.Struct({
  status: Schema.Number,
  statusText: Schema.String,
  headers: Schema.Record({ key: Schema.String, value: Schema.String }),
  body: Schema.String
})
export type HttpFetchResult = typeof HttpFetchResult.Type
export const LogLevel = Schema.Literal("debug", "info", "warn", "error")
export const LogParams = Schema.Struct({ level: LogLevel, message: Schema.String, meta: opt(Json) })
export const ExecuteLogParams = Schema.Struct({ stream: Schema.Literal("stdout", "stderr"), chunk: Schema.String })

/** Params schema of each method, used by the peer to decode before a handler runs. */
export const ParamsSchemas = {
  initialize: InitializeParams,
  validateConfig: ValidateConfigParams,
  configChanged: ConfigChangedParams,
  onEvent: OnEventParams,
  runJob: RunJobParams,
  handleWebhook: HandleWebhookParams,
  handleApiRequest: HandleApiRequestParams,
  getData: GetDataParams,
  performAction: PerformActionParams,
  environmentValidateConfig: EnvironmentValidateConfigParams,
  environmentProbe: EnvironmentBaseParams,
  environmentAcquireLease: EnvironmentAcquireLeaseParams,
  environmentResumeLease: EnvironmentResumeLeaseParams,
  environmentReleaseLease: EnvironmentReleaseLeaseParams,
  environmentDestroyLease: EnvironmentReleaseLeaseParams,
  environmentRealizeWorkspace: EnvironmentRealizeWorkspaceParams,
  environmentExecute: EnvironmentExecuteParams,
  "config.get": ConfigGetParams,
  "state.get": StateKeyParams,
  "state.set": StateSetParams,
  "state.delete": StateKeyParams,
  "events.subscribe": EventsSubscribeParams,
  "events.emit": EventsEmitParams,
  "secrets.resolve": SecretsResolveParams,
  "http.fetch": HttpFetchParams,
  "log": LogParams,
  "execute.log": ExecuteLogParams
} as const

/** Optional hooks a worker may list in `supportedMethods`. */
export const OptionalMethods = [
  "validateConfig", "configChanged", "health", "shutdown", "handleApiRequest", "handleWebhook",
  "environmentValidateConfig", "environmentProbe", "environmentAcquireLease", "environmentResumeLease",
  "environmentReleaseLease", "environmentDestroyLease", "environmentRealizeWorkspace", "environmentExecute"
] as const

/** Build a decoder returning InvalidParams whose message names the failing field. */
export const paramsDecoder = <A, I>(method: string, schema: Schema.Schema<A, I, never>) => {
  const decode = Schema.decodeUnknownEither(schema, { errors: "first", onExcessProperty: "preserve" })
  // no transformations (typeSchema is the schema itself): the type guard accepts exactly what decoding
  // would and costs ~1/3; decoding then only runs to word the error
  const guard = Schema.typeSchema(schema).ast === schema.ast ? Schema.is(schema) : undefined
  return (u: unknown): import("effect").Either.Either<A, InvalidParams> => {
    const input = u === undefined ? {} : u
    if (guard?.(input)) return { _tag: "Right", right: input } as never
    const r = decode(input)
    if (r._tag === "Right") return r as never
    const issues = ParseResult.ArrayFormatter.formatErrorSync(r.left)
    const first = issues[0]
    const field = first && first.path.length > 0 ? first.path.join(".") : "params"
    return { _tag: "Left", left: new InvalidParams({ message: `Invalid params for "${method}": ${field}: ${first?.message ?? "invalid"}`, data: { field } }) } as never
  }
}
