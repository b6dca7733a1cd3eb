#!/usr/bin/env node
// `gantry` entry: runs the TypeScript CLI through tsx, in a child process that shares our process
// group, so a terminal's Ctrl-C reaches it directly (`gantry run` then cancels its run and exits 130).
import { spawn } from "node:child_process"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"
const require = createRequire(import.meta.url)
const main = fileURLToPath(new URL("../src/cli/main.ts", import.meta.url))
const child = spawn(process.execPath, ["--import", require.resolve("tsx"), main, ...process.argv.slice(2)], { stdio: "inherit" })
// SIGINT: the child got it from the terminal too; passing it on would be a second Ctrl-C.
process.on("SIGINT", () => {})
// SIGTERM/SIGHUP sent to this process alone are passed on
for (const signal of ["SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal))
child.on("error", (e) => {
  process.stderr.write(`gantry: ${e.message}\n`)
  process.exit(1)
})
child.on("exit", (code, signal) => {
  if (signal) {
    // die the same way (a shell reports 128 + n)
    process.removeAllListeners(signal)
    process.kill(process.pid, signal)
  }
  process.exit(code ?? 1)
})
