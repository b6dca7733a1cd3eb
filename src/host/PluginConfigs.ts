// Saving a plugin's per-company config (SPEC §5.1): JSON-Schema validation (Ajv) against the
// manifest's instanceConfigSchema, then the plugin's own validateConfig, then save + configChanged.
import { Context, Effect, Layer, Schema } from "effect"
import { validateAgainst } from "./jsonSchema.js"
import type { RpcError } from "../protocol/errors.js"
import type { PluginNotFound } from "./errors.js"
import { PluginHost } from "./PluginHost.js"
import { CapabilityStores } from "./Stores.js"

export class ConfigInvalid extends Schema.TaggedError<ConfigInvalid>()("ConfigInvalid", {
  pluginId: Schema.String,
  errors: Schema.Array(Schema.String),
  message: Schema.String
}) {
  get status() { return 422 }
}

export interface ConfigTestResult {
  readonly ok: boolean
  readonly errors: ReadonlyArray<string>
  readonly warnings: ReadonlyArray<string>
}

export class PluginConfigs extends Context.Tag("gantry/PluginConfigs")<PluginConfigs, {
  /** Validate without saving (the API's config test). */
  readonly test: (pluginId: string, config: Record<string, unknown>) => Effect.Effect<ConfigTestResult, PluginNotFound | RpcError>
  /** Validate, then save and send `configChanged`; nothing is saved when validation fails. */
  readonly save: (pluginId: string, companyId: string, config: Record<string, unknown>) => Effect.Effect<ConfigTestResult, ConfigInvalid | PluginNotFound | RpcError>
  readonly get: (pluginId: string, companyId: string) => Effect.Effect<Record<string, unknown>, PluginNotFound>
}>() {}

export const make = Effect.gen(function* () {
  const host = yield* PluginHost
  const stores = yield* CapabilityStores
  const test = Effect.fn("PluginConfigs.test")(function* (pluginId: string, config: Record<string, unknown>) {
    const info = yield* host.manifest(pluginId)
    const schema = info.manifest.instanceConfigSchema
    const errors: Array<string> = []
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      return { ok: false, errors: ["config: must be a JSON object"], warnings: [] }
    }
    if (schema) errors.push(...validateAgainst(schema, config))
    let warnings: ReadonlyArray<string> = []
    const status = yield* host.status(pluginId)
    if (errors.length === 0 && status.workerStatus === "running" && status.supportedMethods.includes("validateConfig")) {
      const r = (yield* host.call(pluginId, "validateConfig", { config })) as { ok?: boolean; errors?: Array<string>; warnings?: Array<string> }
      warnings = r?.warnings ?? []
      if (r && r.ok === false) errors.push(...(r.errors && r.errors.length > 0 ? r.errors : ["rejected by the plugin's validateConfig"]))
    }
    return { ok: errors.length === 0, errors, warnings }
  })

  return PluginConfigs.of({
    test,
    save: Effect.fn("PluginConfigs.save")(function* (pluginId: string, companyId: string, config: Record<string, unknown>) {
      const r = yield* test(pluginId, config)
      if (!r.ok) return yield* new ConfigInvalid({ pluginId, errors: r.errors, message: `config for plugin "${pluginId}" is invalid: ${r.errors.join("; ")}` })
      yield* host.configChanged(pluginId, companyId, config)
      return r
    }),
    get: (pluginId, companyId) => Effect.zipRight(host.status(pluginId), stores.config.get(pluginId, companyId))
  })
})

export const layer = Layer.effect(PluginConfigs, make)
