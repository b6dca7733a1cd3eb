// SSE run output that fails mid-stream ends with an `error` event (the client then reconnects with
// Last-Event-ID), not with a silent close. The run is "running on another replica", so the stream
// follows the run log in the database; the log table then goes away under it.
import { HttpServer } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Layer, Runtime } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ApiTokens } from "../../src/server/Auth.js"
import * as Server from "../../src/server/Server.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { freshDatabaseUrl, testDbs } from "../db.js"
import { readSse } from "./support.js"

const sqlite = testDbs.find((d) => d.kind === "sqlite")!

describe("run output over SSE", () => {
  it.live("a stream that fails ends with an error event", () => {
    const dataDir = mkdtempSync(join(tmpdir(), "gantry-sse-error-"))
    return Effect.gen(function* () {
      const address = (yield* HttpServer.HttpServer).address
      if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP server")
      const base = `http://127.0.0.1:${address.port}`
      const token = (yield* (yield* ApiTokens).ensureAdmin).pipe((o) => (o._tag === "Some" ? o.value : ""))
      const sql = yield* SqlClient.SqlClient
      const co = yield* (yield* Companies).create({ name: "sse-co" })
      const agent = yield* (yield* Agents).create(co.id, { name: "a", command: "true" })
      const now = yield* Clock.currentTimeMillis
      // a live replica elsewhere owns a running run with some output
      yield* sql`INSERT INTO instances (id, started_at, heartbeat_at) VALUES ('elsewhere', ${now}, ${now + 3_600_000})`
      yield* sql`INSERT INTO runs (id, company_id, agent_id, status, trigger, created_at, started_at, owner_instance_id, extra_env)
        VALUES ('run-elsewhere', ${co.id}, ${agent.id}, 'running', 'manual', ${now}, ${now}, 'elsewhere', '{}')`
      yield* sql`INSERT INTO run_logs (run_id, at, stream, chunk) VALUES ('run-elsewhere', ${now}, 'stdout', 'first line\n')`
      const runPromise = Runtime.runPromise(yield* Effect.runtime<never>())
      const events = yield* Effect.promise(() => readSse(base, "/api/runs/run-elsewhere/output", token, async (e) => {
        if (e.event === "stdout") await runPromise(Effect.orDie(sql`ALTER TABLE run_logs RENAME TO run_logs_gone`))
        return e.event === "error" || e.event === "end"
      }, 20_000))
      expect(events.map((e) => e.event)).toEqual(["stdout", "error"])
      expect(events[1]!.data).toMatchObject({ error: { code: "stream_failed" } })
    }).pipe(
      Effect.provide(Layer.unwrapScoped(Effect.map(freshDatabaseUrl(sqlite), (url) => Server.layer({ bindHost: "127.0.0.1", port: 0, dataDir, databaseUrl: url })))),
      Effect.scoped,
      Effect.ensuring(Effect.sync(() => rmSync(dataDir, { recursive: true, force: true })))
    )
  })
})
