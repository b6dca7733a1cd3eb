// Hostile HTTP input (SPEC §14, issue 13) against a real `gantry serve` process: each request gets
// its documented status in the house error format with a request id, is logged with that id, and
// changes nothing (every table compared before and after). Also: a run given no stdin gets it
// closed, so `cat` ends instead of waiting for its timeout, on every driver.
import Sqlite from "better-sqlite3"
import { request as httpRequest } from "node:http"
import { chmodSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { MAX_BODY_BYTES, MAX_JSON_DEPTH } from "../../src/server/Limits.js"
import { fixture } from "../helpers.js"
import { client, descendants, expectError, killTree, ok, preinstallPlugin, type Reply, startServer, stopServer, type ServerProcess, waitFor } from "./support.js"

const TABLES = [
  "companies", "environments", "agents", "runs", "run_logs", "leases", "secrets", "secret_versions", "api_tokens",
  "events", "plugin_configs", "plugin_state", "job_runs", "plugins"
] as const

let server: ServerProcess | undefined
let dataDir = ""
let tree: Array<number> = []
const s = { company: "", agent: "", env: "" }

/** Every row of every table (sorted), read from the server's SQLite file. */
const snapshot = () => {
  const db = new Sqlite(join(dataDir, "gantry.db"), { readonly: true, fileMustExist: true })
  try {
    const out: Record<string, Array<string>> = {}
    for (const t of TABLES) out[t] = (db.prepare(`SELECT * FROM ${t}`).all() as Array<unknown>).map((r) => JSON.stringify(r)).sort()
    return out
  } finally {
    db.close()
  }
}

interface RawReply {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly text: string
  readonly continued: boolean
}

/** One request over node:http (fetch refuses TRACE and cannot send bytes that are not UTF-8 as a
 * string); `body` as chunks is sent chunked (no Content-Length); `expectContinue` waits for 100. */
const raw = (method: string, path: string, o: {
  readonly body?: Buffer | ReadonlyArray<Buffer>
  readonly headers?: Record<string, string>
  readonly token?: string | null
  readonly expectContinue?: boolean
} = {}) =>
  new Promise<RawReply>((resolve, reject) => {
    const url = new URL(path, server!.url)
    const headers: Record<string, string> = { ...(o.headers ?? {}) }
    if (o.token !== null) headers.authorization = `Bearer ${o.token ?? server!.adminToken}`
    if (Buffer.isBuffer(o.body)) headers["content-length"] = String(o.body.length)
    if (o.expectContinue) headers.expect = "100-continue"
    let continued = false
    let answered = false
    const req = httpRequest({ method, host: url.hostname, port: url.port, path: url.pathname + url.search, headers, agent: false }, (res) => {
      answered = true
      let text = ""
      res.setEncoding("utf8").on("data", (d: string) => void (text += d)).on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, continued }))
    })
    // writing the rest of a refused body may fail once the answer is in: the answer is what counts
    req.on("error", (e) => (answered ? undefined : reject(new Error(`${method} ${path}: ${String(e)}`))))
    const send = () => {
      if (o.body === undefined) return void req.end()
      if (Buffer.isBuffer(o.body)) return void req.end(o.body)
      const chunks = [...o.body]
      const pump = () => {
        while (chunks.length > 0) {
          if (!req.write(chunks.shift()!)) return void req.once("drain", pump)
        }
        req.end()
      }
      pump()
    }
    if (o.expectContinue) req.once("continue", () => {
      continued = true
      send()
    })
    else send()
  })

/** `raw`'s answer as a Reply for expectError. */
const asReply = (r: RawReply): Reply => {
  const headers = new Headers()
  for (const [k, v] of Object.entries(r.headers)) if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(", ") : v)
  let body: unknown = r.text
  try {
    body = JSON.parse(r.text)
  } catch {
    // not JSON
  }
  return { status: r.status, headers, text: r.text, body }
}

