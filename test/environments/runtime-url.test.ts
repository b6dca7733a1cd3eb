import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit } from "effect"
import {
  candidates,
  isLoopbackHost,
  isWildcardHost,
  layer,
  layerStatic,
  normalizePublicUrl,
  RuntimeUrl,
  type NetworkInterfaces
} from "../../src/environments/RuntimeUrl.js"

const lo: NetworkInterfaces = {
  lo: [
    { address: "127.0.0.1", family: "IPv4", internal: true },
    { address: "::1", family: "IPv6", internal: true }
  ]
}

// internal + external, v4 + v6 (global and link-local), listed v6-first to prove the v4-first order
const machine: NetworkInterfaces = {
  ...lo,
  eth0: [
    { address: "fe80::a00:27ff:fe4e:66a1", family: "IPv6", internal: false },
    { address: "2001:db8::10", family: "IPv6", internal: false },
    { address: "192.168.1.20", family: "IPv4", internal: false }
  ],
  docker0: [{ address: "172.17.0.1", family: 4, internal: false }],
  missing: undefined
}

describe("RuntimeUrl.candidates", () => {
  it("an explicit public URL wins, normalized without trailing slash", () => {
    expect(candidates({ publicUrl: "https://Gantry.Example.com/", bindHost: "127.0.0.1", port: 3100, interfaces: lo })).toEqual([
      "https://gantry.example.com",
      "http://127.0.0.1:3100",
      "http://localhost:3100"
    ])
    expect(candidates({ publicUrl: " https://example.com/gantry// ", bindHost: "0.0.0.0", port: 3100, interfaces: lo })[0])
      .toBe("https://example.com/gantry")
  })

  it("a blank or invalid public URL is ignored", () => {
    for (const publicUrl of ["", "   ", "not a url", "ftp://example.com"]) {
      expect(candidates({ publicUrl, bindHost: "127.0.0.1", port: 3100, interfaces: lo })[0]).toBe("http://127.0.0.1:3100")
    }
  })

  it("loopback bind host comes first; localhost last; internal interfaces never", () => {
    expect(candidates({ bindHost: "127.0.0.1", port: 3100, interfaces: lo })).toEqual(["http://127.0.0.1:3100", "http://localhost:3100"])
    expect(candidates({ bindHost: "::1", port: 3100, interfaces: lo })).toEqual(["http://[::1]:3100", "http://localhost:3100"])
    expect(candidates({ bindHost: "[::1]", port: 3100, interfaces: lo })).toEqual(["http://[::1]:3100", "http://localhost:3100"])
    // the bind host then interfaces, IPv4 first
    expect(candidates({ bindHost: "127.0.0.2", port: 3100, interfaces: machine })).toEqual([
      "http://127.0.0.2:3100",
      "http://192.168.1.20:3100",
      "http://172.17.0.1:3100",
      "http://[2001:db8::10]:3100",
      "http://localhost:3100"
    ])
  })

  it("a wildcard bind host (0.0.0.0, ::) is never a URL", () => {
    const expected = ["http://192.168.1.20:3100", "http://172.17.0.1:3100", "http://[2001:db8::10]:3100", "http://localhost:3100"]
    for (const bindHost of ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", ""]) {
      expect(candidates({ bindHost, port: 3100, interfaces: machine })).toEqual(expected)
    }
    expect(candidates({ bindHost: "0.0.0.0", port: 3100, interfaces: lo })).toEqual(["http://localhost:3100"])
    expect(candidates({ bindHost: "::", port: 3100, interfaces: {} })).toEqual(["http://localhost:3100"])
    for (const bindHost of ["0.0.0.0", "::"]) {
      expect(candidates({ bindHost, port: 3100, interfaces: machine }).join()).not.toMatch(/0\.0\.0\.0|\[::\]/)
    }
  })

  it("a specific non-loopback bind host comes first", () => {
    expect(candidates({ bindHost: "10.0.0.5", port: 8080, interfaces: machine })).toEqual([
      "http://10.0.0.5:8080",
      "http://192.168.1.20:8080",
      "http://172.17.0.1:8080",
      "http://[2001:db8::10]:8080",
      "http://localhost:8080"
    ])
    expect(candidates({ bindHost: "Gantry.LAN", port: 3100, interfaces: lo })).toEqual(["http://gantry.lan:3100", "http://localhost:3100"])
  })

  it("an IPv6 bind host is bracketed and compressed", () => {
    expect(candidates({ bindHost: "2001:db8:0:0:0:0:0:99", port: 3100, interfaces: lo })).toEqual([
      "http://[2001:db8::99]:3100",
      "http://localhost:3100"
    ])
    expect(candidates({ bindHost: "fd00::1%eth0", port: 3100, interfaces: lo })[0]).toBe("http://[fd00::1]:3100")
  })

  it("link-local IPv6 only when there is nothing else", () => {
    const linkLocalOnly: NetworkInterfaces = {
      ...lo,
      eth0: [{ address: "fe80::1", family: "IPv6", internal: false }]
    }
    expect(candidates({ bindHost: "0.0.0.0", port: 3100, interfaces: linkLocalOnly })).toEqual(["http://[fe80::1]:3100", "http://localhost:3100"])
    expect(candidates({ bindHost: "0.0.0.0", port: 3100, interfaces: machine }).join()).not.toContain("fe80")
  })

  it("deduplicates (public URL = bind host, bind host = an interface, localhost bind)", () => {
    expect(candidates({ publicUrl: "http://192.168.1.20:3100/", bindHost: "192.168.1.20", port: 3100, interfaces: machine })).toEqual([
      "http://192.168.1.20:3100",
      "http://172.17.0.1:3100",
      "http://[2001:db8::10]:3100",
      "http://localhost:3100"
    ])
    expect(candidates({ bindHost: "localhost", port: 3100, interfaces: lo })).toEqual(["http://localhost:3100"])
    const twice: NetworkInterfaces = {
      a: [{ address: "10.1.1.1", family: "IPv4", internal: false }],
      b: [{ address: "10.1.1.1", family: "IPv4", internal: false }, { address: "2001:DB8::1", family: "IPv6", internal: false }],
      c: [{ address: "2001:db8:0::1", family: "IPv6", internal: false }]
    }
    expect(candidates({ bindHost: "::", port: 3100, interfaces: twice })).toEqual([
      "http://10.1.1.1:3100",
      "http://[2001:db8::1]:3100",
      "http://localhost:3100"
    ])
  })

  it("classifies hosts", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "0:0:0:0:0:0:0:1", "localhost", "LocalHost", "::ffff:127.0.0.1"]) {
      expect(isLoopbackHost(h), h).toBe(true)
    }
    for (const h of ["0.0.0.0", "::", "10.0.0.1", "::2", "example.com", "::ffff:10.0.0.1"]) expect(isLoopbackHost(h), h).toBe(false)
    for (const h of ["0.0.0.0", "::", "[::]", "::0", ""]) expect(isWildcardHost(h), h).toBe(true)
    for (const h of ["127.0.0.1", "::1", "localhost"]) expect(isWildcardHost(h), h).toBe(false)
    expect(normalizePublicUrl("http://x.test/a/?q=1")._tag).toBe("Left")
  })
})

