// Property-based API requests generated from the API's own Schemas (Effect Schema → Arbitrary, with
// the fast-check Effect re-exports): for every operation of the HttpApi, valid inputs (from the
// payload / URL-parameter schemas) and invalid ones (mutated, wrong type, hostile bodies), checked
// against the served OpenAPI document (documented statuses) and the response schemas. Shared by
// test/server/apifuzz.test.ts (bounded) and `npm run bench -- apifuzz` (20,000 requests, RSS).
import type { HttpApiEndpoint, HttpApiGroup } from "@effect/platform"
import { HttpApiSchema } from "@effect/platform"
import { Arbitrary, Either, FastCheck as fc, Option, Schema } from "effect"
import { GantryApi, RunOutputEvents } from "../../src/server/Api.js"

export interface Operation {
  readonly id: string
  readonly method: string
  readonly path: string
  readonly endpoint: HttpApiEndpoint.HttpApiEndpoint.AnyWithProps
  readonly successStatus: number
}

/** Every operation of the API. */
export const operations = (): Array<Operation> => {
  const out: Array<Operation> = []
  const groups = (GantryApi as unknown as { groups: Record<string, HttpApiGroup.HttpApiGroup.AnyWithProps> }).groups
  for (const group of Object.values(groups)) {
    for (const endpoint of Object.values(group.endpoints)) {
      out.push({ id: `${group.identifier}.${endpoint.name}`, method: endpoint.method, path: endpoint.path, endpoint, successStatus: HttpApiSchema.getStatusSuccess(endpoint.successSchema) })
    }
  }
  return out
}

export interface Fixture {
  readonly adminToken: string
  readonly companyToken: string
  /** Real ids per path parameter name, so generated requests reach the handlers too. */
  readonly ids: Record<string, ReadonlyArray<string>>
}

export interface GeneratedRequest {
  readonly kind: "valid" | "invalid"
  readonly method: string
  readonly path: string
  readonly headers: Record<string, string>
  readonly body?: Uint8Array | string
}

// ids with "." or "/" would be normalized away by URL parsing and reach other routes
const segment = (s: string) => encodeURIComponent(s).replace(/\./g, "%2E")

const anyString = fc.string({ minLength: 1, maxLength: 40 })
/** A JSON value a hostile client might send where another was expected. */
const anyJson = fc.jsonValue({ maxDepth: 3 })

/** The encoded form of a schema's values, with the encoded side's own rules (patterns, lengths). */
const encodedArbitrary = (schema: Schema.Schema.Any) => Arbitrary.make(Schema.encodedBoundSchema(schema as Schema.Schema.AnyNoContext) as Schema.Schema<unknown>)

/** An invalid version of a valid object: a field removed, replaced by another type, or one added. */
const mutate = (valid: fc.Arbitrary<unknown>) =>
  fc.tuple(valid, fc.nat(), anyJson, fc.constantFrom("drop", "replace", "add")).map(([v, n, other, how]) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return other
    const o = { ...(v as Record<string, unknown>) }
    const keys = Object.keys(o)
    if (how === "add" || keys.length === 0) o[`x_${n % 1000}`] = other
    else if (how === "drop") delete o[keys[n % keys.length]!]
    else o[keys[n % keys.length]!] = other
    return o
  })

/** Bodies the request gate refuses before any handler sees them. */
const hostileBody = fc.oneof(
  fc.constant({ body: "{\"a\":" as string | Uint8Array, type: "application/json" }),
  fc.nat({ max: 3000 }).map((n) => ({ body: "[".repeat(65 + n) + "]".repeat(65 + n) as string | Uint8Array, type: "application/json" })),
  fc.constant({ body: new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]) as string | Uint8Array, type: "application/json" }),
  anyJson.map((j) => ({ body: JSON.stringify(j) as string | Uint8Array, type: "text/plain" })),
  anyJson.map((j) => ({ body: JSON.stringify(j) as string | Uint8Array, type: "application/x-www-form-urlencoded" }))
)

