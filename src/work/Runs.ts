// Runs and the orchestrator (SPEC §10): select environment → acquire lease (scoped) → realize
// workspace → execute with streaming → release by exit. One fiber per run (FiberMap keyed by run
// id); cancel interrupts it and the lease scope does the rest. Runs are claimed with a conditional
// UPDATE so that with several replicas each queued run is executed once; a heartbeat scheduler
// starts runs for agents with a schedule (no overlap per agent).
import { SqlClient } from "@effect/sql"
import {
  Chunk, Clock, Context, Data, Deferred, Duration, Effect, Exit, Cause, FiberMap, Layer, Option, PubSub, Queue, Schedule, Schema, Scope, Stream
} from "effect"
import { mkdirSync } from "node:fs"
import { join, resolve } from "node:path"
import { randomUUID } from "node:crypto"
import { Instance } from "../host/Instance.js"
import { CapabilityStores } from "../host/Stores.js"
import { Redactor } from "../host/capabilities/Redactor.js"
import { Environments, type Environment, type EnvironmentNotFound, type LocalNotGranted, type NoEnvironment } from "../environments/Environments.js"
import { Executor, OUTPUT_CAP, type ExecResult, type ExecTarget } from "../environments/Execution.js"
import { Leases } from "../environments/Leases.js"
import { Providers } from "../environments/Provider.js"
import { RunTokens } from "../environments/RunToken.js"
import { RuntimeUrl } from "../environments/RuntimeUrl.js"
import { DataDir, defaultWorkspacesDir, isInside } from "../store/DataDir.js"
import { Agents, nextHeartbeat, type Agent, type EnvValue } from "./Agents.js"

export type RunStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "timed_out"
export const TERMINAL_RUN: ReadonlyArray<RunStatus> = ["succeeded", "failed", "cancelled", "timed_out"]

export interface Run {
  readonly id: string
  readonly companyId: string
  readonly agentId: string
  readonly environmentId: string | null
  readonly status: RunStatus
  readonly trigger: "manual" | "heartbeat"
  readonly exitCode: number | null
  readonly signal: string | null
  readonly error: string | null
  readonly stdout: string
  readonly stderr: string
  readonly truncated: boolean
  readonly leaseId: string | null
  readonly createdAt: string
  readonly startedAt: string | null
  readonly finishedAt: string | null
}

export type RunOutput =
  | { readonly _tag: "chunk"; readonly seq: number; readonly stream: "stdout" | "stderr" | "system"; readonly chunk: string }
  | { readonly _tag: "end"; readonly run: Run }

