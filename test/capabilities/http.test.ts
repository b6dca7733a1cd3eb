// http.fetch egress (SPEC §5.6): refusals happen before any connection (a guard in this process
// records every socket connect and throws on a non-loopback IP); allow-listed loopback servers are
// reachable; redirects are returned, not followed; DNS pinned; body cap and deadlines enforced.
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Cause, ConfigProvider, Effect, Either, Exit, Layer } from "effect"
import * as http from "node:http"
import net from "node:net"
import * as Capabilities from "../../src/host/capabilities/index.js"
import * as HttpEgress from "../../src/host/capabilities/HttpEgress.js"
import * as Redactor from "../../src/host/capabilities/Redactor.js"
import { HostOptions } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { freshDatabase, testDbs } from "../db.js"
import { childPids, eventually, examples } from "../helpers.js"

// ---- connection guard --------------------------------------------------------------------------
const connects: Array<string> = []
const isLoopbackLiteral = (h: string) => /^127\./.test(h) || h === "::1" || /^::ffff:127\./i.test(h)
const originalConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (this: net.Socket, ...args: Array<unknown>) {
  const first = args[0]
  const o = (Array.isArray(first) ? first[0] : first) as { host?: string; path?: string } | number | string
  if (typeof o === "object" && o !== null && !o.path) {
    const host = o.host ?? "localhost"
    connects.push(host)
    if (net.isIP(host) && !isLoopbackLiteral(host)) throw new Error(`test guard: refusing a connection to ${host}`)
  } else if (typeof o === "number") {
    const host = typeof args[1] === "string" ? args[1] : "localhost"
    connects.push(host)
    if (net.isIP(host) && !isLoopbackLiteral(host)) throw new Error(`test guard: refusing a connection to ${host}`)
  }
  return (originalConnect as (...a: Array<unknown>) => net.Socket).apply(this, args)
} as typeof net.Socket.prototype.connect
afterAll(() => {
  net.Socket.prototype.connect = originalConnect
})

// ---- loopback test servers ---------------------------------------------------------------------
interface TestServer {
  readonly port: number
  readonly requests: Array<{ method: string; url: string; host: string; headers: http.IncomingHttpHeaders }>
  readonly openHanging: { count: number }
}

const serve = (handler: (req: http.IncomingMessage, res: http.ServerResponse, s: TestServer) => void) =>
  Effect.acquireRelease(
    Effect.async<{ server: http.Server; info: TestServer }>((resume) => {
      const requests: TestServer["requests"] = []
      const openHanging = { count: 0 }
      const info: { port: number; requests: typeof requests; openHanging: typeof openHanging } = { port: 0, requests, openHanging }
      const server = http.createServer((req, res) => {
        requests.push({ method: req.method ?? "", url: req.url ?? "", host: req.headers.host ?? "", headers: req.headers })
        handler(req, res, info)
      })
      server.listen(0, "127.0.0.1", () => {
        info.port = (server.address() as net.AddressInfo).port
        resume(Effect.succeed({ server, info }))
      })
    }),
    ({ server }) =>
      Effect.async<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map((s) => s.info))

const servers = Effect.gen(function* () {
  const other = yield* serve((_req, res) => res.end("other"))
  const main = yield* serve((req, res, s) => {
    const path = (req.url ?? "").split("?")[0]
    if (path === "/ok") {
      res.setHeader("x-test", "a")
      res.setHeader("set-cookie", ["a=1", "b=2"])
      return void res.end("hello")
    }
    if (path === "/redirect") {
      res.writeHead(302, { location: `http://127.0.0.1:${other.port}/target` })
      return void res.end()
    }
    if (path === "/big") {
      res.writeHead(200, { "content-type": "text/plain" })
      for (let i = 0; i < 4; i++) res.write("x".repeat(500))
      return void res.end()
    }
    if (path === "/declared") {
      res.writeHead(200, { "content-length": "5000" })
      return void res.end("y".repeat(5000))
    }
    if (path === "/hang") {
      s.openHanging.count++
      req.socket.on("close", () => { s.openHanging.count-- })
      return
    }
    if (path === "/echo") {
      let body = ""
      req.on("data", (c) => { body += c })
      req.on("end", () => {
        res.setHeader("content-type", "application/json")
        res.end(JSON.stringify({ method: req.method, host: req.headers.host, body, xh: req.headers["x-h"] ?? null }))
      })
      return
    }
    res.statusCode = 404
    res.end("not found")
  })
  return { main, other }
})