const encodeQuery = (params: Record<string, unknown>) => {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, typeof v === "string" ? v : JSON.stringify(v))
  const s = q.toString()
  return s === "" ? "" : `?${s}`
}

/** Requests for one operation: `kind` valid draws every part from the schemas (ids often real),
 * invalid breaks at least one part. */
export const requestsFor = (op: Operation, fixture: Fixture): fc.Arbitrary<GeneratedRequest> => {
  const { endpoint } = op
  const paramNames = [...op.path.matchAll(/:([A-Za-z]+)/g)].map((m) => m[1]!)
  const pathArb = fc.tuple(...paramNames.map((name) => {
    const known = fixture.ids[name] ?? []
    return known.length > 0 ? fc.oneof({ arbitrary: fc.constantFrom(...known), weight: 3 }, { arbitrary: anyString, weight: 1 }) : anyString
  })).map((values) => {
    let i = 0
    return op.path.replace(/:([A-Za-z]+)/g, () => segment(values[i++]!))
  })
  const token = fc.oneof(
    { arbitrary: fc.constant<string | undefined>(fixture.adminToken), weight: 6 },
    { arbitrary: fc.constant<string | undefined>(fixture.companyToken), weight: 2 },
    { arbitrary: fc.constant<string | undefined>(undefined), weight: 1 },
    { arbitrary: fc.constant<string | undefined>("gantry_admin_not-a-real-token"), weight: 1 }
  )
  const validQuery = Option.match(endpoint.urlParamsSchema, {
    onNone: () => fc.constant({} as Record<string, unknown>),
    onSome: (s) => encodedArbitrary(s) as fc.Arbitrary<Record<string, unknown>>
  })
  const invalidQuery = Option.match(endpoint.urlParamsSchema, {
    onNone: () => validQuery,
    onSome: (s) => fc.oneof(mutate(encodedArbitrary(s)), fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 10 })))
      .map((q) => (typeof q === "object" && q !== null ? q as Record<string, unknown> : { limit: q }))
  })
  const hasBody = Option.isSome(endpoint.payloadSchema) && op.method !== "GET"
  const generatedBody = Option.match(endpoint.payloadSchema, { onNone: () => fc.constant<unknown>(undefined), onSome: (s) => encodedArbitrary(s) })
  // a plugin source that is no path is an npm spec, which the server would fetch from the registry:
  // the fuzzer names local paths that do not exist instead (no network, nothing installed)
  const validBody = op.id === "plugins.install" || op.id === "plugins.upgrade"
    ? fc.tuple(generatedBody, fc.stringMatching(/^[a-z0-9]{1,12}$/)).map(([b, name]) => ({ ...(b as object), source: `/nonexistent/gantry-fuzz/${name}` }))
    : generatedBody
  const valid = fc.record({ path: pathArb, query: validQuery, body: validBody, token }).map(({ path, query, body, token }): GeneratedRequest => ({
    kind: "valid", method: op.method, path: path + encodeQuery(query),
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(hasBody ? { "content-type": "application/json" } : {}) },
    ...(hasBody ? { body: JSON.stringify(body) } : {})
  }))
  const brokenBody = hasBody
    ? fc.oneof(
      mutate(validBody).map((b) => ({ body: JSON.stringify(b) ?? "null" as string | Uint8Array, type: "application/json" })),
      anyJson.map((j) => ({ body: JSON.stringify(j) as string | Uint8Array, type: "application/json" })),
      hostileBody
    )
    : hostileBody
  const invalid = fc.record({ path: pathArb, query: invalidQuery, broken: brokenBody, token }).map(({ path, query, broken, token }): GeneratedRequest => ({
    kind: "invalid", method: op.method,
    path: path + encodeQuery(query),
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(op.method !== "GET" ? { "content-type": broken.type } : {}) },
    ...(op.method !== "GET" ? { body: broken.body } : {})
  }))
  return fc.oneof(valid, invalid)
}

