// Orchestrator (SPEC §6 selection, §8 streaming, §10 runs) against the in-process fake-sandbox twin.
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Stream } from "effect"
import { writeFileSync } from "node:fs"
import { Environments } from "../../src/environments/Environments.js"
import { Leases } from "../../src/environments/Leases.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { fakeLeaseId } from "../../src/testing/fakeSandbox.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs, type RunOutput, type RunStatus } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { childPids, eventually } from "../helpers.js"
import { FakeSandboxControl, firstChunkMatching, twinApp } from "./support.js"

const uid = () => Math.random().toString(36).slice(2, 8)

/** A company the operator granted the local driver (the tests run some agents on the host). */
const company = Effect.gen(function* () {
  const co = yield* (yield* Companies).create({ name: `co-${uid()}` })
  yield* (yield* OperatorPolicy).grantLocal(co.id)
  return co
})
const sandboxEnv = (companyId: string, name: string) =>
  Effect.gen(function* () {
    const control = yield* FakeSandboxControl
    return yield* (yield* Environments).create(companyId, { name, driver: "sandbox", config: control.environmentConfig() })
  })

for (const db of testDbs) {
  describe(`orchestrator [${db.kind}]`, () => {
    it.live("selection precedence: explicit → agent default → company default → local", () =>
      Effect.gen(function* () {
        const envs = yield* Environments
        const agents = yield* Agents
        const runs = yield* Runs
        const leases = yield* Leases
        const companies = yield* Companies
        const co = yield* company
        const explicit = yield* sandboxEnv(co.id, "explicit")
        const agentDefault = yield* sandboxEnv(co.id, "agent-default")
        const companyDefault = yield* sandboxEnv(co.id, "company-default")
        const withDefault = yield* agents.create(co.id, { name: "with-default", command: "true", defaultEnvironmentId: agentDefault.id })
        const plain = yield* agents.create(co.id, { name: "plain", command: "true" })

        const runIn = (agentId: string, environmentId?: string) =>
          Effect.gen(function* () {
            const run = yield* runs.start(co.id, agentId, environmentId === undefined ? {} : { environmentId })
            const done = yield* runs.await(run.id)
            expect(done.status).toBe("succeeded")
            return done
          })

        // no default anywhere and no grant: no local fallback, and nothing is created
        const ungranted = yield* companies.create({ name: `co-${uid()}` })
        const bare = yield* agents.create(ungranted.id, { name: "bare", command: "true" })
        expect((yield* Effect.flip(envs.select(ungranted.id, {})))._tag).toBe("NoEnvironment")
        expect((yield* Effect.flip(runs.start(ungranted.id, bare.id)))._tag).toBe("NoEnvironment")
        expect(yield* envs.list(ungranted.id, { includeArchived: true })).toEqual([])
        expect(yield* runs.list({ companyId: ungranted.id })).toEqual([])
        // a local environment the operator made for it is refused too, until the grant
        const made = yield* envs.local(ungranted.id)
        expect((yield* Effect.flip(runs.start(ungranted.id, bare.id, { environmentId: made.id })))._tag).toBe("LocalNotGranted")
        yield* (yield* OperatorPolicy).grantLocal(ungranted.id)
        const granted = yield* runs.await((yield* runs.start(ungranted.id, bare.id, { environmentId: made.id })).id)
        expect(granted).toMatchObject({ status: "succeeded", environmentId: made.id })

        // no default anywhere: local (created on demand), no lease
        expect((yield* envs.select(co.id, {})).name).toBe("local")
        const local = yield* runIn(plain.id)
        expect(local.environmentId).toBe((yield* envs.local(co.id)).id)
        expect(local.leaseId).toBeNull()
        expect(yield* leases.list({ runId: local.id })).toEqual([])

        // company default beats local
        yield* companies.setDefaultEnvironment(co.id, companyDefault.id)
        expect((yield* envs.select(co.id, {})).id).toBe(companyDefault.id)
        expect((yield* runIn(plain.id)).environmentId).toBe(companyDefault.id)

        // agent default beats company default
        expect((yield* envs.select(co.id, { agentDefault: agentDefault.id })).id).toBe(agentDefault.id)
        expect((yield* runIn(withDefault.id)).environmentId).toBe(agentDefault.id)

        // explicit beats both
        expect((yield* envs.select(co.id, { explicit: explicit.id, agentDefault: agentDefault.id })).id).toBe(explicit.id)
        const e = yield* runIn(withDefault.id, explicit.id)
        expect(e.environmentId).toBe(explicit.id)
        const [lease] = yield* leases.list({ runId: e.id })
        expect(lease!.environmentId).toBe(explicit.id)

        // an explicit local environment beats a sandbox default
        const l = yield* runIn(withDefault.id, (yield* envs.local(co.id)).id)
        expect(l.leaseId).toBeNull()
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("output streams while the command runs (sandbox and local); late readers get the log", () =>
      Effect.gen(function* () {
        const runs = yield* Runs
        const agents = yield* Agents
        const co = yield* company
        const sandbox = yield* sandboxEnv(co.id, "sandbox")
        const local = yield* (yield* Environments).local(co.id)
        // the second line waits for a file the test creates after it saw the first: the first
        // chunk provably arrived while the command was still running
        for (const env of [sandbox, local]) {
          const gate = `/tmp/gantry-gate-${uid()}`
          const agent = yield* agents.create(co.id, {
            name: `streamer-${env.name}`, command: "sh",
            args: ["-c", `echo first; while [ ! -e ${gate} ]; do sleep 0.05; done; echo second >&2; echo third`]
          })
          const run = yield* runs.start(co.id, agent.id, { environmentId: env.id })
          const seen: Array<{ m: RunOutput; status: RunStatus }> = []
          const reader = yield* Effect.fork(runs.output(run.id).pipe(
            Stream.mapEffect((m) => Effect.map(Effect.orDie(runs.get(run.id)), (r) => {
              seen.push({ m, status: r.status })
              return m
            })),
            Stream.runCollect
          ))
          yield* eventually(Effect.filterOrFail(Effect.sync(() => seen.length), (n) => n > 0))
          expect(seen[0]!.m).toMatchObject({ _tag: "chunk", stream: "stdout", chunk: "first\n" })
          expect(seen[0]!.status).toBe("running")
          yield* Effect.sync(() => writeFileSync(gate, ""))
          const all = Chunk.toReadonlyArray(yield* Fiber.join(reader))
          const last = all.at(-1)!
          expect(last._tag).toBe("end")
          if (last._tag !== "end") return
          expect(last.run.status).toBe("succeeded")
          const chunks = all.filter((m): m is Extract<RunOutput, { _tag: "chunk" }> => m._tag === "chunk")
          expect(chunks.filter((c) => c.stream === "stdout").map((c) => c.chunk).join("")).toBe("first\nthird\n")
          expect(chunks.filter((c) => c.stream === "stderr").map((c) => c.chunk).join("")).toBe("second\n")
          expect(chunks.map((c) => c.seq)).toEqual(chunks.map((_, i) => i + 1))
          expect(last.run.stdout).toBe("first\nthird\n")
          expect(last.run.stderr).toBe("second\n")

          // after the end: the same chunks from the log, then the end; afterSeq resumes
          const replay = Chunk.toReadonlyArray(yield* Stream.runCollect(runs.output(run.id)))
          expect(replay).toEqual([...chunks, { _tag: "end", run: last.run }])
          const resumed = Chunk.toReadonlyArray(yield* Stream.runCollect(runs.output(run.id, { afterSeq: 1 })))
          expect(resumed).toEqual([...chunks.slice(1), { _tag: "end", run: last.run }])
        }
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))

    it.live("cancel: sandbox command killed, lease expired with cancelActiveWork, nothing left; local too", () =>
      Effect.gen(function* () {
        const before = childPids()
        yield* Effect.gen(function* () {
          const runs = yield* Runs
          const leases = yield* Leases
          const agents = yield* Agents
          const control = yield* FakeSandboxControl
          const co = yield* company
          const sandbox = yield* sandboxEnv(co.id, "sandbox")
          const agent = yield* agents.create(co.id, { name: "sleeper", command: "sleep", args: ["30"], defaultEnvironmentId: sandbox.id })
          const run = yield* runs.start(co.id, agent.id)
          yield* eventually(Effect.filterOrFail(control.activeProcesses, (n) => n === 1))
          expect(yield* control.inventory()).toHaveLength(1)
          const t0 = Date.now()
          const cancelled = yield* runs.cancel(run.id)
          expect(Date.now() - t0).toBeLessThan(5_000)
          expect(cancelled.status).toBe("cancelled")
          expect(cancelled.finishedAt).not.toBeNull()
          const [lease] = yield* leases.list({ runId: run.id })
          expect(lease!.status).toBe("expired")
          expect(cancelled.leaseId).toBe(lease!.id)
          const releases = (yield* control.calls).filter((c) => c.method === "environmentReleaseLease")
          expect(releases).toHaveLength(1)
          expect(releases[0]!.params).toMatchObject({ providerLeaseId: lease!.providerLeaseId, cancelActiveWork: true })
          expect(yield* control.activeProcesses).toBe(0)
          expect(yield* control.inventory()).toEqual([])
          // cancelling a finished run changes nothing
          expect(yield* runs.cancel(run.id)).toEqual(cancelled)

          // a local run is killed the same way
          const local = yield* (yield* Environments).local(co.id)
          const localAgent = yield* agents.create(co.id, { name: "local-sleeper", command: "sh", args: ["-c", "echo ready; exec sleep 30"] })
          const lr = yield* runs.start(co.id, localAgent.id, { environmentId: local.id })
          yield* firstChunkMatching(lr.id, /ready/)
          expect(childPids().filter((p) => !before.includes(p)).length).toBeGreaterThanOrEqual(1)
          const lc = yield* runs.cancel(lr.id)
          expect(lc).toMatchObject({ status: "cancelled", leaseId: null, environmentId: local.id })
        }).pipe(Effect.scoped, Effect.provide(twinApp(db)))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("lease ids are recorded on runs (success and failure), provider ids follow the write-ahead key", () =>
      Effect.gen(function* () {
        const runs = yield* Runs
        const leases = yield* Leases
        const agents = yield* Agents
        const sql = yield* SqlClient.SqlClient
        const control = yield* FakeSandboxControl
        const co = yield* company
        const sandbox = yield* sandboxEnv(co.id, "sandbox")
        const ok = yield* agents.create(co.id, { name: "ok", command: "sh", args: ["-c", "pwd"], defaultEnvironmentId: sandbox.id })
        const bad = yield* agents.create(co.id, { name: "bad", command: "sh", args: ["-c", "exit 7"], defaultEnvironmentId: sandbox.id })
        for (const [agent, status] of [[ok, "succeeded"], [bad, "failed"]] as const) {
          const run = yield* runs.start(co.id, agent.id)
          const done = yield* runs.await(run.id)
          expect(done.status).toBe(status)
          const list = yield* leases.list({ runId: run.id })
          expect(list).toHaveLength(1)
          const lease = list[0]!
          expect(done.leaseId).toBe(lease.id)
          expect(lease).toMatchObject({ runId: run.id, environmentId: sandbox.id, companyId: co.id, provider: "fake-sandbox/fake" })
          expect(lease.status).toBe(status === "succeeded" ? "released" : "failed")
          const [row] = yield* sql<{ idempotency_key: string }>`SELECT idempotency_key FROM leases WHERE id = ${lease.id}`
          expect(lease.providerLeaseId).toBe(fakeLeaseId(row!.idempotency_key))
          if (status === "succeeded") expect(done.stdout.trim()).toMatch(/^\//)
          else expect(done.exitCode).toBe(7)
        }
        expect(yield* control.inventory()).toEqual([])
      }).pipe(Effect.scoped, Effect.provide(twinApp(db))))
  })
}

