import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { testDbs } from "../db.js"
import { durableHostLayer, eventually, examples } from "../helpers.js"

for (const db of testDbs) {
  describe(`durable state, config, logs [${db.kind}]`, () => {
    for (const name of ["hello-promise", "hello-effect"]) {
      it.live(`${name}: state and config persist in the database through a real worker`, () =>
        Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          const sql = yield* SqlClient.SqlClient
          yield* host.install(examples(name))
          yield* host.start(name)
          yield* host.configChanged(name, "acme", { greeting: "Hey" })
          const r = yield* host.call(name, "getData", { key: "greeting", companyId: "acme", params: { name: "Al" } }, { companyId: "acme" })
          expect(r).toEqual({ message: "Hey, Al!", count: 1, companyId: "acme" })
          const rows = yield* sql<{ value: string; scope_id: string }>`SELECT value, scope_id FROM plugin_state WHERE plugin_id = ${name} AND state_key = 'greetings'`
          expect(rows).toEqual([{ value: "1", scope_id: "acme" }])
          const cfg = yield* sql<{ config: string }>`SELECT config FROM plugin_configs WHERE plugin_id = ${name} AND company_id = 'acme'`
          expect(JSON.parse(cfg[0]!.config)).toEqual({ greeting: "Hey" })
          // state values must be JSON and ≤ 1 MiB; nothing is written otherwise
          const big = yield* Effect.exit(stores.state.set(name, { scopeKind: "instance", stateKey: "big" }, "x".repeat(1024 * 1024 + 1)))
          expect(Exit.isFailure(big) && (Cause.squash(big.cause) as { code: number }).code).toBe(-32602)
          const notJson = yield* Effect.exit(stores.state.set(name, { scopeKind: "instance", stateKey: "fn" }, () => 1))
          expect(Exit.isFailure(notJson)).toBe(true)
          expect(yield* stores.state.get(name, { scopeKind: "instance", stateKey: "big" })).toBeNull()
          expect(yield* stores.state.get(name, { scopeKind: "instance", stateKey: "fn" })).toBeNull()
          // delete is idempotent
          yield* stores.state.delete(name, { scopeKind: "company", scopeId: "acme", stateKey: "greetings" })
          yield* stores.state.delete(name, { scopeKind: "company", scopeId: "acme", stateKey: "greetings" })
          expect(yield* stores.state.get(name, { scopeKind: "company", scopeId: "acme", stateKey: "greetings" })).toBeNull()
          // log notifications travel separately from the response: wait for it
          const logs = yield* eventually(Effect.filterOrFail(stores.log.list(name), (l) => l.some((x) => x.message === "greeting served")))
          expect(logs.length).toBeGreaterThan(0)
        }).pipe(Effect.scoped, Effect.provide(durableHostLayer(db))))
    }
  })
}