/** The house error format, exactly, with the HTTP status inside. */
const errorEnvelope = (status: number) => Schema.Struct({
  error: Schema.Struct({ code: Schema.String.pipe(Schema.minLength(1)), message: Schema.String.pipe(Schema.minLength(1)), details: Schema.optional(Schema.Unknown), status: Schema.Literal(status) })
}).annotations({ parseOptions: { onExcessProperty: "error" } })

/** Parse an SSE body into (event, data) pairs. */
const sseEvents = (text: string) =>
  text.split("\n\n").filter((f) => f.trim() !== "").map((frame) => {
    let event = "message"
    const data: Array<string> = []
    for (const line of frame.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7)
      else if (line.startsWith("data: ")) data.push(line.slice(6))
    }
    return { event, data: data.join("\n") }
  })

/** Problems with one answer: a 5xx, an undocumented status, a body that is not its documented schema. */
export const checkAnswer = (op: Operation, documented: ReadonlyArray<number>, status: number, contentType: string, text: string): Array<string> => {
  const problems: Array<string> = []
  if (status >= 500) problems.push(`${status} (a 5xx)`)
  if (!documented.includes(status)) problems.push(`status ${status} is not documented (${documented.join(", ")})`)
  if (status >= 200 && status < 300 && contentType.includes("text/event-stream")) {
    for (const e of sseEvents(text)) {
      const schema = RunOutputEvents[e.event]
      if (!schema) problems.push(`undocumented SSE event "${e.event}"`)
      else if (Either.isLeft(Schema.decodeUnknownEither(schema)(JSON.parse(e.data)))) problems.push(`SSE "${e.event}" data does not match its schema: ${e.data.slice(0, 200)}`)
    }
    return problems
  }
  let body: unknown
  try {
    body = text === "" ? undefined : JSON.parse(text)
  } catch {
    problems.push(`body is not JSON: ${text.slice(0, 200)}`)
    return problems
  }
  if (!contentType.includes("application/json") && text !== "") problems.push(`content type ${contentType}`)
  const schema: Schema.Schema<unknown, unknown> = status >= 200 && status < 300 ? op.endpoint.successSchema as Schema.Schema<unknown, unknown> : errorEnvelope(status) as Schema.Schema<unknown, unknown>
  const decoded = Schema.decodeUnknownEither(schema)(body)
  if (Either.isLeft(decoded)) problems.push(`body does not match its schema: ${String(decoded.left.message).slice(0, 300)}`)
  return problems
}

export { fc }

// ---------------------------------------------------------------- running against a server