// ---- fake DNS ----------------------------------------------------------------------------------
const fakeDns: Record<string, ReadonlyArray<string>> = {
  "internal.test": ["10.0.0.5"],
  "mixed.test": ["93.184.216.34", "10.0.0.5"],
  "pinned.test": ["127.0.0.1"],
  "mapped.test": ["::ffff:169.254.169.254"],
  "metadata.test": ["169.254.169.254"]
}
const resolverCalls: Array<string> = []
const resolve = (hostname: string): Effect.Effect<ReadonlyArray<string>, HttpEgress.HttpEgressFailed> => {
  resolverCalls.push(hostname)
  if (hostname === "slow.test") return Effect.never
  if (hostname === "nxdomain.test") return Effect.fail(new HttpEgress.HttpEgressFailed({ reason: "dns", message: `DNS lookup for ${hostname} failed: ENOTFOUND` }))
  const known = fakeDns[hostname]
  if (known) return Effect.succeed(known)
  if (hostname === "localhost") return HttpEgress.systemResolve(hostname)
  return Effect.die(`test resolver: no answer for ${hostname} (tests never query real DNS)`)
}

const egressFor = (port: number, extra: HttpEgress.HttpEgressOptions = {}) =>
  HttpEgress.make({ allow: `127.0.0.1:${port}`, timeoutMs: 500, maxBodyBytes: 1_000, dnsTimeoutMs: 200, resolve, ...extra }).pipe(Effect.orDie)

const refusal = <A>(exit: Exit.Exit<A, HttpEgress.HttpEgressError>) => {
  if (!Exit.isFailure(exit)) throw new Error(`expected a refusal, got ${JSON.stringify(exit)}`)
  return Cause.squash(exit.cause) as HttpEgress.HttpEgressError
}

