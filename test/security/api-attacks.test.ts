// Security acceptance (SPEC §16, issue 9 part A): a table of attacks against a real `gantry serve`
// process, each refused with the right status and leaving nothing behind (every table compared row
// by row, the files under the sandbox and data dirs, the server's process tree). The routes come from
// the server's own OpenAPI document, so a new route is attacked as soon as it exists. Then the
// features themselves: the local grant, provider policies, token rotation (the admin token offline,
// data kept), last_used_at, expiry, read-only tokens, health.
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import Sqlite from "better-sqlite3"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs"
import http from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { childPids, root } from "../helpers.js"
import {
  client, descendants, expectError, liveSandboxes, ok, request, startServer, stopServer, waitFor, type Client, type Reply, type ServerProcess
} from "../server/support.js"

const work = mkdtempSync(join(tmpdir(), "gantry-attacks-"))
const dataDir = join(work, "data")
const inventoryFile = join(work, "sandboxes", "inventory.json")
const workspaceRoot = join(work, "sandboxes", "ws")
const before = childPids()

let server: ServerProcess
let adminToken = ""
let admin: Client
let attacksTried = 0

/** Ids of what the attacks aim at; filled in beforeAll. */
const w = {} as {
  a: string; b: string; aName: string
  tokenA: string; tokenAId: string; readA: string; tokenB: string; revokedA: string; expiringA: string; expiringAt: number
  secretA: string; envA: string; localA: string; agentA: string; plainA: string; onHostA: string; runA: string
  coA: Client; readClientA: Client; coB: Client
}

// ---------------------------------------------------------------- what "nothing left behind" means

const TABLES = [
  "companies", "environments", "agents", "runs", "run_logs", "leases", "secrets", "secret_versions", "api_tokens", "local_grants",
  "provider_policies", "plugin_configs", "events", "job_runs"
] as const

/** Every row of every table an attack could touch (volatile bookkeeping columns aside). */
const tables = () => {
  const db = new Sqlite(join(dataDir, "gantry.db"), { readonly: true, fileMustExist: true })
  try {
    const out: Record<string, Array<string>> = {}
    for (const t of TABLES) {
      const rows = db.prepare(t === "job_runs" ? `SELECT * FROM job_runs WHERE trigger = 'manual'` : `SELECT * FROM ${t}`).all() as Array<Record<string, unknown>>
      out[t] = rows.map((r) => {
        const { last_used_at: _u, sweeper_until: _s, ...rest } = r
        return JSON.stringify(rest)
      }).sort()
    }
    return out
  } finally {
    db.close()
  }
}

const filesUnder = (dir: string): Array<string> => {
  if (!existsSync(dir)) return []
  const out: Array<string> = []
  for (const name of readdirSync(dir)) {
    const p = join(dir, name)
    out.push(p)
    if (statSync(p).isDirectory()) out.push(...filesUnder(p))
  }
  return out
}
/** Files an attack could create: the sandboxes, local workspaces, anything new in the data dir or the work dir. */
const files = () => [...filesUnder(work)].filter((p) => !/gantry\.db(-wal|-shm)?$/.test(p)).sort()

const world = () => ({ tables: tables(), files: files(), processes: descendants(server.pid).sort((x, y) => x - y), sandboxes: liveSandboxes(inventoryFile).length })

// ---------------------------------------------------------------- the attack table

interface Attack {
  readonly name: string
  readonly method: string
  readonly path: string
  readonly token?: string | undefined
  readonly body?: unknown
  /** Send the path byte for byte (no URL normalization of `..`). */
  readonly raw?: boolean
  /** The expected status, or the statuses one of which is expected. */
  readonly status: number | ReadonlyArray<number>
  readonly code?: string | RegExp
  /** Words the answer must contain (e.g. the refused field's name). */
  readonly mentions?: ReadonlyArray<string>
  /** Words the answer must not contain (e.g. the owner of a foreign object). */
  readonly hides?: ReadonlyArray<string>
}

/** A request with the path as given: Node's http client does not resolve `..` segments. */
const rawRequest = (base: string, method: string, path: string, token?: string, body?: unknown) =>
  new Promise<Reply>((resolve, reject) => {
    const url = new URL(base)
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request({
      host: url.hostname, port: url.port, method, path,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}) }
    }, (res) => {
      let text = ""
      res.setEncoding("utf8").on("data", (d: string) => void (text += d)).on("end", () => {
        let parsed: unknown = text
        try {
          parsed = text === "" ? null : JSON.parse(text)
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, text, headers: new Headers(res.headers as Record<string, string>) })
      })
    })
    req.on("error", reject)
    if (payload) req.write(payload)
    req.end()
  })

const send = (a: Attack) =>
  a.raw ? rawRequest(server.url, a.method, a.path, a.token, a.body) : request(server.url, a.method, a.path, { token: a.token, ...(a.body !== undefined ? { body: a.body } : {}) })

