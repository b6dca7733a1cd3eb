// The Promise plugin API (Paperclip's `definePlugin` shape) and its PluginContext facade, built on the
// same capability services as Effect plugins. Rejections carry the real error class and `code`.
import { AsyncLocalStorage } from "node:async_hooks"
import { Cause, Data as EffectData, Effect, Exit, FiberRef, Runtime } from "effect"
import type { InvocationContext } from "../protocol/envelope.js"
import type { Manifest } from "../protocol/manifest.js"
import type * as M from "../protocol/methods.js"
import {
  Actions,
  Config,
  Data,
  Events,
  Http,
  Jobs,
  Logger,
  PluginManifest,
  SandboxProvider,
  Secrets,
  State,
  type Capabilities,
  type StateKeyInput
} from "./capabilities.js"
import { DirectHandler, directOf, type DirectHandlerFn } from "./internal/direct.js"
import { CurrentInvocation } from "./internal/invocation.js"
import * as Plugin from "./Plugin.js"

type Json = Record<string, unknown>

export interface PluginContext {
  readonly manifest: Manifest
  readonly config: { get(companyId?: string): Promise<Json> }
  readonly events: {
    on(name: string, fn: (event: M.EventEnvelope) => Promise<void> | void): () => void
    on(name: string, filter: M.EventFilter, fn: (event: M.EventEnvelope) => Promise<void> | void): () => void
    emit(name: string, companyId: string, payload: unknown): Promise<void>
  }
  readonly jobs: { register(jobKey: string, fn: (job: M.JobRun) => Promise<void> | void): void }
  readonly state: {
    get(input: StateKeyInput): Promise<unknown>
    set(input: StateKeyInput, value: unknown): Promise<void>
    delete(input: StateKeyInput): Promise<void>
  }
  readonly secrets: { resolve(ref: M.SecretRef | string, options?: { companyId?: string; configPath?: string }): Promise<string> }
  readonly http: { fetch(url: string, init?: { method?: string; headers?: Record<string, string>; body?: string | null }): Promise<Response> }
  readonly data: { register(key: string, fn: (params: Json) => Promise<unknown> | unknown): void }
  readonly actions: { register(key: string, fn: (params: Json) => Promise<unknown> | unknown): void }
  readonly logger: {
    info(message: string, meta?: unknown): void
    warn(message: string, meta?: unknown): void
    error(message: string, meta?: unknown): void
    debug(message: string, meta?: unknown): void
  }
  readonly execution: { log(stream: "stdout" | "stderr", chunk: string): void }
}

type P<A> = Promise<A>
export interface PluginDefinition {
  setup(ctx: PluginContext): P<void>
  /** Accepted for Paperclip compatibility; Gantry workers always serve several companies (every
   * call carries its company and nested calls are scoped to it), so this flag changes nothing. */
  multiCompanyConfig?: boolean
  onHealth?(): P<M.HealthResult>
  onConfigChanged?(config: Json, context?: { companyId: string | null }): P<void>
  onShutdown?(): P<void>
  onValidateConfig?(config: Json): P<M.ValidateConfigResult>
  onWebhook?(input: M.WebhookRequest): P<void>
  onApiRequest?(input: M.ApiRequest): P<M.ApiResponse>
  onEnvironmentValidateConfig?(params: { driverKey: string; config: Json }): P<M.EnvironmentValidateConfigResult>
  onEnvironmentProbe?(params: M.EnvironmentBase): P<M.EnvironmentProbeResult>
  onEnvironmentAcquireLease?(params: M.EnvironmentAcquireLeaseParams): P<M.ProviderLease>
  onEnvironmentResumeLease?(params: M.EnvironmentResumeLeaseParams): P<M.ProviderLease>
  onEnvironmentReleaseLease?(params: M.EnvironmentReleaseLeaseParams): P<unknown>
  onEnvironmentDestroyLease?(params: M.EnvironmentReleaseLeaseParams): P<unknown>
  onEnvironmentRealizeWorkspace?(params: M.EnvironmentRealizeWorkspaceParams): P<{ cwd: string; metadata?: Json }>
  onEnvironmentExecute?(params: M.EnvironmentExecuteParams): P<M.ExecuteResult>
}

