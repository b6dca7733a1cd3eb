// bwrap-sandbox benchmark: the extra cost of running `true` in a bubblewrap sandbox versus spawning it
// directly (both from Node, the sandbox through the provider's core), and a full acquire → execute →
// release lease cycle through the host (Leases + Executor + the real plugin worker).
// Prints `{"bench":"bwrap","execOverheadMsP50","leaseCycleMsP50",…}`.
import { Effect, ManagedRuntime } from "effect"
import { spawn } from "node:child_process"
import { chmodSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { performance } from "node:perf_hooks"
import { createBwrapSandbox } from "../plugins/bwrap-sandbox/src/core.js"
import { Environments } from "../src/environments/Environments.js"
import { Executor } from "../src/environments/Execution.js"
import { Leases } from "../src/environments/Leases.js"
import { PluginHost } from "../src/host/PluginHost.js"
import { Companies } from "../src/work/Companies.js"
import { testDbs } from "../test/db.js"
import { appLayer, root } from "../test/helpers.js"

const WARMUP = 5
const EXEC_RUNS = 60
const CYCLES = 30

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const round = (x: number) => Math.round(x * 100) / 100

const spawnTrue = () =>
  new Promise<void>((resolve, reject) => {
    const c = spawn("/usr/bin/true", [], { env: { PATH: "/usr/bin:/bin" }, stdio: ["pipe", "pipe", "pipe"] })
    c.on("error", reject)
    c.on("close", () => resolve())
  })

const timed = async (f: () => Promise<unknown>) => {
  const t = performance.now()
  await f()
  return performance.now() - t
}

export const bwrap = async (): Promise<void> => {
  const dir = mkdtempSync(join(tmpdir(), "gantry-bench-bwrap-"))
  chmodSync(dir, 0o711)
  const workspaceRoot = join(dir, "ws")
  try {
    // ---- exec overhead: the same `true`, directly and in a sandbox (interleaved) ----
    const core = createBwrapSandbox()
    const config = { workspaceRoot }
    const base = { driverKey: "bwrap", companyId: "bench", environmentId: "bench", config }
    const probe = await core.probe(base)
    if (!probe.ok) throw new Error(`bwrap sandbox not usable here: ${probe.summary}`)
    const lease = await core.acquire({ ...base, runId: "bench" })
    const inSandbox = () => core.execute({ ...base, lease: { providerLeaseId: lease.providerLeaseId! }, command: "true" })
    for (let i = 0; i < WARMUP; i++) {
      await spawnTrue()
      await inSandbox()
    }
    const direct: Array<number> = []
    const sandboxed: Array<number> = []
    for (let i = 0; i < EXEC_RUNS; i++) {
      direct.push(await timed(spawnTrue))
      sandboxed.push(await timed(inSandbox))
    }
    await core.destroy({ ...base, providerLeaseId: lease.providerLeaseId! })

    // ---- lease cycle through the host ----
    const db = testDbs.find((d) => d.kind === "sqlite")!
    const runtime = ManagedRuntime.make(appLayer(db, { host: { restartBaseMs: 50 } }))
    const cycles: Array<number> = []
    try {
      const setup = await runtime.runPromise(Effect.gen(function* () {
        const host = yield* PluginHost
        yield* host.install(join(root, "plugins", "bwrap-sandbox"))
        yield* host.start("bwrap-sandbox")
        const company = yield* (yield* Companies).create({ name: "bench" })
        const environments = yield* Environments
        const env = yield* environments.create(company.id, { name: "bwrap", driver: "sandbox", config: { provider: "bwrap-sandbox/bwrap", workspaceRoot: join(workspaceRoot, "host") } })
        return { company, env, settings: yield* environments.sandboxSettings(env) }
      }))
      let n = 0
      // one lease for the life of the scope: acquire, execute `true`, release by the scope's exit
      const cycle = Effect.scoped(Effect.gen(function* () {
        const leases = yield* Leases
        const executor = yield* Executor
        const { company, env, settings } = setup
        const l = yield* leases.acquire({ companyId: company.id, environmentId: env.id, runId: null, provider: settings.provider, config: settings.providerConfig, policy: settings.policy })
        const r = yield* executor.execute({ _tag: "sandbox", lease: l, cwd: "/workspace" }, { command: "true", env: { RUN: String(n++) }, timeoutMs: 10_000 })
        if (r.exitCode !== 0) return yield* Effect.dieMessage(`true exited with ${r.exitCode}: ${r.stderr}`)
      }))
      for (let i = 0; i < WARMUP; i++) await runtime.runPromise(cycle)
      for (let i = 0; i < CYCLES; i++) cycles.push(await timed(() => runtime.runPromise(cycle)))
    } finally {
      await runtime.dispose()
    }
    const leftover = await import("../plugins/bwrap-sandbox/src/core.js").then((c) => c.listLeases(join(workspaceRoot, "host")))
    console.log(JSON.stringify({
      bench: "bwrap",
      execOverheadMsP50: round(median(sandboxed) - median(direct)),
      leaseCycleMsP50: round(median(cycles)),
      directTrueMsP50: round(median(direct)),
      bwrapTrueMsP50: round(median(sandboxed)),
      execRuns: EXEC_RUNS,
      cycles: CYCLES,
      network: "none",
      leasesLeft: leftover.length
    }))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
