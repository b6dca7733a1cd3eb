// Server acceptance 2: end to end over real HTTP against a real `gantry serve` process (SQLite, the
// bundled plugins plus the server-webhooks fixture): company → secret → sandbox environment on
// fake-sandbox → probe → agent → run streamed over SSE → lease released; cancel; webhooks; the data
// bridge; every route's auth; graceful shutdown on SIGTERM during a run (checked in the SQLite file
// and by a second server on the same data dir). No server or worker process outlives the file.
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import Sqlite from "better-sqlite3"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { childPids, fixture, isAlive } from "../helpers.js"
import {
  client, descendants, expectError, liveSandboxes, ok, preinstallPlugin, readSse, request, startServer, stopServer, TERMINAL_LEASE, waitFor,
  type Client, type ServerProcess, type SseEvent
} from "./support.js"

const PLUGINS = ["fake-sandbox", "hello-promise", "hello-effect", "server-webhooks"]
const CANARY = "canary-Zq81-not-for-logs"
/** SIGTERM → exit, with a run in flight (its lease released on the way out). */
const SHUTDOWN_BOUND_MS = 15_000

const work = mkdtempSync(join(tmpdir(), "gantry-e2e-"))
const dataDir = join(work, "data")
const inventoryFile = join(work, "sandboxes", "inventory.json")
const workspaceRoot = join(work, "sandboxes", "ws")
const gate = (name: string) => join(work, `gate-${name}`)

let server: ServerProcess | undefined
let adminToken = ""
let admin: Client
let anon: Client
const before = childPids()

/** Filled by the first test, used by the later ones. */
const s = {} as {
  a: string; b: string; tokenAId: string; tokenA: string; tokenB: string; coA: Client; coB: Client
  secretId: string; envId: string; agentId: string; sleeperId: string
}

/** A runtime calling back: `GET $GANTRY_API_URL/api/runtime/run` with its run token (node is on every test machine). */
const WHOAMI = `fetch(process.env.GANTRY_API_URL + "/api/runtime/run", { headers: { authorization: "Bearer " + process.env.GANTRY_RUN_TOKEN } })
  .then((r) => r.json()).then((j) => console.log("WHOAMI=" + j.run.id + ";"))`
/** The gated agent: hands its run token to the test through $TOKEN_FILE, tries to print it and its
 * secret (both redacted), calls the runtime API back, then waits for $GATE to exist. */
const GATED = [
  "-c",
  [
    `printf '%s' "$GANTRY_RUN_TOKEN" > "$TOKEN_FILE"`,
    `echo "TOKEN=$GANTRY_RUN_TOKEN;"`,
    `echo "SECRET=$API_KEY LEN=\${#API_KEY}"`,
    `"$NODE" -e '${WHOAMI}'`,
    `while [ ! -e "$GATE" ]; do sleep 0.05; done`,
    `echo after-gate`
  ].join("; ")
]
const tokenFile = (name: string) => join(work, `token-${name}`)
const SLEEPER = ["-c", `echo "PID=$$;"; exec sleep 30`]

const stdoutOf = (events: ReadonlyArray<SseEvent>) => events.filter((e) => e.event === "stdout").map((e) => e.data.chunk as string).join("")

/** Start a run of `agentId` and read its output until `re` matches; returns the run and the match. */
const startAndWaitFor = async (co: Client, agentId: string, re: RegExp, body: unknown = {}) => {
  const run = ok(await co.post(`/api/agents/${agentId}/runs`, body), 201)
  let match: RegExpExecArray | null = null
  await readSse(server!.url, `/api/runs/${run.id}/output`, adminToken, (e, soFar) => {
    if (e.event === "end") throw new Error(`run ended before printing ${re}: ${JSON.stringify(e.data)}`)
    return (match = re.exec(stdoutOf(soFar))) !== null
  })
  return { run, match: match! as RegExpExecArray }
}

const leasesOf = async (runId: string) => ok(await admin.get(`/api/runs/${runId}/leases`)) as Array<any>

beforeAll(async () => {
  await preinstallPlugin(fixture("server-webhooks"), { dataDir })
  server = await startServer({ dataDir, env: { GANTRY_SWEEP_INTERVAL_MS: "500" } })
  expect(server.adminToken).toMatch(/^gantry_admin_/)
  adminToken = server.adminToken!
  admin = client(server.url, adminToken)
  anon = client(server.url)
  await waitFor("every plugin's worker to run", async () => {
    const running = (ok(await admin.get("/api/plugins")) as Array<any>).filter((p) => p.workerStatus === "running").map((p) => p.pluginId)
    return PLUGINS.every((id) => running.includes(id))
  }, 30_000)
}, 60_000)