const nested = (depth: number, inner = "1") => "[".repeat(depth) + inner + "]".repeat(depth)
const nestedObject = (depth: number) => `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "gantry-hostile-"))
  await preinstallPlugin(fixture("paperclip-basic"), { dataDir })
  await preinstallPlugin(fixture("server-webhooks"), { dataDir })
  // a loaded machine can take a while to start a server with its plugins
  server = await startServer({ dataDir, startTimeoutMs: 120_000 })
  const admin = client(server.url, server.adminToken)
  await waitFor("the plugins to run", async () => {
    const plugins = ok(await admin.get("/api/plugins")) as Array<{ pluginId: string; workerStatus: string }>
    return ["paperclip-basic", "server-webhooks", "hello-promise", "hello-effect", "fake-sandbox"].every((id) => plugins.some((p) => p.pluginId === id && p.workerStatus === "running"))
  }, 60_000)
  s.company = ok(await admin.post("/api/companies", { name: "acme" }), 201).id
  s.env = ok(await admin.post(`/api/companies/${s.company}/environments`, { name: "local", driver: "local" }), 201).id
  s.agent = ok(await admin.post(`/api/companies/${s.company}/agents`, { name: "a", command: "true" }), 201).id
  ok(await admin.post(`/api/companies/${s.company}/secrets`, { name: "s", value: "kept" }), 201)
  ok(await admin.post("/api/plugins/hello-effect/disable"))
  tree = descendants(server.pid)
}, 240_000)

afterAll(async () => {
  if (server) await stopServer(server)
  killTree(tree)
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
})

describe("hostile HTTP input", () => {
  it("each hostile request gets its status and error body, is logged with its request id, and changes nothing", async () => {
    const c = s.company
    const json = (text: string | Buffer, contentType = "application/json") => ({ body: Buffer.isBuffer(text) ? text : Buffer.from(text), headers: { "content-type": contentType } })
    const invalidUtf8 = (prefix: string, suffix: string) => Buffer.concat([Buffer.from(prefix), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from(suffix)])
    const cases: Array<{ name: string; method: string; path: string; o?: Parameters<typeof raw>[2]; status: number; code: string; allow?: string; detailsPath?: Array<string> }> = [
      // plugin-side "no handler": the caller's mistake
      { name: "unknown data key (Gantry SDK, Promise)", method: "POST", path: `/api/plugins/hello-promise/companies/${c}/data/nosuchkey`, o: json("{}"), status: 404, code: "data_key_not_found" },
      { name: "unknown action key (Gantry SDK)", method: "POST", path: `/api/plugins/hello-promise/companies/${c}/actions/nosuchkey`, o: json("{}"), status: 404, code: "action_key_not_found" },
      { name: "unknown data key (Paperclip SDK)", method: "POST", path: `/api/plugins/paperclip-basic/companies/${c}/data/nosuchkey`, o: json("{}"), status: 404, code: "data_key_not_found" },
      { name: "unknown action key (Paperclip SDK)", method: "POST", path: `/api/plugins/paperclip-basic/companies/${c}/actions/nosuchkey`, o: json("{}"), status: 404, code: "action_key_not_found" },
      // the operator disabled it
      { name: "data of a disabled plugin", method: "POST", path: `/api/plugins/hello-effect/companies/${c}/data/greeting`, o: json("{}"), status: 409, code: "plugin_not_running" },
      { name: "action of a disabled plugin", method: "POST", path: `/api/plugins/hello-effect/companies/${c}/actions/greet`, o: json("{}"), status: 409, code: "plugin_not_running" },
      // JSON depth
      { name: "JSON 5000 deep", method: "POST", path: "/api/companies", o: json(nested(5000)), status: 400, code: "json_too_deep" },
      { name: "JSON 2000 deep", method: "POST", path: "/api/companies", o: json(nested(2000)), status: 400, code: "json_too_deep" },
      { name: "JSON 100000 deep", method: "POST", path: "/api/companies", o: json(nested(100_000)), status: 400, code: "json_too_deep" },
      { name: "JSON one over the limit", method: "POST", path: "/api/companies", o: json(nested(MAX_JSON_DEPTH + 1)), status: 400, code: "json_too_deep" },
      { name: "plugin params 5000 deep", method: "POST", path: `/api/plugins/hello-promise/companies/${c}/data/greeting`, o: json(`{"params":${nestedObject(5000)}}`), status: 400, code: "json_too_deep" },
      { name: "action params 5000 deep", method: "POST", path: `/api/plugins/paperclip-basic/companies/${c}/actions/x`, o: json(`{"params":{"a":${nested(5000)}}}`), status: 400, code: "json_too_deep" },
      { name: "config 5000 deep", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, o: json(`{"label":${nested(5000)}}`), status: 400, code: "json_too_deep" },
      // strict UTF-8
      { name: "invalid UTF-8 in a company name", method: "POST", path: "/api/companies", o: json(invalidUtf8(`{"name":"`, `"}`)), status: 400, code: "invalid_utf8" },
      { name: "invalid UTF-8 in a secret value", method: "POST", path: `/api/companies/${c}/secrets`, o: json(invalidUtf8(`{"name":"n2","value":"`, `"}`)), status: 400, code: "invalid_utf8" },
      { name: "invalid UTF-8 in an agent command", method: "PATCH", path: `/api/agents/${s.agent}`, o: json(invalidUtf8(`{"command":"`, `"}`)), status: 400, code: "invalid_utf8" },
      { name: "a lone surrogate's bytes", method: "POST", path: "/api/companies", o: json(Buffer.concat([Buffer.from(`{"name":"`), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from(`"}`)])), status: 400, code: "invalid_utf8" },
      // methods a route lacks
      { name: "TRACE", method: "TRACE", path: "/api/companies", status: 405, code: "method_not_allowed", allow: "GET, HEAD, POST" },
      { name: "DELETE", method: "DELETE", path: "/api/companies", status: 405, code: "method_not_allowed", allow: "GET, HEAD, POST" },
      { name: "PUT", method: "PUT", path: `/api/agents/${s.agent}`, o: json(`{"name":"x"}`), status: 405, code: "method_not_allowed", allow: "DELETE, GET, HEAD, PATCH" },
      { name: "PATCH", method: "PATCH", path: `/api/companies/${c}`, o: json(`{"name":"x"}`), status: 405, code: "method_not_allowed", allow: "GET, HEAD" },
      { name: "OPTIONS", method: "OPTIONS", path: `/api/companies/${c}/secrets`, status: 405, code: "method_not_allowed", allow: "GET, HEAD, POST" },
      { name: "GET on a POST-only route", method: "GET", path: `/api/runs/x/cancel`, status: 405, code: "method_not_allowed", allow: "POST" },
      { name: "an unknown path stays 404", method: "TRACE", path: "/api/nope", status: 404, code: "not_found" },
      // content types
      { name: "JSON sent as text/plain", method: "POST", path: "/api/companies", o: json(`{"name":"x"}`, "text/plain"), status: 415, code: "unsupported_media_type" },
      { name: "JSON sent as a form", method: "POST", path: `/api/companies/${c}/secrets`, o: json(`{"name":"n3","value":"v"}`, "application/x-www-form-urlencoded"), status: 415, code: "unsupported_media_type" },
      { name: "multipart", method: "POST", path: `/api/companies/${c}/agents`, o: json("--x\r\n\r\n--x--", "multipart/form-data; boundary=x"), status: 415, code: "unsupported_media_type" },
      { name: "JSON in latin-1", method: "POST", path: "/api/companies", o: json(`{"name":"x"}`, "application/json; charset=iso-8859-1"), status: 415, code: "unsupported_media_type" },
      // rules the document states and the server enforces, refused by the schema
      { name: "empty company name", method: "POST", path: "/api/companies", o: json(`{"name":""}`), status: 400, code: "invalid_request", detailsPath: ["name"] },
      { name: "blank agent name", method: "POST", path: `/api/companies/${c}/agents`, o: json(`{"name":"   ","command":"true"}`), status: 400, code: "invalid_request", detailsPath: ["name"] },
      { name: "empty command", method: "POST", path: `/api/companies/${c}/agents`, o: json(`{"name":"b","command":""}`), status: 400, code: "invalid_request", detailsPath: ["command"] },
      { name: "empty secret value", method: "POST", path: `/api/companies/${c}/secrets`, o: json(`{"name":"n4","value":""}`), status: 400, code: "invalid_request", detailsPath: ["value"] },
      { name: "empty rotated value", method: "POST", path: `/api/companies/${c}/secrets/x/rotate`, o: json(`{"value":""}`), status: 400, code: "invalid_request", detailsPath: ["value"] },
      { name: "limit= (empty)", method: "GET", path: `/api/companies/${c}/runs?limit=`, status: 400, code: "invalid_request", detailsPath: ["limit"] },
      { name: "limit=0", method: "GET", path: `/api/companies/${c}/runs?limit=0`, status: 400, code: "invalid_request", detailsPath: ["limit"] },
      { name: "limit=1.5", method: "GET", path: "/api/plugins/hello-promise/logs?limit=1.5", status: 400, code: "invalid_request", detailsPath: ["limit"] },
      { name: "timeoutMs 0", method: "POST", path: `/api/companies/${c}/agents`, o: json(`{"name":"b","command":"true","timeoutMs":0}`), status: 400, code: "invalid_request", detailsPath: ["timeoutMs"] },
      { name: "timeoutMs fractional", method: "PATCH", path: `/api/agents/${s.agent}`, o: json(`{"timeoutMs":1500.5}`), status: 400, code: "invalid_request", detailsPath: ["timeoutMs"] },
      { name: "heartbeat []", method: "PATCH", path: `/api/agents/${s.agent}`, o: json(`{"heartbeat":[]}`), status: 400, code: "invalid_request" },
      { name: "heartbeat with both", method: "PATCH", path: `/api/agents/${s.agent}`, o: json(`{"heartbeat":{"cron":"* * * * *","everySeconds":5}}`), status: 400, code: "invalid_request" },
      { name: "sandbox config without provider", method: "POST", path: `/api/companies/${c}/environments`, o: json(`{"name":"sb","driver":"sandbox","config":{}}`), status: 400, code: "invalid_request" },
      { name: "sandbox without config", method: "POST", path: `/api/companies/${c}/environments`, o: json(`{"name":"sb","driver":"sandbox"}`), status: 400, code: "invalid_request" },
      { name: "run env key not a variable name", method: "POST", path: `/api/agents/${s.agent}/runs`, o: json(`{"env":{"NOT-A-NAME":"x"}}`), status: 400, code: "invalid_request" },
      { name: "run env key starting with a digit", method: "POST", path: `/api/agents/${s.agent}/runs`, o: json(`{"env":{"1X":"x"}}`), status: 400, code: "invalid_request" },
      { name: "run env GANTRY_*", method: "POST", path: `/api/agents/${s.agent}/runs`, o: json(`{"env":{"GANTRY_RUN_ID":"x"}}`), status: 400, code: "invalid_request" },
      { name: "agent env key not a variable name", method: "PATCH", path: `/api/agents/${s.agent}`, o: json(`{"env":{"a b":"x"}}`), status: 400, code: "invalid_request" }
    ]

    const before = snapshot()
    const problems: Array<string> = []
    const ids: Array<string> = []
    for (const k of cases) {
      const r = asReply(await raw(k.method, k.path, k.o))
      const label = `${k.name} (${k.method} ${k.path})`
      try {
        const e = expectError(r, k.status, k.code)
        if (k.allow) expect(r.headers.get("allow")).toBe(k.allow)
        if (k.detailsPath) expect((Array.isArray(e.details) ? e.details : []).map((d: any) => JSON.stringify(d.path))).toContain(JSON.stringify(k.detailsPath))
        if (k.code === "json_too_deep") expect(e.message).toContain(String(MAX_JSON_DEPTH))
        const id = r.headers.get("x-request-id")
        expect(id).toMatch(/\S/)
        ids.push(id!)
      } catch (e) {
        problems.push(`${label}: ${String(e).slice(0, 300)} | got ${r.status} ${r.text.slice(0, 200)}`)
      }
      if (JSON.stringify(snapshot()) !== JSON.stringify(before)) problems.push(`${label}: changed the database`)
    }
    expect(problems).toEqual([])
    // each error answer is logged with its request id
    await waitFor("every request id in the server log", () => ids.every((id) => server!.output().includes(id)))
    // a caller's own request id is kept
    const mine = await raw("GET", "/api/nope", { headers: { "x-request-id": "caller-id-123" } })
    expect(mine.headers["x-request-id"]).toBe("caller-id-123")
    expect(snapshot()).toEqual(before)
  }, 120_000)

  it("a body over the limit gets 413, with or without Content-Length, and the connection survives to say so", async () => {
    const before = snapshot()
    const chunk = Buffer.alloc(64 * 1024, "x")
    const fiveMb = [Buffer.from(`{"name":"`), ...Array.from({ length: 80 }, () => chunk), Buffer.from(`"}`)]
    for (const path of ["/api/companies", `/api/companies/${s.company}/secrets`, "/api/plugins/server-webhooks/webhooks/inbound"]) {
      const chunked = await raw("POST", path, { body: fiveMb, headers: { "content-type": "application/json" } })
      expectError(asReply(chunked), 413, "payload_too_large")
      expect(chunked.headers["transfer-encoding"]).toBeUndefined()
      const continued = await raw("POST", path, { body: fiveMb, headers: { "content-type": "application/json" }, expectContinue: true })
      expectError(asReply(continued), 413, "payload_too_large")
      const announced = await raw("POST", path, { body: Buffer.concat(fiveMb), headers: { "content-type": "application/json" } })
      expectError(asReply(announced), 413, "payload_too_large")
    }
    // just under the limit, chunked: read and answered normally
    const near = await raw("POST", "/api/plugins/server-webhooks/config/test", {
      body: [Buffer.from(`{"label":"`), Buffer.alloc(MAX_BODY_BYTES - 64, "y"), Buffer.from(`"}`)], headers: { "content-type": "application/json" }
    })
    expect(near.status).toBe(200)
    expect(snapshot()).toEqual(before)
    expect(ok(await client(server!.url, server!.adminToken).get("/api/health")).ok).toBe(true)
  }, 120_000)

  it("a run given no stdin gets it closed: `cat` ends on every driver", async () => {
    const admin = client(server!.url, server!.adminToken)
    const c = s.company
    ok(await admin.put(`/api/companies/${c}/local-grant`))
    const work = mkdtempSync(join(tmpdir(), "gantry-stdin-"))
    // the bwrap sandbox user must reach its workspace root
    chmodSync(work, 0o755)
    try {
      const envs = [
        s.env,
        ok(await admin.post(`/api/companies/${c}/environments`, {
          name: "fake", driver: "sandbox", config: { provider: "fake-sandbox/fake", inventoryFile: join(work, "inventory.json"), workspaceRoot: join(work, "fake") }
        }), 201).id as string
      ]
      const plugins = ok(await admin.get("/api/plugins")) as Array<{ pluginId: string; workerStatus: string }>
      if (plugins.some((p) => p.pluginId === "bwrap-sandbox" && p.workerStatus === "running")) {
        const bwrap = await admin.post(`/api/companies/${c}/environments`, {
          name: "bwrap", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", workspaceRoot: join(work, "bwrap"), network: "none" }
        })
        if (bwrap.status === 201) envs.push(bwrap.body.id)
        else console.log(`bwrap environment not available here: ${bwrap.text.slice(0, 200)}`)
      }
      // 10 minutes: a run still waiting on stdin would outlive the test by far
      const agent = ok(await admin.post(`/api/companies/${c}/agents`, { name: "reads-stdin", command: "cat", timeoutMs: 600_000 }), 201)
      for (const environmentId of envs) {
        const run = ok(await admin.post(`/api/agents/${agent.id}/runs`, { environmentId }), 201)
        const done = await waitFor(`the cat run in ${environmentId} to finish`, async () => {
          const r = ok(await admin.get(`/api/runs/${run.id}`))
          return ["succeeded", "failed", "cancelled", "timed_out"].includes(r.status) ? r : undefined
        }, 60_000)
        expect(done).toMatchObject({ status: "succeeded", exitCode: 0 })
      }
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  }, 180_000)
})
