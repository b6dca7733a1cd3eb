// Bad input (SPEC §14) for environments, agents, runs and run tokens: every case gets its typed error
// (with its HTTP status) and changes nothing — row counts and the touched records stay the same.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Stream } from "effect"
import { Environments, type Environment } from "../../src/environments/Environments.js"
import { OperatorPolicy } from "../../src/environments/Operator.js"
import { Leases } from "../../src/environments/Leases.js"
import { Providers, type ProviderInfo } from "../../src/environments/Provider.js"
import { RunTokens } from "../../src/environments/RunToken.js"
import { SecretStore } from "../../src/host/capabilities/SecretStore.js"
import { FakeSandboxControl, layerFakeProviders } from "../../src/testing/fakeSandbox.js"
import { Agents, type AgentInput } from "../../src/work/Agents.js"
import { Companies } from "../../src/work/Companies.js"
import { Runs } from "../../src/work/Runs.js"
import * as Runtime from "../../src/work/Runtime.js"
import { testDbs, type TestDb } from "../db.js"
import { appLayer, eventually } from "../helpers.js"
import { counts, fast, firstChunkMatching } from "../work/support.js"

/** A second driver of the twin whose schema has a `format: "secret-ref"` field; `hide()` makes its provider go missing. */
const SECRETIVE: ProviderInfo = {
  pluginId: "fake-sandbox",
  driverKey: "secretive",
  displayName: "Fake sandbox with a secret field",
  configSchema: {
    type: "object",
    properties: { apiKey: { type: "object", format: "secret-ref" }, region: { type: "string", enum: ["eu", "us"] } },
    required: ["apiKey"]
  },
  supportsReusableLeases: false,
  supportedMethods: []
}

const app = (db: TestDb) => {
  const fake = layerFakeProviders()
  const state = { hidden: false }
  const providers = Layer.effect(Providers, Effect.map(Providers, (base) => Providers.of({
    ...base,
    list: Effect.map(base.list, (l) => (state.hidden ? l : [...l, SECRETIVE])),
    resolve: (p) => !state.hidden && (p === "secretive" || p === "fake-sandbox/secretive") ? Effect.succeed(SECRETIVE) : base.resolve(p)
  }))).pipe(Layer.provide(fake))
  const layer = Runtime.layer.pipe(Layer.provideMerge(Layer.merge(appLayer(db, { ...fast, providers }), fake)))
  return { layer, hide: () => void (state.hidden = true) }
}

/** The effect fails with `tag` and the given HTTP status; nothing stored changed. */
const rejects = <A, E extends { readonly _tag: string }, R>(effect: Effect.Effect<A, E, R>, tag: string, status: number) =>
  Effect.gen(function* () {
    const before = yield* counts
    const r = yield* Effect.either(effect)
    if (Either.isRight(r)) throw new Error(`expected ${tag}, got success: ${JSON.stringify(r.right)}`)
    expect(r.left._tag).toBe(tag)
    expect((r.left as unknown as { status: number }).status).toBe(status)
    expect(yield* counts).toEqual(before)
    return r.left as E & { readonly message: string }
  })

const uid = () => Math.random().toString(36).slice(2, 8)

