// Shared set-up for the work/environments tests: the app over the in-process fake-sandbox twin (one
// built twin shared by the app and the test, so FakeSandboxControl sees the app's calls), plus the
// Runtime service, row counts for "nothing changed" checks, and waiting on run state.
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Option, Stream } from "effect"
import { FakeSandboxControl, layerFakeProviders } from "../../src/testing/fakeSandbox.js"
import * as Runtime from "../../src/work/Runtime.js"
import { Runs, type Run, type RunStatus } from "../../src/work/Runs.js"
import type { AppOptions } from "../../src/server/App.js"
import type { TestDb } from "../db.js"
import { appLayer, eventually } from "../helpers.js"

/** Fast background loops; tests that care override them. */
export const fast = { leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 }, runs: { pollIntervalMs: 200, heartbeatIntervalMs: 100 } }

/** App + Runtime over a fresh database, with the twin as its only provider. */
export const twinApp = (db: TestDb, o: Omit<AppOptions, "dataDir" | "databaseUrl" | "providers"> & { readonly dataDir?: string } = fast) => {
  const fake = layerFakeProviders()
  // the same layer value twice in one build is built once
  return Runtime.layer.pipe(Layer.provideMerge(Layer.merge(appLayer(db, { ...o, providers: fake }), fake)))
}

export const TABLES = ["companies", "environments", "agents", "runs", "leases", "run_logs", "secrets", "events"] as const
export type Counts = Record<(typeof TABLES)[number], number>

/** Row counts of every table a bad input could touch. */
export const counts: Effect.Effect<Counts, never, SqlClient.SqlClient> = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const out: Partial<Counts> = {}
  for (const t of TABLES) {
    const rows = yield* sql<{ n: number }>`SELECT COUNT(*) AS n FROM ${sql(t)}`.pipe(Effect.orDie)
    out[t] = Number(rows[0]?.n ?? 0)
  }
  return out as Counts
})

/** Wait until the run reaches one of `statuses`. */
export const waitStatus = (runId: string, statuses: ReadonlyArray<RunStatus>, timeoutMs = 15_000) =>
  Effect.flatMap(Runs, (runs) =>
    eventually(Effect.filterOrFail(Effect.orDie(runs.get(runId)), (r: Run) => statuses.includes(r.status)), timeoutMs))

/** The first output chunk matching `re` (the stream ends with the run; none → failure). */
export const firstChunkMatching = (runId: string, re: RegExp) =>
  Effect.flatMap(Runs, (runs) =>
    runs.output(runId).pipe(
      Stream.filterMap((m) => {
        if (m._tag !== "chunk") return Option.none()
        const found = re.exec(m.chunk)
        return found ? Option.some(found) : Option.none()
      }),
      Stream.runHead,
      Effect.flatMap((o) => Option.isSome(o) ? Effect.succeed(o.value) : Effect.dieMessage(`run ${runId} ended without output matching ${re}`))
    ))

export { FakeSandboxControl }
