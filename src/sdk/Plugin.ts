// The Effect-native plugin definition: `setup` needs capability services and a Scope that lives as
// long as the worker; optional hooks are Effects too.
import type { Effect, Scope } from "effect"
import type {
  ApiRequest,
  ApiResponse,
  EnvironmentAcquireLeaseParams,
  EnvironmentBase,
  EnvironmentExecuteParams,
  EnvironmentProbeResult,
  EnvironmentRealizeWorkspaceParams,
  EnvironmentReleaseLeaseParams,
  EnvironmentResumeLeaseParams,
  EnvironmentValidateConfigResult,
  ExecuteResult,
  HealthResult,
  ProviderLease,
  ValidateConfigResult,
  WebhookRequest
} from "../protocol/methods.js"
import type { Capabilities, HandlerError } from "./capabilities.js"

type Fx<A> = Effect.Effect<A, HandlerError, Capabilities>

export interface EnvironmentHooks {
  readonly validateConfig?: (p: { driverKey: string; config: Record<string, unknown> }) => Fx<EnvironmentValidateConfigResult>
  readonly probe?: (p: EnvironmentBase) => Fx<EnvironmentProbeResult>
  readonly acquireLease?: (p: EnvironmentAcquireLeaseParams) => Fx<ProviderLease>
  readonly resumeLease?: (p: EnvironmentResumeLeaseParams) => Fx<ProviderLease>
  readonly releaseLease?: (p: EnvironmentReleaseLeaseParams) => Fx<unknown>
  readonly destroyLease?: (p: EnvironmentReleaseLeaseParams) => Fx<unknown>
  readonly realizeWorkspace?: (p: EnvironmentRealizeWorkspaceParams) => Fx<{ cwd: string; metadata?: Record<string, unknown> }>
  readonly execute?: (p: EnvironmentExecuteParams) => Fx<ExecuteResult>
}

export interface Plugin {
  readonly _tag: "GantryPlugin"
  readonly setup: Effect.Effect<void, HandlerError, Capabilities | Scope.Scope>
  readonly health?: Fx<HealthResult>
  readonly validateConfig?: (config: Record<string, unknown>) => Fx<ValidateConfigResult>
  readonly configChanged?: (config: Record<string, unknown>, companyId: string | null) => Fx<void>
  readonly shutdown?: Fx<void>
  readonly webhook?: (request: WebhookRequest) => Fx<void>
  readonly apiRequest?: (request: ApiRequest) => Fx<ApiResponse>
  readonly environment?: EnvironmentHooks
}

export type PluginInput = Omit<Plugin, "_tag">

/** Define an Effect plugin. */
export const make = (definition: PluginInput): Plugin => ({ _tag: "GantryPlugin", ...definition })

export const isPlugin = (u: unknown): u is Plugin =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "GantryPlugin"

/** Method names (as in `supportedMethods`) the definition implements. */
export const supportedMethods = (p: Plugin): Array<string> => {
  const out: Array<string> = []
  if (p.validateConfig) out.push("validateConfig")
  if (p.configChanged) out.push("configChanged")
  if (p.health) out.push("health")
  if (p.shutdown) out.push("shutdown")
  if (p.apiRequest) out.push("handleApiRequest")
  if (p.webhook) out.push("handleWebhook")
  const e = p.environment
  if (e) {
    if (e.validateConfig) out.push("environmentValidateConfig")
    if (e.probe) out.push("environmentProbe")
    if (e.acquireLease) out.push("environmentAcquireLease")
    if (e.resumeLease) out.push("environmentResumeLease")
    if (e.releaseLease) out.push("environmentReleaseLease")
    if (e.destroyLease) out.push("environmentDestroyLease")
    if (e.realizeWorkspace) out.push("environmentRealizeWorkspace")
    if (e.execute) out.push("environmentExecute")
  }
  return out
}
