// Sandbox leases as scoped resources (SPEC §7). The only module that calls a provider's
// acquire/resume/release/destroy. Write-ahead row before the provider is asked; release by the
// scope's Exit; a finalizer that never fails (a failed provider call → `pending_cleanup`); a sweeper
// that retries cleanup, reaps leases of dead hosts and past their deadline, and runs at start-up.
import { SqlClient, type SqlError } from "@effect/sql"
import { Clock, Config, Context, Duration, Effect, Exit, Cause, Layer, Option, Schedule, Schema, type Scope } from "effect"
import { createHash, randomUUID } from "node:crypto"
import type { RpcError } from "../protocol/errors.js"
import type { EventEnvelope } from "../protocol/methods.js"
import { Redactor } from "../host/capabilities/Redactor.js"
import { Instance } from "../host/Instance.js"
import { CapabilityStores } from "../host/Stores.js"
import { Providers, type ProviderInfo } from "./Provider.js"

/** A lease change and its event that hit a database error are retried together. */
const dbRetry = Schedule.exponential(Duration.millis(50)).pipe(Schedule.intersect(Schedule.recurs(6)))

export type LeaseStatus = "acquiring" | "active" | "released" | "failed" | "expired" | "pending_cleanup"
export const TERMINAL: ReadonlyArray<LeaseStatus> = ["released", "failed", "expired"]

export interface LeasePolicy {
  /** On a failed run: `release` (default) or `destroy`. */
  readonly onFailure: "release" | "destroy"
  /** Host-enforced time to live: the sweeper destroys the lease past `acquiredAt + ttlMs`. */
  readonly ttlMs: number
  /** Provider call timeout base (SPEC §3.4: environment calls get their own timeoutMs + 30 s). */
  readonly timeoutMs: number
  /** `reuseLease`: a successful run parks the lease (idle, sandbox kept) for the environment's next
   * run, which resumes it with `environmentResumeLease` — also after a host restart. */
  readonly reuse?: boolean
}

export const defaultPolicy: LeasePolicy = { onFailure: "release", ttlMs: 60 * 60_000, timeoutMs: 30_000 }

export interface LeaseRequest {
  readonly companyId: string
  readonly environmentId: string
  readonly runId: string | null
  readonly agentId?: string | null
  readonly provider: ProviderInfo
  /** The provider part of the environment config (secret fields are refs). */
  readonly config: Record<string, unknown>
  readonly policy: LeasePolicy
}

export interface Lease {
  readonly id: string
  readonly companyId: string
  readonly environmentId: string
  readonly runId: string | null
  readonly pluginId: string
  readonly driverKey: string
  readonly providerLeaseId: string
  readonly metadata: Record<string, unknown>
  readonly config: Record<string, unknown>
  readonly deadlineAt: number
}

export interface LeaseRecord {
  readonly id: string
  readonly companyId: string
  readonly environmentId: string
  readonly runId: string | null
  readonly provider: string
  readonly providerLeaseId: string | null
  readonly status: LeaseStatus
  readonly policy: LeasePolicy
  readonly acquiredAt: number | null
  readonly lastUsedAt: number
  readonly deadlineAt: number
  readonly expiresAt: number | null
  readonly releasedAt: number | null
  readonly failureReason: string | null
  readonly cleanupAttempts: number
  readonly ownerInstanceId: string
  readonly metadata: Record<string, unknown>
}

