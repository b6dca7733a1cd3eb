// Server acceptance 3 (PostgreSQL only): two `gantry serve` replicas on one fresh database share the
// work. 20 runs created alternately on either replica each execute exactly once (one ledger line, one
// finished event, one released lease); then one replica is SIGKILLed mid-run (its workers too) and
// the other reaps what it left: the lease destroyed (terminal, inventory 0, the sandbox command
// killed) and the orphaned run marked failed.
import { afterAll, describe, expect, it } from "@effect/vitest"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import { PG_URL, testDbs } from "../db.js"
import { childPids, isAlive } from "../helpers.js"
import {
  client, descendants, killTree, liveSandboxes, ok, readSse, startServer, stopServer, TERMINAL_LEASE, waitFor, type ServerProcess
} from "./support.js"

const RUNS = 20
const TERMINAL_RUN = ["succeeded", "failed", "cancelled", "timed_out"]

if (!PG_URL) console.warn("[gantry tests] multi-replica test skipped: it needs PostgreSQL (set GANTRY_TEST_PG_URL)")

describe.skipIf(!PG_URL)("two replicas on one PostgreSQL database", () => {
  let work = ""
  const servers: Array<ServerProcess> = []
  let drop: (() => Promise<void>) | undefined
  const before = childPids()

  afterAll(async () => {
    for (const s of servers) if (s.isRunning()) await stopServer(s, "SIGKILL")
    await drop?.()
    expect(childPids().filter((p) => !before.includes(p))).toEqual([])
    if (work) rmSync(work, { recursive: true, force: true })
  }, 30_000)

  it("share the work (each run exactly once); a killed replica's lease and run are reaped by the other", async () => {
    work = mkdtempSync(join(tmpdir(), "gantry-replicas-"))
    const inventoryFile = join(work, "sandboxes", "inventory.json")
    const workspaceRoot = join(work, "sandboxes", "ws")
    const ledger = join(work, "ledger.txt")
    const db = await testDbs.find((d) => d.kind === "pg")!.create()
    drop = db.drop
    mkdirSync(join(work, "a"))
    mkdirSync(join(work, "b"))
    const env = {
      GANTRY_INSTANCE_HEARTBEAT_MS: "500",
      GANTRY_INSTANCE_STALE_MS: "2000",
      GANTRY_SWEEP_INTERVAL_MS: "500",
      // one signing key: a run token verifies on either replica
      GANTRY_RUN_TOKEN_SECRET: "replicas-test-run-token-secret-0123456789"
    }
    // started together: migrations and first-start set-up race on the shared database
    const [a, b] = await Promise.all([
      startServer({ dataDir: join(work, "a"), databaseUrl: db.url, env }),
      startServer({ dataDir: join(work, "b"), databaseUrl: db.url, env })
    ])
    servers.push(a!, b!)
    // the admin token is created (and printed) once, by whichever replica got there first
    expect([a!.adminToken, b!.adminToken].filter((t) => t !== undefined)).toHaveLength(1)
    const token = a!.adminToken ?? b!.adminToken
    expect(token).toMatch(/^gantry_admin_/)
    const A = client(a!.url, token)
    const B = client(b!.url, token)
    for (const [name, c] of [["A", A], ["B", B]] as const) {
      expect(ok(await c.get("/api/health")).database).toBe("pg")
      await waitFor(`fake-sandbox running on replica ${name}`, async () => ok(await c.get("/api/plugins/fake-sandbox")).workerStatus === "running", 30_000)
    }
    const instanceA = ok(await A.get("/api/health")).instanceId as string
    const instanceB = ok(await B.get("/api/health")).instanceId as string
    expect(instanceA).not.toBe(instanceB)

    const company = ok(await A.post("/api/companies", { name: "acme" }), 201)
    const environment = ok(await B.post(`/api/companies/${company.id}/environments`, {
      name: "sandbox", driver: "sandbox", config: { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot }
    }), 201)
    const counter = ok(await A.post(`/api/companies/${company.id}/agents`, {
      name: "counter", command: "sh", args: ["-c", `echo "$GANTRY_RUN_ID" >> "$LEDGER"; echo ran`], env: { LEDGER: ledger }, defaultEnvironmentId: environment.id
    }), 201)

    // ---- 20 runs, alternately on either replica, all at once
    const started = await Promise.all(Array.from({ length: RUNS }, async (_, i) => ok(await (i % 2 === 0 ? A : B).post(`/api/agents/${counter.id}/runs`, {}), 201)))
    const ids = started.map((r) => r.id as string)
    expect(new Set(ids).size).toBe(RUNS)
    const runs = await waitFor("every run to finish", async () => {
      const list = ok(await B.get(`/api/companies/${company.id}/runs?limit=500`)) as Array<any>
      return list.length === RUNS && list.every((r) => TERMINAL_RUN.includes(r.status)) && list
    }, 45_000)
    expect(runs.map((r) => [r.status, r.exitCode, r.error])).toEqual(ids.map(() => ["succeeded", 0, null]))
    // each command ran exactly once
    const lines = readFileSync(ledger, "utf8").split("\n").filter(Boolean)
    expect([...lines].sort()).toEqual([...ids].sort())
    // one lease each, released; both replicas did work (a run usually runs where it was created, but
    // the other replica's poll may claim it first: either way once)
    const owners = new Set<string>()
    for (const [i, id] of ids.entries()) {
      const leases = ok(await (i % 2 === 0 ? B : A).get(`/api/runs/${id}/leases`)) as Array<any>
      expect(leases.map((l) => l.status)).toEqual(["released"])
      owners.add(leases[0].ownerInstanceId)
    }
    expect(owners).toEqual(new Set([instanceA, instanceB]))
    expect(liveSandboxes(inventoryFile)).toEqual([])
    // one finished event per run
    const pgc = new pg.Client({ connectionString: db.url })
    await pgc.connect()
    try {
      const finished = (await pgc.query(`SELECT envelope FROM events WHERE event_type = 'agent.run.finished'`)).rows
        .map((r: { envelope: string }) => JSON.parse(r.envelope).entityId as string)
      expect([...finished].sort()).toEqual([...ids].sort())
    } finally {
      await pgc.end()
    }

    // ---- kill replica B mid-run: A reaps its lease and fails its run
    const sleeper = ok(await A.post(`/api/companies/${company.id}/agents`, {
      name: "sleeper", command: "sh", args: ["-c", `echo "PID=$$;"; exec sleep 30`], defaultEnvironmentId: environment.id
    }), 201)
    // created on B, it runs on B, unless A's poll claimed it between insert and claim: then again
    let run: any
    let lease: any
    for (let attempt = 1; ; attempt++) {
      run = ok(await B.post(`/api/agents/${sleeper.id}/runs`, {}), 201)
      const id = run.id as string
      lease = await waitFor("the lease to be active", async () =>
        (ok(await A.get(`/api/runs/${id}/leases`)) as Array<any>).find((l) => l.status === "active"))
      if (lease.ownerInstanceId === instanceB) break
      expect(attempt).toBeLessThan(5)
      expect(ok(await A.post(`/api/runs/${id}/cancel`)).status).toBe("cancelled")
    }
    let pid = 0
    await readSse(b!.url, `/api/runs/${run.id}/output`, token!, (_e, soFar) => {
      const m = /PID=(\d+);/.exec(soFar.filter((x) => x.event === "stdout").map((x) => x.data.chunk).join(""))
      if (m) pid = Number(m[1])
      return pid > 0
    })
    expect(liveSandboxes(inventoryFile).map((x) => x.providerLeaseId)).toEqual([lease.providerLeaseId])
    expect(descendants(b!.pid)).toContain(pid)

    // no graceful anything: the replica and its workers die at once, the sandbox command is orphaned
    const workers = childPidsOf(b!.pid)
    process.kill(b!.pid, "SIGKILL")
    killTree(workers)
    await b!.exited
    await waitFor("replica B's workers to be gone", () => workers.every((p) => !isAlive(p)), 5_000)

    const reaped = await waitFor("replica A to reap the dead replica's lease and run", async () => {
      const r = ok(await A.get(`/api/runs/${run.id}`))
      const ls = ok(await A.get(`/api/runs/${run.id}/leases`)) as Array<any>
      return r.status === "failed" && ls.every((l) => TERMINAL_LEASE.includes(l.status)) && { run: r, leases: ls }
    }, 30_000)
    expect(reaped.run.error).toMatch(/died/)
    expect(reaped.leases).toHaveLength(1)
    expect(reaped.leases[0]).toMatchObject({ id: lease.id, status: "expired", ownerInstanceId: instanceB })
    expect(reaped.leases[0].failureReason).toContain(instanceB)
    expect(liveSandboxes(inventoryFile)).toEqual([])
    await waitFor("the orphaned sandbox command to be killed", () => !isAlive(pid), 10_000)
    // the other runs were untouched
    const all = ok(await A.get(`/api/companies/${company.id}/runs?limit=500`)) as Array<any>
    expect(all.filter((r) => r.status === "succeeded")).toHaveLength(RUNS)

    const treeA = descendants(a!.pid)
    await stopServer(a!, "SIGTERM")
    expect(treeA.filter(isAlive)).toEqual([])
    expect(existsSync(ledger)).toBe(true)
  }, 90_000)
})

/** Direct children of `pid`: a replica's workers (and tsx's esbuild service), not their commands. */
const childPidsOf = (pid: number): Array<number> => {
  const all = descendants(pid)
  return all.filter((p) => {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8")
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid
    } catch {
      return false
    }
  })
}
