import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { childPids, eventually, examples, hostLayer } from "../helpers.js"

for (const name of ["hello-promise", "hello-effect"]) {
  describe(`${name} worker (real process)`, () => {
    it.live("initialize, getData with nested state/config calls, configChanged, health, shutdown", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.scoped(
          Effect.gen(function* () {
            const host = yield* PluginHost.PluginHost
            const stores = yield* CapabilityStores
            yield* host.install(examples(name))
            const snap = yield* host.start(name)
            expect(snap.workerStatus).toBe("running")
            expect(snap.supportedMethods).toEqual(expect.arrayContaining(["health", "validateConfig", "configChanged"]))
            expect(snap.pid).toBeTypeOf("number")
            expect(childPids()).toContain(snap.pid)

            yield* host.configChanged(name, "acme", { greeting: "Hi" })
            const r1 = yield* host.call(name, "getData", { key: "greeting", companyId: "acme", params: { name: "Ada" } }, { companyId: "acme" })
            expect(r1).toEqual({ message: "Hi, Ada!", count: 1, companyId: "acme" })
            const r2 = yield* host.call(name, "getData", { key: "greeting", companyId: "acme", params: { name: "Ada" } }, { companyId: "acme" })
            expect((r2 as { count: number }).count).toBe(2)
            const stored = yield* stores.state.get(name, { scopeKind: "company", scopeId: "acme", stateKey: "greetings" })
            expect(stored).toBe(2)

            const health = yield* host.call(name, "health", {})
            expect(health).toMatchObject({ status: "ok" })
            const valid = yield* host.call(name, "validateConfig", { config: { greeting: "x".repeat(50) } })
            expect(valid).toMatchObject({ ok: false, errors: ["greeting: at most 40 characters"] })

            // console.log inside onConfigChanged went to the plugin log, not the protocol
            yield* eventually(Effect.flatMap(stores.log.list(name), (logs) =>
              logs.some((l) => l.message.includes("config changed for acme")) ? Effect.void : Effect.fail("no log")))
            const logs = yield* stores.log.list(name)
            expect(logs.some((l) => l.message === "greeting served")).toBe(true)

            const missing = yield* Effect.exit(host.call(name, "getData", { key: "nope", params: {} }))
            expect(missing).toMatchObject({ _tag: "Failure" })
            if (Exit.isFailure(missing)) expect(JSON.stringify(missing.cause)).toContain("-32002".slice(0, 0) + "WorkerError")

            yield* host.stop(name)
            const after = yield* host.status(name)
            expect(after.workerStatus).toBe("stopped")
          }).pipe(Effect.provide(hostLayer()))
        )
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))
  })
}
