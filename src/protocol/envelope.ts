// JSON-RPC 2.0 envelope types and the invocation metadata Paperclip puts on envelopes.
import type { WireError } from "./errors.js"

export type RpcId = number | string
export interface InvocationContext {
  readonly id: string
  readonly scope: { readonly companyId: string }
}
export interface RequestMessage {
  readonly jsonrpc: "2.0"
  readonly id: RpcId
  readonly method: string
  readonly params?: unknown
  readonly paperclipInvocation?: InvocationContext
  readonly paperclipInvocationId?: string
}
export interface NotificationMessage {
  readonly jsonrpc: "2.0"
  readonly method: string
  readonly params?: unknown
  readonly paperclipInvocation?: InvocationContext
  readonly paperclipInvocationId?: string
}
export interface SuccessMessage {
  readonly jsonrpc: "2.0"
  readonly id: RpcId
  readonly result: unknown
}
export interface ErrorMessage {
  readonly jsonrpc: "2.0"
  readonly id: RpcId | null
  readonly error: WireError
}
export type Message = RequestMessage | NotificationMessage | SuccessMessage | ErrorMessage

export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024
export const CANCEL_METHOD = "$/cancelRequest"
export const API_VERSION = 1
