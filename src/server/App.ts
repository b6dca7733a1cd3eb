// The application layer: every service of a Gantry host over one database, composed once. The
// server and CLI build it with real providers; tests swap in the fake provider Layer.
import { NodeContext } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as Capabilities from "../host/capabilities/index.js"
import * as JobScheduler from "../host/capabilities/JobScheduler.js"
import * as Redactor from "../host/capabilities/Redactor.js"
import * as SecretStore from "../host/capabilities/SecretStore.js"
import { HostOptions, type HostOptionsShape } from "../host/HostOptions.js"
import * as Instance from "../host/Instance.js"
import * as PluginConfigs from "../host/PluginConfigs.js"
import * as Installer from "../host/Installer.js"
import * as PluginHost from "../host/PluginHost.js"
import { PluginRecords } from "../host/PluginRecords.js"
import * as Environments from "../environments/Environments.js"
import * as Execution from "../environments/Execution.js"
import * as Leases from "../environments/Leases.js"
import * as Operator from "../environments/Operator.js"
import * as PluginAdmin from "../environments/PluginAdmin.js"
import * as Provider from "../environments/Provider.js"
import * as RunToken from "../environments/RunToken.js"
import * as RuntimeUrl from "../environments/RuntimeUrl.js"
import * as DataDir from "../store/DataDir.js"
import * as Database from "../store/Database.js"
import * as Agents from "../work/Agents.js"
import * as Companies from "../work/Companies.js"
import * as Runs from "../work/Runs.js"

export interface AppOptions {
  /** postgres://… or a SQLite file path; default `<dataDir>/gantry.db`. */
  readonly databaseUrl?: string | undefined
  readonly dataDir: string
  /** Root of local-driver workspaces; default GANTRY_WORKSPACES_DIR, else `<dataDir>-workspaces`. Never inside the data dir. */
  readonly workspacesDir?: string | undefined
  readonly host?: Partial<HostOptionsShape>
  readonly leases?: Partial<Leases.LeasesOptions>
  readonly runs?: Partial<Runs.RunsOptions>
  /** How runtimes reach this host back (known once the server listens). */
  readonly runtimeUrl?: RuntimeUrl.RuntimeUrlOptions
  /** Replace the plugin-backed providers (tests: `layerFakeProviders()` from gantry/testing). */
  readonly providers?: Layer.Layer<Provider.Providers, never, PluginHost.PluginHost>
}

/** Everything below the HTTP API. */
export const layer = <RU = never>(o: AppOptions, runtimeUrlLayer?: Layer.Layer<RuntimeUrl.RuntimeUrl, never, RU>) => {
  // the data dir is checked (and created 0700) before anything opens a file in it
  const database = Database.layer({ url: o.databaseUrl, dataDir: o.dataDir }).pipe(Layer.provideMerge(DataDir.layer(o.dataDir, o.workspacesDir)))
  // sandboxed workers never see the data dir or the local workspaces, wherever those are
  const hostOptions = Layer.effect(HostOptions, Effect.zipWith(HostOptions, DataDir.DataDir, (h, d) => ({
    ...h,
    workerIsolation: { ...h.workerIsolation, hidden: [...h.workerIsolation.hidden, d.path, d.workspacesDir] }
  }))).pipe(Layer.provide(HostOptions.layerConfigWith(o.host ?? {})))
  const base = Layer.mergeAll(hostOptions, Redactor.layer, NodeContext.layer)
  // one SecretStore: the capability backend (plugins' secrets.resolve) and the API/runs share it
  const stores = Layer.mergeAll(Capabilities.layerSql, PluginRecords.layerSql, Instance.layer, Operator.layer).pipe(
    // GANTRY_SECRETS_KEY when set (replicas must share one key), else the key file in the data dir
    Layer.provideMerge(Layer.effect(SecretStore.SecretStore, Effect.flatMap(SecretStore.optionsFromConfig, (c) => SecretStore.make({ ...c, dataDir: o.dataDir }))))
  )
  const host = PluginHost.layer
  const providers = o.providers ?? Provider.layerPluginHost
  const runtime = Layer.merge(
    runtimeUrlLayer ?? (o.runtimeUrl ? Layer.orDie(RuntimeUrl.layer(o.runtimeUrl)) : RuntimeUrl.layerStatic(["http://127.0.0.1:3100"])),
    RunToken.layerConfig
  )
  const hostServices = Layer.mergeAll(PluginConfigs.layer, JobScheduler.layer, providers, Installer.layer(o.dataDir))
  const envServices = Layer.mergeAll(Leases.layer(o.leases ?? {}), Execution.layer, Companies.layer)
  const work = Layer.mergeAll(Environments.layer, Agents.layer)
  const runSecrets = Layer.effect(Runs.RunSecrets, Effect.map(SecretStore.SecretStore, (store) => Runs.RunSecrets.of({
    resolveForRun: (companyId, ref) => Effect.mapError(store.reveal(companyId, ref.secretId, ref.version ?? null), (e) => e.message)
  })))
  return Layer.merge(Runs.layer({ dataDir: o.dataDir, ...o.runs }), PluginAdmin.layer).pipe(
    Layer.provideMerge(Layer.merge(work, runSecrets)),
    Layer.provideMerge(envServices),
    Layer.provideMerge(hostServices),
    Layer.provideMerge(runtime),
    Layer.provideMerge(host),
    Layer.provideMerge(stores),
    Layer.provideMerge(base),
    Layer.provideMerge(database)
  )
}
