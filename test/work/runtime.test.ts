// Runtime API service (SPEC §9): a run token acts for its own active run only.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Schedule } from "effect"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { RunTokenInvalid, RunTokens } from "../../src/environments/RunToken.js"
import { Environments } from "../../src/environments/Environments.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import { MAX_LOG_CHUNK, Runtime, RuntimeForbidden, RuntimeInvalid, type RuntimeError } from "../../src/work/Runtime.js"
import { testDbs } from "../db.js"
import { childPids } from "../helpers.js"
import { firstChunkMatching, twinApp, waitStatus } from "./support.js"

const uid = () => Math.random().toString(36).slice(2, 8)
const tokenDir = mkdtempSync(join(tmpdir(), "gantry-runtime-test-"))

/** Run tokens are redacted from run output, so the command hands its token over through a file. */
const tokenScript = (file: string, then: string) => `printf '%s' "$GANTRY_RUN_TOKEN" > ${file}; echo "TOKEN=$GANTRY_RUN_TOKEN;"; ${then}`
const readToken = (file: string) =>
  Effect.retry(
    Effect.try(() => {
      const t = readFileSync(file, "utf8")
      if (t.split(".").length !== 3) throw new Error("token not written yet")
      return t
    }),
    Schedule.spaced("25 millis").pipe(Schedule.upTo("15 seconds"))
  )

/** A company, an agent whose command prints its run token then sleeps, and a started run. */
const startSleeper = Effect.gen(function* () {
  const company = yield* (yield* Companies).create({ name: `co-${uid()}` })
  // the sleeper runs in the implicit local environment: the operator's grant
  yield* (yield* OperatorPolicy).grantLocal(company.id)
  const file = join(tokenDir, `token-${uid()}`)
  const agent = yield* (yield* Agents).create(company.id, {
    name: `sleeper-${uid()}`, command: "sh", args: ["-c", tokenScript(file, "exec sleep 30")], timeoutMs: 60_000
  })
  const runs = yield* Runs
  const run = yield* runs.start(company.id, agent.id)
  // the token printed to the output is redacted
  yield* firstChunkMatching(run.id, /TOKEN=\[REDACTED\];/)
  const token = yield* readToken(file)
  return { company, agent, run, token }
})

const refused = <A, E extends { readonly _tag: string }>(effect: Effect.Effect<A, E>) =>
  Effect.map(Effect.either(effect), (e) => {
    if (Either.isRight(e)) throw new Error(`expected a refusal, got ${JSON.stringify(e.right)}`)
    return e.left
  })

const logCount = (runId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ n: number }>`SELECT COUNT(*) AS n FROM run_logs WHERE run_id = ${runId}`.pipe(
    Effect.map((r) => Number(r[0]!.n)), Effect.orDie))

