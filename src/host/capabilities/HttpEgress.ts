// The `http.fetch` egress proxy (SPEC §5.6): http/https only, DNS resolved once and every address
// checked (private, loopback, link-local, CGNAT, unique-local, multicast, reserved and their
// IPv4-mapped/NAT64/6to4 forms refused unless allow-listed), the socket pinned to the checked
// addresses, no redirects, a deadline and a response-body cap.
import { Config, Context, Data, Effect, Either, Layer, Option, Schema } from "effect"
import { promises as dns } from "node:dns"
import * as http from "node:http"
import * as https from "node:https"
import { isIP, type LookupFunction } from "node:net"
import { InvalidParams, WorkerError, type RpcError } from "../../protocol/errors.js"
import type { HttpFetchResult } from "../../protocol/methods.js"
import type { HttpInit } from "../../sdk/capabilities.js"
import type { CapabilityStoresShape } from "../Stores.js"

// ---------------------------------------------------------------------------------------------------
// Errors

/** Refusal: nothing was sent. `reason`: invalid_url | invalid_request (e.g. a bad header) | scheme | method | address. */
export class HttpEgressRefused extends Schema.TaggedError<HttpEgressRefused>()("HttpEgressRefused", {
  reason: Schema.Literal("invalid_url", "invalid_request", "scheme", "method", "address"),
  address: Schema.optional(Schema.String),
  message: Schema.String
}) {
  get status() { return 403 }
}

/** The request was allowed but did not complete: dns | dns_timeout | connect | timeout | body_too_large. */
export class HttpEgressFailed extends Schema.TaggedError<HttpEgressFailed>()("HttpEgressFailed", {
  reason: Schema.Literal("dns", "dns_timeout", "connect", "timeout", "body_too_large"),
  message: Schema.String
}) {
  get status() { return this.reason === "timeout" || this.reason === "dns_timeout" ? 504 : 502 }
}

export class HttpAllowListInvalid extends Data.TaggedError("HttpAllowListInvalid")<{ readonly message: string }> {}

export type HttpEgressError = HttpEgressRefused | HttpEgressFailed

// ---------------------------------------------------------------------------------------------------
// Addresses

export interface Ip {
  readonly family: 4 | 6
  readonly bytes: Uint8Array
}

const parseV4 = (s: string): Uint8Array | undefined => (isIP(s) === 4 ? Uint8Array.from(s.split(".").map(Number)) : undefined)

/** Parse an IP literal (IPv6 may carry a `%zone`, `[brackets]` or a dotted IPv4 tail). */
export const parseIp = (input: string): Ip | undefined => {
  const s = input.replace(/^\[(.*)\]$/, "$1").replace(/%.*$/, "")
  const v4 = parseV4(s)
  if (v4) return { family: 4, bytes: v4 }
  if (isIP(s) !== 6) return undefined
  const groups = (part: string): Array<number> => {
    if (part === "") return []
    const out: Array<number> = []
    for (const g of part.split(":")) {
      const tail = parseV4(g)
      if (tail) out.push((tail[0]! << 8) | tail[1]!, (tail[2]! << 8) | tail[3]!)
      else out.push(parseInt(g, 16))
    }
    return out
  }
  const [head, tail] = s.includes("::") ? s.split("::") as [string, string] : [s, undefined]
  const h = groups(head)
  const t = tail === undefined ? [] : groups(tail)
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t]
  const bytes = new Uint8Array(16)
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8
    bytes[2 * i + 1] = g & 0xff
  })
  return { family: 6, bytes }
}

const formatV4 = (b: Uint8Array) => [...b].join(".")

interface Cidr {
  readonly ip: Ip
  readonly prefix: number
}

const cidr = (text: string): Cidr => {
  const [a, p] = text.split("/") as [string, string]
  return { ip: parseIp(a)!, prefix: Number(p) }
}

const inCidr = (ip: Ip, c: Cidr): boolean => {
  if (ip.family !== c.ip.family) return false
  let bits = c.prefix
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff
    if ((ip.bytes[i]! & mask) !== (c.ip.bytes[i]! & mask)) return false
  }
  return true
}