export interface PaperclipPlugin {
  readonly definition: PluginDefinition
}

/** Define a Promise plugin, exactly as a Paperclip plugin author would. */
export const definePlugin = (definition: PluginDefinition): PaperclipPlugin => Object.freeze({ definition })

const als = new AsyncLocalStorage<InvocationContext>()

/** A Promise hook rejected; `error` is what it threw (its message and numeric `code` cross the wire). */
export class HookRejected extends EffectData.TaggedError("HookRejected")<{ readonly error: unknown }> {}

/** Call a Promise hook inside the invocation the fiber is serving, so nested ctx calls echo its id. */
const fromPromise = <A>(f: () => Promise<A> | A): Effect.Effect<A, HookRejected> =>
  Effect.flatMap(FiberRef.get(CurrentInvocation), (inv) =>
    Effect.tryPromise({
      try: () => Promise.resolve(inv ? als.run(inv, f) : f()),
      catch: (error) => new HookRejected({ error })
    }))

const makeContext = (runtime: Runtime.Runtime<Capabilities>): PluginContext => {
  const ctxOf = <I, S>(tag: import("effect").Context.Tag<I, S>) => Runtime.runSync(runtime)(tag as never) as S
  const run = <A>(eff: Effect.Effect<A, unknown, Capabilities>): Promise<A> => {
    const inv = als.getStore()
    const e = inv ? Effect.locally(eff, CurrentInvocation, inv) : eff
    return Runtime.runPromiseExit(runtime)(e).then((exit) => {
      if (Exit.isSuccess(exit)) return exit.value
      throw Cause.squash(exit.cause)
    })
  }
  const fire = (eff: Effect.Effect<void, never, Capabilities>) => {
    void run(eff)
  }
  const config = ctxOf(Config), state = ctxOf(State), events = ctxOf(Events), jobs = ctxOf(Jobs)
  const secrets = ctxOf(Secrets), http = ctxOf(Http), data = ctxOf(Data), actions = ctxOf(Actions)
  const logger = ctxOf(Logger), provider = ctxOf(SandboxProvider), manifest = ctxOf(PluginManifest)
  // the worker's remote services carry plain-JS forms of their calls (internal/direct.ts): one peer
  // call per ctx call instead of a runtime run; other services (test layers) go through Effect
  type Inv = InvocationContext | undefined
  const dConfig = directOf<{ get(companyId: string | null | undefined, inv: Inv): Promise<Json> }>(config)
  const dState = directOf<{
    get(k: StateKeyInput, inv: Inv): Promise<unknown>
    set(k: StateKeyInput, value: unknown, inv: Inv): Promise<void>
    delete(k: StateKeyInput, inv: Inv): Promise<void>
  }>(state)
  const dEvents = directOf<{ emit(name: string, companyId: string, payload: unknown, inv: Inv): Promise<void> }>(events)
  const dLogger = directOf<{ log(level: string, message: string, meta: unknown, inv: Inv): void }>(logger)
  const log = (level: "info" | "warn" | "error" | "debug") => (message: string, meta?: unknown) =>
    dLogger ? dLogger.log(level, message, meta, als.getStore()) : fire(logger.log(level, message, meta))
  /** A data/action handler: the Effect form, and the Promise function itself for the worker's direct path. */
  const handlerOf = (fn: (params: Json) => Promise<unknown> | unknown) => {
    const direct: DirectHandlerFn = (p, inv) => (inv ? als.run(inv, fn, p) : fn(p))
    return Object.assign((p: Json) => fromPromise(() => fn(p)), { [DirectHandler]: direct })
  }
  return {
    get manifest() {
      return Runtime.runSync(runtime)(manifest.get)
    },
    config: { get: (companyId) => (dConfig ? dConfig.get(companyId ?? null, als.getStore()) : run(config.get(companyId ?? null))) },
    events: {
      on(name: string, a: unknown, b?: unknown) {
        const fn = (typeof a === "function" ? a : b) as (e: M.EventEnvelope) => Promise<void> | void
        const filter = typeof a === "function" ? undefined : (a as M.EventFilter)
        let active = true
        const handler = (e: M.EventEnvelope) => (active ? fromPromise(() => fn(e)) : Effect.void)
        run(events.subscribe(name, handler, filter)).catch((err: unknown) =>
          fire(logger.log("warn", `Failed to subscribe to event "${name}" on host: ${err instanceof Error ? err.message : String(err)}`)))
        return () => {
          active = false
        }
      },
      emit: (name, companyId, payload) =>
        dEvents ? dEvents.emit(name, companyId, payload, als.getStore()) : run(events.emit(name, companyId, payload))
    },
    jobs: { register: (key, fn) => Runtime.runSync(runtime)(jobs.register(key, (job) => Effect.asVoid(fromPromise(() => fn(job))))) },
    state: dState
      ? {
          get: (input) => dState.get(input, als.getStore()),
          set: (input, value) => dState.set(input, value, als.getStore()),
          delete: (input) => dState.delete(input, als.getStore())
        }
      : {
          get: (input) => run(state.get(input)),
          set: (input, value) => run(state.set(input, value)),
          delete: (input) => run(state.delete(input))
        },
    secrets: {
      resolve: (ref, o) => run(secrets.resolve(ref, { companyId: o?.companyId ?? null, configPath: o?.configPath ?? null }))
    },
    http: {
      fetch: (url, init) =>
        run(http.fetch(url, init ? { ...init } as never : undefined)).then(
          (r) => new Response(r.status === 204 || r.status === 304 ? null : r.body, { status: r.status, statusText: r.statusText, headers: r.headers })
        )
    },
    data: { register: (key, fn) => Runtime.runSync(runtime)(data.register(key, handlerOf(fn))) },
    actions: { register: (key, fn) => Runtime.runSync(runtime)(actions.register(key, handlerOf(fn))) },
    logger: { info: log("info"), warn: log("warn"), error: log("error"), debug: log("debug") },
    execution: {
      log: (stream, chunk) => {
        if (typeof chunk === "string" && chunk.length > 0) fire(provider.log(stream, chunk))
      }
    }
  }
}

