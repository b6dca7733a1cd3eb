// A bidirectional JSON-RPC 2.0 peer over an NDJSON byte stream, used by the host and the worker.
// The transport core (line splitting, pending map, deadlines, writes) is plain code owned by one
// scoped resource; calls are `Effect.async`, inbound requests run as fibers in a FiberSet.
import { Cause, Effect, Exit, Fiber, FiberSet, Option, Runtime, type Either, type Scope } from "effect"
import {
  CANCEL_METHOD,
  MAX_MESSAGE_BYTES,
  type InvocationContext,
  type RpcId
} from "../protocol/envelope.js"
import {
  InvalidParams,
  InvalidRequest,
  MethodNotFound,
  RpcTimeout,
  WorkerError,
  WorkerUnavailable,
  fromWire,
  isRpcError,
  toWire,
  type RpcError,
  type WireError
} from "../protocol/errors.js"

export interface InboundContext {
  /** Request id; undefined for notifications. */
  readonly id: RpcId | undefined
  readonly method: string
  /** Invocation metadata the host put on a host→worker envelope (worker side). */
  readonly invocation: InvocationContext | undefined
  /** Invocation id a worker echoed on a worker→host message (host side). */
  readonly invocationId: string | undefined
}

export interface Handler<R> {
  readonly decode?: (u: unknown) => Either.Either<any, InvalidParams>
  readonly handle: (params: any, ctx: InboundContext) => Effect.Effect<unknown, RpcError, R>
  /** A plain-JS form of the handler (a Promise plugin's function), tried first: a result (a value or
   * a Promise) is answered directly, without a fiber; `NoDirect` falls back to `handle`. A throw or
   * rejection is turned into a wire error by the peer's `directError`. A cancelled direct request is
   * answered at once as cancelled; its Promise's later outcome is dropped. */
  readonly direct?: (params: any, ctx: InboundContext) => unknown
}

/** Returned by `Handler.direct` to use the Effect handler instead. */
export const NoDirect: unique symbol = Symbol.for("gantry/rpc/NoDirect")

export interface CallOptions {
  readonly timeoutMs?: number
  readonly invocation?: InvocationContext
  readonly invocationId?: string
}

export interface PeerOptions<R> {
  readonly name: string
  readonly input: NodeJS.ReadableStream
  readonly output: NodeJS.WritableStream
  readonly handlers: (method: string) => Handler<R> | undefined
  /** Called for lines that are not JSON-RPC (truncated) and other transport notes. */
  readonly onStray?: (text: string) => void
  /** Worker side: answer an unparseable line with -32700. */
  readonly replyToParseErrors?: boolean
  readonly defaultTimeoutMs?: number
  readonly maxMessageBytes?: number
  /** Message for pending calls failed by a closed stream (e.g. with the stderr tail). */
  readonly closedMessage?: () => string
  /** The wire error for a throw or rejection of a `direct` handler (default: its message, -32002). */
  readonly directError?: (e: unknown) => RpcError
}

export interface Peer {
  readonly call: (method: string, params: unknown, options?: CallOptions) => Effect.Effect<unknown, RpcError>
  /** The same call for plain-JS callers (a Promise plugin's context): rejects with the RpcError. */
  readonly callPromise: (method: string, params: unknown, options?: CallOptions) => Promise<unknown>
  readonly notify: (method: string, params: unknown, options?: CallOptions) => void
  /** Completes when the stream closes. */
  readonly awaitClosed: Effect.Effect<void>
  readonly isOpen: () => boolean
  readonly close: (reason: string) => Effect.Effect<void>
  readonly pendingCount: () => number
}

interface Pending {
  readonly method: string
  readonly succeed: (value: unknown) => void
  readonly fail: (e: RpcError) => void
  timer: ReturnType<typeof setTimeout> | undefined
}

const STRAY_PREVIEW = 200
const preview = (s: string) => (s.length > STRAY_PREVIEW ? `${s.slice(0, STRAY_PREVIEW)}… (${s.length} chars)` : s)

const errorOfCause = (cause: Cause.Cause<unknown>): RpcError => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure) && isRpcError(failure.value)) return failure.value
  const squashed = Cause.squash(cause)
  if (isRpcError(squashed)) return squashed
  const message = squashed instanceof Error ? squashed.message : String(squashed)
  const code = (squashed as { code?: unknown } | null)?.code
  return typeof code === "number" && code !== -32002
    ? fromWire({ code, message })
    : new WorkerError({ message })
}

