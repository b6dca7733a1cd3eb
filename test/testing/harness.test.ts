import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import { readFileSync } from "node:fs"
import { definePlugin, Plugin, State, Data } from "../../src/sdk/index.js"
import { createTestHarness, makeHarness } from "../../src/testing/index.js"
import helloEffect from "../../plugins/examples/hello-effect/src/worker.js"
import helloPromise from "../../plugins/examples/hello-promise/src/worker.js"
import { examples } from "../helpers.js"

const manifestOf = (name: string) => JSON.parse(readFileSync(`${examples(name)}/manifest.json`, "utf8"))

for (const [name, plugin] of [["hello-promise", helloPromise], ["hello-effect", helloEffect]] as const) {
  describe(`test kit with ${name}`, () => {
    it.scopedLive("getData, state, config, events, jobs, logs", () =>
      Effect.gen(function* () {
        const h = yield* makeHarness(plugin, { manifest: manifestOf(name) })
        yield* h.setConfig("acme", { greeting: "Howdy" })
        expect(yield* h.getData("greeting", { name: "Bo" }, { companyId: "acme" })).toEqual({ message: "Howdy, Bo!", count: 1, companyId: "acme" })
        expect(yield* h.getState({ scopeKind: "company", scopeId: "acme", stateKey: "greetings" })).toBe(1)
        const ev = yield* h.emit("company.created", "acme", { name: "Acme" })
        expect(yield* h.getState({ scopeKind: "company", scopeId: "acme", stateKey: "welcomed" })).toBe(ev.eventId)
        yield* h.runJob("tick")
        yield* h.runJob("tick")
        expect(yield* h.getState({ scopeKind: "instance", stateKey: "ticks" })).toBe(2)
        const logs = yield* h.logs
        expect(logs.filter((l) => l.message === "tick").length).toBe(2)
        // secret through a saved config binding
        yield* h.setSecret("acme", "s1", "hunter22")
        yield* h.setConfig("acme", { apiKey: { type: "secret_ref", secretId: "s1" } })
        expect(yield* h.getData("secret-length", {}, { companyId: "acme" })).toEqual({ length: 8 })
      }))
  })
}

describe("test kit gates", () => {
  const manifest = {
    id: "gated", apiVersion: 1, version: "1.0.0", displayName: "Gated", description: "d", author: "a",
    categories: ["automation"], capabilities: ["plugin.state.read"], entrypoints: { worker: "x.js" }
  }
  it.scopedLive("an Effect plugin without plugin.state.write is refused -32001 by the kit, as by the host", () =>
    Effect.gen(function* () {
      const plugin = Plugin.make({
        setup: Effect.gen(function* () {
          const state = yield* State
          yield* (yield* Data).register("write", () => state.set({ scopeKind: "instance", stateKey: "k" }, 1))
        })
      })
      const h = yield* makeHarness(plugin, { manifest })
      const exit = yield* Effect.exit(h.getData("write"))
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) expect((Cause.squash(exit.cause) as { code: number }).code).toBe(-32001)
      expect(yield* h.getState({ scopeKind: "instance", stateKey: "k" })).toBeNull()
    }))

  it("Promise harness: a Promise plugin's rejected ctx call carries the real error class and code", async () => {
    const seen: Array<unknown> = []
    const plugin = definePlugin({
      async setup(ctx) {
        ctx.data.register("cross", async () => {
          try {
            await ctx.state.get({ scopeKind: "company", scopeId: "someone-else", stateKey: "k" })
            return "no error"
          } catch (e) {
            seen.push(e)
            return { code: (e as { code: number }).code, isError: e instanceof Error, name: (e as { _tag: string })._tag }
          }
        })
      }
    })
    const h = await createTestHarness(plugin, { manifest })
    try {
      expect(await h.getData("cross", {}, { companyId: "acme" })).toEqual({ code: -32005, isError: true, name: "InvocationScopeDenied" })
      const { InvocationScopeDenied } = await import("../../src/protocol/errors.js")
      expect(seen[0]).toBeInstanceOf(InvocationScopeDenied)
    } finally {
      await h.close()
    }
  })
})
