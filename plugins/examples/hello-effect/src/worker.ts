// hello-effect: the same example plugin written with the Effect-native API.
import { Effect } from "effect"
import { Actions, Config, Data, Events, Http, Jobs, Logger, Plugin, runWorker, Secrets, State } from "gantry/sdk"

const plugin = Plugin.make({
  setup: Effect.gen(function* () {
    const state = yield* State
    const config = yield* Config
    const logger = yield* Logger
    const data = yield* Data
    const secrets = yield* Secrets
    const http = yield* Http
    const events = yield* Events
    yield* data.register("greeting", (params) =>
      Effect.gen(function* () {
        const companyId = String(params.companyId ?? "")
        const key = { scopeKind: "company" as const, scopeId: companyId, stateKey: "greetings" }
        const count = ((yield* state.get(key)) as number | null) ?? 0
        yield* state.set(key, count + 1)
        const cfg = yield* config.get(companyId)
        yield* logger.log("info", "greeting served", { companyId, count: count + 1 })
        return { message: `${cfg.greeting ?? "Hello"}, ${params.name ?? "world"}!`, count: count + 1, companyId }
      }))
    yield* data.register("secret-length", (params) =>
      Effect.gen(function* () {
        const cfg = yield* config.get(String(params.companyId))
        const value = yield* secrets.resolve(cfg.apiKey as never, { configPath: "apiKey" })
        return { length: value.length }
      }))
    yield* data.register("fetch", (params) =>
      Effect.map(http.fetch(String(params.url)), (res) => ({ status: res.status, body: res.body })))
    yield* (yield* Actions).register("emit", (params) =>
      Effect.as(events.emit("greeted", String(params.companyId), { name: params.name ?? null }), { ok: true }))
    yield* (yield* Jobs).register("tick", (job) =>
      Effect.gen(function* () {
        const key = { scopeKind: "instance" as const, stateKey: "ticks" }
        const n = ((yield* state.get(key)) as number | null) ?? 0
        yield* state.set(key, n + 1)
        yield* logger.log("info", "tick", { runId: job.runId, trigger: job.trigger })
      }))
    yield* events.subscribe("company.created", (event) =>
      state.set({ scopeKind: "company", scopeId: event.companyId, stateKey: "welcomed" }, event.eventId))
  }),
  health: Effect.succeed({ status: "ok" as const, message: "hello-effect is fine" }),
  validateConfig: (config) => {
    const errors = typeof config.greeting === "string" && config.greeting.length > 40 ? ["greeting: at most 40 characters"] : []
    return Effect.succeed({ ok: errors.length === 0, errors })
  },
  configChanged: (config, companyId) =>
    Effect.sync(() => console.log("config changed for", companyId, Object.keys(config)))
})

export default plugin
runWorker(plugin, import.meta.url)
