#!/usr/bin/env node
// `gantry` entry: runs the CLI (its bundle when fresh, else the TypeScript source through tsx; see
// entry.mjs) in a child process that shares our process group, so a terminal's Ctrl-C reaches it
// directly (`gantry run` then cancels its run and exits 130).
import { spawn } from "node:child_process"
import { root, entryFor } from "./entry.mjs"

const argv = process.argv.slice(2)
const child = spawn(process.execPath, [...entryFor(argv).args, ...argv], { stdio: "inherit" })
// SIGINT: the child got it from the terminal too; passing it on would be a second Ctrl-C.
process.on("SIGINT", () => {})
// SIGTERM/SIGHUP sent to this process alone are passed on
for (const signal of ["SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal))
child.on("error", (e) => {
  process.stderr.write(`gantry: ${e.message} (from ${root})\n`)
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
