// Plugin distribution end to end (SPEC §15): a sandbox provider written against Paperclip's published
// SDK, built into a package folder outside the repository, installed through the `gantry` CLI into a
// running `gantry serve` process, used as the provider of an environment for a run that succeeds;
// upgraded to v2 while a loop of data calls runs (zero failures); a v3 that crashes at start refused
// while v2 keeps serving; it survives a restart; uninstall refused while a lease is live, then done
// with --drain once the lease ended. No server or worker process outlives the file.
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { childPids, isAlive, root } from "../helpers.js"
import { client, ok, startServer, stopServer, waitFor, type Client, type ServerProcess } from "../server/support.js"
import { buildPackage, stopBuilds } from "./support.js"

const ID = "paperclip-provider"
const work = mkdtempSync(join(tmpdir(), "gantry-dist-"))
const dataDir = join(work, "data")
const sandboxRoot = join(work, "sandboxes")
const gate = join(work, "gate")
let server: ServerProcess | undefined
let admin: Client
let adminToken = ""
const pkgs: Record<string, string> = {}
// the provider runs its sandboxes as host processes under sandboxRoot: the operator trusts it (SPEC §16)
const serverEnv = { GANTRY_PLUGIN_TRUST: `fake-sandbox,bwrap-sandbox,${ID}` }
const before = childPids()

interface CliResult { readonly code: number | null; readonly stdout: string; readonly stderr: string }
const gantry = (args: ReadonlyArray<string>, timeoutMs = 90_000) =>
  new Promise<CliResult>((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, "bin/gantry.mjs"), ...args], {
      cwd: work, env: { ...process.env, NO_COLOR: "1", GANTRY_URL: server!.url, GANTRY_TOKEN: adminToken }, stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()))
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`gantry ${args.join(" ")} took over ${timeoutMs} ms\n${stdout}\n${stderr}`))
    }, timeoutMs)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

const s = {} as { company: string; envId: string; agentId: string; sleeperId: string; v2Pid: number }

const runToEnd = async (agentId: string) => {
  const run = ok(await admin.post(`/api/agents/${agentId}/runs`, {}), 201)
  return waitFor(`run ${run.id} to finish`, async () => {
    const r = ok(await admin.get(`/api/runs/${run.id}`))
    return ["succeeded", "failed", "cancelled", "timed_out"].includes(r.status) ? r : undefined
  }, 60_000)
}

beforeAll(async () => {
  for (const v of ["v1", "v2", "v3"]) pkgs[v] = await buildPackage(`paperclip-provider-${v}`)
  await stopBuilds()
  server = await startServer({ dataDir, env: serverEnv })
  adminToken = server.adminToken!
  admin = client(server.url, adminToken)
}, 120_000)

afterAll(async () => {
  if (server) await stopServer(server)
  rmSync(work, { recursive: true, force: true })
  for (const p of Object.values(pkgs)) rmSync(p, { recursive: true, force: true })
  expect(childPids().filter((p) => !before.includes(p) && isAlive(p))).toEqual([])
}, 60_000)

