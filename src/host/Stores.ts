// Host-side capability backends, shared by every plugin and keyed by plugin id. This module holds the
// interface and the in-memory implementation; the durable SQL implementation replaces it in `store/`.
import { Context, Effect, Layer, Schedule, type Scope } from "effect"
import { randomUUID } from "node:crypto"
import type { RpcError } from "../protocol/errors.js"
import { InvalidParams, WorkerError } from "../protocol/errors.js"
import { filterMatches, patternMatches } from "../protocol/events.js"
import type { EventEnvelope, EventFilter, HttpFetchResult, SecretRef, StateKey } from "../protocol/methods.js"
import type { HttpInit, LogLevel } from "../sdk/capabilities.js"

export interface LogEntry {
  readonly at: string
  readonly level: LogLevel
  readonly message: string
  readonly meta?: unknown
}

export type Deliver = (event: EventEnvelope) => Effect.Effect<void, RpcError>

export interface CapabilityStoresShape {
  readonly config: {
    readonly get: (pluginId: string, companyId: string | null) => Effect.Effect<Record<string, unknown>>
    readonly set: (pluginId: string, companyId: string, config: Record<string, unknown>) => Effect.Effect<void>
    readonly companies: (pluginId: string) => Effect.Effect<ReadonlyArray<string>>
  }
  readonly state: {
    readonly get: (pluginId: string, key: StateKey) => Effect.Effect<unknown, RpcError>
    readonly set: (pluginId: string, key: StateKey, value: unknown) => Effect.Effect<void, RpcError>
    readonly delete: (pluginId: string, key: StateKey) => Effect.Effect<void, RpcError>
  }
  readonly events: {
    /** Attach `deliver` to the (plugin, pattern, filter) subscription for the life of the scope. */
    readonly subscribe: (pluginId: string, pattern: string, filter: EventFilter | null, deliver: Deliver) => Effect.Effect<void, RpcError, Scope.Scope>
    readonly emit: (event: EventEnvelope) => Effect.Effect<void, RpcError>
    /** After a worker started: retire this plugin's subscriptions whose key is not in `keep`
     * (their undelivered rows are dropped); returns how many deliveries were dropped. */
    readonly retire: (pluginId: string, keep: ReadonlyArray<string>) => Effect.Effect<number>
  }
  readonly secrets: {
    readonly resolve: (pluginId: string, companyId: string, ref: SecretRef | string, configPath: string | null) => Effect.Effect<string, RpcError>
  }
  readonly http: {
    readonly fetch: (pluginId: string, url: string, init: HttpInit | undefined) => Effect.Effect<HttpFetchResult, RpcError>
  }
  readonly log: {
    readonly append: (pluginId: string, level: LogLevel, message: string, meta?: unknown) => Effect.Effect<void>
    readonly list: (pluginId: string, limit?: number) => Effect.Effect<ReadonlyArray<LogEntry>>
  }
}

export class CapabilityStores extends Context.Tag("gantry/CapabilityStores")<CapabilityStores, CapabilityStoresShape>() {}

export const MAX_STATE_BYTES = 1024 * 1024
const LOG_CAP = 2_000
const deliveryRetry = Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(8)))

/** Identity of a subscription record: (plugin, pattern, filter). */
export const subscriptionKey = (pattern: string, filter: EventFilter | null | undefined): string =>
  JSON.stringify([pattern, filter ? { agentId: filter.agentId, companyId: filter.companyId, projectId: filter.projectId } : null])

export const stateKeyString = (pluginId: string, k: StateKey) =>
  JSON.stringify([pluginId, k.scopeKind, k.scopeId ?? null, k.namespace ?? "default", k.stateKey])

/** Check a state value is JSON and at most 1 MiB; returns its serialized form. */
export const encodeStateValue = (value: unknown): Effect.Effect<string, InvalidParams> => {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch {
    text = undefined
  }
  if (text === undefined || value === undefined) return Effect.fail(new InvalidParams({ message: "state value must be JSON-serializable", data: { field: "value" } }))
  if (Buffer.byteLength(text) > MAX_STATE_BYTES) return Effect.fail(new InvalidParams({ message: `state value is ${Buffer.byteLength(text)} bytes; the limit is ${MAX_STATE_BYTES}`, data: { field: "value" } }))
  return Effect.succeed(text)
}

