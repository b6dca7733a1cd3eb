// The HTTP server: the app layer under the HttpApi, OpenAPI at /api/openapi.json, docs at /api/docs,
// one error format for everything (decode errors, unknown routes, oversized bodies included).
// Built after the listener so the runtime URL knows the bound port.
import { HttpApiBuilder, HttpApiScalar, type HttpApp, HttpIncomingMessage, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Cause, Effect, Layer, Option } from "effect"
import { createServer } from "node:http"
import * as RuntimeUrl from "../environments/RuntimeUrl.js"
import { Runtime } from "../work/Runtime.js"
import * as RuntimeService from "../work/Runtime.js"
import * as App from "./App.js"
import { GantryApi } from "./Api.js"
import * as Auth from "./Auth.js"
import * as Handlers from "./Handlers.js"
import * as PluginApi from "./PluginApi.js"

export const MAX_BODY_BYTES = 1024 * 1024

export interface ServerOptions extends Omit<App.AppOptions, "runtimeUrl" | "runtimeUrlLayer"> {
  readonly bindHost: string
  /** 0 picks a free port (tests). */
  readonly port: number
  readonly publicUrl?: string | undefined
}

const errorJson = (status: number, code: string, message: string, details?: unknown) =>
  HttpServerResponse.unsafeJson({ error: details === undefined ? { code, message, status } : { code, message, details, status } }, { status })

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

const tooLarge = () => errorJson(413, "payload_too_large", `request bodies are limited to ${MAX_BODY_BYTES} bytes`)

/** Failures that did not come from a handler (decode errors, unknown routes, unreadable or oversized
 * bodies) answer in the API's error format too. */
const errorFormat = (app: HttpApp.Default) =>
  HttpIncomingMessage.withMaxBodySize(
    // a body announced over the limit is refused before it is read: a read that hits the limit
    // destroys the socket (the client sees a reset, not the 413), so only chunked bodies get that
    Effect.flatMap(HttpServerRequest.HttpServerRequest, (req) => {
      if (Number(req.headers["content-length"] ?? "0") > MAX_BODY_BYTES) return Effect.succeed(tooLarge())
      // plugin API routes (/api/plugins/:pluginId/api/*) are the plugins' own, outside the HttpApi
      const pluginRoute = PluginApi.pluginApiPath(req.url.split("?")[0] ?? "")
      return pluginRoute ? PluginApi.handle(pluginRoute.pluginId, pluginRoute.rest) : app
    }).pipe(
      Effect.map(reformat),
      Effect.catchAllCause((cause) => {
        const failure = Cause.failureOption(cause)
        if (Option.isNone(failure)) return Effect.failCause(cause)
        const e = failure.value as { _tag?: string; reason?: string; message?: string; issues?: unknown; cause?: unknown }
        switch (e?._tag) {
          case "HttpApiDecodeError":
            return Effect.succeed(errorJson(400, "invalid_request", e.message ?? "the request does not match the schema", e.issues))
          case "RouteNotFound":
            return Effect.succeed(errorJson(404, "not_found", "no such route"))
          case "RequestError": {
            const text = `${e.message ?? ""} ${String(e.cause ?? "")}`
            if (/too large|size|limit/i.test(text)) return Effect.succeed(tooLarge())
            return Effect.succeed(errorJson(400, "invalid_json", "the request body could not be read as JSON"))
          }
          default:
            return Effect.failCause(cause)
        }
      })
    ),
    Option.some(MAX_BODY_BYTES)
  )

/** Inside the API (before its error encoding): request decode failures and unknown routes answer in
 * our format. */
const apiErrorFormat = HttpApiBuilder.middleware((app) =>
  Effect.catchAllCause(app, (cause) =>
    Effect.gen(function* () {
      const e = Cause.squash(cause) as { _tag?: string; message?: string; issues?: unknown; reason?: string } | undefined
      if (e?._tag === "HttpApiDecodeError") return errorJson(400, "invalid_request", e.message ?? "the request does not match the schema", e.issues)
      if (e?._tag === "RouteNotFound") return errorJson(404, "not_found", "no such route")
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