describe("a Paperclip-SDK provider installed, upgraded and uninstalled on a running server", () => {
  it("installs through the CLI from a folder: copied into the data dir, source and sha512 recorded, no lifecycle script run", async () => {
    const r = await gantry(["plugins", "install", pkgs.v1!])
    expect(r.stderr).not.toContain("error")
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`plugin ${ID} 1.0.0 installed: ready, worker running`)
    const p = ok(await admin.get(`/api/plugins/${ID}`))
    expect(p).toMatchObject({ pluginId: ID, version: "1.0.0", status: "ready", workerStatus: "running" })
    expect(p.source).toMatchObject({ kind: "folder", location: pkgs.v1, packageName: "@gantry-tests/paperclip-provider", linked: false })
    expect(p.source.sha512).toMatch(/^sha512-[A-Za-z0-9+/]{86}==$/)
    const installed = join(dataDir, "plugins", ID, "1.0.0")
    expect(readdirSync(installed).sort()).toEqual(["dist", "manifest.json", "package.json"])
    // the worker runs from the copy, and no postinstall (or any other script) ran
    expect(readlinkSync(`/proc/${p.pid}/cwd`)).toBe(installed)
    expect(existsSync(join(installed, "POSTINSTALL_RAN"))).toBe(false)
    expect(existsSync(join(pkgs.v1!, "POSTINSTALL_RAN"))).toBe(false)
    // a later change to the source changes nothing: the copy is what runs
    writeFileSync(join(pkgs.v1!, "dist", "worker.js"), "process.exit(3)\n")
  })

  it("serves as the sandbox provider of an environment for a run that succeeds", async () => {
    s.company = ok(await admin.post("/api/companies", { name: "dist-co" }), 201).id
    s.envId = ok(await admin.post(`/api/companies/${s.company}/environments`, {
      name: "paperclip", driver: "sandbox", config: { provider: `${ID}/pcbox`, root: sandboxRoot }
    }), 201).id
    s.agentId = ok(await admin.post(`/api/companies/${s.company}/agents`, {
      name: "echo", command: "sh", args: ["-c", "echo hello from $PROVIDER_VARIANT in $(basename $PWD)"], defaultEnvironmentId: s.envId
    }), 201).id
    const run = await runToEnd(s.agentId)
    expect(run.status).toBe("succeeded")
    expect(run.stdout).toMatch(/^hello from v1 in pc-[0-9a-f]{12}\n$/)
    const leases = ok(await admin.get(`/api/runs/${run.id}/leases`))
    expect(leases.map((l: any) => [l.provider, l.status])).toEqual([[`${ID}/pcbox`, "released"]])
    expect(readdirSync(sandboxRoot)).toEqual([])
  })

  it("upgrades to v2 while a loop of data calls runs: zero failed calls, v1 then only v2", async () => {
    const v1Pid = ok(await admin.get(`/api/plugins/${ID}`)).pid as number
    const seen: Array<string> = []
    const failures: Array<string> = []
    let stop = false
    const loop = (async () => {
      while (!stop) {
        const r = await admin.post(`/api/plugins/${ID}/companies/${s.company}/data/whoami`, { params: {} })
        if (r.status === 200) seen.push(r.body.variant)
        else failures.push(`${r.status} ${r.text}`)
      }
    })()
    await waitFor("a few v1 answers", () => seen.length >= 5)
    // the environment exists (not archived): without --drain the upgrade is refused, listing it
    const refused = await gantry(["plugins", "upgrade", ID, pkgs.v2!])
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain("plugin_in_use, HTTP 409")
    expect(refused.stderr).toContain("paperclip")
    const r = await gantry(["plugins", "upgrade", ID, pkgs.v2!, "--drain"])
    expect(r.stderr).not.toContain("error:")
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`plugin ${ID} 2.0.0 running`)
    const count = seen.length
    await waitFor("v2 answers after the upgrade", () => seen.length >= count + 5)
    stop = true
    await loop
    expect(failures).toEqual([])
    const firstV2 = seen.indexOf("v2")
    expect(firstV2).toBeGreaterThan(0)
    expect(seen.slice(0, firstV2).every((v) => v === "v1")).toBe(true)
    expect(seen.slice(firstV2).every((v) => v === "v2")).toBe(true)
    const p = ok(await admin.get(`/api/plugins/${ID}`))
    expect(p).toMatchObject({ version: "2.0.0", status: "ready", workerStatus: "running" })
    s.v2Pid = p.pid
    expect(isAlive(v1Pid)).toBe(false)
    // the old copy is gone, the new one is where the worker runs
    expect(readdirSync(join(dataDir, "plugins", ID))).toEqual(["2.0.0"])
    const run = await runToEnd(s.agentId)
    expect(run.stdout).toMatch(/^hello from v2 in /)
  })

  it("refuses a v3 that crashes at start, saying why; v2 keeps serving", async () => {
    const r = await gantry(["plugins", "upgrade", ID, pkgs.v3!, "--drain"])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain("plugin_start_refused, HTTP 422")
    expect(r.stderr).toContain("v3 setup failed: sandbox backend missing")
    expect(r.stderr).toContain("paperclip provider v3: cannot find its sandbox backend")
    expect(r.stderr).toContain("version 2.0.0 keeps serving")
    const p = ok(await admin.get(`/api/plugins/${ID}`))
    expect(p).toMatchObject({ version: "2.0.0", status: "ready", workerStatus: "running", pid: s.v2Pid })
    expect(ok(await admin.post(`/api/plugins/${ID}/companies/${s.company}/data/whoami`, { params: {} }))).toMatchObject({ variant: "v2" })
    expect(readdirSync(join(dataDir, "plugins", ID))).toEqual(["2.0.0"])
    expect(readdirSync(join(dataDir, "plugins"))).toEqual([ID])
  })

  it("survives a restart of the server, restored from its copy in the data dir", async () => {
    await stopServer(server!)
    server = await startServer({ dataDir, env: serverEnv })
    admin = client(server.url, adminToken)
    const p = await waitFor("the plugin to be running again", async () => {
      const r = ok(await admin.get(`/api/plugins/${ID}`))
      return r.workerStatus === "running" ? r : undefined
    })
    expect(p).toMatchObject({ version: "2.0.0", status: "ready" })
    s.v2Pid = p.pid
    expect(readlinkSync(`/proc/${p.pid}/cwd`)).toBe(join(dataDir, "plugins", ID, "2.0.0"))
    expect(ok(await admin.post(`/api/plugins/${ID}/companies/${s.company}/data/whoami`, { params: {} }))).toMatchObject({ variant: "v2" })
  }, 90_000)

  it("refuses uninstall while a lease is live (listing it); --drain waits for it, archives the environment, then uninstalls", async () => {
    s.sleeperId = ok(await admin.post(`/api/companies/${s.company}/agents`, {
      name: "sleeper", command: "sh", args: ["-c", `while [ ! -e ${gate} ]; do sleep 0.05; done; echo slept`], defaultEnvironmentId: s.envId
    }), 201).id
    const run = ok(await admin.post(`/api/agents/${s.sleeperId}/runs`, {}), 201)
    const lease = await waitFor("the sleeper's lease to be active", async () =>
      ok(await admin.get(`/api/runs/${run.id}/leases`)).find((l: any) => l.status === "active"))
    const refused = await admin.del(`/api/plugins/${ID}`)
    expect(refused.status).toBe(409)
    expect(refused.body.error.code).toBe("plugin_in_use")
    expect(refused.body.error.details.leases.map((l: any) => l.id)).toEqual([lease.id])
    expect(refused.body.error.details.environments.map((e: any) => e.id)).toEqual([s.envId])
    const cli = await gantry(["plugins", "uninstall", ID])
    expect(cli.code).toBe(1)
    expect(cli.stderr).toContain(lease.id)
    expect(ok(await admin.get(`/api/plugins/${ID}`)).workerStatus).toBe("running")

    const draining = gantry(["plugins", "uninstall", ID, "--drain"])
    // the drain archives the environment first (no new lease), then waits for the live one
    await waitFor("the environment to be archived by the drain", async () => ok(await admin.get(`/api/environments/${s.envId}`)).status === "archived")
    expect(ok(await admin.get(`/api/plugins/${ID}`)).workerStatus).toBe("running")
    expect(ok(await admin.get(`/api/runs/${run.id}`)).status).toBe("running")
    writeFileSync(gate, "")
    const r = await draining
    expect(r.stderr).not.toContain("error:")
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`plugin ${ID} uninstalled (config, state and logs kept)`)
    const done = ok(await admin.get(`/api/runs/${run.id}`))
    expect(done).toMatchObject({ status: "succeeded", stdout: "slept\n" })
    expect(ok(await admin.get(`/api/runs/${run.id}/leases`))[0].status).toBe("released")
    expect(ok(await admin.get(`/api/environments/${s.envId}`)).status).toBe("archived")
    expect((await admin.get(`/api/plugins/${ID}`)).status).toBe(404)
    expect(ok(await admin.get("/api/plugins")).map((p: any) => p.pluginId)).not.toContain(ID)
    expect(existsSync(join(dataDir, "plugins", ID))).toBe(false)
    expect(isAlive(s.v2Pid)).toBe(false)
    // logs kept (not purged)
    expect(readFileSync(join(dataDir, "gantry.db")).length).toBeGreaterThan(0)
  }, 90_000)
})
