// The fake-sandbox provider's in-process twin for server-side tests: a `Providers` layer running the
// same core as plugins/fake-sandbox (same deterministic lease ids, knobs and inventory file), with test
// controls (availability, call log, inventory) provided by the same layer as `FakeSandboxControl`.
import { Context, Data, Duration, Effect, Layer } from "effect"
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import * as Core from "../../plugins/fake-sandbox/src/core.js"
import { Providers, ProviderNotFound, type ProviderCallOptions, type ProviderInfo, type ProviderMethod } from "../environments/Provider.js"
import { RpcTimeout, WorkerError, WorkerUnavailable, type RpcError } from "../protocol/errors.js"
import { ParamsSchemas, paramsDecoder } from "../protocol/methods.js"

export const FAKE_SANDBOX_PLUGIN_ID = Core.PLUGIN_ID
export const FAKE_SANDBOX_DRIVER_KEY = Core.DRIVER_KEY
/** The plugin folder, for `host.install(fakeSandboxPluginDir)` in tests that fork the real worker. */
export const fakeSandboxPluginDir: string = fileURLToPath(new URL("../../plugins/fake-sandbox", import.meta.url))
/** The provider lease id the fake gives a run id: `fake-<sha256(runId)[0..12]>`. */
export const fakeLeaseId: (runId: string) => string = Core.leaseIdFor

/** One live sandbox in an inventory file. */
export type FakeSandboxEntry = Core.SandboxEntry

/** Fault-injection and placement knobs of a fake-sandbox environment config (SPEC §13). */
export interface FakeSandboxKnobs {
  readonly inventoryFile?: string
  readonly workspaceRoot?: string
  readonly failOn?: ReadonlyArray<Core.FaultOp>
  readonly failTimes?: number
  readonly latencyMs?: number
  readonly hangOn?: ReadonlyArray<Core.FaultOp>
  readonly loseAcquireResponse?: boolean
  readonly expireAfterMs?: number
}

export interface FakeProvidersOptions {
  /** Inventory used when a call's config names none (default: a fresh temp dir, removed with the layer). */
  readonly inventoryFile?: string
  /** Workspace root used when a call's config names none (default: next to the default inventory). */
  readonly workspaceRoot?: string
}

/** A provider call the twin received, for assertions ("released with cancelActiveWork", "never acquired"). */
export interface FakeProviderCall {
  readonly method: ProviderMethod
  readonly params: unknown
  readonly companyId: string
  readonly outcome: "success" | "failure" | "interrupted"
  readonly error?: string
}

export class FakeInventoryError extends Data.TaggedError("FakeInventoryError")<{ readonly file: string; readonly message: string }> {}

export class FakeSandboxControl extends Context.Tag("gantry/testing/FakeSandboxControl")<FakeSandboxControl, {
  /** The inventory/workspace used by configs that name none. */
  readonly inventoryFile: string
  readonly workspaceRoot: string
  /** An environment config for this twin: `{provider: "fake-sandbox/fake", inventoryFile, workspaceRoot, ...knobs}`. */
  readonly environmentConfig: (knobs?: FakeSandboxKnobs) => Record<string, unknown>
  /** Simulate the provider plugin being down: `isAvailable` → false, every call → -32000. */
  readonly setAvailable: (available: boolean) => Effect.Effect<void>
  /** Live sandboxes of an inventory file (default: `inventoryFile`); expired ones are pruned first. */
  readonly inventory: (file?: string) => Effect.Effect<ReadonlyArray<FakeSandboxEntry>, FakeInventoryError>
  /** Every call so far, oldest first. */
  readonly calls: Effect.Effect<ReadonlyArray<FakeProviderCall>>
  /** Commands the twin is running right now. */
  readonly activeProcesses: Effect.Effect<number>
  /** Kill every command the twin runs for a lease (what `cancelActiveWork` does); returns how many. */
  readonly cancel: (providerLeaseId: string) => Effect.Effect<number>
  /** Forget the `failTimes` counters of an inventory file (default: `inventoryFile`). */
  readonly resetFaults: (file?: string) => Effect.Effect<void, FakeInventoryError>
}>() {}