describe("http egress (direct)", () => {
  it.live("acceptance 5: private, loopback, link-local, mapped and resolved-to-private destinations are refused before any connection", () =>
    Effect.gen(function* () {
      const { main, other } = yield* servers
      const egress = yield* egressFor(main.port)
      const cases: ReadonlyArray<readonly [string, string]> = [
        [`http://127.0.0.1:${other.port}/`, "destination 127.0.0.1 is a loopback address"],
        ["http://127.1.2.3/", "destination 127.1.2.3 is a loopback address"],
        [`http://2130706433:${other.port}/`, "destination 127.0.0.1 is a loopback address"],
        ["http://0x7f.0.0.1/", "destination 127.0.0.1 is a loopback address"],
        ["http://10.1.2.3/", "destination 10.1.2.3 is a private address"],
        ["http://172.16.5.4/", "destination 172.16.5.4 is a private address"],
        ["http://192.168.0.1/", "destination 192.168.0.1 is a private address"],
        ["http://169.254.169.254/latest/meta-data/", "destination 169.254.169.254 is a link-local address"],
        ["https://169.254.169.254/", "destination 169.254.169.254 is a link-local address"],
        ["http://100.64.0.1/", "destination 100.64.0.1 is a CGNAT (shared address space) address"],
        ["http://0.0.0.0/", "destination 0.0.0.0 is an unspecified address"],
        ["http://224.0.0.251/", "destination 224.0.0.251 is a multicast address"],
        ["http://255.255.255.255/", "destination 255.255.255.255 is a broadcast address"],
        [`http://[::ffff:127.0.0.1]:${main.port}/ok`, "destination ::ffff:7f00:1 is the IPv4-mapped form of 127.0.0.1, a loopback address"],
        ["http://[::ffff:7f00:1]/", "destination ::ffff:7f00:1 is the IPv4-mapped form of 127.0.0.1, a loopback address"],
        ["http://[::ffff:a9fe:a9fe]/", "destination ::ffff:a9fe:a9fe is the IPv4-mapped form of 169.254.169.254, a link-local address"],
        ["http://[::ffff:10.0.0.1]/", "destination ::ffff:a00:1 is the IPv4-mapped form of 10.0.0.1, a private address"],
        ["http://[64:ff9b::a00:1]/", "destination 64:ff9b::a00:1 is the NAT64 form of 10.0.0.1, a private address"],
        ["http://[2002:a9fe:a9fe::1]/", "destination 2002:a9fe:a9fe::1 is the 6to4 form of 169.254.169.254, a link-local address"],
        [`http://[::1]:${main.port}/`, "destination ::1 is a loopback address"],
        ["http://[::]/", "destination :: is an unspecified address"],
        ["http://[fc00::1]/", "destination fc00::1 is a unique-local address"],
        ["http://[fd12:3456::1]/", "destination fd12:3456::1 is a unique-local address"],
        ["http://[fe80::1]/", "destination fe80::1 is a link-local address"],
        ["http://[ff02::1]/", "destination ff02::1 is a multicast address"],
        ["http://internal.test/", "destination internal.test resolves to 10.0.0.5, a private address"],
        ["http://mixed.test/", "destination mixed.test resolves to 10.0.0.5, a private address"],
        ["http://metadata.test/", "destination metadata.test resolves to 169.254.169.254, a link-local address"],
        ["http://mapped.test/", "destination mapped.test resolves to ::ffff:169.254.169.254, the IPv4-mapped form of 169.254.169.254, a link-local address"]
      ]
      const before = connects.length
      for (const [url, message] of cases) {
        const e = refusal(yield* Effect.exit(egress.fetch(url)))
        expect({ url, tag: e._tag, reason: e.reason, message: e.message }).toEqual({ url, tag: "HttpEgressRefused", reason: "address", message })
      }
      // a host name resolving to loopback (the system resolver: localhost)
      const local = refusal(yield* Effect.exit(egress.fetch(`http://localhost:${other.port}/`)))
      expect(local.message).toMatch(/^destination localhost resolves to (127\.0\.0\.1|::1), a loopback address$/)
      // nothing was sent anywhere, and the loopback server that is not allow-listed saw nothing
      expect(connects.length).toBe(before)
      expect(other.requests).toEqual([])
      expect(main.requests).toEqual([])
    }).pipe(Effect.scoped))

  it.live("scheme, URL and method refusals", () =>
    Effect.gen(function* () {
      const { main } = yield* servers
      const egress = yield* egressFor(main.port)
      const before = connects.length
      const cases: ReadonlyArray<readonly [string, string | undefined, string, string]> = [
        ["ftp://example.com/x", undefined, "scheme", `http.fetch: scheme "ftp" is refused; only http and https are allowed`],
        ["file:///etc/passwd", undefined, "scheme", `http.fetch: scheme "file" is refused; only http and https are allowed`],
        ["not a url", undefined, "invalid_url", `http.fetch: "not a url" is not a valid absolute URL`],
        [`http://127.0.0.1:${main.port}/ok`, "CONNECT", "method", `http.fetch: method "CONNECT" is not allowed`],
        [`http://127.0.0.1:${main.port}/ok`, "GE T", "method", `http.fetch: method "GE T" is not allowed`]
      ]
      for (const [url, method, reason, message] of cases) {
        const e = refusal(yield* Effect.exit(egress.fetch(url, method ? { method } : undefined)))
        expect({ tag: e._tag, reason: e.reason, message: e.message }).toEqual({ tag: "HttpEgressRefused", reason, message })
      }
      // a header value Node will not send: invalid request, nothing sent
      const header = refusal(yield* Effect.exit(egress.fetch(`http://127.0.0.1:${main.port}/ok`, { headers: { "x-bad": "a\r\nb" } })))
      expect(header.reason).toBe("invalid_request")
      expect(main.requests).toEqual([])
      expect(connects.length).toBe(before)
      // on the wire: a bad URL is invalid params (-32602), a refusal -32002 with the reason
      const cap = HttpEgress.capability(egress)
      const wire = (url: string) => Effect.flip(cap.fetch("p", url, undefined))
      expect(yield* wire("not a url")).toMatchObject({ code: -32602, data: { field: "url" } })
      expect(yield* wire("http://10.0.0.1/")).toMatchObject({ code: -32002, message: "destination 10.0.0.1 is a private address", data: { reason: "address", address: "10.0.0.1" } })
    }).pipe(Effect.scoped))

  it.live("an allow-listed loopback server is reachable; headers and body come back as strings; redirects are returned, not followed", () =>
    Effect.gen(function* () {
      const { main, other } = yield* servers
      const egress = yield* egressFor(main.port)
      // the guard is live: it sees connections and stops a non-loopback one before it starts
      expect(() => net.connect({ host: "192.0.2.1", port: 9 })).toThrow(/test guard: refusing a connection to 192.0.2.1/)
      const seen = connects.length
      const ok = yield* egress.fetch(`http://127.0.0.1:${main.port}/ok`)
      expect(connects.slice(seen)).toEqual(["127.0.0.1"])
      expect(ok).toMatchObject({ status: 200, statusText: "OK", body: "hello" })
      expect(ok.headers["x-test"]).toBe("a")
      expect(ok.headers["set-cookie"]).toBe("a=1, b=2")
      expect(Object.values(ok.headers).every((v) => typeof v === "string")).toBe(true)

      const redirect = yield* egress.fetch(`http://127.0.0.1:${main.port}/redirect`)
      expect(redirect.status).toBe(302)
      expect(redirect.headers.location).toBe(`http://127.0.0.1:${other.port}/target`)
      expect(other.requests).toEqual([])
      // following it by hand is refused like any other loopback destination
      expect(refusal(yield* Effect.exit(egress.fetch(redirect.headers.location!))).message).toBe("destination 127.0.0.1 is a loopback address")

      // method, body and headers pass; the Host header always names the URL's host
      const echo = yield* egress.fetch(`http://127.0.0.1:${main.port}/echo?q=1`, { method: "post", headers: { host: "evil.example", "x-h": "v" }, body: "payload" })
      expect(JSON.parse(echo.body)).toEqual({ method: "POST", host: `127.0.0.1:${main.port}`, body: "payload", xh: "v" })
      expect(main.requests.map((r) => r.url)).toEqual(["/ok", "/redirect", "/echo?q=1"])
    }).pipe(Effect.scoped))

  it.live("DNS is resolved once and the connection is pinned to the checked address (Host header kept)", () =>
    Effect.gen(function* () {
      const { main } = yield* servers
      const egress = yield* egressFor(main.port)
      const before = resolverCalls.filter((h) => h === "pinned.test").length
      const r = yield* egress.fetch(`http://pinned.test:${main.port}/echo`)
      expect(JSON.parse(r.body)).toMatchObject({ method: "GET", host: `pinned.test:${main.port}` })
      expect(resolverCalls.filter((h) => h === "pinned.test").length).toBe(before + 1)
      expect(connects.at(-1)).toBe("pinned.test")
      // the socket went to the name (our lookup answers with the checked IP), never to a fresh DNS answer
      const d = yield* egress.check(`http://pinned.test:${main.port}/`)
      expect(d.addresses).toEqual([{ address: "127.0.0.1", family: 4 }])
      // a host allow entry trusts every address of that name (check only: no connection)
      const byName = yield* HttpEgress.make({ allow: "localhost", resolve }).pipe(Effect.orDie)
      const l = yield* byName.check(`http://localhost:${main.port}/`)
      expect(l.addresses.length).toBeGreaterThan(0)
      expect(l.addresses.every((a) => a.address === "::1" || a.address.startsWith("127."))).toBe(true)
      // a CIDR entry allows matching addresses on any port
      const cidr = yield* HttpEgress.make({ allow: "127.0.0.0/8", resolve }).pipe(Effect.orDie)
      expect((yield* cidr.fetch(`http://127.0.0.1:${main.port}/ok`)).body).toBe("hello")
    }).pipe(Effect.scoped))

  it.live("response body cap, request deadline and DNS deadline are enforced", () =>
    Effect.gen(function* () {
      const { main } = yield* servers
      const egress = yield* egressFor(main.port)
      const big = refusal(yield* Effect.exit(egress.fetch(`http://127.0.0.1:${main.port}/big`)))
      expect({ tag: big._tag, reason: big.reason, message: big.message }).toEqual({
        tag: "HttpEgressFailed", reason: "body_too_large", message: `http.fetch http://127.0.0.1:${main.port}: response body is larger than 1000 bytes`
      })
      const declared = refusal(yield* Effect.exit(egress.fetch(`http://127.0.0.1:${main.port}/declared`)))
      expect(declared.reason).toBe("body_too_large")
      // the same body under a larger cap is fine
      const roomy = yield* egressFor(main.port, { maxBodyBytes: 5_000 })
      expect((yield* roomy.fetch(`http://127.0.0.1:${main.port}/declared`)).body).toHaveLength(5_000)

      const started = Date.now()
      const slow = refusal(yield* Effect.exit(egress.fetch(`http://127.0.0.1:${main.port}/hang`)))
      expect({ tag: slow._tag, reason: slow.reason, message: slow.message }).toEqual({
        tag: "HttpEgressFailed", reason: "timeout", message: `http.fetch http://127.0.0.1:${main.port}: no complete response within 500 ms`
      })
      expect(Date.now() - started).toBeLessThan(5_000)
      // the abandoned request's connection is closed
      yield* eventually(Effect.suspend(() => (main.openHanging.count === 0 ? Effect.void : Effect.fail("still open"))))

      const dns = refusal(yield* Effect.exit(egress.fetch("http://slow.test/")))
      expect({ reason: dns.reason, message: dns.message }).toEqual({ reason: "dns_timeout", message: "DNS lookup for slow.test timed out after 200 ms" })
      const nx = refusal(yield* Effect.exit(egress.fetch("http://nxdomain.test/")))
      expect(nx.reason).toBe("dns")
      // a closed port: a connection error, not a hang
      const closed = yield* HttpEgress.make({ allow: "127.0.0.0/8", resolve }).pipe(Effect.orDie)
      const port = yield* Effect.async<number>((resume) => {
        const s = net.createServer().listen(0, "127.0.0.1", () => {
          const p = (s.address() as net.AddressInfo).port
          s.close(() => resume(Effect.succeed(p)))
        })
      })
      expect(refusal(yield* Effect.exit(closed.fetch(`http://127.0.0.1:${port}/`)))).toMatchObject({ reason: "connect", message: `http.fetch http://127.0.0.1:${port}: ECONNREFUSED` })
    }).pipe(Effect.scoped))

  it("allow list parsing and address classification", () => {
    const ok = HttpEgress.parseAllowList(" api.example , *.corp.example:8443, [::1]:80, 10.0.0.0/8, 127.0.0.1:5, fd00::/8 ,,")
    expect(Either.isRight(ok)).toBe(true)
    expect(Either.getOrThrow(ok).map((e) => e.kind)).toEqual(["host", "host", "ip", "cidr", "ip", "cidr"])
    for (const bad of ["10.0.0.0/33", "foo bar", "[::1", "host:99999", "[api.example]:80", "1.2.3.4/x"]) {
      const r = HttpEgress.parseAllowList(bad)
      expect(Either.isLeft(r) && r.left.message.startsWith(`GANTRY_HTTP_ALLOW entry "${bad}"`)).toBe(true)
    }
    const reason = (ip: string) => HttpEgress.blockedReason(HttpEgress.parseIp(ip)!)
    for (const pub of ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "172.32.0.1", "100.128.0.1"]) {
      expect({ pub, why: reason(pub) }).toEqual({ pub, why: undefined })
    }
    expect(reason("::ffff:0.0.0.0")).toBe("the IPv4-mapped form of 0.0.0.0, an unspecified address")
    expect(reason("::127.0.0.1")).toBe("a reserved (IPv4-compatible) address")
    expect(reason("fe80::1%eth0")).toBe("a link-local address")
    expect(reason("172.31.255.255")).toBe("a private address")
  })

  it.effect("options from config: GANTRY_HTTP_ALLOW and limits", () =>
    Effect.gen(function* () {
      const o = yield* HttpEgress.optionsFromConfig
      expect(o).toEqual({ allow: "10.0.0.0/8,api.internal:8443", timeoutMs: 1234, maxBodyBytes: 2048, dnsTimeoutMs: 5_000 })
    }).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
      ["GANTRY_HTTP_ALLOW", "10.0.0.0/8,api.internal:8443"],
      ["GANTRY_HTTP_TIMEOUT_MS", "1234"],
      ["GANTRY_HTTP_MAX_BODY_BYTES", "2048"]
    ])))))
})