const V4_BLOCKED: ReadonlyArray<readonly [Cidr, string]> = [
  ["0.0.0.0/32", "an unspecified"],
  ["0.0.0.0/8", "a reserved (\"this network\")"],
  ["10.0.0.0/8", "a private"],
  ["100.64.0.0/10", "a CGNAT (shared address space)"],
  ["127.0.0.0/8", "a loopback"],
  ["169.254.0.0/16", "a link-local"],
  ["172.16.0.0/12", "a private"],
  ["192.0.0.0/24", "a reserved (IETF protocol assignments)"],
  ["192.0.2.0/24", "a reserved (documentation)"],
  ["192.88.99.0/24", "a reserved (6to4 relay anycast)"],
  ["192.168.0.0/16", "a private"],
  ["198.18.0.0/15", "a reserved (benchmarking)"],
  ["198.51.100.0/24", "a reserved (documentation)"],
  ["203.0.113.0/24", "a reserved (documentation)"],
  ["224.0.0.0/4", "a multicast"],
  ["255.255.255.255/32", "a broadcast"],
  ["240.0.0.0/4", "a reserved"]
].map(([c, l]) => [cidr(c!), l!] as const)

const V6_BLOCKED: ReadonlyArray<readonly [Cidr, string]> = [
  ["::/128", "an unspecified"],
  ["::1/128", "a loopback"],
  ["::/96", "a reserved (IPv4-compatible)"],
  ["64:ff9b:1::/48", "a reserved (local-use NAT64)"],
  ["100::/64", "a reserved (discard-only)"],
  ["2001:db8::/32", "a reserved (documentation)"],
  ["fc00::/7", "a unique-local"],
  ["fe80::/10", "a link-local"],
  ["fec0::/10", "a site-local"],
  ["ff00::/8", "a multicast"]
].map(([c, l]) => [cidr(c!), l!] as const)

/** IPv6 forms that carry an IPv4 address the packet may end up at. */
const V6_EMBEDDING: ReadonlyArray<readonly [Cidr, number, string]> = [
  [cidr("::ffff:0:0/96"), 12, "IPv4-mapped"],
  [cidr("64:ff9b::/96"), 12, "NAT64"],
  [cidr("2002::/16"), 2, "6to4"]
]

/** Why an address may not be reached (e.g. `a loopback address`), or undefined when it is public. */
export const blockedReason = (ip: Ip): string | undefined => {
  if (ip.family === 4) {
    const hit = V4_BLOCKED.find(([c]) => inCidr(ip, c))
    return hit ? `${hit[1]} address` : undefined
  }
  for (const [c, at, label] of V6_EMBEDDING) {
    if (!inCidr(ip, c)) continue
    const v4 = ip.bytes.slice(at, at + 4)
    const inner = blockedReason({ family: 4, bytes: v4 })
    return inner ? `the ${label} form of ${formatV4(v4)}, ${inner}` : undefined
  }
  const hit = V6_BLOCKED.find(([c]) => inCidr(ip, c))
  return hit ? `${hit[1]} address` : undefined
}

// ---------------------------------------------------------------------------------------------------
// Allow list: `GANTRY_HTTP_ALLOW`, comma-separated hosts (`api.internal`, `*.corp.example`,
// `localhost:8080`), IPs (`127.0.0.1:5555`, `[::1]:8080`, `10.1.2.3`) and CIDRs (`10.0.0.0/8`).
// A host entry allows every address that name resolves to; IP and CIDR entries allow matching
// resolved addresses of any name (same family: `127.0.0.1` does not allow `::ffff:127.0.0.1`).

export type AllowEntry =
  | { readonly kind: "host"; readonly host: string; readonly wildcard: boolean; readonly port: number | null }
  | { readonly kind: "ip"; readonly ip: Ip; readonly port: number | null }
  | { readonly kind: "cidr"; readonly cidr: Cidr }

const HOST_RE = /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/