afterAll(async () => {
  // normally the last test stopped it; after a failure, nothing may be left behind either
  if (server?.isRunning()) await stopServer(server, "SIGKILL")
  expect(childPids().filter((p) => !before.includes(p))).toEqual([])
  rmSync(work, { recursive: true, force: true })
}, 30_000)

describe("gantry serve, end to end over HTTP", () => {
  it("company → secret → sandbox environment → probe → agent → run streamed over SSE → succeeded, lease released", async () => {
    // anonymous callers learn that it is up, nothing about the instance; the admin sees the details
    expect(ok(await anon.get("/api/health"))).toEqual({ ok: true, status: "ok" })
    expect(ok(await admin.get("/api/health"))).toMatchObject({ ok: true, status: "ok", database: "sqlite", instanceId: expect.any(String) })

    const a = ok(await admin.post("/api/companies", { name: "acme" }), 201)
    const b = ok(await admin.post("/api/companies", { name: "globex" }), 201)
    const tokenA = ok(await admin.post(`/api/companies/${a.id}/tokens`, { name: "acme ci" }), 201)
    const tokenB = ok(await admin.post(`/api/companies/${b.id}/tokens`, {}), 201)
    expect(tokenA).toMatchObject({ companyId: a.id, token: expect.stringMatching(/^gantry_company_/) })
    Object.assign(s, { a: a.id, b: b.id, tokenAId: tokenA.id, tokenA: tokenA.token, tokenB: tokenB.token, coA: client(server!.url, tokenA.token), coB: client(server!.url, tokenB.token) })
    // a company token sees its own company only
    expect((ok(await s.coA.get("/api/companies")) as Array<any>).map((c) => c.id)).toEqual([a.id])

    // secret: metadata only, ever
    const secret = ok(await s.coA.post(`/api/companies/${a.id}/secrets`, { name: "api-key", value: CANARY }), 201)
    expect(secret).toMatchObject({ companyId: a.id, name: "api-key", version: 1 })
    expect(JSON.stringify(secret)).not.toContain(CANARY)
    expect(JSON.stringify(ok(await s.coA.get(`/api/companies/${a.id}/secrets`)))).not.toContain(CANARY)
    s.secretId = secret.id

    // sandbox environment on fake-sandbox; its host paths (inventory, workspaces) are the operator's policy
    ok(await admin.put("/api/plugins/fake-sandbox/drivers/fake/policy", { set: { inventoryFile, workspaceRoot } }))
    const env = ok(await s.coA.post(`/api/companies/${a.id}/environments`, {
      name: "sandbox", driver: "sandbox", config: { provider: "fake-sandbox/fake" }
    }), 201)
    expect(env).toMatchObject({ companyId: a.id, driver: "sandbox", status: "active" })
    s.envId = env.id

    // probe: a real acquire → execute → release cycle, step by step
    const probe = ok(await s.coA.post(`/api/environments/${env.id}/probe`))
    expect(probe.ok).toBe(true)
    expect(probe.steps.length).toBeGreaterThanOrEqual(3)
    expect(probe.steps.every((st: any) => st.ok === true && typeof st.ms === "number")).toBe(true)
    expect(probe.steps.map((st: any) => st.step).join(" ")).toMatch(/acquire.*execute.*release/)
    const probeLeases = ok(await s.coA.get(`/api/environments/${env.id}/leases`)) as Array<any>
    expect(probeLeases.map((l) => l.status)).toEqual(["released"])
    expect(liveSandboxes(inventoryFile)).toEqual([])

    // agent with that environment as its default, the secret bound into its env
    const agent = ok(await s.coA.post(`/api/companies/${a.id}/agents`, {
      name: "gated", command: "sh", args: GATED, defaultEnvironmentId: env.id,
      env: { API_KEY: { type: "secret_ref", secretId: secret.id }, NODE: process.execPath }
    }), 201)
    expect(agent.defaultEnvironmentId).toBe(env.id)
    s.agentId = agent.id
    s.sleeperId = ok(await s.coA.post(`/api/companies/${a.id}/agents`, { name: "sleeper", command: "sh", args: SLEEPER, defaultEnvironmentId: env.id }), 201).id

    // run, streamed: chunks arrive while the run is still running, then `end`
    const run = ok(await s.coA.post(`/api/agents/${agent.id}/runs`, { env: { GATE: gate("first"), TOKEN_FILE: tokenFile("first") } }), 201)
    expect(run).toMatchObject({ agentId: agent.id, companyId: a.id })
    let runToken = ""
    let gateOpenedAt = -1
    const events = await readSse(server!.url, `/api/runs/${run.id}/output`, s.tokenA, async (e, soFar) => {
      const out = stdoutOf(soFar)
      // the command called the runtime API back with its token (over GANTRY_API_URL) and got its run
      if (gateOpenedAt >= 0 || !out.includes(`WHOAMI=${run.id};`)) return
      runToken = readFileSync(tokenFile("first"), "utf8")
      expect(runToken.split(".")).toHaveLength(3)
      // mid-run: the run is running, its lease active, its sandbox live
      expect(ok(await s.coA.get(`/api/runs/${run.id}`)).status).toBe("running")
      const live = await leasesOf(run.id)
      expect(live.map((l) => l.status)).toEqual(["active"])
      expect(liveSandboxes(inventoryFile).map((x) => x.providerLeaseId)).toEqual([live[0].providerLeaseId])
      // the runtime API answers the run's own token
      const rt = client(server!.url, runToken)
      expect(ok(await rt.get("/api/runtime/run"))).toMatchObject({ run: { id: run.id, status: "running", companyId: a.id }, environmentId: env.id })
      expect(ok(await rt.post("/api/runtime/run/heartbeat"))).toMatchObject({ ok: true })
      expect(ok(await rt.post("/api/runtime/run/log", { stream: "stdout", chunk: "from-runtime-api\n" }))).toEqual({ ok: true })
      // and nothing else
      expectError(await rt.get(`/api/runs/${run.id}`), 401, "unauthorized")
      gateOpenedAt = e.at
      writeFileSync(gate("first"), "")
    })
    const end = events.at(-1)!
    expect(end.event).toBe("end")
    expect(events.filter((e) => e.event === "end")).toHaveLength(1)
    const chunks = events.filter((e) => e.event === "stdout")
    expect(chunks.length).toBeGreaterThanOrEqual(2)
    expect(chunks.map((c) => Number(c.id))).toEqual(chunks.map((c) => c.data.seq))
    // the first output reached the client before the run could finish (it waited for the gate we opened)
    expect(gateOpenedAt).toBeGreaterThanOrEqual(0)
    expect(chunks[0]!.at).toBeLessThanOrEqual(gateOpenedAt)
    const out = stdoutOf(events)
    expect(out).toContain("from-runtime-api\n")
    expect(out).toMatch(/after-gate/)
    expect(events.find((e) => /after-gate/.test(e.data.chunk ?? ""))!.at).toBeGreaterThanOrEqual(gateOpenedAt)
    // the secret and the run token reached the command, never the output
    expect(out).toContain(`SECRET=[REDACTED] LEN=${CANARY.length}`)
    expect(out).toContain("TOKEN=[REDACTED];")
    expect(JSON.stringify(events)).not.toContain(CANARY)
    expect(JSON.stringify(events)).not.toContain(runToken)

    expect(end.data).toMatchObject({ id: run.id, status: "succeeded", exitCode: 0, environmentId: env.id })
    const done = ok(await s.coA.get(`/api/runs/${run.id}`))
    expect(done).toMatchObject({ status: "succeeded", exitCode: 0, error: null })
    expect(done.stdout).not.toContain(CANARY)
    // lease released, sandbox gone
    const leases = await leasesOf(run.id)
    expect(leases).toHaveLength(1)
    expect(leases[0]).toMatchObject({ id: done.leaseId, runId: run.id, status: "released", provider: "fake-sandbox/fake" })
    expect(leases[0].releasedAt).toBeTypeOf("number")
    expect(liveSandboxes(inventoryFile)).toEqual([])
    // the token died with the run
    expectError(await request(server!.url, "GET", "/api/runtime/run", { token: runToken }), 401, "unauthorized")

    // replay after the end: everything again, and resumable by Last-Event-ID
    const replay = await readSse(server!.url, `/api/runs/${run.id}/output`, s.tokenA)
    expect(replay.map((e) => e.data.chunk ?? e.event)).toEqual(events.map((e) => e.data.chunk ?? e.event))
    const resumed = await fetch(`${server!.url}/api/runs/${run.id}/output`, { headers: { authorization: `Bearer ${s.tokenA}`, "last-event-id": "1" } })
    const resumedText = await resumed.text()
    expect(resumedText).not.toMatch(/^id: 1$/m)
    expect(resumedText).toMatch(/^event: end$/m)
  }, 45_000)

  it("cancel a running run: cancelled, lease torn down (terminal, inventory 0), command killed", async () => {
    const { run, match } = await startAndWaitFor(s.coA, s.sleeperId, /PID=(\d+);/)
    const pid = Number(match[1])
    expect(isAlive(pid)).toBe(true)
    await waitFor("the lease to be active", async () => (await leasesOf(run.id)).some((l) => l.status === "active"))
    expect(liveSandboxes(inventoryFile)).toHaveLength(1)

    const cancelled = ok(await s.coA.post(`/api/runs/${run.id}/cancel`))
    expect(cancelled).toMatchObject({ id: run.id, status: "cancelled" })
    expect(ok(await s.coA.get(`/api/runs/${run.id}`)).status).toBe("cancelled")
    const leases = await waitFor("the lease to be terminal", async () => {
      const ls = await leasesOf(run.id)
      return ls.every((l) => TERMINAL_LEASE.includes(l.status)) && ls
    })
    expect(leases).toHaveLength(1)
    expect(leases[0].status).toBe("expired")
    expect(liveSandboxes(inventoryFile)).toEqual([])
    await waitFor("the sandbox command to be killed", () => !isAlive(pid), 5_000)
    // cancelling again is a no-op; the stream of a cancelled run ends with it
    expect(ok(await s.coA.post(`/api/runs/${run.id}/cancel`)).status).toBe("cancelled")
    const events = await readSse(server!.url, `/api/runs/${run.id}/output`, s.tokenA)
    expect(events.at(-1)).toMatchObject({ event: "end", data: { status: "cancelled" } })
  }, 30_000)

  it("webhooks reach the plugin with the raw body; undeclared → 404, no webhooks.receive → 403, disabled → 409", async () => {
    const deliveries = async () => ok(await admin.post(`/api/plugins/server-webhooks/companies/${s.a}/data/deliveries`, {})) as Array<any>
    expect(await deliveries()).toEqual([])

    const raw = `{"b": 1,   "a": [2, "ü"]}\n`
    const first = ok(await anon.post("/api/plugins/server-webhooks/webhooks/inbound", undefined, {
      raw, headers: { "content-type": "application/json", "x-signature": "sig-1", "x-request-id": "req-1", authorization: "Bearer not-for-plugins" }
    }), 202)
    expect(first).toEqual({ ok: true, requestId: "req-1" })
    const text = "plain text, not JSON {\r\n"
    const second = ok(await anon.post("/api/plugins/server-webhooks/webhooks/inbound", undefined, { raw: text, headers: { "content-type": "text/plain" } }), 202)
    expect(second.requestId).toMatch(/^[0-9a-f-]{36}$/)

    const seen = await deliveries()
    expect(seen).toEqual([
      { endpointKey: "inbound", requestId: "req-1", rawBody: raw, parsedBody: { b: 1, a: [2, "ü"] }, contentType: "application/json", signature: "sig-1", hasAuthorization: false },
      { endpointKey: "inbound", requestId: second.requestId, rawBody: text, parsedBody: null, contentType: "text/plain", signature: null, hasAuthorization: false }
    ])

    expectError(await anon.post("/api/plugins/server-webhooks/webhooks/undeclared", { x: 1 }), 404, "webhook_not_found")
    expectError(await anon.post("/api/plugins/hello-promise/webhooks/inbound", { x: 1 }), 403, "capability_missing")
    expectError(await anon.post("/api/plugins/no-such-plugin/webhooks/inbound", { x: 1 }), 404, "plugin_not_found")

    expect(ok(await admin.post("/api/plugins/server-webhooks/disable")).status).toBe("disabled")
    // the operator disabled it: a 409 naming its state (SPEC §14)
    const disabled = expectError(await anon.post("/api/plugins/server-webhooks/webhooks/inbound", { x: 1 }), 409, "plugin_not_running")
    expect(disabled.details).toEqual({ status: "disabled", workerStatus: "stopped" })
    expect(ok(await admin.post("/api/plugins/server-webhooks/enable")).workerStatus).toBe("running")
    // the refused deliveries reached nothing
    expect(await deliveries()).toHaveLength(2)
  }, 30_000)

  it("the data bridge answers for the caller's company (the host's company wins over params)", async () => {
    const path = (c: string) => `/api/plugins/hello-promise/companies/${c}/data/greeting`
    expect(ok(await s.coA.post(path(s.a), { params: { name: "Ada", companyId: s.b } }))).toEqual({ message: "Hello, Ada!", count: 1, companyId: s.a })
    expect(ok(await s.coA.put(`/api/plugins/hello-promise/companies/${s.a}/config`, { greeting: "Hi" }))).toMatchObject({ ok: true })
    expect(ok(await s.coA.get(`/api/plugins/hello-promise/companies/${s.a}/config`))).toEqual({ greeting: "Hi" })
    expect(ok(await s.coA.post(path(s.a), { params: { name: "Ada" } }))).toEqual({ message: "Hi, Ada!", count: 2, companyId: s.a })
    // state is per company
    expect(ok(await s.coB.post(path(s.b), {}))).toEqual({ message: "Hello, world!", count: 1, companyId: s.b })
    expectError(await s.coB.post(path(s.a), {}), 404, "company_not_found")
    expectError(await anon.post(path(s.a), {}), 401, "unauthorized")
  }, 30_000)

  it("every route's auth: no token → 401, another company's token → 404 (403 on admin routes), a run token → 401 outside /api/runtime", async () => {
    const { run } = await startAndWaitFor(s.coA, s.agentId, /WHOAMI=[^;]+;/, { env: { GATE: gate("auth"), TOKEN_FILE: tokenFile("auth") } })
    const runToken = readFileSync(tokenFile("auth"), "utf8")
    const secretPath = `/api/companies/${s.a}/secrets/${s.secretId}`
    type Scope = "public" | "company" | "admin" | "instance" | "runtime"
    // every route of the API, with a valid body, aimed at company A's resources
    const routes: Array<{ method: string; path: string; template: string; scope: Scope; body?: unknown }> = [
      { method: "GET", template: "/api/health", path: "/api/health", scope: "public" },
      { method: "GET", template: "/api/companies", path: "/api/companies", scope: "instance" },
      { method: "POST", template: "/api/companies", path: "/api/companies", scope: "admin", body: { name: "intruder" } },
      { method: "GET", template: "/api/companies/{companyId}", path: `/api/companies/${s.a}`, scope: "company" },
      { method: "PUT", template: "/api/companies/{companyId}/default-environment", path: `/api/companies/${s.a}/default-environment`, scope: "company", body: { environmentId: null } },
      { method: "POST", template: "/api/companies/{companyId}/tokens", path: `/api/companies/${s.a}/tokens`, scope: "admin", body: {} },
      { method: "GET", template: "/api/tokens", path: "/api/tokens", scope: "admin" },
      { method: "GET", template: "/api/tokens/{id}", path: `/api/tokens/${s.tokenAId}`, scope: "admin" },
      { method: "POST", template: "/api/tokens/{id}/revoke", path: `/api/tokens/${s.tokenAId}/revoke`, scope: "admin" },
      { method: "POST", template: "/api/tokens/{id}/rotate", path: `/api/tokens/${s.tokenAId}/rotate`, scope: "admin" },
      { method: "GET", template: "/api/local-grants", path: "/api/local-grants", scope: "admin" },
      { method: "PUT", template: "/api/companies/{companyId}/local-grant", path: `/api/companies/${s.a}/local-grant`, scope: "admin" },
      { method: "DELETE", template: "/api/companies/{companyId}/local-grant", path: `/api/companies/${s.a}/local-grant`, scope: "admin" },
      { method: "GET", template: "/api/provider-policies", path: "/api/provider-policies", scope: "admin" },
      { method: "GET", template: "/api/plugins/{pluginId}/drivers/{driverKey}/policy", path: "/api/plugins/fake-sandbox/drivers/fake/policy", scope: "admin" },
      { method: "PUT", template: "/api/plugins/{pluginId}/drivers/{driverKey}/policy", path: "/api/plugins/fake-sandbox/drivers/fake/policy", scope: "admin", body: {} },
      { method: "DELETE", template: "/api/plugins/{pluginId}/drivers/{driverKey}/policy", path: "/api/plugins/fake-sandbox/drivers/fake/policy", scope: "admin" },
      { method: "GET", template: "/api/companies/{companyId}/secrets", path: `/api/companies/${s.a}/secrets`, scope: "company" },
      { method: "POST", template: "/api/companies/{companyId}/secrets", path: `/api/companies/${s.a}/secrets`, scope: "company", body: { name: "stolen", value: "xxxx" } },
      { method: "POST", template: "/api/companies/{companyId}/secrets/{id}/rotate", path: `${secretPath}/rotate`, scope: "company", body: { value: "rotated" } },
      { method: "GET", template: "/api/companies/{companyId}/secrets/{id}", path: secretPath, scope: "company" },
      { method: "DELETE", template: "/api/companies/{companyId}/secrets/{id}", path: secretPath, scope: "company" },
      { method: "GET", template: "/api/plugins", path: "/api/plugins", scope: "instance" },
      { method: "GET", template: "/api/plugins/{pluginId}", path: "/api/plugins/hello-promise", scope: "instance" },
      { method: "POST", template: "/api/plugins", path: "/api/plugins", scope: "admin", body: { source: "/nonexistent/plugin" } },
      { method: "POST", template: "/api/plugins/{pluginId}/upgrade", path: "/api/plugins/hello-promise/upgrade", scope: "admin", body: { source: "/nonexistent/plugin" } },
      { method: "DELETE", template: "/api/plugins/{pluginId}", path: "/api/plugins/hello-promise", scope: "admin" },
      { method: "POST", template: "/api/plugins/{pluginId}/enable", path: "/api/plugins/hello-promise/enable", scope: "admin" },
      { method: "POST", template: "/api/plugins/{pluginId}/disable", path: "/api/plugins/hello-promise/disable", scope: "admin" },
      { method: "GET", template: "/api/plugins/{pluginId}/logs", path: "/api/plugins/hello-promise/logs", scope: "admin" },
      { method: "GET", template: "/api/plugins/{pluginId}/companies/{companyId}/config", path: `/api/plugins/hello-promise/companies/${s.a}/config`, scope: "company" },
      { method: "PUT", template: "/api/plugins/{pluginId}/companies/{companyId}/config", path: `/api/plugins/hello-promise/companies/${s.a}/config`, scope: "company", body: {} },
      { method: "POST", template: "/api/plugins/{pluginId}/config/test", path: "/api/plugins/hello-promise/config/test", scope: "admin", body: {} },
      { method: "GET", template: "/api/plugins/{pluginId}/jobs", path: "/api/plugins/hello-promise/jobs", scope: "admin" },
      { method: "GET", template: "/api/plugins/{pluginId}/jobs/{jobKey}/runs", path: "/api/plugins/hello-promise/jobs/tick/runs", scope: "admin" },
      { method: "POST", template: "/api/plugins/{pluginId}/jobs/{jobKey}/trigger", path: "/api/plugins/hello-promise/jobs/tick/trigger", scope: "admin" },
      { method: "POST", template: "/api/plugins/{pluginId}/companies/{companyId}/data/{key}", path: `/api/plugins/hello-promise/companies/${s.a}/data/greeting`, scope: "company", body: {} },
      { method: "POST", template: "/api/plugins/{pluginId}/companies/{companyId}/actions/{key}", path: `/api/plugins/hello-promise/companies/${s.a}/actions/emit`, scope: "company", body: {} },
      { method: "POST", template: "/api/plugins/{pluginId}/webhooks/{endpointKey}", path: "/api/plugins/server-webhooks/webhooks/inbound", scope: "public" },
      { method: "GET", template: "/api/companies/{companyId}/environments", path: `/api/companies/${s.a}/environments`, scope: "company" },
      { method: "POST", template: "/api/companies/{companyId}/environments", path: `/api/companies/${s.a}/environments`, scope: "company", body: { name: "intruder", driver: "local" } },
      { method: "POST", template: "/api/companies/{companyId}/environments/probe", path: `/api/companies/${s.a}/environments/probe`, scope: "company", body: { name: "p", driver: "local" } },
      { method: "GET", template: "/api/environments/{id}", path: `/api/environments/${s.envId}`, scope: "company" },
      { method: "PATCH", template: "/api/environments/{id}", path: `/api/environments/${s.envId}`, scope: "company", body: { description: "hijacked" } },
      { method: "DELETE", template: "/api/environments/{id}", path: `/api/environments/${s.envId}`, scope: "company" },
      { method: "POST", template: "/api/environments/{id}/archive", path: `/api/environments/${s.envId}/archive`, scope: "company" },
      { method: "POST", template: "/api/environments/{id}/probe", path: `/api/environments/${s.envId}/probe`, scope: "company" },
      { method: "GET", template: "/api/environments/{id}/leases", path: `/api/environments/${s.envId}/leases`, scope: "company" },
      { method: "GET", template: "/api/companies/{companyId}/agents", path: `/api/companies/${s.a}/agents`, scope: "company" },
      { method: "POST", template: "/api/companies/{companyId}/agents", path: `/api/companies/${s.a}/agents`, scope: "company", body: { name: "intruder", command: "true" } },
      { method: "GET", template: "/api/agents/{id}", path: `/api/agents/${s.agentId}`, scope: "company" },
      { method: "PATCH", template: "/api/agents/{id}", path: `/api/agents/${s.agentId}`, scope: "company", body: { name: "hijacked" } },
      { method: "DELETE", template: "/api/agents/{id}", path: `/api/agents/${s.agentId}`, scope: "company" },
      { method: "PUT", template: "/api/agents/{id}/default-environment", path: `/api/agents/${s.agentId}/default-environment`, scope: "company", body: { environmentId: null } },
      { method: "POST", template: "/api/agents/{id}/runs", path: `/api/agents/${s.agentId}/runs`, scope: "company", body: {} },
      { method: "GET", template: "/api/companies/{companyId}/runs", path: `/api/companies/${s.a}/runs`, scope: "company" },
      { method: "GET", template: "/api/runs/{id}", path: `/api/runs/${run.id}`, scope: "company" },
      { method: "POST", template: "/api/runs/{id}/cancel", path: `/api/runs/${run.id}/cancel`, scope: "company" },
      { method: "GET", template: "/api/runs/{id}/output", path: `/api/runs/${run.id}/output`, scope: "company" },
      { method: "GET", template: "/api/runs/{id}/leases", path: `/api/runs/${run.id}/leases`, scope: "company" },
      { method: "GET", template: "/api/runtime/run", path: "/api/runtime/run", scope: "runtime" },
      { method: "POST", template: "/api/runtime/run/heartbeat", path: "/api/runtime/run/heartbeat", scope: "runtime" },
      { method: "POST", template: "/api/runtime/run/log", path: "/api/runtime/run/log", scope: "runtime", body: { stream: "stdout", chunk: "via runtime\n" } }
    ]
    // the table covers the whole API (a new route fails here until it is added)
    const openapi = ok(await anon.get("/api/openapi.json"))
    const documented = Object.entries(openapi.paths as Record<string, Record<string, unknown>>).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`))
    expect(routes.map((r) => `${r.method} ${r.template}`).sort()).toEqual(documented.sort())

    const snapshot = async () => JSON.stringify({
      companies: ok(await admin.get("/api/companies")),
      secrets: ok(await admin.get(`/api/companies/${s.a}/secrets`)),
      company: ok(await admin.get(`/api/companies/${s.a}`)),
      environments: ok(await admin.get(`/api/companies/${s.a}/environments?includeArchived=true`)),
      agents: ok(await admin.get(`/api/companies/${s.a}/agents`)),
      runs: (ok(await admin.get(`/api/companies/${s.a}/runs`)) as Array<any>).map((r) => [r.id, r.status]),
      leases: (ok(await admin.get(`/api/environments/${s.envId}/leases`)) as Array<any>).map((l) => [l.id, l.status]),
      plugins: (ok(await admin.get("/api/plugins")) as Array<any>).map((p) => [p.pluginId, p.status, p.workerStatus, p.pid]),
      config: ok(await admin.get(`/api/plugins/hello-promise/companies/${s.a}/config`))
    })
    const beforeMatrix = await snapshot()

    const call = (r: (typeof routes)[number], token: string | undefined) => request(server!.url, r.method, r.path, { token, ...(r.body !== undefined ? { body: r.body } : {}) })
    const problems: Array<string> = []
    const expectStatus = async (label: string, r: (typeof routes)[number], token: string | undefined, status: number) => {
      const res = await call(r, token)
      if (res.status !== status) problems.push(`${label} ${r.method} ${r.path}: expected ${status}, got ${res.status} ${res.text.slice(0, 200)}`)
      else expectError(res, status)
    }
    for (const r of routes) {
      if (r.scope === "public") continue
      await expectStatus("no token", r, undefined, 401)
      await expectStatus("bad token", r, "gantry_company_not-a-real-token", 401)
      if (r.scope === "runtime") {
        // admin and company tokens do not reach the runtime API
        await expectStatus("admin token", r, adminToken, 401)
        await expectStatus("company token", r, s.tokenA, 401)
      } else {
        await expectStatus("run token", r, runToken, 401)
        // another company's objects answer like missing ones; operator routes refuse any company token
        if (r.scope === "company") await expectStatus("company B token", r, s.tokenB, 404)
        if (r.scope === "admin") await expectStatus("company B token", r, s.tokenB, 403)
      }
    }
    expect(problems).toEqual([])
    // instance-level reads are open to company tokens (the company list is filtered)
    for (const r of routes.filter((x) => x.scope === "instance" && x.method === "GET")) expect((await call(r, s.tokenB)).status).toBe(200)
    expect((ok(await s.coB.get("/api/companies")) as Array<any>).map((c) => c.id)).toEqual([s.b])
    expect(await snapshot()).toEqual(beforeMatrix)

    // the runtime routes work with the run's own token while the run is active …
    const rt = client(server!.url, runToken)
    expect(ok(await rt.get("/api/runtime/run")).run).toMatchObject({ id: run.id, status: "running" })
    expect(ok(await rt.post("/api/runtime/run/heartbeat")).ok).toBe(true)
    expect(ok(await rt.post("/api/runtime/run/log", { stream: "stderr", chunk: "late\n" }))).toEqual({ ok: true })
    // … and stop working once it is terminal
    writeFileSync(gate("auth"), "")
    await waitFor("the run to succeed", async () => ok(await admin.get(`/api/runs/${run.id}`)).status === "succeeded")
    expectError(await rt.get("/api/runtime/run"), 401, "unauthorized")
    expectError(await rt.post("/api/runtime/run/heartbeat"), 401, "unauthorized")
    expectError(await rt.post("/api/runtime/run/log", { stream: "stdout", chunk: "too late\n" }), 401, "unauthorized")
    expect(ok(await admin.get(`/api/runs/${run.id}`)).stderr).toBe("")
  }, 60_000)

  it("graceful shutdown: SIGTERM during a run exits in bounds, the run ends cancelled, its lease released; a restart sees it", async () => {
    const { run, match } = await startAndWaitFor(s.coA, s.sleeperId, /PID=(\d+);/)
    const pid = Number(match[1])
    await waitFor("the lease to be active", async () => (await leasesOf(run.id)).some((l) => l.status === "active"))
    const tree = descendants(server!.pid)
    expect(tree).toContain(pid)
    expect(tree.length).toBeGreaterThanOrEqual(PLUGINS.length + 1)

    const t0 = Date.now()
    process.kill(server!.pid, "SIGTERM")
    const exit = await Promise.race([
      server!.exited,
      new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), SHUTDOWN_BOUND_MS))
    ])
    expect(exit).not.toBe("timeout")
    expect(Date.now() - t0).toBeLessThan(SHUTDOWN_BOUND_MS)
    // workers, the sandbox command, tsx's esbuild service: all gone with it
    await waitFor("the server's process tree to be gone", () => tree.every((p) => !isAlive(p)), 5_000)
    expect(liveSandboxes(inventoryFile)).toEqual([])

    // straight from the SQLite file
    const db = new Sqlite(join(dataDir, "gantry.db"), { readonly: true })
    try {
      const row = db.prepare("SELECT status, error FROM runs WHERE id = ?").get(run.id) as { status: string; error: string }
      expect(row.status).toBe("cancelled")
      const leases = db.prepare("SELECT status FROM leases WHERE run_id = ?").all(run.id) as Array<{ status: string }>
      expect(leases.map((l) => l.status)).toEqual(["expired"])
      const live = db.prepare("SELECT COUNT(*) AS n FROM leases WHERE status NOT IN ('released', 'failed', 'expired')").get() as { n: number }
      expect(live.n).toBe(0)
      const running = db.prepare("SELECT COUNT(*) AS n FROM runs WHERE status IN ('queued', 'running')").get() as { n: number }
      expect(running.n).toBe(0)
    } finally {
      db.close()
    }

    // a second server on the same data dir: no new admin token, the old one works, the state is the same
    server = await startServer({ dataDir })
    expect(server.adminToken).toBeUndefined()
    expect(server.output()).not.toContain("gantry_admin_")
    const again = client(server.url, adminToken)
    expect(ok(await again.get(`/api/runs/${run.id}`)).status).toBe("cancelled")
    expect((ok(await again.get(`/api/runs/${run.id}/leases`)) as Array<any>).map((l) => l.status)).toEqual(["expired"])
    await waitFor("the fixture plugin to be restored and running", async () =>
      ok(await again.get("/api/plugins/server-webhooks")).workerStatus === "running", 20_000)
    const secondTree = descendants(server.pid)
    await stopServer(server, "SIGTERM", SHUTDOWN_BOUND_MS)
    expect(secondTree.filter(isAlive)).toEqual([])
  }, 60_000)
})
