// The `gantry` CLI as users run it: real child processes of bin/gantry.mjs (the CLI bundle for client
// commands, the TypeScript source for `demo`) against a server started in this process on a free port.
import { HttpServer } from "@effect/platform"
import { Context, Effect, Exit, Layer, Option, Scope } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { bootPlugins } from "../../src/cli/serve.js"
import { ApiTokens } from "../../src/server/Auth.js"
import * as Server from "../../src/server/Server.js"
import { childPids, root } from "../helpers.js"

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
  /** When each stdout chunk arrived (ms since start) and what it held. */
  readonly chunks: ReadonlyArray<{ readonly at: number; readonly text: string }>
  readonly pid: number
}

const gantry = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}, o: { readonly timeoutMs?: number; readonly stdin?: string; readonly sigintWhen?: string } = {}) =>
  new Promise<Result>((resolve, reject) => {
    const t0 = Date.now()
    // own process group: afterwards nothing may be left in it (plugin workers included)
    const child = spawn(process.execPath, [join(root, "bin/gantry.mjs"), ...args], {
      cwd: root, env: { ...process.env, NO_COLOR: "1", ...env }, stdio: ["pipe", "pipe", "pipe"], detached: true
    })
    const chunks: Array<{ at: number; text: string }> = []
    let stdout = ""
    let stderr = ""
    let sentSigint = false
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString()
      chunks.push({ at: Date.now() - t0, text: b.toString() })
      // Ctrl-C as a terminal sends it (to the whole foreground process group), once the output
      // shows the command is under way
      if (o.sigintWhen !== undefined && stdout.includes(o.sigintWhen) && !sentSigint) {
        sentSigint = true
        process.kill(-child.pid!, "SIGINT")
      }
    })
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()))
    child.stdin.end(o.stdin ?? "")
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL")
      } catch {
        // gone
      }
      reject(new Error(`gantry ${args.join(" ")} took over ${o.timeoutMs ?? 40_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`))
    }, o.timeoutMs ?? 40_000)
    child.on("error", reject)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, ms: Date.now() - t0, chunks, pid: child.pid! })
    })
  })

/** No process is left in the child's process group. */
const groupGone = (pid: number) => {
  try {
    process.kill(-pid, 0)
    return false
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ESRCH"
  }
}

const idFrom = (out: string) => /created: (\S+)/.exec(out)?.[1] ?? ""

