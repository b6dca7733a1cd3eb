// Domain events in the transaction of their change (SPEC §16, outbox): the event store fails for a
// moment (a trigger makes every insert into `events` fail) during `company.created` and
// `agent.created` → the change is not made without its event; once the store recovers, the same
// request succeeds and a subscriber gets the event exactly once.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit } from "effect"
import type { EventEnvelope } from "../../src/protocol/methods.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { Database } from "../../src/store/Database.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { testDbs } from "../db.js"
import { eventually } from "../helpers.js"
import { twinApp } from "./support.js"

const breakEvents = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const { dialect } = yield* Database
  if (dialect === "pg") {
    yield* sql.unsafe(`CREATE OR REPLACE FUNCTION gantry_test_fail_events() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'event store down'; END $$ LANGUAGE plpgsql`)
    yield* sql.unsafe(`CREATE TRIGGER gantry_test_fail_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION gantry_test_fail_events()`)
  } else {
    yield* sql.unsafe(`CREATE TRIGGER gantry_test_fail_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'event store down'); END`)
  }
}).pipe(Effect.orDie)

const repairEvents = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const { dialect } = yield* Database
  yield* sql.unsafe(dialect === "pg" ? `DROP TRIGGER gantry_test_fail_events ON events` : `DROP TRIGGER gantry_test_fail_events`)
}).pipe(Effect.orDie)

const count = (q: string) => Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ n: number }>(q)).pipe(Effect.map((r) => Number(r[0]?.n ?? 0)), Effect.orDie)

for (const db of testDbs) {
  describe(`outbox [${db.kind}]`, () => {
    it.live("the event store fails during company.created / agent.created: nothing without its event; after recovery, delivered once", () =>
      Effect.gen(function* () {
        const stores = yield* CapabilityStores
        const seen: Array<EventEnvelope> = []
        yield* stores.events.subscribe("outbox-test", "company.*", null, (e) => Effect.sync(() => void seen.push(e)))
        yield* stores.events.subscribe("outbox-test", "agent.*", null, (e) => Effect.sync(() => void seen.push(e)))
        const companies = yield* Companies
        const agents = yield* Agents

        yield* breakEvents
        const failed = yield* Effect.exit(companies.create({ name: "outbox-co", id: "outbox-co" }))
        expect(Exit.isFailure(failed)).toBe(true)
        // not created without its event
        expect(yield* count(`SELECT COUNT(*) AS n FROM companies WHERE id = 'outbox-co'`)).toBe(0)
        expect(yield* count(`SELECT COUNT(*) AS n FROM events`)).toBe(0)
        yield* repairEvents

        const co = yield* companies.create({ name: "outbox-co", id: "outbox-co" })
        yield* breakEvents
        const agentFailed = yield* Effect.exit(agents.create(co.id, { name: "a1", command: "true" }))
        expect(Exit.isFailure(agentFailed)).toBe(true)
        expect(yield* count(`SELECT COUNT(*) AS n FROM agents`)).toBe(0)
        yield* repairEvents
        const agent = yield* agents.create(co.id, { name: "a1", command: "true" })

        yield* eventually(Effect.suspend(() => seen.length >= 2 ? Effect.void : Effect.fail("not yet")), 15_000)
        // and nothing more arrives (no duplicate, no late copy of the failed attempts)
        yield* Effect.sleep(Duration.millis(1_000))
        // two subscriptions: their deliveries are ordered each, not with each other
        expect(seen.map((e) => [e.eventType, e.entityId]).sort()).toEqual([["agent.created", agent.id], ["company.created", co.id]])
        expect(yield* count(`SELECT COUNT(*) AS n FROM events`)).toBe(2)
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))
  })
}
