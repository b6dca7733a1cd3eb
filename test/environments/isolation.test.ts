// No implicit secrets (SPEC §8): a command's environment is exactly the explicit variables
// (environment, agent, run), PATH and the GANTRY_* run variables — never the host's or the worker's
// own process.env. Secret refs in an agent's env reach the command and are redacted everywhere stored.
import { SqlClient } from "@effect/sql"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Environments, type CreateInput } from "../../src/environments/Environments.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { DEFAULT_PATH } from "../../src/environments/Execution.js"
import { Leases } from "../../src/environments/Leases.js"
import { SecretStore } from "../../src/host/capabilities/SecretStore.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { fakeSandboxPluginDir, readInventory } from "../../src/testing/fakeSandbox.js"
import { Agents } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs, type Run } from "../../src/work/Runs.js"
import { testDbs } from "../db.js"
import { appLayer, childPids } from "../helpers.js"

const CANARY_KEY = "GANTRY_TEST_ISOLATION_CANARY"
const CANARY = `canary-${randomBytes(12).toString("hex")}`
const AWS_KEY = "AWS_SECRET_ACCESS_KEY"
const AWS_CANARY = `aws-canary-${randomBytes(12).toString("hex")}`
const SECRET_VALUE = `sk-live-${randomBytes(16).toString("hex")}`

const saved: Record<string, string | undefined> = {}
beforeAll(() => {
  // the host process carries secrets a careless implementation would pass on
  for (const [k, v] of [[CANARY_KEY, CANARY], [AWS_KEY, AWS_CANARY]] as const) {
    saved[k] = process.env[k]
    process.env[k] = v
  }
})
afterAll(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
})

const RUN_VARS = ["GANTRY_API_URL", "GANTRY_API_CANDIDATES", "GANTRY_RUN_ID", "GANTRY_RUN_TOKEN"]
const EXPECTED_KEYS = ["ENV_VAR", "SHARED", "AGENT_VAR", "API_KEY", "RUN_VAR", "PATH", ...RUN_VARS].sort()

const parseEnv = (stdout: string) => {
  const out: Record<string, string> = {}
  for (const line of stdout.split("\n")) {
    if (line === "") continue
    const i = line.indexOf("=")
    out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}

const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean)

/** Every stored text a secret could leak into for a run. */
const storedTexts = (run: Run) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const logs = yield* sql<{ chunk: string }>`SELECT chunk FROM run_logs WHERE run_id = ${run.id}`
    const runRow = yield* sql`SELECT * FROM runs WHERE id = ${run.id}`
    const leaseRows = yield* sql`SELECT * FROM leases WHERE run_id = ${run.id}`
    const events = yield* sql<{ envelope: string }>`SELECT envelope FROM events`
    return [JSON.stringify(runRow), JSON.stringify(leaseRows), ...logs.map((l) => l.chunk), ...events.map((e) => e.envelope)].join("\n")
  })

/** Company, a secret, an agent whose env mixes plain values and a secret ref, in `env`. */
const setup = (input: CreateInput) =>
  Effect.gen(function* () {
    const co = yield* (yield* Companies).create({ name: `co-${randomBytes(3).toString("hex")}` })
    if (input.driver === "local") yield* (yield* OperatorPolicy).grantLocal(co.id)
    const secret = yield* (yield* SecretStore).create(co.id, "api-key", SECRET_VALUE)
    const env = yield* (yield* Environments).create(co.id, input)
    const agents = yield* Agents
    const agent = yield* agents.create(co.id, {
      name: "env-printer", command: "env", defaultEnvironmentId: env.id,
      env: { AGENT_VAR: "from-agent", SHARED: "from-agent", API_KEY: { type: "secret_ref", secretId: secret.id } }
    })
    return { co, secret, env, agent }
  })

