// A worker built with the real @paperclipai/plugin-sdk (its own definePlugin + runWorker, plain ESM)
// runs unmodified on the Gantry host: handshake, data calls with nested capability calls, both gates,
// event delivery, logging and shutdown.
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { ErrorCodes } from "../../src/protocol/errors.js"
import { childPids, eventually, fixture, hostLayer, isAlive } from "../helpers.js"

const ID = "paperclip-basic"

const hasLog = (logs: ReadonlyArray<{ readonly message: string }>, text: string) => logs.some((l) => l.message.includes(text))

describe("Paperclip SDK worker on the Gantry host", () => {
  it.live("initialize, getData with nested state/config/log calls, both gates, events, shutdown", () =>
    Effect.gen(function* () {
      const before = childPids()
      let workerPid: number | null = null
      yield* Effect.scoped(
        Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores

          const installed = yield* host.install(fixture(ID))
          expect(installed.status).toBe("installed")
          // Paperclip capability strings Gantry does not host install as inactive.
          expect(installed.inactiveCapabilities).toEqual(["issues.read"])

          // initialize: the Paperclip worker answered {ok, supportedMethods} and the worker runs.
          const snap = yield* host.start(ID)
          expect(snap.workerStatus).toBe("running")
          expect(snap.status).toBe("ready")
          expect(snap.supportedMethods).toEqual(["validateConfig", "health", "shutdown"])
          expect(snap.pid).toBeTypeOf("number")
          workerPid = snap.pid
          expect(childPids()).toContain(snap.pid)
          yield* eventually(Effect.flatMap(stores.log.list(ID), (logs) =>
            hasLog(logs, "paperclip-basic setup") ? Effect.void : Effect.fail("setup log not seen")))

          // Config saved through the host is what ctx.config.get(companyId) returns inside an invocation.
          yield* host.configChanged(ID, "acme", { greeting: "Hi" })
          const remembered = yield* host.call(ID, "getData", { key: "remember", companyId: "acme", params: { value: { n: 1, tags: ["a"] } } }, { companyId: "acme" })
          expect(remembered).toEqual({ stored: { n: 1, tags: ["a"] }, config: { greeting: "Hi" } })
          // ctx.state.set landed in the host's store, keyed by plugin id and company scope.
          const stored = yield* stores.state.get(ID, { scopeKind: "company", scopeId: "acme", stateKey: "remembered" })
          expect(stored).toEqual({ n: 1, tags: ["a"] })
          // ctx.logger.info (a `log` notification echoing the invocation id) reached the plugin log.
          yield* eventually(Effect.flatMap(stores.log.list(ID), (logs) =>
            logs.some((l) => l.message === "remembered" && l.level === "info") ? Effect.void : Effect.fail("no log")))
          const line = (yield* stores.log.list(ID)).find((l) => l.message === "remembered")
          expect(line?.meta).toEqual({ companyId: "acme", value: { n: 1, tags: ["a"] } })

          // Host→worker methods answered by the Paperclip worker itself.
          expect(yield* host.call(ID, "health", {})).toEqual({ status: "ok", message: "paperclip-basic is fine" })
          expect(yield* host.call(ID, "validateConfig", { config: { greeting: "x".repeat(41) } }))
            .toEqual({ ok: false, errors: ["greeting: at most 40 characters"] })
          const missing = yield* Effect.flip(host.call(ID, "getData", { key: "nope", params: {} }, { companyId: "acme" }))
          expect(missing._tag).toBe("WorkerError")
          expect(missing.message).toBe(`No data handler registered for key "nope"`)
          const unknown = yield* Effect.flip(host.call(ID, "frobnicate", {}))
          expect(unknown._tag).toBe("MethodNotFound")

          // Company-scope gate: inside an invocation for acme, naming globex is refused with -32005,
          // and the Paperclip SDK surfaces it to plugin code as a rejection carrying the code.
          const cross = yield* host.call(ID, "getData", { key: "cross-company", companyId: "acme", params: { other: "globex" } }, { companyId: "acme" })
          expect(cross).toMatchObject({
            stateGet: { code: ErrorCodes.InvocationScopeDenied, name: "JsonRpcCallError" },
            stateSet: { code: ErrorCodes.InvocationScopeDenied },
            configGet: { code: ErrorCodes.InvocationScopeDenied }
          })
          expect(yield* stores.state.get(ID, { scopeKind: "company", scopeId: "globex", stateKey: "remembered" })).toBeNull()
          // Naming the invocation's own company passes the gate.
          const same = yield* host.call(ID, "getData", { key: "cross-company", companyId: "acme", params: { other: "acme" } }, { companyId: "acme" })
          expect(same).toEqual({ stateGet: { code: null }, stateSet: { code: null }, configGet: { code: null } })
          // Outside any invocation only companies with a stored config may be named.
          const outside = yield* host.call(ID, "getData", { key: "cross-company", params: { other: "globex" } })
          expect(outside).toMatchObject({ stateGet: { code: ErrorCodes.InvocationScopeDenied } })
          const outsideOk = yield* host.call(ID, "getData", { key: "cross-company", params: { other: "acme" } })
          expect(outsideOk).toMatchObject({ stateGet: { code: null } })

          // Capability gate: methods whose capability the manifest lacks get -32001; a Paperclip
          // method Gantry does not host (issues.list, capability listed as inactive) gets -32601.
          const denied = yield* host.call(ID, "getData", { key: "denied", companyId: "acme", params: {} }, { companyId: "acme" })
          expect(denied).toMatchObject({
            eventsEmit: { code: ErrorCodes.CapabilityDenied },
            httpFetch: { code: ErrorCodes.CapabilityDenied },
            secretsResolve: { code: ErrorCodes.CapabilityDenied },
            issuesList: { code: ErrorCodes.MethodNotFound }
          })
          expect((denied as { eventsEmit: { message: string } }).eventsEmit.message)
            .toBe(`Plugin "${ID}" is missing required capability "events.emit" for method "events.emit"`)

          // Event delivery: the Paperclip worker subscribed in setup; the host sends onEvent as a
          // request inside an invocation for the event's company and the handler's nested state.set lands.
          let attempt = 0
          yield* eventually(Effect.gen(function* () {
            yield* stores.events.emit({
              eventId: `evt-${++attempt}`,
              eventType: "company.created",
              occurredAt: "2026-01-01T00:00:00.000Z",
              companyId: "acme",
              payload: { name: "Acme" }
            })
            const welcomed = yield* eventually(stores.state.get(ID, { scopeKind: "company", scopeId: "acme", stateKey: "welcomed" }).pipe(
              Effect.filterOrFail((v) => typeof v === "string", () => "not yet")
            ), 2_000)
            expect(welcomed).toMatch(/^evt-/)
          }))

          // Shutdown: the worker runs onShutdown, answers, and exits; nothing is left running.
          yield* host.stop(ID)
          const after = yield* host.status(ID)
          expect(after.workerStatus).toBe("stopped")
          expect(after.pid).toBeNull()
          expect(isAlive(workerPid!)).toBe(false)
          expect(childPids()).not.toContain(workerPid)
          const logs = yield* stores.log.list(ID)
          expect(hasLog(logs, "paperclip-basic shutting down")).toBe(true)
          // Nothing went wrong on the side: no errors, no stderr, no stray stdout corrupting the channel.
          expect(logs.filter((l) => l.level === "error" || l.level === "warn")).toEqual([])
        }).pipe(Effect.provide(hostLayer()))
      )
      expect(workerPid).not.toBeNull()
      expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    }))
})
