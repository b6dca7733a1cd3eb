// Shared by the SDK package and scaffold tests: pack the SDK once per test file, a temp folder outside
// the repository, npm installs that reuse the machine's npm cache, commands with their output.
import { spawn } from "node:child_process"
import { mkdtempSync, realpathSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, relative } from "node:path"
import { expect } from "vitest"
import { root } from "../helpers.js"

export const tscBin = join(root, "node_modules", "typescript", "bin", "tsc")

export interface Ran {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Run a command to its end (no shell); resolves with its exit code and output. */
export const run = (command: string, args: ReadonlyArray<string>, o: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<Ran> =>
  new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = "", stderr = ""
    child.stdout.setEncoding("utf8").on("data", (d: string) => void (stdout += d))
    child.stderr.setEncoding("utf8").on("data", (d: string) => void (stderr += d))
    const timer = setTimeout(() => child.kill("SIGKILL"), o.timeoutMs ?? 300_000)
    child.on("error", reject)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

/** The command succeeded; its stdout. */
export const mustRun = async (command: string, args: ReadonlyArray<string>, o: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }) => {
  const r = await run(command, args, o)
  if (r.code !== 0) throw new Error(`${command} ${args.join(" ")} (in ${o.cwd}) exited ${r.code}:\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

/** `npm run pack:sdk`'s script, packing into `dir` (test files running at once must not share dist/): the
 * tarball's path. Asynchronous: a test worker whose event loop blocks for long loses its runner. */
export const packSdk = async (dir: string): Promise<string> => {
  const out = (await mustRun(process.execPath, [join(root, "scripts", "pack-sdk.mjs"), "--quiet", "--out", dir], { cwd: root })).trim().split("\n")
  return out[out.length - 1]!
}

/** `npm pack` of this repository's own effect (the SDK's one dependency) into `dir`: installs then
 * need no registry for it. */
export const packEffect = async (dir: string): Promise<string> => {
  const name = (await mustRun("npm", ["pack", join(root, "node_modules", "effect"), "--silent", "--pack-destination", dir], { cwd: dir })).trim()
  return join(dir, name)
}

/** A fresh temp folder that is not inside the repository (so nothing resolves from its node_modules). */
export const outsideDir = (prefix: string): string => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), prefix)))
  expect(relative(root, dir).startsWith("..")).toBe(true)
  return dir
}

/** `npm install` without lifecycle scripts; the machine's npm cache first, the registry for what it lacks. */
export const npmInstall = (cwd: string, specs: ReadonlyArray<string> = []) =>
  mustRun("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", ...specs], { cwd, timeoutMs: 600_000 })