const call = async (base: string, method: string, path: string, token: string, body?: unknown) => {
  const res = await fetch(`${base}${path}`, {
    method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  const text = await res.text()
  if (res.status >= 300) throw new Error(`fixture ${method} ${path}: ${res.status} ${text.slice(0, 300)}`)
  return JSON.parse(text) as any
}

/** A little state for generated requests to point at: a company, its token, an environment, an
 * agent, a secret and a finished run; plus the server-webhooks fixture plugin's keys. */
export const setupFixture = async (base: string, adminToken: string): Promise<Fixture> => {
  const company = await call(base, "POST", "/api/companies", adminToken, { name: "fuzz" })
  const companyToken = (await call(base, "POST", `/api/companies/${company.id}/tokens`, adminToken, { name: "fuzz" })).token as string
  // the operator grants the fixture company the local driver (SPEC §16), so its runs may use the host
  await call(base, "PUT", `/api/companies/${company.id}/local-grant`, adminToken)
  const env = await call(base, "POST", `/api/companies/${company.id}/environments`, adminToken, { name: "local", driver: "local" })
  const agent = await call(base, "POST", `/api/companies/${company.id}/agents`, adminToken, { name: "true", command: "true", defaultEnvironmentId: env.id })
  const secret = await call(base, "POST", `/api/companies/${company.id}/secrets`, adminToken, { name: "s", value: "v" })
  const run = await call(base, "POST", `/api/agents/${agent.id}/runs`, adminToken, {})
  for (let i = 0; i < 600; i++) {
    const r = await call(base, "GET", `/api/runs/${run.id}`, adminToken)
    if (["succeeded", "failed", "cancelled", "timed_out"].includes(r.status)) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    adminToken, companyToken,
    ids: {
      companyId: [company.id], id: [env.id, agent.id, secret.id, run.id], pluginId: ["server-webhooks", "hello-promise", "fake-sandbox"],
      key: ["deliveries", "greeting"], endpointKey: ["inbound"], jobKey: ["nope"]
    }
  }
}

export interface FuzzResult {
  readonly requests: Record<string, { valid: number; invalid: number; statuses: Record<number, number> }>
  readonly problems: Array<string>
  readonly total: number
}

/** Documented statuses per operation id, from the served OpenAPI document. */
export const documentedStatuses = async (base: string): Promise<Record<string, Array<number>>> => {
  const doc = await (await fetch(`${base}/api/openapi.json`)).json() as { paths: Record<string, Record<string, { operationId: string; responses: Record<string, unknown> }>> }
  const out: Record<string, Array<number>> = {}
  for (const item of Object.values(doc.paths)) for (const op of Object.values(item)) out[op.operationId] = Object.keys(op.responses).map(Number)
  return out
}

const send = async (base: string, r: GeneratedRequest) => {
  const controller = new AbortController()
  const res = await fetch(`${base}${r.path}`, {
    method: r.method, headers: r.headers, signal: controller.signal,
    ...(r.body !== undefined ? { body: r.body } : {})
  })
  const contentType = res.headers.get("content-type") ?? ""
  // an SSE stream of a run that is still going would not end: read what is there and stop
  let timer: ReturnType<typeof setTimeout> | undefined
  const text = contentType.includes("text/event-stream")
    ? await Promise.race([res.text(), new Promise<string>((resolve) => {
      timer = setTimeout(() => {
        controller.abort()
        resolve("")
      }, 5_000)
    })]).catch(() => "")
    : await res.text()
  clearTimeout(timer)
  return { status: res.status, contentType, text }
}

/**
 * `perOperation` generated requests for each operation (about half valid), sequentially; every answer
 * checked. `onRequest` sees the running total (the bench samples RSS there).
 */
export const runFuzz = async (o: {
  readonly base: string
  readonly fixture: Fixture
  readonly seed: number
  readonly perOperation: number
  readonly onRequest?: (total: number) => void | Promise<void>
  /** Requests in flight at once (default 1). */
  readonly concurrency?: number
}): Promise<FuzzResult> => {
  const documented = await documentedStatuses(o.base)
  const requests: FuzzResult["requests"] = {}
  const problems: Array<string> = []
  let total = 0
  const ops = operations()
  for (const [index, op] of ops.entries()) {
    const doc = documented[op.id]
    if (!doc) {
      problems.push(`${op.id}: not in the OpenAPI document`)
      continue
    }
    const counts = requests[op.id] = { valid: 0, invalid: 0, statuses: {} as Record<number, number> }
    const samples = fc.sample(requestsFor(op, o.fixture), { seed: o.seed + index, numRuns: o.perOperation })
    const one = async (r: GeneratedRequest) => {
      const answer = await send(o.base, r).catch((e: unknown) => ({ status: 0, contentType: "", text: String(e) }))
      total++
      counts[r.kind]++
      counts.statuses[answer.status] = (counts.statuses[answer.status] ?? 0) + 1
      const found = answer.status === 0 ? [`no answer: ${answer.text}`] : checkAnswer(op, doc, answer.status, answer.contentType, answer.text)
      for (const p of found) {
        const body = typeof r.body === "string" ? r.body.slice(0, 200) : r.body ? `<${r.body.length} bytes>` : ""
        problems.push(`${op.id} [${r.kind}] ${r.method} ${r.path.slice(0, 150)} ${body}: ${p} | ${answer.text.slice(0, 200)}`)
      }
      await o.onRequest?.(total)
    }
    const queue = [...samples]
    await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, async () => {
      while (queue.length > 0) await one(queue.shift()!)
    }))
  }
  return { requests, problems, total }
}