export const make = <R>(options: PeerOptions<R>): Effect.Effect<Peer, never, Scope.Scope | R> =>
  Effect.gen(function* () {
    const runFork = yield* FiberSet.makeRuntime<R, unknown, unknown>()
    const fibers = yield* FiberSet.make<unknown, unknown>()
    const runForkNow = Runtime.runFork(yield* Effect.runtime<R>())
    const max = options.maxMessageBytes ?? MAX_MESSAGE_BYTES
    const defaultTimeout = options.defaultTimeoutMs ?? 30_000
    const pending = new Map<RpcId, Pending>()
    const inbound = new Map<RpcId, Fiber.RuntimeFiber<unknown, unknown>>()
    /** Requests being answered by a `direct` handler's Promise. */
    const inboundDirect = new Map<RpcId, string>()
    const directError = options.directError ?? ((e: unknown) => errorOfCause(Cause.die(e)))
    const closeWaiters: Array<() => void> = []
    let nextId = 1
    let open = true
    let closeReason = ""

    // ---- writing: lines produced in the same tick are coalesced into one write ----
    let outBuf: Array<string> = []
    let flushScheduled = false
    const flush = () => {
      flushScheduled = false
      if (outBuf.length === 0) return
      const data = outBuf.length === 1 ? outBuf[0]! : outBuf.join("")
      outBuf = []
      if (open) options.output.write(data)
    }
    const writeLine = (line: string) => {
      if (!open) return
      outBuf.push(line)
      if (!flushScheduled) {
        flushScheduled = true
        process.nextTick(flush)
      }
    }
    const send = (msg: object): RpcError | undefined => {
      let line: string | undefined
      try {
        line = JSON.stringify(msg)
      } catch (e) {
        // BigInt or a cycle in a result/params must fail that one message, not throw out of a stream callback
        return new InvalidRequest({ message: `message is not serializable: ${e instanceof Error ? e.message : String(e)}` })
      }
      if (line === undefined) return new InvalidRequest({ message: "message is not serializable" })
      // the limit is in UTF-8 bytes; a UTF-16 unit is at most 3 bytes, so short lines skip the count
      const bytes = line.length * 3 <= max ? line.length : Buffer.byteLength(line, "utf8")
      if (bytes > max) return new InvalidRequest({ message: `message of ${bytes} bytes exceeds the ${max} byte limit` })
      writeLine(line + "\n")
      return undefined
    }
    const sendError = (id: RpcId | null, e: RpcError) => {
      // an error whose `data` cannot be sent still reaches the caller, without its data
      if (send({ jsonrpc: "2.0", id, error: toWire(e) })) send({ jsonrpc: "2.0", id, error: { code: e.code, message: e.message.slice(0, 10_000) } })
    }

    // ---- closing ----
    const markClosed = (reason: string) => {
      if (!open) return
      flush()
      open = false
      closeReason = reason
      const message = options.closedMessage?.() ?? `${options.name}: ${reason}`
      for (const [, p] of pending) {
        if (p.timer) clearTimeout(p.timer)
        p.fail(new WorkerUnavailable({ message }))
      }
      pending.clear()
      for (const [, f] of inbound) runFork(Fiber.interrupt(f))
      inbound.clear()
      inboundDirect.clear()
      for (const w of closeWaiters.splice(0)) w()
    }

    // ---- inbound ----
    const dispatch = (msg: Record<string, unknown>) => {
      const method = msg.method as string
      const isRequest = msg.id !== undefined && msg.id !== null
      const id = isRequest ? (msg.id as RpcId) : undefined
      if (method === CANCEL_METHOD) {
        const target = (msg.params as { id?: RpcId } | undefined)?.id
        const f = target === undefined ? undefined : inbound.get(target)
        if (f) {
          inbound.delete(target!)
          runFork(Fiber.interrupt(f))
        } else if (target !== undefined && inboundDirect.has(target)) {
          const cancelled = inboundDirect.get(target)!
          inboundDirect.delete(target)
          sendError(target, new RpcTimeout({ message: `request "${cancelled}" was cancelled` }))
        }
        return
      }
      const handler = options.handlers(method)
      if (!handler) {
        if (isRequest) sendError(id!, new MethodNotFound({ message: `Method not found: ${method}` }))
        return
      }
      let params: unknown = msg.params
      if (handler.decode) {
        const r = handler.decode(params)
        if (r._tag === "Left") {
          if (isRequest) sendError(id!, r.left)
          else options.onStray?.(`notification "${method}" dropped: ${r.left.message}`)
          return
        }
        params = r.right
      }
      const p = params as { paperclipInvocationId?: unknown } | undefined
      const ctx: InboundContext = {
        id,
        method,
        invocation: msg.paperclipInvocation as InvocationContext | undefined,
        invocationId: (msg.paperclipInvocationId as string | undefined) ??
          (typeof p?.paperclipInvocationId === "string" ? p.paperclipInvocationId : undefined)
      }
      if (handler.direct) {
        let r: unknown
        try {
          r = handler.direct(params, ctx)
        } catch (e) {
          if (isRequest) sendError(id!, directError(e))
          return
        }
        if (r !== NoDirect) {
          const thenable = typeof r === "object" && r !== null && typeof (r as PromiseLike<unknown>).then === "function"
          if (!isRequest) {
            if (thenable) (r as PromiseLike<unknown>).then(undefined, () => {})
          } else if (!thenable) {
            respondValue(id!, r)
          } else {
            inboundDirect.set(id!, method)
            ;(r as PromiseLike<unknown>).then(
              (v) => {
                if (inboundDirect.delete(id!)) respondValue(id!, v)
              },
              (e: unknown) => {
                if (inboundDirect.delete(id!)) sendError(id!, directError(e))
              }
            )
          }
          return
        }
      }
      // the fiber starts synchronously (runFork runs until the first wait): a handler that never
      // waits (state in memory, an echo) has its exit at once and is answered without a hop; one
      // that waits continues as a fiber in the set. (runSyncExit did the same with a SyncScheduler
      // per call and an exception for the hand-over: measurably slower on the nested path.)
      const asyncFiber = runForkNow(handler.handle(params, ctx))
      const exit = asyncFiber.unsafePoll()
      if (exit) {
        if (isRequest) respond(id!, method, exit)
        return
      }
      FiberSet.unsafeAdd(fibers, asyncFiber)
      if (!isRequest) return
      inbound.set(id!, asyncFiber)
      asyncFiber.addObserver((exit) => {
        if (inbound.get(id!) === asyncFiber) inbound.delete(id!)
        respond(id!, method, exit)
      })
    }

    const respondValue = (id: RpcId, value: unknown) => {
      if (!open) return
      const err = send({ jsonrpc: "2.0", id, result: value === undefined ? null : value })
      if (err) sendError(id, err)
    }
    const respond = (id: RpcId, method: string, exit: Exit.Exit<unknown, unknown>) => {
      if (!open) return
      if (Exit.isSuccess(exit)) {
        respondValue(id, exit.value)
      } else if (Cause.isInterruptedOnly(exit.cause)) {
        sendError(id, new RpcTimeout({ message: `request "${method}" was cancelled` }))
      } else {
        sendError(id, errorOfCause(exit.cause))
      }
    }

    const handleLine = (line: string) => {
      if (line.length === 0 || (line.length < 3 && line.trim().length === 0)) return
      let msg: unknown
      try {
        msg = JSON.parse(line)
      } catch {
        options.onStray?.(`stray output: ${preview(line)}`)
        if (options.replyToParseErrors) send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } })
        return
      }
      if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
        options.onStray?.(`stray output: ${preview(line)}`)
        if (options.replyToParseErrors) send({ jsonrpc: "2.0", id: null, error: { code: -32600, message: "Invalid Request" } })
        return
      }
      const m = msg as Record<string, unknown>
      if (typeof m.method === "string") return dispatch(m)
      if (m.id !== undefined && ("result" in m || "error" in m)) {
        const entry = pending.get(m.id as RpcId)
        if (!entry) {
          options.onStray?.(`response for unknown or finished call id ${JSON.stringify(m.id)} ignored`)
          return
        }
        pending.delete(m.id as RpcId)
        if (entry.timer) clearTimeout(entry.timer)
        if (m.error !== undefined && m.error !== null) entry.fail(fromWire(m.error as WireError))
        else entry.succeed(m.result)
        return
      }
      options.onStray?.(`not a JSON-RPC message: ${preview(line)}`)
      if (options.replyToParseErrors && m.id !== undefined) send({ jsonrpc: "2.0", id: m.id, error: { code: -32600, message: "Invalid Request" } })
    }

    // ---- line splitting on raw chunks ----
    let parts: Array<Buffer> = []
    let partsSize = 0
    let discarding = false
    const onData = (chunk: Buffer | string) => {
      const buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk
      let start = 0
      while (start < buf.length) {
        const nl = buf.indexOf(10, start)
        if (nl === -1) {
          if (discarding) return
          const rest = buf.subarray(start)
          partsSize += rest.length
          if (partsSize > max) {
            options.onStray?.(`message over ${max} bytes refused (discarding until end of line)`)
            discarding = true
            parts = []
            partsSize = 0
            return
          }
          parts.push(rest)
          return
        }
        if (discarding) {
          discarding = false
        } else {
          const piece = buf.subarray(start, nl)
          let line: string
          if (parts.length > 0) {
            parts.push(piece)
            const total = partsSize + piece.length
            line = total > max ? "" : Buffer.concat(parts, total).toString("utf8")
            if (total > max) options.onStray?.(`message over ${max} bytes refused`)
            parts = []
            partsSize = 0
          } else {
            line = piece.length > max ? "" : piece.toString("utf8")
            if (piece.length > max) options.onStray?.(`message over ${max} bytes refused`)
          }
          if (line.length > 0) handleLine(line.charCodeAt(line.length - 1) === 13 ? line.slice(0, -1) : line)
        }
        start = nl + 1
      }
    }
    const onEnd = () => markClosed("stream ended")
    const onError = (e: Error) => markClosed(`stream error: ${e.message}`)
    options.input.on("data", onData)
    options.input.on("end", onEnd)
    options.input.on("close", onEnd)
    options.input.on("error", onError)
    options.output.on("error", onError)

    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        markClosed("peer closed")
        options.input.off("data", onData)
        options.input.off("end", onEnd)
        options.input.off("close", onEnd)
        options.input.off("error", onError)
        options.output.off("error", onError)
      })
    )

    const envelope = (base: Record<string, unknown>, o: CallOptions | undefined) => {
      if (o?.invocation) base.paperclipInvocation = o.invocation
      if (o?.invocationId) base.paperclipInvocationId = o.invocationId
      return base
    }

    const cancel = (id: RpcId) => {
      const entry = pending.get(id)
      if (entry) {
        pending.delete(id)
        if (entry.timer) clearTimeout(entry.timer)
        send({ jsonrpc: "2.0", method: CANCEL_METHOD, params: { id } })
      }
    }
    /** Register a pending call and send it; the outcome goes to `succeed`/`fail` exactly once. */
    const start = (
      method: string,
      params: unknown,
      o: CallOptions | undefined,
      succeed: (value: unknown) => void,
      fail: (e: RpcError) => void
    ): RpcId | undefined => {
      if (!open) {
        fail(new WorkerUnavailable({ message: options.closedMessage?.() ?? `${options.name}: ${closeReason}` }))
        return undefined
      }
      const id = nextId++
      const entry: Pending = { method, succeed, fail, timer: undefined }
      const ms = o?.timeoutMs ?? defaultTimeout
      if (ms > 0 && Number.isFinite(ms)) {
        entry.timer = setTimeout(() => {
          if (pending.delete(id)) {
            send({ jsonrpc: "2.0", method: CANCEL_METHOD, params: { id } })
            fail(new RpcTimeout({ message: `${options.name}: call "${method}" timed out after ${ms} ms` }))
          }
        }, ms)
      }
      pending.set(id, entry)
      const err = send(envelope({ jsonrpc: "2.0", id, method, params: params ?? {} }, o))
      if (err) {
        pending.delete(id)
        if (entry.timer) clearTimeout(entry.timer)
        fail(err)
        return undefined
      }
      return id
    }
    // the canceller returned to `Effect.async` runs only when the calling fiber is interrupted:
    // it sends `$/cancelRequest` and forgets the pending entry
    const call = (method: string, params: unknown, o?: CallOptions): Effect.Effect<unknown, RpcError> =>
      Effect.async<unknown, RpcError>((resume) => {
        const id = start(method, params, o, (v) => resume(Effect.succeed(v)), (e) => resume(Effect.fail(e)))
        return id === undefined ? undefined : Effect.sync(() => cancel(id))
      })
    const callPromise = (method: string, params: unknown, o?: CallOptions): Promise<unknown> =>
      new Promise((resolve, reject) => {
        start(method, params, o, resolve, reject)
      })

    const peer: Peer = {
      call,
      callPromise,
      notify: (method, params, o) => {
        send(envelope({ jsonrpc: "2.0", method, params: params ?? {} }, o))
      },
      awaitClosed: Effect.async<void>((resume) => {
        if (!open) return resume(Effect.void)
        const w = () => resume(Effect.void)
        closeWaiters.push(w)
        return Effect.sync(() => {
          const i = closeWaiters.indexOf(w)
          if (i >= 0) closeWaiters.splice(i, 1)
        })
      }),
      isOpen: () => open,
      close: (reason) => Effect.sync(() => markClosed(reason)),
      pendingCount: () => pending.size
    }
    return peer
  })
