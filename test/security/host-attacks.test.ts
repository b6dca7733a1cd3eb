// Host security (SPEC §16), as attacks: a hostile plugin worker (test/fixtures/hostile) tries to read
// the data dir and the secrets key, to write its package, to open a socket to a loopback server, to
// fetch a loopback address itself, and to use http.fetch without the capability; bwrap-sandbox
// configs try to bind /var, to escape through a symlink, to land in a data dir, to run as uid 0, and
// a planted symlink tries to point a lease's workspace elsewhere; a data dir with a readable key
// refuses to start. Each is refused and leaves nothing behind. A control run without the sandbox
// shows the worker attacks are real (they succeed there). The suite prints how many it tried.
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { createServer as createHttpServer } from "node:http"
import { createServer as createNetServer, type AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Core from "../../plugins/bwrap-sandbox/src/core.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { probe } from "../../src/host/WorkerSandbox.js"
import * as App from "../../src/server/App.js"
import * as DataDir from "../../src/store/DataDir.js"
import { childPids, fixture, hostLayer } from "../helpers.js"
import { acquire, base, destroy, withWorker } from "../bwrap/helpers.js"

let attacks = 0
const attack = () => void attacks++
afterAll(() => console.log(`[host-attacks] ${attacks} attacks tried, every one refused`))

const sandboxError = probe().error
if (sandboxError) console.warn(`[gantry tests] worker-sandbox attacks skipped: ${sandboxError}`)

type Answer = { ok: boolean; error?: string; text?: string; entries?: Array<string>; keys?: Array<string>; code?: number }

/** A copy of the hostile fixture with a data dir inside its own package directory: only the sandbox's
 * mask keeps the worker out of it. */
const hostileCopy = () => {
  const dir = mkdtempSync(join(tmpdir(), "gantry-hostile-"))
  const pkg = join(dir, "hostile")
  mkdirSync(join(pkg, "dist"), { recursive: true })
  for (const f of ["package.json", "manifest.json", "dist/worker.js"]) cpSync(join(fixture("hostile"), f), join(pkg, f))
  const dataDir = join(pkg, "data")
  mkdirSync(dataDir, { mode: 0o700 })
  writeFileSync(join(dataDir, "secrets.key"), "c2VjcmV0LWtleS1vZi10aGUtaG9zdC0wMTIzNDU2Nzg5YWI=\n", { mode: 0o600 })
  writeFileSync(join(dataDir, "gantry.db"), "every company's secrets", { mode: 0o600 })
  return { dir, pkg, dataDir }
}

/** Loopback servers that count what reaches them. */
const loopbackServers = Effect.acquireRelease(
  Effect.promise(async () => {
    const hits = { tcp: 0, http: 0 }
    const tcp = createNetServer((s) => {
      hits.tcp++
      s.destroy()
    })
    const http = createHttpServer((_, res) => {
      hits.http++
      res.end("secret internal service")
    })
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r))
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r))
    return { hits, tcp, http, tcpPort: (tcp.address() as AddressInfo).port, httpPort: (http.address() as AddressInfo).port }
  }),
  (s) => Effect.promise(async () => {
    s.http.closeAllConnections()
    await new Promise((r) => s.tcp.close(r))
    await new Promise((r) => s.http.close(r))
  })
)

const startHostile = (pkg: string) =>
  Effect.gen(function* () {
    const host = yield* PluginHost.PluginHost
    yield* host.install(pkg)
    const snap = yield* host.start("hostile")
    const ask = (key: string, params: Record<string, unknown> = {}) =>
      Effect.map(host.call("hostile", "getData", { key, companyId: "acme", params }, { companyId: "acme" }), (r) => r as Answer)
    return { host, snap, ask }
  })

