// Plugin API routes (SPEC §15) against a real `gantry serve` process: a plugin written with Gantry's
// SDK and one written with Paperclip's published SDK serve their manifest apiRoutes under
// /api/plugins/:pluginId/api/*, with Paperclip's request/response shapes; and the bad input — no or
// a bad token, an undeclared route, a method the route lacks, a company token on another company, a
// plugin without the capability, an oversized body, the wrong content type, a handler that throws or
// never answers, an invalid answer, a disabled plugin — each answers in the house error format.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { fixture } from "../helpers.js"
import { client, expectError, ok, preinstallPlugin, request, startServer, stopServer, waitFor, type Client, type ServerProcess } from "./support.js"

let server: ServerProcess
let dataDir = ""
let admin: Client
let acme = ""
let globex = ""
let acmeToken = ""

const api = (plugin: string, path: string) => `/api/plugins/${plugin}/api${path}`

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "gantry-plugin-api-"))
  await preinstallPlugin(fixture("api-routes"), { dataDir })
  await preinstallPlugin(fixture("paperclip-api"), { dataDir })
  server = await startServer({ dataDir, env: { GANTRY_PLUGIN_API_TIMEOUT_MS: "2000" }, startTimeoutMs: 120_000 })
  admin = client(server.url, server.adminToken)
  for (const id of ["api-routes", "paperclip-api", "hello-promise"]) {
    await waitFor(`${id} running`, async () => (await admin.get(`/api/plugins/${id}`)).body?.workerStatus === "running", 60_000)
  }
  acme = ok(await admin.post("/api/companies", { name: "acme" }), 201).id
  globex = ok(await admin.post("/api/companies", { name: "globex" }), 201).id
  acmeToken = ok(await admin.post(`/api/companies/${acme}/tokens`, { name: "acme-app" }), 201).token
}, 300_000)

afterAll(async () => {
  if (server) await stopServer(server)
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
})

