// The HTTP server: the app layer under the HttpApi, OpenAPI at /api/openapi.json, docs at /api/docs,
// one error format for everything (decode errors, unknown routes, oversized bodies included).
// Built after the listener so the runtime URL knows the bound port.
import { HttpApiBuilder, HttpApiScalar, HttpApp, HttpIncomingMessage, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Cause, Effect, Layer, Option } from "effect"
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"
import * as RuntimeUrl from "../environments/RuntimeUrl.js"
import { Runtime } from "../work/Runtime.js"
import * as RuntimeService from "../work/Runtime.js"
import * as App from "./App.js"
import { GantryApi } from "./Api.js"
import * as Auth from "./Auth.js"
import * as Gate from "./Gate.js"
import { MAX_BODY_BYTES } from "./Limits.js"
import * as Handlers from "./Handlers.js"
import * as PluginApi from "./PluginApi.js"

export { MAX_BODY_BYTES }

export interface ServerOptions extends Omit<App.AppOptions, "runtimeUrl" | "runtimeUrlLayer"> {
  readonly bindHost: string
  /** 0 picks a free port (tests). */
  readonly port: number
  readonly publicUrl?: string | undefined
}

const errorJson = Gate.errorResponse

/** HttpApi answers a request that fails its schema with its own body: rewrite it to ours. */
const reformat = (res: HttpServerResponse.HttpServerResponse): HttpServerResponse.HttpServerResponse => {
  if (res.status !== 400 || res.body._tag !== "Uint8Array") return res
  try {
    const body = JSON.parse(new TextDecoder().decode(res.body.body)) as { _tag?: string; message?: string; issues?: unknown }
    return body?._tag === "HttpApiDecodeError"
      ? errorJson(400, "invalid_request", body.message ?? "the request does not match the schema", body.issues)
      : res
  } catch {
    return res
  }
}

const tooLarge = Gate.tooLarge

/** The methods each path has: the API's endpoints plus the document routes. */
const methodsOf = Gate.routeTable(GantryApi, [["GET", "/api/openapi.json"], ["GET", "/api/docs"]])

/** An unknown path is a 404; a known path asked with a method it lacks is a 405 naming those it has. */
const noRoute = (req: HttpServerRequest.HttpServerRequest) => {
  const path = new URL(req.url, "http://localhost").pathname
  const allowed = methodsOf(path)
  return allowed.length === 0
    ? errorJson(404, "not_found", "no such route")
    : errorJson(405, "method_not_allowed", `${req.method} is not allowed here; allowed: ${allowed.join(", ")}`, { allowed }, { allow: allowed.join(", ") })
}

/** A caller's X-Request-Id when it is a plain token, else a new one. */
const requestIdOf = (req: HttpServerRequest.HttpServerRequest) => {
  const given = req.headers["x-request-id"]
  return given !== undefined && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : randomUUID()
}

const errorCodeOf = (res: HttpServerResponse.HttpServerResponse) => {
  if (res.body._tag !== "Uint8Array" || res.body.body.length > 64 * 1024) return undefined
  try {
    return (JSON.parse(new TextDecoder().decode(res.body.body)) as { error?: { code?: string } })?.error?.code
  } catch {
    return undefined
  }
}

/** Failures that did not come from a handler (decode errors, unknown routes, refused or oversized
 * bodies, defects) answer in the API's error format too; every error answer is logged with the
 * request id, which the response carries as `X-Request-Id`. */
