// The JSON-RPC peer (SPEC §3): two peers wired back to back, or one peer driven with raw NDJSON lines.
import { describe, expect, it } from "@effect/vitest"
import { Cause, Data, Deferred, Duration, Effect, Exit, Fiber, Option, Queue, type Scope } from "effect"
import { PassThrough } from "node:stream"
import { CANCEL_METHOD, MAX_MESSAGE_BYTES } from "../../src/protocol/envelope.js"
import {
  CapabilityDenied,
  ErrorCodes,
  NotImplemented,
  WorkerError,
  type RpcError
} from "../../src/protocol/errors.js"
import { StateKeyParams, paramsDecoder } from "../../src/protocol/methods.js"
import * as Peer from "../../src/rpc/Peer.js"

type Handlers = Record<string, Peer.Handler<never>>
type Wire = Record<string, unknown>

const WAIT = Duration.seconds(5)
class WaitTimeout extends Data.TaggedError("WaitTimeout")<{ readonly what: string }> {}

/** Take from a queue, failing the test (not hanging it) if nothing arrives in time. */
const take = <A>(q: Queue.Queue<A>, what: string) =>
  Queue.take(q).pipe(Effect.timeoutFail({ duration: WAIT, onTimeout: () => new WaitTimeout({ what }) }))
const awaitD = <A, E>(d: Deferred.Deferred<A, E>, what: string) =>
  Deferred.await(d).pipe(Effect.timeoutFail({ duration: WAIT, onTimeout: () => new WaitTimeout({ what }) }))

/** The typed error a call failed with. */
const failure = <A>(exit: Exit.Exit<A, RpcError>): RpcError => {
  if (Exit.isSuccess(exit)) throw new Error(`expected a failure, got ${JSON.stringify(exit.value)}`)
  const f = Cause.failureOption(exit.cause)
  if (Option.isNone(f)) throw new Error(`expected a typed failure, got ${Cause.pretty(exit.cause)}`)
  return f.value
}

/** Collect onStray notes of a peer. */
const strays = Effect.map(Queue.unbounded<string>(), (q) => ({ q, onStray: (s: string) => void Queue.unsafeOffer(q, s) }))

/** Two peers connected by two PassThrough streams. */
const pair = (
  aHandlers: Handlers,
  bHandlers: Handlers,
  extra: Partial<Omit<Peer.PeerOptions<never>, "input" | "output" | "handlers">> = {}
): Effect.Effect<{
  a: Peer.Peer
  b: Peer.Peer
  aToB: PassThrough
  bToA: PassThrough
  aStray: Queue.Queue<string>
  bStray: Queue.Queue<string>
}, never, Scope.Scope> =>
  Effect.gen(function* () {
    const aToB = new PassThrough()
    const bToA = new PassThrough()
    const sa = yield* strays
    const sb = yield* strays
    const a = yield* Peer.make({ name: "a", input: bToA, output: aToB, handlers: (m) => aHandlers[m], onStray: sa.onStray, ...extra })
    const b = yield* Peer.make({ name: "b", input: aToB, output: bToA, handlers: (m) => bHandlers[m], onStray: sb.onStray, ...extra })
    return { a, b, aToB, bToA, aStray: sa.q, bStray: sb.q }
  })

/** Parse NDJSON written on a stream into a queue of messages. */
const lines = (stream: PassThrough) =>
  Effect.gen(function* () {
    const q = yield* Queue.unbounded<Wire>()
    let buf = ""
    stream.on("data", (chunk: Buffer) => {
      buf += chunk.toString("utf8")
      let nl = buf.indexOf("\n")
      while (nl !== -1) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        Queue.unsafeOffer(q, JSON.parse(line) as Wire)
        nl = buf.indexOf("\n")
      }
    })
    return q
  })

/** One peer; the test writes its input and reads its output as raw lines. */
const single = (handlers: Handlers, extra: Partial<Omit<Peer.PeerOptions<never>, "input" | "output" | "handlers">> = {}) =>
  Effect.gen(function* () {
    const input = new PassThrough()
    const output = new PassThrough()
    const out = yield* lines(output)
    const s = yield* strays
    const peer = yield* Peer.make({ name: "peer", input, output, handlers: (m) => handlers[m], onStray: s.onStray, ...extra })
    const write = (msg: unknown) => void input.write(JSON.stringify(msg) + "\n")
    return { peer, input, output, out, stray: s.q, write }
  })

