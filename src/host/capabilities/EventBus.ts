// Durable at-least-once events (SPEC §5.3): events, subscription records and per-subscription delivery
// rows in the database, and the dispatcher that delivers each subscription's rows, in event order, to
// the worker attached in this process, retrying with backoff until the worker acks.
//
// Choices:
// - emit is atomic (PostgreSQL: one statement with a data-modifying CTE; SQLite: one transaction):
//   the event row (`event_id` unique: emitting an id again writes nothing) and one delivery row per
//   matching active subscription, matched in SQL (exact pattern or stored `prefix`, filter columns
//   ANDed) so no replica works from a stale subscription cache. `RETURNING subscription_id` wakes the
//   local delivery fibers of exactly those subscriptions.
// - A subscription is a record keyed (plugin, pattern, filter key), id = hash of that key; subscribing
//   upserts it (re-activating a retired one) and attaches `deliver` for the worker's scope. With no
//   `deliver` attached (worker down) rows keep queueing. `retire` marks the plugin's records a started
//   worker did not subscribe to as retired and deletes their pending rows.
// - One delivery fiber per attached subscription (FiberMap): claim → fetch ≤ BATCH pending rows by
//   event_seq → deliver one at a time → mark the acked rows in one UPDATE. A failure bumps `attempts`,
//   sets `next_attempt_at` (retryDelay) and ends the batch, so later events wait: order is kept and a
//   failing event blocks its subscription until acked (the spec's "until the worker acks"). The fiber
//   is woken by local emits and polls every POLL for rows written by other replicas.
// - Attaching a new `deliver` (a new worker incarnation) clears the subscription's backoff: the retries
//   were waiting for that worker.
// - Replicas: a subscription is delivered by one replica at a time — the fiber claims it with a
//   conditional UPDATE of owner/owner_until (lease CLAIM_TTL, renewed at half) before each batch, and
//   releases it on detach and on shutdown. A replica that dies loses its claim when the lease expires.
// - Delivered rows, and events older than every remaining delivery row, are pruned after RETENTION.
import { SqlClient, type SqlError } from "@effect/sql"
import { Cause, Clock, Duration, Effect, Exit, FiberMap, Queue, Schedule } from "effect"
import { createHash } from "node:crypto"
import { InternalError } from "../../protocol/errors.js"
import { filterFields } from "../../protocol/events.js"
import type { EventEnvelope, EventFilter } from "../../protocol/methods.js"
import type { LogLevel } from "../../sdk/capabilities.js"
import { Database } from "../../store/Database.js"
import { HostOptions } from "../HostOptions.js"
import { subscriptionKey, type CapabilityStoresShape, type Deliver } from "../Stores.js"

/** Backoff of one delivery row: RETRY_BASE doubling per failed attempt, capped at RETRY_CAP. */
export const RETRY_BASE = Duration.millis(100)
export const RETRY_CAP = Duration.seconds(30)
export const retryDelay = (attempts: number): Duration.Duration =>
  Duration.min(Duration.times(RETRY_BASE, 2 ** Math.min(Math.max(attempts - 1, 0), 30)), RETRY_CAP)

const BATCH = 100
const POLL = Duration.millis(400)
const CLAIM_TTL = Duration.seconds(30)
/** Acked rows are marked at the end of a batch, or sooner when a batch runs longer than this. */
const FLUSH_EVERY = Duration.seconds(1)
const RETENTION = Duration.days(7)
const PRUNE_EVERY = Schedule.spaced(Duration.minutes(10))
const PRUNE_CHUNK = 1_000

export interface EventBusOptions {
  /** Plugin log (delivery failures are logged to the subscribing plugin). */
  readonly log: (pluginId: string, level: LogLevel, message: string) => Effect.Effect<void>
  /** How long delivered rows, and events no row needs any more, are kept; default 7 days. */
  readonly retention?: Duration.DurationInput
}

interface Attachment {
  readonly id: string
  readonly pluginId: string
  /** The attached delivery functions, newest last (subscribing twice attaches twice). */
  readonly delivers: Array<Deliver>
  readonly wake: Queue.Queue<void>
}

interface PendingRow {
  readonly id: number
  readonly event_seq: number
  readonly attempts: number
  readonly next_attempt_at: number
  readonly envelope: string
}

const normalizeFilter = (f: EventFilter | null): EventFilter | null =>
  f ? JSON.parse(JSON.stringify({ agentId: f.agentId, companyId: f.companyId, projectId: f.projectId })) : null

