// The worker main: guards stdout so only protocol lines reach it (console.* and stray writes become
// log notifications), then serves the plugin on stdio until shutdown.
import { fileURLToPath } from "node:url"
import { realpathSync } from "node:fs"
import { format } from "node:util"
import { Effect, Exit } from "effect"
import type * as Peer from "../rpc/Peer.js"
import { toPlugin, type PaperclipPlugin } from "./definePlugin.js"
import type { Plugin } from "./Plugin.js"
import { serve } from "./worker.js"

const isMain = (moduleUrl: string): boolean => {
  const entry = process.argv[1]
  if (!entry) return false
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(moduleUrl))
  } catch {
    return false
  }
}

/** Start serving `plugin` on stdio if `moduleUrl` is the process entry point (pass `import.meta.url`). */
export const runWorker = (plugin: Plugin | PaperclipPlugin, moduleUrl: string): void => {
  if (!isMain(moduleUrl)) return
  const stdout = process.stdout
  const rawWrite = stdout.write.bind(stdout) as (s: string) => boolean
  let peer: Peer.Peer | undefined
  const backlog: Array<[string, string]> = []
  const toLog = (level: string, message: string) => {
    if (peer) peer.notify("log", { level, message })
    else if (backlog.length < 1000) backlog.push([level, message])
  }
  stdout.write = ((chunk: unknown, enc?: unknown, cb?: unknown) => {
    const text = typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString("utf8")
    toLog("info", text.replace(/\n$/, ""))
    const done = typeof enc === "function" ? enc : cb
    if (typeof done === "function") (done as () => void)()
    return true
  }) as typeof stdout.write
  for (const [m, level] of [["log", "info"], ["info", "info"], ["debug", "debug"], ["warn", "warn"], ["error", "error"], ["trace", "debug"]] as const) {
    console[m] = (...args: Array<unknown>) => toLog(level, format(...args))
  }
  const output = {
    write: (s: string) => rawWrite(s),
    on: (ev: string, f: (...a: Array<any>) => void) => stdout.on(ev, f),
    off: (ev: string, f: (...a: Array<any>) => void) => stdout.off(ev, f)
  } as unknown as NodeJS.WritableStream
  const program = Effect.scoped(
    serve(toPlugin(plugin), {
      input: process.stdin,
      output,
      onPeer: (p) => {
        peer = p
        for (const [level, message] of backlog.splice(0)) p.notify("log", { level, message })
      }
    })
  )
  Effect.runFork(program).addObserver((exit) => {
    process.exit(Exit.isSuccess(exit) ? 0 : 1)
  })
}