describe("plugin API routes", () => {
  it("a Gantry SDK plugin gets Paperclip's request shape: route key, method, decoded path and params, query, body, actor, company, headers", async () => {
    const r = await admin.get(`${api("api-routes", "/items/it%20em-1")}?companyId=${acme}&tag=a&tag=b`, { headers: { "x-custom": "yes", cookie: "session=secret" } })
    expect(r.status).toBe(200)
    expect(r.headers.get("x-plugin")).toBe("api-routes")
    const input = r.body.input
    expect(input).toMatchObject({
      routeKey: "items.get", method: "GET", path: "/items/it em-1", params: { itemId: "it em-1" },
      query: { companyId: acme, tag: ["a", "b"] }, body: null, companyId: acme,
      actor: { actorType: "user", actorId: "admin", userId: "admin" }
    })
    expect(input.headers["x-custom"]).toBe("yes")
    expect(input.headers.authorization).toBeUndefined()
    expect(input.headers.cookie).toBeUndefined()

    // a company token acts for its own company without naming it; nested state calls are scoped to it
    const acmeClient = client(server.url, acmeToken)
    const c1 = ok(await acmeClient.post(api("api-routes", "/items"), { title: "first" }), 201)
    expect(c1).toMatchObject({ created: 1, input: { routeKey: "items.create", method: "POST", path: "/items", params: {}, body: { title: "first" }, companyId: acme, actor: { actorType: "user", actorId: `company:${acme}` } } })
    const c2 = await acmeClient.post(api("api-routes", "/items"), { title: "second" })
    expect(c2.status).toBe(201)
    expect(c2.body.created).toBe(2)
    expect(c2.headers.get("x-plugin")).toBe("api-routes")
    // the server owns cookies: a plugin cannot set one
    expect(c2.headers.get("set-cookie")).toBeNull()

    const del = await admin.del(`${api("api-routes", "/items/x")}?companyId=${acme}`)
    expect(del.status).toBe(204)
    expect(del.text).toBe("")
    expect(ok(await admin.patch(`${api("api-routes", "/items/x")}?companyId=${acme}`, { done: true })).input).toMatchObject({ routeKey: "items.patch", method: "PATCH", body: { done: true } })
    // companyResolution from the body
    expect(ok(await acmeClient.post(api("api-routes", "/scoped"), { company: acme })).input).toMatchObject({ routeKey: "by-body", companyId: acme })
  })

  it("a worker built with Paperclip's published SDK serves its routes unmodified", async () => {
    const g = ok(await admin.get(`${api("paperclip-api", "/greet/Ada")}?companyId=${acme}&x=1`))
    expect(g).toEqual({ greeting: "Hello, Ada!", query: { companyId: acme, x: "1" }, actor: expect.objectContaining({ actorType: "user", actorId: "admin" }), companyId: acme })
    const acmeClient = client(server.url, acmeToken)
    const n1 = await acmeClient.post(`${api("paperclip-api", "/notes")}?company=${acme}`, { text: "hello" })
    expect(n1.status).toBe(201)
    expect(n1.headers.get("x-notes")).toBe("1")
    expect(n1.body).toEqual({ notes: ["hello"] })
    // its companyResolution (query key "company") decides the company: globex is not acme's
    expectError(await acmeClient.post(`${api("paperclip-api", "/notes")}?company=${globex}`, { text: "x" }), 403, "forbidden")
    expect(ok(await acmeClient.post(`${api("paperclip-api", "/notes")}?company=${acme}`, { text: "again" }), 201)).toEqual({ notes: ["hello", "again"] })
  })

  it("bad input: tokens, routes, methods, companies, capability, body size and type — house format, nothing changed", async () => {
    const path = api("api-routes", "/items")
    expectError(await request(server.url, "GET", `${api("api-routes", "/items/1")}?companyId=${acme}`), 401, "unauthorized")
    expectError(await request(server.url, "GET", `${api("api-routes", "/items/1")}?companyId=${acme}`, { token: "gantry_admin_bogus" }), 401, "unauthorized")
    expectError(await admin.get(`${api("api-routes", "/nope")}?companyId=${acme}`), 404, "route_not_found")
    expectError(await admin.get(`${api("api-routes", "/items/1/extra")}?companyId=${acme}`), 404, "route_not_found")
    expectError(await admin.get(`${api("no-such-plugin", "/items")}?companyId=${acme}`), 404, "plugin_not_found")
    // a method the route lacks: 405 with Allow
    const m1 = await admin.get(`${path}?companyId=${acme}`)
    expectError(m1, 405, "method_not_allowed")
    expect(m1.headers.get("allow")).toBe("POST")
    const m2 = await admin.put(`${api("api-routes", "/items/1")}?companyId=${acme}`, {})
    expectError(m2, 405, "method_not_allowed")
    expect(m2.headers.get("allow")).toBe("GET, PATCH, DELETE")
    // company scope
    const acmeClient = client(server.url, acmeToken)
    expectError(await acmeClient.get(`${api("api-routes", "/items/1")}?companyId=${globex}`), 403, "forbidden")
    expectError(await acmeClient.post(api("api-routes", "/scoped"), { company: globex }), 403, "forbidden")
    expectError(await admin.get(api("api-routes", "/items/1")), 400, "company_required")
    expectError(await admin.get(`${api("api-routes", "/items/1")}?companyId=no-such-company`), 404, "company_not_found")
    // the route's auth mode: an agent-only route refuses board tokens
    expectError(await admin.get(`${api("api-routes", "/agent")}?companyId=${acme}`), 403, "forbidden")
    // a plugin without api.routes.register
    expectError(await admin.get(`${api("hello-promise", "/anything")}?companyId=${acme}`), 403, "capability_missing")
    // bodies: over the limit (with and without a Content-Length the server trusts), wrong type, bad JSON, bad UTF-8
    const big = JSON.stringify({ pad: "x".repeat(300 * 1024) })
    expectError(await acmeClient.post(path, undefined, { raw: big, headers: { "content-type": "application/json" } }), 413, "payload_too_large")
    expectError(await acmeClient.post(path, undefined, { raw: "title=x", headers: { "content-type": "application/x-www-form-urlencoded" } }), 415, "unsupported_media_type")
    expectError(await acmeClient.post(path, undefined, { raw: `{"title":`, headers: { "content-type": "application/json" } }), 400, "invalid_json")
    expectError(await acmeClient.post(path, undefined, { raw: new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x7d]), headers: { "content-type": "application/json" } }), 400, "invalid_utf8")
    // none of these reached the plugin: its counter of created items is where the first test left it
    expect(ok(await acmeClient.post(path, { title: "after" }), 201).created).toBe(3)
  })

  it("a handler that throws → 502 worker_error; one that never answers → 504 after the timeout; an invalid answer → 502; the worker keeps serving", async () => {
    const boom = expectError(await admin.get(`${api("api-routes", "/boom")}?companyId=${acme}`), 502, "worker_error")
    expect(boom.message).toContain("kaboom from the plugin")
    const slow = expectError(await admin.get(`${api("api-routes", "/slow")}?companyId=${acme}`), 504, "worker_timeout")
    expect(slow.message).toContain("did not answer")
    expectError(await admin.get(`${api("api-routes", "/bad-answer")}?companyId=${acme}`), 502, "invalid_response")
    expect(ok(await admin.get(`${api("api-routes", "/items/ok")}?companyId=${acme}`)).input.params).toEqual({ itemId: "ok" })
  })

  it("a disabled plugin answers 409", async () => {
    ok(await admin.post("/api/plugins/paperclip-api/disable"))
    expectError(await admin.get(`${api("paperclip-api", "/greet/Ada")}?companyId=${acme}`), 409, "plugin_disabled")
  })
})