describe("gantry CLI against a live server", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "gantry-cli-test-"))
  const scope = Effect.runSync(Scope.make())
  let env: Record<string, string> = {}
  const before = childPids()

  beforeAll(async () => {
    const ctx = await Effect.runPromise(Layer.buildWithScope(Server.layer({ bindHost: "127.0.0.1", port: 0, dataDir }), scope))
    await Effect.runPromise(Effect.provide(bootPlugins, ctx))
    const token = await Effect.runPromise(Effect.flatMap(Effect.provide(ApiTokens, ctx), (t) => t.ensureAdmin))
    const address = Context.get(ctx, HttpServer.HttpServer).address
    if (address._tag !== "TcpAddress" || Option.isNone(token)) throw new Error("no server")
    env = { GANTRY_URL: `http://127.0.0.1:${address.port}`, GANTRY_TOKEN: token.value }
  }, 60_000)

  afterAll(async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    rmSync(dataDir, { recursive: true, force: true })
  }, 30_000)

  it("bin/gantry.mjs runs the CLI bundle `npm test` built, the source for serve/demo or when src/ is newer", async () => {
    const { entryFor, bundleFresh } = (await import(join(root, "bin/entry.mjs"))) as {
      entryFor: (argv: ReadonlyArray<string>) => { kind: string; args: ReadonlyArray<string> }
      bundleFresh: () => boolean
    }
    expect(bundleFresh(), "dist/cli is older than src/: run `npm run build` (npm test does)").toBe(true)
    expect(entryFor(["companies", "list"]).kind).toBe("bundle")
    expect(entryFor(["--json", "run", "x"]).kind).toBe("bundle")
    expect(entryFor(["serve", "--port", "1"]).kind).toBe("source")
    expect(entryFor(["demo"]).kind).toBe("source")
    // the bundle runs (every command of the next test goes through it, demo through the source)
    const viaBundle = await gantry(["--version"])
    expect(viaBundle.code).toBe(0)
    expect(viaBundle.stdout.trim()).toBe("0.1.0")
  })

  it("creates a company, a sandbox environment and agents; `run` streams live and exits with the command's code; errors exit non-zero", async () => {
    // the demo runs alongside (its own instance), in its own TMPDIR so its temp dir can be checked
    const demoTmp = mkdtempSync(join(tmpdir(), "gantry-cli-demo-"))
    const demo = gantry(["demo"], { TMPDIR: demoTmp, GANTRY_URL: undefined, GANTRY_TOKEN: undefined }, { timeoutMs: 45_000 })

    const company = await gantry(["companies", "create", "--name", "acme", "--json"], env)
    expect(company.stderr).toBe("")
    expect(company.code).toBe(0)
    const companyId = (JSON.parse(company.stdout) as { id: string; name: string }).id
    expect(JSON.parse(company.stdout)).toMatchObject({ name: "acme" })

    const inventory = join(dataDir, "inventory.json")
    const [sandbox, secret] = await Promise.all([
      gantry(["env", "create", companyId, "--name", "sb", "--driver", "sandbox",
        "--config", JSON.stringify({ provider: "fake-sandbox/fake", inventoryFile: inventory, workspaceRoot: join(dataDir, "ws") })], env),
      gantry(["secrets", "create", companyId, "--name", "api-key", "--value", "-"], env, { stdin: "s3cret\n" })
    ])
    expect(sandbox.code).toBe(0)
    expect(sandbox.stdout).toMatch(/environment sb \(sandbox\) created: /)
    const envId = idFrom(sandbox.stdout)
    expect(secret.code).toBe(0)
    const secretId = idFrom(secret.stdout)

    const script = "for i in 1 2 3; do echo step $i; sleep 1; done; echo key=${#KEY}"
    const [ok, failing] = await Promise.all([
      gantry(["agents", "create", companyId, "--name", "ok", "--command", "sh", "--arg", "-c", "--arg", script,
        "--env-id", envId, "--timeout-ms", "30000", "--secret", `KEY=${secretId}`], env),
      gantry(["agents", "create", companyId, "--name", "three", "--command", "sh", "--arg", "-c", "--arg", "echo about to fail >&2; exit 3",
        "--env-id", envId, "--json"], env)
    ])
    expect(ok.code).toBe(0)
    expect(ok.stdout).toMatch(/agent ok created: /)
    expect(failing.code).toBe(0)
    const failingId = (JSON.parse(failing.stdout) as { id: string }).id

    const [run0, run3, badToken] = await Promise.all([
      gantry(["run", idFrom(ok.stdout)], env),
      gantry(["run", failingId], env),
      gantry(["companies", "list"], { ...env, GANTRY_TOKEN: "gantry_admin_wrong" })
    ])

    expect(run0.code).toBe(0)
    expect(run0.stdout).toBe("step 1\nstep 2\nstep 3\nkey=6\n")
    // streamed as it ran: "step 1" was on stdout well before "step 3"
    const at = (s: string) => run0.chunks.find((c) => c.text.includes(s))!.at
    expect(at("step 3") - at("step 1")).toBeGreaterThan(500)
    expect(run0.stderr).toMatch(/run \S+ succeeded \(exit code 0\)/)
    expect(run0.stderr).toMatch(/lease \S+ fake-sandbox\/fake \(fake-[0-9a-f]{12}\): acquiring \S+ → active \S+ \(\+\d+ms\) → released \S+/)

    expect(run3.code).toBe(3)
    expect(run3.stderr).toContain("about to fail")
    expect(run3.stderr).toMatch(/run \S+ failed \(exit code 3\)/)

    // Ctrl-C while following: the run is cancelled on the server, its lease torn down, exit 130
    const slow = await gantry(["agents", "create", companyId, "--name", "slow", "--command", "sh", "--arg", "-c",
      "--arg", "echo under way; sleep 30; echo never", "--env-id", envId, "--json"], env)
    expect(slow.code).toBe(0)
    const interrupted = await gantry(["run", (JSON.parse(slow.stdout) as { id: string }).id], env, { sigintWhen: "under way" })
    expect(interrupted.code, interrupted.stderr).toBe(130)
    expect(interrupted.stdout).not.toContain("never")
    const cancelledId = /cancelled run (\S+)/.exec(interrupted.stderr)?.[1]
    expect(cancelledId).toBeDefined()
    const after = await gantry(["runs", "get", cancelledId!, "--json"], env)
    expect(JSON.parse(after.stdout)).toMatchObject({ id: cancelledId, status: "cancelled" })

    expect(badToken.code).not.toBe(0)
    expect(badToken.stdout).toBe("")
    expect(badToken.stderr).toContain("gantry: error: invalid or unknown bearer token (unauthorized, HTTP 401)")

    // --json output of list commands parses; the environment's leases are all terminal
    const leases = await gantry(["env", "leases", envId, "--json"], env)
    const rows = JSON.parse(leases.stdout) as Array<{ status: string }>
    expect(rows.length).toBe(3)
    expect(rows.every((l) => ["released", "failed", "expired"].includes(l.status))).toBe(true)

    const d = await demo
    expect(d.code, d.stderr).toBe(0)
    console.info(`[cli] demo finished in ${d.ms} ms (alongside the commands above)`)
    expect(d.ms).toBeLessThan(30_000)
    expect(d.stdout).toContain("│ step 1 of 3")
    expect(d.stdout).toContain("│ step 3 of 3")
    expect(d.stdout).toMatch(/✓ acquire/)
    expect(d.stdout).toMatch(/acquiring .*\n.*active .*\n.*released /)
    expect(d.stdout).toContain("sandboxes still live in the fake-sandbox inventory: 0")
    expect(groupGone(d.pid)).toBe(true)
    expect(readdirSync(demoTmp).filter((f) => f.startsWith("gantry-demo-"))).toEqual([])
    rmSync(demoTmp, { recursive: true, force: true })
  }, 60_000)
})
