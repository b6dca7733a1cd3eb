// bwrap-sandbox acceptance 1 (escape tests), through the real worker: each attempt must fail inside
// the sandbox, and each has a control showing the same probe succeeds where access is intended, so a
// sandbox that leaked would fail the test.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import { homedir } from "node:os"
import { join } from "node:path"
import { eventually } from "../helpers.js"
import { acquire, bwrap, destroy, execute, processesWith, sh, uniqueMarker, withWorker } from "./helpers.js"

const secret = () => `secret-${Math.random().toString(36).slice(2, 12)}`

describe.skipIf(!bwrap.ok)("bwrap-sandbox escape tests (real worker)", () => {
  it.live("a file planted in the host's home, or in a Gantry data dir, cannot be read: neither is even there", () => {
    const name = `.gantry-bwrap-canary-${process.pid}-${Math.random().toString(36).slice(2, 8)}`
    const home = join(homedir(), name)
    const content = secret()
    writeFileSync(home, content)
    // a data dir outside /tmp, world-readable: only not mounting it keeps the sandbox out
    const dataDir = join("/var/tmp", `gantry-bwrap-data-${process.pid}-${Math.random().toString(36).slice(2, 8)}`)
    mkdirSync(dataDir, { recursive: true, mode: 0o755 })
    chmodSync(dataDir, 0o755)
    writeFileSync(join(dataDir, "gantry.db"), content, { mode: 0o644 })
    return withWorker(({ call, config }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-home")
        const id = lease.providerLeaseId!
        for (const path of [home, `/root/${name}`, `/proc/1/root${home}`, join(dataDir, "gantry.db"), `/proc/self/root${dataDir}/gantry.db`]) {
          const r = yield* sh(call, cfg, id, `cat ${path}`)
          expect(r.exitCode, path).not.toBe(0)
          expect(r.stdout, path).not.toContain(content)
        }
        // not unreadable but absent: nothing of the host's homes or the data dir is mounted
        const present = yield* sh(call, cfg, id, [homedir(), "/root", "/home", dataDir, "/var"].map((p) => `[ -e ${p} ] && echo "VISIBLE ${p}"`).join("; ") + "; true")
        expect(present.stdout).toBe("")
        // and a config that asks for the data dir read-only is refused: it is not a system directory
        const withData = config({ readOnlyPaths: ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache", dataDir] })
        const refused = yield* Effect.flip(acquire(call, withData, "run-home-control"))
        expect(String((refused as { message?: unknown }).message)).toContain(`${dataDir} is not a system directory on the allow-list`)
        yield* destroy(call, cfg, id)
      })).pipe(Effect.ensuring(Effect.sync(() => {
        rmSync(home, { force: true })
        rmSync(dataDir, { recursive: true, force: true })
      })))
  })

  it.live("another lease's workspace cannot be read, listed or reached", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config()
        const content = secret()
        const a = yield* acquire(call, cfg, "run-a")
        const b = yield* acquire(call, cfg, "run-b")
        const aId = a.providerLeaseId!
        const aHost = String(a.metadata!.hostPath)
        const written = yield* sh(call, cfg, aId, "cat > /workspace/secret.txt && cat /workspace/secret.txt", { stdin: content })
        expect(written.stdout).toBe(content)
        // control: the file is really there on the host, and A reads it
        expect(readFileSync(join(aHost, "secret.txt"), "utf8")).toBe(content)
        for (const path of [join(aHost, "secret.txt"), `/workspace/../${aId}/workspace/secret.txt`, join(workspaceRoot, aId, "workspace", "secret.txt"), "/workspace/secret.txt"]) {
          const r = yield* sh(call, cfg, b.providerLeaseId!, `cat ${path}`)
          expect(r.exitCode, path).not.toBe(0)
          expect(r.stdout, path).not.toContain(content)
        }
        // every directory of B's view except the big read-only OS tree and the pseudo filesystems
        const ls = yield* sh(call, cfg, b.providerLeaseId!,
          `ls ${workspaceRoot} 2>&1; ls -la / 2>&1; for d in /*; do case $d in /usr|/proc|/dev|/sys) ;; *) [ -L "$d" ] || grep -rlsF --devices=skip ${content} "$d" ;; esac; done; true`)
        expect(ls.stdout).not.toContain(aId)
        expect(ls.stdout).not.toContain("secret.txt")
        yield* destroy(call, cfg, aId)
        yield* destroy(call, cfg, b.providerLeaseId!)
      })))

  it.live("nothing outside /workspace and /tmp is writable, not even by remounting", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-write")
        const other = yield* acquire(call, cfg, "run-write-other")
        const id = lease.providerLeaseId!
        const otherHost = String(other.metadata!.hostPath)
        const name = `gantry-escape-${Math.random().toString(36).slice(2, 10)}`
        const targets = ["/", "/usr", "/usr/bin", "/etc", "/bin", "/dev", "/dev/pts", "/proc", "/sys", "/var", "/root", "/home", "/opt", workspaceRoot, otherHost, homedir()]
        const script = targets.map((t) => `if (echo x > ${t}/${name}) 2>/dev/null; then echo "WROTE ${t}"; fi`).join("; ") +
          `; mount -o remount,rw /usr 2>/dev/null && echo "REMOUNTED /usr"; mount -o remount,rw / 2>/dev/null && echo "REMOUNTED /"` +
          `; echo w > /workspace/${name} && echo "OK /workspace"; echo t > /tmp/${name} && echo "OK /tmp"; echo s > /dev/shm/${name} && echo "OK /dev/shm"`
        const r = yield* sh(call, cfg, id, script)
        expect(r.stdout).not.toContain("WROTE")
        expect(r.stdout).not.toContain("REMOUNTED")
        // control: the intended places are writable and land in this lease's directory on the host
        expect(r.stdout).toContain("OK /workspace")
        expect(r.stdout).toContain("OK /tmp")
        expect(readFileSync(join(String(lease.metadata!.hostPath), name), "utf8")).toBe("w\n")
        expect(readFileSync(join(workspaceRoot, id, "tmp", name), "utf8")).toBe("t\n")
        for (const t of targets) expect(existsSync(join(t, name)), t).toBe(false)
        // /tmp is the lease's own: another lease does not see it
        const otherTmp = yield* sh(call, cfg, other.providerLeaseId!, `cat /tmp/${name}`)
        expect(otherTmp.exitCode).not.toBe(0)
        yield* destroy(call, cfg, id)
        yield* destroy(call, cfg, other.providerLeaseId!)
      })))

  it.live("network:none cannot reach a loopback HTTP server on the host; network:host can", () =>
    Effect.gen(function* () {
      const body = secret()
      const server = createServer((_, res) => res.end(body))
      const port = yield* Effect.async<number>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed((server.address() as { port: number }).port)))
      })
      const fetch = `perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => ${port}, Timeout => 3) or die "connect: $!\\n"; print $s "GET / HTTP/1.0\\r\\n\\r\\n"; print <$s>'`
      yield* withWorker(({ call, config }) =>
        Effect.gen(function* () {
          const none = config()
          const lease = yield* acquire(call, none, "run-net")
          const r = yield* sh(call, none, lease.providerLeaseId!, fetch)
          expect(r.exitCode).not.toBe(0)
          expect(r.stdout).not.toContain(body)
          expect(r.stderr).toContain("connect")
          // only a loopback interface in the sandbox's network namespace
          const ifaces = yield* sh(call, none, lease.providerLeaseId!, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
          expect(ifaces.stdout.trim().split("\n")).toEqual(["lo"])
          // control: the same request with the host's network gets the body
          const host = config({ network: "host" })
          const lease2 = yield* acquire(call, host, "run-net-host")
          const ok = yield* sh(call, host, lease2.providerLeaseId!, fetch)
          expect(ok.exitCode).toBe(0)
          expect(ok.stdout).toContain(body)
          yield* destroy(call, none, lease.providerLeaseId!)
          yield* destroy(call, host, lease2.providerLeaseId!)
        })).pipe(Effect.ensuring(Effect.sync(() => server.close())))
    }))

  it.live("ps and /proc show only the sandbox's own processes", () =>
    withWorker(({ call, config, host }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-ps")
        const workerPid = (yield* host.status("bwrap-sandbox")).pid!
        const ps = (yield* sh(call, cfg, lease.providerLeaseId!, "ps -e -o pid=,comm=")).stdout
        const pids = (yield* sh(call, cfg, lease.providerLeaseId!, "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '")).stdout
        const cmdlines = (yield* sh(call, cfg, lease.providerLeaseId!, "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '")).stdout
        const listed = ps.trim().split("\n").map((l) => l.trim().split(/\s+/))
        // pid 1 is bwrap's reaper, then the shell, ps; nothing of the host
        expect(listed.length).toBeLessThanOrEqual(4)
        expect(listed.map((l) => l[1])).not.toContain("node")
        const procPids = pids.trim().split(" ").map(Number)
        expect(procPids.length).toBeLessThanOrEqual(5)
        expect(Math.max(...procPids)).toBeLessThan(20)
        expect(procPids).not.toContain(workerPid)
        expect(cmdlines).not.toContain("vitest")
        expect(cmdlines).not.toContain("dist/worker.js")
        // control: the host has far more processes than that
        expect(Number(readFileSync("/proc/loadavg", "utf8").split(" ")[3]!.split("/")[1])).toBeGreaterThan(5)
        yield* destroy(call, cfg, lease.providerLeaseId!)
      })))

  it.live("the host's and the worker's environment canaries are absent: the env is exactly the given one", () => {
    const hostCanary = uniqueMarker("host-canary")
    const workerCanary = uniqueMarker("worker-canary")
    process.env.GANTRY_BWRAP_HOST_CANARY = hostCanary
    return withWorker(({ call, config, host }) =>
      Effect.gen(function* () {
        // control: the worker really carries its canary
        const workerPid = (yield* host.status("bwrap-sandbox")).pid!
        expect(readFileSync(`/proc/${workerPid}/environ`, "utf8")).toContain(workerCanary)
        const cfg = config({ env: { DEFAULT_VAR: "from-config" } })
        const lease = yield* acquire(call, cfg, "run-env")
        const r = yield* execute(call, cfg, lease.providerLeaseId!, { command: "/usr/bin/env", env: { GIVEN: "yes", DEFAULT_VAR: "from-call" } })
        expect(r.exitCode).toBe(0)
        // bwrap sets PWD (the working directory) after --chdir; nothing else is added
        expect(r.stdout.trim().split("\n").sort()).toEqual(["DEFAULT_VAR=from-call", "GIVEN=yes", "PATH=/usr/local/bin:/usr/bin:/bin", "PWD=/workspace"])
        const everywhere = yield* sh(call, cfg, lease.providerLeaseId!, "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/1/environ | tr '\\0' '\\n'", { env: { ONLY: "this" } })
        expect(everywhere.stdout).not.toContain(hostCanary)
        expect(everywhere.stdout).not.toContain(workerCanary)
        expect(everywhere.stdout).toContain("ONLY=this")
        // the variables never show on a command line on the host either (they reach bwrap on a pipe)
        const marker = uniqueMarker("cmdline")
        const fiber = yield* Effect.fork(sh(call, cfg, lease.providerLeaseId!, "sleep 30", { env: { SECRET_VALUE: marker } }))
        // running: the sandbox's processes carry it in their environment, no command line does
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length > 0))
        expect(hostCmdlines().filter((c) => c.includes(marker))).toEqual([])
        yield* Fiber.interrupt(fiber)
        yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length === 0))
        yield* destroy(call, cfg, lease.providerLeaseId!)
      }), { workerEnv: { PATH: "/usr/local/bin:/usr/bin:/bin", NODE_ENV: "production", TZ: "UTC", GANTRY_BWRAP_WORKER_CANARY: workerCanary } })
      .pipe(Effect.ensuring(Effect.sync(() => delete process.env.GANTRY_BWRAP_HOST_CANARY)))
  })
})

const hostCmdlines = (): Array<string> => {
  const out: Array<string> = []
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue
    try {
      out.push(readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0").join(" "))
    } catch {
      // gone
    }
  }
  return out
}
