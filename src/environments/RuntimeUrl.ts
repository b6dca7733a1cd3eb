// How a runtime reaches the host back (SPEC §9): the ordered candidate base URLs, the first of which
// is GANTRY_API_URL, and the run variables (GANTRY_API_URL, GANTRY_API_CANDIDATES, GANTRY_RUN_ID,
// GANTRY_RUN_TOKEN) a run's command gets.
import { Config, ConfigError, Context, Effect, Either, Layer, Option } from "effect"
import { isIPv4, isIPv6 } from "node:net"
import { networkInterfaces } from "node:os"

/** One address as `os.networkInterfaces()` reports it (only the fields we read). Node 18.0–18.3
 * reported `family` as a number; both spellings are accepted. */
export interface InterfaceAddress {
  readonly address: string
  readonly family: "IPv4" | "IPv6" | 4 | 6 | string | number
  readonly internal: boolean
}

/** The shape of `os.networkInterfaces()`. */
export type NetworkInterfaces = Readonly<Record<string, ReadonlyArray<InterfaceAddress> | undefined>>

export interface CandidatesInput {
  /** An explicit public base URL; wins over everything when set (blank = unset). */
  readonly publicUrl?: string | undefined
  /** The host the HTTP server is bound to (`0.0.0.0`, `::`, `127.0.0.1`, `::1`, `localhost`, an address, a name). */
  readonly bindHost: string
  /** The port actually listened on (not 0). */
  readonly port: number
  readonly interfaces: NetworkInterfaces
}

/** Host without brackets, surrounding blanks or an IPv6 zone id (zone ids are not valid in URLs). */
const bare = (host: string) => {
  const h = host.trim()
  return (h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h).replace(/%.*$/, "")
}

/** `0.0.0.0`, `::` (any spelling) or empty: a listen address, never a destination. */
export const isWildcardHost = (host: string): boolean => {
  const h = bare(host)
  return h === "" || h === "0.0.0.0" || (isIPv6(h) && /^[0:]+$/.test(h))
}

/** `127.x.x.x`, `::1` (any spelling, incl. `::ffff:127.x.x.x`) or `localhost`. */
export const isLoopbackHost = (host: string): boolean => {
  const h = bare(host).toLowerCase()
  if (h === "localhost") return true
  if (isIPv4(h)) return h.startsWith("127.")
  if (!isIPv6(h)) return false
  const canonical = new URL(`http://[${h}]`).hostname // WHATWG compresses and hex-encodes mapped v4
  if (canonical === "[::1]") return true
  const mapped = /^\[::ffff:([0-9a-f]{1,4}):[0-9a-f]{1,4}\]$/.exec(canonical)
  return mapped !== null && (parseInt(mapped[1]!, 16) >> 8) === 127
}

const isLinkLocalV6 = (address: string) => /^fe[89ab][0-9a-f]:/i.test(address)

const familyOf = (a: InterfaceAddress): "IPv4" | "IPv6" | undefined =>
  a.family === "IPv4" || a.family === 4 ? "IPv4" : a.family === "IPv6" || a.family === 6 ? "IPv6" : undefined

/** `http://<host>:<port>` normalized by WHATWG URL (lower-case, IPv6 bracketed and compressed, default
 * port dropped); `None` for a wildcard or a host that cannot form a URL. */
export const hostUrl = (host: string, port: number): Option.Option<string> => {
  const raw = bare(host)
  if (isWildcardHost(raw)) return Option.none()
  const text = `http://${isIPv6(raw) ? `[${raw}]` : raw}:${port}`
  return URL.canParse(text) ? Option.some(new URL(text).origin) : Option.none()
}

/** An http(s) base URL without trailing slash(es), query or fragment; `Left(reason)` when it is not one. */
export const normalizePublicUrl = (value: string): Either.Either<string, string> => {
  const text = value.trim()
  if (!URL.canParse(text)) return Either.left(`not an absolute URL: ${JSON.stringify(text)}`)
  const url = new URL(text)
  if (url.protocol !== "http:" && url.protocol !== "https:") return Either.left(`must be http(s): ${JSON.stringify(text)}`)
  if (url.search !== "" || url.hash !== "") return Either.left(`must not have a query or fragment: ${JSON.stringify(text)}`)
  return Either.right(`${url.origin}${url.pathname}`.replace(/\/+$/, ""))
}

/**
 * The ordered, deduplicated base URLs a runtime may use to reach the host: the public URL (when set
 * and valid); the bind host unless it is a wildcard (`0.0.0.0`/`::`); every non-internal interface
 * address, IPv4 before IPv6, link-local IPv6 (`fe80::/10`) only when there is nothing else; then
 * `http://localhost:<port>`. Never empty.
 */
