// Sandbox providers as the host sees them: resolve a provider string to a plugin + driver, know
// whether it is up, and call its environment hooks. Plugin-backed (through PluginHost) in the
// server; an in-process fake Layer (gantry/testing) in unit tests. Only `Leases` may call
// acquire/resume/release/destroy.
import { Context, Effect, Layer, Schema } from "effect"
import { WorkerUnavailable, type RpcError } from "../protocol/errors.js"
import type { ManifestEnvironmentDriver } from "../protocol/manifest.js"
import { PluginHost } from "../host/PluginHost.js"

export interface ProviderInfo {
  readonly pluginId: string
  readonly driverKey: string
  readonly displayName: string
  readonly configSchema: Record<string, unknown>
  readonly supportsReusableLeases: boolean
  /** `environmentXxx` hooks the provider implements. */
  readonly supportedMethods: ReadonlyArray<string>
}

export class ProviderNotFound extends Schema.TaggedError<ProviderNotFound>()("ProviderNotFound", {
  provider: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}

export type ProviderMethod =
  | "environmentValidateConfig"
  | "environmentProbe"
  | "environmentAcquireLease"
  | "environmentResumeLease"
  | "environmentReleaseLease"
  | "environmentDestroyLease"
  | "environmentRealizeWorkspace"
  | "environmentExecute"

export interface ProviderCallOptions {
  readonly companyId: string
  readonly timeoutMs?: number
  readonly onExecuteLog?: (stream: "stdout" | "stderr", chunk: string) => void
}

export class Providers extends Context.Tag("gantry/Providers")<Providers, {
  /** `"<pluginId>/<driverKey>"` or a bare `"<driverKey>"` (must be unambiguous) → a ready provider. */
  readonly resolve: (provider: string) => Effect.Effect<ProviderInfo, ProviderNotFound>
  readonly list: Effect.Effect<ReadonlyArray<ProviderInfo>>
  /** Whether the provider's worker is up right now (the sweeper defers cleanup otherwise). */
  readonly isAvailable: (pluginId: string) => Effect.Effect<boolean>
  readonly call: (pluginId: string, method: ProviderMethod, params: unknown, options: ProviderCallOptions) => Effect.Effect<unknown, RpcError>
}>() {}

/** Providers backed by installed plugins that declare `environmentDrivers`. */
export const layerPluginHost = Layer.effect(
  Providers,
  Effect.gen(function* () {
    const host = yield* PluginHost
    const list = Effect.gen(function* () {
      const out: Array<ProviderInfo> = []
      for (const p of yield* host.list) {
        if (p.status === "uninstalled" || p.status === "disabled") continue
        const info = yield* Effect.orDie(host.manifest(p.pluginId))
        for (const d of (info.manifest.environmentDrivers ?? []) as ReadonlyArray<ManifestEnvironmentDriver>) {
          out.push({
            pluginId: p.pluginId,
            driverKey: d.driverKey,
            displayName: d.displayName,
            configSchema: d.configSchema,
            supportsReusableLeases: d.supportsReusableLeases ?? false,
            supportedMethods: p.supportedMethods.filter((m) => m.startsWith("environment"))
          })
        }
      }
      return out
    })
    return Providers.of({
      list,
      resolve: (provider) =>
        Effect.flatMap(list, (all) => {
          const [a, b] = provider.includes("/") ? provider.split("/", 2) : [undefined, provider]
          const matches = all.filter((p) => p.driverKey === b && (a === undefined || p.pluginId === a))
          if (matches.length === 1) return Effect.succeed(matches[0]!)
          return Effect.fail(new ProviderNotFound({
            provider,
            message: matches.length === 0
              ? `no installed plugin provides sandbox driver "${provider}"`
              : `sandbox driver "${provider}" is ambiguous (${matches.map((m) => `${m.pluginId}/${m.driverKey}`).join(", ")}); name it as "<pluginId>/<driverKey>"`
          }))
        }),
      isAvailable: (pluginId) =>
        host.status(pluginId).pipe(
          Effect.map((s) => s.workerStatus === "running"),
          Effect.orElseSucceed(() => false)
        ),
      call: (pluginId, method, params, o) =>
        host.call(pluginId, method, params, {
          companyId: o.companyId,
          ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
          ...(o.onExecuteLog ? { onExecuteLog: o.onExecuteLog } : {})
        }).pipe(Effect.catchTag("PluginNotFound", (e) => Effect.fail(new WorkerUnavailable({ message: e.message }))))
    })
  })
)
