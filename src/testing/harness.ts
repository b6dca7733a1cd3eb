// The test kit for plugin code: run a Promise or Effect plugin in-process against in-memory host
// stores, through the real host gates (capability and company scope), and drive it like the host
// would. This is what the published SDK's `gantry/testing` is (no database driver, no server).
import { Clock, Context, Effect, Layer, ManagedRuntime, type Scope } from "effect"
import { randomUUID } from "node:crypto"
import type { RpcError } from "../protocol/errors.js"
import type { EventEnvelope, JobRun, StateKey } from "../protocol/methods.js"
import type { ManifestInvalid, PluginConflict, PluginNotFound, PluginStartFailed } from "../host/errors.js"
import { HostOptions, type HostOptionsShape } from "../host/HostOptions.js"
import * as PluginHost from "../host/PluginHost.js"
import { CapabilityStores, makeMemory, type LogEntry } from "../host/Stores.js"
import type { PaperclipPlugin } from "../sdk/definePlugin.js"
import type { Plugin } from "../sdk/Plugin.js"

export interface HarnessCallOptions {
  /** Company the call is made for (default "company-1"); nested calls are scoped to it. */
  readonly companyId?: string
}

export interface TestHarness {
  readonly pluginId: string
  readonly getData: (key: string, params?: Record<string, unknown>, o?: HarnessCallOptions) => Effect.Effect<unknown, RpcError | PluginNotFound>
  readonly performAction: (key: string, params?: Record<string, unknown>, o?: HarnessCallOptions) => Effect.Effect<unknown, RpcError | PluginNotFound>
  /** Emit a core event (e.g. `company.created`); resolves once every subscription has handled it. */
  readonly emit: (eventType: string, companyId: string, payload?: unknown, extra?: Partial<EventEnvelope>) => Effect.Effect<EventEnvelope, RpcError>
  readonly runJob: (jobKey: string, trigger?: JobRun["trigger"]) => Effect.Effect<unknown, RpcError | PluginNotFound>
  /** Save a company's config and send `configChanged`. */
  readonly setConfig: (companyId: string, config: Record<string, unknown>) => Effect.Effect<void, RpcError | PluginNotFound>
  readonly setSecret: (companyId: string, secretId: string, value: string) => Effect.Effect<void>
  readonly getState: (key: StateKey) => Effect.Effect<unknown, RpcError>
  readonly setState: (key: StateKey, value: unknown) => Effect.Effect<void, RpcError>
  readonly logs: Effect.Effect<ReadonlyArray<LogEntry>>
  readonly health: Effect.Effect<unknown, RpcError | PluginNotFound>
  /** Call any host→worker method directly. */
  readonly call: (method: string, params: unknown, o?: HarnessCallOptions) => Effect.Effect<unknown, RpcError | PluginNotFound>
}

export interface HarnessOptions {
  readonly manifest: unknown
  readonly host?: Partial<HostOptionsShape>
}

const DEFAULT_COMPANY = "company-1"

/** Start `plugin` in-process for the life of the scope. The harness runs on the live clock (worker
 * timeouts and health polling are real), so it also works inside `it.scoped` with a TestClock. */