describe.skipIf(!!sandboxError)("a hostile plugin worker in its sandbox", () => {
  it.live("cannot read the data dir or the key, write its package, open a socket, fetch loopback, or http.fetch without the capability", () =>
    Effect.gen(function* () {
      const before = childPids()
      const { dir, pkg, dataDir } = hostileCopy()
      yield* Effect.scoped(Effect.gen(function* () {
        const servers = yield* loopbackServers
        const { snap, ask } = yield* startHostile(pkg)
        expect(snap.isolation).toBe("sandboxed")

        attack()
        const key = yield* ask("read", { path: join(dataDir, "secrets.key") })
        expect(key.ok).toBe(false)
        attack()
        const db = yield* ask("read", { path: join(dataDir, "gantry.db") })
        expect(db.ok).toBe(false)
        attack()
        const listing = yield* ask("list", { path: dataDir })
        expect(listing.entries ?? []).toEqual([])
        attack()
        const host = yield* ask("read", { path: `/proc/${process.pid}/environ` })
        expect(host.ok).toBe(false)
        attack()
        const write = yield* ask("write", { path: join(pkg, "manifest.json") })
        expect(write).toMatchObject({ ok: false, error: "EROFS" })

        attack()
        const sock = yield* ask("connect", { host: "127.0.0.1", port: servers.tcpPort })
        expect(sock.ok).toBe(false)
        attack()
        const fetched = yield* ask("fetch", { url: `http://127.0.0.1:${servers.httpPort}/` })
        expect(fetched.ok).toBe(false)
        attack()
        const gated = yield* ask("httpFetch", { url: `http://127.0.0.1:${servers.httpPort}/` })
        expect(gated).toMatchObject({ ok: false, code: -32001 })
        expect(gated.error).toContain(`missing required capability "http.outbound"`)
        expect(servers.hits).toEqual({ tcp: 0, http: 0 })

        attack()
        const env = yield* ask("env")
        // the host's variables never reach it (bwrap adds PWD, its package directory)
        expect(env.keys!.filter((k) => k !== "PWD")).toEqual(["GANTRY_PLUGIN_ID", "NODE_ENV", "PATH", "TZ"])
      }).pipe(Effect.provide(hostLayer({ workerIsolation: { mode: "auto", trusted: [], hidden: [dataDir] } }))))
      // nothing written, no process left
      expect(readdirSync(dataDir).sort()).toEqual(["gantry.db", "secrets.key"])
      expect(childPids().filter((p) => !before.includes(p))).toEqual([])
      rmSync(dir, { recursive: true, force: true })
    }))

  it.live("control: the same attacks succeed without the sandbox, and the worker is flagged unsandboxed", () =>
    Effect.gen(function* () {
      const { dir, pkg, dataDir } = hostileCopy()
      yield* Effect.scoped(Effect.gen(function* () {
        const servers = yield* loopbackServers
        const { snap, ask } = yield* startHostile(pkg)
        expect(snap.isolation).toBe("unsandboxed")
        const logs = yield* (yield* CapabilityStores).log.list("hostile")
        expect(logs.some((l) => l.level === "warn" && l.message.includes("runs with the host's files and network"))).toBe(true)
        expect((yield* ask("read", { path: join(dataDir, "secrets.key") })).ok).toBe(true)
        expect((yield* ask("connect", { host: "127.0.0.1", port: servers.tcpPort })).ok).toBe(true)
        // the capability gate holds either way
        expect((yield* ask("httpFetch", { url: `http://127.0.0.1:${servers.httpPort}/` })).ok).toBe(false)
      }).pipe(Effect.provide(hostLayer({ workerIsolation: { mode: "off", trusted: [], hidden: [dataDir] } }))))
      rmSync(dir, { recursive: true, force: true })
    }))
})

