// Protocol errors: one Schema.TaggedError per JSON-RPC code (SPEC §3.4), plus wire conversion.
import { Schema } from "effect"

export const ErrorCodes = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  WorkerUnavailable: -32000,
  CapabilityDenied: -32001,
  WorkerError: -32002,
  Timeout: -32003,
  NotImplemented: -32004,
  InvocationScopeDenied: -32005,
  /** Paperclip's single-tenant worker refusing a second company's config. */
  CrossTenantConfig: -32006
} as const

const fields = { message: Schema.String, data: Schema.optional(Schema.Unknown) }

export class ParseError extends Schema.TaggedError<ParseError>()("ParseError", fields) {
  static readonly code = ErrorCodes.ParseError
  get code() { return ErrorCodes.ParseError }
}
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", fields) {
  static readonly code = ErrorCodes.InvalidRequest
  get code() { return ErrorCodes.InvalidRequest }
}
export class MethodNotFound extends Schema.TaggedError<MethodNotFound>()("MethodNotFound", fields) {
  static readonly code = ErrorCodes.MethodNotFound
  get code() { return ErrorCodes.MethodNotFound }
}
export class InvalidParams extends Schema.TaggedError<InvalidParams>()("InvalidParams", fields) {
  static readonly code = ErrorCodes.InvalidParams
  get code() { return ErrorCodes.InvalidParams }
}
export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", fields) {
  static readonly code = ErrorCodes.InternalError
  get code() { return ErrorCodes.InternalError }
}
export class WorkerUnavailable extends Schema.TaggedError<WorkerUnavailable>()("WorkerUnavailable", fields) {
  static readonly code = ErrorCodes.WorkerUnavailable
  get code() { return ErrorCodes.WorkerUnavailable }
}
export class CapabilityDenied extends Schema.TaggedError<CapabilityDenied>()("CapabilityDenied", fields) {
  static readonly code = ErrorCodes.CapabilityDenied
  get code() { return ErrorCodes.CapabilityDenied }
}
export class WorkerError extends Schema.TaggedError<WorkerError>()("WorkerError", fields) {
  static readonly code = ErrorCodes.WorkerError
  get code() { return ErrorCodes.WorkerError }
}
export class RpcTimeout extends Schema.TaggedError<RpcTimeout>()("RpcTimeout", fields) {
  static readonly code = ErrorCodes.Timeout
  get code() { return ErrorCodes.Timeout }
}
export class NotImplemented extends Schema.TaggedError<NotImplemented>()("NotImplemented", fields) {
  static readonly code = ErrorCodes.NotImplemented
  get code() { return ErrorCodes.NotImplemented }
}
export class InvocationScopeDenied extends Schema.TaggedError<InvocationScopeDenied>()("InvocationScopeDenied", fields) {
  static readonly code = ErrorCodes.InvocationScopeDenied
  get code() { return ErrorCodes.InvocationScopeDenied }
}
export class CrossTenantConfig extends Schema.TaggedError<CrossTenantConfig>()("CrossTenantConfig", fields) {
  static readonly code = ErrorCodes.CrossTenantConfig
  get code() { return ErrorCodes.CrossTenantConfig }
}
/** A code outside the table (a plugin may send its own); kept with its number. */
export class RemoteError extends Schema.TaggedError<RemoteError>()("RemoteError", {
  ...fields,
  remoteCode: Schema.Number
}) {
  get code() { return this.remoteCode }
}

export type RpcError =
  | ParseError
  | InvalidRequest
  | MethodNotFound
  | InvalidParams
  | InternalError
  | WorkerUnavailable
  | CapabilityDenied
  | WorkerError
  | RpcTimeout
  | NotImplemented
  | InvocationScopeDenied
  | CrossTenantConfig
  | RemoteError

export const RpcError = Schema.Union(
  ParseError,
  InvalidRequest,
  MethodNotFound,
  InvalidParams,
  InternalError,
  WorkerUnavailable,
  CapabilityDenied,
  WorkerError,
  RpcTimeout,
  NotImplemented,
  InvocationScopeDenied,
  CrossTenantConfig,
  RemoteError
)

export interface WireError {
  readonly code: number
  readonly message: string
  readonly data?: unknown
}

const byCode: Record<number, new (args: { message: string; data?: unknown }) => RpcError> = {
  [ErrorCodes.ParseError]: ParseError,
  [ErrorCodes.InvalidRequest]: InvalidRequest,
  [ErrorCodes.MethodNotFound]: MethodNotFound,
  [ErrorCodes.InvalidParams]: InvalidParams,
  [ErrorCodes.InternalError]: InternalError,
  [ErrorCodes.WorkerUnavailable]: WorkerUnavailable,
  [ErrorCodes.CapabilityDenied]: CapabilityDenied,
  [ErrorCodes.WorkerError]: WorkerError,
  [ErrorCodes.Timeout]: RpcTimeout,
  [ErrorCodes.NotImplemented]: NotImplemented,
  [ErrorCodes.InvocationScopeDenied]: InvocationScopeDenied,
  [ErrorCodes.CrossTenantConfig]: CrossTenantConfig
}

/** Turn a wire `{code, message, data?}` into its tagged error. */
export const fromWire = (e: WireError): RpcError => {
  const message = typeof e.message === "string" ? e.message : String(e.message)
  const Ctor = byCode[e.code]
  if (Ctor) return e.data === undefined ? new Ctor({ message }) : new Ctor({ message, data: e.data })
  return e.data === undefined
    ? new RemoteError({ message, remoteCode: typeof e.code === "number" ? e.code : ErrorCodes.WorkerError })
    : new RemoteError({ message, remoteCode: typeof e.code === "number" ? e.code : ErrorCodes.WorkerError, data: e.data })
}

export const toWire = (e: RpcError): WireError =>
  e.data === undefined ? { code: e.code, message: e.message } : { code: e.code, message: e.message, data: e.data }

export const isRpcError = (u: unknown): u is RpcError =>
  typeof u === "object" && u !== null && "_tag" in u && typeof (u as { code?: unknown }).code === "number" &&
  typeof (u as { message?: unknown }).message === "string" &&
  ((u as { _tag: string })._tag in tagSet)

const tagSet: Record<string, true> = {
  ParseError: true, InvalidRequest: true, MethodNotFound: true, InvalidParams: true, InternalError: true,
  WorkerUnavailable: true, CapabilityDenied: true, WorkerError: true, RpcTimeout: true, NotImplemented: true,
  InvocationScopeDenied: true, CrossTenantConfig: true, RemoteError: true
}
