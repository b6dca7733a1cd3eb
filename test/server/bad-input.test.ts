// Server acceptance 4: bad HTTP input over real HTTP (the server layer in process, SQLite and
// PostgreSQL). Malformed JSON, wrong types, unknown fields, oversized bodies and unknown ids each get
// the documented status and the error body `{error: {code, message, status, details?}}`, and change
// nothing: every table a request could touch is compared row by row before and after.
import { HttpServer } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { PluginHost } from "../../src/host/PluginHost.js"
import { ApiTokens } from "../../src/server/Auth.js"
import * as Server from "../../src/server/Server.js"
import { freshDatabaseUrl, testDbs, type TestDb } from "../db.js"
import { childPids, fixture } from "../helpers.js"
import { expectError, ok, request, type Reply, type RequestOptions } from "./support.js"

const TABLES = [
  "companies", "environments", "agents", "runs", "run_logs", "leases", "secrets", "secret_versions", "api_tokens",
  "events", "plugin_configs", "plugin_state", "job_runs"
] as const

/** Every row of every table a request could touch (sorted, so the order of reads does not matter). */
const snapshot = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const out: Record<string, Array<string>> = {}
  for (const t of TABLES) {
    const rows = yield* sql<Record<string, unknown>>`SELECT * FROM ${sql(t)}`.pipe(Effect.orDie)
    out[t] = rows.map((r) => JSON.stringify(r)).sort()
  }
  return out
})

const MiB = 1024 * 1024

const serverLayer = (db: TestDb, dataDir: string) =>
  Layer.unwrapScoped(Effect.map(freshDatabaseUrl(db), (url) =>
    Server.layer({ bindHost: "127.0.0.1", port: 0, dataDir, databaseUrl: url })))

interface Case {
  readonly name: string
  readonly method: string
  readonly path: string
  readonly options?: RequestOptions
  readonly status: number
  readonly code: string | RegExp
  /** A field path the error details must name. */
  readonly detailsPath?: ReadonlyArray<string>
}

