// `gantry plugins dev <dir>` against a running server: the folder is installed linked (the worker runs
// from the folder itself), a change to a source file triggers the package's build script and a
// graceful restart, the new code answers while the plugin's state carries over, and the plugin's log
// streams to the terminal. The folder sits inside the repository, as an author's plugin folder has
// its node_modules (here: @paperclipai/plugin-sdk).
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn, type ChildProcess } from "node:child_process"
import { mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { childPids, isAlive, root } from "../helpers.js"
import { client, ok, startServer, stopServer, waitFor, type Client, type ServerProcess } from "../server/support.js"

mkdirSync(join(root, ".gantry"), { recursive: true })
const dir = mkdtempSync(join(root, ".gantry", "dev-plugin-"))
const dataDir = mkdtempSync(join(tmpdir(), "gantry-dev-data-"))
let server: ServerProcess | undefined
let admin: Client
let dev: ChildProcess | undefined
const before = childPids()

const worker = (greeting: string) => `
import { definePlugin, runWorker } from "@paperclipai/plugin-sdk"
const plugin = definePlugin({
  async setup(ctx) {
    ctx.data.register("hello", async (params) => {
      const key = { scopeKind: "company", scopeId: String(params.companyId), stateKey: "count" }
      const count = ((await ctx.state.get(key)) ?? 0) + 1
      await ctx.state.set(key, count)
      return { greeting: ${JSON.stringify(greeting)}, count }
    })
    ctx.logger.info("dev plugin ready: ${greeting}")
  }
})
export default plugin
runWorker(plugin, import.meta.url)
`

beforeAll(async () => {
  mkdirSync(join(dir, "src"))
  writeFileSync(join(dir, "package.json"), JSON.stringify({
    name: "dev-plugin", version: "0.1.0", type: "module", private: true,
    paperclipPlugin: { manifest: "manifest.json" },
    scripts: { build: "node build.mjs" }
  }))
  writeFileSync(join(dir, "build.mjs"), `import { mkdirSync, copyFileSync } from "node:fs"\nmkdirSync("dist", { recursive: true })\ncopyFileSync("src/worker.mjs", "dist/worker.mjs")\n`)
  writeFileSync(join(dir, "manifest.json"), JSON.stringify({
    id: "dev-plugin", apiVersion: 1, version: "0.1.0", displayName: "Dev plugin", description: "gantry plugins dev test", author: "tests",
    categories: ["automation"], capabilities: ["plugin.state.read", "plugin.state.write"], entrypoints: { worker: "dist/worker.mjs" }
  }))
  writeFileSync(join(dir, "src", "worker.mjs"), worker("hello one"))
  server = await startServer({ dataDir })
  admin = client(server.url, server.adminToken)
}, 60_000)

afterAll(async () => {
  if (dev && dev.exitCode === null) process.kill(-dev.pid!, "SIGKILL")
  if (server) await stopServer(server)
  rmSync(dir, { recursive: true, force: true })
  rmSync(dataDir, { recursive: true, force: true })
  expect(childPids().filter((p) => !before.includes(p) && isAlive(p))).toEqual([])
}, 60_000)

describe("gantry plugins dev", () => {
  it("installs linked, rebuilds and restarts on change with state kept, streams the log, stops on Ctrl-C", async () => {
    const companyId = ok(await admin.post("/api/companies", { name: "dev-co" }), 201).id
    let out = ""
    let err = ""
    dev = spawn(process.execPath, [join(root, "bin/gantry.mjs"), "plugins", "dev", dir], {
      cwd: root, env: { ...process.env, NO_COLOR: "1", GANTRY_URL: server!.url, GANTRY_TOKEN: server!.adminToken }, stdio: ["ignore", "pipe", "pipe"],
      // its own process group: Ctrl-C in a terminal reaches the whole foreground group
      detached: true
    })
    dev.stdout!.on("data", (b: Buffer) => (out += b.toString()))
    dev.stderr!.on("data", (b: Buffer) => (err += b.toString()))
    const exited = new Promise<number | null>((resolve) => dev!.once("exit", (code) => resolve(code)))
    await waitFor("the dev loop to watch", () => err.includes("watching for changes"), 60_000)
    const p = ok(await admin.get("/api/plugins/dev-plugin"))
    expect(p.source).toMatchObject({ kind: "folder", location: dir, linked: true, sha512: null })
    // linked: the worker runs from the folder itself, nothing copied into the data dir
    expect(readlinkSync(`/proc/${p.pid}/cwd`)).toBe(dir)
    const hello = () => admin.post(`/api/plugins/dev-plugin/companies/${companyId}/data/hello`, { params: {} })
    expect(ok(await hello())).toEqual({ greeting: "hello one", count: 1 })
    expect(ok(await hello())).toEqual({ greeting: "hello one", count: 2 })
    await waitFor("the plugin's log on the terminal", () => out.includes("dev plugin ready: hello one"))

    writeFileSync(join(dir, "src", "worker.mjs"), worker("hello two"))
    await waitFor("the restarted worker to answer with the new code", async () => (ok(await hello()).greeting === "hello two" ? true : undefined), 60_000)
    // the state carried over the restart: the count goes on (the waiting above called it at least once more)
    const next = ok(await hello())
    expect(next.greeting).toBe("hello two")
    expect(next.count).toBeGreaterThanOrEqual(4)
    expect(err).toContain("changed: src/worker.mjs")
    await waitFor("the dev loop to report the restart", () => /restarted dev-plugin 0\.1\.0/.test(err))
    await waitFor("the new worker's log on the terminal", () => out.includes("dev plugin ready: hello two"))
    expect(isAlive(p.pid)).toBe(false)

    process.kill(-dev.pid!, "SIGINT")
    expect(await exited).toBe(0)
    // the plugin stays installed, linked, for the next session
    expect(ok(await admin.get("/api/plugins/dev-plugin")).workerStatus).toBe("running")
  }, 120_000)
})