export const parseAllowList = (input: string | ReadonlyArray<string>): Either.Either<ReadonlyArray<AllowEntry>, HttpAllowListInvalid> => {
  const items = (typeof input === "string" ? input.split(",") : input).map((s) => s.trim()).filter((s) => s !== "")
  const out: Array<AllowEntry> = []
  for (const item of items) {
    const bad = (why: string) => Either.left(new HttpAllowListInvalid({ message: `GANTRY_HTTP_ALLOW entry "${item}": ${why}` }))
    const port = (p: string | undefined): number | null | undefined =>
      p === undefined ? null : /^\d{1,5}$/.test(p) && Number(p) >= 1 && Number(p) <= 65535 ? Number(p) : undefined
    if (item.includes("/")) {
      const [a, p] = item.split("/") as [string, string]
      const ip = parseIp(a)
      const prefix = Number(p)
      if (!ip || !/^\d{1,3}$/.test(p) || prefix > (ip.family === 4 ? 32 : 128)) return bad("not a valid CIDR")
      out.push({ kind: "cidr", cidr: { ip, prefix } })
      continue
    }
    const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(item)
    const hostPort = bracketed ? [bracketed[1]!, bracketed[2]] as const
      : (item.match(/:/g) ?? []).length > 1 ? [item, undefined] as const
      : item.split(":") as unknown as readonly [string, string | undefined]
    const p = port(hostPort[1])
    if (p === undefined) return bad("invalid port")
    const ip = parseIp(hostPort[0])
    if (ip) {
      out.push({ kind: "ip", ip, port: p })
      continue
    }
    const host = hostPort[0].toLowerCase()
    if (bracketed || !HOST_RE.test(host)) return bad("not a host name, IP or CIDR")
    out.push({ kind: "host", host: host.replace(/^\*\./, "").replace(/\.$/, ""), wildcard: host.startsWith("*."), port: p })
  }
  return Either.right(out)
}

const sameBytes = (a: Ip, b: Ip) => a.family === b.family && a.bytes.every((x, i) => x === b.bytes[i])

// ---------------------------------------------------------------------------------------------------
// Service

export interface HttpEgressOptions {
  /** Extra allowed destinations (see above); a string is split on commas. */
  readonly allow?: string | ReadonlyArray<string> | undefined
  /** Whole-request deadline (DNS, connect, headers, body). Default 30 000. */
  readonly timeoutMs?: number | undefined
  /** Larger response bodies fail with `body_too_large` (the request is aborted). Default 10 MiB. */
  readonly maxBodyBytes?: number | undefined
  /** DNS deadline. Default 5 000. */
  readonly dnsTimeoutMs?: number | undefined
  /** Name resolution (default: `dns.lookup` with `all: true`); tests substitute a fake resolver. */
  readonly resolve?: ((hostname: string) => Effect.Effect<ReadonlyArray<string>, HttpEgressFailed>) | undefined
}

export const DEFAULTS = { timeoutMs: 30_000, maxBodyBytes: 10 * 1024 * 1024, dnsTimeoutMs: 5_000 } as const

/** Where a request may go: the checked addresses it is pinned to. */
export interface Destination {
  readonly url: URL
  readonly hostname: string
  readonly port: number
  readonly addresses: ReadonlyArray<{ readonly address: string; readonly family: 4 | 6 }>
}

export interface HttpEgressShape {
  readonly fetch: (url: string, init?: HttpInit) => Effect.Effect<HttpFetchResult, HttpEgressError>
  /** The policy check alone (DNS included, no connection): the destination a fetch would be pinned to. */
  readonly check: (url: string) => Effect.Effect<Destination, HttpEgressError>
}

export class HttpEgress extends Context.Tag("gantry/HttpEgress")<HttpEgress, HttpEgressShape>() {}

const METHOD_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
/** Request headers the proxy owns (the Host header always names the URL's host). */
const DROPPED_HEADERS = new Set(["host", "connection", "keep-alive", "transfer-encoding", "upgrade", "content-length", "proxy-connection", "te", "trailer"])

/** The default resolver: `dns.lookup(hostname, {all: true})` (the system resolver, /etc/hosts included). */
export const systemResolve = (hostname: string): Effect.Effect<ReadonlyArray<string>, HttpEgressFailed> =>
  Effect.tryPromise({
    try: () => dns.lookup(hostname, { all: true }),
    catch: (e) => new HttpEgressFailed({ reason: "dns", message: `DNS lookup for ${hostname} failed: ${(e as NodeJS.ErrnoException).code ?? String(e)}` })
  }).pipe(Effect.map((rs) => rs.map((r) => r.address)))

