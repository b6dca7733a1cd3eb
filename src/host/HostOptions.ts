// Host tunables (SPEC §3.4, §4), from `GANTRY_*` config with the spec's defaults.
import { Config, Context, Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { DEFAULT_TRUSTED, defaultIsolation, type WorkerIsolationOptions } from "./WorkerSandbox.js"

/** A fresh id per host process: leases and job runs record their owner by it (GANTRY_INSTANCE_ID overrides). */
const freshInstanceId = () => `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`

export interface HostOptionsShape {
  readonly instanceId: string
  readonly hostVersion: string
  readonly callTimeoutMs: number
  readonly initializeTimeoutMs: number
  readonly jobTimeoutMs: number
  readonly healthIntervalMs: number
  readonly healthFailureLimit: number
  readonly restartBaseMs: number
  readonly restartMaxMs: number
  readonly crashLimit: number
  readonly crashWindowMs: number
  readonly sigtermGraceMs: number
  readonly defaultShutdownTimeoutMs: number
  /** Extra execArgv for worker processes (tests use it for coverage etc.). */
  readonly workerExecArgv: ReadonlyArray<string>
  /** The whole environment a worker gets besides GANTRY_PLUGIN_ID: PATH, NODE_ENV, TZ only. */
  readonly workerEnv: Readonly<Record<string, string>>
  /** Worker sandbox policy (src/host/WorkerSandbox.ts): GANTRY_PLUGIN_SANDBOX, GANTRY_PLUGIN_TRUST. */
  readonly workerIsolation: WorkerIsolationOptions
}

export const HOST_VERSION = "0.1.0"

export const defaults: HostOptionsShape = {
  instanceId: "local",
  hostVersion: HOST_VERSION,
  callTimeoutMs: 30_000,
  initializeTimeoutMs: 15_000,
  jobTimeoutMs: 5 * 60_000,
  healthIntervalMs: 30_000,
  healthFailureLimit: 3,
  restartBaseMs: 1_000,
  restartMaxMs: 5 * 60_000,
  crashLimit: 10,
  crashWindowMs: 10 * 60_000,
  sigtermGraceMs: 5_000,
  defaultShutdownTimeoutMs: 10_000,
  workerExecArgv: [],
  workerEnv: { PATH: "/usr/local/bin:/usr/bin:/bin", NODE_ENV: "production", TZ: "UTC" },
  workerIsolation: defaultIsolation
}

/** PATH, NODE_ENV and TZ of the host, the only variables a worker inherits. */
const workerEnvConfig = Effect.gen(function* () {
  const PATH = yield* Config.string("PATH").pipe(Config.withDefault(defaults.workerEnv.PATH!))
  const NODE_ENV = yield* Config.string("NODE_ENV").pipe(Config.withDefault("production"))
  const TZ = yield* Config.string("TZ").pipe(Config.withDefault("UTC"))
  return { PATH, NODE_ENV, TZ }
}).pipe(Effect.orDie)

export class HostOptions extends Context.Tag("gantry/HostOptions")<HostOptions, HostOptionsShape>() {
  static readonly layer = (overrides: Partial<HostOptionsShape> = {}) =>
    Layer.effect(HostOptions, Effect.map(workerEnvConfig, (workerEnv) => ({ ...defaults, instanceId: freshInstanceId(), workerEnv, ...overrides })))

  /** From `GANTRY_*` config; `overrides` (tests, the server's own choices) win over it. */
  static readonly layerConfigWith = (overrides: Partial<HostOptionsShape> = {}) => Layer.effect(
    HostOptions,
    Effect.gen(function* () {
      const int = (name: string, d: number) => Config.integer(name).pipe(Config.withDefault(d))
      const fromConfig: HostOptionsShape = {
        ...defaults,
        workerEnv: yield* workerEnvConfig,
        instanceId: yield* Config.string("GANTRY_INSTANCE_ID").pipe(Config.withDefault(freshInstanceId())),
        callTimeoutMs: yield* int("GANTRY_CALL_TIMEOUT_MS", defaults.callTimeoutMs),
        healthIntervalMs: yield* int("GANTRY_HEALTH_INTERVAL_MS", defaults.healthIntervalMs),
        restartBaseMs: yield* int("GANTRY_RESTART_BASE_MS", defaults.restartBaseMs),
        crashLimit: yield* int("GANTRY_CRASH_LIMIT", defaults.crashLimit),
        workerIsolation: {
          mode: yield* Config.literal("auto", "off")("GANTRY_PLUGIN_SANDBOX").pipe(Config.withDefault("auto" as const)),
          trusted: yield* Config.string("GANTRY_PLUGIN_TRUST").pipe(
            Config.map((s) => s.split(",").map((x) => x.trim()).filter((x) => x.length > 0)),
            Config.withDefault(DEFAULT_TRUSTED)),
          hidden: overrides.workerIsolation?.hidden ?? []
        }
      }
      return { ...fromConfig, ...overrides }
    }).pipe(Effect.orDie)
  )

  static readonly layerConfig = HostOptions.layerConfigWith()

}
