// PluginHost: installs, starts, supervises, calls and stops plugins. One supervisor fiber per plugin
// (FiberMap keyed by id) owns a scope per worker incarnation: transport, Peer, subscriptions and
// invocations live in it and are released on crash or stop. Restart uses `restartPolicy`; a
// crash-loop breaker moves the plugin to `error`.
import {
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Fiber,
  FiberMap,
  Layer,
  Runtime,
  Schedule,
  Scope
} from "effect"
import { randomUUID } from "node:crypto"
import { OptionalMethods } from "../protocol/methods.js"
import type { InvocationContext } from "../protocol/envelope.js"
import { API_VERSION } from "../protocol/envelope.js"
import {
  NotImplemented,
  WorkerError,
  WorkerUnavailable,
  fromWire,
  type RpcError
} from "../protocol/errors.js"
import type { ManifestInfo } from "../protocol/manifest.js"
import type { HealthResult } from "../protocol/methods.js"
import * as Peer from "../rpc/Peer.js"
import type { PaperclipPlugin } from "../sdk/definePlugin.js"
import type { Plugin } from "../sdk/Plugin.js"
import { validateManifest } from "../protocol/manifest.js"
import { ManifestInvalid, PluginConflict, PluginNotFound, PluginStartFailed } from "./errors.js"
import { makeHandlers, type Invocation } from "./gates.js"
import { HostOptions, type HostOptionsShape } from "./HostOptions.js"
import { loadPluginFolder } from "./loader.js"
import { CapabilityStores } from "./Stores.js"
import { Redactor } from "./capabilities/Redactor.js"
import { PluginRecords } from "./PluginRecords.js"
import { inProcess, spawnWorker, type Transport } from "./Transport.js"
import { plan as planWorker, type Isolation } from "./WorkerSandbox.js"

export type PluginStatus = "installed" | "ready" | "disabled" | "error" | "uninstalled"
export type WorkerStatus = "stopped" | "starting" | "running" | "stopping" | "crashed" | "backoff"

export interface PluginSnapshot {
  readonly pluginId: string
  readonly version: string
  readonly displayName: string
  readonly status: PluginStatus
  readonly workerStatus: WorkerStatus
  readonly mode: "process" | "in-process"
  readonly pid: number | null
  readonly supportedMethods: ReadonlyArray<string>
  readonly capabilities: ReadonlyArray<string>
  readonly inactiveCapabilities: ReadonlyArray<string>
  readonly ignoredFields: ReadonlyArray<string>
  readonly lastError: string | null
  readonly health: (HealthResult & { readonly checkedAt: string }) | null
  readonly restarts: number
  readonly crashesInWindow: number
  /** How the last worker ran: in its sandbox, trusted (operator allow-list), or unsandboxed (flagged); null before a start. */
  readonly isolation: Isolation | null
  /** Where an installed package came from (SPEC §15); null for plugins registered from a folder in place. */
  readonly source: InstallSource | null
}

/** How a plugin package was installed (recorded with the plugin). */
export interface InstallSource {
  readonly kind: "folder" | "tarball" | "npm" | "bundled"
  /** What the operator gave: an absolute path or an npm spec. */
  readonly location: string
  /** npm-style integrity of what was installed (the tarball; for a folder, a digest of the copied files). */
  readonly sha512: string | null
  readonly packageName: string | null
  /** Run from the source folder itself (dev loop), not from a copy. */
  readonly linked: boolean
}

export interface CallOptions {
  /** The company the call is made for: the call becomes an invocation the worker's nested calls are scoped to. */
  readonly companyId?: string
  readonly timeoutMs?: number
  readonly onExecuteLog?: (stream: "stdout" | "stderr", chunk: string) => void
}

type Source = { readonly kind: "process"; readonly entry: string } | { readonly kind: "in-process"; readonly plugin: Plugin | PaperclipPlugin }

interface Running {
  readonly peer: Peer.Peer
  readonly invocations: Map<string, Invocation>
  readonly transport: Transport
  /** Host→worker calls not yet answered (an upgrade stops the old worker once this is 0). */
  inFlight: number
}

