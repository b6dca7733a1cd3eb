// The HTTP error format (SPEC §12): `{error: {code, message, details?}}` with a proper status. Each
// status is a Schema.Class (encoded without a tag); `toApiError` maps domain errors by their status.
import { HttpApiSchema } from "@effect/platform"
import { Effect, Schema } from "effect"

export const ErrorBody = Schema.Struct({
  code: Schema.String,
  message: Schema.String,
  details: Schema.optional(Schema.Unknown)
})
export type ErrorBody = typeof ErrorBody.Type

/** Each class carries its status inside the body too: the literal keeps the classes apart when the
 * API encodes an error (they are otherwise the same shape). */
const make = <const Name extends string, const Status extends number>(name: Name, status: Status) =>
  Schema.Class<any>(name)({
    error: Schema.Struct({ ...ErrorBody.fields, status: Schema.Literal(status) })
  }, HttpApiSchema.annotations({ status, description: name }))

export class BadRequest extends make("BadRequest", 400) {}
export class Unauthorized extends make("Unauthorized", 401) {}
export class Forbidden extends make("Forbidden", 403) {}
export class NotFound extends make("NotFound", 404) {}
export class Conflict extends make("Conflict", 409) {}
export class MethodNotAllowed extends make("MethodNotAllowed", 405) {}
export class PayloadTooLarge extends make("PayloadTooLarge", 413) {}
export class UnsupportedMediaType extends make("UnsupportedMediaType", 415) {}
export class Unprocessable extends make("Unprocessable", 422) {}
export class TooManyRequests extends make("TooManyRequests", 429) {}
export class NotImplementedError extends make("NotImplemented", 501) {}
export class BadGateway extends make("BadGateway", 502) {}
export class Unavailable extends make("Unavailable", 503) {}
export class GatewayTimeout extends make("GatewayTimeout", 504) {}
export class Internal extends make("Internal", 500) {}

export type ApiError =
  | BadRequest | Unauthorized | Forbidden | NotFound | MethodNotAllowed | Conflict | PayloadTooLarge | UnsupportedMediaType | Unprocessable
  | TooManyRequests | NotImplementedError | BadGateway | Unavailable | GatewayTimeout | Internal

/** Every error an authenticated endpoint may answer with. */
export const CommonErrors = [BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unprocessable, TooManyRequests, NotImplementedError, BadGateway, Unavailable, GatewayTimeout, Internal] as const

const byStatus: Record<number, new (p: { error: any }) => ApiError> = {
  400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed, 409: Conflict, 413: PayloadTooLarge, 415: UnsupportedMediaType,
  422: Unprocessable, 429: TooManyRequests, 501: NotImplementedError, 502: BadGateway, 503: Unavailable, 504: GatewayTimeout, 500: Internal
}

export const apiError = (status: number, code: string, message: string, details?: unknown): ApiError => {
  const C = byStatus[status] ?? Internal
  const s = byStatus[status] ? status : 500
  return new C({ error: details === undefined ? { code, message, status: s } : { code, message, details, status: s } })
}

const snake = (tag: string) => tag.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase()

/** JSON-RPC codes from plugin calls → HTTP. */
const rpcStatus: Record<number, number> = {
  [-32000]: 503, [-32001]: 403, [-32002]: 502, [-32003]: 504, [-32004]: 501, [-32005]: 403, [-32602]: 422, [-32601]: 501
}

/** Map any domain error (tagged, with a `status` getter, or a JSON-RPC error with `code`) to the API format. */
export const toApiError = (e: unknown): ApiError => {
  if (e instanceof BadRequest || e instanceof Unauthorized || e instanceof Forbidden || e instanceof NotFound || e instanceof Conflict ||
    e instanceof MethodNotAllowed || e instanceof PayloadTooLarge || e instanceof UnsupportedMediaType || e instanceof Unprocessable || e instanceof TooManyRequests || e instanceof NotImplementedError ||
    e instanceof BadGateway || e instanceof Unavailable || e instanceof GatewayTimeout || e instanceof Internal) return e
  const err = e as { _tag?: string; status?: unknown; code?: unknown; message?: unknown; errors?: unknown; problems?: unknown; data?: unknown }
  const tag = typeof err?._tag === "string" ? err._tag : "Error"
  const message = typeof err?.message === "string" ? err.message : String(e)
  const details = err?.errors ?? err?.problems ?? (err?.data !== undefined ? err.data : undefined)
  if (typeof err?.status === "number") return apiError(err.status, snake(tag), message, details)
  if (typeof err?.code === "number") {
    const s = rpcStatus[err.code] ?? 502
    return apiError(s, snake(tag), message, details === undefined ? { rpcCode: err.code } : { rpcCode: err.code, data: details })
  }
  return apiError(500, "internal", message)
}

/** Run a domain effect in a handler: its failures become API errors. */
export const api = <A, E, R>(eff: Effect.Effect<A, E, R>): Effect.Effect<A, ApiError, R> => Effect.mapError(eff, toApiError)
