// Worker runtime: serves one plugin over a Peer. Builds the remote capability services (calls to the
// host, echoing the invocation id), answers every host→worker method of SPEC §3.2.
import { Context, Deferred, Duration, Effect, FiberRef, Scope } from "effect"
import * as Peer from "../rpc/Peer.js"
import type { InvocationContext } from "../protocol/envelope.js"
import { NotImplemented, WorkerError, fromWire, type RpcError } from "../protocol/errors.js"
import { filterMatches, patternMatches } from "../protocol/events.js"
import type { Manifest } from "../protocol/manifest.js"
import * as M from "../protocol/methods.js"
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
  Webhooks,
  type Capabilities,
  type DataHandler,
  type EventHandler,
  type JobHandler,
  type LogLevel,
  type StateKeyInput,
  type WebhookHandler
} from "./capabilities.js"
import { directHandlerOf, withDirect } from "./internal/direct.js"
import { CurrentInvocation } from "./internal/invocation.js"
import { supportedMethods, type Plugin } from "./Plugin.js"

export interface ServeOptions {
  readonly input: NodeJS.ReadableStream
  readonly output: NodeJS.WritableStream
  /** Receives the peer once it exists (the stdout guard logs through it). */
  readonly onPeer?: (peer: Peer.Peer) => void
}

interface Registry {
  readonly data: Map<string, DataHandler>
  readonly actions: Map<string, DataHandler>
  readonly jobs: Map<string, JobHandler>
  readonly webhooks: Map<string, WebhookHandler>
  readonly events: Array<{ pattern: string; filter: M.EventFilter | undefined; handler: EventHandler }>
}

const DEDUP_CAP = 10_000

const toWorkerError = (e0: unknown): RpcError | WorkerError => {
  const e = typeof e0 === "object" && e0 !== null && (e0 as { _tag?: unknown })._tag === "HookRejected" ? (e0 as { error: unknown }).error : e0
  if (typeof e === "object" && e !== null && !("_tag" in e) && typeof (e as { code?: unknown }).code === "number" && e instanceof Error) {
    const code = (e as unknown as { code: number }).code
    return fromWire({ code, message: e.message })
  }
  if (typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "number" && "_tag" in e) return e as RpcError
  return new WorkerError({ message: e instanceof Error ? e.message : typeof e === "string" ? e : JSON.stringify(e) })
}
/** Run a plugin hook; any failure becomes a wire error (-32002 unless it carries its own code). */
const hook = <A>(eff: Effect.Effect<A, unknown, Capabilities>): Effect.Effect<A, RpcError, Capabilities> =>
  Effect.catchAllDefect(Effect.mapError(eff, toWorkerError), (d) => Effect.fail(toWorkerError(d)))

