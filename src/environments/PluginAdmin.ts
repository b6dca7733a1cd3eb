// Operator actions on installed plugins that touch environments (SPEC §15): upgrade and uninstall of a
// sandbox provider are refused while its drivers have live leases or non-archived environments,
// unless drained: drain waits (bounded) for the leases to end; uninstall also archives the
// environments first, so no new lease starts on a provider that is going away.
import { SqlClient } from "@effect/sql"
import { Context, Duration, Effect, Layer, Schedule, Schema } from "effect"
import type { PluginNotFound } from "../host/errors.js"
import { PluginInstaller, type InstallError, type InstallOptions, type UpgradeError, type UpgradeOptions } from "../host/Installer.js"
import type { PluginSnapshot } from "../host/PluginHost.js"
import { Environments } from "./Environments.js"

const LeaseUse = Schema.Struct({ id: Schema.String, environmentId: Schema.String, companyId: Schema.String, status: Schema.String })
const EnvironmentUse = Schema.Struct({ id: Schema.String, companyId: Schema.String, name: Schema.String })

export interface Usage {
  readonly leases: ReadonlyArray<typeof LeaseUse.Type>
  readonly environments: ReadonlyArray<typeof EnvironmentUse.Type>
}

/** The provider is in use: its live leases and non-archived environments are listed in `data`. */
export class PluginInUse extends Schema.TaggedError<PluginInUse>()("PluginInUse", {
  pluginId: Schema.String,
  data: Schema.Struct({ leases: Schema.Array(LeaseUse), environments: Schema.Array(EnvironmentUse) }),
  message: Schema.String
}) {
  get status() { return 409 }
}

export interface DrainOptions {
  readonly drain?: boolean
  /** How long a drain waits for live leases to end; default 120 s. */
  readonly drainTimeoutMs?: number
}

export const DEFAULT_DRAIN_TIMEOUT_MS = 120_000

export class PluginAdmin extends Context.Tag("gantry/PluginAdmin")<PluginAdmin, {
  readonly usage: (pluginId: string) => Effect.Effect<Usage>
  readonly install: (source: string, options?: InstallOptions) => Effect.Effect<PluginSnapshot, InstallError>
  readonly upgrade: (pluginId: string, source: string, options?: UpgradeOptions & DrainOptions) => Effect.Effect<PluginSnapshot, UpgradeError | PluginInUse>
  readonly uninstall: (pluginId: string, options?: { readonly purge?: boolean } & DrainOptions) => Effect.Effect<void, PluginNotFound | PluginInUse>
}>() {}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const installer = yield* PluginInstaller
  const environments = yield* Environments

  const usage = (pluginId: string) =>
    Effect.gen(function* () {
      const prefix = `${pluginId}/`
      const leases = yield* sql<{ id: string; environment_id: string; company_id: string; status: string; provider: string }>`
        SELECT id, environment_id, company_id, status, provider FROM leases WHERE status NOT IN ('released', 'failed', 'expired')`
      const envs = yield* sql<{ id: string; company_id: string; name: string; config: string }>`
        SELECT id, company_id, name, config FROM environments WHERE driver = 'sandbox' AND status = 'active' ORDER BY company_id, name`
      return {
        leases: leases.filter((l) => l.provider.startsWith(prefix)).map((l) => ({ id: l.id, environmentId: l.environment_id, companyId: l.company_id, status: l.status })),
        environments: envs.filter((e) => String((JSON.parse(e.config) as { provider?: unknown }).provider ?? "").startsWith(prefix))
          .map((e) => ({ id: e.id, companyId: e.company_id, name: e.name }))
      } satisfies Usage
    }).pipe(Effect.orDie)

  const describe = (u: Usage) =>
    [
      u.leases.length > 0 ? `${u.leases.length} live lease(s) (${u.leases.map((l) => `${l.id} ${l.status}`).join(", ")})` : "",
      u.environments.length > 0 ? `${u.environments.length} environment(s) not archived (${u.environments.map((e) => e.name).join(", ")})` : ""
    ].filter((s) => s !== "").join(" and ")

  const inUse = (pluginId: string, u: Usage, what: string, extra = "") =>
    new PluginInUse({
      pluginId,
      data: { leases: [...u.leases], environments: [...u.environments] },
      message: `cannot ${what} plugin "${pluginId}": its drivers have ${describe(u)}${extra}`
    })

  /** Wait until no lease of the provider is live (bounded). */
  const drainLeases = (pluginId: string, what: string, timeoutMs: number) =>
    Effect.gen(function* () {
      yield* Effect.repeat(usage(pluginId), {
        while: (u) => u.leases.length > 0,
        schedule: Schedule.spaced(Duration.millis(200)).pipe(Schedule.upTo(Duration.millis(timeoutMs)))
      })
      const last = yield* usage(pluginId)
      if (last.leases.length > 0) {
        return yield* inUse(pluginId, { leases: last.leases, environments: [] }, what, `; the drain gave up after ${timeoutMs} ms`)
      }
    })

  return PluginAdmin.of({
    usage,
    install: installer.install,
    upgrade: (pluginId, source, o = {}) =>
      Effect.gen(function* () {
        const u = yield* usage(pluginId)
        if (u.leases.length + u.environments.length > 0) {
          if (o.drain !== true) return yield* inUse(pluginId, u, "upgrade", "; pass drain to wait for the leases to end")
          yield* drainLeases(pluginId, "upgrade", o.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS)
        }
        return yield* installer.upgrade(pluginId, source, o)
      }),
    uninstall: (pluginId, o = {}) =>
      Effect.gen(function* () {
        const u = yield* usage(pluginId)
        if (u.leases.length + u.environments.length > 0) {
          if (o.drain !== true) return yield* inUse(pluginId, u, "uninstall", "; pass drain to archive the environments and wait for the leases to end")
          // no new lease may start on a provider that is going away
          for (const e of u.environments) yield* Effect.ignore(environments.archive(e.id))
          yield* drainLeases(pluginId, "uninstall", o.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS)
        }
        yield* installer.uninstall(pluginId, o.purge === true ? { purge: true } : {})
      })
  })
})

export const layer = Layer.effect(PluginAdmin, make)
