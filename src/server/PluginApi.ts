// Plugin API routes (SPEC §15): `/api/plugins/:pluginId/api/*` → the worker's `handleApiRequest`, with
// the request/response shapes of Paperclip's published SDK. Before any call: the bearer token, the
// plugin's `api.routes.register` capability, the route (404 unknown path, 405 + Allow for a method it
// does not declare), the route's auth mode, the company scope, the plugin's state, a body limit and
// the body's type. The call has its own timeout; every failure answers `{error: {code, message}}`.
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Config, Effect, Either } from "effect"
import { RunTokens } from "../environments/RunToken.js"
import { PluginHost } from "../host/PluginHost.js"
import { isRpcError } from "../protocol/errors.js"
import type { ManifestApiRoute } from "../protocol/manifest.js"
import { Companies } from "../work/Companies.js"
import { Runs } from "../work/Runs.js"
import { ApiTokens, type Actor } from "./Auth.js"

/** Bodies of plugin API requests are limited to this (smaller than the API's 1 MiB). */
export const PLUGIN_API_MAX_BODY_BYTES = 256 * 1024
const PREFIX_RE = /^\/api\/plugins\/([^/]+)\/api(\/.*)?$/

/** `pluginId` and the plugin-local path when `pathname` is a plugin API route. */
export const pluginApiPath = (pathname: string): { readonly pluginId: string; readonly rest: string } | undefined => {
  const m = PREFIX_RE.exec(pathname)
  return m ? { pluginId: m[1]!, rest: m[2] && m[2].length > 0 ? m[2] : "/" } : undefined
}

/** Match a plugin-local path against a route's `path` (`:name` captures one segment). */
export const matchPath = (routePath: string, path: string): Record<string, string> | undefined => {
  const want = routePath.split("/").filter((s) => s.length > 0)
  const got = path.split("/").filter((s) => s.length > 0)
  if (want.length !== got.length) return undefined
  const params: Record<string, string> = {}
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!, g = got[i]!
    if (w.startsWith(":")) params[w.slice(1)] = g
    else if (w !== g) return undefined
  }
  return params
}

class Reply {
  readonly _tag = "Reply"
  constructor(readonly status: number, readonly code: string, readonly message: string, readonly headers: Record<string, string> = {}) {}
}

const fail = (status: number, code: string, message: string, headers?: Record<string, string>) => Effect.fail(new Reply(status, code, message, headers))

const errorResponse = (r: Reply) =>
  HttpServerResponse.unsafeJson({ error: { code: r.code, message: r.message, status: r.status } }, { status: r.status, headers: r.headers })

/** Headers a plugin may not set on its answer (the server owns framing, connection and cookies). */
const RESERVED_HEADERS = new Set(["content-length", "transfer-encoding", "connection", "keep-alive", "set-cookie", "upgrade", "trailer"])

const actorJson = (a: Actor) =>
  a.kind === "admin"
    ? { actorType: "user", actorId: "admin", userId: "admin", agentId: null, runId: null }
    : a.kind === "company"
      ? { actorType: "user", actorId: `company:${a.companyId}`, userId: null, agentId: null, runId: null }
      : { actorType: "agent", actorId: a.agentId, agentId: a.agentId, userId: null, runId: a.runId }

const authenticate = Effect.gen(function* () {
  const req = yield* HttpServerRequest.HttpServerRequest
  const token = (req.headers.authorization ?? "").replace(/^Bearer\s+/i, "").trim()
  if (token.length === 0) return yield* fail(401, "unauthorized", "missing bearer token")
  if (token.split(".").length === 3) {
    // a run token: the agent of a live run
    const runTokens = yield* RunTokens
    const runs = yield* Runs
    const claims = yield* runTokens.verifyForRun(token, runs.isActive).pipe(
      Effect.mapError((e) => new Reply(401, "unauthorized", `run token refused: ${e.message}`)))
    return { kind: "run", runId: claims.sub, companyId: claims.cid, agentId: claims.aid } satisfies Actor as Actor
  }
  return yield* Effect.mapError((yield* ApiTokens).authenticate(token), () => new Reply(401, "unauthorized", "invalid or unknown bearer token"))
})

