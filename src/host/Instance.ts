// This host instance's liveness record: a row in `instances` refreshed on a schedule, so other
// replicas (and the lease sweeper) can tell a dead owner from a live one.
import { SqlClient } from "@effect/sql"
import { Clock, Config, Context, Duration, Effect, Layer, Schedule } from "effect"
import { HostOptions } from "./HostOptions.js"

export class Instance extends Context.Tag("gantry/Instance")<Instance, {
  readonly id: string
  readonly heartbeatMs: number
  /** An owner whose heartbeat is older than this is considered dead. */
  readonly staleAfterMs: number
}>() {}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const { instanceId } = yield* HostOptions
  const heartbeatMs = yield* Config.integer("GANTRY_INSTANCE_HEARTBEAT_MS").pipe(Config.withDefault(5_000), Effect.orDie)
  const staleAfterMs = yield* Config.integer("GANTRY_INSTANCE_STALE_MS").pipe(Config.withDefault(heartbeatMs * 3), Effect.orDie)
  const beat = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    sql`INSERT INTO instances (id, started_at, heartbeat_at) VALUES (${instanceId}, ${now}, ${now})
      ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at`).pipe(Effect.asVoid)
  yield* Effect.orDie(beat)
  yield* Effect.forkScoped(Effect.repeat(Effect.ignore(beat), Schedule.spaced(Duration.millis(heartbeatMs))))
  // a clean shutdown marks the instance dead at once, so its leftovers are reaped without waiting
  yield* Effect.addFinalizer(() => Effect.ignore(sql`UPDATE instances SET heartbeat_at = 0 WHERE id = ${instanceId}`))
  return Instance.of({ id: instanceId, heartbeatMs, staleAfterMs })
})

export const layer = Layer.scoped(Instance, make)
