import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Layer } from "effect"
import * as PluginConfigs from "../../src/host/PluginConfigs.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { testDbs } from "../db.js"
import { durableHostLayer, examples } from "../helpers.js"

const errorOf = <A, E>(exit: Exit.Exit<A, E>) => {
  if (Exit.isSuccess(exit)) throw new Error("expected failure")
  return Cause.squash(exit.cause) as { _tag: string; errors: Array<string>; status: number }
}

for (const db of testDbs) {
  describe(`plugin config [${db.kind}]`, () => {
    it.live("schema validation, plugin validateConfig, secret fields as refs only; nothing saved on failure", () =>
      Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const configs = yield* PluginConfigs.PluginConfigs
        const stores = yield* CapabilityStores
        yield* host.install(examples("hello-effect"))
        yield* host.start("hello-effect")

        const wrongType = errorOf(yield* Effect.exit(configs.save("hello-effect", "acme", { greeting: 42 })))
        expect(wrongType._tag).toBe("ConfigInvalid")
        expect(wrongType.status).toBe(422)
        expect(wrongType.errors).toEqual(["/greeting: must be string"])

        const unknownField = errorOf(yield* Effect.exit(configs.save("hello-effect", "acme", { greeting: "hi", bogus: true })))
        expect(unknownField.errors[0]).toBe(`/: must NOT have additional properties ("bogus")`)

        const rawSecret = errorOf(yield* Effect.exit(configs.save("hello-effect", "acme", { apiKey: "sk-live-123" as never })))
        expect(rawSecret.errors.join()).toContain("secret")

        const pluginRejects = errorOf(yield* Effect.exit(configs.save("hello-effect", "acme", { greeting: "x".repeat(41) })))
        expect(pluginRejects.errors).toEqual(["greeting: at most 40 characters"])

        expect(yield* stores.config.companies("hello-effect")).toEqual([])

        const ok = yield* configs.save("hello-effect", "acme", { greeting: "Yo", apiKey: { type: "secret_ref", secretId: "s1" } })
        expect(ok.ok).toBe(true)
        expect(yield* configs.get("hello-effect", "acme")).toEqual({ greeting: "Yo", apiKey: { type: "secret_ref", secretId: "s1" } })
        // configChanged reached the worker (its handler logs through console.log → plugin log)
        const r = yield* host.call("hello-effect", "getData", { key: "greeting", companyId: "acme", params: {} }, { companyId: "acme" })
        expect((r as { message: string }).message).toBe("Yo, world!")
        expect((yield* configs.test("hello-effect", { greeting: 1 } as never)).ok).toBe(false)
        const missing = yield* Effect.exit(configs.save("nope", "acme", {}))
        expect(errorOf(missing)._tag).toBe("PluginNotFound")
      }).pipe(Effect.scoped, Effect.provide(PluginConfigs.layer.pipe(Layer.provideMerge(durableHostLayer(db))))))
  })
}
