// hello-promise: the example plugin written with the Promise API (Paperclip's familiar shape).
import { definePlugin, runWorker } from "gantry/sdk"

const plugin = definePlugin({
  async setup(ctx) {
    ctx.data.register("greeting", async (params) => {
      const companyId = String(params.companyId ?? "")
      const key = { scopeKind: "company" as const, scopeId: companyId, stateKey: "greetings" }
      const count = ((await ctx.state.get(key)) as number | null) ?? 0
      await ctx.state.set(key, count + 1)
      const config = await ctx.config.get(companyId)
      ctx.logger.info("greeting served", { companyId, count: count + 1 })
      return { message: `${config.greeting ?? "Hello"}, ${params.name ?? "world"}!`, count: count + 1, companyId }
    })
    ctx.data.register("secret-length", async (params) => {
      const config = await ctx.config.get(String(params.companyId))
      const value = await ctx.secrets.resolve(config.apiKey as never, { configPath: "apiKey" })
      return { length: value.length }
    })
    ctx.data.register("fetch", async (params) => {
      const res = await ctx.http.fetch(String(params.url))
      return { status: res.status, body: await res.text() }
    })
    ctx.actions.register("emit", async (params) => {
      await ctx.events.emit("greeted", String(params.companyId), { name: params.name ?? null })
      return { ok: true }
    })
    ctx.jobs.register("tick", async (job) => {
      const key = { scopeKind: "instance" as const, stateKey: "ticks" }
      const n = ((await ctx.state.get(key)) as number | null) ?? 0
      await ctx.state.set(key, n + 1)
      ctx.logger.info("tick", { runId: job.runId, trigger: job.trigger })
    })
    ctx.events.on("company.created", async (event) => {
      await ctx.state.set({ scopeKind: "company", scopeId: event.companyId, stateKey: "welcomed" }, event.eventId)
    })
  },
  async onHealth() {
    return { status: "ok", message: "hello-promise is fine" }
  },
  async onValidateConfig(config) {
    const errors = typeof config.greeting === "string" && config.greeting.length > 40 ? ["greeting: at most 40 characters"] : []
    return { ok: errors.length === 0, errors }
  },
  async onConfigChanged(config, context) {
    console.log("config changed for", context?.companyId, Object.keys(config))
  }
})

export default plugin
runWorker(plugin, import.meta.url)