/** Run a group of attacks; every one must be refused as expected, and the world must not change. */
const attack = async (group: string, attacks: ReadonlyArray<Attack>) => {
  const snapshotBefore = world()
  const problems: Array<string> = []
  for (const a of attacks) {
    const r = await send(a)
    const label = `${group}: ${a.name} (${a.method} ${a.path})`
    const expected = typeof a.status === "number" ? [a.status] : a.status
    if (!expected.includes(r.status)) {
      problems.push(`${label}: expected ${expected.join(" or ")}, got ${r.status} ${r.text.slice(0, 300)}`)
      continue
    }
    try {
      expectError(r, r.status, a.code)
    } catch (e) {
      problems.push(`${label}: ${(e as Error).message.slice(0, 300)}`)
    }
    for (const m of a.mentions ?? []) if (!r.text.includes(m)) problems.push(`${label}: the answer does not name "${m}": ${r.text.slice(0, 300)}`)
    for (const h of a.hides ?? []) if (r.text.includes(h)) problems.push(`${label}: the answer gives away "${h}": ${r.text.slice(0, 300)}`)
  }
  attacksTried += attacks.length
  expect(problems).toEqual([])
  expect(world()).toEqual(snapshotBefore)
}

// ---------------------------------------------------------------- the routes, from the OpenAPI document

interface Route { readonly method: string; readonly template: string }
type Scope = "public" | "runtime" | "admin" | "instance" | "company"

/** Routes only the operator may call (any company token: 403). */
const ADMIN = new Set([
  "POST /api/companies", "POST /api/companies/{companyId}/tokens",
  "GET /api/tokens", "GET /api/tokens/{id}", "POST /api/tokens/{id}/revoke", "POST /api/tokens/{id}/rotate",
  "GET /api/local-grants", "PUT /api/companies/{companyId}/local-grant", "DELETE /api/companies/{companyId}/local-grant",
  "GET /api/provider-policies", "GET /api/plugins/{pluginId}/drivers/{driverKey}/policy", "PUT /api/plugins/{pluginId}/drivers/{driverKey}/policy",
  "DELETE /api/plugins/{pluginId}/drivers/{driverKey}/policy",
  "POST /api/plugins/{pluginId}/enable", "POST /api/plugins/{pluginId}/disable", "GET /api/plugins/{pluginId}/logs",
  "POST /api/plugins/{pluginId}/config/test", "GET /api/plugins/{pluginId}/jobs", "GET /api/plugins/{pluginId}/jobs/{jobKey}/runs",
  "POST /api/plugins/{pluginId}/jobs/{jobKey}/trigger",
  "POST /api/plugins", "POST /api/plugins/{pluginId}/upgrade", "DELETE /api/plugins/{pluginId}"
])
/** Instance-wide reads a company token may make (filtered or reduced to what a company may see). */
const INSTANCE = new Set(["GET /api/companies", "GET /api/plugins", "GET /api/plugins/{pluginId}"])

const scopeOf = (r: Route): Scope => {
  const key = `${r.method} ${r.template}`
  if (r.template.startsWith("/api/runtime/")) return "runtime"
  if (r.template === "/api/health" || r.template.includes("/webhooks/")) return "public"
  if (ADMIN.has(key)) return "admin"
  if (INSTANCE.has(key)) return "instance"
  return "company"
}

const params = (template: string) => [...template.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!)

/** Which object an `{id}` names, by the route's prefix. */
const idKind = (template: string) =>
  template.startsWith("/api/companies/{companyId}/secrets/") ? "secret"
    : template.startsWith("/api/environments/") ? "environment"
    : template.startsWith("/api/agents/") ? "agent"
    : template.startsWith("/api/runs/") ? "run"
    : template.startsWith("/api/tokens/") ? "token"
    : "unknown"

/** The route aimed at company A's objects, with `override` for some parameters (values are URL-encoded unless raw). */
const fill = (template: string, override: Record<string, string> = {}, encode = true) =>
  template.replace(/\{(\w+)\}/g, (_, name: string) => {
    if (name in override) return override[name]!
    const v = name === "companyId" ? w.a
      : name === "id" ? { secret: w.secretA, environment: w.envA, agent: w.agentA, run: w.runA, token: w.tokenAId, unknown: "x" }[idKind(template)]!
      : name === "pluginId" ? (template.includes("/drivers/") ? "fake-sandbox" : template.includes("/webhooks/") ? "hello-promise" : "hello-promise")
      : name === "driverKey" ? "fake"
      : name === "jobKey" ? "tick"
      : name === "key" ? (template.includes("/actions/") ? "emit" : "greeting")
      : name === "endpointKey" ? "inbound"
      : "x"
    return encode ? encodeURIComponent(v) : v
  })