const decodeBody = (bytes: Uint8Array, contentType: string) =>
  Effect.gen(function* () {
    if (bytes.byteLength === 0) return null
    if (!/\bjson\b/i.test(contentType)) return yield* fail(415, "unsupported_media_type", "plugin API bodies are JSON: send content-type application/json")
    const text = yield* Effect.try({
      try: () => new TextDecoder("utf-8", { fatal: true }).decode(bytes),
      catch: () => new Reply(400, "invalid_utf8", "the request body is not valid UTF-8")
    })
    return yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: () => new Reply(400, "invalid_json", "the request body could not be read as JSON")
    })
  })

/** The company a call acts for: the route's companyResolution, else `?companyId=`, else the token's own. */
const resolveCompany = (route: ManifestApiRoute, actor: Actor, query: Record<string, string | Array<string>>, body: unknown) =>
  Effect.gen(function* () {
    const first = (v: unknown) => (Array.isArray(v) ? v[0] : v)
    const cr = route.companyResolution
    let named: unknown
    if (cr?.from === "issue") return yield* fail(501, "not_implemented", `route "${route.routeKey}" resolves its company from an issue; Gantry has no issues`)
    if (cr?.from === "query") named = first(query[cr.key])
    else if (cr?.from === "body") named = typeof body === "object" && body !== null ? (body as Record<string, unknown>)[cr.key] : undefined
    else named = first(query.companyId)
    if (named !== undefined && (typeof named !== "string" || named.length === 0)) return yield* fail(400, "invalid_request", "the company id must be a non-empty string")
    const companyId = (named as string | undefined) ?? (actor.kind === "admin" ? undefined : actor.companyId)
    if (companyId === undefined) {
      const where = cr ? `${cr.from} field "${cr.key}"` : "?companyId="
      return yield* fail(400, "company_required", `name the company this call acts for (${where})`)
    }
    if (actor.kind !== "admin" && actor.companyId !== companyId) return yield* fail(403, "forbidden", `this token may not act for company "${companyId}"`)
    yield* Effect.mapError((yield* Companies).get(companyId), () => new Reply(404, "company_not_found", `company "${companyId}" not found`))
    return companyId
  })

const rpcReply = (e: unknown, pluginId: string, routeKey: string): Reply => {
  const code = isRpcError(e) ? e.code : undefined
  const message = typeof (e as { message?: unknown })?.message === "string" ? (e as { message: string }).message : String(e)
  switch (code) {
    case -32003: return new Reply(504, "worker_timeout", `plugin "${pluginId}" did not answer route "${routeKey}" in time: ${message}`)
    case -32000: return new Reply(503, "worker_unavailable", `plugin "${pluginId}" is unavailable: ${message}`)
    case -32004:
    case -32601: return new Reply(501, "not_implemented", `plugin "${pluginId}" does not implement handleApiRequest`)
    default: return new Reply(502, "worker_error", `plugin "${pluginId}" failed on route "${routeKey}": ${message}`)
  }
}

const toResponse = (result: unknown, pluginId: string): Either.Either<HttpServerResponse.HttpServerResponse, Reply> => {
  const bad = (why: string) => Either.left(new Reply(502, "invalid_response", `plugin "${pluginId}" answered with an invalid response: ${why}`))
  const r = (result ?? {}) as { status?: unknown; headers?: unknown; body?: unknown }
  if (typeof r !== "object" || Array.isArray(r)) return bad("not an object")
  const status = r.status ?? 200
  if (typeof status !== "number" || !Number.isInteger(status) || status < 200 || status > 599) return bad(`status ${JSON.stringify(status)} is not an integer in 200–599`)
  const headers: Record<string, string> = {}
  if (r.headers !== undefined) {
    if (typeof r.headers !== "object" || r.headers === null || Array.isArray(r.headers)) return bad("headers is not an object")
    for (const [k, v] of Object.entries(r.headers)) {
      if (typeof v !== "string" || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k) || /[\r\n]/.test(v)) return bad(`header ${JSON.stringify(k)} is not a string header`)
      if (!RESERVED_HEADERS.has(k.toLowerCase())) headers[k.toLowerCase()] = v
    }
  }
  if (r.body === undefined || status === 204 || status === 304) return Either.right(HttpServerResponse.empty({ status, headers }))
  if (typeof r.body === "string" && headers["content-type"] !== undefined) {
    return Either.right(HttpServerResponse.text(r.body, { status, headers, contentType: headers["content-type"] }))
  }
  const { "content-type": _ignored, ...rest } = headers
  return Either.right(HttpServerResponse.unsafeJson(r.body, { status, headers: rest }))
}