const errorFormat = (app: HttpApp.Default) =>
  HttpIncomingMessage.withMaxBodySize(
    Effect.gen(function* () {
      const original = yield* HttpServerRequest.HttpServerRequest
      const requestId = requestIdOf(original)
      // the API writes its own answers before this middleware sees them: the id goes on as they are written
      yield* HttpApp.appendPreResponseHandler((_req, res) => Effect.succeed(HttpServerResponse.setHeader(res, "x-request-id", requestId)))
      // plugin API routes (/api/plugins/:pluginId/api/*) are the plugins' own, outside the HttpApi: they
      // check their own body (limit, type, UTF-8)
      const pluginRoute = PluginApi.pluginApiPath(new URL(original.url, "http://localhost").pathname)
      const res = yield* (pluginRoute
        ? PluginApi.handle(pluginRoute.pluginId, pluginRoute.rest)
        : Gate.checkBody(original).pipe(Effect.flatMap((req) => Effect.provideService(app, HttpServerRequest.HttpServerRequest, req)))).pipe(
        Effect.map(reformat),
        Effect.catchAllCause((cause) => {
          const failure = Cause.failureOption(cause)
          if (Option.isNone(failure)) {
            if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
            return Effect.as(
              Effect.logError("request failed with a defect").pipe(Effect.annotateLogs({ requestId, cause: Cause.pretty(cause) })),
              errorJson(500, "internal", `internal error (request id ${requestId})`)
            )
          }
          const e = failure.value as { _tag?: string; reason?: string; message?: string; issues?: unknown; cause?: unknown; status?: number; code?: string; details?: unknown }
          switch (e?._tag) {
            case "Refused":
              return Effect.succeed(errorJson(e.status!, e.code!, e.message!, e.details))
            case "HttpApiDecodeError":
              return Effect.succeed(errorJson(400, "invalid_request", e.message ?? "the request does not match the schema", e.issues))
            case "RouteNotFound":
              return Effect.succeed(noRoute(original))
            case "RequestError": {
              const text = `${e.message ?? ""} ${String(e.cause ?? "")}`
              if (/too large|size|limit/i.test(text)) return Effect.succeed(tooLarge())
              return Effect.succeed(errorJson(400, "invalid_json", "the request body could not be read as JSON"))
            }
            default:
              return Effect.as(
                Effect.logError("request failed").pipe(Effect.annotateLogs({ requestId, cause: Cause.pretty(cause) })),
                errorJson(500, "internal", `internal error (request id ${requestId})`)
              )
          }
        })
      )
      if (res.status >= 400) {
        const log = res.status >= 500 ? Effect.logError : Effect.logInfo
        yield* log("request answered with an error").pipe(Effect.annotateLogs({
          requestId, method: original.method, url: original.url.slice(0, 200), status: res.status, code: errorCodeOf(res) ?? ""
        }))
      }
      return HttpServerResponse.setHeader(res, "x-request-id", requestId)
    }),
    Option.some(MAX_BODY_BYTES)
  )

/** Inside the API (before its error encoding): request decode failures and unknown routes answer in
 * our format. */
const apiErrorFormat = HttpApiBuilder.middleware((app) =>
  Effect.catchAllCause(app, (cause) =>
    Effect.gen(function* () {
      const e = Cause.squash(cause) as { _tag?: string; message?: string; issues?: unknown; reason?: string } | undefined
      if (e?._tag === "HttpApiDecodeError") return errorJson(400, "invalid_request", e.message ?? "the request does not match the schema", e.issues)
      if (e?._tag === "RouteNotFound") return noRoute(yield* HttpServerRequest.HttpServerRequest)
      if (e?._tag === "RequestError") {
        const req = yield* HttpServerRequest.HttpServerRequest
        const length = Number(req.headers["content-length"] ?? "0")
        return length > MAX_BODY_BYTES ? tooLarge() : errorJson(400, "invalid_json", "the request body could not be read as JSON")
      }
      return yield* Effect.failCause(cause)
    })) as never)

/** The whole server as a layer: listen, build the app, serve the API. */
export const layer = (o: ServerOptions) => {
  const listener = NodeHttpServer.layer(createServer, { port: o.port, host: o.bindHost })
  const runtimeUrl = Layer.effect(
    RuntimeUrl.RuntimeUrl,
    Effect.flatMap(HttpServer.HttpServer, (server) =>
      RuntimeUrl.make({
        bindHost: o.bindHost,
        port: server.address._tag === "TcpAddress" ? server.address.port : o.port,
        publicUrl: o.publicUrl
      }).pipe(Effect.orDie))
  )
  const { bindHost: _b, port: _p, publicUrl: _u, ...appOptions } = o
  const app = App.layer(appOptions, runtimeUrl)
  const auth = Layer.mergeAll(Auth.layerAuthentication, Auth.layerRuntimeAuthentication).pipe(Layer.provideMerge(Auth.layerTokens))
  const apiLive = HttpApiBuilder.api(GantryApi).pipe(
    Layer.provide(Handlers.layer),
    Layer.provide(auth),
    Layer.provide(RuntimeService.layer)
  )
  return HttpApiBuilder.serve(errorFormat).pipe(
    Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/api/openapi.json" })),
    Layer.provide(HttpApiScalar.layer({ path: "/api/docs" })),
    Layer.provide(apiErrorFormat),
    Layer.provide(apiLive),
    Layer.provideMerge(Layer.merge(auth, RuntimeService.layer)),
    Layer.provideMerge(app),
    Layer.provideMerge(listener)
  )
}

export { Runtime }
