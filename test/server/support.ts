// Shared set-up for the HTTP API tests: `gantry serve` as a real child process (URL and admin token
// parsed from its stdout), its process tree, a small JSON client over fetch, an SSE reader, waiting on
// conditions, the fake-sandbox inventory and pre-installing a fixture plugin into a data dir.
import { Effect, Layer } from "effect"
import { spawn, type ChildProcess } from "node:child_process"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { expect } from "vitest"
import { loadPluginFolder } from "../../src/host/loader.js"
import { HOST_VERSION } from "../../src/host/HostOptions.js"
import { PluginRecords } from "../../src/host/PluginRecords.js"
import * as Database from "../../src/store/Database.js"
import { isAlive, root } from "../helpers.js"

// ---------------------------------------------------------------- processes

/** Direct children of `pid` (zombies included: the caller filters with isAlive). */
const childrenOf = (pid: number): Array<number> => {
  const out: Array<number> = []
  let tasks: Array<string> = []
  try {
    tasks = readdirSync(`/proc/${pid}/task`)
  } catch {
    return out
  }
  for (const tid of tasks) {
    try {
      for (const p of readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(/\s+/).filter(Boolean)) out.push(Number(p))
    } catch {
      // task gone
    }
  }
  return out
}

/** Every live descendant of `pid` (workers, their commands, tsx's esbuild service). */
export const descendants = (pid: number): Array<number> => {
  const out: Array<number> = []
  const queue = [pid]
  while (queue.length > 0) {
    for (const c of childrenOf(queue.shift()!)) {
      if (isAlive(c)) out.push(c)
      queue.push(c)
    }
  }
  return out
}

const killQuietly = (pid: number, signal: NodeJS.Signals) => {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------- waiting

/** Poll `check` until it returns a value other than undefined/false, or fail after `timeoutMs`. */
export const waitFor = async <A>(what: string, check: () => Promise<A | undefined | false> | A | undefined | false, timeoutMs = 15_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await check()
      if (v !== undefined && v !== false) return v
      last = v
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

// ---------------------------------------------------------------- the server process

export interface ServerProcess {
  readonly url: string
  /** Printed on the first start of a data dir / database only. */
  readonly adminToken: string | undefined
  readonly pid: number
  readonly child: ChildProcess
  readonly output: () => string
  /** Resolves with the exit code or signal once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  readonly isRunning: () => boolean
}

export interface StartOptions {
  readonly dataDir: string
  readonly databaseUrl?: string
  readonly env?: Record<string, string>
  readonly startTimeoutMs?: number
}

/** `gantry serve --port 0` as a child process; resolves once it printed its URL. */
export const startServer = async (o: StartOptions): Promise<ServerProcess> => {
  const env: Record<string, string> = {}
  // none of the test runner's GANTRY_* settings leak into the server
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("GANTRY_")) env[k] = v
  Object.assign(env, o.env ?? {})
  const args = ["--import", "tsx", "src/cli/main.ts", "serve", "--port", "0", "--data-dir", o.dataDir,
    ...(o.databaseUrl ? ["--database-url", o.databaseUrl] : [])]
  const child = spawn(process.execPath, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  child.stdout!.setEncoding("utf8").on("data", (d: string) => void (out += d))
  child.stderr!.setEncoding("utf8").on("data", (d: string) => void (out += d))
  let running = true
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      running = false
      resolve({ code, signal })
    }))
  const url = await waitFor("the server's URL", () => {
    if (!running) throw new Error(`gantry serve exited early:\n${out}`)
    return /Gantry is serving on (http:\/\/\S+)/.exec(out)?.[1]
  }, o.startTimeoutMs ?? 30_000).catch((e) => {
    killQuietly(child.pid!, "SIGKILL")
    throw e
  })
  // the token line follows the URL line in the same write
  const adminToken = /Admin token[^:]*: (gantry_admin_\S+)/.exec(out)?.[1]
  return { url, adminToken, pid: child.pid!, child, output: () => out, exited, isRunning: () => running }
}

/** Stop the server and everything under it: `signal` first, SIGKILL for whatever outlives `graceMs`. */
export const stopServer = async (s: ServerProcess, signal: NodeJS.Signals = "SIGTERM", graceMs = 20_000) => {
  const tree = descendants(s.pid)
  if (s.isRunning()) killQuietly(s.pid, signal)
  const timer = setTimeout(() => killQuietly(s.pid, "SIGKILL"), graceMs)
  await s.exited
  clearTimeout(timer)
  // orphans (if any) get no second chance
  await waitFor("the server's process tree to be gone", () => tree.every((p) => !isAlive(p)), 10_000).catch(() => {
    for (const p of tree) killQuietly(p, "SIGKILL")
  })
}

/** SIGKILL a process tree without any grace (test cleanup). */
export const killTree = (pids: ReadonlyArray<number>) => {
  for (const p of pids) killQuietly(p, "SIGKILL")
}

// ---------------------------------------------------------------- HTTP

export interface Reply<T = any> {
  readonly status: number
  readonly body: T
  readonly text: string
  readonly headers: Headers
}

export interface RequestOptions {
  readonly token?: string | undefined
  /** JSON-encoded unless `raw` is given. */
  readonly body?: unknown
  readonly raw?: string | Uint8Array
  readonly headers?: Record<string, string>
}