describe("RuntimeUrl service", () => {
  const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

  it.effect("apiUrl is the first candidate; runEnv carries the run variables", () =>
    Effect.gen(function* () {
      const urls = yield* RuntimeUrl
      expect(urls.apiUrl).toBe("https://gantry.example.com")
      expect(urls.candidates[0]).toBe(urls.apiUrl)
      expect(urls.candidates).toContain("http://127.0.0.1:3100")
      expect(urls.candidates.at(-1)).toBe("http://localhost:3100")
      const env = urls.runEnv("run-1", "tok")
      expect(env).toEqual({
        GANTRY_API_URL: "https://gantry.example.com",
        GANTRY_API_CANDIDATES: JSON.stringify(urls.candidates),
        GANTRY_RUN_ID: "run-1",
        GANTRY_RUN_TOKEN: "tok"
      })
      expect(JSON.parse(env.GANTRY_API_CANDIDATES)).toEqual(urls.candidates)
    }).pipe(Effect.provide(layer({ bindHost: "127.0.0.1", port: 3100 })), withEnv({ GANTRY_PUBLIC_URL: "https://gantry.example.com/" })))

  it.effect("an explicit publicUrl overrides GANTRY_PUBLIC_URL; without either, the bind host leads", () =>
    Effect.gen(function* () {
      const explicit = yield* RuntimeUrl.pipe(Effect.provide(layer({ bindHost: "127.0.0.1", port: 3100, publicUrl: "http://a.test" })))
      expect(explicit.apiUrl).toBe("http://a.test")
      const none = yield* RuntimeUrl.pipe(Effect.provide(layer({ bindHost: "127.0.0.1", port: 3100 })), withEnv({}))
      expect(none.apiUrl).toBe("http://127.0.0.1:3100")
      const blank = yield* RuntimeUrl.pipe(Effect.provide(layer({ bindHost: "::1", port: 3100 })), withEnv({ GANTRY_PUBLIC_URL: " " }))
      expect(blank.apiUrl).toBe("http://[::1]:3100")
    }).pipe(withEnv({ GANTRY_PUBLIC_URL: "http://b.test" })))

  it.effect("an invalid GANTRY_PUBLIC_URL or publicUrl fails the layer with a ConfigError", () =>
    Effect.gen(function* () {
      const fromEnv = yield* Effect.exit(RuntimeUrl.pipe(Effect.provide(layer({ bindHost: "0.0.0.0", port: 3100 })), withEnv({ GANTRY_PUBLIC_URL: "gantry.example.com" })))
      expect(Exit.isFailure(fromEnv)).toBe(true)
      const explicit = yield* Effect.exit(RuntimeUrl.pipe(Effect.provide(layer({ bindHost: "0.0.0.0", port: 3100, publicUrl: "ftp://x" }))))
      expect(Exit.isFailure(explicit)).toBe(true)
    }))

  it.effect("layerStatic", () =>
    Effect.gen(function* () {
      const urls = yield* RuntimeUrl
      expect(urls.apiUrl).toBe("http://h:1")
      expect(urls.runEnv("r", "t").GANTRY_API_CANDIDATES).toBe('["http://h:1","http://localhost:1"]')
    }).pipe(Effect.provide(layerStatic(["http://h:1", "http://localhost:1"]))))
})