const subscriptionId = (pluginId: string, pattern: string, filterKey: string) =>
  createHash("sha256").update(JSON.stringify([pluginId, pattern, filterKey])).digest("hex").slice(0, 32)

const dbError = (e: SqlError.SqlError) => new InternalError({ message: `event store: ${e.message}` })

const causeMessage = (cause: Cause.Cause<unknown>): string => {
  const e = Cause.squash(cause)
  return e instanceof Error ? e.message : typeof e === "object" && e !== null && "message" in e ? String(e.message) : String(e)
}

export const make = (options: EventBusOptions) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const { dialect } = yield* Database
    const { instanceId } = yield* HostOptions
    const retentionMs = Duration.toMillis(Duration.decode(options.retention ?? RETENTION))
    const attachments = new Map<string, Attachment>()
    const lock = yield* Effect.makeSemaphore(1)

    // registered before the FiberMap, so it runs after the delivery fibers are interrupted
    yield* Effect.addFinalizer(() =>
      sql`UPDATE event_subscriptions SET owner = NULL, owner_until = 0 WHERE owner = ${instanceId}`.pipe(Effect.ignore))
    const fibers = yield* FiberMap.make<string>()

    const claim = (id: string, now: number) =>
      Effect.map(
        sql<{ id: string }>`UPDATE event_subscriptions SET owner = ${instanceId}, owner_until = ${now + Duration.toMillis(CLAIM_TTL)}
          WHERE id = ${id} AND status = 'active' AND (owner IS NULL OR owner = ${instanceId} OR owner_until < ${now}) RETURNING id`,
        (rows) => rows.length > 0
      )

    const markAcked = (ids: ReadonlyArray<number>, now: number) =>
      ids.length === 0
        ? Effect.void
        : Effect.asVoid(sql`UPDATE event_deliveries SET status = 'delivered', delivered_at = ${now}
            WHERE id IN ${sql.in(ids)} AND status = 'pending'`)

    /** The delivery loop of one attached subscription; runs until detached. */
    const deliveryLoop = (a: Attachment) => {
      let claimedUntil = 0
      const holdClaim = (now: number) =>
        claimedUntil - now > Duration.toMillis(CLAIM_TTL) / 2
          ? Effect.succeed(true)
          : Effect.map(claim(a.id, now), (ok) => {
              claimedUntil = ok ? now + Duration.toMillis(CLAIM_TTL) : 0
              return ok
            })
      const idle = (d: Duration.DurationInput) => Effect.asVoid(Effect.timeoutOption(Queue.take(a.wake), d))

      const batch = Effect.gen(function* () {
        if (!(yield* holdClaim(yield* Clock.currentTimeMillis))) return yield* idle(POLL)
        const rows = yield* sql<PendingRow>`SELECT d.id, d.event_seq, d.attempts, d.next_attempt_at, e.envelope
          FROM event_deliveries d JOIN events e ON e.seq = d.event_seq
          WHERE d.subscription_id = ${a.id} AND d.status = 'pending' ORDER BY d.event_seq LIMIT ${BATCH}`
        if (rows.length === 0) return yield* idle(POLL)
        const acked: Array<number> = []
        let flushedAt = yield* Clock.currentTimeMillis
        const flush = Effect.suspend(() => {
          const ids = acked.splice(0)
          return Effect.flatMap(Clock.currentTimeMillis, (now) => {
            flushedAt = now
            return markAcked(ids, now)
          })
        })
        let pause: Duration.Duration | undefined
        yield* Effect.gen(function* () {
          for (const row of rows) {
            const now = yield* Clock.currentTimeMillis
            if (Number(row.next_attempt_at) > now) {
              pause = Duration.millis(Number(row.next_attempt_at) - now)
              return
            }
            if (acked.length > 0 && now - flushedAt > Duration.toMillis(FLUSH_EVERY)) yield* flush
            const deliver = a.delivers[a.delivers.length - 1]
            if (!deliver || !(yield* holdClaim(now))) return
            const exit = yield* Effect.exit(deliver(JSON.parse(row.envelope) as EventEnvelope))
            if (Exit.isSuccess(exit)) {
              acked.push(Number(row.id))
              continue
            }
            const attempts = Number(row.attempts) + 1
            const delay = retryDelay(attempts)
            const message = causeMessage(exit.cause)
            const failedAt = yield* Clock.currentTimeMillis
            yield* sql`UPDATE event_deliveries SET attempts = ${attempts}, next_attempt_at = ${failedAt + Duration.toMillis(delay)},
              last_error = ${message.slice(0, 2000)} WHERE id = ${Number(row.id)}`
            yield* options.log(a.pluginId, "warn",
              `event delivery failed (attempt ${attempts}, retry in ${Duration.format(delay)}): ${message.slice(0, 500)}`)
            pause = delay
            return
          }
        }).pipe(Effect.ensuring(Effect.ignore(flush)))
        // a wake does not cut a backoff short: the next batch would find the same row not yet due
        if (pause) yield* Effect.sleep(pause)
      })

      // a database error costs a poll interval, never the loop (detaching interrupts it; that is not caught)
      return batch.pipe(
        Effect.catchAllCause((cause) =>
          Effect.zipRight(options.log(a.pluginId, "error", `event dispatcher: ${causeMessage(cause)}`), Effect.sleep(POLL))),
        Effect.forever
      )
    }

    const wake = (id: string) => {
      const a = attachments.get(id)
      return a ? Queue.offer(a.wake, undefined) : Effect.void
    }

    const attach = (id: string, pluginId: string, deliver: Deliver) =>
      lock.withPermits(1)(
        Effect.gen(function* () {
          const existing = attachments.get(id)
          const fresh = !existing?.delivers.includes(deliver)
          if (fresh) {
            // a new worker incarnation: what the backoff was waiting for has arrived
            const now = yield* Clock.currentTimeMillis
            yield* sql`UPDATE event_deliveries SET next_attempt_at = ${now}
              WHERE subscription_id = ${id} AND status = 'pending' AND next_attempt_at > ${now}`
          }
          if (existing) {
            existing.delivers.push(deliver)
            yield* FiberMap.run(fibers, id, deliveryLoop(existing), { onlyIfMissing: true })
            yield* Queue.offer(existing.wake, undefined)
            return existing
          }
          const a: Attachment = { id, pluginId, delivers: [deliver], wake: yield* Queue.sliding<void>(1) }
          attachments.set(id, a)
          yield* FiberMap.run(fibers, id, deliveryLoop(a))
          return a
        })
      )

    const detach = (a: Attachment, deliver: Deliver) =>
      lock.withPermits(1)(
        Effect.suspend(() => {
          const i = a.delivers.lastIndexOf(deliver)
          if (i >= 0) a.delivers.splice(i, 1)
          if (a.delivers.length > 0 || attachments.get(a.id) !== a) return Effect.void
          attachments.delete(a.id)
          return FiberMap.remove(fibers, a.id).pipe(
            Effect.zipRight(sql`UPDATE event_subscriptions SET owner = NULL, owner_until = 0 WHERE id = ${a.id} AND owner = ${instanceId}`),
            Effect.ignore
          )
        })
      )

    const prune = Effect.gen(function* () {
      const cutoff = (yield* Clock.currentTimeMillis) - retentionMs
      let n = PRUNE_CHUNK
      while (n === PRUNE_CHUNK) {
        n = (yield* sql`DELETE FROM event_deliveries WHERE id IN (SELECT id FROM event_deliveries
          WHERE status = 'delivered' AND delivered_at <= ${cutoff} LIMIT ${PRUNE_CHUNK}) RETURNING id`).length
      }
      n = PRUNE_CHUNK
      while (n === PRUNE_CHUNK) {
        // events older than every remaining delivery row (one scan of the rows left, no extra index)
        n = (yield* sql`DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created_at <= ${cutoff}
          AND seq < COALESCE((SELECT MIN(event_seq) FROM event_deliveries), seq + 1) LIMIT ${PRUNE_CHUNK}) RETURNING seq`).length
      }
    })
    yield* Effect.forkScoped(Effect.repeat(Effect.ignore(prune), PRUNE_EVERY))

    const events: CapabilityStoresShape["events"] = {
      subscribe: Effect.fn("EventBus.subscribe")(function* (pluginId: string, pattern: string, filter: EventFilter | null, deliver: Deliver) {
        const norm = normalizeFilter(filter)
        const filterKey = JSON.stringify(norm)
        const id = subscriptionId(pluginId, pattern, filterKey)
        const prefix = pattern === "*" ? "" : pattern.endsWith(".*") ? pattern.slice(0, -1) : null
        const now = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO event_subscriptions (id, plugin_id, pattern, prefix, filter, filter_key, filter_company_id,
            filter_agent_id, filter_project_id, status, owner, owner_until, created_at, updated_at)
          VALUES (${id}, ${pluginId}, ${pattern}, ${prefix}, ${norm ? filterKey : null}, ${filterKey}, ${norm?.companyId ?? null},
            ${norm?.agentId ?? null}, ${norm?.projectId ?? null}, 'active', NULL, 0, ${now}, ${now})
          ON CONFLICT (id) DO UPDATE SET status = 'active', updated_at = excluded.updated_at`.pipe(Effect.mapError(dbError))
        yield* Effect.acquireRelease(
          attach(id, pluginId, deliver).pipe(Effect.mapError(dbError)),
          (a) => detach(a, deliver)
        )
      }),

      emit: Effect.fn("EventBus.emit")(function* (event: EventEnvelope) {
        const now = yield* Clock.currentTimeMillis
        const { agentId, projectId } = filterFields(event)
        const envelope = JSON.stringify(event)
        const matches = sql`s.status = 'active'
          AND ((s.prefix IS NULL AND s.pattern = ${event.eventType})
            OR (s.prefix IS NOT NULL AND substr(CAST(${event.eventType} AS TEXT), 1, length(s.prefix)) = s.prefix))
          AND (s.filter_company_id IS NULL OR s.filter_company_id = ${event.companyId})
          AND (s.filter_agent_id IS NULL OR s.filter_agent_id = ${agentId})
          AND (s.filter_project_id IS NULL OR s.filter_project_id = ${projectId})`
        // PostgreSQL: one statement (a data-modifying CTE is atomic); SQLite: one transaction
        const matched = yield* (dialect === "pg"
          ? sql<{ subscription_id: string }>`WITH e AS (INSERT INTO events (event_id, event_type, company_id, envelope, created_at)
                VALUES (${event.eventId}, ${event.eventType}, ${event.companyId}, ${envelope}, ${now})
                ON CONFLICT (event_id) DO NOTHING RETURNING seq)
              INSERT INTO event_deliveries (subscription_id, event_seq, status, attempts, next_attempt_at)
              SELECT s.id, e.seq, 'pending', 0, CAST(${now} AS BIGINT) FROM e CROSS JOIN event_subscriptions s WHERE ${matches}
              RETURNING subscription_id`
          : sql.withTransaction(
              Effect.gen(function* () {
                const inserted = yield* sql<{ seq: number }>`INSERT INTO events (event_id, event_type, company_id, envelope, created_at)
                  VALUES (${event.eventId}, ${event.eventType}, ${event.companyId}, ${envelope}, ${now})
                  ON CONFLICT (event_id) DO NOTHING RETURNING seq`
                if (inserted.length === 0) return []
                return yield* sql<{ subscription_id: string }>`INSERT INTO event_deliveries (subscription_id, event_seq, status, attempts, next_attempt_at)
                  SELECT s.id, ${Number(inserted[0]!.seq)}, 'pending', 0, ${now} FROM event_subscriptions s WHERE ${matches}
                  RETURNING subscription_id`
              })
            )).pipe(Effect.mapError(dbError))
        yield* Effect.forEach(matched, (r) => wake(r.subscription_id), { discard: true })
      }),

      retire: Effect.fn("EventBus.retire")(function* (pluginId: string, keep: ReadonlyArray<string>) {
        const keepSet = new Set(keep)
        return yield* sql.withTransaction(
          Effect.gen(function* () {
            const subs = yield* sql<{ id: string; pattern: string; filter: string | null }>`SELECT id, pattern, filter
              FROM event_subscriptions WHERE plugin_id = ${pluginId} AND status = 'active'`
            const stale = subs.filter((s) => !keepSet.has(subscriptionKey(s.pattern, s.filter === null ? null : JSON.parse(s.filter))))
            if (stale.length === 0) return 0
            const ids = stale.map((s) => s.id)
            const [count] = yield* sql<{ n: number }>`SELECT COUNT(*) AS n FROM event_deliveries
              WHERE subscription_id IN ${sql.in(ids)} AND status = 'pending'`
            yield* sql`DELETE FROM event_deliveries WHERE subscription_id IN ${sql.in(ids)} AND status = 'pending'`
            yield* sql`UPDATE event_subscriptions SET status = 'retired', owner = NULL, owner_until = 0
              WHERE id IN ${sql.in(ids)}`
            return Number(count?.n ?? 0)
          })
        ).pipe(Effect.orDie)
      })
    }
    return events
  })
