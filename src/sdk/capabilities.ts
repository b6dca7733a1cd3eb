// Capability services a plugin sees. Each Tag has a remote layer (worker), a host layer (gated, per
// plugin) and a test layer (in memory); a plugin definition never knows which one it got.
import { Context, type Effect } from "effect"
import type { RpcError } from "../protocol/errors.js"
import type {
  EventEnvelope,
  EventFilter,
  HttpFetchResult,
  JobRun,
  ScopeKind,
  SecretRef,
  WebhookRequest
} from "../protocol/methods.js"
import type { Manifest } from "../protocol/manifest.js"

export type LogLevel = "debug" | "info" | "warn" | "error"

export interface StateKeyInput {
  readonly scopeKind: ScopeKind
  readonly scopeId?: string | null
  readonly namespace?: string | null
  readonly stateKey: string
}

/** Any error a plugin handler fails with; it crosses the wire as -32002 unless it carries an RPC code. */
export type HandlerError = unknown

export class Config extends Context.Tag("gantry/Config")<Config, {
  readonly get: (companyId?: string | null) => Effect.Effect<Record<string, unknown>, RpcError>
}>() {}

export class Logger extends Context.Tag("gantry/Logger")<Logger, {
  readonly log: (level: LogLevel, message: string, meta?: unknown) => Effect.Effect<void>
}>() {}

export class State extends Context.Tag("gantry/State")<State, {
  readonly get: (key: StateKeyInput) => Effect.Effect<unknown, RpcError>
  readonly set: (key: StateKeyInput, value: unknown) => Effect.Effect<void, RpcError>
  readonly delete: (key: StateKeyInput) => Effect.Effect<void, RpcError>
}>() {}

export type EventHandler = (event: EventEnvelope) => Effect.Effect<void, HandlerError>
export class Events extends Context.Tag("gantry/Events")<Events, {
  /** Subscribe on the host and route matching events to `handler` in this plugin. */
  readonly subscribe: (pattern: string, handler: EventHandler, filter?: EventFilter) => Effect.Effect<void, RpcError>
  readonly emit: (name: string, companyId: string, payload: unknown) => Effect.Effect<void, RpcError>
}>() {}

export type JobHandler = (job: JobRun) => Effect.Effect<void, HandlerError>
export class Jobs extends Context.Tag("gantry/Jobs")<Jobs, {
  readonly register: (jobKey: string, handler: JobHandler) => Effect.Effect<void>
}>() {}

export class Secrets extends Context.Tag("gantry/Secrets")<Secrets, {
  readonly resolve: (
    ref: SecretRef | string,
    options?: { readonly companyId?: string | null; readonly configPath?: string | null }
  ) => Effect.Effect<string, RpcError>
}>() {}

export interface HttpInit {
  readonly method?: string
  readonly headers?: Record<string, string>
  readonly body?: string | null
}
export class Http extends Context.Tag("gantry/Http")<Http, {
  readonly fetch: (url: string, init?: HttpInit) => Effect.Effect<HttpFetchResult, RpcError>
}>() {}

export type DataHandler = (params: Record<string, unknown>) => Effect.Effect<unknown, HandlerError>
export class Data extends Context.Tag("gantry/Data")<Data, {
  readonly register: (key: string, handler: DataHandler) => Effect.Effect<void>
}>() {}

export class Actions extends Context.Tag("gantry/Actions")<Actions, {
  readonly register: (key: string, handler: DataHandler) => Effect.Effect<void>
}>() {}

export type WebhookHandler = (request: WebhookRequest) => Effect.Effect<void, HandlerError>
export class Webhooks extends Context.Tag("gantry/Webhooks")<Webhooks, {
  readonly register: (endpointKey: string, handler: WebhookHandler) => Effect.Effect<void>
}>() {}

/** What a sandbox provider's execute handler uses to stream output of the current invocation. */
export class SandboxProvider extends Context.Tag("gantry/SandboxProvider")<SandboxProvider, {
  readonly log: (stream: "stdout" | "stderr", chunk: string) => Effect.Effect<void>
}>() {}

/** The manifest the host initialized this plugin with. */
export class PluginManifest extends Context.Tag("gantry/PluginManifest")<PluginManifest, {
  readonly get: Effect.Effect<Manifest>
}>() {}

export type Capabilities =
  | Config
  | Logger
  | State
  | Events
  | Jobs
  | Secrets
  | Http
  | Data
  | Actions
  | Webhooks
  | SandboxProvider
  | PluginManifest