const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e))

/** Live sandboxes recorded in an inventory file (the twin's or the plugin worker's). */
export const readInventory = (file: string): Effect.Effect<ReadonlyArray<FakeSandboxEntry>, FakeInventoryError> =>
  Effect.tryPromise({ try: () => Core.readInventory(file), catch: (e) => new FakeInventoryError({ file, message: messageOf(e) }) })

const ALL_METHODS: ReadonlyArray<ProviderMethod> = [
  "environmentValidateConfig", "environmentProbe", "environmentAcquireLease", "environmentResumeLease",
  "environmentReleaseLease", "environmentDestroyLease", "environmentRealizeWorkspace", "environmentExecute"
]

const INFO: ProviderInfo = {
  pluginId: Core.PLUGIN_ID,
  driverKey: Core.DRIVER_KEY,
  displayName: Core.DISPLAY_NAME,
  configSchema: Core.CONFIG_SCHEMA as unknown as Record<string, unknown>,
  supportsReusableLeases: true,
  supportedMethods: ALL_METHODS
}

// the host's default: environment calls get their own timeoutMs (or 30 s) + 30 s
const DEFAULT_CALL_TIMEOUT_MS = 30_000
const timeoutFor = (params: unknown): number => {
  const t = (params as { timeoutMs?: unknown } | null)?.timeoutMs
  return (typeof t === "number" && t > 0 ? t : DEFAULT_CALL_TIMEOUT_MS) + 30_000
}

/** A core operation as an Effect: interruption (or a timeout) aborts it and waits until it has stopped. */
const fromCore = <A>(f: (signal: AbortSignal) => Promise<A>): Effect.Effect<A, WorkerError> =>
  Effect.async<A, WorkerError>((resume) => {
    const controller = new AbortController()
    const settled = f(controller.signal).then(
      (a) => resume(Effect.succeed(a)),
      (e: unknown) => resume(Effect.fail(new WorkerError({ message: messageOf(e) })))
    )
    return Effect.promise(() => {
      controller.abort()
      return settled
    })
  })

const dispatch = (
  core: Core.FakeSandbox,
  method: ProviderMethod,
  params: any,
  onLog: ProviderCallOptions["onExecuteLog"]
): Effect.Effect<unknown, WorkerError> => {
  switch (method) {
    case "environmentValidateConfig":
      return Effect.sync(() => core.validateConfig(params.config))
    case "environmentProbe":
      return fromCore((signal) => core.probe(params, { signal }))
    case "environmentAcquireLease":
      return fromCore((signal) => core.acquire(params, { signal }))
    case "environmentResumeLease":
      return fromCore((signal) => core.resume(params, { signal }))
    case "environmentReleaseLease":
      return fromCore((signal) => core.release(params, { signal }))
    case "environmentDestroyLease":
      return fromCore((signal) => core.destroy(params, { signal }))
    case "environmentRealizeWorkspace":
      return fromCore((signal) => core.realize(params, { signal }))
    case "environmentExecute":
      return fromCore((signal) => core.execute(params, { signal, onLog }))
  }
}

const makeTempRoot = Effect.acquireRelease(
  Effect.promise(() => mkdtemp(join(tmpdir(), "gantry-fake-sandbox-twin-"))),
  (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true }))
)

/**
 * `Providers` served in-process by the fake-sandbox core (provider `"fake-sandbox/fake"` or `"fake"`),
 * plus `FakeSandboxControl`. Knobs come from each call's `params.config`, exactly as in the plugin.
 * Closing the layer kills the twin's running commands and removes its default temp dir.
 */
