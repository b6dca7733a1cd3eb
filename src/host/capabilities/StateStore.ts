// Durable plugin state (SPEC §5.2): key (plugin, scopeKind, scopeId, namespace, stateKey), JSON ≤ 1 MiB.
import { SqlClient } from "@effect/sql"
import { Clock, Effect } from "effect"
import { InternalError } from "../../protocol/errors.js"
import type { StateKey } from "../../protocol/methods.js"
import { encodeStateValue, type CapabilityStoresShape } from "../Stores.js"

const dbError = (e: unknown) => new InternalError({ message: `state store: ${e instanceof Error ? e.message : String(e)}` })

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const parts = (k: StateKey) => [k.scopeKind, k.scopeId ?? "", k.namespace ?? "default", k.stateKey] as const
  const state: CapabilityStoresShape["state"] = {
    get: Effect.fn("State.get")(function* (pluginId: string, key: StateKey) {
      const [kind, id, ns, k] = parts(key)
      const rows = yield* sql<{ value: string }>`SELECT value FROM plugin_state WHERE plugin_id = ${pluginId} AND scope_kind = ${kind}
        AND scope_id = ${id} AND namespace = ${ns} AND state_key = ${k}`.pipe(Effect.mapError(dbError))
      return rows.length === 0 ? null : JSON.parse(rows[0]!.value)
    }),
    set: Effect.fn("State.set")(function* (pluginId: string, key: StateKey, value: unknown) {
      const text = yield* encodeStateValue(value)
      const [kind, id, ns, k] = parts(key)
      const now = yield* Clock.currentTimeMillis
      yield* sql`INSERT INTO plugin_state (plugin_id, scope_kind, scope_id, namespace, state_key, value, updated_at)
        VALUES (${pluginId}, ${kind}, ${id}, ${ns}, ${k}, ${text}, ${now})
        ON CONFLICT (plugin_id, scope_kind, scope_id, namespace, state_key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`.pipe(
        Effect.mapError(dbError)
      )
    }),
    delete: Effect.fn("State.delete")(function* (pluginId: string, key: StateKey) {
      const [kind, id, ns, k] = parts(key)
      yield* sql`DELETE FROM plugin_state WHERE plugin_id = ${pluginId} AND scope_kind = ${kind} AND scope_id = ${id}
        AND namespace = ${ns} AND state_key = ${k}`.pipe(Effect.mapError(dbError))
    })
  }
  return state
})
