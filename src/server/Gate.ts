// The request gate in front of the API (SPEC §14): reads a request body once, as bytes, and refuses
// what no handler should see — a body over the limit whether or not it announced its length (413), a
// content type other than JSON (415), invalid UTF-8 (400), JSON nested deeper than the limit (400) —
// then hands the checked text on. Also: which methods a path has (for 405 + Allow).
import { type HttpApi, type HttpApiGroup, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Data, Effect, Stream } from "effect"
import type { IncomingMessage } from "node:http"
import { MAX_BODY_BYTES, MAX_JSON_DEPTH } from "./Limits.js"

export class Refused extends Data.TaggedError("Refused")<{
  readonly status: number
  readonly code: string
  readonly message: string
  readonly details?: unknown
}> {}

class ReadFailed extends Data.TaggedError("ReadFailed")<{ readonly cause: unknown }> {}

export const errorResponse = (status: number, code: string, message: string, details?: unknown, headers?: Record<string, string>) =>
  HttpServerResponse.unsafeJson(
    { error: details === undefined ? { code, message, status } : { code, message, details, status } },
    { status, ...(headers ? { headers } : {}) }
  )

export const tooLarge = () => errorResponse(413, "payload_too_large", `request bodies are limited to ${MAX_BODY_BYTES} bytes`, { limit: MAX_BODY_BYTES })

/** An oversized body is still read to its end (and dropped) before the 413 is sent: Node closes a
 * connection whose request is unfinished when the answer goes out, and the client, still sending,
 * would see a reset instead of the 413. Past this much, the answer goes at once (and the connection
 * with it). */
const DRAIN_LIMIT = 16 * MAX_BODY_BYTES

/** Read a body up to `max` bytes; past it, drain and answer "too_large". Plain stream code at the
 * edge of Effect, owned by this one read. */
const readBody = (source: IncomingMessage, max: number) =>
  Effect.async<Buffer | "too_large", ReadFailed>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    let over = false
    const detach = () => {
      source.off("data", onData)
      source.off("end", onEnd)
      source.off("error", onError)
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (over) {
        if (size > DRAIN_LIMIT) {
          detach()
          source.on("error", () => undefined)
          resume(Effect.succeed("too_large"))
        }
        return
      }
      if (size <= max) chunks.push(chunk)
      else {
        over = true
        chunks.length = 0
      }
    }
    const onEnd = () => {
      detach()
      resume(Effect.succeed(over ? "too_large" : Buffer.concat(chunks)))
    }
    const onError = (cause: unknown) => {
      detach()
      resume(Effect.fail(new ReadFailed({ cause })))
    }
    source.on("data", onData)
    source.on("end", onEnd)
    source.on("error", onError)
    return Effect.sync(detach)
  })

/** Deepest nesting of arrays/objects in JSON text (strings skipped); stops counting past `limit`. */
export const jsonDepth = (text: string, limit: number): number => {
  let depth = 0
  let max = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92) i++ // backslash: skip the escaped character
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 123 || c === 91) {
      depth++
      if (depth > max) {
        max = depth
        if (max > limit) return max
      }
    } else if (c === 125 || c === 93) depth--
  }
  return max
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true })
const lenientUtf8 = new TextDecoder("utf-8")

const isJsonType = (mediaType: string) => mediaType === "application/json" || /^application\/[^;\s]+\+json$/.test(mediaType)

const WEBHOOK_PATH = /^\/api\/plugins\/[^/]+\/webhooks\/[^/]+\/?$/

/**
 * Check a request's body; returns the request to hand on (its body already read and checked).
 * - no body, or a method without one: unchanged;
 * - over MAX_BODY_BYTES, announced or not: 413;
 * - a missing Content-Type is taken as JSON; any other type than JSON (`application/json`,
 *   `application/*+json`) or a charset other than UTF-8: 415 — except plugin webhooks, which take any
 *   type (their sender is a third party) and are checked as JSON only when they say they are;
 * - JSON that is not valid UTF-8: 400 invalid_utf8; nested deeper than MAX_JSON_DEPTH: 400 json_too_deep.
 */
