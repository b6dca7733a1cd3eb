// Durable per-(plugin, company) config (SPEC §5.1). Validation lives in PluginConfigs (it needs the worker).
import { SqlClient } from "@effect/sql"
import { Clock, Effect } from "effect"
import type { CapabilityStoresShape } from "../Stores.js"

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const config: CapabilityStoresShape["config"] = {
    get: (pluginId, companyId) =>
      sql<{ config: string }>`SELECT config FROM plugin_configs WHERE plugin_id = ${pluginId} AND company_id = ${companyId ?? ""}`.pipe(
        Effect.map((rows) => (rows.length === 0 ? {} : JSON.parse(rows[0]!.config) as Record<string, unknown>)),
        Effect.orDie
      ),
    set: (pluginId, companyId, value) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        sql`INSERT INTO plugin_configs (plugin_id, company_id, config, updated_at) VALUES (${pluginId}, ${companyId}, ${JSON.stringify(value)}, ${now})
          ON CONFLICT (plugin_id, company_id) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at`).pipe(Effect.asVoid, Effect.orDie),
    companies: (pluginId) =>
      sql<{ company_id: string }>`SELECT company_id FROM plugin_configs WHERE plugin_id = ${pluginId} ORDER BY company_id`.pipe(
        Effect.map((rows) => rows.map((r) => r.company_id)),
        Effect.orDie
      )
  }
  return config
})
