// Plain-JS fast paths between the worker runtime and the Promise (`definePlugin`) facade.
// - A data/action handler registered by the facade carries `DirectHandler`: the Promise function
//   itself, so the worker answers `getData`/`performAction` without running a fiber per call.
// - A remote capability service built by the worker carries `DirectCalls`: the same calls as
//   Promises, taking the invocation explicitly, so `ctx.state.get` (…) is one peer call instead of
//   a runtime run. Services without it (test layers, the host's) go through Effect as before.
import type { InvocationContext } from "../../protocol/envelope.js"

export const DirectHandler: unique symbol = Symbol.for("gantry/sdk/DirectHandler")
export type DirectHandlerFn = (params: Record<string, unknown>, invocation: InvocationContext | undefined) => unknown

export const DirectCalls: unique symbol = Symbol.for("gantry/sdk/DirectCalls")

/** `service` with its plain-JS calls attached. */
export const withDirect = <S extends object, D extends object>(service: S, direct: D): S =>
  Object.assign(service, { [DirectCalls]: direct })

/** The plain-JS calls a service carries, if any. */
export const directOf = <D>(service: object): D | undefined =>
  (service as { [DirectCalls]?: D })[DirectCalls]

export const directHandlerOf = (handler: object): DirectHandlerFn | undefined =>
  (handler as { [DirectHandler]?: DirectHandlerFn })[DirectHandler]