export interface MemoryStores extends CapabilityStoresShape {
  /** Test control: store a secret value for a company (the in-memory store has no encryption). */
  readonly putSecret: (companyId: string, secretId: string, value: string) => void
}

/** In-memory backends: the foundation's host and the public test kit use them. Event delivery is
 * awaited by `emit`, which keeps tests deterministic. */
export const makeMemory = Effect.sync((): MemoryStores => {
  const configs = new Map<string, Map<string, Record<string, unknown>>>()
  const state = new Map<string, string>()
  const subs = new Map<string, { pluginId: string; pattern: string; filter: EventFilter | null; delivers: Set<Deliver> }>()
  const logs = new Map<string, Array<LogEntry>>()
  const secrets = new Map<string, string>()
  return {
    putSecret: (companyId, secretId, value) => void secrets.set(`${companyId}/${secretId}`, value),
    config: {
      get: (pluginId, companyId) => Effect.sync(() => configs.get(pluginId)?.get(companyId ?? "") ?? {}),
      set: (pluginId, companyId, config) =>
        Effect.sync(() => {
          const m = configs.get(pluginId) ?? new Map()
          m.set(companyId, config)
          configs.set(pluginId, m)
        }),
      companies: (pluginId) => Effect.sync(() => [...(configs.get(pluginId)?.keys() ?? [])])
    },
    state: {
      get: (pluginId, key) => Effect.sync(() => {
        const v = state.get(stateKeyString(pluginId, key))
        return v === undefined ? null : JSON.parse(v)
      }),
      set: (pluginId, key, value) => Effect.map(encodeStateValue(value), (text) => void state.set(stateKeyString(pluginId, key), text)),
      delete: (pluginId, key) => Effect.sync(() => void state.delete(stateKeyString(pluginId, key)))
    },
    events: {
      subscribe: (pluginId, pattern, filter, deliver) =>
        Effect.acquireRelease(
          Effect.sync(() => {
            const k = JSON.stringify([pluginId, pattern, filter ?? null])
            const s = subs.get(k) ?? { pluginId, pattern, filter, delivers: new Set<Deliver>() }
            s.delivers.add(deliver)
            subs.set(k, s)
            return s
          }),
          (s) => Effect.sync(() => void s.delivers.delete(deliver))
        ).pipe(Effect.asVoid),
      emit: (event) =>
        Effect.forEach(
          [...subs.values()].filter((s) => patternMatches(s.pattern, event.eventType) && filterMatches(s.filter, event)),
          (s) => Effect.forEach(s.delivers, (d) => Effect.ignore(Effect.retry(d(event), deliveryRetry)), { discard: true, concurrency: "unbounded" }),
          { discard: true, concurrency: "unbounded" }
        ),
      retire: (pluginId, keep) =>
        Effect.sync(() => {
          for (const [k, s] of subs) {
            if (s.pluginId === pluginId && !keep.includes(subscriptionKey(s.pattern, s.filter))) subs.delete(k)
          }
          return 0
        })
    },
    secrets: {
      resolve: (_pluginId, companyId, ref) => {
        const id = typeof ref === "string" ? ref : ref.secretId
        const v = secrets.get(`${companyId}/${id}`)
        return v === undefined ? Effect.fail(new WorkerError({ message: "secret binding missing" })) : Effect.succeed(v)
      }
    },
    http: {
      fetch: () => Effect.fail(new WorkerError({ message: "http.fetch is not available on the in-memory host" }))
    },
    log: {
      append: (pluginId, level, message, meta) =>
        Effect.sync(() => {
          const l = logs.get(pluginId) ?? []
          l.push(meta === undefined ? { at: new Date().toISOString(), level, message } : { at: new Date().toISOString(), level, message, meta })
          if (l.length > LOG_CAP) l.splice(0, l.length - LOG_CAP)
          logs.set(pluginId, l)
        }),
      list: (pluginId, limit = 200) => Effect.sync(() => (logs.get(pluginId) ?? []).slice(-limit))
    }
  }
})

export const layerMemory = Layer.effect(CapabilityStores, makeMemory)

export const newEventId = () => randomUUID()
