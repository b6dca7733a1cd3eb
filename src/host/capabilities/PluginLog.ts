// Durable plugin logs with retention: the newest `GANTRY_LOG_RETENTION` rows per plugin are kept.
import { SqlClient } from "@effect/sql"
import { Clock, Effect } from "effect"
import type { LogLevel } from "../../sdk/capabilities.js"
import type { CapabilityStoresShape, LogEntry } from "../Stores.js"

const MAX_MESSAGE = 16_384

export const make = (options: {
  readonly retention: number
  readonly redact: (s: string) => string
  readonly redactValue: <A>(value: A) => A
}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    let sinceTrim = 0
    const log: CapabilityStoresShape["log"] = {
      append: (pluginId, level, message, meta) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const text = options.redact(message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}… (truncated)` : message)
          // values are scrubbed before serializing: JSON escaping would hide a secret holding `"` or `\`
          const metaText = meta === undefined ? null : options.redact(JSON.stringify(options.redactValue(meta)) ?? "null")
          yield* sql`INSERT INTO plugin_logs (plugin_id, at, level, message, meta) VALUES (${pluginId}, ${now}, ${level}, ${text}, ${metaText})`
          if (++sinceTrim >= 500) {
            sinceTrim = 0
            yield* sql`DELETE FROM plugin_logs WHERE plugin_id = ${pluginId} AND id <= (
              SELECT id FROM plugin_logs WHERE plugin_id = ${pluginId} ORDER BY id DESC LIMIT 1 OFFSET ${options.retention})`
          }
        }).pipe(Effect.orDie),
      list: (pluginId, limit = 200) =>
        sql<{ at: number; level: string; message: string; meta: string | null }>`SELECT at, level, message, meta FROM plugin_logs
          WHERE plugin_id = ${pluginId} ORDER BY id DESC LIMIT ${limit}`.pipe(
          Effect.map((rows) =>
            [...rows].reverse().map((r): LogEntry => {
              const base = { at: new Date(Number(r.at)).toISOString(), level: r.level as LogLevel, message: r.message }
              return r.meta === null ? base : { ...base, meta: JSON.parse(r.meta) }
            })),
          Effect.orDie
        )
    }
    return log
  })