export const request = async (base: string, method: string, path: string, o: RequestOptions = {}): Promise<Reply> => {
  const headers: Record<string, string> = { ...(o.headers ?? {}) }
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`
  let body: string | Uint8Array | undefined
  if (o.raw !== undefined) body = o.raw
  else if (o.body !== undefined) {
    body = JSON.stringify(o.body)
    headers["content-type"] ??= "application/json"
  }
  const res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) })
  const text = await res.text()
  let parsed: unknown = text
  try {
    parsed = text === "" ? null : JSON.parse(text)
  } catch {
    // not JSON (SSE)
  }
  return { status: res.status, body: parsed, text, headers: res.headers }
}

/** A client bound to a base URL and a token. */
export const client = (base: string, token?: string) => ({
  get: (path: string, o: RequestOptions = {}) => request(base, "GET", path, { token, ...o }),
  post: (path: string, body?: unknown, o: RequestOptions = {}) => request(base, "POST", path, { token, ...(body !== undefined ? { body } : {}), ...o }),
  put: (path: string, body?: unknown, o: RequestOptions = {}) => request(base, "PUT", path, { token, ...(body !== undefined ? { body } : {}), ...o }),
  patch: (path: string, body?: unknown, o: RequestOptions = {}) => request(base, "PATCH", path, { token, ...(body !== undefined ? { body } : {}), ...o }),
  del: (path: string, o: RequestOptions = {}) => request(base, "DELETE", path, { token, ...o })
})
export type Client = ReturnType<typeof client>

/** The answer is `status` with a 2xx JSON body; returns the body. */
export const ok = <T = any>(r: Reply<T>, status = 200): T => {
  if (r.status !== status) throw new Error(`expected ${status}, got ${r.status}: ${r.text.slice(0, 500)}`)
  return r.body
}

/** The API's error format: exactly `{error: {code, message, status, details?}}` with the HTTP status inside. */
export const expectError = (r: Reply, status: number, code?: string | RegExp) => {
  if (r.status !== status) throw new Error(`expected ${status}, got ${r.status}: ${r.text.slice(0, 500)}`)
  expect(r.headers.get("content-type") ?? "").toContain("application/json")
  expect(Object.keys(r.body)).toEqual(["error"])
  const e = r.body.error as Record<string, unknown>
  expect(Object.keys(e).filter((k) => k !== "details").sort()).toEqual(["code", "message", "status"])
  expect(e.status).toBe(status)
  expect(typeof e.code).toBe("string")
  expect(typeof e.message).toBe("string")
  expect((e.message as string).length).toBeGreaterThan(0)
  if (code !== undefined) expect(e.code).toMatch(typeof code === "string" ? new RegExp(`^${code}$`) : code)
  return e as { code: string; message: string; status: number; details?: unknown }
}

// ---------------------------------------------------------------- SSE

export interface SseEvent {
  readonly event: string
  readonly id: string | undefined
  readonly data: any
  /** ms since the stream opened */
  readonly at: number
}

/** Read `GET path` as a Server-Sent Events stream; `onEvent` returning true stops reading early. */
export const readSse = async (
  base: string, path: string, token: string,
  onEvent: (e: SseEvent, soFar: ReadonlyArray<SseEvent>) => Promise<boolean | void> | boolean | void = () => {},
  timeoutMs = 30_000
) => {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), timeoutMs)
  const started = Date.now()
  const events: Array<SseEvent> = []
  try {
    const res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" }, signal: controller.signal })
    if (res.status !== 200) throw new Error(`SSE ${path}: ${res.status} ${await res.text()}`)
    expect(res.headers.get("content-type")).toContain("text/event-stream")
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    let buf = ""
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buf += value
      let i: number
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i)
        buf = buf.slice(i + 2)
        let event = "message"
        let id: string | undefined
        const data: Array<string> = []
        for (const line of frame.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7)
          else if (line.startsWith("id: ")) id = line.slice(4)
          else if (line.startsWith("data: ")) data.push(line.slice(6))
        }
        const e: SseEvent = { event, id, data: JSON.parse(data.join("\n")), at: Date.now() - started }
        events.push(e)
        if (await onEvent(e, events)) {
          controller.abort()
          return events
        }
      }
    }
    return events
  } finally {
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------- fake-sandbox, plugins

/** Live sandboxes in a fake-sandbox inventory file (none when the file does not exist yet). */
export const liveSandboxes = (inventoryFile: string): Array<{ providerLeaseId: string; runId: string; processes: Array<{ pid: number }> }> =>
  existsSync(inventoryFile) ? (JSON.parse(readFileSync(inventoryFile, "utf8")) as { sandboxes: Array<any> }).sandboxes : []

/** Record a plugin folder as installed in the database a server will use: `gantry serve` restores
 * and starts it next to the bundled plugins, in place (no copy, unlike `POST /api/plugins`). */
export const preinstallPlugin = (folder: string, db: { readonly dataDir: string; readonly url?: string }) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const loaded = yield* loadPluginFolder(folder, HOST_VERSION)
      yield* (yield* PluginRecords).upsert({
        id: loaded.info.manifest.id, root: loaded.root, version: loaded.info.manifest.version, manifest: loaded.info.manifest, status: "installed", lastError: null
      })
    }).pipe(Effect.provide(PluginRecords.layerSql.pipe(Layer.provide(Database.layer({ url: db.url, dataDir: db.dataDir })))))
  )

export const TERMINAL_LEASE = ["released", "failed", "expired"]
