// Property-based API test (SPEC §14, issue 13): requests generated from the API's own Schemas, valid
// and invalid, for every operation of the HttpApi, against a real `gantry serve` process. Never a 5xx,
// only statuses the OpenAPI document lists for the operation, every body matching its schema.
// Replay a failure with GANTRY_FUZZ_SEED=<printed seed>; GANTRY_FUZZ_RUNS sets requests per operation.
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { fixture as fixtureDir } from "../helpers.js"
import { operations, runFuzz, setupFixture } from "./apifuzz.js"
import { descendants, killTree, preinstallPlugin, startServer, stopServer, type ServerProcess } from "./support.js"

const seed = Number(process.env.GANTRY_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
const perOperation = Number(process.env.GANTRY_FUZZ_RUNS ?? 16)

let server: ServerProcess | undefined
let dataDir = ""
let tree: Array<number> = []

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "gantry-fuzz-"))
  await preinstallPlugin(fixtureDir("server-webhooks"), { dataDir })
  // a loaded machine can take a while to start a server with its plugins
  // an npm spec a mutated install body may carry goes to a registry that refuses at once (no network)
  server = await startServer({ dataDir, startTimeoutMs: 120_000, env: { npm_config_registry: "http://127.0.0.1:9/" } })
}, 180_000)

afterAll(async () => {
  tree = server ? descendants(server.pid) : []
  if (server) await stopServer(server)
  killTree(tree)
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
})

describe("the API under generated input", () => {
  it("never answers 5xx, only documented statuses, bodies matching their schemas", async () => {
    console.log(`apifuzz seed: ${seed} (replay: GANTRY_FUZZ_SEED=${seed}), ${perOperation} requests per operation`)
    const fixture = await setupFixture(server!.url, server!.adminToken!)
    const result = await runFuzz({ base: server!.url, fixture, seed, perOperation })
    const lines = Object.entries(result.requests).map(([op, c]) =>
      `${op.padEnd(32)} ${String(c.valid + c.invalid).padStart(4)} requests (${c.valid} valid, ${c.invalid} invalid)  ${Object.entries(c.statuses).map(([s, n]) => `${s}×${n}`).join(" ")}`)
    console.log(`apifuzz: ${result.total} requests, seed ${seed}\n${lines.join("\n")}`)
    expect(Object.keys(result.requests).sort()).toEqual(operations().map((o) => o.id).sort())
    if (result.problems.length > 0) console.log(`apifuzz problems (seed ${seed}):\n${result.problems.slice(0, 40).join("\n")}`)
    expect(result.problems.slice(0, 20)).toEqual([])
    // the server is still fine
    expect((await fetch(`${server!.url}/api/health`)).status).toBe(200)
  }, 240_000)
})