interface Entry {
  readonly pluginId: string
  /** Key of this incarnation's supervisor (an upgrade runs two side by side). */
  readonly key: string
  readonly installSource: InstallSource | null
  readonly root: string
  readonly info: ManifestInfo
  readonly source: Source
  status: PluginStatus
  workerStatus: WorkerStatus
  lastError: string | null
  health: PluginSnapshot["health"]
  supportedMethods: ReadonlyArray<string>
  crashes: Array<number>
  restarts: number
  current: Running | undefined
  stopSignal: Deferred.Deferred<void> | undefined
  stderrTail: string
  isolation?: Isolation | undefined
}

class WorkerCrashed extends Error {
  readonly _tag = "WorkerCrashed"
}

/** Restart backoff (SPEC §4): base doubling to max, ±25 % jitter. */
export const restartPolicy = (o: HostOptionsShape) =>
  Schedule.exponential(Duration.millis(o.restartBaseMs), 2).pipe(
    Schedule.modifyDelay((d) => Duration.min(d, Duration.millis(o.restartMaxMs))),
    Schedule.jitteredWith({ min: 0.75, max: 1.25 }),
    // a worker that stayed up well past the longest delay starts its backoff over
    Schedule.resetAfter(Duration.millis(o.restartMaxMs * 2))
  )

const timeoutFor = (o: HostOptionsShape, method: string, params: unknown): number => {
  if (method === "initialize") return o.initializeTimeoutMs
  if (method === "runJob") return o.jobTimeoutMs
  if (method.startsWith("environment")) {
    const t = (params as { timeoutMs?: unknown } | undefined)?.timeoutMs
    return (typeof t === "number" && t > 0 ? t : o.callTimeoutMs) + 30_000
  }
  return o.callTimeoutMs
}

const TAIL = 4096

export interface PluginHostShape {
  readonly install: (folder: string, source?: InstallSource) => Effect.Effect<PluginSnapshot, ManifestInvalid | PluginConflict>
  /** Start `folder` beside the running version, initialize and health-check it, switch calls to it,
   * then stop the old worker once its in-flight calls ended. On any failure the old one keeps serving. */
  readonly upgrade: (pluginId: string, folder: string, source: InstallSource) => Effect.Effect<PluginSnapshot, ManifestInvalid | PluginNotFound | PluginStartFailed | PluginConflict>
  /** Re-register the plugins recorded by a previous run of this instance, with their persisted status
   * (not started: the caller starts the ones that should run). */
  readonly restore: Effect.Effect<ReadonlyArray<PluginSnapshot>>
  readonly loadInProcess: (plugin: Plugin | PaperclipPlugin, manifest: unknown) => Effect.Effect<PluginSnapshot, ManifestInvalid | PluginConflict>
  readonly start: (pluginId: string) => Effect.Effect<PluginSnapshot, PluginNotFound | PluginStartFailed>
  readonly stop: (pluginId: string) => Effect.Effect<void, PluginNotFound>
  readonly disable: (pluginId: string) => Effect.Effect<void, PluginNotFound>
  readonly uninstall: (pluginId: string) => Effect.Effect<void, PluginNotFound>
  readonly list: Effect.Effect<ReadonlyArray<PluginSnapshot>>
  readonly status: (pluginId: string) => Effect.Effect<PluginSnapshot, PluginNotFound>
  readonly call: (pluginId: string, method: string, params: unknown, options?: CallOptions) => Effect.Effect<unknown, RpcError | PluginNotFound>
  readonly manifest: (pluginId: string) => Effect.Effect<ManifestInfo, PluginNotFound>
  /** Save a company's config for a plugin and send `configChanged` when its worker runs. */
  readonly configChanged: (pluginId: string, companyId: string, config: Record<string, unknown>) => Effect.Effect<void, PluginNotFound | RpcError>
  readonly stopAll: Effect.Effect<void>
}

export class PluginHost extends Context.Tag("gantry/PluginHost")<PluginHost, PluginHostShape>() {}

