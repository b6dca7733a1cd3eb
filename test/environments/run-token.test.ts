import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Exit, Layer, Redacted, TestClock } from "effect"
import { createHmac } from "node:crypto"
import {
  layer,
  layerConfig,
  layerKey,
  layerKeyStatic,
  RunTokenInvalid,
  RunTokenKey,
  RunTokens,
  sign,
  verify
} from "../../src/environments/RunToken.js"

const SECRET = "test-secret-test-secret-test-secret!"
const tokens = layer.pipe(Layer.provide(layerKeyStatic(SECRET)))
const HOUR = 60 * 60_000
const input = (expiresAt: number) => ({ runId: "run-1", companyId: "acme", agentId: "agent-7", expiresAt })

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
const hs256 = (key: string, signingInput: string) => createHmac("sha256", key).update(signingInput).digest("base64url")
const decodePart = (segment: string) => JSON.parse(Buffer.from(segment, "base64url").toString("utf8"))

const refusal = <A>(effect: Effect.Effect<A, RunTokenInvalid>) =>
  Effect.map(Effect.either(effect), (e) => {
    if (Either.isRight(e)) throw new Error("expected RunTokenInvalid")
    expect(e.left).toBeInstanceOf(RunTokenInvalid)
    expect(e.left.status).toBe(401)
    return e.left
  })

describe("RunTokens", () => {
  it.effect("a signed token verifies to its claims", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(1_700_000_000_000)
      const svc = yield* RunTokens
      const token = yield* svc.sign(input(1_700_000_000_000 + HOUR + 999))
      const [header, payload, signature] = token.split(".")
      expect(decodePart(header!)).toEqual({ alg: "HS256", typ: "JWT" })
      expect(decodePart(payload!)).toEqual({ sub: "run-1", cid: "acme", aid: "agent-7", exp: 1_700_003_600, iat: 1_700_000_000, typ: "run" })
      // interoperable HS256: the signature is the plain HMAC-SHA256 of header.payload
      expect(signature).toBe(hs256(SECRET, `${header}.${payload}`))
      expect(yield* svc.verify(token)).toEqual({ sub: "run-1", cid: "acme", aid: "agent-7", exp: 1_700_003_600, iat: 1_700_000_000, typ: "run" })
    }).pipe(Effect.provide(tokens)))

  it.effect("a tampered payload or signature is refused", () =>
    Effect.gen(function* () {
      const svc = yield* RunTokens
      const token = yield* svc.sign(input(HOUR))
      const [header, payload, signature] = token.split(".") as [string, string, string]

      const otherRun = b64({ ...decodePart(payload), sub: "run-2" })
      expect((yield* refusal(svc.verify(`${header}.${otherRun}.${signature}`))).reason).toBe("bad_signature")
      const longer = b64({ ...decodePart(payload), exp: decodePart(payload).exp + 3600 })
      expect((yield* refusal(svc.verify(`${header}.${longer}.${signature}`))).reason).toBe("bad_signature")

      const flipped = (signature[0] === "A" ? "B" : "A") + signature.slice(1)
      expect((yield* refusal(svc.verify(`${header}.${payload}.${flipped}`))).reason).toBe("bad_signature")
      expect((yield* refusal(svc.verify(`${header}.${payload}.${signature.slice(0, -1)}`))).reason).toBe("bad_signature")
      expect((yield* refusal(svc.verify(`${header}.${payload}.`))).reason).toBe("bad_signature")
      expect((yield* refusal(svc.verify(`${header}.${payload}.${signature}x`))).reason).toBe("bad_signature")
    }).pipe(Effect.provide(tokens)))

  it.effect("alg none and every algorithm but HS256 are refused, even when correctly keyed", () =>
    Effect.gen(function* () {
      const svc = yield* RunTokens
      const payload = b64({ sub: "run-1", cid: "acme", aid: "agent-7", exp: 9_999_999_999, iat: 0, typ: "run" })
      for (const alg of ["none", "None", "NONE"]) {
        const h = b64({ alg, typ: "JWT" })
        expect((yield* refusal(svc.verify(`${h}.${payload}.`))).reason).toBe("wrong_alg")
        expect((yield* refusal(svc.verify(`${h}.${payload}.${hs256(SECRET, `${h}.${payload}`)}`))).reason).toBe("wrong_alg")
      }
      for (const header of [{ alg: "HS384", typ: "JWT" }, { alg: "RS256" }, { alg: "hs256" }, { typ: "JWT" }, { alg: "HS256", crit: ["b64"] }]) {
        const h = b64(header)
        const error = yield* refusal(svc.verify(`${h}.${payload}.${hs256(SECRET, `${h}.${payload}`)}`))
        expect(error.reason, JSON.stringify(header)).toBe(header.alg === undefined ? "malformed" : "wrong_alg")
      }
    }).pipe(Effect.provide(tokens)))

  it.effect("a token signed with another key is refused", () =>
    Effect.gen(function* () {
      const token = yield* sign(input(HOUR)).pipe(Effect.provide(layerKeyStatic("another-secret-another-secret-another")))
      expect((yield* refusal(verify(token).pipe(Effect.provide(layerKeyStatic(SECRET))))).reason).toBe("bad_signature")
      expect(yield* verify(token).pipe(Effect.provide(layerKeyStatic("another-secret-another-secret-another")))).toMatchObject({ sub: "run-1" })
    }))

  it.effect("malformed tokens are refused", () =>
    Effect.gen(function* () {
      const svc = yield* RunTokens
      const h = b64({ alg: "HS256", typ: "JWT" })
      const signed = (payload: string) => `${h}.${payload}.${hs256(SECRET, `${h}.${payload}`)}`
      const bad = [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        `${h}..sig`,
        `!!.${b64({})}.sig`,
        `${b64("not an object")}.${b64({})}.sig`,
        `${Buffer.from("{not json").toString("base64url")}.${b64({})}.sig`,
        "x".repeat(5000),
        signed(b64({ sub: "run-1", cid: "acme", aid: "agent-7", exp: 9_999_999_999, iat: 0, typ: "user" })),
        signed(b64({ sub: "", cid: "acme", aid: "agent-7", exp: 9_999_999_999, iat: 0, typ: "run" })),
        signed(b64({ sub: "run-1", cid: "acme", aid: "agent-7", exp: "never", iat: 0, typ: "run" })),
        signed(Buffer.from("not json").toString("base64url"))
      ]
      for (const token of bad) expect((yield* refusal(svc.verify(token))).reason, token.slice(0, 60)).toBe("malformed")
    }).pipe(Effect.provide(tokens)))

  it.effect("an expired token is refused (Clock)", () =>
    Effect.gen(function* () {
      const svc = yield* RunTokens
      const token = yield* svc.sign(input(HOUR))
      yield* TestClock.adjust("59 minutes")
      expect((yield* svc.verify(token)).sub).toBe("run-1")
      yield* TestClock.adjust("59 seconds")
      expect((yield* svc.verify(token)).sub).toBe("run-1")
      yield* TestClock.adjust("1 second")
      const error = yield* refusal(svc.verify(token))
      expect(error.reason).toBe("expired")
      expect(error.message).toBe("run token has expired")
    }).pipe(Effect.provide(tokens)))

  it.effect("verifyForRun refuses a valid token once its run is finished", () =>
    Effect.gen(function* () {
      const svc = yield* RunTokens
      const token = yield* svc.sign(input(HOUR))
      const asked: Array<string> = []
      const claims = yield* svc.verifyForRun(token, (runId) => Effect.sync(() => (asked.push(runId), true)))
      expect(claims.sub).toBe("run-1")
      expect(asked).toEqual(["run-1"])

      const finished = yield* refusal(svc.verifyForRun(token, () => Effect.succeed(false)))
      expect(finished.reason).toBe("finished")
      expect(finished.message).toBe("run is finished")

      // the run check is not consulted for a token that does not verify; its own errors pass through
      const tampered = `${token.slice(0, -2)}AA`
      const notAsked = yield* refusal(svc.verifyForRun(tampered, () => Effect.die("must not be called")))
      expect(notAsked.reason).toBe("bad_signature")
      const lookupFailed = yield* Effect.flip(svc.verifyForRun(token, () => Effect.fail("db down" as const)))
      expect(lookupFailed).toBe("db down")
    }).pipe(Effect.provide(tokens)))

  it.effect("RunTokenInvalid crosses HTTP as a tagged 401", () =>
    Effect.sync(() => {
      const e = new RunTokenInvalid({ reason: "finished", message: "run is finished" })
      expect(e._tag).toBe("RunTokenInvalid")
      expect(e.status).toBe(401)
    }))
})