/** A body the owner could send (so a refusal is about who sends it, not what). */
const bodyFor = (r: Route): unknown => {
  switch (`${r.method} ${r.template}`) {
    case "POST /api/companies": return { name: `intruder-${randomUUID().slice(0, 6)}` }
    case "PUT /api/companies/{companyId}/default-environment": return { environmentId: null }
    case "POST /api/companies/{companyId}/tokens": return {}
    case "POST /api/companies/{companyId}/secrets": return { name: "stolen", value: "xxxx" }
    case "POST /api/companies/{companyId}/secrets/{id}/rotate": return { value: "rotated" }
    case "PUT /api/plugins/{pluginId}/companies/{companyId}/config": return {}
    case "POST /api/plugins/{pluginId}/config/test": return {}
    case "POST /api/plugins/{pluginId}/companies/{companyId}/data/{key}": return {}
    case "POST /api/plugins/{pluginId}/companies/{companyId}/actions/{key}": return {}
    case "PUT /api/plugins/{pluginId}/drivers/{driverKey}/policy": return { set: { workspaceRoot: "/" } }
    case "POST /api/plugins": return { source: "/nonexistent/gantry-plugin-source" }
    case "POST /api/plugins/{pluginId}/upgrade": return { source: "/nonexistent/gantry-plugin-source" }
    case "POST /api/companies/{companyId}/environments": return { name: "intruder", driver: "sandbox", config: { provider: "fake-sandbox/fake" } }
    case "POST /api/companies/{companyId}/environments/probe": return { name: "p", driver: "sandbox", config: { provider: "fake-sandbox/fake" } }
    case "PATCH /api/environments/{id}": return { description: "hijacked" }
    case "POST /api/companies/{companyId}/agents": return { name: "intruder", command: "true" }
    case "PATCH /api/agents/{id}": return { name: "hijacked" }
    case "PUT /api/agents/{id}/default-environment": return { environmentId: null }
    case "POST /api/agents/{id}/runs": return {}
    case "POST /api/runtime/run/log": return { stream: "stdout", chunk: "x" }
    default: return undefined
  }
}

let routes: Array<Route> = []

// ---------------------------------------------------------------- set-up

beforeAll(async () => {
  server = await startServer({ dataDir, env: { GANTRY_SWEEP_INTERVAL_MS: "500" }, startTimeoutMs: 120_000 })
  adminToken = server.adminToken!
  expect(adminToken).toMatch(/^gantry_admin_/)
  admin = client(server.url, adminToken)
  await waitFor("the plugins to run", async () => {
    const running = (ok(await admin.get("/api/plugins")) as Array<any>).filter((p) => p.workerStatus === "running").map((p) => p.pluginId)
    return ["fake-sandbox", "bwrap-sandbox", "hello-promise"].every((id) => running.includes(id))
  }, 60_000)
  const openapi = ok(await request(server.url, "GET", "/api/openapi.json"))
  routes = Object.entries(openapi.paths as Record<string, Record<string, unknown>>)
    .flatMap(([template, ops]) => Object.keys(ops).map((m) => ({ method: m.toUpperCase(), template })))

  // the operator's policy for fake-sandbox: its host paths
  ok(await admin.put("/api/plugins/fake-sandbox/drivers/fake/policy", { set: { inventoryFile, workspaceRoot } }))
  const a = ok(await admin.post("/api/companies", { name: "acme" }), 201)
  const b = ok(await admin.post("/api/companies", { name: "globex" }), 201)
  const tokenA = ok(await admin.post(`/api/companies/${a.id}/tokens`, { name: "acme rw" }), 201)
  const readA = ok(await admin.post(`/api/companies/${a.id}/tokens`, { name: "acme dashboard", role: "company-read" }), 201)
  const tokenB = ok(await admin.post(`/api/companies/${b.id}/tokens`, {}), 201)
  const revoked = ok(await admin.post(`/api/companies/${a.id}/tokens`, { name: "leaked" }), 201)
  const expiresAt = Date.now() + 3_000
  const expiring = ok(await admin.post(`/api/companies/${a.id}/tokens`, { name: "short", expiresAt: new Date(expiresAt).toISOString() }), 201)
  expect(readA).toMatchObject({ role: "company-read", companyId: a.id, token: expect.stringMatching(/^gantry_read_/) })
  Object.assign(w, {
    a: a.id, b: b.id, aName: a.name, tokenA: tokenA.token, tokenAId: tokenA.id, readA: readA.token, tokenB: tokenB.token,
    revokedA: revoked.token, expiringA: expiring.token, expiringAt: expiresAt,
    coA: client(server.url, tokenA.token), readClientA: client(server.url, readA.token), coB: client(server.url, tokenB.token)
  })
  // the expiring and the revoked token worked before
  expect(ok(await client(server.url, expiring.token).get(`/api/companies/${a.id}`)).id).toBe(a.id)
  expect(ok(await client(server.url, revoked.token).get(`/api/companies/${a.id}`)).id).toBe(a.id)
  ok(await admin.post(`/api/tokens/${revoked.id}/revoke`))

  for (const [co, c, id] of [[w.coA, "a", a.id], [w.coB, "b", b.id]] as const) {
    const secret = ok(await co.post(`/api/companies/${id}/secrets`, { name: "api-key", value: `secret-of-${c}` }), 201)
    const env = ok(await co.post(`/api/companies/${id}/environments`, { name: "sandbox", driver: "sandbox", config: { provider: "fake-sandbox/fake" } }), 201)
    // the policy's values are merged when the host calls the provider, not stored in the company's config
    expect(env.config).toEqual({ provider: "fake-sandbox/fake" })
    const agent = ok(await co.post(`/api/companies/${id}/agents`, { name: "sbx", command: "true", defaultEnvironmentId: env.id }), 201)
    const run = ok(await co.post(`/api/agents/${agent.id}/runs`, {}), 201)
    await waitFor("the setup run to succeed", async () => ok(await co.get(`/api/runs/${run.id}`)).status === "succeeded")
    if (c === "a") Object.assign(w, { secretA: secret.id, envA: env.id, agentA: agent.id, runA: run.id })
  }
  // the setup runs used the operator's sandbox paths
  expect(existsSync(inventoryFile)).toBe(true)
  expect(liveSandboxes(inventoryFile)).toEqual([])
  // a local environment the operator made for A (no grant yet), an agent on it, one without any environment
  w.localA = ok(await admin.post(`/api/companies/${w.a}/environments`, { name: "host", driver: "local" }), 201).id
  w.onHostA = ok(await w.coA.post(`/api/companies/${w.a}/agents`, { name: "on-host", command: "sh", args: ["-c", "ls -la ../.."], defaultEnvironmentId: w.localA }), 201).id
  w.plainA = ok(await w.coA.post(`/api/companies/${w.a}/agents`, { name: "plain", command: "sh", args: ["-c", "echo pwned > pwned.txt; ls -la ../.."] }), 201).id
  // the expiring token's time passes (a condition on the clock, not a sleep of a guessed length)
  await waitFor("the short token to expire", () => Date.now() > w.expiringAt + 50, 10_000)
}, 180_000)