for (const db of testDbs) {
  describe(`bad input changes nothing [${db.kind}]`, () => {
    it.live("environments: unknown provider/driver, duplicate name, rejected config, raw secret, foreign secret", () => {
      const { layer } = app(db)
      return Effect.gen(function* () {
        const envs = yield* Environments
        const control = yield* FakeSandboxControl
        const co = yield* (yield* Companies).create({ name: `co-${uid()}` })
        const other = yield* (yield* Companies).create({ name: `other-${uid()}` })
        const secrets = yield* SecretStore
        const mine = yield* secrets.create(co.id, "api-key", "secret-value-mine-123")
        const theirs = yield* secrets.create(other.id, "api-key", "secret-value-theirs-456")
        const existing = yield* envs.create(co.id, { name: "sandbox", driver: "sandbox", config: control.environmentConfig() })
        const sandbox = (config: Record<string, unknown>, name = `env-${uid()}`) => envs.create(co.id, { name, driver: "sandbox", config })

        // unknown provider, unknown driver, unknown company
        const e1 = yield* rejects(sandbox({ provider: "nope/none" }), "EnvironmentInvalid", 422)
        expect(e1.message).toContain("nope/none")
        yield* rejects(sandbox({ provider: "none" }), "EnvironmentInvalid", 422)
        yield* rejects(sandbox({}), "EnvironmentInvalid", 422)
        yield* rejects(envs.create(co.id, { name: "docker", driver: "docker" as never }), "EnvironmentInvalid", 422)
        yield* rejects(envs.create("no-such-company", { name: "x", driver: "local" }), "CompanyNotFound", 404)
        // duplicate name (create and rename)
        yield* rejects(sandbox(control.environmentConfig(), "sandbox"), "EnvironmentConflict", 409)
        const second = yield* envs.create(co.id, { name: "second", driver: "local" })
        yield* rejects(envs.patch(second.id, { name: "sandbox" }), "EnvironmentConflict", 409)
        expect(yield* envs.get(second.id)).toEqual(second)
        // config the provider rejects: its schema, its validateConfig, host fields
        const e2 = yield* rejects(sandbox(control.environmentConfig({ latencyMs: -5 })), "EnvironmentInvalid", 422)
        expect(e2.message).toContain("latencyMs")
        yield* rejects(sandbox({ ...control.environmentConfig(), failOn: "acquire" }), "EnvironmentInvalid", 422)
        const e3 = yield* rejects(sandbox({ ...control.environmentConfig(), inventoryFile: "relative/inventory.json" }), "EnvironmentInvalid", 422)
        expect(e3.message).toContain("provider: inventoryFile")
        yield* rejects(sandbox({ ...control.environmentConfig(), ttlMs: -1 }), "EnvironmentInvalid", 422)
        yield* rejects(sandbox({ ...control.environmentConfig(), env: { "BAD-NAME": "x" } }), "EnvironmentInvalid", 422)
        yield* rejects(envs.create(co.id, { name: "l", driver: "local", config: { provider: "fake" } }), "EnvironmentInvalid", 422)
        yield* rejects(envs.patch(existing.id, { config: { ...control.environmentConfig(), failOn: ["explode"] } }), "EnvironmentInvalid", 422)
        expect(yield* envs.get(existing.id)).toEqual(existing)
        // secret fields: a raw value is refused; a ref must name a secret of this company
        const e4 = yield* rejects(sandbox({ provider: "secretive", apiKey: "sk-raw-value" }), "EnvironmentInvalid", 422)
        expect(e4.message).toContain("secret reference")
        expect(e4.message).not.toContain("sk-raw-value")
        yield* rejects(sandbox({ provider: "secretive", apiKey: { type: "secret_ref", secretId: theirs.id } }), "EnvironmentInvalid", 422)
        yield* rejects(sandbox({ provider: "secretive", apiKey: { type: "secret_ref", secretId: "no-such-secret" } }), "EnvironmentInvalid", 422)
        yield* rejects(sandbox({ provider: "secretive", apiKey: { type: "secret_ref", secretId: mine.id }, region: "mars" }), "EnvironmentInvalid", 422)
        const ok = yield* sandbox({ provider: "secretive", apiKey: { type: "secret_ref", secretId: mine.id } })
        expect(ok.config.apiKey).toEqual({ type: "secret_ref", secretId: mine.id })
        yield* rejects(envs.patch(ok.id, { config: { provider: "secretive", apiKey: "sk-raw-value" } }), "EnvironmentInvalid", 422)
        expect(yield* envs.get(ok.id)).toEqual(ok)
        // unknown ids
        yield* rejects(envs.get("no-such-env"), "EnvironmentNotFound", 404)
        yield* rejects(envs.patch("no-such-env", { name: "x" }), "EnvironmentNotFound", 404)
        yield* rejects(envs.archive("no-such-env"), "EnvironmentNotFound", 404)
        yield* rejects(envs.remove("no-such-env"), "EnvironmentNotFound", 404)
      }).pipe(Effect.scoped, Effect.provide(layer))
    })

    it.live("environments: selecting an archived or provider-less environment; deleting one with live leases", () => {
      const { layer, hide } = app(db)
      return Effect.gen(function* () {
        const envs = yield* Environments
        const agents = yield* Agents
        const runs = yield* Runs
        const leases = yield* Leases
        const control = yield* FakeSandboxControl
        const companies = yield* Companies
        const co = yield* companies.create({ name: `co-${uid()}` })
        const archived = yield* envs.create(co.id, { name: "old", driver: "sandbox", config: control.environmentConfig() })
        const agent = yield* agents.create(co.id, { name: "a", command: "true", defaultEnvironmentId: archived.id })
        const a2 = yield* envs.archive(archived.id)
        expect(a2.status).toBe("archived")

        // explicit, agent default and company default all refuse an archived environment
        const e1 = yield* rejects(envs.select(co.id, { explicit: archived.id }), "EnvironmentUnavailable", 422)
        expect(e1.message).toContain("archived")
        yield* rejects(envs.select(co.id, { agentDefault: archived.id }), "EnvironmentUnavailable", 422)
        yield* rejects(runs.start(co.id, agent.id), "RunInvalid", 422)
        const plain = yield* agents.create(co.id, { name: "plain", command: "true" })
        yield* rejects(runs.start(co.id, plain.id, { environmentId: archived.id }), "RunInvalid", 422)
        yield* companies.setDefaultEnvironment(co.id, archived.id)
        yield* rejects(envs.select(co.id, {}), "EnvironmentUnavailable", 422)
        yield* rejects(runs.start(co.id, plain.id), "RunInvalid", 422)
        yield* rejects(envs.probe(archived.id), "EnvironmentUnavailable", 422)
        yield* rejects(agents.create(co.id, { name: "b", command: "true", defaultEnvironmentId: archived.id }), "AgentInvalid", 422)
        yield* companies.setDefaultEnvironment(co.id, null)

        // a provider that went missing
        const secrets = yield* SecretStore
        const s = yield* secrets.create(co.id, "k", "secret-value-789")
        const orphan = yield* envs.create(co.id, { name: "orphan", driver: "sandbox", config: { provider: "secretive", apiKey: { type: "secret_ref", secretId: s.id } } })
        hide()
        const e2 = yield* rejects(envs.select(co.id, { explicit: orphan.id }), "EnvironmentUnavailable", 422)
        expect(e2.message).toContain("secretive")
        yield* rejects(runs.start(co.id, plain.id, { environmentId: orphan.id }), "RunInvalid", 422)

        // delete with a live lease: 409, the environment and its lease untouched
        const live = yield* envs.create(co.id, { name: "live", driver: "sandbox", config: control.environmentConfig() })
        const sleeper = yield* agents.create(co.id, { name: "sleeper", command: "sh", args: ["-c", "echo up; exec sleep 30"], defaultEnvironmentId: live.id })
        const run = yield* runs.start(co.id, sleeper.id)
        yield* firstChunkMatching(run.id, /up/)
        const [lease] = yield* leases.list({ runId: run.id })
        expect(lease!.status).toBe("active")
        const e3 = yield* rejects(envs.remove(live.id), "EnvironmentInUse", 409)
        expect(e3.message).toContain("1 live lease")
        expect(yield* envs.get(live.id)).toEqual(live)
        expect((yield* leases.get(lease!.id)).status).toBe("active")
        expect(yield* control.inventory()).toHaveLength(1)
        // once the lease ended, the delete goes through
        yield* runs.cancel(run.id)
        yield* eventually(Effect.filterOrFail(leases.liveCount(live.id), (n) => n === 0))
        yield* envs.remove(live.id)
        yield* rejects(envs.get(live.id), "EnvironmentNotFound", 404)
      }).pipe(Effect.scoped, Effect.provide(layer))
    })

    it.live("agents: unknown fields, bad heartbeat, bad env, foreign default environment or secret", () =>
      Effect.gen(function* () {
        const agents = yield* Agents
        const envs = yield* Environments
        const companies = yield* Companies
        const co = yield* companies.create({ name: `co-${uid()}` })
        const other = yield* companies.create({ name: `other-${uid()}` })
        const foreignEnv = yield* envs.create(other.id, { name: "theirs", driver: "local" })
        const foreignSecret = yield* (yield* SecretStore).create(other.id, "k", "their-secret-value")
        const base = { name: "agent", command: "true" }
        const bad: Array<[AgentInput, string]> = [
          [{ ...base, bogus: 1 } as AgentInput, "bogus: unknown field"],
          [{ ...base, heartbeat: { cron: "0 * * * * *" } }, "heartbeat.cron"],
          [{ ...base, heartbeat: { cron: "61 * * * *" } }, "heartbeat.cron"],
          [{ ...base, heartbeat: { everySeconds: 0 } }, "heartbeat.everySeconds"],
          [{ ...base, heartbeat: { everySeconds: 1.5 } }, "heartbeat.everySeconds"],
          [{ ...base, heartbeat: { cron: "* * * * *", everySeconds: 5 } }, "not both"],
          [{ ...base, heartbeat: "hourly" }, "heartbeat"],
          [{ ...base, env: { "1BAD": "x" } }, "env.1BAD: invalid variable name"],
          [{ ...base, env: { "A-B": "x" } }, "env.A-B: invalid variable name"],
          [{ ...base, env: { GANTRY_RUN_TOKEN: "x" } }, "GANTRY_*"],
          [{ ...base, env: { OK: 5 } }, "env.OK"],
          [{ ...base, env: { OK: { type: "secret_ref" } } }, "env.OK"],
          [{ ...base, env: { OK: { type: "secret_ref", secretId: foreignSecret.id } } }, "not found in this company"],
          [{ ...base, env: ["A=1"] }, "env"],
          [{ ...base, defaultEnvironmentId: foreignEnv.id }, "defaultEnvironmentId"],
          [{ ...base, defaultEnvironmentId: "no-such-env" }, "defaultEnvironmentId"],
          [{ ...base, timeoutMs: 0 }, "timeoutMs"],
          [{ ...base, args: "not-an-array" }, "args"],
          [{ ...base, command: "" }, "command"]
        ]
        for (const [input, fragment] of bad) {
          const e = yield* rejects(agents.create(co.id, input), "AgentInvalid", 422)
          expect(e.message).toContain(fragment)
        }
        yield* rejects(agents.create(co.id, { name: "agent" }), "AgentInvalid", 422)
        yield* rejects(agents.create("no-such-company", base), "CompanyNotFound", 404)
        // updates are refused the same way and leave the record as it was
        const agent = yield* agents.create(co.id, { ...base, env: { A: "1" }, heartbeat: { everySeconds: 60 } })
        for (const [input] of bad) {
          yield* rejects(agents.update(agent.id, input), "AgentInvalid", 422)
          expect(yield* agents.get(agent.id)).toEqual(agent)
        }
        yield* agents.create(co.id, { ...base, name: "taken" })
        yield* rejects(agents.create(co.id, { ...base, name: "taken" }), "AgentConflict", 409)
        yield* rejects(agents.update(agent.id, { name: "taken" }), "AgentConflict", 409)
        expect(yield* agents.get(agent.id)).toEqual(agent)
        yield* rejects(agents.get("no-such-agent"), "AgentNotFound", 404)
        yield* rejects(agents.update("no-such-agent", base), "AgentNotFound", 404)
      }).pipe(Effect.scoped, Effect.provide(app(db).layer)))

    it.live("runs: unknown run ids, unknown or foreign agents and environments, bad run env; tokens of another company/run", () =>
      Effect.gen(function* () {
        const runs = yield* Runs
        const agents = yield* Agents
        const envs = yield* Environments
        const companies = yield* Companies
        const runtime = yield* Runtime.Runtime
        const tokens = yield* RunTokens
        const co = yield* companies.create({ name: `co-${uid()}` })
        const other = yield* companies.create({ name: `other-${uid()}` })
        const agent = yield* agents.create(co.id, { name: "a", command: "true" })
        const theirAgent = yield* agents.create(other.id, { name: "a", command: "true" })
        const theirEnv: Environment = yield* envs.create(other.id, { name: "theirs", driver: "local" })

        for (const eff of [runs.get("no-such-run"), runs.cancel("no-such-run"), runs.await("no-such-run"),
          runs.appendLog("no-such-run", "stdout", "x")] as const) {
          yield* rejects(eff as Effect.Effect<unknown, { readonly _tag: string }>, "RunNotFound", 404)
        }
        yield* rejects(Stream.runDrain(runs.output("no-such-run")), "RunNotFound", 404)

        yield* rejects(runs.start(co.id, "no-such-agent"), "RunNotFound", 404)
        yield* rejects(runs.start(co.id, theirAgent.id), "RunNotFound", 404)
        yield* rejects(runs.start("no-such-company", agent.id), "RunNotFound", 404)
        yield* rejects(runs.start(co.id, agent.id, { environmentId: "no-such-env" }), "EnvironmentNotFound", 404)
        yield* rejects(runs.start(co.id, agent.id, { environmentId: theirEnv.id }), "EnvironmentNotFound", 404)
        // no environment anywhere and no local grant: nowhere to run; a local one without the grant
        yield* rejects(runs.start(co.id, agent.id), "NoEnvironment", 422)
        yield* rejects(runs.start(other.id, theirAgent.id, { environmentId: theirEnv.id }), "LocalNotGranted", 403)
        const operator = yield* OperatorPolicy
        yield* operator.grantLocal(co.id)
        yield* operator.grantLocal(other.id)
        for (const env of [{ "1BAD": "x" }, { "A=B": "x" }, { GANTRY_RUN_ID: "forged" }, { OK: 5 }, ["A=1"], "A=1"]) {
          yield* rejects(runs.start(co.id, agent.id, { env: env as never }), "RunInvalid", 422)
        }

        // tokens: another company's, another run's, a run that does not exist
        const sleeper = yield* agents.create(co.id, { name: "sleeper", command: "sh", args: ["-c", "echo up; exec sleep 30"] })
        const run = yield* runs.start(co.id, sleeper.id)
        yield* firstChunkMatching(run.id, /up/)
        const theirs = yield* agents.create(other.id, { name: "sleeper", command: "sh", args: ["-c", "echo up; exec sleep 30"] })
        const theirRun = yield* runs.start(other.id, theirs.id)
        yield* firstChunkMatching(theirRun.id, /up/)
        const exp = Date.now() + 60_000
        const foreignCompany = yield* tokens.sign({ runId: run.id, companyId: other.id, agentId: sleeper.id, expiresAt: exp })
        const theirToken = yield* tokens.sign({ runId: theirRun.id, companyId: other.id, agentId: theirs.id, expiresAt: exp })
        yield* rejects(runtime.log(foreignCompany, { stream: "stdout", chunk: "forged\n" }), "RuntimeForbidden", 403)
        yield* rejects(runtime.heartbeat(foreignCompany), "RuntimeForbidden", 403)
        yield* rejects(runtime.log(theirToken, { stream: "stdout", chunk: "forged\n" }, { runId: run.id }), "RuntimeForbidden", 403)
        const ghost = yield* tokens.sign({ runId: "no-such-run", companyId: co.id, agentId: sleeper.id, expiresAt: exp })
        yield* rejects(runtime.whoami(ghost), "RunTokenInvalid", 401)
        yield* runs.cancel(run.id)
        yield* runs.cancel(theirRun.id)
      }).pipe(Effect.scoped, Effect.provide(app(db).layer)))
  })
}

