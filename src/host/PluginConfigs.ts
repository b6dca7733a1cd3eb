// Saving a plugin's per-company config (SPEC §5.1): JSON-Schema validation (Ajv) against the
// manifest's instanceConfigSchema, then the plugin's own validateConfig, then save + configChanged.
import { Context, Effect, Layer, Schema } from "effect"
import AjvModule from "ajv"
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

const Ajv = ((AjvModule as unknown as { default?: unknown }).default ?? AjvModule) as unknown as new (o: object) => {
  addFormat: (name: string, f: unknown) => void
  addKeyword: (k: string) => void
  compile: (schema: unknown) => ((data: unknown) => boolean) & { errors?: Array<{ instancePath: string; message?: string }> | null }
}

const isSecretRef = (u: unknown) =>
  typeof u === "object" && u !== null && (u as { type?: unknown }).type === "secret_ref" && typeof (u as { secretId?: unknown }).secretId === "string"

/** Walk the schema for `format: "secret-ref"` fields: their values must be secret refs, never raw values. */
const secretRefProblems = (schema: unknown, value: unknown, path: string, out: Array<string>) => {
  if (!schema || typeof schema !== "object") return
  const s = schema as Record<string, unknown>
  if (s.format === "secret-ref" && value !== undefined && !isSecretRef(value)) {
    out.push(`${path || "/"}: must be a secret reference {type:"secret_ref", secretId}, not a value`)
    return
  }
  if (s.properties && typeof s.properties === "object" && value && typeof value === "object") {
    for (const [k, sub] of Object.entries(s.properties as Record<string, unknown>)) {
      secretRefProblems(sub, (value as Record<string, unknown>)[k], `${path}/${k}`, out)
    }
  }
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
  const ajv = new Ajv({ allErrors: true, strict: false })
  ajv.addFormat("secret-ref", { type: "object", validate: isSecretRef } as never)
  ajv.addFormat("secret-ref-string", true)
  const compiled = new Map<string, ReturnType<typeof ajv.compile>>()

  const test = Effect.fn("PluginConfigs.test")(function* (pluginId: string, config: Record<string, unknown>) {
    const info = yield* host.manifest(pluginId)
    const schema = info.manifest.instanceConfigSchema
    const errors: Array<string> = []
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      return { ok: false, errors: ["config: must be a JSON object"], warnings: [] }
    }
    if (schema) {
      const key = `${pluginId}@${info.manifest.version}`
      let validate = compiled.get(key)
      if (!validate) {
        validate = ajv.compile(schema)
        compiled.set(key, validate)
      }
      if (!validate(config)) for (const e of validate.errors ?? []) errors.push(`${e.instancePath || "/"}: ${e.message ?? "invalid"}`)
      secretRefProblems(schema, config, "", errors)
    }
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
