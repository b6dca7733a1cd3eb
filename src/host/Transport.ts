// How a worker is reached: a child process on stdio (the normal case) or an in-process plugin on an
// in-memory stream pair (SPEC §4 in-process mode). Both are scoped: closing the scope ends the worker.
import { Deferred, Duration, Effect, Fiber, type Scope } from "effect"
import { spawn } from "node:child_process"
import { createRequire } from "node:module"
import { PassThrough } from "node:stream"
import { pathToFileURL } from "node:url"
import { toPlugin, type PaperclipPlugin } from "../sdk/definePlugin.js"
import type { Plugin } from "../sdk/Plugin.js"
import { serve } from "../sdk/worker.js"

export interface Transport {
  /** The worker's output (its stdout). */
  readonly input: NodeJS.ReadableStream
  /** The worker's input (its stdin). */
  readonly output: NodeJS.WritableStream
  /** Completes with a description once the worker has ended. */
  readonly exited: Effect.Effect<string>
  readonly isAlive: () => boolean
  readonly pid: number | undefined
}

export interface ProcessOptions {
  readonly entry: string
  readonly cwd: string
  readonly env: Record<string, string>
  readonly execArgv: ReadonlyArray<string>
  readonly sigtermGraceMs: number
  readonly onStderr: (chunk: string) => void
  /** Run node through this (the worker sandbox, src/host/WorkerSandbox.ts): `command ...args node …`. */
  readonly launcher?: { readonly command: string; readonly args: ReadonlyArray<string> } | undefined
}

const require = createRequire(import.meta.url)
let tsxLoader: string | undefined
const tsxImport = () => (tsxLoader ??= pathToFileURL(require.resolve("tsx")).href)

/** Spawn `node [execArgv] entry` with exactly `env`; release: SIGTERM, grace, SIGKILL. */
export const spawnWorker = (o: ProcessOptions): Effect.Effect<Transport, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const exited = yield* Deferred.make<string>()
      const args = [...o.execArgv, ...(o.entry.endsWith(".ts") ? ["--import", tsxImport()] : []), o.entry]
      const child = o.launcher
        ? spawn(o.launcher.command, [...o.launcher.args, process.execPath, ...args], { cwd: o.cwd, env: o.env, stdio: ["pipe", "pipe", "pipe"] })
        : spawn(process.execPath, args, { cwd: o.cwd, env: o.env, stdio: ["pipe", "pipe", "pipe"] })
      child.stderr!.setEncoding("utf8")
      child.stderr!.on("data", (c: string) => o.onStderr(c))
      child.stdin!.on("error", () => {})
      const done = (desc: string) => Deferred.unsafeDone(exited, Effect.succeed(desc))
      child.on("exit", (code, signal) => done(signal ? `killed by ${signal}` : `exit code ${code}`))
      child.on("error", (e) => done(`spawn failed: ${e.message}`))
      // resolves true when the child has exited, false after `ms`; needs no interruption, so it
      // also bounds the wait inside an (uninterruptible) finalizer of an interrupted fiber
      const exitWithin = (ms: number) =>
        Effect.async<boolean>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.succeed(true))
          const onExit = () => {
            clearTimeout(timer)
            resume(Effect.succeed(true))
          }
          const timer = setTimeout(() => {
            child.off("exit", onExit)
            resume(Effect.succeed(false))
          }, ms)
          child.once("exit", onExit)
        })
      return {
        transport: {
          input: child.stdout!,
          output: child.stdin!,
          exited: Deferred.await(exited),
          isAlive: () => child.exitCode === null && child.signalCode === null,
          pid: child.pid
        } satisfies Transport,
        child,
        exitWithin
      }
    }),
    ({ child, exitWithin }) =>
      Effect.gen(function* () {
        if (child.exitCode !== null || child.signalCode !== null) return
        child.stdin?.end()
        child.kill("SIGTERM")
        if (!(yield* exitWithin(o.sigtermGraceMs))) {
          child.kill("SIGKILL")
          yield* exitWithin(5_000)
        }
      })
  ).pipe(Effect.map((r) => r.transport))

/** Run a plugin definition inside this process on an in-memory stream pair. */
export const inProcess = (plugin: Plugin | PaperclipPlugin): Effect.Effect<Transport, never, Scope.Scope> =>
  Effect.gen(function* () {
    const toWorker = new PassThrough()
    const fromWorker = new PassThrough()
    const exited = yield* Deferred.make<string>()
    const fiber = yield* Effect.forkDaemon(Effect.scoped(serve(toPlugin(plugin), { input: toWorker, output: fromWorker })).pipe(
      Effect.onExit(() => Effect.sync(() => fromWorker.end())),
      Effect.ensuring(Deferred.succeed(exited, "in-process worker ended"))
    ))
    yield* Effect.addFinalizer(() => Effect.sync(() => toWorker.end()).pipe(Effect.zipRight(Fiber.interrupt(fiber))))
    let alive = true
    yield* Effect.forkScoped(Effect.tap(Deferred.await(exited), () => Effect.sync(() => { alive = false })))
    return {
      input: fromWorker,
      output: toWorker,
      exited: Deferred.await(exited),
      isAlive: () => alive,
      pid: undefined
    }
  })
