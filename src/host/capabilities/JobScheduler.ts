// Job scheduler (SPEC §5.4): the host runs the jobs declared in plugin manifests on their cron (UTC)
// or an operator-set interval, with per-job timeout and retries, no overlap per job, every run recorded
// in `job_runs`. Replicas on one database claim a due run by inserting its row under a unique key.
import { SqlClient } from "@effect/sql"
import {
  Cause,
  Clock,
  Context,
  Cron,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberMap,
  Layer,
  Option,
  ParseResult,
  Schedule,
  Schema
} from "effect"
import { randomUUID } from "node:crypto"
import { validateCron, type ManifestInfo } from "../../protocol/manifest.js"
import type { PluginNotFound } from "../errors.js"
import { HostOptions } from "../HostOptions.js"
import { PluginHost } from "../PluginHost.js"
import { Redactor } from "./Redactor.js"

// ---------------------------------------------------------------------------------------------------
// Model

export type JobTrigger = "schedule" | "manual" | "retry"
export type JobRunStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "timed_out"

export interface JobRunRecord {
  readonly id: string
  readonly pluginId: string
  readonly jobKey: string
  readonly trigger: JobTrigger
  readonly status: JobRunStatus
  /** 0 for the first run of a scheduled time; retries count up. */
  readonly attempt: number
  /** The schedule slot (or trigger time for a manual run); retries keep their first run's value. */
  readonly scheduledAt: string
  /** When the run is due to start (later than `scheduledAt` for a retry in backoff). */
  readonly dueAt: string
  readonly startedAt: string | null
  readonly finishedAt: string | null
  readonly durationMs: number | null
  readonly error: string | null
  /** Instance id of the host that claimed and runs it. */
  readonly owner: string
  readonly createdAt: string
}

export interface JobInfo {
  readonly pluginId: string
  readonly jobKey: string
  readonly displayName: string
  readonly description: string | null
  /** `disabled`: the job is no longer in the plugin's manifest (its settings and runs are kept). */
  readonly status: "active" | "disabled"
  /** The manifest's 5-field cron (UTC), if any. */
  readonly schedule: string | null
  /** Interval schedule set by the operator; overrides `schedule` while set. */
  readonly everySeconds: number | null
  readonly maxRetries: number
  readonly timeoutMs: number
  /** Why the manifest's cron cannot be scheduled (the job then runs only manually or by `everySeconds`). */
  readonly scheduleError: string | null
  /** Next scheduled time, or null for a manual-only or disabled job. */
  readonly nextRunAt: string | null
}

/** Operator settings; `null` resets a setting to its default, an absent field leaves it unchanged. */
export interface JobSettings {
  readonly maxRetries?: number | null
  readonly timeoutMs?: number | null
  readonly everySeconds?: number | null
}

// ---------------------------------------------------------------------------------------------------
// Errors (cross the HTTP boundary: Schema.TaggedError with a status)