const echo: Peer.Handler<never> = { handle: (params) => Effect.succeed({ echoed: params }) }

describe("Peer", () => {
  it.scopedLive("requests both ways on the same pipe pair", () =>
    Effect.gen(function* () {
      let peerB: Peer.Peer | undefined
      const { a, b } = yield* pair(
        { "host.ping": { handle: (p: { n: number }) => Effect.succeed({ pong: p.n + 1 }) } },
        {
          echo,
          // a handler that calls back into the other side while serving a request
          nested: {
            handle: () =>
              Effect.suspend(() => peerB!.call("host.ping", { n: 41 })).pipe(Effect.map((r) => ({ fromHost: r })))
          }
        }
      )
      peerB = b
      expect(yield* a.call("echo", { x: [1, "two", null] })).toEqual({ echoed: { x: [1, "two", null] } })
      expect(yield* b.call("host.ping", { n: 1 })).toEqual({ pong: 2 })
      expect(yield* a.call("nested", {})).toEqual({ fromHost: { pong: 42 } })
      expect(a.pendingCount()).toBe(0)
      expect(b.pendingCount()).toBe(0)
    }))

  it.scopedLive("a handler returning undefined answers null; missing params arrive as {}", () =>
    Effect.gen(function* () {
      const seen = yield* Deferred.make<unknown>()
      const { a } = yield* pair({}, { "void": { handle: (p) => Effect.asVoid(Deferred.succeed(seen, p)) } })
      expect(yield* a.call("void", undefined)).toBeNull()
      expect(yield* awaitD(seen, "params")).toEqual({})
    }))

  it.scopedLive("notifications are delivered without a response", () =>
    Effect.gen(function* () {
      const got = yield* Queue.unbounded<{ params: unknown; id: unknown; method: string }>()
      const { a, b, bToA } = yield* pair({}, {
        log: { handle: (params, ctx) => Effect.asVoid(Queue.offer(got, { params, id: ctx.id, method: ctx.method })) }
      })
      const fromB = yield* lines(bToA)
      a.notify("log", { level: "info", message: "hello" })
      a.notify("log", { level: "warn", message: "again" })
      expect(yield* take(got, "notification 1")).toEqual({ params: { level: "info", message: "hello" }, id: undefined, method: "log" })
      expect(yield* take(got, "notification 2")).toEqual({ params: { level: "warn", message: "again" }, id: undefined, method: "log" })
      // a round trip afterwards proves nothing was sent back for the notifications
      b.notify("nothing", {})
      expect(yield* a.call("log", { level: "debug", message: "as a request" })).toBeNull()
      const sent: Array<Wire> = []
      while (true) {
        const m = yield* Queue.poll(fromB)
        if (Option.isNone(m)) break
        sent.push(m.value)
      }
      expect(sent).toEqual([{ jsonrpc: "2.0", method: "nothing", params: {} }, { jsonrpc: "2.0", id: 1, result: null }])
      // an unknown notification is dropped silently (no -32601 for notifications)
      expect(yield* Queue.poll(fromB)).toEqual(Option.none())
    }))

  it.scopedLive("invocation metadata travels on the envelope and reaches the handler", () =>
    Effect.gen(function* () {
      const ctxs = yield* Queue.unbounded<Peer.InboundContext>()
      const { a } = yield* pair({}, { inv: { handle: (_p, ctx) => Queue.offer(ctxs, ctx) } })
      yield* a.call("inv", {}, { invocation: { id: "inv-1", scope: { companyId: "acme" } } })
      expect(yield* take(ctxs, "ctx")).toMatchObject({ method: "inv", invocation: { id: "inv-1", scope: { companyId: "acme" } }, invocationId: undefined })
      yield* a.call("inv", {}, { invocationId: "inv-2" })
      expect((yield* take(ctxs, "ctx")).invocationId).toBe("inv-2")
      yield* a.call("inv", { paperclipInvocationId: "inv-3" })
      expect((yield* take(ctxs, "ctx")).invocationId).toBe("inv-3")
    }))

  it.scopedLive("a slow inbound request does not block a fast one", () =>
    Effect.gen(function* () {
      const slowStarted = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const order: Array<string> = []
      const { a } = yield* pair({}, {
        slow: {
          handle: () =>
            Deferred.succeed(slowStarted, undefined).pipe(
              Effect.zipRight(Deferred.await(release)),
              Effect.as("slow"),
              Effect.ensuring(Effect.sync(() => order.push("slow")))
            )
        },
        fast: { handle: () => Effect.sync(() => (order.push("fast"), "fast")) }
      })
      const slow = yield* Effect.fork(a.call("slow", {}))
      yield* awaitD(slowStarted, "slow handler to start")
      expect(yield* a.call("fast", {}).pipe(Effect.timeout(WAIT))).toBe("fast")
      expect(order).toEqual(["fast"])
      expect(a.pendingCount()).toBe(1)
      yield* Deferred.succeed(release, undefined)
      expect(yield* Fiber.join(slow)).toBe("slow")
      expect(order).toEqual(["fast", "slow"])
    }))

  it.scopedLive("params failing the method's schema get -32602 naming the field", () =>
    Effect.gen(function* () {
      const ran = yield* Queue.unbounded<unknown>()
      const { a } = yield* pair({}, {
        "state.get": { decode: paramsDecoder("state.get", StateKeyParams), handle: (p) => Queue.offer(ran, p) }
      })
      const missing = failure(yield* Effect.exit(a.call("state.get", { scopeKind: "company", scopeId: "acme" })))
      expect(missing._tag).toBe("InvalidParams")
      expect(missing.code).toBe(-32602)
      expect(missing.message).toContain("stateKey")
      expect(missing.message).toContain("state.get")
      expect(missing.data).toEqual({ field: "stateKey" })

      const wrongType = failure(yield* Effect.exit(a.call("state.get", { scopeKind: "galaxy", stateKey: "k" })))
      expect(wrongType.code).toBe(ErrorCodes.InvalidParams)
      expect(wrongType.message).toContain("scopeKind")

      expect(yield* Queue.size(ran)).toBe(0)
      // valid params reach the handler decoded
      yield* a.call("state.get", { scopeKind: "company", scopeId: "acme", stateKey: "k" })
      expect(yield* take(ran, "decoded params")).toEqual({ scopeKind: "company", scopeId: "acme", stateKey: "k" })
    }))

  it.scopedLive("a notification with bad params is dropped and reported", () =>
    Effect.gen(function* () {
      const { a, bStray } = yield* pair({}, {
        "state.get": { decode: paramsDecoder("state.get", StateKeyParams), handle: () => Effect.void }
      })
      a.notify("state.get", { scopeKind: "company" })
      const note = yield* take(bStray, "stray note")
      expect(note).toContain('notification "state.get" dropped')
      expect(note).toContain("stateKey")
    }))

  it.scopedLive("an unknown method gets -32601", () =>
    Effect.gen(function* () {
      const { a } = yield* pair({}, { echo })
      const e = failure(yield* Effect.exit(a.call("no.such.method", {})))
      expect(e._tag).toBe("MethodNotFound")
      expect(e.code).toBe(-32601)
      expect(e.message).toContain("no.such.method")
      expect(yield* a.call("echo", 1)).toEqual({ echoed: 1 })
    }))

  it.scopedLive("handler failures propagate their code", () =>
    Effect.gen(function* () {
      const { a } = yield* pair({}, {
        denied: { handle: () => Effect.fail(new CapabilityDenied({ message: "missing cap", data: { cap: "x" } })) },
        notImpl: { handle: () => Effect.fail(new NotImplemented({ message: "nope" })) },
        threw: { handle: () => Effect.die(new Error("plugin exploded")) },
        threwCode: { handle: () => Effect.die(Object.assign(new Error("custom"), { code: -32050 })) },
        threwScope: { handle: () => Effect.die(Object.assign(new Error("wrong company"), { code: -32005 })) },
        worker: { handle: () => Effect.fail(new WorkerError({ message: "handler said no" })) }
      })
      const denied = failure(yield* Effect.exit(a.call("denied", {})))
      expect(denied).toBeInstanceOf(CapabilityDenied)
      expect({ code: denied.code, message: denied.message, data: denied.data }).toEqual({ code: -32001, message: "missing cap", data: { cap: "x" } })

      const notImpl = failure(yield* Effect.exit(a.call("notImpl", {})))
      expect([notImpl._tag, notImpl.code]).toEqual(["NotImplemented", -32004])

      const threw = failure(yield* Effect.exit(a.call("threw", {})))
      expect([threw._tag, threw.code, threw.message]).toEqual(["WorkerError", -32002, "plugin exploded"])

      const custom = failure(yield* Effect.exit(a.call("threwCode", {})))
      expect([custom._tag, custom.code, custom.message]).toEqual(["RemoteError", -32050, "custom"])

      const scope = failure(yield* Effect.exit(a.call("threwScope", {})))
      expect([scope._tag, scope.code]).toEqual(["InvocationScopeDenied", -32005])

      const worker = failure(yield* Effect.exit(a.call("worker", {})))
      expect([worker._tag, worker.code, worker.message]).toEqual(["WorkerError", -32002, "handler said no"])
    }))

  it.scopedLive("a per-call timeout fails with RpcTimeout, sends a cancel, ignores the late answer, and the peer stays usable", () =>
    Effect.gen(function* () {
      const { peer, out, stray, write } = yield* single({})
      const exit = yield* Effect.exit(peer.call("slow", { n: 1 }, { timeoutMs: 50 }))
      const e = failure(exit)
      expect(e._tag).toBe("RpcTimeout")
      expect(e.code).toBe(-32003)
      expect(e.message).toContain("slow")
      expect(yield* take(out, "request")).toEqual({ jsonrpc: "2.0", id: 1, method: "slow", params: { n: 1 } })
      expect(yield* take(out, "cancel")).toEqual({ jsonrpc: "2.0", method: CANCEL_METHOD, params: { id: 1 } })
      expect(peer.pendingCount()).toBe(0)

      write({ jsonrpc: "2.0", id: 1, result: "late" })
      expect(yield* take(stray, "late response note")).toContain("call id 1 ignored")

      const next = yield* Effect.fork(peer.call("fast", {}))
      const req = yield* take(out, "second request")
      expect(req).toMatchObject({ id: 2, method: "fast" })
      write({ jsonrpc: "2.0", id: 2, result: { ok: true } })
      expect(yield* Fiber.join(next)).toEqual({ ok: true })
    }))

  it.scopedLive("defaultTimeoutMs applies when a call gives none; timeoutMs 0 disables it", () =>
    Effect.gen(function* () {
      const { peer, out, write } = yield* single({}, { defaultTimeoutMs: 40 })
      const e = failure(yield* Effect.exit(peer.call("slow", {})))
      expect(e.code).toBe(ErrorCodes.Timeout)
      const unlimited = yield* Effect.fork(peer.call("slow", {}, { timeoutMs: 0 }))
      yield* take(out, "first request")
      yield* take(out, "first cancel")
      const req = yield* take(out, "second request")
      // a later call with a longer timeout times out first: the unlimited one outlived both deadlines
      const later = failure(yield* Effect.exit(peer.call("slow", {}, { timeoutMs: 120 })))
      expect(later.code).toBe(ErrorCodes.Timeout)
      expect(unlimited.unsafePoll()).toBeNull()
      expect(peer.pendingCount()).toBe(1)
      write({ jsonrpc: "2.0", id: req.id, result: "done" })
      expect(yield* Fiber.join(unlimited)).toBe("done")
    }))

  it.scopedLive("interrupting a call sends $/cancelRequest and interrupts the remote handler", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const { a, aToB, aStray } = yield* pair({}, {
        hang: {
          handle: () =>
            Deferred.succeed(started, undefined).pipe(
              Effect.zipRight(Effect.never),
              Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
            )
        }
      })
      const sent = yield* lines(aToB)
      const call = yield* Effect.fork(a.call("hang", {}))
      yield* awaitD(started, "handler start")
      expect(a.pendingCount()).toBe(1)
      yield* Fiber.interrupt(call)
      expect(Exit.isInterrupted(yield* Fiber.await(call))).toBe(true)
      yield* awaitD(interrupted, "remote handler interruption")
      expect(a.pendingCount()).toBe(0)
      expect(yield* take(sent, "request")).toMatchObject({ id: 1, method: "hang" })
      expect(yield* take(sent, "cancel")).toEqual({ jsonrpc: "2.0", method: CANCEL_METHOD, params: { id: 1 } })
      // the cancelled handler's answer reaches a caller that no longer waits: ignored, not misrouted
      expect(yield* take(aStray, "ignored answer")).toContain("call id 1 ignored")
      expect(yield* a.call("hang2", {}).pipe(Effect.exit, Effect.map((x) => failure(x).code))).toBe(-32601)
    }))

  it.scopedLive("a non-JSON line is reported via onStray and skipped", () =>
    Effect.gen(function* () {
      const { input, out, stray, write } = yield* single({ echo })
      input.write("hello from console.log\n")
      input.write("x".repeat(1000) + "\n")
      write({ jsonrpc: "2.0", id: 7, method: "echo", params: "after" })
      expect(yield* take(stray, "stray 1")).toBe("stray output: hello from console.log")
      const long = yield* take(stray, "stray 2")
      expect(long.length).toBeLessThan(300)
      expect(long).toContain("(1000 chars)")
      // no -32700 without replyToParseErrors: the only output is the echo answer
      expect(yield* take(out, "echo answer")).toEqual({ jsonrpc: "2.0", id: 7, result: { echoed: "after" } })
      expect(yield* Queue.size(out)).toBe(0)
    }))

  it.scopedLive("with replyToParseErrors an unparseable line is answered -32700 with id null", () =>
    Effect.gen(function* () {
      const { input, out, stray, write } = yield* single({ echo }, { replyToParseErrors: true })
      input.write('{"jsonrpc":"2.0","id":3,"method":"echo",\n')
      expect(yield* take(out, "parse error")).toEqual({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } })
      expect(yield* take(stray, "stray")).toContain("stray output")
      // a JSON value that is not a message object: -32600
      input.write("[1,2]\n")
      expect(yield* take(out, "invalid request")).toEqual({ jsonrpc: "2.0", id: null, error: { code: -32600, message: "Invalid Request" } })
      write({ jsonrpc: "2.0", id: 4, method: "echo", params: 1 })
      expect(yield* take(out, "echo")).toEqual({ jsonrpc: "2.0", id: 4, result: { echoed: 1 } })
    }))

  it.scopedLive("CRLF line endings and blank lines are tolerated", () =>
    Effect.gen(function* () {
      const { input, out, stray } = yield* single({ echo })
      input.write('\n\r\n{"jsonrpc":"2.0","id":1,"method":"echo","params":2}\r\n')
      expect(yield* take(out, "echo")).toEqual({ jsonrpc: "2.0", id: 1, result: { echoed: 2 } })
      expect(yield* Queue.size(stray)).toBe(0)
    }))

  it.scopedLive("a message split across many chunks, and several messages in one chunk, are framed correctly", () =>
    Effect.gen(function* () {
      const { input, out } = yield* single({ echo })
      const m1 = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "echo", params: { s: "é".repeat(300) } }) + "\n"
      const bytes = Buffer.from(m1 + JSON.stringify({ jsonrpc: "2.0", id: 2, method: "echo", params: 2 }) + "\n")
      // split in 7-byte chunks, cutting multi-byte characters in half
      for (let i = 0; i < bytes.length; i += 7) input.write(bytes.subarray(i, i + 7))
      expect(yield* take(out, "m1")).toEqual({ jsonrpc: "2.0", id: 1, result: { echoed: { s: "é".repeat(300) } } })
      expect(yield* take(out, "m2")).toEqual({ jsonrpc: "2.0", id: 2, result: { echoed: 2 } })
    }))

  describe("message size limit", () => {
    const big = (id: number, size: number) => {
      const base = JSON.stringify({ jsonrpc: "2.0", id, method: "echo", params: { s: "" } })
      return JSON.stringify({ jsonrpc: "2.0", id, method: "echo", params: { s: "x".repeat(size - base.length) } })
    }

    it.scopedLive("an inbound line over maxMessageBytes is refused (whole or in chunks) and the peer keeps working", () =>
      Effect.gen(function* () {
        const { input, out, stray, write } = yield* single({ echo }, { maxMessageBytes: 1024 })
        const atLimit = big(1, 1024)
        expect(Buffer.byteLength(atLimit)).toBe(1024)
        input.write(atLimit + "\n")
        expect(yield* take(out, "at-limit answer")).toMatchObject({ id: 1, result: { echoed: { s: expect.any(String) } } })

        // in one chunk
        input.write(big(2, 1025) + "\n")
        expect(yield* take(stray, "refusal 1")).toContain("over 1024 bytes refused")
        write({ jsonrpc: "2.0", id: 3, method: "echo", params: 3 })
        expect(yield* take(out, "answer 3")).toEqual({ jsonrpc: "2.0", id: 3, result: { echoed: 3 } })

        // in small chunks, with the next message in the same chunk as the end of the big one
        const over = Buffer.from(big(4, 5000) + "\n" + JSON.stringify({ jsonrpc: "2.0", id: 5, method: "echo", params: 5 }) + "\n")
        for (let i = 0; i < over.length; i += 300) input.write(over.subarray(i, i + 300))
        expect(yield* take(stray, "refusal 2")).toContain("over 1024 bytes refused")
        expect(yield* take(out, "answer 5")).toEqual({ jsonrpc: "2.0", id: 5, result: { echoed: 5 } })

        // partial chunks that only go over the limit together
        const two = Buffer.from(big(6, 1500) + "\n")
        input.write(two.subarray(0, 800))
        input.write(two.subarray(800))
        expect(yield* take(stray, "refusal 3")).toContain("over 1024 bytes refused")
        write({ jsonrpc: "2.0", id: 7, method: "echo", params: 7 })
        expect(yield* take(out, "answer 7")).toEqual({ jsonrpc: "2.0", id: 7, result: { echoed: 7 } })
        // nothing was ever answered for the refused ids
        expect(yield* Queue.size(out)).toBe(0)
      }))

    it.scopedLive("the limit counts bytes, not characters", () =>
      Effect.gen(function* () {
        const { a, bStray } = yield* pair({}, { echo }, { maxMessageBytes: 1024 })
        // 600 characters, 1200 bytes of UTF-8: the sender must refuse it rather than let the receiver drop it
        const e = failure(yield* Effect.exit(a.call("echo", { s: "é".repeat(600) }, { timeoutMs: 2000 })))
        expect(e.code).toBe(ErrorCodes.InvalidRequest)
        expect(e.message).toContain("1024 byte limit")
        expect(yield* Queue.size(bStray)).toBe(0)
      }))

    it.scopedLive("outbound messages over the limit fail locally; an oversized result fails the call", () =>
      Effect.gen(function* () {
        const { a } = yield* pair({}, {
          echo,
          huge: { handle: () => Effect.succeed("y".repeat(2000)) }
        }, { maxMessageBytes: 1024 })
        const tooBig = failure(yield* Effect.exit(a.call("echo", { s: "x".repeat(2000) })))
        expect([tooBig._tag, tooBig.code]).toEqual(["InvalidRequest", -32600])
        expect(tooBig.message).toContain("exceeds the 1024 byte limit")
        expect(a.pendingCount()).toBe(0)
        const hugeResult = failure(yield* Effect.exit(a.call("huge", {})))
        expect(hugeResult.code).toBe(-32600)
        expect(hugeResult.message).toContain("exceeds the 1024 byte limit")
        expect(yield* a.call("echo", "small")).toEqual({ echoed: "small" })
      }))

    it.scopedLive("a real 20 MB line is refused under the default 16 MiB limit and the peer keeps working", () =>
      Effect.gen(function* () {
        expect(MAX_MESSAGE_BYTES).toBe(16 * 1024 * 1024)
        const { input, out, stray, write } = yield* single({ echo })
        const line = Buffer.from(big(1, 20 * 1000 * 1000) + "\n")
        expect(line.length).toBe(20_000_001)
        // as a pipe delivers it: 64 KiB chunks
        for (let i = 0; i < line.length; i += 65536) input.write(line.subarray(i, i + 65536))
        write({ jsonrpc: "2.0", id: 2, method: "echo", params: "still here" })
        expect(yield* take(stray, "refusal")).toContain(`over ${MAX_MESSAGE_BYTES} bytes refused`)
        expect(yield* take(out, "answer")).toEqual({ jsonrpc: "2.0", id: 2, result: { echoed: "still here" } })
        expect(yield* Queue.size(out)).toBe(0)
        // and in a single chunk
        input.write(line)
        write({ jsonrpc: "2.0", id: 3, method: "echo", params: "again" })
        expect(yield* take(stray, "refusal")).toContain(`over ${MAX_MESSAGE_BYTES} bytes refused`)
        expect(yield* take(out, "answer")).toEqual({ jsonrpc: "2.0", id: 3, result: { echoed: "again" } })
      }), 60_000)
  })

  it.scopedLive("closing the input stream fails every pending call with WorkerUnavailable", () =>
    Effect.gen(function* () {
      const { peer, input, out } = yield* single({}, { closedMessage: () => "worker exited (code 1): boom" })
      const c1 = yield* Effect.fork(peer.call("one", {}))
      const c2 = yield* Effect.fork(peer.call("two", {}, { timeoutMs: 0 }))
      yield* take(out, "request 1")
      yield* take(out, "request 2")
      expect(peer.pendingCount()).toBe(2)
      const closed = yield* Effect.fork(peer.awaitClosed)
      input.end()
      for (const c of [c1, c2]) {
        const e = failure(yield* Fiber.await(c).pipe(Effect.timeout(WAIT)))
        expect([e._tag, e.code, e.message]).toEqual(["WorkerUnavailable", -32000, "worker exited (code 1): boom"])
      }
      yield* Fiber.join(closed).pipe(Effect.timeout(WAIT))
      expect(peer.isOpen()).toBe(false)
      expect(peer.pendingCount()).toBe(0)
      // later calls fail at once
      const late = failure(yield* Effect.exit(peer.call("three", {})))
      expect(late.code).toBe(-32000)
    }))

  it.scopedLive("closing the stream interrupts inbound handlers; close() fails pending calls with the reason", () =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const { a, b, aToB } = yield* pair({}, {
        hang: {
          handle: () =>
            Deferred.succeed(started, undefined).pipe(
              Effect.zipRight(Effect.never),
              Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
            )
        }
      })
      const call = yield* Effect.fork(a.call("hang", {}))
      yield* awaitD(started, "handler start")
      aToB.end()
      yield* awaitD(interrupted, "handler interrupted by close")
      expect(b.isOpen()).toBe(false)
      yield* a.close("host stopping")
      const e = failure(yield* Fiber.await(call))
      expect([e._tag, e.message]).toEqual(["WorkerUnavailable", "a: host stopping"])
    }))

  it.scopedLive("a response that arrives twice is ignored the second time", () =>
    Effect.gen(function* () {
      const { peer, out, stray, write } = yield* single({})
      const c1 = yield* Effect.fork(peer.call("first", {}))
      const r1 = yield* take(out, "request 1")
      write({ jsonrpc: "2.0", id: r1.id, result: "one" })
      expect(yield* Fiber.join(c1)).toBe("one")

      const c2 = yield* Effect.fork(peer.call("second", {}))
      const r2 = yield* take(out, "request 2")
      write({ jsonrpc: "2.0", id: r1.id, result: "one again" })
      write({ jsonrpc: "2.0", id: r1.id, error: { code: -32002, message: "and an error" } })
      expect(yield* take(stray, "duplicate 1")).toContain(`call id ${r1.id} ignored`)
      expect(yield* take(stray, "duplicate 2")).toContain(`call id ${r1.id} ignored`)
      expect(c2.unsafePoll()).toBeNull()
      write({ jsonrpc: "2.0", id: r2.id, result: "two" })
      write({ jsonrpc: "2.0", id: r2.id, result: "two again" })
      expect(yield* Fiber.join(c2)).toBe("two")
      expect(yield* take(stray, "duplicate 3")).toContain(`call id ${r2.id} ignored`)
      expect(peer.pendingCount()).toBe(0)
    }))

  it.scopedLive("a result that cannot be serialized fails the call instead of leaving it hanging", () =>
    Effect.gen(function* () {
      const circular: Record<string, unknown> = {}
      circular.self = circular
      const { a } = yield* pair({}, {
        echo,
        bigint: { handle: () => Effect.succeed({ n: 1n }) },
        circular: { handle: () => Effect.succeed(circular) }
      })
      for (const m of ["bigint", "circular"]) {
        const e = failure(yield* Effect.exit(a.call(m, {}, { timeoutMs: 2000 })))
        expect([e.code, e.message]).toEqual([ErrorCodes.InvalidRequest, expect.stringContaining("not serializable")])
      }
      const local = failure(yield* Effect.exit(a.call("echo", { n: 2n }, { timeoutMs: 2000 })))
      expect([local.code, local.message]).toEqual([ErrorCodes.InvalidRequest, expect.stringContaining("not serializable")])
      expect(a.pendingCount()).toBe(0)
      expect(yield* a.call("echo", "ok")).toEqual({ echoed: "ok" })
    }))

  it.scopedLive("an error response becomes the matching tagged error", () =>
    Effect.gen(function* () {
      const { peer, out, write } = yield* single({})
      const c = yield* Effect.fork(peer.call("x", {}))
      const r = yield* take(out, "request")
      write({ jsonrpc: "2.0", id: r.id, error: { code: -32001, message: 'Plugin "p" is missing required capability "c" for method "x"', data: { cap: "c" } } })
      const e = failure(yield* Fiber.await(c))
      expect(e).toBeInstanceOf(CapabilityDenied)
      expect(e.data).toEqual({ cap: "c" })
    }))
  it.scopedLive("a direct (plain-JS) handler: values and Promises answer, throws and rejections map, NoDirect falls back, cancel answers at once", () =>
    Effect.gen(function* () {
      let release: (v: unknown) => void = () => {}
      const hangStarted = yield* Deferred.make<void>()
      const directHandler = (r: unknown): Peer.Handler<never> => ({
        handle: () => Effect.succeed("from the Effect handler"),
        direct: () => r
      })
      const { a, aStray, bToA } = yield* pair({}, {
        value: directHandler({ v: 1 }),
        promise: directHandler(Promise.resolve({ v: 2 })),
        undef: directHandler(Promise.resolve(undefined)),
        fallback: directHandler(Peer.NoDirect),
        threw: { handle: () => Effect.succeed(null), direct: () => { throw Object.assign(new Error("boom"), { code: -32004 }) } },
        rejected: directHandler(Promise.reject(new Error("nope"))),
        hang: {
          handle: () => Effect.succeed(null),
          direct: () => {
            Deferred.unsafeDone(hangStarted, Exit.void)
            return new Promise((r) => { release = r })
          }
        }
      }, { directError: (e) => new WorkerError({ message: `mapped: ${e instanceof Error ? e.message : String(e)}` }) })
      const answers = yield* lines(bToA)
      expect(yield* a.call("value", {})).toEqual({ v: 1 })
      expect(yield* a.call("promise", {})).toEqual({ v: 2 })
      expect(yield* a.call("undef", {})).toBeNull()
      expect(yield* a.call("fallback", {})).toBe("from the Effect handler")
      const threw = failure(yield* Effect.exit(a.call("threw", {})))
      expect([threw.code, threw.message]).toEqual([ErrorCodes.WorkerError, "mapped: boom"])
      const rejected = failure(yield* Effect.exit(a.call("rejected", {})))
      expect([rejected.code, rejected.message]).toEqual([ErrorCodes.WorkerError, "mapped: nope"])
      // a cancelled direct request is answered "cancelled" at once (a no longer waits: one stray note);
      // the Promise's later outcome is never sent
      const call = yield* Effect.fork(a.call("hang", {}))
      yield* awaitD(hangStarted, "the direct handler start")
      yield* Fiber.interrupt(call)
      let answer: Wire | undefined
      while (answer?.id !== 7) answer = yield* take(answers, "the answer to the cancelled request")
      expect(answer).toEqual({ jsonrpc: "2.0", id: 7, error: { code: ErrorCodes.Timeout, message: 'request "hang" was cancelled' } })
      release({ late: true })
      expect(yield* a.call("value", {})).toEqual({ v: 1 })
      expect(yield* take(aStray, "the cancelled answer")).toContain("call id 7 ignored")
      expect(yield* Queue.size(aStray)).toBe(0)
      expect(a.pendingCount()).toBe(0)
      expect([...(yield* Queue.takeAll(answers))].filter((m) => m.id === 7)).toEqual([])
    }))

  it.scopedLive("callPromise: the call as a Promise, rejecting with the tagged error", () =>
    Effect.gen(function* () {
      const { a } = yield* pair({}, { echo, denied: { handle: () => Effect.fail(new CapabilityDenied({ message: "no" })) } })
      expect(yield* Effect.promise(() => a.callPromise("echo", { n: 1 }))).toEqual({ echoed: { n: 1 } })
      const e = yield* Effect.promise(() => a.callPromise("denied", {}).then(() => undefined, (x: unknown) => x))
      expect(e).toBeInstanceOf(CapabilityDenied)
      const missing = yield* Effect.promise(() => a.callPromise("nope", {}).then(() => undefined, (x: unknown) => x))
      expect((missing as RpcError).code).toBe(ErrorCodes.MethodNotFound)
    }))
})