export class LeaseAcquireFailed extends Schema.TaggedError<LeaseAcquireFailed>()("LeaseAcquireFailed", {
  leaseId: Schema.String,
  message: Schema.String
}) {
  get status() { return 503 }
}
export class LeaseNotFound extends Schema.TaggedError<LeaseNotFound>()("LeaseNotFound", {
  leaseId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}

export interface SweepReport {
  readonly cleaned: number
  readonly deferred: number
  readonly retried: number
  readonly gaveUp: number
  readonly reaped: number
}

/** Cleanup attempts before a lease is given up as `failed` with an operator-visible warning. */
export const CLEANUP_ATTEMPT_CAP = 5
/** Cleanup retry delays: 1 s doubling, capped at 1 min. Attempts are persisted (they survive a host
 * restart), so the delay is computed from the stored attempt count rather than a running Schedule. */
export const cleanupDelayMs = (attempt: number, baseMs: number) => Math.min(baseMs * 2 ** attempt, 60_000)
const SWEEP_CLAIM_MS = 60_000

export class Leases extends Context.Tag("gantry/Leases")<Leases, {
  /** Acquire a lease for the life of the scope; released, failed or expired by the scope's Exit. */
  readonly acquire: (request: LeaseRequest) => Effect.Effect<Lease, LeaseAcquireFailed, Scope.Scope>
  readonly touch: (leaseId: string) => Effect.Effect<void>
  readonly get: (leaseId: string) => Effect.Effect<LeaseRecord, LeaseNotFound>
  readonly list: (filter: { readonly companyId?: string; readonly environmentId?: string; readonly runId?: string }) => Effect.Effect<ReadonlyArray<LeaseRecord>>
  /** Leases of an environment that are not terminal. */
  readonly liveCount: (environmentId: string) => Effect.Effect<number>
  /** One sweeper pass (the background fiber runs it on a schedule and at start-up). */
  readonly sweep: Effect.Effect<SweepReport>
}>() {}

type Row = {
  id: string; company_id: string; environment_id: string; run_id: string | null; provider: string
  provider_lease_id: string | null; status: LeaseStatus; policy: string; config: string; idempotency_key: string
  acquired_at: number | null; last_used_at: number; deadline_at: number; expires_at: number | null
  released_at: number | null; failure_reason: string | null; cleanup_action: string | null
  intended_status: string | null; cleanup_attempts: number; owner_instance_id: string; metadata: string
}

const toRecord = (r: Row): LeaseRecord => ({
  id: r.id,
  companyId: r.company_id,
  environmentId: r.environment_id,
  runId: r.run_id,
  provider: r.provider,
  providerLeaseId: r.provider_lease_id,
  status: r.status,
  policy: JSON.parse(r.policy),
  acquiredAt: r.acquired_at === null ? null : Number(r.acquired_at),
  lastUsedAt: Number(r.last_used_at),
  deadlineAt: Number(r.deadline_at),
  expiresAt: r.expires_at === null ? null : Number(r.expires_at),
  releasedAt: r.released_at === null ? null : Number(r.released_at),
  failureReason: r.failure_reason,
  cleanupAttempts: Number(r.cleanup_attempts),
  ownerInstanceId: r.owner_instance_id,
  metadata: JSON.parse(r.metadata)
})

const messageOf = (e: unknown) => (e && typeof e === "object" && "message" in e ? String((e as { message: unknown }).message) : String(e))

export interface LeasesOptions {
  readonly sweepIntervalMs: number
  readonly cleanupBaseMs: number
  /** Retry delay while the provider is down (no attempt spent). */
  readonly deferMs: number
}

export const make = (options: LeasesOptions) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const providers = yield* Providers
    const instance = yield* Instance
    const stores = yield* CapabilityStores
    const redactor = yield* Redactor

    const emit = (eventType: string, r: { id: string; companyId: string; environmentId: string; runId: string | null; provider: string; status: string }) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const event: EventEnvelope = {
          eventId: randomUUID(),
          eventType,
          occurredAt: new Date(now).toISOString(),
          actorType: "system",
          entityId: r.id,
          entityType: "lease",
          companyId: r.companyId,
          payload: { leaseId: r.id, environmentId: r.environmentId, runId: r.runId, provider: r.provider, status: r.status }
        }
        yield* stores.events.emit(event)
      })

    /** A change and its lease event in one transaction (outbox, SPEC §16); a database error retries both. */
    const withEvent = <A>(change: Effect.Effect<A, SqlError.SqlError>, event: (a: A) => readonly [string, Parameters<typeof emit>[1]] | null) =>
      sql.withTransaction(Effect.gen(function* () {
        const a = yield* change
        const e = event(a)
        if (e) yield* emit(e[0], e[1])
        return a
      })).pipe(Effect.retry(dbRetry), Effect.orDie)

    const base = (companyId: string, environmentId: string, driverKey: string, config: Record<string, unknown>) =>
      ({ driverKey, companyId, environmentId, config })

    const timeoutOf = (p: LeasePolicy) => p.timeoutMs + 30_000

    /** Conditional status change: only from `from` (a lease another actor already finished is left alone). */
    const finishRaw = (id: string, status: LeaseStatus, reason: string | null, from: ReadonlyArray<LeaseStatus>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        sql<{ id: string }>`UPDATE leases SET status = ${status}, released_at = ${now}, failure_reason = COALESCE(${reason}, failure_reason),
          sweeper_until = 0 WHERE id = ${id} AND status IN ${sql.in(from)} RETURNING id`).pipe(Effect.map((rows) => rows.length > 0))
    const finish = (id: string, status: LeaseStatus, reason: string | null, from: ReadonlyArray<LeaseStatus>) =>
      Effect.orDie(finishRaw(id, status, reason, from))
    /** Finish and, when this call made the change, write `environment.lease.released` with it. */
    const finishReleased = (id: string, status: LeaseStatus, reason: string | null, from: ReadonlyArray<LeaseStatus>, record: Parameters<typeof emit>[1]) =>
      withEvent(finishRaw(id, status, reason, from), (changed) => (changed ? ["environment.lease.released", { ...record, status }] as const : null))

    const toPending = (id: string, action: "release" | "destroy", intended: LeaseStatus, reason: string) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        sql`UPDATE leases SET status = 'pending_cleanup', cleanup_action = ${action}, intended_status = ${intended},
          failure_reason = ${redactor.redact(reason)}, next_cleanup_at = ${now}, sweeper_until = 0
          WHERE id = ${id} AND status IN ('acquiring', 'active')`).pipe(Effect.asVoid, Effect.orDie)

    /** Release by exit. Never fails: a provider error moves the lease to pending_cleanup. */
    const releaseByExit = (
      row: { id: string; companyId: string; environmentId: string; runId: string | null; provider: string },
      provider: ProviderInfo,
      request: LeaseRequest,
      held: { providerLeaseId: string | null; metadata: Record<string, unknown> },
      exit: Exit.Exit<unknown, unknown>
    ) =>
      Effect.gen(function* () {
        const intended: LeaseStatus = Exit.isSuccess(exit) ? "released" : Cause.isInterruptedOnly(exit.cause) ? "expired" : "failed"
        const action = intended === "failed" && request.policy.onFailure === "destroy" ? "destroy" : "release"
        if (held.providerLeaseId === null) {
          // acquire did not return: the provider may have created the sandbox and lost the answer;
          // the sweeper re-acquires with the same idempotency key and destroys what it gets
          yield* toPending(row.id, "destroy", "failed", Exit.isFailure(exit) ? `acquire did not complete: ${messageOf(Cause.squash(exit.cause))}` : "acquire did not complete")
          return
        }
        if (intended === "released" && request.policy.reuse) {
          // reusable: keep the sandbox, park the lease for the environment's next run
          const now = yield* Clock.currentTimeMillis
          const parked = yield* sql<{ id: string }>`UPDATE leases SET idle_since = ${now}, run_id = NULL, last_used_at = ${now}
            WHERE id = ${row.id} AND status = 'active' RETURNING id`.pipe(Effect.orDie)
          if (parked.length > 0) return
        }
        const method = action === "destroy" ? "environmentDestroyLease" : "environmentReleaseLease"
        const result = yield* providers.call(provider.pluginId, method, {
          ...base(request.companyId, request.environmentId, provider.driverKey, request.config),
          providerLeaseId: held.providerLeaseId,
          leaseMetadata: held.metadata,
          ...(intended === "expired" ? { cancelActiveWork: true } : {})
        }, { companyId: request.companyId, timeoutMs: timeoutOf(request.policy) }).pipe(
          // finalizers run uninterruptibly; the peer's own deadline bounds this call
          Effect.either
        )
        if (result._tag === "Left") {
          yield* toPending(row.id, action, intended, `${method} failed: ${result.left.message}`)
          return
        }
        const reason = intended === "failed" ? "run failed" : intended === "expired" ? "run interrupted or cancelled" : null
        yield* finishReleased(row.id, intended, reason, ["acquiring", "active"], { ...row, status: intended })
      }).pipe(Effect.catchAllCause((c) => Effect.logError("lease finalizer", c)))

    /** A parked lease of the environment, resumed for this run; None when there is none or its sandbox is gone. */
    const resumeParked = (request: LeaseRequest) =>
      Effect.gen(function* () {
        const { provider } = request
        const now = yield* Clock.currentTimeMillis
        const candidates = yield* sql<Row>`SELECT * FROM leases WHERE environment_id = ${request.environmentId} AND status = 'active'
          AND idle_since IS NOT NULL AND deadline_at > ${now} ORDER BY last_used_at DESC LIMIT 5`.pipe(Effect.orDie)
        for (const c of candidates) {
          // claim it (one run per lease, across replicas), then ask the provider whether it still exists
          const claimed = yield* sql<Row>`UPDATE leases SET idle_since = NULL, run_id = ${request.runId}, owner_instance_id = ${instance.id},
            last_used_at = ${now} WHERE id = ${c.id} AND idle_since IS NOT NULL AND status = 'active' RETURNING *`.pipe(Effect.orDie)
          const r = claimed[0]
          if (!r || r.provider_lease_id === null) continue
          const row = { id: r.id, companyId: r.company_id, environmentId: r.environment_id, runId: request.runId, provider: r.provider }
          const held = { providerLeaseId: r.provider_lease_id as string | null, metadata: JSON.parse(r.metadata) as Record<string, unknown> }
          const resumed = yield* Effect.either(providers.call(provider.pluginId, "environmentResumeLease", {
            ...base(request.companyId, request.environmentId, provider.driverKey, request.config),
            providerLeaseId: r.provider_lease_id,
            leaseMetadata: held.metadata
          }, { companyId: request.companyId, timeoutMs: timeoutOf(request.policy) }))
          const got = resumed._tag === "Right" ? resumed.right as { providerLeaseId?: string | null; metadata?: Record<string, unknown> } | null : null
          if (!got || typeof got.providerLeaseId !== "string") {
            // gone (or the provider refused): this lease is over, the run gets a fresh one
            const reason = resumed._tag === "Left" ? `resume failed: ${resumed.left.message}` : "sandbox gone at resume"
            if (resumed._tag === "Left") yield* toPending(r.id, "destroy", "released", reason)
            else yield* finishReleased(r.id, "released", reason, ["active"], { ...row, status: "released" })
            continue
          }
          held.providerLeaseId = got.providerLeaseId
          if (got.metadata) held.metadata = redactor.redactValue(got.metadata)
          yield* sql`UPDATE leases SET provider_lease_id = ${got.providerLeaseId}, metadata = ${JSON.stringify(held.metadata)} WHERE id = ${r.id}`.pipe(Effect.orDie)
          yield* Effect.addFinalizer((exit) => releaseByExit(row, provider, request, held, exit))
          return Option.some({
            id: r.id, companyId: r.company_id, environmentId: r.environment_id, runId: request.runId, pluginId: provider.pluginId,
            driverKey: provider.driverKey, providerLeaseId: got.providerLeaseId, metadata: held.metadata, config: request.config,
            deadlineAt: Number(r.deadline_at)
          } satisfies Lease)
        }
        return Option.none<Lease>()
      })

    const acquire = (request: LeaseRequest) =>
      Effect.gen(function* () {
        if (request.policy.reuse && request.provider.supportedMethods.includes("environmentResumeLease")) {
          const parked = yield* resumeParked(request)
          if (Option.isSome(parked)) return parked.value
        }
        return yield* acquireFresh(request)
      })

    const acquireFresh = (request: LeaseRequest) =>
      Effect.gen(function* () {
        const { provider } = request
        const id = randomUUID()
        // the idempotency key the provider sees as runId: a retried acquire returns the same sandbox
        const key = `lease-${id}`
        const now = yield* Clock.currentTimeMillis
        const deadline = now + request.policy.ttlMs
        const providerName = `${provider.pluginId}/${provider.driverKey}`
        const row = { id, companyId: request.companyId, environmentId: request.environmentId, runId: request.runId, provider: providerName }
        const held: { providerLeaseId: string | null; metadata: Record<string, unknown> } = { providerLeaseId: null, metadata: {} }
        // the row and its finalizer come together (an interruption between them would strand the row in
        // `acquiring`), and both before the provider is asked: whatever happens next is covered
        yield* Effect.acquireRelease(
          sql`INSERT INTO leases (id, company_id, environment_id, run_id, provider, provider_lease_id, status, policy, config,
          idempotency_key, last_used_at, deadline_at, owner_instance_id, metadata, created_at)
          VALUES (${id}, ${request.companyId}, ${request.environmentId}, ${request.runId}, ${providerName}, ${null}, 'acquiring',
          ${JSON.stringify(request.policy)}, ${JSON.stringify(request.config)}, ${key}, ${now}, ${deadline}, ${instance.id}, ${"{}"}, ${now})`.pipe(Effect.orDie),
          (_, exit) => releaseByExit(row, provider, request, held, exit)
        )
        const res = yield* providers.call(provider.pluginId, "environmentAcquireLease", {
          ...base(request.companyId, request.environmentId, provider.driverKey, request.config),
          runId: key,
          ...(request.agentId ? { agentId: request.agentId } : {}),
          requestedExpiresAt: new Date(deadline).toISOString()
        }, { companyId: request.companyId, timeoutMs: timeoutOf(request.policy) }).pipe(
          Effect.mapError((e: RpcError) => new LeaseAcquireFailed({ leaseId: id, message: `acquire failed: ${redactor.redact(e.message)}` }))
        )
        const r = res as { providerLeaseId?: unknown; metadata?: Record<string, unknown>; expiresAt?: string | null } | null
        if (!r || typeof r.providerLeaseId !== "string" || r.providerLeaseId.length === 0) {
          return yield* new LeaseAcquireFailed({ leaseId: id, message: "acquire failed: provider returned no providerLeaseId" })
        }
        held.providerLeaseId = r.providerLeaseId
        held.metadata = redactor.redactValue(r.metadata ?? {})
        const acquiredAt = yield* Clock.currentTimeMillis
        const expiresAt = r.expiresAt ? Date.parse(r.expiresAt) : null
        yield* withEvent(
          sql`UPDATE leases SET provider_lease_id = ${r.providerLeaseId}, status = 'active', acquired_at = ${acquiredAt},
            last_used_at = ${acquiredAt}, metadata = ${JSON.stringify(held.metadata)}, expires_at = ${Number.isFinite(expiresAt) ? expiresAt : null}
            WHERE id = ${id} AND status = 'acquiring'`,
          () => ["environment.lease.acquired", { ...row, status: "active" }] as const)
        return {
          id,
          companyId: request.companyId,
          environmentId: request.environmentId,
          runId: request.runId,
          pluginId: provider.pluginId,
          driverKey: provider.driverKey,
          providerLeaseId: r.providerLeaseId,
          metadata: held.metadata,
          config: request.config,
          deadlineAt: deadline
        } satisfies Lease
      })

    // ---- sweeper ----
    const claim = (id: string, now: number) =>
      sql<{ id: string }>`UPDATE leases SET sweeper_until = ${now + SWEEP_CLAIM_MS} WHERE id = ${id} AND sweeper_until < ${now}
        AND status NOT IN ('released', 'failed', 'expired') RETURNING id`.pipe(Effect.map((r) => r.length > 0), Effect.orDie)

    const cleanupOne = (r: Row, mode: "pending" | "reap", reapReason: string) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        if (!(yield* claim(r.id, now))) return "skipped" as const
        const [pluginId, driverKey] = r.provider.split("/", 2) as [string, string]
        const record = { id: r.id, companyId: r.company_id, environmentId: r.environment_id, runId: r.run_id, provider: r.provider }
        const release = (status: LeaseStatus, reason: string | null) =>
          finishReleased(r.id, status, reason, ["acquiring", "active", "pending_cleanup"], { ...record, status })
        // provider down: defer without spending an attempt
        const defer = Effect.flatMap(Clock.currentTimeMillis, (t) =>
          sql`UPDATE leases SET next_cleanup_at = ${t + options.deferMs}, sweeper_until = 0,
            status = CASE WHEN status = 'pending_cleanup' THEN status ELSE 'pending_cleanup' END,
            cleanup_action = COALESCE(cleanup_action, 'destroy'), intended_status = COALESCE(intended_status, 'expired'),
            failure_reason = COALESCE(failure_reason, ${reapReason}) WHERE id = ${r.id}`).pipe(Effect.orDie, Effect.as("deferred" as const))
        if (!(yield* providers.isAvailable(pluginId))) return yield* defer
        const config = JSON.parse(r.config) as Record<string, unknown>
        const policy = JSON.parse(r.policy) as LeasePolicy
        const b = base(r.company_id, r.environment_id, driverKey, config)
        const call = (method: "environmentAcquireLease" | "environmentReleaseLease" | "environmentDestroyLease", params: object) =>
          providers.call(pluginId, method, { ...b, ...params }, { companyId: r.company_id, timeoutMs: timeoutOf(policy) })
        const action = mode === "reap" ? "destroy" : (r.cleanup_action as "release" | "destroy" | null) ?? "destroy"
        const intended = (mode === "reap" ? "expired" : (r.intended_status as LeaseStatus | null) ?? "failed")
        const attempt = Effect.gen(function* () {
          let providerLeaseId = r.provider_lease_id
          if (providerLeaseId === null) {
            // learn the id of whatever the lost acquire created (acquire is idempotent on the key)
            const got = (yield* call("environmentAcquireLease", { runId: r.idempotency_key })) as { providerLeaseId?: string | null } | null
            providerLeaseId = got?.providerLeaseId ?? null
            if (providerLeaseId === null) return
          }
          yield* call(action === "release" ? "environmentReleaseLease" : "environmentDestroyLease", {
            providerLeaseId,
            leaseMetadata: JSON.parse(r.metadata),
            ...(mode === "reap" || intended === "expired" ? { cancelActiveWork: true } : {})
          })
        })
        const result = yield* Effect.either(attempt)
        if (result._tag === "Right") {
          yield* release(intended, mode === "reap" ? reapReason : null)
          return "cleaned" as const
        }
        // the worker died under the call (or had died before the host noticed): the provider is down, it did not fail
        if (result.left._tag === "WorkerUnavailable") return yield* defer
        const attempts = Number(r.cleanup_attempts) + 1
        const reason = redactor.redact(`${action} failed (attempt ${attempts}): ${result.left.message}`)
        if (attempts >= CLEANUP_ATTEMPT_CAP) {
          yield* sql`UPDATE leases SET cleanup_attempts = ${attempts}, failure_reason = ${`cleanup gave up after ${attempts} attempts; the sandbox may still exist at the provider: ${reason}`}
            WHERE id = ${r.id}`.pipe(Effect.orDie)
          yield* release("failed", null)
          yield* Effect.logWarning(`lease ${r.id}: cleanup gave up after ${attempts} attempts (${r.provider} ${r.provider_lease_id ?? "unknown id"}); operator action needed`)
          yield* stores.log.append(pluginId, "error", `lease ${r.id}: cleanup gave up after ${attempts} attempts; the sandbox ${r.provider_lease_id ?? "(unknown id)"} may still exist`)
          return "gaveUp" as const
        }
        yield* sql`UPDATE leases SET status = 'pending_cleanup', cleanup_action = ${action}, intended_status = ${intended},
          cleanup_attempts = ${attempts}, failure_reason = ${reason}, next_cleanup_at = ${now + cleanupDelayMs(attempts, options.cleanupBaseMs)},
          sweeper_until = 0 WHERE id = ${r.id}`.pipe(Effect.orDie)
        return "retried" as const
      })

    const sweep: Effect.Effect<SweepReport> = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const report = { cleaned: 0, deferred: 0, retried: 0, gaveUp: 0, reaped: 0 }
      const count = (o: "skipped" | "deferred" | "cleaned" | "retried" | "gaveUp") => {
        if (o !== "skipped") report[o]++
      }
      const pending = yield* sql<Row>`SELECT * FROM leases WHERE status = 'pending_cleanup' AND next_cleanup_at <= ${now}
        AND sweeper_until < ${now} ORDER BY next_cleanup_at LIMIT 200`.pipe(Effect.orDie)
      yield* Effect.forEach(pending, (r) => Effect.map(cleanupOne(r, "pending", r.failure_reason ?? "cleanup"), count), { concurrency: 8, discard: true })
      const staleBefore = now - instance.staleAfterMs
      const dead = yield* sql<Row>`SELECT l.* FROM leases l LEFT JOIN instances i ON i.id = l.owner_instance_id
        WHERE l.status IN ('acquiring', 'active') AND l.idle_since IS NULL AND l.owner_instance_id <> ${instance.id}
        AND (i.id IS NULL OR i.heartbeat_at < ${staleBefore}) AND l.sweeper_until < ${now} LIMIT 200`.pipe(Effect.orDie)
      yield* Effect.forEach(dead, (r) => Effect.map(cleanupOne(r, "reap", `owner instance ${r.owner_instance_id} died`), (o) => {
        count(o)
        if (o === "cleaned") report.reaped++
      }), { concurrency: 8, discard: true })
      const overdue = yield* sql<Row>`SELECT * FROM leases WHERE status IN ('acquiring', 'active') AND deadline_at < ${now}
        AND sweeper_until < ${now} LIMIT 200`.pipe(Effect.orDie)
      yield* Effect.forEach(overdue, (r) => Effect.map(cleanupOne(r, "reap", "deadline passed (host-enforced TTL)"), (o) => {
        count(o)
        if (o === "cleaned") report.reaped++
      }), { concurrency: 8, discard: true })
      return report
    }).pipe(Effect.catchAllCause((c) => Effect.as(Effect.logError("lease sweep failed", c), { cleaned: 0, deferred: 0, retried: 0, gaveUp: 0, reaped: 0 })))

    yield* Effect.forkScoped(Effect.repeat(sweep, Schedule.spaced(Duration.millis(options.sweepIntervalMs))))

    const list: Context.Tag.Service<Leases>["list"] = (f) =>
      Effect.gen(function* () {
        const rows = f.runId
          ? yield* sql<Row>`SELECT * FROM leases WHERE run_id = ${f.runId} ORDER BY created_at`
          : f.environmentId
            ? yield* sql<Row>`SELECT * FROM leases WHERE environment_id = ${f.environmentId} ORDER BY created_at DESC LIMIT 500`
            : f.companyId
              ? yield* sql<Row>`SELECT * FROM leases WHERE company_id = ${f.companyId} ORDER BY created_at DESC LIMIT 500`
              : yield* sql<Row>`SELECT * FROM leases ORDER BY created_at DESC LIMIT 1000`
        return rows.map(toRecord)
      }).pipe(Effect.orDie)

    return Leases.of({
      acquire,
      touch: (leaseId) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => sql`UPDATE leases SET last_used_at = ${now} WHERE id = ${leaseId}`).pipe(Effect.asVoid, Effect.orDie),
      get: (leaseId) =>
        sql<Row>`SELECT * FROM leases WHERE id = ${leaseId}`.pipe(
          Effect.orDie,
          Effect.flatMap((rows) => rows.length === 0
            ? Effect.fail(new LeaseNotFound({ leaseId, message: `lease "${leaseId}" not found` }))
            : Effect.succeed(toRecord(rows[0]!)))
        ),
      list,
      liveCount: (environmentId) =>
        sql<{ n: number }>`SELECT COUNT(*) AS n FROM leases WHERE environment_id = ${environmentId}
          AND status NOT IN ('released', 'failed', 'expired')`.pipe(Effect.map((r) => Number(r[0]?.n ?? 0)), Effect.orDie),
      sweep
    })
  })

export const layer = (options: Partial<LeasesOptions> = {}) =>
  Layer.scoped(Leases, Effect.gen(function* () {
    const sweepIntervalMs = options.sweepIntervalMs ?? (yield* Config.integer("GANTRY_SWEEP_INTERVAL_MS").pipe(Config.withDefault(5_000), Effect.orDie))
    return yield* make({ sweepIntervalMs, cleanupBaseMs: options.cleanupBaseMs ?? 1_000, deferMs: options.deferMs ?? 2_000 })
  }))

/** Stable short hash, used for display. */
export const shortHash = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 12)