/** Serve one plugin API request. */
export const handle = (pluginId: string, rest: string) =>
  Effect.gen(function* () {
    const req = yield* HttpServerRequest.HttpServerRequest
    const actor = yield* authenticate
    const host = yield* PluginHost
    const status = yield* Effect.mapError(host.status(pluginId), () => new Reply(404, "plugin_not_found", `plugin "${pluginId}" not found`))
    const info = yield* Effect.mapError(host.manifest(pluginId), () => new Reply(404, "plugin_not_found", `plugin "${pluginId}" not found`))
    if (!info.activeCapabilities.includes("api.routes.register")) {
      return yield* fail(403, "capability_missing", `plugin "${pluginId}" lacks the api.routes.register capability`)
    }
    const path = yield* Effect.try({
      try: () => rest.split("/").map((s) => decodeURIComponent(s)).join("/"),
      catch: () => new Reply(400, "invalid_request", "the path is not valid percent-encoding")
    })
    const matching = (info.manifest.apiRoutes ?? []).flatMap((route) => {
      const params = matchPath(route.path, rest)
      return params ? [{ route, params }] : []
    })
    if (matching.length === 0) return yield* fail(404, "route_not_found", `plugin "${pluginId}" declares no API route ${path}`)
    const method = req.method.toUpperCase()
    const hit = matching.find((m) => m.route.method === method)
    if (!hit) {
      const allow = [...new Set(matching.map((m) => m.route.method))].join(", ")
      return yield* fail(405, "method_not_allowed", `${method} is not declared for ${path} (allowed: ${allow})`, { allow })
    }
    const { route } = hit
    const params = Object.fromEntries(Object.entries(hit.params).map(([k, v]) => [k, decodeURIComponent(v)]))
    if (route.auth === "webhook") return yield* fail(501, "not_implemented", `route "${route.routeKey}" has auth "webhook", which Gantry does not serve on API routes (declare a manifest webhook instead)`)
    if (route.auth === "board" && actor.kind === "run") return yield* fail(403, "forbidden", `route "${route.routeKey}" is for board users (admin or company tokens), not agents`)
    if (route.auth === "agent" && actor.kind !== "run") return yield* fail(403, "forbidden", `route "${route.routeKey}" is for agents (a run token)`)

    const length = Number(req.headers["content-length"] ?? "0")
    if (length > PLUGIN_API_MAX_BODY_BYTES) return yield* fail(413, "payload_too_large", `plugin API bodies are limited to ${PLUGIN_API_MAX_BODY_BYTES} bytes`)
    const bytes = new Uint8Array(yield* Effect.mapError(req.arrayBuffer, () => new Reply(400, "bad_request", "could not read the request body")))
    if (bytes.byteLength > PLUGIN_API_MAX_BODY_BYTES) return yield* fail(413, "payload_too_large", `plugin API bodies are limited to ${PLUGIN_API_MAX_BODY_BYTES} bytes`)
    const body = yield* decodeBody(bytes, req.headers["content-type"] ?? "")

    const url = new URL(req.url, "http://gantry.local")
    const query: Record<string, string | Array<string>> = {}
    for (const key of new Set(url.searchParams.keys())) {
      const all = url.searchParams.getAll(key)
      query[key] = all.length === 1 ? all[0]! : all
    }
    const companyId = yield* resolveCompany(route, actor, query, body)

    if (status.status === "disabled") return yield* fail(409, "plugin_disabled", `plugin "${pluginId}" is disabled`)
    if (status.workerStatus !== "running") return yield* fail(503, "worker_unavailable", `plugin "${pluginId}" is not running (${status.workerStatus})`)
    if (!status.supportedMethods.includes("handleApiRequest")) return yield* fail(501, "not_implemented", `plugin "${pluginId}" does not implement handleApiRequest`)

    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.headers)) if (k !== "authorization" && k !== "cookie") headers[k] = String(v)
    const timeoutMs = yield* Config.integer("GANTRY_PLUGIN_API_TIMEOUT_MS").pipe(Config.withDefault(30_000), Effect.orElseSucceed(() => 30_000))
    const result = yield* host.call(pluginId, "handleApiRequest", {
      routeKey: route.routeKey, method, path, params, query, body, actor: actorJson(actor), companyId, headers
    }, { companyId, timeoutMs }).pipe(Effect.mapError((e) => rpcReply(e, pluginId, route.routeKey)))
    return yield* toResponse(result, pluginId)
  }).pipe(
    Effect.catchAll((e) => Effect.succeed(errorResponse(e))),
    Effect.withSpan("PluginApi.handle", { attributes: { pluginId } })
  )
