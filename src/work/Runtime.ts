// The runtime API's service logic (SPEC §9): what a run's command may do with its run token — ask
// who it is, report liveness, append to its run log. Every call verifies the token and binds its
// claims to the run record; a token is useless once its run is terminal. HTTP wiring lives in server/.
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { RunTokens, RunTokenInvalid, type RunTokenClaims } from "../environments/RunToken.js"
import { Agents } from "./Agents.js"
import { Runs, type RunStatus } from "./Runs.js"

/** A token that is valid but does not belong to the run it was used for. */
export class RuntimeForbidden extends Schema.TaggedError<RuntimeForbidden>()("RuntimeForbidden", {
  message: Schema.String
}) {
  get status() { return 403 }
}
export class RuntimeInvalid extends Schema.TaggedError<RuntimeInvalid>()("RuntimeInvalid", {
  message: Schema.String,
  errors: Schema.Array(Schema.String)
}) {
  get status() { return 422 }
}

export type RuntimeError = RunTokenInvalid | RuntimeForbidden

export interface WhoAmI {
  readonly run: {
    readonly id: string
    readonly status: RunStatus
    readonly agentId: string
    readonly companyId: string
    readonly trigger: "manual" | "heartbeat"
    readonly startedAt: string | null
  }
  readonly agent: { readonly id: string; readonly name: string; readonly command: string; readonly args: ReadonlyArray<string> }
  readonly environmentId: string | null
  /** ISO time after which the token is refused and the run is past its deadline. */
  readonly deadlineAt: string | null
}

export interface HeartbeatResult {
  readonly ok: true
  /** Unchanged by the heartbeat: liveness extends nothing past the deadline. */
  readonly deadlineAt: string | null
  readonly lastHeartbeatAt: string
}

export interface LogInput {
  readonly stream: "stdout" | "stderr"
  readonly chunk: string
}

export interface CallOptions {
  /** The run the caller means (e.g. from the request); refused with 403 when the token names another. */
  readonly runId?: string
}

/** Largest chunk one `log` call may append (characters). */
export const MAX_LOG_CHUNK = 64 * 1024

export class Runtime extends Context.Tag("gantry/Runtime")<Runtime, {
  readonly whoami: (token: string, options?: CallOptions) => Effect.Effect<WhoAmI, RuntimeError>
  /** Record liveness (`runs.last_heartbeat_at`); returns the run's fixed deadline. */
  readonly heartbeat: (token: string, options?: CallOptions) => Effect.Effect<HeartbeatResult, RuntimeError>
  /** Append a chunk to the run log (redacted like the command's own output). */
  readonly log: (token: string, input: unknown, options?: CallOptions) => Effect.Effect<{ readonly ok: true }, RuntimeError | RuntimeInvalid>
}>() {}

type Row = { company_id: string; agent_id: string; status: RunStatus; deadline_at: number | null }
const iso = (n: number | null) => (n === null ? null : new Date(Number(n)).toISOString())

const validateLog = (input: unknown): Effect.Effect<LogInput, RuntimeInvalid> => {
  const errors: Array<string> = []
  if (typeof input !== "object" || input === null || Array.isArray(input)) errors.push("body: must be an object")
  else {
    const i = input as Record<string, unknown>
    for (const k of Object.keys(i)) if (k !== "stream" && k !== "chunk") errors.push(`${k}: unknown field`)
    if (i.stream !== "stdout" && i.stream !== "stderr") errors.push(`stream: must be "stdout" or "stderr"`)
    if (typeof i.chunk !== "string" || i.chunk.length === 0) errors.push("chunk: required non-empty string")
    else if (i.chunk.length > MAX_LOG_CHUNK) errors.push(`chunk: at most ${MAX_LOG_CHUNK} characters`)
  }
  return errors.length > 0
    ? Effect.fail(new RuntimeInvalid({ message: `invalid log entry: ${errors.join("; ")}`, errors }))
    : Effect.succeed(input as LogInput)
}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const tokens = yield* RunTokens
  const runs = yield* Runs
  const agents = yield* Agents

  /** Verified claims of a token whose run is active, bound to that run's record. */
  const authorize = (token: string, options: CallOptions | undefined) =>
    Effect.gen(function* () {
      const claims: RunTokenClaims = yield* tokens.verifyForRun(token, runs.isActive)
      if (options?.runId !== undefined && options.runId !== claims.sub) {
        return yield* new RuntimeForbidden({ message: "the run token belongs to another run" })
      }
      const rows = yield* sql<Row>`SELECT company_id, agent_id, status, deadline_at FROM runs WHERE id = ${claims.sub}`.pipe(Effect.orDie)
      const row = rows[0]
      if (!row) return yield* new RunTokenInvalid({ reason: "finished", message: "run is finished" })
      // the signature makes this hold for tokens we issued; a mismatch means a token minted for another tenant
      if (row.company_id !== claims.cid || row.agent_id !== claims.aid) {
        return yield* new RuntimeForbidden({ message: "the run token does not match its run's company or agent" })
      }
      return { claims, row }
    })

  return Runtime.of({
    whoami: Effect.fn("Runtime.whoami")(function* (token, options) {
      const { claims } = yield* authorize(token, options)
      const run = yield* Effect.orDie(runs.get(claims.sub))
      const agent = yield* Effect.orDie(agents.get(run.agentId))
      const rows = yield* sql<{ deadline_at: number | null }>`SELECT deadline_at FROM runs WHERE id = ${run.id}`.pipe(Effect.orDie)
      return {
        run: { id: run.id, status: run.status, agentId: run.agentId, companyId: run.companyId, trigger: run.trigger, startedAt: run.startedAt },
        agent: { id: agent.id, name: agent.name, command: agent.command, args: agent.args },
        environmentId: run.environmentId,
        deadlineAt: iso(rows[0]?.deadline_at ?? null)
      }
    }),
    heartbeat: Effect.fn("Runtime.heartbeat")(function* (token, options) {
      const { claims } = yield* authorize(token, options)
      const now = yield* Clock.currentTimeMillis
      // conditional: a run that ended since the token was checked takes no heartbeat
      const updated = yield* sql<{ deadline_at: number | null }>`UPDATE runs SET last_heartbeat_at = ${now}
        WHERE id = ${claims.sub} AND status IN ('queued', 'running') RETURNING deadline_at`.pipe(Effect.orDie)
      if (updated.length === 0) return yield* new RunTokenInvalid({ reason: "finished", message: "run is finished" })
      return { ok: true as const, deadlineAt: iso(updated[0]!.deadline_at), lastHeartbeatAt: new Date(now).toISOString() }
    }),
    log: Effect.fn("Runtime.log")(function* (token, input, options) {
      const { claims } = yield* authorize(token, options)
      const entry = yield* validateLog(input)
      yield* runs.appendLog(claims.sub, entry.stream, entry.chunk).pipe(
        Effect.catchTag("RunNotFound", () => Effect.fail(new RunTokenInvalid({ reason: "finished", message: "run is finished" })))
      )
      return { ok: true as const }
    })
  })
})

/** Needs Runs, Agents, RunTokens and the SqlClient (all in the app layer). */
export const layer = Layer.effect(Runtime, make)