for (const db of testDbs) {
  describe(`runtime API service [${db.kind}]`, () => {
    it.live("the run's own token: whoami, heartbeat (deadline fixed), log", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.gen(function* () {
          const runtime = yield* Runtime
          const runs = yield* Runs
          const sql = yield* SqlClient.SqlClient
          const s = yield* startSleeper
          const local = yield* (yield* Environments).local(s.company.id)

          const me = yield* runtime.whoami(s.token)
          expect(me.run).toMatchObject({ id: s.run.id, status: "running", agentId: s.agent.id, companyId: s.company.id, trigger: "manual" })
          expect(me.agent).toEqual({ id: s.agent.id, name: s.agent.name, command: "sh", args: s.agent.args })
          expect(me.environmentId).toBe(local.id)
          const claims = yield* (yield* RunTokens).verify(s.token)
          expect(claims).toMatchObject({ sub: s.run.id, cid: s.company.id, aid: s.agent.id })
          // the token lives exactly as long as the run's deadline
          expect(Math.floor(Date.parse(me.deadlineAt!) / 1000)).toBe(claims.exp)
          expect(yield* runtime.whoami(s.token, { runId: s.run.id })).toEqual(me)

          const hb1 = yield* runtime.heartbeat(s.token)
          expect(hb1.ok).toBe(true)
          expect(hb1.deadlineAt).toBe(me.deadlineAt)
          const [row1] = yield* sql<{ last_heartbeat_at: number }>`SELECT last_heartbeat_at FROM runs WHERE id = ${s.run.id}`
          expect(Number(row1!.last_heartbeat_at)).toBe(Date.parse(hb1.lastHeartbeatAt))
          yield* Effect.sleep("20 millis")
          const hb2 = yield* runtime.heartbeat(s.token)
          // liveness extends nothing: the deadline does not move
          expect(hb2.deadlineAt).toBe(me.deadlineAt)
          expect(Date.parse(hb2.lastHeartbeatAt)).toBeGreaterThan(Date.parse(hb1.lastHeartbeatAt))
          expect((yield* runtime.whoami(s.token)).deadlineAt).toBe(me.deadlineAt)

          expect(yield* runtime.log(s.token, { stream: "stderr", chunk: "progress: 50%\n" })).toEqual({ ok: true })
          const logs = yield* sql<{ stream: string; chunk: string }>`SELECT stream, chunk FROM run_logs WHERE run_id = ${s.run.id} ORDER BY id`
          expect(logs.at(-1)).toEqual({ stream: "stderr", chunk: "progress: 50%\n" })

          // bad log input: typed, nothing appended
          const n = yield* logCount(s.run.id)
          for (const bad of [null, "text", { stream: "system", chunk: "x" }, { stream: "stdout" }, { stream: "stdout", chunk: "" },
            { stream: "stdout", chunk: "x", extra: 1 }, { stream: "stdout", chunk: "x".repeat(MAX_LOG_CHUNK + 1) }]) {
            const e = yield* refused(runtime.log(s.token, bad))
            expect(e).toBeInstanceOf(RuntimeInvalid)
            expect((e as RuntimeInvalid).status).toBe(422)
          }
          expect(yield* logCount(s.run.id)).toBe(n)
          yield* runs.cancel(s.run.id)
        }).pipe(Effect.scoped, Effect.provide(twinApp(db)))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("another run's token cannot act on this run; claims are bound to the run record", () =>
      Effect.gen(function* () {
        const runtime = yield* Runtime
        const runs = yield* Runs
        const tokens = yield* RunTokens
        const sql = yield* SqlClient.SqlClient
        const a = yield* startSleeper
        const b = yield* startSleeper
        const aLogs = yield* logCount(a.run.id)

        // B's token acts on B only
        yield* runtime.log(b.token, { stream: "stdout", chunk: "from b\n" })
        expect(yield* logCount(a.run.id)).toBe(aLogs)
        expect((yield* runtime.whoami(b.token)).run.id).toBe(b.run.id)
        // a caller that names run A with B's token is refused, and nothing is written
        for (const call of <Array<Effect.Effect<unknown, RuntimeError | RuntimeInvalid>>>[runtime.whoami(b.token, { runId: a.run.id }), runtime.heartbeat(b.token, { runId: a.run.id }),
          runtime.log(b.token, { stream: "stdout", chunk: "forged\n" }, { runId: a.run.id })]) {
          const e = yield* refused(call)
          expect(e).toBeInstanceOf(RuntimeForbidden)
          expect((e as RuntimeForbidden).status).toBe(403)
        }
        expect(yield* logCount(a.run.id)).toBe(aLogs)
        const [hb] = yield* sql<{ last_heartbeat_at: number | null }>`SELECT last_heartbeat_at FROM runs WHERE id = ${a.run.id}`
        expect(hb!.last_heartbeat_at).toBeNull()

        // validly signed, but naming run A with another company or agent: refused
        const deadline = Date.now() + 60_000
        const otherCompany = yield* tokens.sign({ runId: a.run.id, companyId: b.company.id, agentId: a.agent.id, expiresAt: deadline })
        const otherAgent = yield* tokens.sign({ runId: a.run.id, companyId: a.company.id, agentId: b.agent.id, expiresAt: deadline })
        for (const t of [otherCompany, otherAgent]) {
          expect(yield* refused(runtime.whoami(t))).toBeInstanceOf(RuntimeForbidden)
          expect(yield* refused(runtime.heartbeat(t))).toBeInstanceOf(RuntimeForbidden)
          expect(yield* refused(runtime.log(t, { stream: "stdout", chunk: "forged\n" }))).toBeInstanceOf(RuntimeForbidden)
        }
        expect(yield* logCount(a.run.id)).toBe(aLogs)
        // a token for a run that does not exist
        const ghost = yield* tokens.sign({ runId: "no-such-run", companyId: a.company.id, agentId: a.agent.id, expiresAt: deadline })
        const g = yield* refused(runtime.whoami(ghost))
        expect(g).toBeInstanceOf(RunTokenInvalid)
        expect((g as RunTokenInvalid).reason).toBe("finished")
        yield* runs.cancel(a.run.id)
        yield* runs.cancel(b.run.id)
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("a token is refused once its run is terminal (cancelled or finished)", () =>
      Effect.gen(function* () {
        const runtime = yield* Runtime
        const runs = yield* Runs
        const s = yield* startSleeper
        yield* runtime.heartbeat(s.token)
        expect((yield* runs.cancel(s.run.id)).status).toBe("cancelled")
        const n = yield* logCount(s.run.id)
        for (const call of <Array<Effect.Effect<unknown, RuntimeError | RuntimeInvalid>>>[runtime.whoami(s.token), runtime.heartbeat(s.token), runtime.log(s.token, { stream: "stdout", chunk: "late\n" })]) {
          const e = yield* refused(call)
          expect(e).toBeInstanceOf(RunTokenInvalid)
          expect((e as RunTokenInvalid).reason).toBe("finished")
          expect((e as RunTokenInvalid).status).toBe(401)
        }
        expect(yield* logCount(s.run.id)).toBe(n)

        // a run that finishes on its own: its token worked while it ran, not after
        const quickFile = join(tokenDir, `token-${uid()}`)
        const agent = yield* (yield* Agents).create(s.company.id, { name: "quick", command: "sh", args: ["-c", tokenScript(quickFile, "true")] })
        const run = yield* runs.start(s.company.id, agent.id)
        const token = yield* readToken(quickFile)
        expect((yield* waitStatus(run.id, ["succeeded"])).status).toBe("succeeded")
        const e = yield* refused(runtime.whoami(token!))
        expect((e as RunTokenInvalid).reason).toBe("finished")
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("tampered, malformed, foreign-key and expired tokens are refused", () =>
      Effect.gen(function* () {
        const runtime = yield* Runtime
        const runs = yield* Runs
        const tokens = yield* RunTokens
        const a = yield* startSleeper
        const b = yield* startSleeper
        const [header, payload, signature] = a.token.split(".") as [string, string, string]
        const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"))
        const swapped = Buffer.from(JSON.stringify({ ...claims, sub: b.run.id })).toString("base64url")
        const later = Buffer.from(JSON.stringify({ ...claims, exp: claims.exp + 3600 })).toString("base64url")
        const flipped = (signature[0] === "A" ? "B" : "A") + signature.slice(1)
        const cases: Array<[string, string]> = [
          [`${header}.${swapped}.${signature}`, "bad_signature"],
          [`${header}.${later}.${signature}`, "bad_signature"],
          [`${header}.${payload}.${flipped}`, "bad_signature"],
          [`${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${payload}.`, "wrong_alg"],
          ["not-a-token", "malformed"],
          ["", "malformed"]
        ]
        const before = [yield* logCount(a.run.id), yield* logCount(b.run.id)]
        for (const [t, reason] of cases) {
          for (const call of <Array<Effect.Effect<unknown, RuntimeError | RuntimeInvalid>>>[runtime.whoami(t), runtime.heartbeat(t), runtime.log(t, { stream: "stdout", chunk: "x\n" })]) {
            const e = yield* refused(call)
            expect(e).toBeInstanceOf(RunTokenInvalid)
            expect((e as RunTokenInvalid).reason).toBe(reason)
          }
        }
        expect([yield* logCount(a.run.id), yield* logCount(b.run.id)]).toEqual(before)
        // signed with our key but already past its expiry
        const expired = yield* tokens.sign({ runId: a.run.id, companyId: a.company.id, agentId: a.agent.id, expiresAt: Date.now() - 1_000 })
        expect(((yield* refused(runtime.heartbeat(expired))) as RunTokenInvalid).reason).toBe("expired")
        // the untampered token still works
        expect((yield* runtime.whoami(a.token)).run.id).toBe(a.run.id)
        yield* runs.cancel(a.run.id)
        yield* runs.cancel(b.run.id)
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))
  })
}
