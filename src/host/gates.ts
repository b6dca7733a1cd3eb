// Worker→host handlers behind the two gates of SPEC §2: the capability gate and the company-scope
// gate (checked against the invocation the worker echoes), then the shared capability backends.
import { Clock, Effect, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { capabilityFor, WorkerToHostMethods } from "../protocol/capabilities.js"
import { CapabilityDenied, InvalidParams, InvocationScopeDenied, type RpcError } from "../protocol/errors.js"
import { validatePattern } from "../protocol/events.js"
import * as M from "../protocol/methods.js"
import type * as Peer from "../rpc/Peer.js"
import type { LogLevel } from "../sdk/capabilities.js"
import { subscriptionKey, type CapabilityStoresShape, type Deliver } from "./Stores.js"

export interface Invocation {
  readonly companyId: string
  readonly onExecuteLog?: (stream: "stdout" | "stderr", chunk: string) => void
}

export interface GateContext {
  readonly pluginId: string
  readonly capabilities: ReadonlySet<string>
  readonly invocations: ReadonlyMap<string, Invocation>
  readonly stores: CapabilityStoresShape
  /** Scope of the worker: subscriptions made by it are released when it ends. */
  readonly workerScope: Scope.Scope
  readonly deliver: Deliver
  /** Subscriptions made by this worker incarnation (their keys), and how many are still being recorded. */
  readonly subscriptions: { readonly keys: Set<string>; inFlight: number }
  /** Scrubs known secret values from what a plugin persists or publishes (state values, event payloads, execute output). */
  readonly redact?: <A>(value: A) => A
}

/** Build the handler table a host Peer serves for one worker. */
export const makeHandlers = (g: GateContext): ((method: string) => Peer.Handler<never> | undefined) => {
  const { pluginId, stores } = g
  const redact = g.redact ?? (<A>(a: A) => a)

  const capabilityGate = (method: string): CapabilityDenied | undefined => {
    const cap = capabilityFor(method)
    return cap && !g.capabilities.has(cap)
      ? new CapabilityDenied({ message: `Plugin "${pluginId}" is missing required capability "${cap}" for method "${method}"` })
      : undefined
  }

  /** The company a call acts for, after the scope gate. `named` = the company the call names, if any. */
  const companyGate = (named: string | null | undefined, ctx: Peer.InboundContext): Effect.Effect<string | null, InvocationScopeDenied> => {
    const inv = ctx.invocationId ? g.invocations.get(ctx.invocationId) : undefined
    if (named === null || named === undefined) return Effect.succeed(inv?.companyId ?? null)
    const deny = () => new InvocationScopeDenied({
      message: `Plugin "${pluginId}" may not act for company "${named}" ${inv ? `inside an invocation for company "${inv.companyId}"` : "outside an invocation (no stored config for that company)"}`
    })
    if (inv) return named === inv.companyId ? Effect.succeed(named) : Effect.fail(deny())
    return Effect.flatMap(stores.config.companies(pluginId), (cs) => (cs.includes(named) ? Effect.succeed(named) : Effect.fail(deny())))
  }

  const stateCompany = (k: M.StateKey) => (k.scopeKind === "company" ? k.scopeId ?? null : null)

  type Impl<P> = (p: P, ctx: Peer.InboundContext) => Effect.Effect<unknown, RpcError>
  const impls: { [K in keyof typeof WorkerToHostMethods]: Impl<any> } = {
    "config.get": (p: typeof M.ConfigGetParams.Type, ctx) =>
      Effect.flatMap(companyGate(p.companyId, ctx), (c) => (c === null ? Effect.succeed({}) : stores.config.get(pluginId, c))),
    "state.get": (p: M.StateKey, ctx) => Effect.zipRight(companyGate(stateCompany(p), ctx), stores.state.get(pluginId, p)),
    "state.set": (p: typeof M.StateSetParams.Type, ctx) =>
      Effect.zipRight(companyGate(stateCompany(p), ctx), Effect.as(stores.state.set(pluginId, p, redact(p.value)), null)),
    "state.delete": (p: M.StateKey, ctx) =>
      Effect.zipRight(companyGate(stateCompany(p), ctx), Effect.as(stores.state.delete(pluginId, p), null)),
    "events.subscribe": (p: typeof M.EventsSubscribeParams.Type, ctx) => {
      const bad = validatePattern(p.eventPattern)
      if (bad) return Effect.fail(new InvalidParams({ message: bad, data: { field: "eventPattern" } }))
      const filter = p.filter ?? null
      g.subscriptions.inFlight++
      return Effect.zipRight(
        companyGate(filter?.companyId, ctx),
        Effect.as(Scope.extend(stores.events.subscribe(pluginId, p.eventPattern, filter, g.deliver), g.workerScope), null)
      ).pipe(
        Effect.tap(() => Effect.sync(() => g.subscriptions.keys.add(subscriptionKey(p.eventPattern, filter)))),
        Effect.ensuring(Effect.sync(() => { g.subscriptions.inFlight-- }))
      )
    },
    "events.emit": (p: typeof M.EventsEmitParams.Type, ctx) => {
      if (p.name.startsWith("plugin.")) {
        return Effect.fail(new InvalidParams({ message: `event name "${p.name}" may not start with "plugin." (the host adds "plugin.${pluginId}.")`, data: { field: "name" } }))
      }
      return Effect.gen(function* () {
        const companyId = (yield* companyGate(p.companyId, ctx))!
        const now = yield* Clock.currentTimeMillis
        yield* stores.events.emit({
          eventId: randomUUID(),
          eventType: `plugin.${pluginId}.${p.name}`,
          occurredAt: new Date(now).toISOString(),
          actorId: pluginId,
          actorType: "plugin",
          companyId,
          payload: redact(p.payload ?? null)
        })
        return null
      })
    },
    "secrets.resolve": (p: typeof M.SecretsResolveParams.Type, ctx) =>
      Effect.flatMap(companyGate(p.companyId, ctx), (c) =>
        c === null
          ? Effect.fail(new InvocationScopeDenied({ message: `secrets.resolve needs a company: call it inside an invocation or pass companyId` }))
          : stores.secrets.resolve(pluginId, c, p.secretRef, p.configPath ?? null)),
    "http.fetch": (p: typeof M.HttpFetchParams.Type) => stores.http.fetch(pluginId, p.url, p.init as never),
    "log": (p: typeof M.LogParams.Type) => Effect.as(stores.log.append(pluginId, p.level as LogLevel, p.message, p.meta), null),
    "execute.log": (p: typeof M.ExecuteLogParams.Type, ctx) =>
      Effect.sync(() => {
        const inv = ctx.invocationId ? g.invocations.get(ctx.invocationId) : undefined
        inv?.onExecuteLog?.(p.stream, redact(p.chunk))
        return null
      })
  }

  const table = new Map<string, Peer.Handler<never>>()
  for (const method of Object.keys(impls) as Array<keyof typeof impls>) {
    const schema = (M.ParamsSchemas as Record<string, unknown>)[method]
    const impl = impls[method]
    table.set(method, {
      decode: M.paramsDecoder(method, schema as never),
      handle: (p, ctx) => {
        const denied = capabilityGate(method)
        return denied ? Effect.fail(denied) : impl(p, ctx)
      }
    })
  }
  // `log` is also accepted as a request; `$/…` extensions are handled by the peer itself.
  return (method) => table.get(method)
}