afterAll(async () => {
  console.log(`[security] ${attacksTried} attacks tried, every one refused, nothing left behind`)
  if (server?.isRunning()) await stopServer(server, "SIGKILL")
  expect(childPids().filter((p) => !before.includes(p))).toEqual([])
  rmSync(work, { recursive: true, force: true })
}, 60_000)

// ---------------------------------------------------------------- attacks

describe("attacks on the HTTP API, each refused and leaving nothing behind", () => {
  it("the table covers every route of the OpenAPI document", () => {
    expect(routes.length).toBeGreaterThan(50)
    for (const r of routes) {
      if (scopeOf(r) === "company") expect(r.template, `${r.method} ${r.template} names no company object`).toMatch(/\{(companyId|id)\}/)
    }
  })

  it("a company token cannot reach the host: local environments are the operator's", async () => {
    const t = w.tokenA
    await attack("local driver", [
      { name: "create a local environment", method: "POST", path: `/api/companies/${w.a}/environments`, token: t, body: { name: "mine", driver: "local" }, status: 403, code: "operator_only" },
      { name: "create one on / ", method: "POST", path: `/api/companies/${w.a}/environments`, token: t, body: { name: "root", driver: "local", config: { workspacePath: "/" } }, status: 403, code: "operator_only" },
      { name: "probe a local config", method: "POST", path: `/api/companies/${w.a}/environments/probe`, token: t, body: { name: "p", driver: "local" }, status: 403, code: "operator_only" },
      { name: "repoint the operator's local environment", method: "PATCH", path: `/api/environments/${w.localA}`, token: t, body: { config: { workspacePath: "/" } }, status: 403, code: "operator_only" },
      { name: "rename it", method: "PATCH", path: `/api/environments/${w.localA}`, token: t, body: { name: "renamed" }, status: 403, code: "operator_only" },
      { name: "archive it", method: "POST", path: `/api/environments/${w.localA}/archive`, token: t, status: 403, code: "operator_only" },
      { name: "delete it", method: "DELETE", path: `/api/environments/${w.localA}`, token: t, status: 403, code: "operator_only" },
      { name: "run in it (explicit, no grant)", method: "POST", path: `/api/agents/${w.agentA}/runs`, token: t, body: { environmentId: w.localA }, status: 403, code: "local_not_granted" },
      { name: "run an agent whose default is local (no grant)", method: "POST", path: `/api/agents/${w.onHostA}/runs`, token: t, body: {}, status: 403, code: "local_not_granted" },
      { name: "probe it (no grant)", method: "POST", path: `/api/environments/${w.localA}/probe`, token: t, status: 403, code: "local_not_granted" },
      { name: "run with no environment anywhere (implicit local, no grant)", method: "POST", path: `/api/agents/${w.plainA}/runs`, token: t, body: {}, status: 422, code: "no_environment", mentions: ["local-grants grant"] },
      // the grant is the company's, whoever starts the run
      { name: "admin starts the company's run on the host (no grant)", method: "POST", path: `/api/agents/${w.onHostA}/runs`, token: adminToken, body: {}, status: 403, code: "local_not_granted" },
      { name: "admin starts the company's run with no environment (no grant)", method: "POST", path: `/api/agents/${w.plainA}/runs`, token: adminToken, body: {}, status: 422, code: "no_environment" },
      { name: "read-only token runs", method: "POST", path: `/api/agents/${w.onHostA}/runs`, token: w.readA, body: {}, status: 403, code: "read_only_token" }
    ])
    // no workspace was created for the refused runs
    expect(existsSync(join(dataDir, "workspaces"))).toBe(false)
  }, 60_000)

  it("a company config cannot set the operator's fields (host paths, users, host network)", async () => {
    const t = w.tokenA
    const envs = `/api/companies/${w.a}/environments`
    const fake = (extra: Record<string, unknown>) => ({ name: "evil", driver: "sandbox", config: { provider: "fake-sandbox/fake", ...extra } })
    const bwrap = (extra: Record<string, unknown>) => ({ name: "evil", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", ...extra } })
    await attack("operator fields", [
      { name: "fake workspaceRoot /", method: "POST", path: envs, token: t, body: fake({ workspaceRoot: "/" }), status: 422, code: "environment_invalid", mentions: ["config.workspaceRoot"] },
      { name: "fake inventoryFile over the database", method: "POST", path: envs, token: t, body: fake({ inventoryFile: join(dataDir, "gantry.db") }), status: 422, code: "environment_invalid", mentions: ["config.inventoryFile"] },
      { name: "bwrap readOnlyPaths /var", method: "POST", path: envs, token: t, body: bwrap({ readOnlyPaths: ["/var"] }), status: 422, code: "environment_invalid", mentions: ["config.readOnlyPaths"] },
      { name: "bwrap readOnlyPaths of the data dir", method: "POST", path: envs, token: t, body: bwrap({ readOnlyPaths: [dataDir] }), status: 422, code: "environment_invalid", mentions: ["config.readOnlyPaths"] },
      { name: "bwrap workspaceRoot /srv", method: "POST", path: envs, token: t, body: bwrap({ workspaceRoot: "/srv" }), status: 422, code: "environment_invalid", mentions: ["config.workspaceRoot"] },
      { name: "bwrap runAsUid 0", method: "POST", path: envs, token: t, body: bwrap({ runAsUid: 0 }), status: 422, code: "environment_invalid", mentions: ["config.runAsUid"] },
      { name: "bwrap runAsGid 0", method: "POST", path: envs, token: t, body: bwrap({ runAsGid: 0 }), status: 422, code: "environment_invalid", mentions: ["config.runAsGid"] },
      { name: "bwrap network host (not allowed by the policy)", method: "POST", path: envs, token: t, body: bwrap({ network: "host" }), status: 422, code: "environment_invalid", mentions: ["config.network"] },
      { name: "probe an unsaved config with a host path", method: "POST", path: `${envs}/probe`, token: t, body: bwrap({ readOnlyPaths: ["/etc"] }), status: 422, code: "environment_invalid", mentions: ["config.readOnlyPaths"] },
      { name: "patch a saved environment's workspaceRoot", method: "PATCH", path: `/api/environments/${w.envA}`, token: t, body: { config: { provider: "fake-sandbox/fake", workspaceRoot: "/" } }, status: 422, code: "environment_invalid", mentions: ["config.workspaceRoot"] },
      { name: "set the provider's policy itself", method: "PUT", path: "/api/plugins/bwrap-sandbox/drivers/bwrap/policy", token: t, body: { set: { readOnlyPaths: ["/"] } }, status: 403, code: "forbidden" },
      { name: "allow host networking itself", method: "PUT", path: "/api/plugins/bwrap-sandbox/drivers/bwrap/policy", token: t, body: { allow: { network: ["host"] } }, status: 403, code: "forbidden" },
      // the operator's own policy is validated: only operator fields, values that fit their schema
      { name: "operator policy naming a company field", method: "PUT", path: "/api/plugins/bwrap-sandbox/drivers/bwrap/policy", token: adminToken, body: { set: { memoryMiB: 64 } }, status: 422, code: "environment_invalid", mentions: ["set.memoryMiB"] },
      { name: "operator policy with a wrong type", method: "PUT", path: "/api/plugins/bwrap-sandbox/drivers/bwrap/policy", token: adminToken, body: { set: { runAsUid: "root" } }, status: 422, code: "environment_invalid", mentions: ["set.runAsUid"] },
      { name: "operator policy allowing an unknown value", method: "PUT", path: "/api/plugins/bwrap-sandbox/drivers/bwrap/policy", token: adminToken, body: { allow: { network: ["wifi"] } }, status: 422, code: "environment_invalid", mentions: ["allow.network"] },
      { name: "policy of a provider nobody offers", method: "PUT", path: "/api/plugins/nobody/drivers/none/policy", token: adminToken, body: {}, status: 404, code: "provider_not_installed" }
    ])
  }, 60_000)

  it("another company's token on every route: 404 exactly like a missing object, no owner named; operator routes 403", async () => {
    const attacks: Array<Attack> = []
    for (const r of routes) {
      const scope = scopeOf(r)
      const body = bodyFor(r)
      if (scope === "admin") attacks.push({ name: "operator route", method: r.method, path: fill(r.template), token: w.tokenB, body, status: 403, code: "forbidden" })
      if (scope === "runtime") attacks.push({ name: "runtime route", method: r.method, path: r.template, token: w.tokenB, body, status: 401, code: "unauthorized" })
      if (scope !== "company") continue
      // the missing twin: the same route with the owner-bearing id replaced by one that does not exist
      const owner = params(r.template).includes("companyId") ? "companyId" : "id"
      const missingId = randomUUID()
      const missing = await request(server.url, r.method, fill(r.template, { [owner]: missingId }), { token: w.tokenB, ...(body !== undefined ? { body } : {}) })
      expect(missing.status, `${r.method} ${r.template} with a missing ${owner}`).toBe(404)
      attacks.push({
        name: `foreign ${owner} (like missing: ${missing.body.error.code})`, method: r.method, path: fill(r.template), token: w.tokenB, body,
        status: 404, code: missing.body.error.code, hides: [w.aName, ...(owner === "companyId" ? [] : [w.a])]
      })
    }
    await attack("cross-company", attacks)
    // instance-wide reads: B sees itself only, and plugins without their operational details
    expect((ok(await w.coB.get("/api/companies")) as Array<any>).map((c) => c.id)).toEqual([w.b])
    for (const p of ok(await w.coB.get("/api/plugins")) as Array<any>) {
      expect(Object.keys(p).sort()).toEqual(["capabilities", "displayName", "pluginId", "status", "version"])
    }
    expect(Object.keys(ok(await w.coB.get("/api/plugins/hello-promise"))).sort()).toEqual(["capabilities", "displayName", "pluginId", "status", "version"])
    expect(ok(await admin.get("/api/plugins/hello-promise"))).toHaveProperty("lastError")
  }, 120_000)

  it("a company token on plugin administration and token administration: 403", async () => {
    const attacks: Array<Attack> = routes.filter((r) => scopeOf(r) === "admin").map((r) => ({
      name: "own company, operator route", method: r.method, path: fill(r.template), token: w.tokenA, body: bodyFor(r), status: 403, code: "forbidden"
    }))
    await attack("operator routes", attacks)
  }, 60_000)

  it("a read-only token: every mutation 403, every read works", async () => {
    const mutations = routes.filter((r) => r.method !== "GET" && (scopeOf(r) === "company" || scopeOf(r) === "admin"))
    await attack("company-read", mutations.map((r) => ({
      name: "mutation", method: r.method, path: fill(r.template), token: w.readA, body: bodyFor(r), status: 403, code: /^(read_only_token|forbidden)$/
    })))
    for (const r of routes.filter((x) => x.method === "GET" && scopeOf(x) === "company")) {
      const res = await request(server.url, "GET", fill(r.template), { token: w.readA })
      expect(res.status, `${r.template}: ${res.text.slice(0, 200)}`).toBe(200)
    }
  }, 120_000)

  it("expired, revoked, rotated-away and made-up tokens: 401 on every route", async () => {
    const rotated = ok(await admin.post(`/api/companies/${w.a}/tokens`, { name: "to rotate" }), 201)
    ok(await admin.post(`/api/tokens/${rotated.id}/rotate`))
    const attacks: Array<Attack> = []
    for (const r of routes) {
      const scope = scopeOf(r)
      if (scope === "public") continue
      for (const [what, token] of [["expired", w.expiringA], ["revoked", w.revokedA], ["rotated away", rotated.token], ["made up", "gantry_admin_not-a-real-token"], ["none", undefined]] as const) {
        attacks.push({ name: `${what} token`, method: r.method, path: fill(r.template), token, body: bodyFor(r), status: 401, code: "unauthorized" })
      }
    }
    await attack("dead tokens", attacks)
    expectError(await client(server.url, w.expiringA).get(`/api/companies/${w.a}`), 401, "unauthorized")
    expect((await client(server.url, w.expiringA).get(`/api/companies/${w.a}`)).text).toContain("expired")
    expect((await client(server.url, w.revokedA).get(`/api/companies/${w.a}`)).text).toContain("revoked")
  }, 120_000)

  it("path traversal in every id parameter (../, encoded, double-encoded, absolute paths): 404, no file touched", async () => {
    const payloads: Array<{ readonly label: string; readonly value: string; readonly raw: boolean }> = [
      { label: "../ (raw)", value: "../../../etc/passwd", raw: true },
      { label: "..%2f", value: "..%2f..%2f..%2fetc%2fpasswd", raw: true },
      { label: "%2e%2e%2f", value: "%2e%2e%2f%2e%2e%2fgantry.db", raw: true },
      { label: "double-encoded", value: "..%252f..%252fsecrets.key", raw: true },
      { label: "absolute (encoded)", value: encodeURIComponent(join(dataDir, "secrets.key")), raw: true },
      { label: "absolute (raw)", value: "/etc/passwd", raw: true },
      { label: "dot", value: ".", raw: true },
      { label: "NUL", value: "%00", raw: true }
    ]
    const attacks: Array<Attack> = []
    for (const r of routes) {
      for (const p of params(r.template)) {
        for (const x of payloads) {
          const token = r.template.startsWith("/api/runtime/") ? undefined : scopeOf(r) === "public" ? undefined : adminToken
          // a plugin without webhooks.receive refuses any endpoint key before looking it up (403), unless
          // the raw path no longer matches the route (404). An unknown data/action key is looked up by
          // the plugin itself, whose "no handler" answer the API maps to 404
          const status = r.template.includes("/webhooks/") && p === "endpointKey" ? [403, 404] : 404
          attacks.push({ name: `${p} = ${x.label}`, method: r.method, path: fill(r.template, { [p]: x.value }), raw: x.raw, token, body: bodyFor(r), status })
        }
      }
    }
    await attack("path traversal", attacks)
  }, 180_000)
})

// ---------------------------------------------------------------- the features

describe("operator features", () => {
  it("health: SELECT 1 against the database; anonymous callers learn nothing about the instance", async () => {
    expect(ok(await request(server.url, "GET", "/api/health"))).toEqual({ ok: true, status: "ok" })
    expect(ok(await w.coA.get("/api/health"))).toEqual({ ok: true, status: "ok" })
    const full = ok(await admin.get("/api/health"))
    expect(full).toMatchObject({ ok: true, status: "ok", database: "sqlite", version: expect.any(String), instanceId: expect.any(String) })
  })

  it("last_used_at is written on use, at most once a minute per token", async () => {
    const fresh = ok(await admin.post(`/api/companies/${w.a}/tokens`, { name: "usage" }), 201)
    expect(fresh.lastUsedAt).toBeNull()
    ok(await client(server.url, fresh.token).get(`/api/companies/${w.a}`))
    const first = ok(await admin.get(`/api/tokens/${fresh.id}`)).lastUsedAt as string
    expect(Date.parse(first)).toBeGreaterThan(0)
    ok(await client(server.url, fresh.token).get(`/api/companies/${w.a}`))
    expect(ok(await admin.get(`/api/tokens/${fresh.id}`)).lastUsedAt).toBe(first)
    // listed with the rest, values never shown
    const listed = ok(await admin.get(`/api/tokens?companyId=${w.a}`)) as Array<any>
    expect(listed.find((t) => t.id === fresh.id)).toMatchObject({ role: "company", lastUsedAt: first, revokedAt: null })
    expect(JSON.stringify(listed)).not.toContain(fresh.token)
    expect(listed.every((t) => t.companyId === w.a)).toBe(true)
  })

  it("expiry is honoured: the token worked before its time and is listed with it", async () => {
    const listed = (ok(await admin.get(`/api/tokens?companyId=${w.a}`)) as Array<any>).find((t) => t.name === "short")
    expect(Date.parse(listed.expiresAt)).toBe(w.expiringAt)
    expect(Date.parse(listed.lastUsedAt)).toBeLessThan(w.expiringAt)
    expectError(await admin.post(`/api/companies/${w.a}/tokens`, { expiresAt: new Date(Date.now() - 1000).toISOString() }), 422, "token_invalid")
    expectError(await admin.post(`/api/companies/${w.a}/tokens`, { expiresAt: "tomorrow" }), 422, "token_invalid")
    expectError(await admin.post(`/api/tokens/${(ok(await admin.get("/api/tokens")) as Array<any>).find((t) => t.role === "admin").id}/revoke`), 409)
  })

  it("the local grant: off by default, granted by the operator, revoked again", async () => {
    ok(await admin.put(`/api/companies/${w.a}/local-grant`))
    expect(ok(await admin.get("/api/local-grants"))).toEqual([{ companyId: w.a, granted: true, grantedAt: expect.any(String) }])
    const onHost = ok(await w.coA.post(`/api/agents/${w.agentA}/runs`, { environmentId: w.localA }), 201)
    await waitFor("the local run to succeed", async () => ok(await w.coA.get(`/api/runs/${onHost.id}`)).status === "succeeded")
    // no environment anywhere: the company's local environment, created on demand now that it is granted
    const implicit = ok(await w.coA.post(`/api/agents/${w.plainA}/runs`, {}), 201)
    await waitFor("the implicit run to succeed", async () => ok(await w.coA.get(`/api/runs/${implicit.id}`)).status === "succeeded")
    const localEnvs = (ok(await w.coA.get(`/api/companies/${w.a}/environments`)) as Array<any>).filter((e) => e.driver === "local")
    expect(localEnvs.map((e) => e.name).sort()).toEqual(["host", "local"])
    // B was not granted anything
    expectError(await w.coB.post(`/api/companies/${w.b}/environments`, { name: "mine", driver: "local" }), 403, "operator_only")
    expect(ok(await admin.del(`/api/companies/${w.a}/local-grant`))).toEqual({ companyId: w.a, granted: false, grantedAt: null })
    expectError(await w.coA.post(`/api/agents/${w.onHostA}/runs`, {}), 403, "local_not_granted")
    expectError(await admin.put(`/api/companies/${randomUUID()}/local-grant`), 404, "company_not_found")
  }, 60_000)

  it("provider policy: the operator's values reach the provider; allow lets companies choose an operator-only value", async () => {
    const view = ok(await admin.get("/api/plugins/bwrap-sandbox/drivers/bwrap/policy"))
    expect(view.operatorFields).toEqual(expect.arrayContaining([
      { field: "readOnlyPaths", kind: "field" }, { field: "workspaceRoot", kind: "field" }, { field: "runAsUid", kind: "field" },
      { field: "runAsGid", kind: "field" }, { field: "network", kind: "values", values: ["host"] }
    ]))
    ok(await admin.put("/api/plugins/bwrap-sandbox/drivers/bwrap/policy", { allow: { network: ["host"] } }))
    const probe = ok(await w.coA.post(`/api/companies/${w.a}/environments/probe`, { name: "net", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", network: "host" } }))
    expect(typeof probe.ok).toBe("boolean")
    ok(await admin.del("/api/plugins/bwrap-sandbox/drivers/bwrap/policy"))
    expectError(await w.coA.post(`/api/companies/${w.a}/environments/probe`, { name: "net", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", network: "host" } }), 422)
    // the fake-sandbox policy put every sandbox of the setup runs under the operator's root
    expect((ok(await admin.get("/api/provider-policies")) as Array<any>).map((p) => p.provider)).toEqual(["fake-sandbox/fake"])
    expect(ok(await w.coA.get(`/api/environments/${w.envA}`)).config).toEqual({ provider: "fake-sandbox/fake" })
    // a company keeps a value the operator saved for it (it does not set it by saving it back)
    const opEnv = ok(await admin.post(`/api/companies/${w.a}/environments`, { name: "op-made", driver: "sandbox", config: { provider: "fake-sandbox/fake", latencyMs: 0, workspaceRoot } }), 201)
    const patched = ok(await w.coA.patch(`/api/environments/${opEnv.id}`, { config: { ...opEnv.config, latencyMs: 1 } }))
    expect(patched.config).toMatchObject({ workspaceRoot, latencyMs: 1 })
  }, 60_000)

  it("rotate a company token: the old value stops, the new one works; revoke is idempotent and kept in the list", async () => {
    const t = ok(await admin.post(`/api/companies/${w.a}/tokens`, { name: "rotating", role: "company-read" }), 201)
    const r = ok(await admin.post(`/api/tokens/${t.id}/rotate`))
    expect(r).toMatchObject({ id: t.id, role: "company-read", companyId: w.a })
    expect(r.token).not.toBe(t.token)
    expectError(await client(server.url, t.token).get(`/api/companies/${w.a}`), 401)
    expect(ok(await client(server.url, r.token).get(`/api/companies/${w.a}`)).id).toBe(w.a)
    expect(ok(await admin.post(`/api/tokens/${t.id}/revoke`)).revokedAt).not.toBeNull()
    expect(ok(await admin.post(`/api/tokens/${t.id}/revoke`)).revokedAt).not.toBeNull()
    expectError(await admin.post(`/api/tokens/${t.id}/rotate`), 409)
    expectError(await client(server.url, r.token).get(`/api/companies/${w.a}`), 401)
  })

  it("admin token rotation offline (gantry tokens rotate-admin): old token dead, new one works, every company and run kept", async () => {
    const companiesBefore = ok(await admin.get("/api/companies"))
    const runsBefore = (ok(await admin.get(`/api/companies/${w.a}/runs`)) as Array<any>).map((r) => r.id)
    await stopServer(server)
    const cli = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "tokens", "rotate-admin", "--data-dir", dataDir], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    cli.stdout.setEncoding("utf8").on("data", (d: string) => void (out += d))
    cli.stderr.setEncoding("utf8").on("data", (d: string) => void (out += d))
    const code = await new Promise<number | null>((resolve) => cli.once("exit", resolve))
    expect(code, out).toBe(0)
    const newToken = /new admin token[^:]*: (gantry_admin_\S+)/.exec(out)?.[1]
    expect(newToken).toMatch(/^gantry_admin_/)
    // a wrong data dir is refused, nothing created there
    const nowhere = join(work, "nowhere")
    const bad = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "tokens", "rotate-admin", "--data-dir", nowhere], { cwd: root, stdio: "ignore" })
    expect(await new Promise<number | null>((resolve) => bad.once("exit", resolve))).toBe(1)
    expect(existsSync(nowhere)).toBe(false)

    server = await startServer({ dataDir, startTimeoutMs: 120_000 })
    expect(server.adminToken).toBeUndefined()
    expectError(await request(server.url, "GET", "/api/companies", { token: adminToken }), 401)
    adminToken = newToken!
    admin = client(server.url, adminToken)
    expect(ok(await admin.get("/api/companies"))).toEqual(companiesBefore)
    expect((ok(await admin.get(`/api/companies/${w.a}/runs`)) as Array<any>).map((r) => r.id)).toEqual(runsBefore)
    // company tokens survived the rotation
    expect(ok(await client(server.url, w.tokenA).get(`/api/companies/${w.a}`)).id).toBe(w.a)
    await stopServer(server)
  }, 120_000)
})