describe("RunTokenKey", () => {
  const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

  it.effect("GANTRY_RUN_TOKEN_SECRET keys the tokens", () =>
    Effect.gen(function* () {
      const key = yield* RunTokenKey
      expect(Buffer.from(Redacted.value(key)).toString("utf8")).toBe(SECRET)
      expect(String(key)).not.toContain(SECRET)
      const token = yield* sign(input(HOUR))
      expect(yield* verify(token).pipe(Effect.provide(layerKeyStatic(SECRET)))).toMatchObject({ sub: "run-1" })
    }).pipe(Effect.provide(layerKey), withEnv({ GANTRY_RUN_TOKEN_SECRET: SECRET })))

  it.effect("unset (or blank): one random 32-byte key per process, shared by every build of the layer", () =>
    Effect.gen(function* () {
      const a = yield* RunTokenKey.pipe(Effect.provide(layerKey), withEnv({}))
      const b = yield* RunTokenKey.pipe(Effect.provide(layerKey), withEnv({ GANTRY_RUN_TOKEN_SECRET: "" }))
      expect(Redacted.value(a).length).toBe(32)
      expect(Buffer.from(Redacted.value(a)).equals(Buffer.from(Redacted.value(b)))).toBe(true)
      const token = yield* RunTokens.pipe(Effect.provide(layerConfig), withEnv({}), Effect.flatMap((svc) => svc.sign(input(HOUR))))
      const claims = yield* RunTokens.pipe(Effect.provide(layerConfig), withEnv({}), Effect.flatMap((svc) => svc.verify(token)))
      expect(claims.sub).toBe("run-1")
    }))

  it.effect("a secret shorter than 32 bytes fails the layer", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(RunTokenKey.pipe(Effect.provide(layerKey), withEnv({ GANTRY_RUN_TOKEN_SECRET: "short" })))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(JSON.stringify(exit)).not.toContain("\"short\"")
    }))
})
