import { describe, expect, it } from "@effect/vitest"
import { Cause, Clock, Effect, Exit, Fiber } from "effect"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import type { HostOptionsShape } from "../../src/host/HostOptions.js"
import { childPids, eventually, fixture, hostLayer, isAlive, trusting } from "../helpers.js"

// these fixtures import ../raw-worker.mjs, outside their package directory: trusted (no worker sandbox)
const fast: Partial<HostOptionsShape> = { restartBaseMs: 20, restartMaxMs: 100, crashLimit: 3, sigtermGraceMs: 1000, ...trusting("exit-on-init", "garbage", "ignore-shutdown") }

const scoped = <A, E>(body: Effect.Effect<A, E, PluginHost.PluginHost | CapabilityStores>, overrides: Partial<HostOptionsShape> = fast) =>
  Effect.gen(function* () {
    const before = childPids()
    const a = yield* Effect.scoped(Effect.provide(body, hostLayer(overrides)))
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    return a
  })

const failureOf = <A, E>(exit: Exit.Exit<A, E>) => {
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  return Cause.squash(exit.cause) as { _tag: string; code?: number; message: string }
}

describe("supervision (real worker processes)", () => {
  it.live("a worker that exits during initialize: start fails with its stderr, then the breaker opens", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      yield* host.install(fixture("exit-on-init"))
      const err = failureOf(yield* Effect.exit(host.start("exit-on-init")))
      expect(err._tag).toBe("PluginStartFailed")
      expect(err.message).toContain("initialize failed")
      expect(err.message).toContain("boom: cannot initialize")
      const s = yield* eventually(Effect.filterOrFail(host.status("exit-on-init"), (s) => s.status === "error"))
      expect(s.lastError).toContain("crash loop")
      expect(s.crashesInWindow).toBe(3)
    })))

  it.live("a worker that crashes every time: restarts with backoff, breaker opens after crashLimit, no more restarts", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("crash-always"))
      yield* Effect.exit(host.start("crash-always"))
      const s = yield* eventually(Effect.filterOrFail(host.status("crash-always"), (s) => s.status === "error"))
      expect(s.restarts).toBe(2)
      expect(s.workerStatus).toBe("crashed")
      const logs = yield* stores.log.list("crash-always")
      expect(logs.some((l) => l.message.includes("crash-always: exiting at load"))).toBe(true)
      // still in error a while later: nothing restarted it
      yield* Effect.sleep("300 millis")
      expect((yield* host.status("crash-always")).restarts).toBe(2)
      // operator re-enable starts it again (and it crashes again)
      const again = yield* Effect.exit(host.start("crash-always"))
      expect(Exit.isFailure(again)).toBe(true)
    })))

  it.live("a worker that ignores shutdown and SIGTERM is SIGKILLed within shutdownTimeoutMs + grace", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("ignore-shutdown"))
      const snap = yield* host.start("ignore-shutdown")
      const pid = snap.pid!
      expect(isAlive(pid)).toBe(true)
      const t0 = yield* Clock.currentTimeMillis
      yield* host.stop("ignore-shutdown")
      const took = (yield* Clock.currentTimeMillis) - t0
      expect(isAlive(pid)).toBe(false)
      // manifest shutdownTimeoutMs 1000 + sigtermGraceMs 1000, plus slack for a loaded machine
      expect(took).toBeGreaterThanOrEqual(1900)
      expect(took).toBeLessThan(6000)
      const logs = yield* eventually(Effect.filterOrFail(stores.log.list("ignore-shutdown"), (l) => l.some((x) => x.message.includes("ignoring SIGTERM"))))
      expect(logs.length).toBeGreaterThan(0)
    })))

  it.live("a worker writing garbage and 20 MB lines to stdout: host survives, garbage is logged", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("garbage"))
      yield* host.start("garbage")
      expect(yield* host.call("garbage", "getData", { key: "flood", params: {} })).toEqual({ pong: "flood" })
      expect(yield* host.call("garbage", "getData", { key: "after", params: {} })).toEqual({ pong: "after" })
      const logs = yield* stores.log.list("garbage")
      expect(logs.some((l) => l.message.includes("this is garbage, not JSON"))).toBe(true)
      expect(logs.filter((l) => l.message.includes("refused")).length).toBeGreaterThanOrEqual(2)
      expect((yield* host.status("garbage")).workerStatus).toBe("running")
    })))

  it.live("a handler that never answers times out with -32003 and the worker stays usable; the handler is interrupted", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("misbehaving"))
      yield* host.start("misbehaving")
      const err = failureOf(yield* Effect.exit(host.call("misbehaving", "getData", { key: "hang", params: {} }, { timeoutMs: 300 })))
      expect(err.code).toBe(-32003)
      expect(yield* host.call("misbehaving", "getData", { key: "ok", params: {} })).toEqual({ ok: true, companyId: null })
      // $/cancelRequest reached the worker: its handler ran its interruption finalizer
      yield* eventually(Effect.filterOrFail(stores.state.get("misbehaving", { scopeKind: "instance", stateKey: "hang-interrupted" }), (v) => v === true))
      // interrupting a host-side call cancels too
      const fiber = yield* Effect.fork(host.call("misbehaving", "getData", { key: "hang", params: {} }))
      yield* Effect.sleep("50 millis")
      yield* Fiber.interrupt(fiber)
      expect(yield* host.call("misbehaving", "getData", { key: "ok", params: {} })).toMatchObject({ ok: true })
    })))

  it.live("capability gate (-32001) and company-scope gate (-32005) on nested calls", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("misbehaving"))
      yield* host.start("misbehaving")
      const denied = yield* host.call("misbehaving", "getData", { key: "read-state", params: {} }, { companyId: "acme" })
      expect(denied).toMatchObject({ code: -32001, tag: "CapabilityDenied" })
      expect((denied as { message: string }).message).toBe('Plugin "misbehaving" is missing required capability "plugin.state.read" for method "state.get"')
      const scopeDenied = yield* host.call("misbehaving", "getData", { key: "other-company", companyId: "acme", params: {} }, { companyId: "acme" })
      expect(scopeDenied).toMatchObject({ code: -32005, tag: "InvocationScopeDenied" })
      // nothing was written for the other company
      expect(yield* stores.state.get("misbehaving", { scopeKind: "company", scopeId: "other-co", stateKey: "x" })).toBeNull()
      // its own company is fine
      expect(yield* host.call("misbehaving", "getData", { key: "own-company", companyId: "acme", params: {} }, { companyId: "acme" })).toEqual({ written: true })
      expect(yield* stores.state.get("misbehaving", { scopeKind: "company", scopeId: "acme", stateKey: "x" })).toBe(1)
      // outside an invocation, a company without stored config is refused too
      const outside = failureOf(yield* Effect.exit(host.call("misbehaving", "getData", { key: "own-company", params: { companyId: "nobody" } })))
      expect(outside.code).toBe(-32005)
      expect(yield* stores.state.get("misbehaving", { scopeKind: "company", scopeId: "nobody", stateKey: "x" })).toBeNull()
    })))

  it.live("console.log and raw stdout writes in a handler do not break the protocol", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      const stores = yield* CapabilityStores
      yield* host.install(fixture("misbehaving"))
      yield* host.start("misbehaving")
      expect(yield* host.call("misbehaving", "getData", { key: "chatty", params: {} })).toEqual({ stillWorks: true })
      expect(yield* host.call("misbehaving", "getData", { key: "ok", params: {} })).toMatchObject({ ok: true })
      const logs = yield* eventually(Effect.filterOrFail(stores.log.list("misbehaving"), (l) => l.some((x) => x.message.includes("and console.error"))))
      expect(logs.some((l) => l.message === "hello from console.log in a handler")).toBe(true)
      expect(logs.some((l) => l.message.includes("raw stdout write {not json"))).toBe(true)
    })))

  it.live("three failed health checks in a row restart the worker", () =>
    scoped(Effect.gen(function* () {
      const host = yield* PluginHost.PluginHost
      yield* host.install(fixture("unhealthy"))
      const first = yield* host.start("unhealthy")
      const s = yield* eventually(Effect.filterOrFail(host.status("unhealthy"), (s) => s.restarts >= 1 && s.workerStatus === "running" && s.pid !== first.pid), 15_000)
      expect(s.lastError).toContain("3 failed health checks")
      expect(s.health?.status).toBe("error")
    }), { ...fast, crashLimit: 10, healthIntervalMs: 100 }))
})