for (const db of testDbs) {
  describe(`http egress through a real worker [${db.kind}]`, () => {
    it.live("hello-promise: allow-listed server reachable; metadata IP, mapped loopback and redirects handled", () =>
      Effect.gen(function* () {
        const { main, other } = yield* servers
        const layer = PluginHost.layer.pipe(
          Layer.provideMerge(Capabilities.layerSql),
          Layer.provideMerge(Layer.mergeAll(HostOptions.layer(), Redactor.layer, HttpEgress.layer({ allow: [`127.0.0.1:${main.port}`], resolve }))),
          Layer.provideMerge(freshDatabase(db))
        )
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          const stores = yield* CapabilityStores
          const name = "hello-promise"
          yield* host.install(examples(name))
          yield* host.start(name)
          const fetch = (url: string) => host.call(name, "getData", { key: "fetch", companyId: "acme", params: { url } }, { companyId: "acme" })
          expect(yield* fetch(`http://127.0.0.1:${main.port}/ok`)).toEqual({ status: 200, body: "hello" })
          expect(yield* fetch(`http://127.0.0.1:${main.port}/redirect`)).toEqual({ status: 302, body: "" })
          expect(other.requests).toEqual([])
          const before = connects.length
          for (const [url, message] of [
            ["http://169.254.169.254/latest/meta-data/", "destination 169.254.169.254 is a link-local address"],
            ["http://10.0.0.1/", "destination 10.0.0.1 is a private address"],
            [`http://[::ffff:127.0.0.1]:${main.port}/ok`, "destination ::ffff:7f00:1 is the IPv4-mapped form of 127.0.0.1, a loopback address"],
            [`http://127.0.0.1:${other.port}/`, "destination 127.0.0.1 is a loopback address"],
            ["http://internal.test/", "destination internal.test resolves to 10.0.0.5, a private address"]
          ] as const) {
            const exit = yield* Effect.exit(fetch(url))
            expect(Exit.isFailure(exit)).toBe(true)
            const e = Cause.squash((exit as Exit.Failure<unknown, unknown>).cause) as { code: number; message: string }
            expect({ url, code: e.code, message: e.message }).toEqual({ url, code: -32002, message })
          }
          expect(connects.length).toBe(before)
          expect(other.requests).toEqual([])
          // the capability backend of layerSql is the HttpEgress provided in context
          expect((yield* Effect.flip(stores.http.fetch(name, "gopher://x/", undefined))).message).toMatch(/scheme "gopher" is refused/)
        }).pipe(Effect.scoped, Effect.provide(layer))
      }).pipe(Effect.scoped))
  })
}

describe("http egress: cleanup", () => {
  it.live("no child processes are left behind", () => Effect.sync(() => expect(childPids()).toEqual([])))
})
