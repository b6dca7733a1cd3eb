// onApiRequest (Promise) and apiRequest (Effect): listed in supportedMethods and answering
// handleApiRequest with Paperclip's shapes, in the test kit (in memory, through the host's gates).
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { toPlugin } from "../../src/sdk/definePlugin.js"
import { definePlugin, Plugin, State } from "../../src/sdk/index.js"
import { createTestHarness } from "../../src/testing/index.js"

const manifest = {
  id: "api-kit", apiVersion: 1, version: "1.0.0", displayName: "API kit", description: "api", author: "tests", categories: ["connector"],
  capabilities: ["api.routes.register", "plugin.state.read", "plugin.state.write"], entrypoints: { worker: "w.js" },
  apiRoutes: [{ routeKey: "count", method: "POST", path: "/count", auth: "board", capability: "api.routes.register" }]
}
const request = (companyId: string) => ({
  routeKey: "count", method: "POST", path: "/count", params: {}, query: {}, body: { by: 2 },
  actor: { actorType: "user", actorId: "admin" }, companyId, headers: {}
})

const promisePlugin = definePlugin({
  async setup() {},
  async onApiRequest(input) {
    return { status: 201, headers: { "x-route": input.routeKey }, body: { got: input.body, companyId: input.companyId } }
  }
})
const effectPlugin = Plugin.make({
  setup: Effect.void,
  apiRequest: (input) =>
    Effect.gen(function* () {
      const state = yield* State
      const key = { scopeKind: "company" as const, scopeId: input.companyId ?? "", stateKey: "n" }
      const n = (((yield* state.get(key)) as number | null) ?? 0) + ((input.body as { by: number }).by)
      yield* state.set(key, n)
      return { status: 200, body: { n } }
    })
})

describe("plugin API handlers in the SDK", () => {
  it("supportedMethods lists handleApiRequest only when the plugin has a handler", () => {
    expect(Plugin.supportedMethods(toPlugin(promisePlugin))).toContain("handleApiRequest")
    expect(Plugin.supportedMethods(effectPlugin)).toContain("handleApiRequest")
    expect(Plugin.supportedMethods(toPlugin(definePlugin({ async setup() {} })))).not.toContain("handleApiRequest")
  })

  it("Promise onApiRequest and Effect apiRequest answer handleApiRequest; nested calls are scoped to the request's company", async () => {
    const p = await createTestHarness(promisePlugin, { manifest })
    expect(await p.call("handleApiRequest", request("acme"), { companyId: "acme" })).toEqual({ status: 201, headers: { "x-route": "count" }, body: { got: { by: 2 }, companyId: "acme" } })
    await p.close()
    const e = await createTestHarness(effectPlugin, { manifest })
    expect(await e.call("handleApiRequest", request("acme"), { companyId: "acme" })).toEqual({ status: 200, body: { n: 2 } })
    expect(await e.call("handleApiRequest", request("acme"), { companyId: "acme" })).toEqual({ status: 200, body: { n: 4 } })
    expect(await e.getState({ scopeKind: "company", scopeId: "acme", stateKey: "n" })).toBe(4)
    // a handler acting for another company than the request's is refused by the host's gate
    await expect(e.call("handleApiRequest", request("globex"), { companyId: "acme" })).rejects.toThrow(/may not act for company "globex"/)
    await e.close()
  })
})
