// Command execution in an environment (SPEC §8): `local` runs on the host with @effect/platform
// Command and exactly the given env; `sandbox` calls the provider's environmentExecute through the
// host. Output streams while the command runs (callback, or `executeStream` as a Stream); the host
// enforces timeoutMs + grace; retained stdout/stderr are capped.
import { Command, CommandExecutor } from "@effect/platform"
import { Chunk, Context, Duration, Effect, Fiber, Layer, Option, Schema, Stream, type Scope } from "effect"
import { RpcTimeout } from "../protocol/errors.js"
import type { Lease } from "./Leases.js"
import { Providers } from "./Provider.js"

export const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
export const OUTPUT_CAP = 1024 * 1024
/** Host-side grace on top of a command's own timeout (SPEC §8). */
export const HOST_GRACE_MS = 30_000
const KILL_GRACE = Duration.millis(250)

export interface ExecRequest {
  readonly command: string
  readonly args?: ReadonlyArray<string>
  readonly cwd?: string
  /** The complete environment of the command (a default PATH is added when absent). */
  readonly env: Readonly<Record<string, string>>
  readonly stdin?: string
  readonly timeoutMs: number
}

export interface ExecResult {
  readonly exitCode: number | null
  readonly signal: string | null
  readonly timedOut: boolean
  readonly stdout: string
  readonly stderr: string
  readonly truncated: boolean
}

export type ExecTarget =
  | { readonly _tag: "local"; readonly cwd: string }
  | { readonly _tag: "sandbox"; readonly lease: Lease; readonly cwd: string | undefined }

export type OutputChunk = { readonly stream: "stdout" | "stderr"; readonly chunk: string }
export type OnChunk = (stream: "stdout" | "stderr", chunk: string) => void

export class ExecFailed extends Schema.TaggedError<ExecFailed>()("ExecFailed", {
  message: Schema.String
}) {
  get status() { return 502 }
}

/** Keeps at most `cap` characters of a stream's output. */
class Capped {
  text = ""
  truncated = false
  constructor(readonly cap: number) {}
  add(s: string) {
    if (this.text.length >= this.cap) {
      this.truncated = true
      return
    }
    const room = this.cap - this.text.length
    if (s.length > room) {
      this.text += s.slice(0, room)
      this.truncated = true
    } else this.text += s
  }
}

export class Executor extends Context.Tag("gantry/Executor")<Executor, {
  readonly execute: (target: ExecTarget, request: ExecRequest, onChunk?: OnChunk) => Effect.Effect<ExecResult, ExecFailed>
}>() {}

/** The same execution as a Stream of output chunks ending with the result. */
export const executeStream = (target: ExecTarget, request: ExecRequest) =>
  Stream.unwrapScoped(
    Effect.gen(function* () {
      const executor = yield* Executor
      return Stream.asyncScoped<OutputChunk | { readonly result: ExecResult }, ExecFailed>((emit) =>
        Effect.forkScoped(
          executor.execute(target, request, (stream, chunk) => void emit.single({ stream, chunk })).pipe(
            Effect.matchEffect({
              onFailure: (e) => Effect.promise(() => emit.fail(e)),
              onSuccess: (result) => Effect.promise(() => emit.single({ result })).pipe(Effect.zipRight(Effect.promise(() => emit.end())))
            })
          )
        )
      )
    })
  )

const withPath = (env: Readonly<Record<string, string>>) => (env.PATH ? env : { ...env, PATH: DEFAULT_PATH })