export const makeHarness = (
  plugin: Plugin | PaperclipPlugin,
  options: HarnessOptions
): Effect.Effect<TestHarness, ManifestInvalid | PluginConflict | PluginStartFailed | PluginNotFound, Scope.Scope> =>
  Effect.withClock(Clock.make())(Effect.gen(function* () {
    const stores = yield* makeMemory
    const context = yield* Layer.build(
      PluginHost.layer.pipe(Layer.provide(Layer.merge(HostOptions.layer({ healthIntervalMs: 3_600_000, ...options.host }), Layer.succeed(CapabilityStores, stores))))
    )
    const host = Context.get(context, PluginHost.PluginHost)
    const snap = yield* host.loadInProcess(plugin, options.manifest)
    const pluginId = snap.pluginId
    yield* host.start(pluginId)
    const company = (o?: HarnessCallOptions) => o?.companyId ?? DEFAULT_COMPANY
    return {
      pluginId,
      getData: (key, params = {}, o) => host.call(pluginId, "getData", { key, companyId: company(o), params }, { companyId: company(o) }),
      performAction: (key, params = {}, o) =>
        host.call(pluginId, "performAction", { key, companyId: company(o), params }, { companyId: company(o) }),
      emit: (eventType, companyId, payload = {}, extra = {}) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const event: EventEnvelope = { eventId: randomUUID(), eventType, occurredAt: new Date(now).toISOString(), companyId, payload, ...extra }
          yield* stores.events.emit(event)
          return event
        }),
      runJob: (jobKey, trigger = "manual") =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          return yield* host.call(pluginId, "runJob", { job: { jobKey, runId: randomUUID(), trigger, scheduledAt: new Date(now).toISOString() } })
        }),
      setConfig: (companyId, config) => host.configChanged(pluginId, companyId, config),
      setSecret: (companyId, secretId, value) => Effect.sync(() => stores.putSecret(companyId, secretId, value)),
      getState: (key) => stores.state.get(pluginId, key),
      setState: (key, value) => stores.state.set(pluginId, key, value),
      logs: stores.log.list(pluginId, 10_000),
      health: host.call(pluginId, "health", {}),
      call: (method, params, o) => host.call(pluginId, method, params, o?.companyId ? { companyId: o.companyId } : {})
    } satisfies TestHarness
  }))

/** Promise flavour for Promise-plugin authors: `const h = await createTestHarness(plugin, { manifest })`. */
export interface PromiseHarness {
  readonly getData: (key: string, params?: Record<string, unknown>, o?: HarnessCallOptions) => Promise<unknown>
  readonly performAction: (key: string, params?: Record<string, unknown>, o?: HarnessCallOptions) => Promise<unknown>
  readonly emit: (eventType: string, companyId: string, payload?: unknown) => Promise<EventEnvelope>
  readonly runJob: (jobKey: string) => Promise<unknown>
  readonly setConfig: (companyId: string, config: Record<string, unknown>) => Promise<void>
  readonly setSecret: (companyId: string, secretId: string, value: string) => Promise<void>
  readonly getState: (key: StateKey) => Promise<unknown>
  readonly logs: () => Promise<ReadonlyArray<LogEntry>>
  readonly health: () => Promise<unknown>
  /** Call any host→worker method directly (e.g. `environmentAcquireLease`, `handleApiRequest`). */
  readonly call: (method: string, params: unknown, o?: HarnessCallOptions) => Promise<unknown>
  readonly close: () => Promise<void>
}

class Harness extends Context.Tag("gantry/testing/Harness")<Harness, TestHarness>() {}

export const createTestHarness = async (plugin: Plugin | PaperclipPlugin, options: HarnessOptions): Promise<PromiseHarness> => {
  const runtime = ManagedRuntime.make(Layer.scoped(Harness, makeHarness(plugin, options)))
  const h = await runtime.runPromise(Harness)
  const run = <A>(eff: Effect.Effect<A, unknown>) => runtime.runPromise(eff)
  return {
    getData: (key, params, o) => run(h.getData(key, params, o)),
    performAction: (key, params, o) => run(h.performAction(key, params, o)),
    emit: (t, c, p) => run(h.emit(t, c, p)),
    runJob: (k) => run(h.runJob(k)),
    setConfig: (c, cfg) => run(h.setConfig(c, cfg)),
    setSecret: (c, id, v) => run(h.setSecret(c, id, v)),
    getState: (k) => run(h.getState(k)),
    logs: () => run(h.logs),
    health: () => run(h.health),
    call: (method, params, o) => run(h.call(method, params, o)),
    close: () => runtime.dispose()
  }
}