export class RunNotFound extends Schema.TaggedError<RunNotFound>()("RunNotFound", {
  runId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class RunInvalid extends Schema.TaggedError<RunInvalid>()("RunInvalid", {
  message: Schema.String
}) {
  get status() { return 422 }
}
export class RunConflict extends Schema.TaggedError<RunConflict>()("RunConflict", {
  message: Schema.String
}) {
  get status() { return 409 }
}

class CommandFailed extends Data.TaggedError("CommandFailed")<{
  readonly message: string
  readonly status: "failed" | "timed_out"
  readonly result: ExecResult
}> {}

type Row = {
  id: string; company_id: string; agent_id: string; environment_id: string | null; status: RunStatus; trigger: "manual" | "heartbeat"
  exit_code: number | null; signal: string | null; error: string | null; stdout: string; stderr: string; truncated: number
  lease_id: string | null; owner_instance_id: string | null; cancel_requested: number; deadline_at: number | null; extra_env: string
  created_at: number; started_at: number | null; finished_at: number | null; scheduled_at: number | null
}
const iso = (n: number | null) => (n === null ? null : new Date(Number(n)).toISOString())
const toRun = (r: Row): Run => ({
  id: r.id,
  companyId: r.company_id,
  agentId: r.agent_id,
  environmentId: r.environment_id,
  status: r.status,
  trigger: r.trigger,
  exitCode: r.exit_code === null ? null : Number(r.exit_code),
  signal: r.signal,
  error: r.error,
  stdout: r.stdout,
  stderr: r.stderr,
  truncated: Number(r.truncated) === 1,
  leaseId: r.lease_id,
  createdAt: iso(r.created_at)!,
  startedAt: iso(r.started_at),
  finishedAt: iso(r.finished_at)
})

export interface StartInput {
  readonly environmentId?: string | null
  /** Extra variables for this run only. */
  readonly env?: Record<string, string>
}

export class Runs extends Context.Tag("gantry/Runs")<Runs, {
  readonly start: (companyId: string, agentId: string, input?: StartInput) => Effect.Effect<Run, RunInvalid | RunNotFound | RunConflict | EnvironmentNotFound | LocalNotGranted | NoEnvironment>
  readonly get: (runId: string) => Effect.Effect<Run, RunNotFound>
  readonly list: (filter: { readonly companyId?: string; readonly agentId?: string; readonly limit?: number }) => Effect.Effect<ReadonlyArray<Run>>
  readonly cancel: (runId: string) => Effect.Effect<Run, RunNotFound>
  /** Output so far (from the log) followed by live chunks, ending with the final run. */
  readonly output: (runId: string, options?: { readonly afterSeq?: number }) => Stream.Stream<RunOutput, RunNotFound>
  /** Wait until the run is terminal. */
  readonly await: (runId: string) => Effect.Effect<Run, RunNotFound>
  /** Append a line to the run log (runtime API `POST /api/runtime/run/log`). */
  readonly appendLog: (runId: string, stream: "stdout" | "stderr" | "system", chunk: string) => Effect.Effect<void, RunNotFound>
  readonly isActive: (runId: string) => Effect.Effect<boolean>
  /** Stop accepting new runs and cancel the ones running here (graceful shutdown). */
  readonly shutdown: Effect.Effect<void>
}>() {}

export interface RunsOptions {
  /** The data dir; local workspaces live outside it (`DataDir.workspacesDir`, default `<dataDir>-workspaces/<agentId>`). */
  readonly dataDir: string
  readonly pollIntervalMs: number
  readonly heartbeatIntervalMs: number
}

const MAX_LOG_BYTES = 4 * OUTPUT_CAP
const REMOTE_POLL_MS = 300
/** A change and its event that hit a database error are retried (a hiccup must not lose either). */
const dbRetry = Schedule.exponential(Duration.millis(50)).pipe(Schedule.intersect(Schedule.recurs(6)))
/** How often the owner of running runs looks for a cancel requested on another replica. */
const CANCEL_POLL = Duration.millis(250)
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/
const secretRefOf = (v: EnvValue) => (typeof v === "string" ? undefined : v)

export const make = (options: RunsOptions) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const agents = yield* Agents
    const environments = yield* Environments
    const leases = yield* Leases
    const executor = yield* Executor
    const providers = yield* Providers
    const instance = yield* Instance
    const stores = yield* CapabilityStores
    const redactor = yield* Redactor
    const tokens = yield* RunTokens
    const runtimeUrl = yield* RuntimeUrl
    const secrets = yield* Effect.serviceOption(RunSecrets)
    const dataDirInfo = yield* Effect.serviceOption(DataDir)
    const dataDirPath = Option.match(dataDirInfo, { onNone: () => resolve(options.dataDir), onSome: (d) => d.path })
    const workspacesDir = Option.match(dataDirInfo, { onNone: () => defaultWorkspacesDir(options.dataDir), onSome: (d) => d.workspacesDir })
    const fibers = yield* FiberMap.make<string>()
    // held: per source+stream, the end of the output that may begin a secret (redaction across chunks)
    const live = new Map<string, { pubsub: PubSub.PubSub<RunOutput>; seq: number; bytes: number; held: Map<string, string> }>()
    let accepting = true

    const get = (runId: string) =>
      sql<Row>`SELECT * FROM runs WHERE id = ${runId}`.pipe(
        Effect.orDie,
        Effect.flatMap((rows) => rows.length === 0
          ? Effect.fail(new RunNotFound({ runId, message: `run "${runId}" not found` }))
          : Effect.succeed(toRun(rows[0]!)))
      )

    /** Write a run event; callers run it in the transaction of the change it describes (outbox). */
    const emit = (eventType: string, run: Run) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => stores.events.emit({
        eventId: randomUUID(), eventType, occurredAt: new Date(now).toISOString(), entityId: run.id, entityType: "run",
        actorType: "system", companyId: run.companyId,
        payload: { runId: run.id, agentId: run.agentId, environmentId: run.environmentId, status: run.status, exitCode: run.exitCode }
      }))

    const liveOf = (runId: string) =>
      Effect.suspend(() => {
        const existing = live.get(runId)
        if (existing) return Effect.succeed(existing)
        return Effect.map(PubSub.unbounded<RunOutput>(), (pubsub) => {
          const l = live.get(runId) ?? { pubsub, seq: 0, bytes: 0, held: new Map<string, string>() }
          live.set(runId, l)
          return l
        })
      })

    const writeChunk = (runId: string, l: { pubsub: PubSub.PubSub<RunOutput>; seq: number; bytes: number }, stream: "stdout" | "stderr" | "system", chunk: string) =>
      Effect.gen(function* () {
        if (l.bytes > MAX_LOG_BYTES || chunk.length === 0) return
        l.bytes += chunk.length
        const seq = ++l.seq
        const now = yield* Clock.currentTimeMillis
        const text = l.bytes > MAX_LOG_BYTES ? `${chunk}\n[run log truncated at ${MAX_LOG_BYTES} bytes]\n` : chunk
        yield* sql`INSERT INTO run_logs (run_id, at, stream, chunk) VALUES (${runId}, ${now}, ${stream}, ${text})`.pipe(Effect.orDie)
        yield* PubSub.publish(l.pubsub, { _tag: "chunk", seq, stream, chunk: text })
      })

    /** Redact and store a chunk. A secret split over two chunks is caught: the end of a chunk that
     * begins a known secret is held back until the next chunk of the same source and stream. */
    const appendChunk = (runId: string, stream: "stdout" | "stderr" | "system", raw: string, source: "exec" | "runtime" = "exec") =>
      Effect.gen(function* () {
        const l = yield* liveOf(runId)
        const key = `${source}:${stream}`
        const redacted = redactor.redact((l.held.get(key) ?? "") + raw)
        const keep = redactor.partialSuffix(redacted)
        if (keep > 0) l.held.set(key, redacted.slice(redacted.length - keep))
        else l.held.delete(key)
        yield* writeChunk(runId, l, stream, redacted.slice(0, redacted.length - keep))
      })

    /** The end of the output: what was held back was not a secret after all. */
    const flushHeld = (runId: string) =>
      Effect.suspend(() => {
        const l = live.get(runId)
        if (!l || l.held.size === 0) return Effect.void
        const held = [...l.held.entries()]
        l.held.clear()
        return Effect.forEach(held, ([key, text]) =>
          writeChunk(runId, l, key.slice(key.indexOf(":") + 1) as "stdout" | "stderr" | "system", redactor.redact(text)), { discard: true })
      })

    /** The command's environment: environment vars + agent vars (secret refs resolved) + run vars. */
    const buildEnv = (run: Row, agent: Agent, envVars: Record<string, string>, extra: Record<string, string>, token: string) =>
      Effect.gen(function* () {
        const out: Record<string, string> = { ...envVars }
        for (const [k, v] of Object.entries(agent.env)) {
          const ref = secretRefOf(v)
          if (!ref) out[k] = v as string
          else {
            if (Option.isNone(secrets)) return yield* Effect.fail(`env.${k}: secret references need the secret store`)
            out[k] = yield* Effect.mapError(secrets.value.resolveForRun(run.company_id, ref), (e) => `env.${k}: ${e}`)
          }
        }
        Object.assign(out, extra, runtimeUrl.runEnv(run.id, token))
        return out
      })

    const finishRun = (runId: string, status: RunStatus, result: Partial<ExecResult> | null, error: string | null, leaseId: string | null) =>
      Effect.gen(function* () {
        // before the status: a terminal run's log is complete
        yield* flushHeld(runId)
        const now = yield* Clock.currentTimeMillis
        // the terminal status and its event commit together (outbox); a database hiccup is retried
        yield* sql.withTransaction(Effect.gen(function* () {
          const updated = yield* sql<Row>`UPDATE runs SET status = ${status}, exit_code = ${result?.exitCode ?? null}, signal = ${result?.signal ?? null},
            error = ${error === null ? null : redactor.redact(error)}, stdout = ${redactor.redact(result?.stdout ?? "")}, stderr = ${redactor.redact(result?.stderr ?? "")},
            truncated = ${result?.truncated ? 1 : 0}, lease_id = COALESCE(${leaseId}, lease_id), finished_at = ${now}
            WHERE id = ${runId} AND status IN ('queued', 'running') RETURNING *`
          if (updated.length > 0) {
            yield* emit(status === "succeeded" ? "agent.run.finished" : status === "cancelled" ? "agent.run.cancelled" : "agent.run.failed", toRun(updated[0]!))
          }
        })).pipe(Effect.retry(dbRetry), Effect.orDie)
        const run = yield* Effect.orDie(get(runId))
        const l = live.get(runId)
        if (l) {
          yield* PubSub.publish(l.pubsub, { _tag: "end", run })
          live.delete(runId)
        }
        return run
      })

    /** Execute one claimed run. Every outcome ends in a terminal status; the lease scope releases. */
    const execute = (row: Row) =>
      Effect.gen(function* () {
        const agent = yield* Effect.orDie(agents.get(row.agent_id))
        const extra = JSON.parse(row.extra_env ?? "{}") as Record<string, string>
        const selected = yield* Effect.either(environments.select(row.company_id, { explicit: row.environment_id, agentDefault: agent.defaultEnvironmentId }))
        if (selected._tag === "Left") return yield* finishRun(row.id, "failed", null, selected.left.message, null)
        const env: Environment = selected.right
        const token = yield* tokens.sign({ runId: row.id, companyId: row.company_id, agentId: row.agent_id, expiresAt: Number(row.deadline_at) })
        // a command that prints its token must not leak it into logs or stored output
        yield* redactor.register(token)
        yield* sql.withTransaction(Effect.zipRight(
          sql`UPDATE runs SET environment_id = ${env.id} WHERE id = ${row.id}`,
          emit("agent.run.started", { ...toRun(row), environmentId: env.id, status: "running" })
        )).pipe(Effect.retry(dbRetry), Effect.orDie)
        let leaseId: string | null = null
        // output chunks arrive on plain callbacks; one consumer appends them in order
        const chunks = yield* Queue.unbounded<readonly ["stdout" | "stderr", string] | null>()
        const drained = yield* Deferred.make<void>()
        yield* Effect.forkScoped(Effect.gen(function* () {
          for (;;) {
            const item = yield* Queue.take(chunks)
            if (item === null) break
            yield* appendChunk(row.id, item[0], item[1])
          }
        }).pipe(Effect.ensuring(Deferred.succeed(drained, undefined))))
        const onChunk = (stream: "stdout" | "stderr", chunk: string) => {
          Queue.unsafeOffer(chunks, [stream, chunk])
        }
        const flushOutput = Effect.zipRight(Queue.offer(chunks, null), Deferred.await(drained))
        const body = Effect.scoped(Effect.gen(function* () {
          let target: ExecTarget
          let envVars: Record<string, string>
          if (env.driver === "local") {
            const cwd = typeof env.config.workspacePath === "string" ? resolve(env.config.workspacePath) : join(workspacesDir, agent.id)
            // a local command runs as the host's user: its workspace must not reach the database or keys
            if (isInside(cwd, dataDirPath)) return yield* Effect.fail(`local workspace ${cwd} is inside the data dir ${dataDirPath}; choose a workspace outside it`)
            mkdirSync(cwd, { recursive: true, mode: 0o700 })
            target = { _tag: "local", cwd }
            envVars = (env.config.env as Record<string, string> | undefined) ?? {}
          } else {
            const s = yield* environments.sandboxSettings(env)
            const lease = yield* leases.acquire({
              companyId: row.company_id, environmentId: env.id, runId: row.id, agentId: agent.id,
              provider: s.provider, config: s.providerConfig, policy: s.policy
            })
            leaseId = lease.id
            yield* sql`UPDATE runs SET lease_id = ${lease.id} WHERE id = ${row.id}`.pipe(Effect.orDie)
            let cwd: string | undefined
            if (s.provider.supportedMethods.includes("environmentRealizeWorkspace")) {
              const realized = (yield* providers.call(lease.pluginId, "environmentRealizeWorkspace", {
                driverKey: lease.driverKey, companyId: lease.companyId, environmentId: lease.environmentId, config: lease.config,
                lease: { providerLeaseId: lease.providerLeaseId, metadata: lease.metadata }, workspace: { mode: "agent" }
              }, { companyId: lease.companyId })) as { cwd?: string } | null
              cwd = realized?.cwd
            }
            target = { _tag: "sandbox", lease, cwd: cwd ?? "/tmp" }
            envVars = s.env
          }
          const commandEnv = yield* buildEnv(row, agent, envVars, extra, token)
          const result = yield* executor.execute(target, { command: agent.command, args: agent.args, env: commandEnv, timeoutMs: agent.timeoutMs }, onChunk)
          if (result.timedOut) return yield* new CommandFailed({ message: `command timed out after ${agent.timeoutMs} ms`, status: "timed_out", result })
          if (result.exitCode !== 0) return yield* new CommandFailed({ message: `command exited with ${result.exitCode ?? result.signal}`, status: "failed", result })
          return result
        }))
        const exit = yield* Effect.exit(body)
        yield* flushOutput
        if (Exit.isSuccess(exit)) return yield* finishRun(row.id, "succeeded", exit.value, null, leaseId)
        if (Cause.isInterruptedOnly(exit.cause)) return yield* finishRun(row.id, "cancelled", null, "cancelled", leaseId)
        const err = Cause.squash(exit.cause) as { _tag?: string; message?: string }
        if (err instanceof CommandFailed) return yield* finishRun(row.id, err.status, err.result, err.message, leaseId)
        return yield* finishRun(row.id, "failed", null, typeof err === "string" ? err : err?.message ?? String(err), leaseId)
      })

    /** stdout/stderr of a run rebuilt from its log (a cancelled run has no result of its own). */
    const outputFromLog = (runId: string) =>
      sql<{ stream: string; chunk: string }>`SELECT stream, chunk FROM run_logs WHERE run_id = ${runId} ORDER BY id`.pipe(
        Effect.map((rows) => {
          const join = (name: string) => rows.filter((r) => r.stream === name).map((r) => r.chunk).join("")
          const stdout = join("stdout"), stderr = join("stderr")
          return { stdout: stdout.slice(0, OUTPUT_CAP), stderr: stderr.slice(0, OUTPUT_CAP), truncated: stdout.length > OUTPUT_CAP || stderr.length > OUTPUT_CAP }
        }),
        Effect.orElseSucceed(() => null)
      )

    /**
     * Claim a queued run for this instance and fork its fiber. Uninterruptible from the claim to the
     * fork, and whatever goes wrong in between ends the run (failed) or hands it back (queued, when the
     * host is closing): a claimed run never stays `running` with no fiber behind it.
     */
    const claimAndRun = (runId: string) =>
      Effect.uninterruptible(Effect.gen(function* () {
        if (!accepting) return
        const now = yield* Clock.currentTimeMillis
        const claimed = yield* sql<Row>`UPDATE runs SET status = 'running', owner_instance_id = ${instance.id}, started_at = ${now}
          WHERE id = ${runId} AND status = 'queued' RETURNING *`.pipe(Effect.orDie)
        if (claimed.length === 0) return
        const row = claimed[0]!
        const internalError = (c: Cause.Cause<unknown>) => finishRun(runId, "failed", null, `internal error: ${Cause.pretty(c).slice(0, 500)}`, null)
        yield* Effect.gen(function* () {
          const deadline = now + (yield* Effect.orDie(agents.get(row.agent_id))).timeoutMs + 60_000
          yield* sql`UPDATE runs SET deadline_at = ${deadline} WHERE id = ${runId}`.pipe(Effect.orDie)
          yield* liveOf(runId)
          // the forked fiber is interruptible (FiberMap forks with the default flags): cancel reaches it
          yield* FiberMap.run(fibers, runId, Effect.scoped(execute({ ...row, deadline_at: deadline, started_at: now })).pipe(
            // cancel (or host shutdown) interrupts the fiber: the lease scope has released by then
            Effect.onInterrupt(() => Effect.flatMap(outputFromLog(runId), (out) => finishRun(runId, "cancelled", out, "cancelled", null))),
            Effect.catchAllCause((c) => Cause.isInterruptedOnly(c) ? Effect.void : internalError(c))
          ))
        }).pipe(Effect.catchAllCause((c) =>
          Cause.isInterruptedOnly(c)
            // the fiber map is closed (host shutting down): back to the queue for the next host
            ? Effect.zipRight(
              sql`UPDATE runs SET status = 'queued', owner_instance_id = NULL, started_at = NULL WHERE id = ${runId} AND status = 'running'`.pipe(Effect.ignore),
              Effect.sync(() => void live.delete(runId)))
            : internalError(c)))
      }))

    const insertRun = (companyId: string, agent: Agent, trigger: "manual" | "heartbeat", environmentId: string | null, extra: Record<string, string>, scheduledAt: number | null) =>
      Effect.gen(function* () {
        const id = randomUUID()
        const now = yield* Clock.currentTimeMillis
        const inserted = yield* sql<{ id: string }>`INSERT INTO runs (id, company_id, agent_id, environment_id, status, trigger, scheduled_at, created_at, extra_env)
          VALUES (${id}, ${companyId}, ${agent.id}, ${environmentId}, 'queued', ${trigger}, ${scheduledAt}, ${now}, ${JSON.stringify(extra)})
          ON CONFLICT DO NOTHING RETURNING id`.pipe(Effect.orDie)
        return inserted.length > 0 ? id : null
      })

    const start: Context.Tag.Service<Runs>["start"] = (companyId, agentId, input = {}) =>
      Effect.gen(function* () {
        if (!accepting) return yield* new RunConflict({ message: "the host is shutting down and accepts no new runs" })
        const agent = yield* agents.get(agentId).pipe(Effect.mapError((e) => new RunNotFound({ runId: agentId, message: e.message })))
        if (agent.companyId !== companyId) return yield* new RunNotFound({ runId: agentId, message: `agent "${agentId}" not found` })
        if (input.env !== undefined) {
          const env: unknown = input.env
          // the same names an agent's env accepts; GANTRY_* are the host's
          const errors = typeof env !== "object" || env === null || Array.isArray(env)
            ? ["env: must map variable names to strings"]
            : Object.entries(env).flatMap(([k, v]) => !ENV_NAME_RE.test(k) ? [`env.${k}: invalid variable name`]
              : k.startsWith("GANTRY_") ? [`env.${k}: GANTRY_* variables are set by the host`]
              : typeof v !== "string" ? [`env.${k}: must be a string`] : [])
          if (errors.length > 0) return yield* new RunInvalid({ message: `invalid run: ${errors.join("; ")}` })
        }
        const explicit = input.environmentId ?? null
        // validate the selection up front: a bad environment is a 4xx, not a failed run
        yield* environments.select(companyId, { explicit, agentDefault: agent.defaultEnvironmentId }).pipe(
          Effect.mapError((e) => e._tag === "CompanyNotFound" ? new RunNotFound({ runId: agentId, message: e.message })
            : e._tag === "EnvironmentUnavailable" ? new RunInvalid({ message: e.message }) : e)
        )
        const id = (yield* insertRun(companyId, agent, "manual", explicit, input.env ?? {}, null))!
        yield* claimAndRun(id)
        return yield* Effect.orDie(get(id))
      })

    // runs queued by another replica (or left queued) are picked up; runs of dead owners fail
    const poll = Effect.gen(function* () {
      const queued = yield* sql<{ id: string }>`SELECT id FROM runs WHERE status = 'queued' ORDER BY created_at LIMIT 50`.pipe(Effect.orDie)
      yield* Effect.forEach(queued, (r) => claimAndRun(r.id), { discard: true })
      const now = yield* Clock.currentTimeMillis
      const orphans = yield* sql<{ id: string }>`SELECT r.id FROM runs r LEFT JOIN instances i ON i.id = r.owner_instance_id
        WHERE r.status = 'running' AND r.owner_instance_id <> ${instance.id} AND (i.id IS NULL OR i.heartbeat_at < ${now - instance.staleAfterMs})`.pipe(Effect.orDie)
      yield* Effect.forEach(orphans, (r) => finishRun(r.id, "failed", null, "the host running it died", null), { discard: true })
    }).pipe(Effect.catchAllCause((c) => Effect.logWarning("run poll failed", c)))

    // heartbeat scheduler: a due agent gets one run per tick, claimed by a unique (agent, scheduled_at)
    const heartbeats = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const due = yield* sql<{ id: string; next_heartbeat_at: number }>`SELECT id, next_heartbeat_at FROM agents
        WHERE next_heartbeat_at IS NOT NULL AND next_heartbeat_at <= ${now}`.pipe(Effect.orDie)
      for (const d of due) {
        const agent = yield* Effect.either(agents.get(d.id))
        if (agent._tag === "Left" || !agent.right.heartbeat) continue
        const at = Number(d.next_heartbeat_at)
        const next = nextHeartbeat(agent.right.heartbeat, Math.max(now, at))
        // advance the schedule first (conditional: one replica wins the tick)
        const advanced = yield* sql<{ id: string }>`UPDATE agents SET next_heartbeat_at = ${next} WHERE id = ${d.id} AND next_heartbeat_at = ${at} RETURNING id`.pipe(Effect.orDie)
        if (advanced.length === 0) continue
        const busy = yield* sql<{ n: number }>`SELECT COUNT(*) AS n FROM runs WHERE agent_id = ${d.id} AND status IN ('queued', 'running')`.pipe(Effect.orDie)
        if (Number(busy[0]?.n ?? 0) > 0) {
          yield* Effect.logInfo(`heartbeat of agent ${d.id} skipped: a run is still in progress (no overlap)`)
          continue
        }
        const id = yield* insertRun(agent.right.companyId, agent.right, "heartbeat", null, {}, at)
        if (id) yield* claimAndRun(id)
      }
    }).pipe(Effect.catchAllCause((c) => Effect.logWarning("heartbeat tick failed", c)))

    // a cancel sent to another replica only sets cancel_requested: the owner interrupts its fiber
    const watchCancels = Effect.gen(function* () {
      const local = [...fibers].map(([id]) => id)
      if (local.length === 0) return
      const requested = yield* sql<{ id: string }>`SELECT id FROM runs WHERE id IN ${sql.in(local)} AND cancel_requested = 1`.pipe(Effect.orDie)
      yield* Effect.forEach(requested, (r) => FiberMap.remove(fibers, r.id), { discard: true, concurrency: "unbounded" })
    }).pipe(Effect.catchAllCause((c) => Effect.logWarning("cancel watch failed", c)))

    yield* Effect.forkScoped(Effect.repeat(poll, Schedule.spaced(Duration.millis(options.pollIntervalMs))))
    yield* Effect.forkScoped(Effect.repeat(watchCancels, Schedule.spaced(CANCEL_POLL)))
    yield* Effect.forkScoped(Effect.repeat(heartbeats, Schedule.spaced(Duration.millis(options.heartbeatIntervalMs))))

    const cancel = (runId: string) =>
      Effect.gen(function* () {
        const run = yield* get(runId)
        if (TERMINAL_RUN.includes(run.status)) return run
        yield* sql`UPDATE runs SET cancel_requested = 1 WHERE id = ${runId}`.pipe(Effect.orDie)
        const fiber = yield* FiberMap.get(fibers, runId).pipe(Effect.option)
        if (fiber._tag === "Some") {
          yield* FiberMap.remove(fibers, runId)
        } else if (run.status === "queued") {
          yield* finishRun(runId, "cancelled", null, "cancelled before it started", null)
        }
        return yield* awaitRun(runId)
      })

    const awaitRun = (runId: string): Effect.Effect<Run, RunNotFound> =>
      Effect.flatMap(get(runId), (run) => TERMINAL_RUN.includes(run.status)
        ? Effect.succeed(run)
        : Effect.zipRight(Effect.sleep(Duration.millis(50)), awaitRun(runId)))

    const shutdown = Effect.gen(function* () {
      accepting = false
      yield* FiberMap.clear(fibers)
    })
    yield* Effect.addFinalizer(() => shutdown)

    return Runs.of({
      start,
      get,
      list: (f) =>
        (f.agentId
          ? sql<Row>`SELECT * FROM runs WHERE agent_id = ${f.agentId} ORDER BY created_at DESC LIMIT ${f.limit ?? 100}`
          : f.companyId
            ? sql<Row>`SELECT * FROM runs WHERE company_id = ${f.companyId} ORDER BY created_at DESC LIMIT ${f.limit ?? 100}`
            : sql<Row>`SELECT * FROM runs ORDER BY created_at DESC LIMIT ${f.limit ?? 100}`).pipe(Effect.map((rows) => rows.map(toRun)), Effect.orDie),
      cancel,
      await: awaitRun,
      output: (runId, o) =>
        Stream.unwrapScoped(Effect.gen(function* () {
          const run = yield* get(runId)
          const l = TERMINAL_RUN.includes(run.status) ? undefined : live.get(runId)
          // subscribe before reading the status and the log so nothing falls between them
          const sub = l ? yield* PubSub.subscribe(l.pubsub) : undefined
          // ended before the subscription: its end was published already, the log is complete
          const ended = sub === undefined || TERMINAL_RUN.includes((yield* get(runId)).status)
          const logged = yield* sql<{ id: number; stream: "stdout" | "stderr" | "system"; chunk: string }>`SELECT id, stream, chunk FROM run_logs
            WHERE run_id = ${runId} ORDER BY id`.pipe(Effect.orDie)
          const past = logged.map((r, i) => ({ _tag: "chunk" as const, seq: i + 1, stream: r.stream, chunk: r.chunk }))
            .filter((c) => c.seq > (o?.afterSeq ?? 0))
          const lastSeq = past.length > 0 ? past[past.length - 1]!.seq : o?.afterSeq ?? 0
          if (ended) {
            const now = yield* Effect.orDie(get(runId))
            if (TERMINAL_RUN.includes(now.status)) return Stream.concat(Stream.fromIterable<RunOutput>(past), Stream.succeed<RunOutput>({ _tag: "end", run: now }))
            // running on another replica: follow its log in the database until it ends
            return Stream.concat(Stream.fromIterable<RunOutput>(past), Stream.paginateChunkEffect(lastSeq, (seq): Effect.Effect<readonly [Chunk.Chunk<RunOutput>, Option.Option<number>], RunNotFound> =>
              Effect.gen(function* () {
                yield* Effect.sleep(Duration.millis(REMOTE_POLL_MS))
                const rows = yield* sql<{ stream: "stdout" | "stderr" | "system"; chunk: string }>`SELECT stream, chunk FROM run_logs
                  WHERE run_id = ${runId} ORDER BY id`.pipe(Effect.orDie)
                const fresh = rows.slice(seq).map((r, i): RunOutput => ({ _tag: "chunk", seq: seq + i + 1, stream: r.stream, chunk: r.chunk }))
                const r = yield* Effect.orDie(get(runId))
                // the log is read before the status: a terminal run's log is complete
                if (TERMINAL_RUN.includes(r.status)) {
                  const rest = (yield* sql<{ stream: "stdout" | "stderr" | "system"; chunk: string }>`SELECT stream, chunk FROM run_logs
                    WHERE run_id = ${runId} ORDER BY id`.pipe(Effect.orDie)).slice(seq + fresh.length)
                    .map((x, i): RunOutput => ({ _tag: "chunk", seq: seq + fresh.length + i + 1, stream: x.stream, chunk: x.chunk }))
                  return [Chunk.fromIterable<RunOutput>([...fresh, ...rest, { _tag: "end", run: r }]), Option.none<number>()] as const
                }
                return [Chunk.fromIterable<RunOutput>(fresh), Option.some(seq + fresh.length)] as const
              })))
          }
          // still running after we subscribed: its end (and every later chunk) reaches the subscription
          const liveStream = Stream.fromQueue(sub).pipe(
            Stream.filter((m) => m._tag === "end" || m.seq > lastSeq),
            Stream.takeUntil((m) => m._tag === "end")
          )
          return Stream.concat(Stream.fromIterable<RunOutput>(past), liveStream)
        })),
      appendLog: (runId, stream, chunk) => Effect.zipRight(get(runId), appendChunk(runId, stream, chunk, "runtime")),
      isActive: (runId) => get(runId).pipe(Effect.map((r) => !TERMINAL_RUN.includes(r.status)), Effect.orElseSucceed(() => false)),
      shutdown
    })
  })

/** How the orchestrator reads secret values referenced by an agent's env (provided by the server). */
export class RunSecrets extends Context.Tag("gantry/RunSecrets")<RunSecrets, {
  readonly resolveForRun: (companyId: string, ref: { readonly secretId: string; readonly version?: number }) => Effect.Effect<string, string>
}>() {}

export const layer = (options: Partial<RunsOptions> = {}) =>
  Layer.scoped(Runs, make({ dataDir: options.dataDir ?? ".gantry", pollIntervalMs: options.pollIntervalMs ?? 1_000, heartbeatIntervalMs: options.heartbeatIntervalMs ?? 250 }))

export type { Scope }