export const candidates = (input: CandidatesInput): ReadonlyArray<string> => {
  const out: Array<string> = []
  const push = (url: Option.Option<string>) => {
    if (Option.isSome(url) && !out.includes(url.value)) out.push(url.value)
  }
  if (input.publicUrl !== undefined && input.publicUrl.trim() !== "") push(Either.getRight(normalizePublicUrl(input.publicUrl)))
  // loopback or a specific address/name: either way the address the server really listens on
  push(hostUrl(input.bindHost, input.port))

  const v4: Array<string> = []
  const v6: Array<string> = []
  const v6LinkLocal: Array<string> = []
  for (const addresses of Object.values(input.interfaces)) {
    for (const a of addresses ?? []) {
      if (a.internal) continue
      const family = familyOf(a)
      if (family === "IPv4") v4.push(a.address)
      else if (family === "IPv6") (isLinkLocalV6(a.address) ? v6LinkLocal : v6).push(a.address)
    }
  }
  const external = v4.length + v6.length > 0 ? [...v4, ...v6] : v6LinkLocal
  for (const address of external) push(hostUrl(address, input.port))

  push(hostUrl("localhost", input.port))
  return out
}

/** The variables a run's command gets (SPEC §8: part of the explicit env, never the host's own). */
export interface RunEnv {
  readonly GANTRY_API_URL: string
  /** JSON array of base URLs, first = GANTRY_API_URL. */
  readonly GANTRY_API_CANDIDATES: string
  readonly GANTRY_RUN_ID: string
  readonly GANTRY_RUN_TOKEN: string
}

export class RuntimeUrl extends Context.Tag("gantry/RuntimeUrl")<RuntimeUrl, {
  /** The first candidate. */
  readonly apiUrl: string
  readonly candidates: ReadonlyArray<string>
  readonly runEnv: (runId: string, token: string) => RunEnv
}>() {}

export interface RuntimeUrlOptions {
  readonly bindHost: string
  /** The port actually bound (after listen, when the configured port was 0). */
  readonly port: number
  /** Overrides `GANTRY_PUBLIC_URL`. */
  readonly publicUrl?: string | undefined
}

/** `GANTRY_PUBLIC_URL`, optional; blank counts as unset; an invalid URL fails start-up. */
export const publicUrlConfig: Config.Config<Option.Option<string>> = Config.string("GANTRY_PUBLIC_URL").pipe(
  Config.withDefault(""),
  Config.mapOrFail((value) =>
    value.trim() === ""
      ? Either.right(Option.none())
      : Either.mapBoth(normalizePublicUrl(value), {
        onLeft: (reason) => ConfigError.InvalidData([], reason),
        onRight: Option.some
      }))
)

const fromCandidates = (urls: ReadonlyArray<string>) =>
  RuntimeUrl.of({
    apiUrl: urls[0]!,
    candidates: urls,
    runEnv: (runId, token) => ({
      GANTRY_API_URL: urls[0]!,
      GANTRY_API_CANDIDATES: JSON.stringify(urls),
      GANTRY_RUN_ID: runId,
      GANTRY_RUN_TOKEN: token
    })
  })

/** Computed once, from the options, `GANTRY_PUBLIC_URL` and the machine's interfaces at build time. */
export const make = (options: RuntimeUrlOptions): Effect.Effect<Context.Tag.Service<RuntimeUrl>, ConfigError.ConfigError> =>
  Effect.gen(function* () {
    const publicUrl = options.publicUrl !== undefined && options.publicUrl.trim() !== ""
      ? Option.some(yield* Either.mapLeft(normalizePublicUrl(options.publicUrl), (reason) => ConfigError.InvalidData(["publicUrl"], reason)))
      : yield* publicUrlConfig
    const interfaces = yield* Effect.sync((): NetworkInterfaces => networkInterfaces())
    const urls = candidates({
      publicUrl: Option.getOrUndefined(publicUrl),
      bindHost: options.bindHost,
      port: options.port,
      interfaces
    })
    yield* Effect.logDebug("runtime URL candidates").pipe(Effect.annotateLogs({ candidates: urls }))
    return fromCandidates(urls)
  })

export const layer = (options: RuntimeUrlOptions): Layer.Layer<RuntimeUrl, ConfigError.ConfigError> =>
  Layer.effect(RuntimeUrl, make(options))

/** Fixed candidates, for tests of code that only needs the run variables. */
export const layerStatic = (urls: readonly [string, ...Array<string>]): Layer.Layer<RuntimeUrl> =>
  Layer.succeed(RuntimeUrl, fromCandidates(urls))