export const layerFakeProviders = (options: FakeProvidersOptions = {}): Layer.Layer<Providers | FakeSandboxControl> =>
  Layer.scopedContext(
    Effect.gen(function* () {
      const root = options.inventoryFile !== undefined && options.workspaceRoot !== undefined ? undefined : yield* makeTempRoot
      const inventoryFile = options.inventoryFile ?? join(root!, "inventory.json")
      const workspaceRoot = options.workspaceRoot ?? join(root!, "workspaces")
      const core = Core.createFakeSandbox({ inventoryFile, workspaceRoot })
      yield* Effect.addFinalizer(() => Effect.promise(() => core.shutdown()))
      let available = true
      const calls: Array<FakeProviderCall> = []

      const call = (pluginId: string, method: ProviderMethod, params: unknown, o: ProviderCallOptions): Effect.Effect<unknown, RpcError> =>
        Effect.suspend((): Effect.Effect<unknown, RpcError> => {
          if (pluginId !== Core.PLUGIN_ID) return Effect.fail(new WorkerUnavailable({ message: `plugin "${pluginId}" is not installed` }))
          if (!available) return Effect.fail(new WorkerUnavailable({ message: `plugin "${pluginId}" worker is not running` }))
          const decoded = paramsDecoder(method, ParamsSchemas[method] as never)(params)
          if (decoded._tag === "Left") return Effect.fail(decoded.left)
          const timeoutMs = o.timeoutMs ?? timeoutFor(params)
          const record = (outcome: FakeProviderCall["outcome"], error?: string) =>
            Effect.sync(() => {
              calls.push({ method, params, companyId: o.companyId, outcome, ...(error !== undefined ? { error } : {}) })
            })
          return dispatch(core, method, decoded.right, o.onExecuteLog).pipe(
            Effect.timeoutFail({
              duration: Duration.millis(timeoutMs),
              onTimeout: () => new RpcTimeout({ message: `fake-sandbox: call "${method}" timed out after ${timeoutMs} ms` })
            }),
            Effect.tapBoth({ onFailure: (e) => record("failure", e.message), onSuccess: () => record("success") }),
            Effect.onInterrupt(() => record("interrupted"))
          )
        })

      const providers = Providers.of({
        list: Effect.succeed([INFO]),
        resolve: (provider) => {
          const [a, b] = provider.includes("/") ? provider.split("/", 2) : [undefined, provider]
          return b === Core.DRIVER_KEY && (a === undefined || a === Core.PLUGIN_ID)
            ? Effect.succeed(INFO)
            : Effect.fail(new ProviderNotFound({ provider, message: `no installed plugin provides sandbox driver "${provider}"` }))
        },
        isAvailable: (pluginId) => Effect.sync(() => available && pluginId === Core.PLUGIN_ID),
        call
      })
      const inventory = (file?: string) =>
        Effect.tryPromise({
          try: () => core.inventory(file ?? inventoryFile),
          catch: (e) => new FakeInventoryError({ file: file ?? inventoryFile, message: messageOf(e) })
        })
      const control = FakeSandboxControl.of({
        inventoryFile,
        workspaceRoot,
        environmentConfig: (knobs = {}) => ({ provider: `${Core.PLUGIN_ID}/${Core.DRIVER_KEY}`, inventoryFile, workspaceRoot, ...knobs }),
        setAvailable: (a) => Effect.sync(() => void (available = a)),
        inventory,
        calls: Effect.sync(() => [...calls]),
        activeProcesses: Effect.sync(() => core.activeProcesses()),
        cancel: (id) => Effect.promise(() => core.cancel(id)),
        resetFaults: (file) =>
          Effect.tryPromise({
            try: () => core.resetFaults(file ?? inventoryFile),
            catch: (e) => new FakeInventoryError({ file: file ?? inventoryFile, message: messageOf(e) })
          })
      })
      return Context.make(Providers, providers).pipe(Context.add(FakeSandboxControl, control))
    })
  )
