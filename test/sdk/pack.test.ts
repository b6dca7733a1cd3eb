// The published SDK (SPEC §15): `npm run pack:sdk` builds a tarball that a plugin author installs in a
// folder outside this repository; plain `node` (no tsx) imports gantry/sdk and gantry/testing from it,
// a Promise and an Effect plugin round-trip through the in-memory test kit, the .d.ts typecheck a small
// plugin with tsc (and reject a wrong one), esbuild bundles a worker from it, and effect is its only dependency.
import { build } from "esbuild"
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { rm } from "node:fs/promises"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { mustRun, npmInstall, outsideDir, packEffect, packSdk, run, tscBin } from "./support.js"

let dir = ""
let tarball = ""

beforeAll(async () => {
  dir = outsideDir("gantry-sdk-consumer-")
  tarball = await packSdk(join(dir, "pack"))
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "sdk-consumer", private: true, type: "module" }))
  await npmInstall(dir, [await packEffect(dir), tarball])
}, 600_000)

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true })
}, 300_000)

const manifest = {
  id: "consumer", apiVersion: 1, version: "1.0.0", displayName: "Consumer", description: "SDK consumer", author: "tests",
  categories: ["automation"], capabilities: ["plugin.state.read", "plugin.state.write"], entrypoints: { worker: "dist/worker.js" }
}

describe("the packed SDK, installed outside the repository", () => {
  it("is a package named gantry whose only dependency is effect; nothing native, no database driver", () => {
    expect(tarball).toMatch(/\/gantry-sdk-\d+\.\d+\.\d+\.tgz$/)
    const pkg = JSON.parse(readFileSync(join(dir, "node_modules", "gantry", "package.json"), "utf8"))
    expect(pkg.name).toBe("gantry")
    expect(Object.keys(pkg.dependencies)).toEqual(["effect"])
    expect(Object.keys(pkg.exports)).toEqual(["./sdk", "./testing", "./protocol", "./package.json"])
    const installed = readdirSync(join(dir, "node_modules")).flatMap((n) => (n.startsWith("@") ? readdirSync(join(dir, "node_modules", n)).map((m) => `${n}/${m}`) : [n]))
    for (const bad of ["better-sqlite3", "pg", "@effect/sql", "@effect/platform", "@effect/sql-sqlite-node", "tsx"]) expect(installed).not.toContain(bad)
    for (const e of ["sdk/index.d.ts", "testing/harness.d.ts", "protocol/index.d.ts"]) expect(existsSync(join(dir, "node_modules", "gantry", "types", e))).toBe(true)
  })

  it("plain node imports gantry/sdk and gantry/testing: a Promise and an Effect plugin round-trip in the test kit", async () => {
    writeFileSync(join(dir, "roundtrip.mjs"), `
import { definePlugin, Plugin, Data, State, CapabilityDenied } from "gantry/sdk"
import { createTestHarness } from "gantry/testing"
import { Effect } from "effect"
const manifest = ${JSON.stringify(manifest)}
const promise = definePlugin({
  async setup(ctx) {
    ctx.data.register("count", async (params) => {
      const key = { scopeKind: "company", scopeId: String(params.companyId), stateKey: "n" }
      const n = ((await ctx.state.get(key)) ?? 0) + 1
      await ctx.state.set(key, n)
      return { n, companyId: params.companyId }
    })
    ctx.data.register("other", async () => ctx.state.get({ scopeKind: "company", scopeId: "globex", stateKey: "n" }))
  }
})
const effect = Plugin.make({
  setup: Effect.gen(function* () {
    const state = yield* State
    yield* (yield* Data).register("echo", (params) => Effect.map(state.get({ scopeKind: "instance", stateKey: "x" }), (x) => ({ echo: params.name, x })))
  })
})
const out = {}
const h = await createTestHarness(promise, { manifest })
await h.getData("count", {}, { companyId: "acme" })
out.promise = await h.getData("count", {}, { companyId: "acme" })
out.denied = await h.getData("other", {}, { companyId: "acme" }).then(() => "allowed", (e) => /may not act for company "globex"/.test(String(e.message)))
await h.close()
const h2 = await createTestHarness(effect, { manifest })
out.effect = await h2.getData("echo", { name: "ada" })
await h2.close()
out.capabilityDenied = CapabilityDenied.code
console.log(JSON.stringify(out))
`)
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin" }
    const stdout = await mustRun(process.execPath, ["roundtrip.mjs"], { cwd: dir, env })
    expect(JSON.parse(stdout.trim().split("\n").pop()!)).toEqual({
      promise: { n: 2, companyId: "acme" },
      denied: true,
      effect: { echo: "ada", x: null },
      capabilityDenied: -32001
    })
  }, 120_000)

  it("the .d.ts typecheck a small plugin with tsc, and a wrong one is rejected", async () => {
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true, types: [], lib: ["ES2023", "DOM"] },
      files: ["plugin.ts"]
    }))
    const good = `import { Effect } from "effect"
import { definePlugin, Plugin, Data, type PluginContext } from "gantry/sdk"
import { createTestHarness, makeHarness } from "gantry/testing"
export const promise = definePlugin({
  async setup(ctx: PluginContext) {
    ctx.data.register("hi", async (params) => ({ hi: String(params.name) }))
  },
  async onApiRequest(input) {
    return { status: 200, body: { route: input.routeKey } }
  }
})
export const effect = Plugin.make({ setup: Effect.flatMap(Data, (d) => d.register("hi", () => Effect.succeed(1))) })
export const h = createTestHarness(promise, { manifest: {} })
export const scoped = makeHarness(effect, { manifest: {} })
`
    writeFileSync(join(dir, "plugin.ts"), good)
    const ok = await run(process.execPath, [tscBin, "-p", "."], { cwd: dir })
    expect(ok.stdout + ok.stderr).toBe("")
    expect(ok.code).toBe(0)
    writeFileSync(join(dir, "plugin.ts"), good.replace(`ctx.data.register("hi"`, `ctx.data.register(42`))
    // (the declarations were checked above; this run only has to find the plugin's error)
    const bad = await run(process.execPath, [tscBin, "-p", ".", "--skipLibCheck"], { cwd: dir })
    expect(bad.code).not.toBe(0)
    expect(bad.stdout).toContain("plugin.ts")
  }, 300_000)

  it("esbuild bundles a worker from it, and the bundle runs on plain node", async () => {
    writeFileSync(join(dir, "worker.mjs"), `import { definePlugin, runWorker } from "gantry/sdk"
const plugin = definePlugin({ async setup(ctx) { ctx.data.register("hi", async () => "hi") } })
export default plugin
runWorker(plugin, import.meta.url)
console.error("bundle-loaded")
`)
    await build({ absWorkingDir: dir, entryPoints: ["worker.mjs"], outfile: "dist/worker.js", bundle: true, platform: "node", format: "esm", logLevel: "silent" })
    const text = readFileSync(join(dir, "dist", "worker.js"), "utf8")
    expect(text).not.toMatch(/from "gantry\//)
    // imported (not the entry point) it does not start serving; it loads and exits
    writeFileSync(join(dir, "load.mjs"), `await import("./dist/worker.js")\n`)
    const r = await run(process.execPath, ["load.mjs"], { cwd: dir })
    expect(r.stderr).toContain("bundle-loaded")
    expect(r.code).toBe(0)
  }, 120_000)
})
