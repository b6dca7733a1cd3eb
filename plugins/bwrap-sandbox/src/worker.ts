// bwrap-sandbox worker: the local bubblewrap sandbox provider as a plugin, on the public SDK only.
// The logic lives in core.ts; this file wires each environment hook to it, streams output through
// `execute.log` and turns a cancelled call (host timeout or interruption → `$/cancelRequest`) into an
// abort that kills the command's sandbox.
import { Data, Effect, Runtime } from "effect"
import { Plugin, runWorker, SandboxProvider } from "gantry/sdk"
import { createBwrapSandbox } from "./core.js"

class BwrapSandboxFailure extends Data.TaggedError("BwrapSandboxFailure")<{ readonly message: string }> {}

const core = createBwrapSandbox()

/** A core operation as an Effect: interruption aborts it and waits until it has stopped. */
const run = <A>(f: (signal: AbortSignal) => Promise<A>) =>
  Effect.async<A, BwrapSandboxFailure>((resume) => {
    const controller = new AbortController()
    const settled = f(controller.signal).then(
      (a) => resume(Effect.succeed(a)),
      (e: unknown) => resume(Effect.fail(new BwrapSandboxFailure({ message: e instanceof Error ? e.message : String(e) })))
    )
    return Effect.promise(() => {
      controller.abort()
      return settled
    })
  })

const plugin = Plugin.make({
  setup: Effect.sync(() => {
    // sandboxes run in their own process groups, so a signal to the worker does not reach them: kill
    // them on the way out (a SIGKILLed worker's sandboxes die by --die-with-parent, and are journaled)
    process.on("exit", () => core.killAllSync())
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      process.once(signal, () => {
        core.killAllSync()
        process.exit(128 + (signal === "SIGTERM" ? 15 : 2))
      })
    }
  }),
  health: Effect.sync(() => ({ status: "ok" as const, details: { activeProcesses: core.activeProcesses() } })),
  shutdown: run(() => core.shutdown()),
  environment: {
    validateConfig: (p) => run(() => core.validateConfig(p.config)),
    probe: (p) => run((signal) => core.probe(p, { signal })),
    acquireLease: (p) => run((signal) => core.acquire(p, { signal })),
    resumeLease: (p) => run((signal) => core.resume(p, { signal })),
    releaseLease: (p) => run((signal) => core.release(p, { signal })),
    destroyLease: (p) => run((signal) => core.destroy(p, { signal })),
    realizeWorkspace: (p) => run((signal) => core.realize(p, { signal })),
    execute: (p) =>
      Effect.gen(function* () {
        const provider = yield* SandboxProvider
        // the runtime carries this invocation, so each chunk is routed to this call's execute
        const runtime = yield* Effect.runtime<never>()
        const log = (stream: "stdout" | "stderr", chunk: string) => Runtime.runSync(runtime)(provider.log(stream, chunk))
        return yield* run((signal) => core.execute(p, { signal, onLog: log }))
      })
  }
})

export default plugin
runWorker(plugin, import.meta.url)
