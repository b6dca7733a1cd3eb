// Plugin log metadata is scrubbed value by value: a secret with characters JSON escapes (`"`, `\`)
// must not slip past the redactor once serialized.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Redactor } from "../../src/host/capabilities/Redactor.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { testDbs } from "../db.js"
import { durableHostLayer } from "../helpers.js"

const SECRET = `pa"ss\\word-canary-71`

for (const db of testDbs) {
  describe(`plugin log redaction [${db.kind}]`, () => {
    it.live("a secret with JSON-escaped characters is masked in message and meta", () =>
      Effect.gen(function* () {
        const redactor = yield* Redactor
        const stores = yield* CapabilityStores
        const sql = yield* SqlClient.SqlClient
        yield* redactor.register(SECRET)
        yield* stores.log.append("p1", "info", `token ${SECRET}`, { nested: { value: SECRET }, list: [SECRET] })
        const rows = yield* sql<{ message: string; meta: string }>`SELECT message, meta FROM plugin_logs WHERE plugin_id = 'p1'`
        expect(rows).toHaveLength(1)
        expect(rows[0]!.message).toBe("token [REDACTED]")
        expect(JSON.parse(rows[0]!.meta)).toEqual({ nested: { value: "[REDACTED]" }, list: ["[REDACTED]"] })
        expect(rows[0]!.meta).not.toContain("canary")
      }).pipe(Effect.scoped, Effect.provide(durableHostLayer(db))))
  })
}