export const checkBody = (req: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function* () {
    const method: string = req.method
    if (method === "GET" || method === "HEAD" || method === "OPTIONS" || method === "TRACE") return req
    const announced = req.headers["content-length"]
    const chunked = (req.headers["transfer-encoding"] ?? "").length > 0
    if (!chunked && (announced === undefined || announced === "0")) return req
    if (Number(announced ?? "0") > DRAIN_LIMIT) return yield* new Refused({ status: 413, code: "payload_too_large", message: `request bodies are limited to ${MAX_BODY_BYTES} bytes`, details: { limit: MAX_BODY_BYTES } })
    const body = yield* readBody(NodeHttpServerRequest.toIncomingMessage(req), MAX_BODY_BYTES).pipe(
      Effect.mapError(() => new Refused({ status: 400, code: "bad_request", message: "the request body could not be read" }))
    )
    if (body === "too_large") return yield* new Refused({ status: 413, code: "payload_too_large", message: `request bodies are limited to ${MAX_BODY_BYTES} bytes`, details: { limit: MAX_BODY_BYTES } })
    const contentType = (req.headers["content-type"] ?? "").toLowerCase()
    const [mediaType = "", ...params] = contentType.split(";").map((p) => p.trim())
    const charset = params.find((p) => p.startsWith("charset="))?.slice(8).replace(/"/g, "")
    const webhook = WEBHOOK_PATH.test(new URL(req.url, "http://x").pathname)
    const json = mediaType === "" ? !webhook : isJsonType(mediaType)
    let text: string
    if (body.length === 0) text = ""
    else if (json) {
      if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
        return yield* new Refused({ status: 415, code: "unsupported_media_type", message: `JSON bodies must be UTF-8 (got charset ${charset})` })
      }
      const decoded = yield* Effect.try({
        try: () => strictUtf8.decode(body),
        catch: () => new Refused({ status: 400, code: "invalid_utf8", message: "the request body is not valid UTF-8" })
      })
      if (jsonDepth(decoded, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
        return yield* new Refused({ status: 400, code: "json_too_deep", message: `JSON bodies may nest arrays and objects at most ${MAX_JSON_DEPTH} levels deep`, details: { limit: MAX_JSON_DEPTH } })
      }
      text = decoded
    } else if (webhook) text = lenientUtf8.decode(body)
    else {
      return yield* new Refused({
        status: 415, code: "unsupported_media_type",
        message: `request bodies must be application/json (got ${mediaType})`, details: { accepted: ["application/json"] }
      })
    }
    // the checked body, read once: what the handlers read from now on (`json` parses this `text`)
    const bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength)
    return Object.create(req, {
      text: { value: Effect.succeed(text) },
      arrayBuffer: { value: Effect.succeed(bytes.slice().buffer) },
      stream: { value: Stream.make(bytes) }
    }) as HttpServerRequest.HttpServerRequest
  })

/** The routes of an HttpApi as (method, path pattern) pairs, for "which methods does this path have". */
export const routeTable = (api: HttpApi.HttpApi.Any, extra: ReadonlyArray<readonly [string, string]> = []) => {
  const routes: Array<{ readonly method: string; readonly pattern: RegExp }> = []
  const add = (method: string, path: string) => {
    const source = path.split("/").map((seg) => (seg.startsWith(":") ? "[^/]+" : seg === "*" ? ".*" : seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))).join("/")
    routes.push({ method: method.toUpperCase(), pattern: new RegExp(`^${source}/?$`) })
  }
  const groups = (api as unknown as { groups: Record<string, HttpApiGroup.HttpApiGroup.AnyWithProps> }).groups
  for (const group of Object.values(groups)) {
    for (const endpoint of Object.values(group.endpoints)) add(endpoint.method, endpoint.path)
  }
  for (const [m, p] of extra) add(m, p)
  /** The methods `path` answers to (HEAD wherever GET), sorted; empty for an unknown path. */
  return (path: string): ReadonlyArray<string> => {
    const methods = new Set<string>()
    for (const r of routes) if (r.pattern.test(path)) methods.add(r.method)
    if (methods.has("GET")) methods.add("HEAD")
    return [...methods].sort()
  }
}