export const make = Effect.gen(function* () {
  const options = yield* HostOptions
  const stores = yield* CapabilityStores
  // secret values the host has seen are scrubbed from what workers send back (results, errors, crash text)
  const redactor = yield* Effect.map(Effect.serviceOption(Redactor), (o) => (o._tag === "Some" ? o.value : undefined))
  const scrub = <A>(a: A): A => (redactor ? redactor.redactValue(a) : a)
  const scrubError = (err: RpcError): RpcError => {
    const message = scrub(err.message)
    const data = scrub(err.data)
    return message === err.message && data === err.data ? err : fromWire(data === undefined ? { code: err.code, message } : { code: err.code, message, data })
  }
  // persisted when a PluginRecords layer is provided (the server does); in memory otherwise
  const records = yield* Effect.flatMap(Effect.serviceOption(PluginRecords), (o) =>
    o._tag === "Some" ? Effect.succeed(o.value) : Effect.provide(PluginRecords, PluginRecords.layerMemory))
  const entries = new Map<string, Entry>()
  const setStatus = (e: Entry, status: PluginStatus) =>
    Effect.suspend(() => {
      e.status = status
      return records.setStatus(e.pluginId, status, e.lastError)
    })
  const supervisors = yield* FiberMap.make<string>()
  let generation = 0
  const runtime = yield* Effect.runtime<never>()
  const runBackground = Runtime.runFork(runtime)

  const snapshot = (e: Entry): PluginSnapshot => ({
    pluginId: e.pluginId,
    version: e.info.manifest.version,
    displayName: e.info.manifest.displayName,
    status: e.status,
    workerStatus: e.workerStatus,
    mode: e.source.kind,
    pid: e.current?.transport.pid ?? null,
    supportedMethods: e.supportedMethods,
    capabilities: e.info.activeCapabilities,
    inactiveCapabilities: e.info.inactiveCapabilities,
    ignoredFields: e.info.ignoredFields,
    lastError: e.lastError,
    health: e.health,
    restarts: e.restarts,
    crashesInWindow: e.crashes.length,
    isolation: e.source.kind === "in-process" ? "trusted" : e.isolation ?? null,
    source: e.installSource
  })

  const find = (pluginId: string) =>
    Effect.suspend(() => {
      const e = entries.get(pluginId)
      return e && e.status !== "uninstalled"
        ? Effect.succeed(e)
        : Effect.fail(new PluginNotFound({ pluginId, message: `plugin "${pluginId}" is not installed` }))
    })

  const newEntry = (root: string, info: ManifestInfo, source: Source, installSource: InstallSource | null, status: PluginStatus, lastError: string | null): Entry => ({
    pluginId: info.manifest.id, key: `${info.manifest.id}#${++generation}`, installSource, root, info, source, status, workerStatus: "stopped",
    lastError, health: null, supportedMethods: [], crashes: [], restarts: 0, current: undefined, stopSignal: undefined, stderrTail: ""
  })
  const recordOf = (e: Entry) => ({
    id: e.pluginId, root: e.root, version: e.info.manifest.version, manifest: e.info.manifest, status: e.status, lastError: e.lastError,
    source: e.installSource
  })

  const register = (root: string, info: ManifestInfo, source: Source, restored?: { status: PluginStatus; lastError: string | null }, installSource?: InstallSource | null) =>
    Effect.suspend(() => {
      const id = info.manifest.id
      const existing = entries.get(id)
      if (existing && existing.status !== "uninstalled") {
        return Effect.fail(new PluginConflict({ pluginId: id, message: `plugin "${id}" is already installed` }))
      }
      const e = newEntry(root, info, source, installSource ?? null, restored?.status ?? "installed", restored?.lastError ?? null)
      entries.set(id, e)
      return Effect.as(records.upsert(recordOf(e)), snapshot(e))
    })

  const log = (e: Entry, level: "debug" | "info" | "warn" | "error", message: string) => stores.log.append(e.pluginId, level, message)

  const invocationFor = (r: Running, companyId: string, extra?: Omit<Invocation, "companyId">): InvocationContext => {
    const id = randomUUID()
    r.invocations.set(id, { companyId, ...extra })
    return { id, scope: { companyId } }
  }

  const callRunning = (_e: Entry, r: Running, method: string, params: unknown, o?: CallOptions) => {
    const timeoutMs = o?.timeoutMs ?? timeoutFor(options, method, params)
    const counted = <A, E, R>(self: Effect.Effect<A, E, R>) =>
      Effect.suspend(() => {
        r.inFlight++
        return Effect.ensuring(self, Effect.sync(() => void r.inFlight--))
      })
    if (!o?.companyId) return counted(r.peer.call(method, params, { timeoutMs }).pipe(Effect.map(scrub), Effect.mapError(scrubError)))
    const inv = invocationFor(r, o.companyId, o.onExecuteLog ? { onExecuteLog: o.onExecuteLog } : {})
    return counted(r.peer.call(method, params, { timeoutMs, invocation: inv }).pipe(
      Effect.map(scrub),
      Effect.mapError(scrubError),
      Effect.ensuring(Effect.sync(() => r.invocations.delete(inv.id)))
    ))
  }

  /** One incarnation of the worker: spawn, handshake, serve until exit/stop/unhealthy. */
  const runOnce = (e: Entry, firstStart: Deferred.Deferred<void, PluginStartFailed>) =>
    Effect.scoped(
      Effect.gen(function* () {
        const scope = yield* Effect.scope
        e.workerStatus = "starting"
        e.stderrTail = ""
        const manifest = e.info.manifest
        const launch = e.source.kind === "process"
          ? planWorker(options.workerIsolation, { pluginId: e.pluginId, root: e.root, entry: e.source.entry, execArgv: options.workerExecArgv })
          : undefined
        e.isolation = launch?.isolation
        if (launch?.warning) yield* log(e, "warn", launch.warning)
        const transport = e.source.kind === "process"
          ? yield* spawnWorker({
              launcher: launch?.launcher,
              entry: e.source.entry,
              cwd: e.root,
              env: { ...options.workerEnv, GANTRY_PLUGIN_ID: e.pluginId },
              execArgv: options.workerExecArgv,
              sigtermGraceMs: options.sigtermGraceMs,
              onStderr: (chunk) => {
                e.stderrTail = (e.stderrTail + chunk).slice(-TAIL)
                for (const line of chunk.split("\n")) if (line.trim()) runBackground(log(e, "warn", `stderr: ${line.slice(0, 2000)}`))
              }
            })
          : yield* inProcess(e.source.plugin)
        let exitDesc = "running"
        yield* Effect.forkIn(Effect.tap(transport.exited, (d) => Effect.sync(() => { exitDesc = d })), scope)
        const invocations = new Map<string, Invocation>()
        const running: { r?: Running } = {}
        const subscriptions = { keys: new Set<string>(), inFlight: 0 }
        const handlers = makeHandlers({
          pluginId: e.pluginId,
          capabilities: new Set(e.info.activeCapabilities),
          invocations,
          stores,
          workerScope: scope,
          redact: scrub,
          subscriptions,
          deliver: (event) => callRunning(e, running.r!, "onEvent", { event }, { companyId: event.companyId })
        })
        const peer = yield* Peer.make<never>({
          name: `plugin "${e.pluginId}"`,
          input: transport.input,
          output: transport.output,
          handlers,
          defaultTimeoutMs: options.callTimeoutMs,
          onStray: (text) => runBackground(log(e, "warn", text)),
          closedMessage: () =>
            `worker of plugin "${e.pluginId}" is unavailable (${exitDesc})${e.stderrTail.trim() ? `; stderr tail: ${e.stderrTail.trim().slice(-1000)}` : ""}`
        })
        const r: Running = { peer, invocations, transport, inFlight: 0 }
        running.r = r
        const init = yield* peer.call("initialize", {
          manifest,
          config: {},
          instanceInfo: { instanceId: options.instanceId, hostVersion: options.hostVersion },
          apiVersion: API_VERSION
        }, { timeoutMs: options.initializeTimeoutMs }).pipe(
          // a worker failing its setup often says why on stderr just before: give that a moment to arrive
          Effect.catchAll((err) => Effect.zipRight(
            Effect.ignore(Effect.timeout(transport.exited, Duration.millis(500))),
            Effect.fail(new WorkerCrashed(`initialize failed: ${err.message}`))
          ))
        )
        // subscriptions sent during setup (Paperclip workers do not await them) settle, then records
        // this incarnation did not subscribe to are retired
        yield* Effect.repeat(Effect.sync(() => subscriptions.inFlight), {
          while: (n) => n > 0,
          schedule: Schedule.spaced(Duration.millis(5)).pipe(Schedule.upTo(Duration.seconds(5)))
        })
        const dropped = yield* stores.events.retire(e.pluginId, [...subscriptions.keys])
        if (dropped > 0) yield* log(e, "info", `retired stale event subscriptions: ${dropped} undelivered deliveries dropped`)
        const methods = (init as { supportedMethods?: unknown } | null)?.supportedMethods
        e.supportedMethods = Array.isArray(methods) ? methods.filter((m): m is string => typeof m === "string") : []
        for (const companyId of yield* stores.config.companies(e.pluginId)) {
          const config = yield* stores.config.get(e.pluginId, companyId)
          yield* callRunning(e, r, "configChanged", { config, companyId }, { companyId }).pipe(
            Effect.catchAll((err) => log(e, "warn", `configChanged replay for company ${companyId} failed: ${err.message}`))
          )
        }
        e.current = r
        e.workerStatus = "running"
        yield* setStatus(e, "ready")
        yield* Deferred.succeed(firstStart, undefined)
        yield* log(e, "info", `worker started${transport.pid ? ` (pid ${transport.pid})` : ""}`)

        const unhealthy = yield* Deferred.make<string>()
        let failures = 0
        const check = Effect.gen(function* () {
          const res = yield* Effect.either(peer.call("health", {}, { timeoutMs: Math.min(options.callTimeoutMs, options.healthIntervalMs) }))
          const now = new Date(yield* Clock.currentTimeMillis).toISOString()
          if (res._tag === "Right" && (res.right as HealthResult | null)?.status !== "error") {
            failures = 0
            e.health = { ...(res.right as HealthResult), checkedAt: now }
          } else {
            failures++
            e.health = res._tag === "Right"
              ? { ...(res.right as HealthResult), checkedAt: now }
              : { status: "error", message: res.left.message, checkedAt: now }
            if (failures >= options.healthFailureLimit) yield* Deferred.succeed(unhealthy, `${failures} failed health checks in a row`)
          }
        })
        yield* Effect.forkIn(Effect.repeat(Effect.delay(check, Duration.millis(options.healthIntervalMs)), Schedule.forever), scope)

        const outcome = yield* Effect.raceAll([
          Effect.map(transport.exited, (d) => ({ _tag: "exited" as const, d })),
          Effect.as(Deferred.await(e.stopSignal!), { _tag: "stop" as const, d: "" }),
          Effect.map(Deferred.await(unhealthy), (d) => ({ _tag: "unhealthy" as const, d }))
        ])
        e.current = undefined
        if (outcome._tag === "stop") {
          e.workerStatus = "stopping"
          const bound = Duration.millis(manifest.shutdownTimeoutMs ?? options.defaultShutdownTimeoutMs)
          yield* Effect.timeout(
            Effect.zipRight(Effect.ignore(peer.call("shutdown", {}, { timeoutMs: Duration.toMillis(bound) })), transport.exited),
            bound
          ).pipe(Effect.ignore)
          return "stopped" as const
        }
        return yield* Effect.fail(new WorkerCrashed(outcome._tag === "exited"
          ? `worker exited unexpectedly (${outcome.d})${e.stderrTail.trim() ? `: ${e.stderrTail.trim().slice(-500)}` : ""}`
          : `worker unhealthy: ${outcome.d}`))
      })
    )

  const supervise = (e: Entry, firstStart: Deferred.Deferred<void, PluginStartFailed>) =>
    runOnce(e, firstStart).pipe(
      Effect.tapError((err) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const message = scrub(err.message)
          e.current = undefined
          e.workerStatus = "crashed"
          e.lastError = message
          e.crashes = [...e.crashes.filter((t) => now - t < options.crashWindowMs), now]
          yield* log(e, "error", message)
          const tail = scrub(e.stderrTail.trim())
          yield* Deferred.fail(firstStart, new PluginStartFailed({
            pluginId: e.pluginId,
            message: tail && !message.includes(tail.slice(-200)) ? `${message}; stderr tail: ${tail.slice(-1000)}` : message
          }))
          if (e.crashes.length >= options.crashLimit) {
            e.lastError = `crash loop: ${e.crashes.length} crashes within ${options.crashWindowMs} ms; last: ${message}`
            yield* setStatus(e, "error")
            yield* log(e, "error", `${e.lastError}; not restarting until re-enabled`)
            return
          }
          e.workerStatus = "backoff"
          e.restarts++
        })
      ),
      Effect.retry({ schedule: restartPolicy(options), while: () => e.status !== "error" }),
      Effect.catchAll(() => Effect.void),
      Effect.ensuring(Effect.sync(() => {
        e.current = undefined
        if (e.workerStatus !== "crashed") e.workerStatus = "stopped"
      }))
    )

  const start = (pluginId: string) =>
    Effect.gen(function* () {
      const e = yield* find(pluginId)
      if (e.current && e.workerStatus === "running") return snapshot(e)
      const running = yield* FiberMap.get(supervisors, e.key).pipe(Effect.option)
      if (running._tag === "Some") {
        yield* Deferred.succeed(e.stopSignal!, undefined)
        yield* Fiber.await(running.value)
      }
      e.crashes = []
      e.lastError = null
      if (e.status === "error" || e.status === "disabled") yield* setStatus(e, "installed")
      e.stopSignal = yield* Deferred.make<void>()
      const firstStart = yield* Deferred.make<void, PluginStartFailed>()
      yield* FiberMap.run(supervisors, e.key, supervise(e, firstStart))
      yield* Deferred.await(firstStart)
      return snapshot(e)
    })

  const stopEntry = (e: Entry) =>
    Effect.gen(function* () {
      const fiber = yield* FiberMap.get(supervisors, e.key).pipe(Effect.option)
      if (fiber._tag === "None") return
      if (e.stopSignal) yield* Deferred.succeed(e.stopSignal, undefined)
      if (e.workerStatus === "running" || e.workerStatus === "stopping") yield* Fiber.await(fiber.value)
      else yield* Fiber.interrupt(fiber.value)
      yield* FiberMap.remove(supervisors, e.key)
      e.workerStatus = "stopped"
    })

  const stopAll = Effect.suspend(() =>
    Effect.forEach([...entries.values()], stopEntry, { concurrency: "unbounded", discard: true })
  )
  yield* Effect.addFinalizer(() => stopAll)

  /** The old incarnation after a swap: wait (bounded) for its in-flight calls, then stop it. */
  const retire = (old: Entry) =>
    Effect.gen(function* () {
      const r = old.current
      if (r) {
        yield* Effect.repeat(Effect.sync(() => r.inFlight), {
          while: (n) => n > 0,
          schedule: Schedule.spaced(Duration.millis(10)).pipe(Schedule.upTo(Duration.millis(options.callTimeoutMs)))
        })
      }
      yield* stopEntry(old)
    })

  const upgrade = (pluginId: string, folder: string, installSource: InstallSource) =>
    Effect.gen(function* () {
      const old = yield* find(pluginId)
      const l = yield* loadPluginFolder(folder, options.hostVersion)
      if (l.info.manifest.id !== pluginId) {
        return yield* new PluginConflict({ pluginId, message: `the package is plugin "${l.info.manifest.id}", not "${pluginId}"` })
      }
      const next = newEntry(l.root, l.info, { kind: "process", entry: l.workerEntry }, installSource, old.status === "disabled" ? "disabled" : "installed", null)
      if (old.status !== "disabled") {
        next.stopSignal = yield* Deferred.make<void>()
        const firstStart = yield* Deferred.make<void, PluginStartFailed>()
        yield* FiberMap.run(supervisors, next.key, supervise(next, firstStart))
        const started = yield* Effect.either(Deferred.await(firstStart))
        const health = started._tag === "Right" && next.current
          ? yield* Effect.either(callRunning(next, next.current, "health", {}, { timeoutMs: Math.min(options.callTimeoutMs, 10_000) }))
          : undefined
        const healthProblem = health === undefined ? undefined
          : health._tag === "Left" ? `its first health check failed: ${health.left.message}`
          : (health.right as HealthResult | null)?.status === "error" ? `its first health check answered "error"${(health.right as HealthResult).message ? `: ${(health.right as HealthResult).message}` : ""}`
          : undefined
        if (started._tag === "Left" || healthProblem !== undefined) {
          const tail = next.stderrTail.trim()
          yield* stopEntry(next)
          // the old version's status is what the records say again
          yield* records.setStatus(pluginId, old.status, old.lastError)
          const why = started._tag === "Left" ? started.left.message : healthProblem!
          return yield* new PluginStartFailed({
            pluginId,
            message: scrub(`version ${l.info.manifest.version} of plugin "${pluginId}" did not start: ${why}${tail && !why.includes(tail.slice(-200)) ? `; stderr tail: ${tail.slice(-1000)}` : ""}; version ${old.info.manifest.version} keeps serving`)
          })
        }
      }
      // switch: new calls find the new incarnation from here on
      entries.set(pluginId, next)
      yield* records.upsert(recordOf(next))
      yield* log(next, "info", `upgraded from ${old.info.manifest.version} to ${next.info.manifest.version}`)
      yield* retire(old)
      return snapshot(next)
    })

  const host: PluginHostShape = {
    install: (folder, installSource) =>
      Effect.flatMap(loadPluginFolder(folder, options.hostVersion), (l) => register(l.root, l.info, { kind: "process", entry: l.workerEntry }, undefined, installSource ?? null)),
    upgrade,
    restore: Effect.gen(function* () {
      const out: Array<PluginSnapshot> = []
      for (const r of yield* records.list) {
        if (r.status === "uninstalled" || entries.has(r.id) || r.root === "<in-process>") continue
        const loaded = yield* Effect.either(loadPluginFolder(r.root, options.hostVersion))
        if (loaded._tag === "Left") {
          yield* stores.log.append(r.id, "error", `cannot restore plugin from ${r.root}: ${loaded.left.message}`)
          yield* records.setStatus(r.id, "error", loaded.left.message)
          continue
        }
        const l = loaded.right
        const snap = yield* Effect.either(register(l.root, l.info, { kind: "process", entry: l.workerEntry }, { status: r.status, lastError: r.lastError }, r.source ?? null))
        if (snap._tag === "Right") out.push(snap.right)
      }
      return out
    }),
    loadInProcess: (plugin, manifest) =>
      Effect.suspend((): Effect.Effect<PluginSnapshot, ManifestInvalid | PluginConflict> => {
        const checked = validateManifest(manifest, { hostVersion: options.hostVersion })
        if (checked._tag === "Left") {
          return Effect.fail(new ManifestInvalid({ path: "<in-process>", problems: checked.left, message: `invalid manifest: ${checked.left.join("; ")}` }))
        }
        return register("<in-process>", checked.right, { kind: "in-process", plugin })
      }),
    start,
    stop: (pluginId) => Effect.flatMap(find(pluginId), stopEntry),
    disable: (pluginId) => Effect.flatMap(find(pluginId), (e) => Effect.zipRight(stopEntry(e), setStatus(e, "disabled"))),
    // an uninstalled plugin's subscriptions are retired: events stop queueing for it
    uninstall: (pluginId) => Effect.flatMap(find(pluginId), (e) =>
      Effect.zipRight(stopEntry(e), Effect.zipRight(setStatus(e, "uninstalled"), Effect.asVoid(stores.events.retire(pluginId, []))))),
    list: Effect.sync(() => [...entries.values()].filter((e) => e.status !== "uninstalled").map(snapshot)),
    status: (pluginId) => Effect.map(find(pluginId), snapshot),
    manifest: (pluginId) => Effect.map(find(pluginId), (e) => e.info),
    call: (pluginId, method, params, o) =>
      Effect.suspend((): Effect.Effect<unknown, RpcError | PluginNotFound> => {
        const e = entries.get(pluginId)
        if (!e || e.status === "uninstalled") return Effect.fail(new PluginNotFound({ pluginId, message: `plugin "${pluginId}" is not installed` }))
        const r = e.current
        if (!r) return Effect.fail(new WorkerUnavailable({ message: `plugin "${pluginId}" worker is not running (${e.workerStatus})` }))
        if ((OptionalMethods as ReadonlyArray<string>).includes(method) && method.startsWith("environment") && !e.supportedMethods.includes(method)) {
          return Effect.fail(new NotImplemented({ message: `plugin "${pluginId}" does not implement ${method}` }))
        }
        return callRunning(e, r, method, params, o)
      }),
    configChanged: (pluginId, companyId, config) =>
      Effect.gen(function* () {
        const e = yield* find(pluginId)
        // the running worker must accept the config before it is saved (a Paperclip single-tenant
        // worker answers -32006 for a second company; nothing is stored then)
        if (e.current) yield* callRunning(e, e.current, "configChanged", { config, companyId }, { companyId })
        yield* stores.config.set(pluginId, companyId, config)
      }),
    stopAll
  }
  return host
})

export const layer = Layer.scoped(PluginHost, make)

export { WorkerError }
export type { Scope }
