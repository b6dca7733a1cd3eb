// A bare NDJSON driver for worker processes: plain child_process, one JSON-RPC message per line, no
// Gantry code on the host side. It answers the worker's nested requests with a given function and
// records everything the worker writes, so two workers can be compared message by message.
import { Duration, Effect, type Scope } from "effect"
import { spawn } from "node:child_process"
import { createRequire } from "node:module"
import { createInterface } from "node:readline"
import { pathToFileURL } from "node:url"

export type RpcId = number | string

export interface WireMessage {
  readonly jsonrpc?: unknown
  readonly id?: RpcId | null
  readonly method?: string
  readonly params?: unknown
  readonly result?: unknown
  readonly error?: { readonly code: number; readonly message: string; readonly data?: unknown }
  readonly paperclipInvocationId?: string
}

/** What the driver sends back for a nested (worker→host) request. */
export type Answer = { readonly result: unknown } | { readonly error: { readonly code: number; readonly message: string } }

export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface DriverOptions {
  readonly entry: string
  readonly cwd: string
  readonly answer: (request: WireMessage) => Answer
  readonly timeoutMs?: number
}

export interface Driver {
  readonly pid: number
  /** Write one raw line (a newline is appended). */
  readonly writeLine: (line: string) => void
  /** Send a request and wait for the response with its id. */
  readonly request: (id: RpcId, method: string, params: unknown, envelope?: Record<string, unknown>) => Effect.Effect<WireMessage, string>
  /** Send a notification. */
  readonly notify: (method: string, params: unknown, envelope?: Record<string, unknown>) => void
  /** Wait for the response with this id (`null` for errors about unparseable input). */
  readonly response: (id: RpcId | null) => Effect.Effect<WireMessage, string>
  /** Wait until the worker has written a message matching `predicate`. */
  readonly seen: (predicate: (m: WireMessage) => boolean, what: string) => Effect.Effect<WireMessage, string>
  /** Everything the worker wrote, in order: responses, nested requests, notifications. */
  readonly messages: ReadonlyArray<WireMessage>
  /** Lines on stdout that were not JSON. */
  readonly strayLines: ReadonlyArray<string>
  readonly stderr: () => string
  readonly exited: Effect.Effect<Exited, string>
  readonly isRunning: () => boolean
}

const require = createRequire(import.meta.url)
const tsxImport = () => pathToFileURL(require.resolve("tsx")).href

/** Spawn `node entry` (through tsx for .ts) with a minimal environment; closing the scope kills it if still alive. */
export const spawnDriver = (o: DriverOptions): Effect.Effect<Driver, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const timeout = Duration.millis(o.timeoutMs ?? 15_000)
      const args = [...(o.entry.endsWith(".ts") ? ["--import", tsxImport()] : []), o.entry]
      const child = spawn(process.execPath, args, {
        cwd: o.cwd,
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", NODE_ENV: "production", TZ: "UTC" },
        stdio: ["pipe", "pipe", "pipe"]
      })
      const messages: Array<WireMessage> = []
      const strayLines: Array<string> = []
      const watchers = new Set<() => void>()
      let stderr = ""
      let exit: Exited | undefined
      const changed = () => {
        for (const w of [...watchers]) w()
      }
      const write = (msg: object) => {
        if (child.stdin.writable) child.stdin.write(JSON.stringify(msg) + "\n")
      }

      child.stdin.on("error", () => {})
      child.stderr.setEncoding("utf8")
      child.stderr.on("data", (c: string) => {
        stderr += c
      })
      // "close", not "exit": every line the worker wrote has been read by then.
      child.on("close", (code, signal) => {
        exit = { code, signal }
        changed()
      })
      createInterface({ input: child.stdout, crlfDelay: Infinity }).on("line", (line) => {
        if (line.trim() === "") return
        let msg: WireMessage
        try {
          msg = JSON.parse(line) as WireMessage
        } catch {
          strayLines.push(line)
          changed()
          return
        }
        messages.push(msg)
        if (typeof msg.method === "string" && msg.id !== undefined && msg.id !== null) {
          write({ jsonrpc: "2.0", id: msg.id, ...o.answer(msg) })
        }
        changed()
      })

      /** Wait until `check` returns a value; fail with `what` after the timeout or if the worker exits first. */
      const until = <A>(check: () => A | undefined, what: string, allowExited = false): Effect.Effect<A, string> =>
        Effect.async<A, string>((resume) => {
          const attempt = () => {
            const found = check()
            if (found !== undefined) {
              watchers.delete(attempt)
              resume(Effect.succeed(found))
            } else if (exit && !allowExited) {
              watchers.delete(attempt)
              resume(Effect.fail(`worker exited (${JSON.stringify(exit)}) before ${what}; stderr: ${stderr.slice(-2000)}`))
            }
          }
          watchers.add(attempt)
          attempt()
          return Effect.sync(() => void watchers.delete(attempt))
        }).pipe(Effect.timeoutFail({ duration: timeout, onTimeout: () => `timed out waiting for ${what}; stderr: ${stderr.slice(-2000)}` }))

      const isResponse = (m: WireMessage) => m.method === undefined && ("result" in m || "error" in m)
      const response = (id: RpcId | null) =>
        until(() => messages.find((m) => isResponse(m) && m.id === id), `the response to ${JSON.stringify(id)}`)

      const driver: Driver = {
        pid: child.pid!,
        writeLine: (line) => {
          if (child.stdin.writable) child.stdin.write(line + "\n")
        },
        request: (id, method, params, envelope) =>
          Effect.suspend(() => {
            write({ jsonrpc: "2.0", id, method, params, ...envelope })
            return response(id)
          }),
        notify: (method, params, envelope) => write({ jsonrpc: "2.0", method, params, ...envelope }),
        response,
        seen: (predicate, what) => until(() => messages.find(predicate), what),
        messages,
        strayLines,
        stderr: () => stderr,
        exited: until(() => exit, "the worker to exit", true),
        isRunning: () => exit === undefined
      }
      return { driver, child }
    }),
    ({ child, driver }) =>
      driver.isRunning()
        ? Effect.sync(() => child.kill("SIGKILL")).pipe(Effect.zipRight(Effect.ignore(driver.exited)))
        : Effect.void
  ).pipe(Effect.map(({ driver }) => driver))
