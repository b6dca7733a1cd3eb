// Run tokens (SPEC §9, §12): HS256 JWTs naming a run, its company and agent, valid until the run's
// deadline; they authenticate the runtime API only. Signed and verified with node:crypto, keyed by
// RunTokenKey (GANTRY_RUN_TOKEN_SECRET, or a random per-process key).
import { HttpApiSchema } from "@effect/platform"
import { Clock, Config, ConfigError, Context, Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"

// ---------------------------------------------------------------------------------------------------
// Model and errors

export class RunTokenInvalid extends Schema.TaggedError<RunTokenInvalid>()("RunTokenInvalid", {
  reason: Schema.Literal("malformed", "bad_signature", "wrong_alg", "expired", "finished"),
  message: Schema.String
}, HttpApiSchema.annotations({ status: 401 })) {
  get status() { return 401 }
}

/** The JWT payload. `sub` = run id, `cid` = company id, `aid` = agent id; `exp`/`iat` in seconds. */
export const RunTokenClaims = Schema.Struct({
  sub: Schema.NonEmptyString,
  cid: Schema.String,
  aid: Schema.String,
  exp: Schema.Int,
  iat: Schema.Int,
  typ: Schema.Literal("run")
})
export type RunTokenClaims = typeof RunTokenClaims.Type

export interface RunTokenInput {
  readonly runId: string
  readonly companyId: string
  readonly agentId: string
  /** The run's deadline, epoch milliseconds (rounded down to the second in `exp`). */
  readonly expiresAt: number
}

// ---------------------------------------------------------------------------------------------------
// Key

/** The HMAC-SHA256 key. */
export class RunTokenKey extends Context.Tag("gantry/RunTokenKey")<RunTokenKey, Redacted.Redacted<Uint8Array>>() {}

export const MIN_SECRET_BYTES = 32

/** `GANTRY_RUN_TOKEN_SECRET` (UTF-8, at least 32 bytes); blank counts as unset. */
export const secretConfig: Config.Config<Option.Option<Redacted.Redacted<Uint8Array>>> = Config.redacted("GANTRY_RUN_TOKEN_SECRET").pipe(
  Config.withDefault(Redacted.make("")),
  Config.mapOrFail((secret) => {
    const bytes = Buffer.from(Redacted.value(secret), "utf8")
    if (bytes.length === 0) return Either.right(Option.none())
    if (bytes.length < MIN_SECRET_BYTES) {
      return Either.left(ConfigError.InvalidData([], `GANTRY_RUN_TOKEN_SECRET must be at least ${MIN_SECRET_BYTES} bytes; it has ${bytes.length}`))
    }
    return Either.right(Option.some(Redacted.make(new Uint8Array(bytes))))
  })
)

// One per process, so every build of the layer (and every RunTokens) agrees on it.
let processKey: Redacted.Redacted<Uint8Array> | undefined
const processKeyOnce = Effect.sync(() => (processKey ??= Redacted.make(new Uint8Array(randomBytes(32)))))

/**
 * The configured secret, else a random 32-byte key generated once per process. With the random key,
 * tokens die with the host process: a restarted host refuses the tokens of runs it did not start
 * (persist a key and use `layerKeyStatic` if they must survive).
 */
export const makeKey: Effect.Effect<Redacted.Redacted<Uint8Array>, ConfigError.ConfigError> = Effect.flatMap(
  secretConfig,
  Option.match({
    onSome: Effect.succeed,
    onNone: () =>
      Effect.zipLeft(processKeyOnce, Effect.logInfo("GANTRY_RUN_TOKEN_SECRET unset: run tokens use a per-process key"))
  })
)

export const layerKey: Layer.Layer<RunTokenKey, ConfigError.ConfigError> = Layer.effect(RunTokenKey, makeKey)

/** A fixed key (tests; a key the server persisted). A string is taken as UTF-8. */
export const layerKeyStatic = (key: string | Uint8Array): Layer.Layer<RunTokenKey> =>
  Layer.succeed(RunTokenKey, Redacted.make(typeof key === "string" ? new Uint8Array(Buffer.from(key, "utf8")) : key))

// ---------------------------------------------------------------------------------------------------
// Sign and verify

const MAX_TOKEN_LENGTH = 4096
const SEGMENT = /^[A-Za-z0-9_-]+$/
const encodeSegment = (value: unknown) => Buffer.from(JSON.stringify(value), "utf8").toString("base64url")
const HEADER = encodeSegment({ alg: "HS256", typ: "JWT" })
const mac = (key: Redacted.Redacted<Uint8Array>, signingInput: string) =>
  createHmac("sha256", Redacted.value(key)).update(signingInput, "utf8").digest("base64url")

const Header = Schema.Struct({ alg: Schema.String, crit: Schema.optional(Schema.Unknown) })
const decodeHeader = Schema.decodeUnknownEither(Schema.parseJson(Header))
const decodeClaims = Schema.decodeUnknownEither(Schema.parseJson(RunTokenClaims))
const segmentText = (segment: string) => Buffer.from(segment, "base64url").toString("utf8")

const invalid = (reason: RunTokenInvalid["reason"], message: string) => Effect.fail(new RunTokenInvalid({ reason, message }))

export const sign = Effect.fn("RunToken.sign")(function* (input: RunTokenInput) {
  const key = yield* RunTokenKey
  const now = yield* Clock.currentTimeMillis
  const claims: RunTokenClaims = {
    sub: input.runId,
    cid: input.companyId,
    aid: input.agentId,
    exp: Math.floor(input.expiresAt / 1000),
    iat: Math.floor(now / 1000),
    typ: "run"
  }
  const signingInput = `${HEADER}.${encodeSegment(claims)}`
  return `${signingInput}.${mac(key, signingInput)}`
})

/** The claims of a well-formed HS256 token signed with our key and not yet expired (by Clock). */
export const verify = Effect.fn("RunToken.verify")(function* (token: string) {
  const key = yield* RunTokenKey
  const parts = token.split(".")
  if (token.length > MAX_TOKEN_LENGTH || parts.length !== 3) return yield* invalid("malformed", "run token is malformed")
  const [header, payload, signature] = parts as [string, string, string]
  if (!SEGMENT.test(header) || !SEGMENT.test(payload)) return yield* invalid("malformed", "run token is malformed")
  const alg = Either.map(decodeHeader(segmentText(header)), (h) => ({ alg: h.alg, crit: h.crit !== undefined }))
  if (Either.isLeft(alg)) return yield* invalid("malformed", "run token header is malformed")
  // only HS256: `none` and every other algorithm are refused before anything else is looked at
  if (alg.right.alg !== "HS256" || alg.right.crit) return yield* invalid("wrong_alg", "run token algorithm must be HS256")
  const expected = Buffer.from(mac(key, `${header}.${payload}`), "utf8")
  const given = Buffer.from(signature, "utf8")
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return yield* invalid("bad_signature", "run token signature is invalid")
  }
  const claims = decodeClaims(segmentText(payload))
  if (Either.isLeft(claims)) return yield* invalid("malformed", "run token claims are malformed")
  const now = yield* Clock.currentTimeMillis
  if (now >= claims.right.exp * 1000) return yield* invalid("expired", "run token has expired")
  return claims.right
})