const executeLocal = (executor: CommandExecutor.CommandExecutor, cwd: string, req: ExecRequest, onChunk: OnChunk | undefined) =>
  Effect.scoped(
    Effect.gen(function* () {
      let cmd = Command.make(req.command, ...(req.args ?? [])).pipe(
        Command.workingDirectory(req.cwd ?? cwd),
        Command.env(withPath(req.env), { extendEnv: false })
      )
      // no stdin given: an empty one, closed at start, so a command that reads it ends (SPEC §14)
      cmd = Command.feed(cmd, req.stdin ?? "")
      const proc = yield* Effect.provideService(Command.start(cmd), CommandExecutor.CommandExecutor, executor)
      const out = new Capped(OUTPUT_CAP)
      const err = new Capped(OUTPUT_CAP)
      const pump = (s: Stream.Stream<Uint8Array, unknown>, name: "stdout" | "stderr", into: Capped) =>
        s.pipe(Stream.decodeText(), Stream.runForEach((c) => Effect.sync(() => {
          into.add(c)
          onChunk?.(name, c)
        })), Effect.ignore)
      const pumps = yield* Effect.fork(Effect.all([pump(proc.stdout, "stdout", out), pump(proc.stderr, "stderr", err)], { concurrency: 2 }))
      const code = yield* proc.exitCode.pipe(Effect.timeoutOption(Duration.millis(req.timeoutMs)))
      let timedOut = false
      let exitCode: number | null = null
      let signal: string | null = null
      if (Option.isNone(code)) {
        timedOut = true
        signal = "SIGTERM"
        yield* Effect.ignore(proc.kill("SIGTERM"))
        const gone = yield* Effect.timeoutOption(Effect.ignore(proc.exitCode), KILL_GRACE)
        if (Option.isNone(gone)) {
          signal = "SIGKILL"
          yield* Effect.ignore(proc.kill("SIGKILL"))
        }
      } else {
        exitCode = Number(code.value)
      }
      yield* Effect.timeoutOption(Fiber.join(pumps), Duration.seconds(2))
      return { exitCode, signal, timedOut, stdout: out.text, stderr: err.text, truncated: out.truncated || err.truncated }
    })
  ).pipe(Effect.mapError((e) => new ExecFailed({ message: `local execution failed: ${(e as { message?: string }).message ?? String(e)}` })))

export const make = Effect.gen(function* () {
  const providers = yield* Providers
  const commandExecutor = yield* CommandExecutor.CommandExecutor

  const executeSandbox = (lease: Lease, cwd: string | undefined, req: ExecRequest, onChunk: OnChunk | undefined) =>
    Effect.gen(function* () {
      const out = new Capped(OUTPUT_CAP)
      const err = new Capped(OUTPUT_CAP)
      let streamed = false
      const res = yield* providers.call(lease.pluginId, "environmentExecute", {
        driverKey: lease.driverKey,
        companyId: lease.companyId,
        environmentId: lease.environmentId,
        config: lease.config,
        lease: { providerLeaseId: lease.providerLeaseId, metadata: lease.metadata },
        command: req.command,
        ...(req.args ? { args: req.args } : {}),
        ...((req.cwd ?? cwd) ? { cwd: req.cwd ?? cwd } : {}),
        env: withPath(req.env),
        ...(req.stdin !== undefined ? { stdin: req.stdin } : {}),
        timeoutMs: req.timeoutMs
      }, {
        companyId: lease.companyId,
        timeoutMs: req.timeoutMs + HOST_GRACE_MS,
        onExecuteLog: (stream, chunk) => {
          streamed = true
          ;(stream === "stderr" ? err : out).add(chunk)
          onChunk?.(stream, chunk)
        }
      }).pipe(
        Effect.map((r) => ({ timedOut: false as const, r: r as Partial<ExecResult> & { metadata?: { truncated?: boolean } } })),
        Effect.catchIf((e): e is RpcTimeout => e._tag === "RpcTimeout", () => Effect.succeed({ timedOut: true as const, r: undefined })),
        Effect.mapError((e) => new ExecFailed({ message: `sandbox execution failed: ${e.message}` }))
      )
      if (res.timedOut || !res.r) {
        return { exitCode: null, signal: null, timedOut: true, stdout: out.text, stderr: err.text, truncated: out.truncated || err.truncated }
      }
      const r = res.r
      // a provider that does not stream still returns its output in the result
      if (!streamed) {
        if (r.stdout) {
          out.add(r.stdout)
          onChunk?.("stdout", r.stdout)
        }
        if (r.stderr) {
          err.add(r.stderr)
          onChunk?.("stderr", r.stderr)
        }
      }
      return {
        exitCode: typeof r.exitCode === "number" ? r.exitCode : null,
        signal: r.signal ?? null,
        timedOut: r.timedOut === true,
        stdout: out.text,
        stderr: err.text,
        truncated: out.truncated || err.truncated || r.metadata?.truncated === true
      }
    })

  return Executor.of({
    execute: (target, req, onChunk) =>
      target._tag === "local" ? executeLocal(commandExecutor, target.cwd, req, onChunk) : executeSandbox(target.lease, target.cwd, req, onChunk)
  })
})

export const layer = Layer.effect(Executor, make)

export type { Scope, Chunk }