type HookKey = Exclude<keyof PluginDefinition, "multiCompanyConfig">
const opt = <K extends HookKey, A>(d: PluginDefinition, k: K, f: (fn: NonNullable<PluginDefinition[K]>) => A): A | undefined => {
  const fn = d[k]
  return fn ? f(fn.bind(d) as NonNullable<PluginDefinition[K]>) : undefined
}

/** Turn a Promise definition into an Effect plugin running on the same services. */
export const toPlugin = (plugin: PaperclipPlugin | Plugin.Plugin): Plugin.Plugin => {
  if (Plugin.isPlugin(plugin)) return plugin
  const d = plugin.definition
  const environment: Plugin.EnvironmentHooks = {
    ...opt(d, "onEnvironmentValidateConfig", (f) => ({ validateConfig: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentProbe", (f) => ({ probe: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentAcquireLease", (f) => ({ acquireLease: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentResumeLease", (f) => ({ resumeLease: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentReleaseLease", (f) => ({ releaseLease: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentDestroyLease", (f) => ({ destroyLease: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentRealizeWorkspace", (f) => ({ realizeWorkspace: (p: any) => fromPromise(() => f(p)) })),
    ...opt(d, "onEnvironmentExecute", (f) => ({ execute: (p: any) => fromPromise(() => f(p)) }))
  }
  return Plugin.make({
    setup: Effect.flatMap(Effect.runtime<Capabilities>(), (rt) => fromPromise(() => d.setup(makeContext(rt)))),
    ...opt(d, "onHealth", (f) => ({ health: fromPromise(() => f()) })),
    ...opt(d, "onValidateConfig", (f) => ({ validateConfig: (c: Json) => fromPromise(() => f(c)) })),
    ...opt(d, "onConfigChanged", (f) => ({ configChanged: (c: Json, companyId: string | null) => Effect.asVoid(fromPromise(() => f(c, { companyId }))) })),
    ...opt(d, "onShutdown", (f) => ({ shutdown: fromPromise(() => f()) })),
    ...opt(d, "onWebhook", (f) => ({ webhook: (r: M.WebhookRequest) => fromPromise(() => f(r)) })),
    ...opt(d, "onApiRequest", (f) => ({ apiRequest: (r: M.ApiRequest) => fromPromise(() => f(r)) })),
    ...(Object.keys(environment).length > 0 ? { environment } : {})
  })
}