/** Run `env` and check the exact key set and the values. */
const checkEnvRun = (companyId: string, agentId: string) =>
  Effect.gen(function* () {
    const runs = yield* Runs
    const run = yield* runs.start(companyId, agentId, { env: { RUN_VAR: "from-run", SHARED: "from-run" } })
    const done = yield* runs.await(run.id)
    expect(done.status).toBe("succeeded")
    const vars = parseEnv(done.stdout)
    expect(Object.keys(vars).sort()).toEqual(EXPECTED_KEYS)
    expect(vars).toMatchObject({
      ENV_VAR: "from-environment", AGENT_VAR: "from-agent", RUN_VAR: "from-run", SHARED: "from-run",
      PATH: DEFAULT_PATH, GANTRY_RUN_ID: run.id, GANTRY_API_URL: "http://127.0.0.1:3100",
      // the secret reached the command; the stored output has it masked
      API_KEY: "[REDACTED]"
    })
    expect(JSON.parse(vars.GANTRY_API_CANDIDATES!)).toEqual(["http://127.0.0.1:3100"])
    // the run token reached the command; stored output masks it like a secret
    expect(vars.GANTRY_RUN_TOKEN).toBe("[REDACTED]")
    const stored = yield* storedTexts(done)
    for (const leak of [CANARY, AWS_CANARY, SECRET_VALUE]) expect(stored).not.toContain(leak)
    expect(stored).toContain("API_KEY=[REDACTED]")
    return done
  })

/** The command saw the real secret value (checked by hash), and printing it stores only the mask. */
const checkSecretRun = (companyId: string, agentsAgentId: string) =>
  Effect.gen(function* () {
    const runs = yield* Runs
    const agents = yield* Agents
    yield* agents.update(agentsAgentId, { command: "sh", args: ["-c", `printf %s "$API_KEY" | sha256sum; echo "plain:$API_KEY"; echo "err:$API_KEY" >&2`] })
    const run = yield* runs.start(companyId, agentsAgentId)
    const done = yield* runs.await(run.id)
    expect(done.status).toBe("succeeded")
    expect(done.stdout).toContain(createHash("sha256").update(SECRET_VALUE).digest("hex"))
    expect(done.stdout).toContain("plain:[REDACTED]")
    expect(done.stderr).toContain("err:[REDACTED]")
    const stored = yield* storedTexts(done)
    expect(stored).not.toContain(SECRET_VALUE)
    expect(stored).toContain("plain:[REDACTED]")
  })

for (const db of testDbs) {
  describe(`secrets isolation [${db.kind}]`, () => {
    it.live("sandbox (real fake-sandbox worker): worker env minimal, command env exactly the explicit variables", () =>
      Effect.gen(function* () {
        expect(process.env[CANARY_KEY]).toBe(CANARY)
        const before = childPids()
        yield* Effect.gen(function* () {
          const host = yield* PluginHost.PluginHost
          yield* host.install(fakeSandboxPluginDir)
          const snap = yield* host.start("fake-sandbox")
          expect(snap.pid).not.toBeNull()
          // the worker process itself never got the host's variables
          const workerEnv = environ(snap.pid!)
          expect(workerEnv.join("\n")).not.toContain(CANARY)
          expect(workerEnv.join("\n")).not.toContain(AWS_CANARY)
          expect(workerEnv.map((l) => l.slice(0, l.indexOf("="))).sort()).toEqual(["GANTRY_PLUGIN_ID", "NODE_ENV", "PATH", "TZ"])

          const dir = mkdtempSync(join(tmpdir(), "gantry-isolation-"))
          const inventoryFile = join(dir, "inventory.json")
          const s = yield* setup({
            name: "sandbox", driver: "sandbox",
            config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(dir, "ws"), env: { ENV_VAR: "from-environment" } }
          })
          const done = yield* checkEnvRun(s.co.id, s.agent.id)
          expect(done.leaseId).not.toBeNull()
          const [lease] = yield* (yield* Leases).list({ runId: done.id })
          expect(lease!.status).toBe("released")
          yield* checkSecretRun(s.co.id, s.agent.id)
          // still the same worker, still clean
          expect((yield* host.status("fake-sandbox")).pid).toBe(snap.pid)
          expect(environ(snap.pid!).join("\n")).not.toContain(CANARY)
          expect(yield* readInventory(inventoryFile)).toEqual([])
          rmSync(dir, { recursive: true, force: true })
        }).pipe(Effect.scoped, Effect.provide(appLayer(db, { leases: { sweepIntervalMs: 100, cleanupBaseMs: 50, deferMs: 50 } })))
        expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      }))

    it.live("local environment: the same discipline", () =>
      Effect.gen(function* () {
        const s = yield* setup({ name: "here", driver: "local", config: { env: { ENV_VAR: "from-environment" } } })
        const done = yield* checkEnvRun(s.co.id, s.agent.id)
        expect(done.leaseId).toBeNull()
        yield* checkSecretRun(s.co.id, s.agent.id)
      }).pipe(Effect.scoped, Effect.provide(appLayer(db))))
  })
}
