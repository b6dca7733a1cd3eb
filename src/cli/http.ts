// A small client for the Gantry HTTP API (used by the CLI and the demo): bearer auth, JSON bodies,
// the API's `{error: {code, message, status}}` as a typed error, and Server-Sent Events as a Stream.
import { FetchHttpClient, HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { Context, Data, Duration, Effect, Layer, Option, Redacted, Schema, Stream } from "effect"

/** The server answered with an error (any non-2xx status). */
export class ApiError extends Data.TaggedError("ApiError")<{
  readonly status: number
  readonly code: string
  readonly message: string
  readonly details?: unknown
}> {}

/** The server could not be reached, or answered something that is not the API. */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly url: string
  readonly message: string
}> {}

export type ClientError = ApiError | TransportError

export interface SseEvent {
  readonly event: string
  readonly data: string
  readonly id: string | undefined
}

export interface ClientOptions {
  readonly baseUrl: string
  readonly token?: Redacted.Redacted<string> | string | undefined
  /** Per request (not for event streams); default 120 s. */
  readonly timeout?: Duration.DurationInput
}

type Query = Record<string, string | number | boolean | undefined>

export class GantryClient extends Context.Tag("gantry/cli/GantryClient")<GantryClient, {
  readonly baseUrl: string
  readonly get: (path: string, query?: Query) => Effect.Effect<unknown, ClientError>
  readonly post: (path: string, body?: unknown) => Effect.Effect<unknown, ClientError>
  readonly put: (path: string, body?: unknown) => Effect.Effect<unknown, ClientError>
  readonly patch: (path: string, body?: unknown) => Effect.Effect<unknown, ClientError>
  readonly del: (path: string) => Effect.Effect<unknown, ClientError>
  /** Server-Sent Events of a GET endpoint; `lastEventId` resumes after that id. */
  readonly events: (path: string, options?: { readonly lastEventId?: string }) => Stream.Stream<SseEvent, ClientError>
}>() {}

const ErrorBody = Schema.Struct({
  error: Schema.Struct({ code: Schema.String, message: Schema.String, details: Schema.optional(Schema.Unknown) })
})
const decodeErrorBody = Schema.decodeUnknownOption(ErrorBody)

const trimSlash = (s: string) => s.replace(/\/+$/, "")

interface SseAcc { readonly event: string; readonly data: ReadonlyArray<string>; readonly id: string | undefined }
const emptyAcc: SseAcc = { event: "", data: [], id: undefined }

const sseStep = (acc: SseAcc, line: string): readonly [SseAcc, Option.Option<SseEvent>] => {
  if (line === "") {
    if (acc.data.length === 0 && acc.event === "") return [acc, Option.none()]
    return [emptyAcc, Option.some({ event: acc.event || "message", data: acc.data.join("\n"), id: acc.id })]
  }
  if (line.startsWith(":")) return [acc, Option.none()]
  const i = line.indexOf(":")
  const field = i === -1 ? line : line.slice(0, i)
  const value = i === -1 ? "" : line.slice(i + 1).replace(/^ /, "")
  if (field === "event") return [{ ...acc, event: value }, Option.none()]
  if (field === "data") return [{ ...acc, data: [...acc.data, value] }, Option.none()]
  if (field === "id") return [{ ...acc, id: value }, Option.none()]
  return [acc, Option.none()]
}

/** One SSE frame per blank-line-terminated block (`event:`, `data:` (joined by \n), `id:`; comments skipped). */
export const parseSse = <E, R>(bytes: Stream.Stream<Uint8Array, E, R>): Stream.Stream<SseEvent, E, R> =>
  bytes.pipe(
    Stream.decodeText(),
    Stream.splitLines,
    Stream.mapAccum(emptyAcc, sseStep),
    Stream.filterMap((e) => e)
  )