describe("bwrap-sandbox paths (whatever config arrives)", () => {
  it("readOnlyPaths: /var, /srv, /opt, a symlink that resolves out of the allow-list, a data dir: refused", () => {
    const dir = mkdtempSync(join(tmpdir(), "gantry-bwrap-paths-"))
    try {
      for (const p of ["/var", "/srv", "/opt", "/var/lib", "/etc", "/etc/shadow"]) {
        attack()
        const r = Core.validateFields({ readOnlyPaths: ["/usr", p] })
        expect(r.ok, p).toBe(false)
        expect(r.errors.join("\n")).toContain("is not a system directory on the allow-list")
      }
      // a symlink that looks like a system path: resolved before the check (needs a writable /usr/local)
      const link = `/usr/local/share/gantry-test-link-${process.pid}`
      let planted = false
      try {
        symlinkSync("/root", link)
        planted = true
      } catch {
        console.warn("[gantry tests] symlink-in-/usr attack skipped: /usr/local/share is not writable")
      }
      if (planted) {
        try {
          attack()
          const r = Core.validateFields({ readOnlyPaths: [link] })
          expect(r.errors.join("\n")).toContain(`${link} (resolves to /root) is not a system directory on the allow-list`)
        } finally {
          rmSync(link, { force: true })
        }
      }
      // workspaceRoot: a symlink to /var/lib, a system directory, a parent of one, a data dir
      const toVar = join(dir, "ws-link")
      symlinkSync("/var/lib", toVar)
      const data = join(dir, "data")
      mkdirSync(data)
      writeFileSync(join(data, "secrets.key"), "k", { mode: 0o600 })
      for (const [ws, needle] of [
        [toVar, "(resolves to /var/lib) is inside /var/lib"],
        ["/etc/gantry", "is inside /etc"],
        ["/var", "is a parent of /var/lib"],
        ["/home/someone/ws", "is inside /home"],
        [join(data, "ws"), `is inside Gantry's data dir (${data})`]
      ] as const) {
        attack()
        const r = Core.validateFields({ workspaceRoot: ws })
        expect(r.errors.join("\n"), ws).toContain(needle)
      }
      for (const field of ["runAsUid", "runAsGid"]) {
        attack()
        const r = Core.validateFields({ [field]: 0 })
        expect(r.ok).toBe(false)
        expect(r.errors.join("\n")).toContain(`${field}: 0 (root) is refused`)
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it.live("a lease workspace replaced by a symlink is not bound: the command is refused and the target untouched", () =>
    withWorker(({ call, config, dir }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-symlink")
        const id = lease.providerLeaseId!
        const target = join(dir, "elsewhere")
        mkdirSync(target)
        chmodSync(target, 0o777)
        const ws = join(cfg.workspaceRoot as string, id, "workspace")
        renameSync(ws, `${ws}.moved`)
        symlinkSync(target, ws)
        attack()
        const r = yield* Effect.exit(call("environmentExecute", { ...base(cfg), lease: { providerLeaseId: id }, command: "sh", args: ["-c", "echo owned > /workspace/pwned"] }))
        expect(Exit.isFailure(r)).toBe(true)
        expect(String(Exit.isFailure(r) ? JSON.stringify(r.cause) : "")).toContain("is a symlink; refusing to bind it")
        expect(existsSync(join(target, "pwned"))).toBe(false)
        rmSync(ws)
        renameSync(`${ws}.moved`, ws)
        yield* destroy(call, cfg, id)
      })))
})

describe("the data dir at start", () => {
  const build = (dataDir: string, workspacesDir?: string) =>
    Effect.exit(Effect.scoped(Layer.build(App.layer({ dataDir, ...(workspacesDir ? { workspacesDir } : {}) }))))

  it.live("a secrets key group or others can read stops the start, says the fix, and creates nothing", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "gantry-datadir-"))
      try {
        const key = join(dir, "secrets.key")
        writeFileSync(key, "c2VjcmV0LWtleS1vZi10aGUtaG9zdC0wMTIzNDU2Nzg5YWI=\n", { mode: 0o644 })
        chmodSync(key, 0o644)
        attack()
        const exit = yield* build(dir)
        expect(Exit.isFailure(exit)).toBe(true)
        expect(JSON.stringify(Exit.isFailure(exit) ? exit.cause : null)).toContain(`has mode 0644: group or others can read it. Fix: chmod 600 ${key}`)
        expect(readdirSync(dir)).toEqual(["secrets.key"])
        // fixed as told: starts, the database is created 0600 and the dir is 0700
        chmodSync(key, 0o600)
        chmodSync(dir, 0o755)
        const ok = yield* build(dir)
        expect(Exit.isSuccess(ok)).toBe(true)
        expect(DataDir.DB_FILES.filter((f) => existsSync(join(dir, f))).map((f) => (statSync(join(dir, f)).mode & 0o777).toString(8)))
          .toEqual(expect.arrayContaining(["600"]))
        expect((statSync(dir).mode & 0o777).toString(8)).toBe("700")
      } finally {
        rmSync(dir, { recursive: true, force: true })
        rmSync(`${dir}-workspaces`, { recursive: true, force: true })
      }
    }))

  it.live("a workspaces root inside the data dir stops the start", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "gantry-datadir-"))
      try {
        attack()
        const exit = yield* build(dir, join(dir, "workspaces"))
        expect(JSON.stringify(Exit.isFailure(exit) ? exit.cause : null)).toContain("is inside the data dir")
        expect(readdirSync(dir)).toEqual([])
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }))
})