/**
 * `verify`, then refuse the token once its run is no longer active: `isActive(runId)` is the caller's
 * check of the run's status (false for terminal and unknown runs).
 */
export const verifyForRun = <E, R>(
  token: string,
  isActive: (runId: string) => Effect.Effect<boolean, E, R>
): Effect.Effect<RunTokenClaims, RunTokenInvalid | E, RunTokenKey | R> =>
  Effect.gen(function* () {
    const claims = yield* verify(token)
    if (!(yield* isActive(claims.sub))) return yield* invalid("finished", "run is finished")
    return claims
  }).pipe(Effect.withSpan("RunToken.verifyForRun"))

// ---------------------------------------------------------------------------------------------------
// Service

export class RunTokens extends Context.Tag("gantry/RunTokens")<RunTokens, {
  readonly sign: (input: RunTokenInput) => Effect.Effect<string>
  readonly verify: (token: string) => Effect.Effect<RunTokenClaims, RunTokenInvalid>
  readonly verifyForRun: <E, R>(
    token: string,
    isActive: (runId: string) => Effect.Effect<boolean, E, R>
  ) => Effect.Effect<RunTokenClaims, RunTokenInvalid | E, R>
}>() {}

export const make: Effect.Effect<Context.Tag.Service<RunTokens>, never, RunTokenKey> = Effect.map(RunTokenKey, (key) => {
  const withKey = Effect.provideService(RunTokenKey, key)
  return RunTokens.of({
    sign: (input) => withKey(sign(input)),
    verify: (token) => withKey(verify(token)),
    verifyForRun: (token, isActive) => withKey(verifyForRun(token, isActive))
  })
})

/** Needs a RunTokenKey (`layerKey` or `layerKeyStatic`). */
export const layer: Layer.Layer<RunTokens, never, RunTokenKey> = Layer.effect(RunTokens, make)

/** `layer` with `layerKey`. */
export const layerConfig: Layer.Layer<RunTokens, ConfigError.ConfigError> = Layer.provide(layer, layerKey)
