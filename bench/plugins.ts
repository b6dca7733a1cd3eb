// Plugin distribution benchmark (SPEC §15): the app (SQLite) in this process, the Paperclip-SDK provider
// fixtures built into package folders. installMs: install from a folder (copy, inspect, start,
// initialize) to ready, then uninstall, repeated. upgradeSwapMs: an upgrade v1 ⇄ v2 (start beside
// the old, health check, switch, stop the old after its in-flight calls) while 8 loops of getData run
// against the plugin; every call that fails during the upgrades is counted.
import { Effect, Layer, ManagedRuntime } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { performance } from "node:perf_hooks"
import { PluginAdmin } from "../src/environments/PluginAdmin.js"
import * as PluginHost from "../src/host/PluginHost.js"
import * as App from "../src/server/App.js"
import { buildPackage, stopBuilds } from "../test/plugins/support.js"
import { assertNoChildren, childPidsNow, loadAvg1m, logToStderr, median, percentile, round } from "./capabilities.js"

const ID = "paperclip-provider"
const INSTALLS = 8
const UPGRADES = 8
const LOOPS = 8

export const plugins = async (): Promise<void> => {
  const before = childPidsNow()
  const dir = mkdtempSync(join(tmpdir(), "gantry-bench-plugins-"))
  const v1 = await buildPackage("paperclip-provider-v1")
  const v2 = await buildPackage("paperclip-provider-v2")
  await stopBuilds()
  const runtime = ManagedRuntime.make(App.layer({ dataDir: join(dir, "data"), host: { healthIntervalMs: 60_000 } }).pipe(Layer.provideMerge(logToStderr)))
  try {
    const run = <A, E>(eff: Effect.Effect<A, E, PluginAdmin | PluginHost.PluginHost>) => runtime.runPromise(eff)
    const install: Array<number> = []
    for (let i = 0; i < INSTALLS; i++) {
      const t0 = performance.now()
      await run(Effect.flatMap(PluginAdmin, (a) => a.install(v1)))
      install.push(performance.now() - t0)
      await run(Effect.flatMap(PluginAdmin, (a) => a.uninstall(ID, { purge: true })))
    }

    await run(Effect.flatMap(PluginAdmin, (a) => a.install(v1)))
    let calls = 0
    const failures: Array<string> = []
    let stop = false
    const loop = async () => {
      while (!stop) {
        const exit = await runtime.runPromiseExit(Effect.flatMap(PluginHost.PluginHost, (h) => h.call(ID, "getData", { key: "whoami", params: {} }, { companyId: "bench" })))
        if (exit._tag === "Success") calls++
        else failures.push(String(exit.cause))
      }
    }
    const loops = Array.from({ length: LOOPS }, loop)
    const swap: Array<number> = []
    for (let i = 0; i < UPGRADES; i++) {
      const t0 = performance.now()
      await run(Effect.flatMap(PluginAdmin, (a) => a.upgrade(ID, i % 2 === 0 ? v2 : v1, { allowDowngrade: true })))
      swap.push(performance.now() - t0)
    }
    stop = true
    await Promise.all(loops)
    await run(Effect.flatMap(PluginAdmin, (a) => a.uninstall(ID, { purge: true })))
    console.log(JSON.stringify({
      bench: "plugins",
      installMsP50: round(median(install), 1),
      installMsP95: round(percentile(install, 95), 1),
      upgradeSwapMsP50: round(median(swap), 1),
      upgradeSwapMsP95: round(percentile(swap, 95), 1),
      failedCallsDuringUpgrade: failures.length,
      callsDuringUpgrade: calls,
      installs: INSTALLS,
      upgrades: UPGRADES,
      callLoops: LOOPS,
      loadAvg1m: loadAvg1m()
    }))
    if (failures.length > 0) console.error(`[bench plugins] failed calls: ${failures.slice(0, 3).join(" | ")}`)
  } finally {
    await runtime.dispose()
    for (const d of [dir, v1, v2]) rmSync(d, { recursive: true, force: true })
    assertNoChildren("plugins", before)
  }
}
