// Run output redaction across chunk boundaries: a secret the command prints in two writes (two
// chunks) is neither stored in the run log nor streamed; text around it, and a partial match that
// turns out not to be the secret, still arrive.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import * as RedactorLayer from "../../src/host/capabilities/Redactor.js"
import { Redactor } from "../../src/host/capabilities/Redactor.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { twinApp } from "./support.js"

const SECRET = "TOPSECRETVALUE42"

describe("redaction across chunks", () => {
  it.effect("unit: the end of a chunk that begins a secret is held back", () =>
    Effect.gen(function* () {
      const r = yield* Redactor
      yield* r.register(SECRET)
      expect(r.partialSuffix("abc-TOPSEC")).toBe(6)
      expect(r.partialSuffix("abc-T")).toBe(1)
      expect(r.partialSuffix("abc-")).toBe(0)
      expect(r.partialSuffix("TOPSECRETVALUE4")).toBe(15)
      expect(r.partialSuffix("x".repeat(10_000))).toBe(0)
    }).pipe(Effect.provide(RedactorLayer.layer)))

  for (const db of testDbs) {
    it.live(`[${db.kind}] a secret split over two chunks is neither stored nor streamed`, () =>
      Effect.gen(function* () {
        yield* (yield* Redactor).register(SECRET)
        const co = yield* (yield* Companies).create({ name: "redact-co" })
        yield* (yield* OperatorPolicy).grantLocal(co.id)
        const agent = yield* (yield* Agents).create(co.id, {
          name: "splitter", command: "sh",
          args: ["-c", `printf 'abc-TOPSEC'; sleep 0.4; printf 'RETVALUE42-xyz\\n'; sleep 0.4; printf 'TOPSE'; sleep 0.4; printf 'cond line\\n'`]
        })
        const runs = yield* Runs
        const run = yield* runs.start(co.id, agent.id)
        const streamed = yield* runs.output(run.id).pipe(Stream.runCollect, Effect.map(Chunk.toReadonlyArray))
        const chunks = streamed.flatMap((m) => (m._tag === "chunk" ? [m.chunk] : []))
        const end = streamed[streamed.length - 1]
        expect(end?._tag === "end" && end.run.status).toBe("succeeded")
        const sql = yield* SqlClient.SqlClient
        const stored = (yield* sql<{ chunk: string }>`SELECT chunk FROM run_logs WHERE run_id = ${run.id} ORDER BY id`.pipe(Effect.orDie)).map((r) => r.chunk)
        for (const list of [chunks, stored]) {
          // the command wrote at least four times: the split really crossed chunks
          expect(list.join("")).toBe("abc-[REDACTED]-xyz\nTOPSEcond line\n")
          for (const c of list) expect(c).not.toMatch(/TOPSEC|RETVALUE|VALUE42/)
        }
        expect((yield* runs.get(run.id)).stdout).toBe("abc-[REDACTED]-xyz\nTOPSEcond line\n")
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))
  }
})