export const make = (o: ClientOptions) =>
  Effect.gen(function* () {
    const http = yield* HttpClient.HttpClient
    const base = trimSlash(o.baseUrl)
    const token = o.token === undefined ? undefined : Redacted.isRedacted(o.token) ? Redacted.value(o.token) : o.token
    const timeout = o.timeout ?? Duration.seconds(120)

    const prepare = (req: HttpClientRequest.HttpClientRequest) =>
      req.pipe(HttpClientRequest.acceptJson, token ? HttpClientRequest.bearerToken(token) : (r) => r)

    const transport = (url: string, e: { readonly message: string; readonly cause?: unknown }) => {
      // fetch wraps the socket error: RequestError → TypeError("fetch failed") → Error {code}
      const inner = (e.cause as { cause?: { code?: unknown; message?: unknown } } | undefined)?.cause
      const why = typeof inner?.code === "string" ? inner.code : typeof inner?.message === "string" ? inner.message : e.message
      return new TransportError({ url, message: `could not reach ${base} (${why}); is the server running? (set --url or GANTRY_URL)` })
    }

    const failure = (res: HttpClientResponse.HttpClientResponse, url: string) =>
      Effect.orElseSucceed(res.text, () => "").pipe(
        Effect.flatMap((text) =>
          Effect.try(() => JSON.parse(text) as unknown).pipe(
            Effect.orElseSucceed((): unknown => undefined),
            Effect.flatMap((parsed) => {
              const body = decodeErrorBody(parsed)
              return Effect.fail(
                Option.isSome(body)
                  ? new ApiError({ status: res.status, code: body.value.error.code, message: body.value.error.message, details: body.value.error.details })
                  : new ApiError({ status: res.status, code: `http_${res.status}`, message: text.slice(0, 500) || `HTTP ${res.status} from ${url}` })
              )
            })
          ))
      )

    const send = (req: HttpClientRequest.HttpClientRequest) => {
      const url = req.url
      return http.execute(prepare(req)).pipe(
        Effect.mapError((e) => transport(url, e)),
        Effect.flatMap((res): Effect.Effect<unknown, ClientError> =>
          res.status >= 200 && res.status < 300
            ? res.text.pipe(
              Effect.mapError((e) => transport(url, e)),
              Effect.flatMap((text) =>
                text.length === 0
                  ? Effect.succeed(null)
                  : Effect.try({
                    try: () => JSON.parse(text) as unknown,
                    catch: () => new TransportError({ url, message: `${url} answered something that is not JSON: ${text.slice(0, 200)}` })
                  })
              )
            )
            : failure(res, url)
        ),
        Effect.timeoutFail({ duration: timeout, onTimeout: () => new TransportError({ url, message: `no answer from ${url} within ${Duration.format(timeout)}` }) })
      )
    }

    const withQuery = (path: string, query?: Query) => {
      const params = Object.entries(query ?? {}).filter(([, v]) => v !== undefined).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      return `${base}${path}${params.length ? `?${params.join("&")}` : ""}`
    }
    const withBody = (req: HttpClientRequest.HttpClientRequest, body: unknown) =>
      body === undefined ? req : HttpClientRequest.bodyUnsafeJson(req, body)

    const events = (path: string, options?: { readonly lastEventId?: string }): Stream.Stream<SseEvent, ClientError> => {
      const url = `${base}${path}`
      let req = prepare(HttpClientRequest.get(url)).pipe(HttpClientRequest.setHeader("accept", "text/event-stream"))
      if (options?.lastEventId) req = HttpClientRequest.setHeader(req, "last-event-id", options.lastEventId)
      return Stream.unwrap(
        http.execute(req).pipe(
          Effect.mapError((e) => transport(url, e)),
          Effect.flatMap((res) =>
            res.status === 200
              ? Effect.succeed(parseSse(Stream.mapError(res.stream, (e) => transport(url, e))))
              : failure(res, url)
          )
        )
      )
    }

    return GantryClient.of({
      baseUrl: base,
      get: (path, query) => send(HttpClientRequest.get(withQuery(path, query))),
      post: (path, body) => send(withBody(HttpClientRequest.post(`${base}${path}`), body)),
      put: (path, body) => send(withBody(HttpClientRequest.put(`${base}${path}`), body)),
      patch: (path, body) => send(withBody(HttpClientRequest.patch(`${base}${path}`), body)),
      del: (path) => send(HttpClientRequest.del(`${base}${path}`)),
      events
    })
  })

/** The client over `fetch` (Node's undici). */
export const layer = (o: ClientOptions) => Layer.effect(GantryClient, make(o)).pipe(Layer.provide(FetchHttpClient.layer))

/** One line for an error, for people. */
export const describeError = (e: ClientError): string =>
  e._tag === "ApiError"
    ? `${e.message} (${e.code}, HTTP ${e.status})${e.details !== undefined ? `\n  details: ${JSON.stringify(e.details)}` : ""}`
    : e.message