for (const db of testDbs) {
  describe(`bad HTTP input [${db.kind}]`, () => {
    it.live("typed errors with the documented status and body, and nothing changes", () =>
      Effect.gen(function* () {
        const before = childPids()
        const dataDir = mkdtempSync(join(tmpdir(), "gantry-bad-http-"))
        yield* Effect.gen(function* () {
          const address = (yield* HttpServer.HttpServer).address
          if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP server")
          const base = `http://127.0.0.1:${address.port}`
          const token = (yield* (yield* ApiTokens).ensureAdmin).pipe((o) => (o._tag === "Some" ? o.value : ""))
          expect(token).toMatch(/^gantry_admin_/)
          const host = yield* PluginHost
          yield* host.install(fixture("server-webhooks"))
          yield* host.start("server-webhooks")
          const call = (method: string, path: string, options: RequestOptions = {}) =>
            Effect.promise(() => request(base, method, path, { token, ...options }))
          const json = (body: unknown): RequestOptions => ({ body })
          const raw = (text: string, contentType = "application/json"): RequestOptions => ({ raw: text, headers: { "content-type": contentType } })

          // a little state for the ids to point at
          const company = ok(yield* call("POST", "/api/companies", json({ name: "acme" })), 201)
          const c = company.id as string
          const env = ok(yield* call("POST", `/api/companies/${c}/environments`, json({ name: "local-1", driver: "local" })), 201)
          const archived = ok(yield* call("POST", `/api/companies/${c}/environments`, json({ name: "old", driver: "local" })), 201)
          ok(yield* call("POST", `/api/environments/${archived.id}/archive`))
          const agent = ok(yield* call("POST", `/api/companies/${c}/agents`, json({ name: "a", command: "true" })), 201)
          const secret = ok(yield* call("POST", `/api/companies/${c}/secrets`, json({ name: "s", value: "secret-value" })), 201)
          ok(yield* call("PUT", `/api/plugins/server-webhooks/companies/${c}/config`, json({ label: "kept" })))

          const cases: Array<Case> = [
            // malformed JSON
            { name: "truncated JSON", method: "POST", path: "/api/companies", options: raw(`{"name":`), status: 400, code: "invalid_json" },
            { name: "JS, not JSON", method: "POST", path: `/api/companies/${c}/agents`, options: raw(`{name: 'a', command: 'true'}`), status: 400, code: "invalid_json" },
            { name: "trailing comma", method: "PATCH", path: `/api/environments/${env.id}`, options: raw(`{"name":"x",}`), status: 400, code: "invalid_json" },
            { name: "not JSON at all", method: "POST", path: `/api/agents/${agent.id}/runs`, options: raw("run it please"), status: 400, code: "invalid_json" },
            { name: "malformed config", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, options: raw("{"), status: 400, code: "invalid_json" },
            { name: "malformed secret", method: "POST", path: `/api/companies/${c}/secrets`, options: raw(`{"name":"x","value":"y"`), status: 400, code: "invalid_json" },
            // wrong types
            { name: "number for a string", method: "POST", path: "/api/companies", options: json({ name: 5 }), status: 400, code: "invalid_request", detailsPath: ["name"] },
            { name: "array body", method: "POST", path: "/api/companies", options: json([{ name: "a" }]), status: 400, code: "invalid_request" },
            { name: "null body", method: "POST", path: "/api/companies", options: raw("null"), status: 400, code: "invalid_request" },
            { name: "string body", method: "POST", path: `/api/companies/${c}/secrets`, options: json("secret"), status: 400, code: "invalid_request" },
            { name: "missing required field", method: "POST", path: `/api/companies/${c}/agents`, options: json({ name: "b" }), status: 400, code: "invalid_request", detailsPath: ["command"] },
            { name: "args not an array", method: "POST", path: `/api/companies/${c}/agents`, options: json({ name: "b", command: "true", args: "-c x" }), status: 400, code: "invalid_request", detailsPath: ["args"] },
            { name: "timeoutMs a string", method: "PATCH", path: `/api/agents/${agent.id}`, options: json({ timeoutMs: "soon" }), status: 400, code: "invalid_request", detailsPath: ["timeoutMs"] },
            { name: "unknown driver", method: "POST", path: `/api/companies/${c}/environments`, options: json({ name: "d", driver: "docker" }), status: 400, code: "invalid_request", detailsPath: ["driver"] },
            { name: "env value a number", method: "POST", path: `/api/agents/${agent.id}/runs`, options: json({ env: { A: 1 } }), status: 400, code: "invalid_request", detailsPath: ["env", "A"] },
            { name: "environmentId a number", method: "PUT", path: `/api/companies/${c}/default-environment`, options: json({ environmentId: 5 }), status: 400, code: "invalid_request", detailsPath: ["environmentId"] },
            { name: "secret value a number", method: "POST", path: `/api/companies/${c}/secrets`, options: json({ name: "n", value: 42 }), status: 400, code: "invalid_request", detailsPath: ["value"] },
            { name: "config not an object", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, options: json(["label"]), status: 400, code: "invalid_request" },
            { name: "data params not an object", method: "POST", path: `/api/plugins/server-webhooks/companies/${c}/data/deliveries`, options: json({ params: "x" }), status: 400, code: "invalid_request", detailsPath: ["params"] },
            { name: "limit not a number", method: "GET", path: `/api/companies/${c}/runs?limit=abc`, status: 400, code: "invalid_request", detailsPath: ["limit"] },
            { name: "includeArchived not a boolean", method: "GET", path: `/api/companies/${c}/environments?includeArchived=maybe`, status: 400, code: "invalid_request", detailsPath: ["includeArchived"] },
            { name: "JSON sent as text/plain", method: "POST", path: "/api/companies", options: raw(`{"name":"x"}`, "text/plain"), status: 415, code: "unsupported_media_type" },
            // unknown fields
            { name: "unknown company field", method: "POST", path: "/api/companies", options: json({ name: "x", plan: "gold" }), status: 400, code: "invalid_request", detailsPath: ["plan"] },
            { name: "unknown agent field", method: "POST", path: `/api/companies/${c}/agents`, options: json({ name: "b", command: "true", shell: true }), status: 400, code: "invalid_request", detailsPath: ["shell"] },
            { name: "misspelt patch field", method: "PATCH", path: `/api/agents/${agent.id}`, options: json({ nmae: "x" }), status: 400, code: "invalid_request", detailsPath: ["nmae"] },
            { name: "unknown environment field", method: "POST", path: `/api/companies/${c}/environments`, options: json({ name: "e2", driver: "local", region: "eu" }), status: 400, code: "invalid_request", detailsPath: ["region"] },
            { name: "unknown run field", method: "POST", path: `/api/agents/${agent.id}/runs`, options: json({ priority: 1 }), status: 400, code: "invalid_request", detailsPath: ["priority"] },
            { name: "unknown secret field", method: "POST", path: `/api/companies/${c}/secrets`, options: json({ name: "n", value: "v", note: "x" }), status: 400, code: "invalid_request", detailsPath: ["note"] },
            { name: "unknown token field", method: "POST", path: `/api/companies/${c}/tokens`, options: json({ scope: "admin" }), status: 400, code: "invalid_request", detailsPath: ["scope"] },
            { name: "unknown config field (schema)", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, options: json({ label: "x", extra: 1 }), status: 422, code: "config_invalid" },
            // oversized bodies: refused before they are read (the announced length is over 1 MiB)
            { name: "oversized company", method: "POST", path: "/api/companies", options: json({ name: "x".repeat(MiB + 10) }), status: 413, code: "payload_too_large" },
            { name: "oversized secret", method: "POST", path: `/api/companies/${c}/secrets`, options: json({ name: "big", value: "v".repeat(2 * MiB) }), status: 413, code: "payload_too_large" },
            { name: "oversized config", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, options: json({ label: "y".repeat(MiB) }), status: 413, code: "payload_too_large" },
            { name: "oversized webhook", method: "POST", path: "/api/plugins/server-webhooks/webhooks/inbound", options: { ...raw("z".repeat(MiB + 1), "text/plain"), token: undefined }, status: 413, code: "payload_too_large" },
            // unknown ids
            { name: "unknown company", method: "GET", path: "/api/companies/nope", status: 404, code: "company_not_found" },
            { name: "runs of an unknown company", method: "GET", path: "/api/companies/nope/runs", status: 404, code: "company_not_found" },
            { name: "agents of an unknown company", method: "GET", path: "/api/companies/nope/agents", status: 404, code: "company_not_found" },
            { name: "environments of an unknown company", method: "GET", path: "/api/companies/nope/environments", status: 404, code: "company_not_found" },
            { name: "secret in an unknown company", method: "POST", path: "/api/companies/nope/secrets", options: json({ name: "n", value: "v" }), status: 404, code: "company_not_found" },
            { name: "token for an unknown company", method: "POST", path: "/api/companies/nope/tokens", options: json({}), status: 404, code: "company_not_found" },
            { name: "config of an unknown company", method: "GET", path: "/api/plugins/server-webhooks/companies/nope/config", status: 404, code: "company_not_found" },
            { name: "config put for an unknown company", method: "PUT", path: "/api/plugins/server-webhooks/companies/nope/config", options: json({}), status: 404, code: "company_not_found" },
            { name: "data for an unknown company", method: "POST", path: "/api/plugins/server-webhooks/companies/nope/data/deliveries", options: json({}), status: 404, code: "company_not_found" },
            { name: "unknown run", method: "GET", path: "/api/runs/nope", status: 404, code: "run_not_found" },
            { name: "cancel an unknown run", method: "POST", path: "/api/runs/nope/cancel", status: 404, code: "run_not_found" },
            { name: "output of an unknown run", method: "GET", path: "/api/runs/nope/output", status: 404, code: "run_not_found" },
            { name: "leases of an unknown run", method: "GET", path: "/api/runs/nope/leases", status: 404, code: "run_not_found" },
            { name: "unknown agent", method: "GET", path: "/api/agents/nope", status: 404, code: "agent_not_found" },
            { name: "run an unknown agent", method: "POST", path: "/api/agents/nope/runs", options: json({}), status: 404, code: "agent_not_found" },
            { name: "patch an unknown agent", method: "PATCH", path: "/api/agents/nope", options: json({ name: "x" }), status: 404, code: "agent_not_found" },
            { name: "delete an unknown agent", method: "DELETE", path: "/api/agents/nope", status: 404, code: "agent_not_found" },
            { name: "run in an unknown environment", method: "POST", path: `/api/agents/${agent.id}/runs`, options: json({ environmentId: "nope" }), status: 404, code: /not_found$/ },
            { name: "unknown environment", method: "GET", path: "/api/environments/nope", status: 404, code: "environment_not_found" },
            { name: "patch an unknown environment", method: "PATCH", path: "/api/environments/nope", options: json({ name: "x" }), status: 404, code: "environment_not_found" },
            { name: "archive an unknown environment", method: "POST", path: "/api/environments/nope/archive", status: 404, code: "environment_not_found" },
            { name: "probe an unknown environment", method: "POST", path: "/api/environments/nope/probe", status: 404, code: "environment_not_found" },
            { name: "delete an unknown environment", method: "DELETE", path: "/api/environments/nope", status: 404, code: "environment_not_found" },
            { name: "unknown default environment", method: "PUT", path: `/api/companies/${c}/default-environment`, options: json({ environmentId: "nope" }), status: 404, code: "environment_not_found" },
            { name: "unknown secret", method: "GET", path: `/api/companies/${c}/secrets/nope`, status: 404, code: "secret_not_found" },
            { name: "rotate an unknown secret", method: "POST", path: `/api/companies/${c}/secrets/nope/rotate`, options: json({ value: "v" }), status: 404, code: "secret_not_found" },
            { name: "delete an unknown secret", method: "DELETE", path: `/api/companies/${c}/secrets/nope`, status: 404, code: "secret_not_found" },
            { name: "unknown plugin", method: "GET", path: "/api/plugins/nope", status: 404, code: "plugin_not_found" },
            { name: "enable an unknown plugin", method: "POST", path: "/api/plugins/nope/enable", status: 404, code: "plugin_not_found" },
            { name: "unknown job", method: "POST", path: "/api/plugins/server-webhooks/jobs/nope/trigger", status: 404, code: "job_not_found" },
            { name: "webhook of an unknown plugin", method: "POST", path: "/api/plugins/nope/webhooks/inbound", options: json({}), status: 404, code: "plugin_not_found" },
            { name: "undeclared webhook", method: "POST", path: "/api/plugins/server-webhooks/webhooks/nope", options: json({ a: 1 }), status: 404, code: "webhook_not_found" },
            { name: "unknown route", method: "GET", path: "/api/nope", status: 404, code: "not_found" },
            { name: "wrong method", method: "DELETE", path: "/api/companies", status: 405, code: "method_not_allowed" },
            // well-formed but refused by the domain (SPEC §14)
            { name: "archived environment", method: "POST", path: `/api/agents/${agent.id}/runs`, options: json({ environmentId: archived.id }), status: 422, code: "run_invalid" },
            { name: "GANTRY_* run variable", method: "POST", path: `/api/agents/${agent.id}/runs`, options: json({ env: { GANTRY_RUN_ID: "x" } }), status: 400, code: "invalid_request" },
            { name: "GANTRY_* agent variable", method: "POST", path: `/api/companies/${c}/agents`, options: json({ name: "b", command: "true", env: { GANTRY_X: "1" } }), status: 400, code: "invalid_request" },
            { name: "unknown sandbox provider", method: "POST", path: `/api/companies/${c}/environments`, options: json({ name: "sb", driver: "sandbox", config: { provider: "nope/x" } }), status: 422, code: "environment_invalid" },
            { name: "duplicate environment name", method: "POST", path: `/api/companies/${c}/environments`, options: json({ name: "local-1", driver: "local" }), status: 409, code: "environment_conflict" },
            { name: "empty secret value", method: "POST", path: `/api/companies/${c}/secrets`, options: json({ name: "n", value: "" }), status: 400, code: "invalid_request", detailsPath: ["value"] },
            { name: "config failing its schema", method: "PUT", path: `/api/plugins/server-webhooks/companies/${c}/config`, options: json({ label: "x".repeat(41) }), status: 422, code: "config_invalid" }
          ]

          const beforeAll = yield* snapshot
          const problems: Array<string> = []
          for (const k of cases) {
            const res: Reply = yield* call(k.method, k.path, k.options)
            const label = `${k.name} (${k.method} ${k.path.slice(0, 80)})`
            const step = yield* Effect.either(Effect.try(() => {
              const e = expectError(res, k.status, k.code)
              if (k.detailsPath) {
                const paths = (Array.isArray(e.details) ? e.details : []).map((d: any) => JSON.stringify(d.path))
                expect(paths).toContain(JSON.stringify(k.detailsPath))
              }
            }))
            if (step._tag === "Left") problems.push(`${label}: ${String(step.left.error).slice(0, 300)} | got ${res.status} ${res.text.slice(0, 200)}`)
            // each case on its own changes nothing
            const now = yield* snapshot
            if (JSON.stringify(now) !== JSON.stringify(beforeAll)) problems.push(`${label}: changed the database`)
          }
          expect(problems).toEqual([])

          // a chunked body (no length announced) that crosses 1 MiB: cut off while it is read; the client
          // sees the connection closed (or a 413 if the answer wins the race) and nothing is stored
          const chunk = new TextEncoder().encode("x".repeat(64 * 1024))
          const chunked = (path: string, extra: Record<string, string> = {}) =>
            Effect.promise(() => {
              let sent = 0
              const body = new ReadableStream<Uint8Array>({
                start: (controller) => void controller.enqueue(new TextEncoder().encode(`{"name":"`)),
                pull: (controller) => {
                  if (sent > 2 * MiB) {
                    controller.enqueue(new TextEncoder().encode(`"}`))
                    controller.close()
                    return
                  }
                  sent += chunk.length
                  controller.enqueue(chunk)
                }
              })
              return fetch(`${base}${path}`, {
                method: "POST", body, duplex: "half", headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...extra }
              } as RequestInit).then(
                async (r) => ({ status: r.status, text: await r.text() }),
                (e: unknown) => ({ status: 0, text: String((e as { cause?: unknown }).cause ?? e) })
              )
            })
          for (const path of ["/api/companies", "/api/plugins/server-webhooks/webhooks/inbound"]) {
            const res = yield* chunked(path)
            if (res.status !== 0) {
              expect(res.status).toBe(413)
              expect(JSON.parse(res.text)).toMatchObject({ error: { code: "payload_too_large", status: 413 } })
            }
          }
          // a body just under the limit is read normally
          const near = yield* call("POST", "/api/plugins/server-webhooks/config/test", json({ label: "x".repeat(MiB - 64) }))
          expect(near.status).toBe(200)
          expect(near.body).toMatchObject({ ok: false })

          // the server is fine, and nothing changed
          expect(ok(yield* call("GET", "/api/health")).ok).toBe(true)
          expect(yield* snapshot).toEqual(beforeAll)
          expect(ok(yield* call("GET", "/api/companies"))).toHaveLength(1)
          expect(ok(yield* call("GET", `/api/companies/${c}/secrets`))).toEqual([secret])
          expect(ok(yield* call("GET", `/api/plugins/server-webhooks/companies/${c}/config`))).toEqual({ label: "kept" })
          expect(ok(yield* call("POST", `/api/plugins/server-webhooks/companies/${c}/data/deliveries`, json({})))).toEqual([])
        }).pipe(Effect.provide(serverLayer(db, dataDir)), Effect.ensuring(Effect.sync(() => rmSync(dataDir, { recursive: true, force: true }))))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }), 90_000)
  })
}