export const make = (options: HttpEgressOptions = {}): Effect.Effect<HttpEgressShape, HttpAllowListInvalid> =>
  Effect.gen(function* () {
    const allow = yield* parseAllowList(options.allow ?? [])
    const timeoutMs = options.timeoutMs ?? DEFAULTS.timeoutMs
    const maxBodyBytes = options.maxBodyBytes ?? DEFAULTS.maxBodyBytes
    const dnsTimeoutMs = options.dnsTimeoutMs ?? DEFAULTS.dnsTimeoutMs
    const resolveName = options.resolve ?? systemResolve

    const hostAllowed = (hostname: string, port: number) =>
      allow.some((a) => a.kind === "host" && (a.port === null || a.port === port) &&
        (a.wildcard ? hostname.endsWith(`.${a.host}`) : hostname === a.host))
    const ipAllowed = (ip: Ip, port: number) =>
      allow.some((a) => (a.kind === "cidr" && inCidr(ip, a.cidr)) || (a.kind === "ip" && (a.port === null || a.port === port) && sameBytes(a.ip, ip)))

    const check = Effect.fn("HttpEgress.check")(function* (raw: string) {
      const url = yield* Effect.try({
        try: () => new URL(raw),
        catch: () => new HttpEgressRefused({ reason: "invalid_url", message: `http.fetch: "${String(raw).slice(0, 200)}" is not a valid absolute URL` })
      })
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        return yield* new HttpEgressRefused({ reason: "scheme", message: `http.fetch: scheme "${url.protocol.replace(/:$/, "")}" is refused; only http and https are allowed` })
      }
      const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase().replace(/\.$/, "")
      const port = url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80
      const literal = parseIp(hostname)
      const addresses = literal
        ? [hostname]
        : yield* resolveName(hostname).pipe(
            Effect.timeoutFail({
              duration: dnsTimeoutMs,
              onTimeout: () => new HttpEgressFailed({ reason: "dns_timeout", message: `DNS lookup for ${hostname} timed out after ${dnsTimeoutMs} ms` })
            })
          )
      if (addresses.length === 0) {
        return yield* new HttpEgressFailed({ reason: "dns", message: `DNS lookup for ${hostname} returned no addresses` })
      }
      const trustedName = !literal && hostAllowed(hostname, port)
      const checked: Array<{ address: string; family: 4 | 6 }> = []
      for (const address of addresses) {
        const ip = parseIp(address)
        if (!ip) return yield* new HttpEgressFailed({ reason: "dns", message: `DNS lookup for ${hostname} returned an invalid address` })
        const why = trustedName || ipAllowed(ip, port) ? undefined : blockedReason(ip)
        if (why) {
          return yield* new HttpEgressRefused({
            reason: "address",
            address,
            message: literal ? `destination ${address} is ${why}` : `destination ${hostname} resolves to ${address}, ${why}`
          })
        }
        checked.push({ address, family: ip.family })
      }
      return { url, hostname, port, addresses: checked } satisfies Destination
    })

    const send = (d: Destination, init: HttpInit | undefined) =>
      Effect.async<HttpFetchResult, HttpEgressError>((resume) => {
        const where = `${d.url.protocol}//${d.url.host}`
        const method = (init?.method ?? "GET").toUpperCase()
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(init?.headers ?? {})) if (!DROPPED_HEADERS.has(k.toLowerCase())) headers[k] = String(v)
        // the socket connects to the checked addresses only: no second DNS answer can redirect it
        const lookup: LookupFunction = (_host, opts, cb) => {
          const all = d.addresses.filter((a) => !opts.family || opts.family === a.family)
          const list = all.length > 0 ? all : d.addresses
          if (opts.all) (cb as unknown as (e: null, a: typeof list) => void)(null, list)
          else cb(null, list[0]!.address, list[0]!.family)
        }
        let req: http.ClientRequest
        try {
          req = (d.url.protocol === "https:" ? https : http).request({
            protocol: d.url.protocol,
            hostname: d.hostname,
            port: d.port,
            path: `${d.url.pathname}${d.url.search}`,
            method,
            headers,
            lookup,
            agent: false
          })
        } catch (e) {
          return resume(Effect.fail(new HttpEgressRefused({ reason: "invalid_request", message: `http.fetch ${where}: invalid request: ${e instanceof Error ? e.message : String(e)}` })))
        }
        let done = false
        const finish = (eff: Effect.Effect<HttpFetchResult, HttpEgressError>) => {
          if (done) return
          done = true
          resume(eff)
        }
        req.on("error", (e: NodeJS.ErrnoException) =>
          finish(Effect.fail(new HttpEgressFailed({ reason: "connect", message: `http.fetch ${where}: ${e.code ?? e.message}` }))))
        req.on("response", (res) => {
          const tooLarge = () =>
            new HttpEgressFailed({ reason: "body_too_large", message: `http.fetch ${where}: response body is larger than ${maxBodyBytes} bytes` })
          const declared = Number(res.headers["content-length"])
          if (Number.isFinite(declared) && declared > maxBodyBytes) {
            finish(Effect.fail(tooLarge()))
            return void req.destroy()
          }
          const chunks: Array<Buffer> = []
          let size = 0
          res.on("data", (c: Buffer) => {
            size += c.length
            if (size > maxBodyBytes) {
              finish(Effect.fail(tooLarge()))
              return void req.destroy()
            }
            chunks.push(c)
          })
          res.on("error", (e: NodeJS.ErrnoException) =>
            finish(Effect.fail(new HttpEgressFailed({ reason: "connect", message: `http.fetch ${where}: ${e.code ?? e.message}` }))))
          res.on("end", () => {
            const out: Record<string, string> = {}
            for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) out[k] = Array.isArray(v) ? v.join(", ") : v
            finish(Effect.succeed({
              status: res.statusCode ?? 0,
              statusText: res.statusMessage ?? "",
              headers: out,
              body: Buffer.concat(chunks).toString("utf8")
            }))
          })
        })
        req.end(init?.body ?? undefined)
        return Effect.sync(() => {
          done = true
          req.destroy()
        })
      })

    const fetch = Effect.fn("HttpEgress.fetch")(function* (raw: string, init?: HttpInit) {
      const method = init?.method ?? "GET"
      if (!METHOD_RE.test(method) || method.toUpperCase() === "CONNECT") {
        return yield* new HttpEgressRefused({ reason: "method", message: `http.fetch: method "${String(method).slice(0, 40)}" is not allowed` })
      }
      return yield* Effect.flatMap(check(raw), (d) => send(d, init)).pipe(
        Effect.timeoutFail({
          duration: timeoutMs,
          onTimeout: () => new HttpEgressFailed({ reason: "timeout", message: `http.fetch ${hostOf(raw)}: no complete response within ${timeoutMs} ms` })
        })
      )
    })

    return HttpEgress.of({ fetch, check })
  })