/** Serve `plugin` until the host says `shutdown` or the stream closes. */
export const serve = (plugin: Plugin, options: ServeOptions): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const registry: Registry = { data: new Map(), actions: new Map(), jobs: new Map(), webhooks: new Map(), events: [] }
    let peer: Peer.Peer | undefined
    let manifest: Manifest | undefined
    let initialized = false
    const handled = new Set<string>()
    const done = yield* Deferred.make<void>()

    const callHost = (method: string, params: unknown) =>
      Effect.flatMap(FiberRef.get(CurrentInvocation), (inv) =>
        peer!.call(method, params, inv ? { invocationId: inv.id } : undefined))
    const notifyHost = (method: string, params: unknown) =>
      Effect.map(FiberRef.get(CurrentInvocation), (inv) => peer?.notify(method, params, inv ? { invocationId: inv.id } : undefined))

    // the same calls as Promises for the definePlugin facade (internal/direct.ts)
    type Inv = InvocationContext | undefined
    const callDirect = (method: string, params: unknown, inv: Inv) => peer!.callPromise(method, params, inv ? { invocationId: inv.id } : undefined)
    const toVoid = () => undefined
    const logParams = (level: LogLevel, message: string, meta?: unknown) => (meta === undefined ? { level, message } : { level, message, meta })

    const context: Context.Context<Capabilities> = Context.empty().pipe(
      Context.add(Config, Config.of(withDirect(
        { get: (companyId?: string | null) => callHost("config.get", companyId ? { companyId } : {}) as Effect.Effect<Record<string, unknown>, RpcError> },
        { get: (companyId: string | null | undefined, inv: Inv) => callDirect("config.get", companyId ? { companyId } : {}, inv) }
      ))),
      Context.add(Logger, Logger.of(withDirect(
        { log: (level: LogLevel, message: string, meta?: unknown) => notifyHost("log", logParams(level, message, meta)) },
        { log: (level: LogLevel, message: string, meta: unknown, inv: Inv) => peer?.notify("log", logParams(level, message, meta), inv ? { invocationId: inv.id } : undefined) }
      ))),
      Context.add(State, State.of(withDirect({
        get: (k: StateKeyInput) => callHost("state.get", k),
        set: (k: StateKeyInput, value: unknown) => Effect.asVoid(callHost("state.set", { ...k, value })),
        delete: (k: StateKeyInput) => Effect.asVoid(callHost("state.delete", k))
      }, {
        get: (k: StateKeyInput, inv: Inv) => callDirect("state.get", k, inv),
        set: (k: StateKeyInput, value: unknown, inv: Inv) => callDirect("state.set", { ...k, value }, inv).then(toVoid),
        delete: (k: StateKeyInput, inv: Inv) => callDirect("state.delete", k, inv).then(toVoid)
      }))),
      Context.add(Events, Events.of(withDirect({
        subscribe: (pattern: string, handler: EventHandler, filter?: M.EventFilter) =>
          Effect.suspend(() => {
            registry.events.push({ pattern, filter, handler })
            return Effect.asVoid(callHost("events.subscribe", { eventPattern: pattern, filter: filter ?? null }))
          }),
        emit: (name: string, companyId: string, payload: unknown) => Effect.asVoid(callHost("events.emit", { name, companyId, payload }))
      }, {
        emit: (name: string, companyId: string, payload: unknown, inv: Inv) => callDirect("events.emit", { name, companyId, payload }, inv).then(toVoid)
      }))),
      Context.add(Jobs, Jobs.of({ register: (key, handler) => Effect.sync(() => void registry.jobs.set(key, handler)) })),
      Context.add(Secrets, Secrets.of({
        resolve: (secretRef, o) =>
          callHost("secrets.resolve", { secretRef, companyId: o?.companyId ?? undefined, configPath: o?.configPath ?? undefined }) as Effect.Effect<string, RpcError>
      })),
      Context.add(Http, Http.of({ fetch: (url, init) => callHost("http.fetch", init ? { url, init } : { url }) as Effect.Effect<M.HttpFetchResult, RpcError> })),
      Context.add(Data, Data.of({ register: (key, handler) => Effect.sync(() => void registry.data.set(key, handler)) })),
      Context.add(Actions, Actions.of({ register: (key, handler) => Effect.sync(() => void registry.actions.set(key, handler)) })),
      Context.add(Webhooks, Webhooks.of({ register: (key, handler) => Effect.sync(() => void registry.webhooks.set(key, handler)) })),
      Context.add(SandboxProvider, SandboxProvider.of({
        log: (stream, chunk) => (chunk.length === 0 ? Effect.void : notifyHost("execute.log", { stream, chunk }))
      })),
      Context.add(PluginManifest, PluginManifest.of({ get: Effect.sync(() => manifest!) }))
    )

    const scope = yield* Effect.scope

    type H = Peer.Handler<Capabilities>
    const h = <P>(method: keyof typeof M.ParamsSchemas | "health" | "shutdown", handle: (p: P) => Effect.Effect<unknown, RpcError, Capabilities>): H => {
      const schema = (M.ParamsSchemas as Record<string, unknown>)[method]
      const wrapped = (p: P, ctx: Peer.InboundContext) =>
        ctx.invocation ? Effect.locally(handle(p), CurrentInvocation, ctx.invocation) : handle(p)
      return schema === undefined
        ? { handle: wrapped }
        : { decode: M.paramsDecoder(method, schema as never), handle: wrapped }
    }
    /** A Promise plugin's data/action handler answers directly (no fiber); an Effect one via `handle`. */
    const direct = (handlers: Map<string, DataHandler>, base: H): H => ({
      ...base,
      direct: (p: { key: string; params?: Record<string, unknown> | undefined; companyId?: string | null | undefined }, ctx: Peer.InboundContext) => {
        const f = handlers.get(p.key)
        const fn = f && directHandlerOf(f)
        return fn ? fn(withCompany(p), ctx.invocation) : Peer.NoDirect
      }
    })
    const notImplemented = (method: string) => Effect.fail(new NotImplemented({ message: `${method} is not implemented by this plugin` }))
    const env = plugin.environment ?? {}
    const envHook = <P>(method: string, f: ((p: P) => Effect.Effect<unknown, unknown, Capabilities>) | undefined) =>
      (p: P) => (f ? hook(f(p)) : notImplemented(method))
    const withCompany = (p: { params?: Record<string, unknown> | undefined; companyId?: string | null | undefined }) =>
      p.companyId === undefined || p.companyId === null ? { ...p.params } : { ...p.params, companyId: p.companyId }

    const handlers: Record<string, H> = {
      initialize: h<typeof M.InitializeParams.Type>("initialize", (p) =>
        Effect.gen(function* () {
          if (initialized) return yield* new WorkerError({ message: "Worker already initialized" })
          manifest = p.manifest as unknown as Manifest
          yield* hook(Scope.extend(plugin.setup, scope))
          initialized = true
          return { ok: true, supportedMethods: supportedMethods(plugin) }
        })),
      health: h("health", () => (plugin.health ? hook(plugin.health) : Effect.succeed({ status: "ok" }))),
      shutdown: h("shutdown", () =>
        Effect.ensuring(
          plugin.shutdown ? Effect.as(hook(plugin.shutdown), null) : Effect.succeed(null),
          Deferred.succeed(done, undefined)
        )),
      validateConfig: h<typeof M.ValidateConfigParams.Type>("validateConfig", (p) =>
        plugin.validateConfig ? hook(plugin.validateConfig((p.config ?? {}) as Record<string, unknown>)) : notImplemented("validateConfig")),
      configChanged: h<typeof M.ConfigChangedParams.Type>("configChanged", (p) =>
        plugin.configChanged ? Effect.as(hook(plugin.configChanged((p.config ?? {}) as Record<string, unknown>, p.companyId ?? null)), null) : Effect.succeed(null)),
      onEvent: h<typeof M.OnEventParams.Type>("onEvent", ({ event }) =>
        Effect.gen(function* () {
          if (handled.has(event.eventId)) return null
          for (const r of registry.events) {
            if (patternMatches(r.pattern, event.eventType) && filterMatches(r.filter, event)) yield* hook(r.handler(event))
          }
          handled.add(event.eventId)
          if (handled.size > DEDUP_CAP) handled.delete(handled.values().next().value!)
          return null
        })),
      runJob: h<typeof M.RunJobParams.Type>("runJob", ({ job }) => {
        const f = registry.jobs.get(job.jobKey)
        return f ? Effect.as(hook(f(job)), null) : Effect.fail(new WorkerError({ message: `No handler registered for job "${job.jobKey}"` }))
      }),
      handleWebhook: h<M.WebhookRequest>("handleWebhook", (p) => {
        const f = registry.webhooks.get(p.endpointKey) ?? plugin.webhook
        return f ? Effect.as(hook(f(p)), null) : notImplemented("handleWebhook")
      }),
      handleApiRequest: h<M.ApiRequest>("handleApiRequest", (p) => (plugin.apiRequest ? hook(plugin.apiRequest(p)) : notImplemented("handleApiRequest"))),
      getData: direct(registry.data, h<typeof M.GetDataParams.Type>("getData", (p) => {
        const f = registry.data.get(p.key)
        return f ? hook(f(withCompany(p))) : Effect.fail(new WorkerError({ message: `No data handler registered for key "${p.key}"`, data: { reason: "unknown_key", key: p.key } }))
      })),
      performAction: direct(registry.actions, h<typeof M.PerformActionParams.Type>("performAction", (p) => {
        const f = registry.actions.get(p.key)
        return f ? hook(f(withCompany(p))) : Effect.fail(new WorkerError({ message: `No action handler registered for key "${p.key}"`, data: { reason: "unknown_key", key: p.key } }))
      })),
      environmentValidateConfig: h("environmentValidateConfig", envHook("environmentValidateConfig", env.validateConfig)),
      environmentProbe: h("environmentProbe", envHook("environmentProbe", env.probe)),
      environmentAcquireLease: h("environmentAcquireLease", envHook("environmentAcquireLease", env.acquireLease)),
      environmentResumeLease: h("environmentResumeLease", envHook("environmentResumeLease", env.resumeLease)),
      environmentReleaseLease: h("environmentReleaseLease", envHook("environmentReleaseLease", env.releaseLease)),
      environmentDestroyLease: h("environmentDestroyLease", envHook("environmentDestroyLease", env.destroyLease)),
      environmentRealizeWorkspace: h("environmentRealizeWorkspace", envHook("environmentRealizeWorkspace", env.realizeWorkspace)),
      environmentExecute: h("environmentExecute", envHook("environmentExecute", env.execute))
    }

    peer = yield* Effect.provide(
      Peer.make<Capabilities>({
        name: "worker",
        input: options.input,
        output: options.output,
        handlers: (m) => handlers[m],
        replyToParseErrors: true,
        directError: toWorkerError
      }),
      context
    )
    options.onPeer?.(peer)
    yield* Effect.raceFirst(peer.awaitClosed, Deferred.await(done))
    // let the shutdown reply reach the stream before the peer's scope closes
    yield* Effect.sleep(Duration.millis(10))
  })

export type { InvocationContext }