export class JobNotFound extends Schema.TaggedError<JobNotFound>()("JobNotFound", {
  pluginId: Schema.String,
  jobKey: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class JobRunNotFound extends Schema.TaggedError<JobRunNotFound>()("JobRunNotFound", {
  runId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class JobInvalidInput extends Schema.TaggedError<JobInvalidInput>()("JobInvalidInput", {
  problems: Schema.Array(Schema.String),
  message: Schema.String
}) {
  get status() { return 422 }
}
/** The job has a queued or running run (no overlap per job). */
export class JobBusy extends Schema.TaggedError<JobBusy>()("JobBusy", {
  pluginId: Schema.String,
  jobKey: Schema.String,
  message: Schema.String
}) {
  get status() { return 409 }
}
/** The plugin's worker is not running in this host instance. */
export class JobUnavailable extends Schema.TaggedError<JobUnavailable>()("JobUnavailable", {
  pluginId: Schema.String,
  message: Schema.String
}) {
  get status() { return 503 }
}
/** The run is already finished, or it runs on another host instance. */
export class JobRunNotCancellable extends Schema.TaggedError<JobRunNotCancellable>()("JobRunNotCancellable", {
  runId: Schema.String,
  message: Schema.String
}) {
  get status() { return 409 }
}

// ---------------------------------------------------------------------------------------------------
// Tunables

/** How often the scheduler looks for due runs; jittered so replicas on one database interleave. */
export const tickInterval = Duration.millis(200)
const tickSchedule = Schedule.spaced(tickInterval).pipe(Schedule.jittered)
/** Retry backoff of failed runs: 1 s, 2 s, 4 s, … capped at 5 min. */
export const retryBase = Duration.seconds(1)
export const retryMax = Duration.minutes(5)
export const retryDelay = (attempt: number): Duration.Duration =>
  Duration.min(Duration.times(retryBase, 2 ** Math.min(attempt, 30)), retryMax)
/** A queued/running row stops blocking its job this long after its timeout (its owner died). */
export const leaseGrace = Duration.seconds(30)
/** Rows whose lease ran out are marked failed this often. */
const sweepEvery = Duration.seconds(1)
/** Host-side backstop on the RPC itself, behind the scheduler's own timeout. */
const rpcBackstop = Duration.seconds(5)
const MAX_ERROR = 4_000

const settingRules = {
  maxRetries: [0, 20, "must be an integer from 0 to 20, or null for the default (0)"],
  timeoutMs: [100, 86_400_000, "must be an integer from 100 to 86400000 (ms), or null for the host default"],
  everySeconds: [1, 2_592_000, "must be an integer from 1 to 2592000, or null to use the manifest's cron"]
} as const
const setting = (k: keyof typeof settingRules) => Schema.optional(Schema.NullOr(Schema.Int.pipe(Schema.between(settingRules[k][0], settingRules[k][1]))))
const Settings = Schema.Struct({ maxRetries: setting("maxRetries"), timeoutMs: setting("timeoutMs"), everySeconds: setting("everySeconds") })
const decodeSettings = Schema.decodeUnknownEither(Settings, { onExcessProperty: "error", errors: "all" })

/** One problem per offending field, in words an operator can act on. */
const settingsProblems = (error: ParseResult.ParseError): ReadonlyArray<string> => {
  const fields = [...new Set(ParseResult.ArrayFormatter.formatErrorSync(error).map((i) => String(i.path[0] ?? "")))]
  return fields.map((f) =>
    f === "" ? "settings: must be an object"
    : f in settingRules ? `${f}: ${settingRules[f as keyof typeof settingRules][2]}`
    : `${f}: unknown setting (known: ${Object.keys(settingRules).join(", ")})`)
}

// ---------------------------------------------------------------------------------------------------
// Schedules

export type ScheduleSpec = { readonly _tag: "every"; readonly ms: number } | { readonly _tag: "cron"; readonly cron: Cron.Cron }

/** The effective schedule: `everySeconds` wins over the cron; Left = why the cron is unusable. */
export const scheduleSpec = (schedule: string | null, everySeconds: number | null): Either.Either<ScheduleSpec | null, string> => {
  if (everySeconds !== null) return Either.right({ _tag: "every", ms: everySeconds * 1000 })
  if (schedule === null) return Either.right(null)
  const shape = validateCron(schedule)
  if (shape) return Either.left(shape)
  return Either.mapBoth(Cron.parse(schedule, "UTC"), { onLeft: (e) => e.message, onRight: (cron) => ({ _tag: "cron" as const, cron }) })
}

/** The first slot strictly after `after` (epoch ms); interval slots are aligned to the epoch so
 * every replica computes the same times. None when a cron has no next time (e.g. Feb 31). */
export const nextSlot = (spec: ScheduleSpec, after: number): Option.Option<number> => {
  if (spec._tag === "every") return Option.some((Math.floor(after / spec.ms) + 1) * spec.ms)
  try {
    return Option.some(Cron.next(spec.cron, new Date(after)).getTime())
  } catch {
    return Option.none()
  }
}

/** The latest slot ≤ now, starting from a due slot `from` (missed slots fire once, not each). */
const latestDue = (spec: ScheduleSpec, from: number, now: number): number => {
  if (spec._tag === "every") return Math.floor(now / spec.ms) * spec.ms
  let slot = from
  for (let i = 0; i < 10_000; i++) {
    const n = nextSlot(spec, slot)
    if (Option.isNone(n) || n.value > now) break
    slot = n.value
  }
  return slot
}

// ---------------------------------------------------------------------------------------------------
// Rows

interface JobRow {
  readonly plugin_id: string
  readonly job_key: string
  readonly display_name: string
  readonly description: string | null
  readonly schedule: string | null
  readonly every_seconds: number | null
  readonly max_retries: number | null
  readonly timeout_ms: number | null
  readonly status: string
}

interface RunRow {
  readonly id: string
  readonly plugin_id: string
  readonly job_key: string
  readonly trigger: string
  readonly scheduled_at: number
  readonly attempt: number
  readonly status: string
  readonly due_at: number
  readonly lease_until: number
  readonly started_at: number | null
  readonly finished_at: number | null
  readonly error: string | null
  readonly owner: string
  readonly created_at: number
}

/** What a run needs of its job, fixed when the run is claimed. */
interface Job {
  readonly pluginId: string
  readonly jobKey: string
  readonly maxRetries: number
  readonly timeoutMs: number
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(Number(ms)).toISOString())

const toRecord = (r: RunRow): JobRunRecord => {
  const startedAt = r.started_at === null ? null : Number(r.started_at)
  const finishedAt = r.finished_at === null ? null : Number(r.finished_at)
  return {
    id: r.id,
    pluginId: r.plugin_id,
    jobKey: r.job_key,
    trigger: r.trigger as JobTrigger,
    status: r.status as JobRunStatus,
    attempt: Number(r.attempt),
    scheduledAt: iso(r.scheduled_at)!,
    dueAt: iso(r.due_at)!,
    startedAt: iso(startedAt),
    finishedAt: iso(finishedAt),
    durationMs: startedAt !== null && finishedAt !== null ? finishedAt - startedAt : null,
    error: r.error,
    owner: r.owner,
    createdAt: iso(r.created_at)!
  }
}

const jobId = (pluginId: string, jobKey: string) => `${pluginId}\u0000${jobKey}`

type Claim = { readonly _tag: "claimed"; readonly run: RunRow } | { readonly _tag: "busy" } | { readonly _tag: "taken" }
interface Outcome {
  readonly status: "succeeded" | "failed" | "timed_out"
  readonly error: string | null
}

// ---------------------------------------------------------------------------------------------------
// Service

export interface JobSchedulerShape {
  /** The plugin's jobs (synced from its manifest), active and disabled. */
  readonly jobs: (pluginId: string) => Effect.Effect<ReadonlyArray<JobInfo>, PluginNotFound>
  readonly configure: (pluginId: string, jobKey: string, settings: JobSettings) => Effect.Effect<JobInfo, PluginNotFound | JobNotFound | JobInvalidInput>
  /** Claim and start a run now (trigger `manual`); returns its record as claimed (`queued`). */
  readonly trigger: (pluginId: string, jobKey: string) => Effect.Effect<JobRunRecord, PluginNotFound | JobNotFound | JobBusy | JobUnavailable>
  /** Newest first; `limit` 1–1000, default 50. */
  readonly runs: (pluginId: string, jobKey?: string, limit?: number) => Effect.Effect<ReadonlyArray<JobRunRecord>, PluginNotFound | JobNotFound | JobInvalidInput>
  readonly run: (runId: string) => Effect.Effect<JobRunRecord, JobRunNotFound>
  /** Interrupt a queued or running run owned by this instance: recorded `cancelled`, no retry. */
  readonly cancel: (runId: string) => Effect.Effect<JobRunRecord, JobRunNotFound | JobRunNotCancellable>
}

/**
 * Semantics (where SPEC §5.4 is silent):
 * - Schedules: the manifest's cron in UTC, or `everySeconds` (operator setting, epoch-aligned slots)
 *   which overrides it. A job without either runs only when triggered.
 * - Only jobs of plugins whose worker runs in this host instance are scheduled here. A job's first
 *   slot is the next one after the scheduler first sees it: downtime is not caught up, and slots
 *   missed by a stalled loop fire once (for the latest slot), not once each.
 * - No overlap, across replicas: a job with a queued or running run (including a retry waiting out
 *   its backoff) is busy. A slot due while busy is skipped and leaves no row; `trigger` fails JobBusy.
 * - Exactly once: a run is claimed by inserting its row, unique on (plugin, job, scheduledAt, attempt);
 *   the replica whose insert succeeds runs it. On Postgres the job row is locked while claiming.
 * - Retries: only `failed` runs retry (not `timed_out` or `cancelled`), `maxRetries` times, after
 *   `retryDelay(attempt)`; a retry keeps the run's `scheduledAt` and has trigger `retry`.
 * - Timeout: the host call is interrupted (the worker gets `$/cancelRequest`), the run is `timed_out`.
 * - A run whose owner died stays queued/running until its lease (timeout + `leaseGrace`) runs out;
 *   then it no longer blocks the job and is marked `failed` ("abandoned").
 */
export class JobScheduler extends Context.Tag("gantry/JobScheduler")<JobScheduler, JobSchedulerShape>() {}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const host = yield* PluginHost
  const options = yield* HostOptions
  const redactor = yield* Effect.serviceOption(Redactor)
  const redact = (s: string) => Option.match(redactor, { onNone: () => s, onSome: (r) => r.redact(s) })
  const owner = options.instanceId
  const grace = Duration.toMillis(leaseGrace)

  /** Local chains (a run and its retries), one per job: the in-process half of "no overlap". */
  const active = yield* FiberMap.make<string>()
  const cancelReasons = new Map<string, string>()
  /** Manifest last synced to plugin_jobs, per plugin (by identity: a reinstall syncs again). */
  const synced = new Map<string, ManifestInfo>()
  /** Per job: the schedule it was computed for and its next slot. */
  const cursors = new Map<string, { readonly sig: string; next: Option.Option<number> }>()
  let lastSweep = 0

  const effective = (row: JobRow): Job => ({
    pluginId: row.plugin_id,
    jobKey: row.job_key,
    maxRetries: row.max_retries ?? 0,
    timeoutMs: row.timeout_ms ?? options.jobTimeoutMs
  })

  const syncJobs = (pluginId: string, info: ManifestInfo) =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const declared = info.manifest.jobs ?? []
      for (const j of declared) {
        yield* sql`INSERT INTO plugin_jobs (plugin_id, job_key, display_name, description, schedule, status, created_at, updated_at)
          VALUES (${pluginId}, ${j.jobKey}, ${j.displayName}, ${j.description ?? null}, ${j.schedule ?? null}, 'active', ${now}, ${now})
          ON CONFLICT (plugin_id, job_key) DO UPDATE SET display_name = excluded.display_name, description = excluded.description,
            schedule = excluded.schedule, status = 'active', updated_at = excluded.updated_at`
      }
      const keys = declared.map((j) => j.jobKey)
      yield* keys.length === 0
        ? sql`UPDATE plugin_jobs SET status = 'disabled', updated_at = ${now} WHERE plugin_id = ${pluginId} AND status = 'active'`
        : sql`UPDATE plugin_jobs SET status = 'disabled', updated_at = ${now} WHERE plugin_id = ${pluginId} AND status = 'active'
            AND NOT ${sql.in("job_key", keys)}`
    }).pipe(Effect.orDie)

  /** Make plugin_jobs reflect the plugin's current manifest (once per manifest). */
  const ensureSynced = (pluginId: string) =>
    Effect.gen(function* () {
      const info = yield* host.manifest(pluginId)
      if (synced.get(pluginId) === info) return
      yield* syncJobs(pluginId, info)
      synced.set(pluginId, info)
    })

  const jobRow = (pluginId: string, jobKey: string) =>
    Effect.gen(function* () {
      yield* ensureSynced(pluginId)
      const rows = yield* Effect.orDie(sql<JobRow>`SELECT * FROM plugin_jobs WHERE plugin_id = ${pluginId} AND job_key = ${jobKey}`)
      if (rows.length === 0) {
        return yield* new JobNotFound({ pluginId, jobKey, message: `plugin "${pluginId}" has no job "${jobKey}"` })
      }
      return rows[0]!
    })

  const activeJobRow = (pluginId: string, jobKey: string) =>
    Effect.filterOrFail(jobRow(pluginId, jobKey), (r) => r.status === "active", () =>
      new JobNotFound({ pluginId, jobKey, message: `job "${jobKey}" of plugin "${pluginId}" is disabled (no longer in its manifest)` }))

  const toInfo = (row: JobRow, now: number): JobInfo => {
    const spec = scheduleSpec(row.schedule, row.every_seconds)
    const next = row.status === "active" && Either.isRight(spec) && spec.right !== null ? nextSlot(spec.right, now) : Option.none()
    const job = effective(row)
    return {
      pluginId: row.plugin_id,
      jobKey: row.job_key,
      displayName: row.display_name,
      description: row.description,
      status: row.status === "active" ? "active" : "disabled",
      schedule: row.schedule,
      everySeconds: row.every_seconds,
      maxRetries: job.maxRetries,
      timeoutMs: job.timeoutMs,
      scheduleError: row.every_seconds === null && Either.isLeft(spec) ? spec.left : null,
      nextRunAt: Option.match(next, { onNone: () => null, onSome: (t) => new Date(t).toISOString() })
    }
  }

  // -- claiming ------------------------------------------------------------------------------------

  /** Claim `(job, scheduledAt, attempt 0)`: the row is inserted only if no run of the job is queued or
   * running (lease still valid) and no replica inserted it first. Postgres: the job row is locked for
   * the transaction so replicas' claims of one job are serialized (SQLite: one writer anyway). */
  const claim = (job: Job, scheduledAt: number, trigger: JobTrigger) =>
    sql.withTransaction(
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        yield* sql.onDialectOrElse({
          pg: () => sql`SELECT job_key FROM plugin_jobs WHERE plugin_id = ${job.pluginId} AND job_key = ${job.jobKey} FOR UPDATE`,
          orElse: () => Effect.succeed([])
        })
        const busy = yield* sql`SELECT id FROM job_runs WHERE plugin_id = ${job.pluginId} AND job_key = ${job.jobKey}
          AND status IN ('queued', 'running') AND lease_until > ${now} LIMIT 1`
        if (busy.length > 0) return { _tag: "busy" } as Claim
        const rows = yield* sql<RunRow>`INSERT INTO job_runs (id, plugin_id, job_key, trigger, scheduled_at, attempt, status, due_at,
            lease_until, owner, created_at)
          VALUES (${randomUUID()}, ${job.pluginId}, ${job.jobKey}, ${trigger}, ${scheduledAt}, 0, 'queued', ${now},
            ${now + job.timeoutMs + grace}, ${owner}, ${now})
          ON CONFLICT (plugin_id, job_key, scheduled_at, attempt) DO NOTHING RETURNING *`
        return (rows.length === 0 ? { _tag: "taken" } : { _tag: "claimed", run: rows[0]! }) as Claim
      })
    ).pipe(Effect.orDie)

  // -- running -------------------------------------------------------------------------------------

  const execute = (job: Job, run: RunRow) =>
    Effect.gen(function* () {
      const started = yield* Clock.currentTimeMillis
      yield* Effect.orDie(sql`UPDATE job_runs SET status = 'running', started_at = ${started},
        lease_until = ${started + job.timeoutMs + grace} WHERE id = ${run.id}`)
      const params = { job: { jobKey: job.jobKey, runId: run.id, trigger: run.trigger, scheduledAt: iso(run.scheduled_at)! } }
      const result = yield* host.call(job.pluginId, "runJob", params, { timeoutMs: job.timeoutMs + Duration.toMillis(rpcBackstop) }).pipe(
        Effect.exit,
        // on timeout the call is interrupted, which sends $/cancelRequest to the worker
        Effect.timeoutOption(Duration.millis(job.timeoutMs))
      )
      const timedOut = { status: "timed_out", error: `timed out after ${job.timeoutMs} ms` } as const
      if (Option.isNone(result)) return timedOut
      return Exit.match(result.value, {
        onSuccess: (): Outcome => ({ status: "succeeded", error: null }),
        onFailure: (cause): Outcome => {
          const failure = Cause.failureOption(cause)
          if (Option.isSome(failure) && failure.value._tag === "RpcTimeout") return timedOut
          const message = Option.match(failure, { onNone: () => Cause.pretty(cause), onSome: (e) => e.message })
          return { status: "failed", error: redact(message).slice(0, MAX_ERROR) }
        }
      })
    })

  /** Record the outcome; a failed run with retries left gets its retry row (queued, due after the
   * backoff) in the same transaction, so the job stays busy for other replicas in between. */
  const finish = (job: Job, run: RunRow, outcome: Outcome) =>
    sql.withTransaction(
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        yield* sql`UPDATE job_runs SET status = ${outcome.status}, finished_at = ${now}, error = ${outcome.error} WHERE id = ${run.id}`
        if (outcome.status !== "failed" || run.attempt >= job.maxRetries) return Option.none<RunRow>()
        const due = now + Duration.toMillis(retryDelay(run.attempt))
        const rows = yield* sql<RunRow>`INSERT INTO job_runs (id, plugin_id, job_key, trigger, scheduled_at, attempt, status, due_at,
            lease_until, owner, created_at)
          VALUES (${randomUUID()}, ${job.pluginId}, ${job.jobKey}, 'retry', ${run.scheduled_at}, ${run.attempt + 1}, 'queued', ${due},
            ${due + job.timeoutMs + grace}, ${owner}, ${now})
          ON CONFLICT (plugin_id, job_key, scheduled_at, attempt) DO NOTHING RETURNING *`
        return Option.fromNullable(rows[0])
      })
    ).pipe(Effect.orDie)

  const markCancelled = (run: RunRow) =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const reason = cancelReasons.get(run.id) ?? "cancelled: the host is shutting down"
      cancelReasons.delete(run.id)
      yield* sql`UPDATE job_runs SET status = 'cancelled', finished_at = ${now}, error = ${reason}
        WHERE id = ${run.id} AND status IN ('queued', 'running')`
    }).pipe(Effect.ignore)

  /** A run and then its retries, one after the other (in backoff the job stays busy). */
  const chain = (job: Job, first: RunRow) => {
    let current = first
    const step = (run: RunRow): Effect.Effect<void> =>
      Effect.gen(function* () {
        current = run
        // never before it is due (a timer may fire a millisecond early by the wall clock)
        for (;;) {
          const now = yield* Clock.currentTimeMillis
          if (Number(run.due_at) <= now) break
          yield* Effect.sleep(Duration.millis(Number(run.due_at) - now))
        }
        const outcome = yield* execute(job, run)
        const next = yield* finish(job, run, outcome)
        if (Option.isSome(next)) yield* step(next.value)
      })
    return step(first).pipe(
      Effect.onInterrupt(() => Effect.suspend(() => markCancelled(current))),
      Effect.catchAllCause((cause) => Effect.logWarning(`job ${job.pluginId}/${job.jobKey}: run ${current.id} aborted`, cause)),
      Effect.annotateLogs({ pluginId: job.pluginId, jobKey: job.jobKey })
    )
  }

  const launch = (job: Job, run: RunRow) =>
    Effect.gen(function* () {
      const key = jobId(job.pluginId, job.jobKey)
      // the database said the job is idle: a local chain still present is past its last write
      const previous = yield* FiberMap.get(active, key).pipe(Effect.option)
      if (Option.isSome(previous)) yield* Fiber.await(previous.value)
      yield* FiberMap.run(active, key, chain(job, run))
    })

  // -- the loop ------------------------------------------------------------------------------------

  const considerJob = (row: JobRow, now: number) =>
    Effect.gen(function* () {
      const key = jobId(row.plugin_id, row.job_key)
      const spec = scheduleSpec(row.schedule, row.every_seconds)
      if (Either.isLeft(spec) || spec.right === null) return void cursors.delete(key)
      const sig = `${row.schedule ?? ""}|${row.every_seconds ?? ""}`
      const cursor = cursors.get(key)
      // first sight (or a changed schedule): start with the next slot; downtime is not caught up
      if (!cursor || cursor.sig !== sig) return void cursors.set(key, { sig, next: nextSlot(spec.right, now) })
      if (Option.isNone(cursor.next) || now < cursor.next.value) return
      const slot = latestDue(spec.right, cursor.next.value, now)
      cursor.next = nextSlot(spec.right, now)
      // no overlap: a slot due while the job runs (or waits for a retry) is skipped, not queued
      if (yield* FiberMap.has(active, key)) {
        return yield* Effect.logDebug(`job ${row.plugin_id}/${row.job_key}: slot ${iso(slot)} skipped, previous run still active`)
      }
      const job = effective(row)
      const claimed = yield* claim(job, slot, "schedule")
      if (claimed._tag === "claimed") yield* launch(job, claimed.run)
    })

  /** Queued/running rows whose lease ran out belong to a host that died: mark them failed. */
  const sweep = (now: number) =>
    sql`UPDATE job_runs SET status = 'failed', finished_at = ${now},
      error = 'abandoned: the owning host instance stopped before the run finished'
      WHERE status IN ('queued', 'running') AND lease_until <= ${now}`.pipe(Effect.orDie)

  const tick = Effect.gen(function* () {
    const now = yield* Clock.currentTimeMillis
    const running = (yield* host.list).filter((p) => p.workerStatus === "running").map((p) => p.pluginId)
    for (const pluginId of running) yield* Effect.ignore(ensureSynced(pluginId))
    if (now - lastSweep >= Duration.toMillis(sweepEvery)) {
      lastSweep = now
      yield* sweep(now)
    }
    const rows = running.length === 0
      ? []
      : yield* Effect.orDie(sql<JobRow>`SELECT * FROM plugin_jobs WHERE status = 'active' AND ${sql.in("plugin_id", running)}`)
    // a job whose plugin stopped (or that was disabled) starts afresh when it is back
    const live = new Set(rows.map((r) => jobId(r.plugin_id, r.job_key)))
    for (const key of [...cursors.keys()]) if (!live.has(key)) cursors.delete(key)
    for (const row of rows) yield* considerJob(row, now)
  })

  yield* Effect.forkScoped(
    Effect.repeat(
      Effect.catchAllCause(tick, (cause) => Effect.logWarning("job scheduler tick failed", cause)),
      tickSchedule
    )
  )

  // -- API -----------------------------------------------------------------------------------------

  const runRow = (runId: string) =>
    Effect.gen(function* () {
      const rows = yield* Effect.orDie(sql<RunRow>`SELECT * FROM job_runs WHERE id = ${runId}`)
      if (rows.length === 0) return yield* new JobRunNotFound({ runId, message: `no job run "${runId}"` })
      return rows[0]!
    })

  const scheduler: JobSchedulerShape = {
    jobs: Effect.fn("JobScheduler.jobs")(function* (pluginId: string) {
      yield* ensureSynced(pluginId)
      const now = yield* Clock.currentTimeMillis
      const rows = yield* Effect.orDie(sql<JobRow>`SELECT * FROM plugin_jobs WHERE plugin_id = ${pluginId} ORDER BY job_key`)
      return rows.map((r) => toInfo(r, now))
    }),

    configure: Effect.fn("JobScheduler.configure")(function* (pluginId: string, jobKey: string, settings: JobSettings) {
      const decoded = decodeSettings(settings)
      if (Either.isLeft(decoded)) {
        const problems = settingsProblems(decoded.left)
        return yield* new JobInvalidInput({ problems, message: `invalid job settings: ${problems.join("; ")}` })
      }
      const row = yield* activeJobRow(pluginId, jobKey)
      const s = decoded.right
      const pick = <K extends keyof typeof s>(k: K, current: number | null) => (s[k] === undefined ? current : s[k] ?? null)
      const now = yield* Clock.currentTimeMillis
      yield* Effect.orDie(sql`UPDATE plugin_jobs SET max_retries = ${pick("maxRetries", row.max_retries)},
        timeout_ms = ${pick("timeoutMs", row.timeout_ms)}, every_seconds = ${pick("everySeconds", row.every_seconds)},
        updated_at = ${now} WHERE plugin_id = ${pluginId} AND job_key = ${jobKey}`)
      return toInfo(yield* jobRow(pluginId, jobKey), now)
    }),

    trigger: Effect.fn("JobScheduler.trigger")(function* (pluginId: string, jobKey: string) {
      const row = yield* activeJobRow(pluginId, jobKey)
      const status = yield* host.status(pluginId)
      if (status.workerStatus !== "running") {
        return yield* new JobUnavailable({ pluginId, message: `plugin "${pluginId}" worker is not running on this host (${status.workerStatus})` })
      }
      const job = effective(row)
      const now = yield* Clock.currentTimeMillis
      // a manual run's scheduled time is its trigger time; a clash with a slot's key moves it by 1 ms
      for (let at = now; at < now + 3; at++) {
        const claimed = yield* claim(job, at, "manual")
        if (claimed._tag === "busy") break
        if (claimed._tag === "claimed") {
          yield* launch(job, claimed.run)
          return toRecord(claimed.run)
        }
      }
      return yield* new JobBusy({ pluginId, jobKey, message: `job "${jobKey}" of plugin "${pluginId}" already has a queued or running run` })
    }),

    runs: Effect.fn("JobScheduler.runs")(function* (pluginId: string, jobKey?: string, limit = 50) {
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
        return yield* new JobInvalidInput({ problems: [`limit: must be an integer from 1 to 1000, got ${limit}`], message: "invalid limit" })
      }
      if (jobKey === undefined) yield* host.manifest(pluginId)
      else yield* jobRow(pluginId, jobKey)
      const rows = yield* Effect.orDie(jobKey === undefined
        ? sql<RunRow>`SELECT * FROM job_runs WHERE plugin_id = ${pluginId} ORDER BY created_at DESC, attempt DESC LIMIT ${limit}`
        : sql<RunRow>`SELECT * FROM job_runs WHERE plugin_id = ${pluginId} AND job_key = ${jobKey}
            ORDER BY created_at DESC, attempt DESC LIMIT ${limit}`)
      return rows.map(toRecord)
    }),

    run: (runId) => Effect.map(runRow(runId), toRecord),

    cancel: Effect.fn("JobScheduler.cancel")(function* (runId: string) {
      const row = yield* runRow(runId)
      const refuse = (message: string) => new JobRunNotCancellable({ runId, message })
      if (row.status !== "queued" && row.status !== "running") return yield* refuse(`run "${runId}" is already ${row.status}`)
      if (row.owner !== owner) return yield* refuse(`run "${runId}" runs on host instance "${row.owner}"; cancel it there`)
      const fiber = yield* FiberMap.get(active, jobId(row.plugin_id, row.job_key)).pipe(Effect.option)
      cancelReasons.set(runId, "cancelled by request")
      // no local chain: a leftover of an earlier process with this instance id
      yield* Option.match(fiber, { onNone: () => markCancelled(row), onSome: Fiber.interrupt })
      return toRecord(yield* runRow(runId))
    })
  }
  return JobScheduler.of(scheduler)
})

export const layer = Layer.scoped(JobScheduler, make)