const hostOf = (raw: string) => {
  const u = URL.canParse(raw) ? new URL(raw) : undefined
  return u ? `${u.protocol}//${u.host}` : "(invalid url)"
}

/** Options from config: `GANTRY_HTTP_ALLOW`, `GANTRY_HTTP_TIMEOUT_MS`, `GANTRY_HTTP_MAX_BODY_BYTES`, `GANTRY_HTTP_DNS_TIMEOUT_MS`. */
export const optionsFromConfig: Effect.Effect<HttpEgressOptions> = Effect.gen(function* () {
  const int = (name: string, d: number) => Config.integer(name).pipe(Config.withDefault(d))
  return {
    allow: yield* Config.string("GANTRY_HTTP_ALLOW").pipe(Config.withDefault("")),
    timeoutMs: yield* int("GANTRY_HTTP_TIMEOUT_MS", DEFAULTS.timeoutMs),
    maxBodyBytes: yield* int("GANTRY_HTTP_MAX_BODY_BYTES", DEFAULTS.maxBodyBytes),
    dnsTimeoutMs: yield* int("GANTRY_HTTP_DNS_TIMEOUT_MS", DEFAULTS.dnsTimeoutMs)
  }
}).pipe(Effect.orDie)

export const layer = (options: HttpEgressOptions = {}) => Layer.effect(HttpEgress, make(options))

export const layerConfig = Layer.effect(HttpEgress, Effect.flatMap(optionsFromConfig, make))

/** The HttpEgress in context (tests provide one with an allow list), else one from config. */
export const fromContextOrConfig = Effect.flatMap(Effect.serviceOption(HttpEgress), (o) =>
  Option.isSome(o) ? Effect.succeed(o.value) : Effect.flatMap(optionsFromConfig, make)).pipe(Effect.orDie)

// ---------------------------------------------------------------------------------------------------
// The `http` capability backend (worker → host `http.fetch`)

/** Wire form: an unparsable URL or request is -32602 (field `url` / `init`); every other refusal or
 * failure is -32002 with `data.reason` (and `data.address` for a refused address). */
export const toRpcError = (e: HttpEgressError): RpcError =>
  e._tag === "HttpEgressRefused" && (e.reason === "invalid_url" || e.reason === "invalid_request")
    ? new InvalidParams({ message: e.message, data: { field: e.reason === "invalid_url" ? "url" : "init" } })
    : new WorkerError({ message: e.message, data: e._tag === "HttpEgressRefused" && e.address !== undefined ? { reason: e.reason, address: e.address } : { reason: e.reason } })

export const capability = (egress: HttpEgressShape): CapabilityStoresShape["http"] => ({
  fetch: (_pluginId, url, init) => Effect.mapError(egress.fetch(url, init), toRpcError)
})
