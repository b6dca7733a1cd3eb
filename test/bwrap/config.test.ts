// bwrap-sandbox config checks: every bad field named; validateConfig and probe say precisely what is
// missing on the machine (no bwrap, no prlimit, user namespaces disabled, workspaceRoot not writable or
// not reachable by the sandbox user) with the fix. The machine is faked through the core's `System`.
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Core from "../../plugins/bwrap-sandbox/src/core.js"
import { bwrap, bwrapPluginDir, freshRoot } from "./helpers.js"

const isRoot = process.geteuid?.() === 0

/** A temp dir removed after `f`. */
const withDir = <A>(f: (dir: string, workspaceRoot: string) => Promise<A>) =>
  Effect.promise(async () => {
    const { dir, workspaceRoot } = freshRoot()
    try {
      return await f(dir, workspaceRoot)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

const base = (config: Record<string, unknown>) => ({ driverKey: "bwrap", companyId: "acme", environmentId: "env-1", config })

describe("bwrap-sandbox config and host checks", () => {
  it("manifest.json repeats the core's configSchema", () => {
    const manifest = JSON.parse(readFileSync(join(bwrapPluginDir, "manifest.json"), "utf8"))
    expect(manifest.environmentDrivers).toHaveLength(1)
    expect(manifest.environmentDrivers[0]).toMatchObject({ driverKey: "bwrap", kind: "sandbox_provider" })
    // the host's operator marks ("x-gantry-operator", README "Who may do what") live in the manifest only
    const unmarked = (schema: unknown) => JSON.parse(JSON.stringify(schema, (k, v: unknown) => (k === "x-gantry-operator" ? undefined : v)))
    expect(unmarked(manifest.environmentDrivers[0].configSchema)).toEqual(unmarked(Core.CONFIG_SCHEMA))
    const props = manifest.environmentDrivers[0].configSchema.properties
    expect(Object.keys(props).filter((k) => props[k]["x-gantry-operator"] !== undefined).sort()).toEqual(["network", "readOnlyPaths", "runAsGid", "runAsUid", "workspaceRoot"])
  })

  it("every bad field is reported with its name; host fields pass through", () => {
    const r = Core.validateFields({
      network: "wifi", workspaceRoot: "/srv/gantry-ws",
      readOnlyPaths: ["/", "/root", "relative", "/home/alice", "/srv/gantry-ws/x", "/srv", "/tmp/x", "/proc", "/usr", "/usr/"],
      memoryMiB: 1, pids: 0, cpuSeconds: "x", timeoutMs: -1, env: { "1BAD": "x", OK: 2 }, keepOnFailure: "yes", runAsUid: -1, netwrk: "none",
      provider: "bwrap-sandbox/bwrap", ttlMs: 1000, reuseLease: false, onFailure: "destroy"
    })
    expect(r.ok).toBe(false)
    const e = r.errors.join("\n")
    for (const needle of [
      "network: must be", "readOnlyPaths[0]: / would expose", "readOnlyPaths[1]: /root would expose the host's root home",
      "readOnlyPaths[2]: must be an absolute path", "readOnlyPaths[3]: /home/alice would expose the host's home directories",
      "readOnlyPaths[4]: /srv/gantry-ws/x would expose the workspaceRoot", "readOnlyPaths[5]: /srv would expose the workspaceRoot",
      "readOnlyPaths[6]: /tmp/x is inside /tmp", "readOnlyPaths[7]: /proc is inside /proc", "memoryMiB: must be an integer",
      "pids: must be an integer", "cpuSeconds: must be an integer", "timeoutMs: must be an integer", `env: invalid variable name "1BAD"`,
      "env.OK: must be a string", "keepOnFailure: must be a boolean", "runAsUid: must be an integer", "netwrk: unknown field",
      "workspaceRoot: /srv/gantry-ws is inside /srv"
    ]) expect(e).toContain(needle)
    expect(r.errors).toHaveLength(19)
    expect(r.warnings).toEqual([expect.stringContaining("readOnlyPaths[9]: /usr is listed twice")])

    const ok = Core.validateFields({ network: "host", readOnlyPaths: ["/usr/", "/bin"], memoryMiB: 2048, provider: "bwrap", ttlMs: 5 })
    expect(ok).toMatchObject({ ok: true, errors: [], normalizedConfig: { network: "host", readOnlyPaths: ["/usr", "/bin"], memoryMiB: 2048, provider: "bwrap", ttlMs: 5 } })
    expect(ok.knobs).toMatchObject({ network: "host", pids: Core.DEFAULT_PIDS, cpuSeconds: null, keepOnFailure: false, workspaceRoot: Core.DEFAULT_ROOT })
    expect(Core.validateFields({ memoryMiB: 256 }).warnings).toEqual([expect.stringContaining("node needs about 1024")])
  })

  it.live("no bwrap binary: validateConfig and probe say so, with the fix", () =>
    withDir(async (_, workspaceRoot) => {
      const core = Core.createBwrapSandbox({ searchPath: ["/nonexistent-bin"], prlimitPath: "/usr/bin/prlimit" })
      const v = await core.validateConfig({ workspaceRoot })
      expect(v.ok).toBe(false)
      expect(v.errors).toEqual([expect.stringMatching(/^bwrap: no bwrap binary \(not found in \/nonexistent-bin\) — fix: install bubblewrap \(Debian\/Ubuntu: apt-get install -y bubblewrap/)])
      const p = await core.probe(base({ workspaceRoot }))
      expect(p.ok).toBe(false)
      expect(p.summary).toContain("no bwrap binary")
      expect(p.diagnostics).toContainEqual(expect.objectContaining({ level: "error", check: "bwrap", fix: expect.stringContaining("apt-get install -y bubblewrap") }))
      // and an operation says it too
      const lease = await core.acquire({ ...base({ workspaceRoot }), runId: "r" })
      await expect(core.execute({ ...base({ workspaceRoot }), lease: { providerLeaseId: lease.providerLeaseId! }, command: "true" })).rejects.toThrow(/no bwrap binary.*apt-get install -y bubblewrap/)
      await core.destroy({ ...base({ workspaceRoot }), providerLeaseId: lease.providerLeaseId! })
    }))

  it.live.skipIf(!bwrap.ok)("no prlimit: the limits could not be enforced, so the config is refused", () =>
    withDir(async (_, workspaceRoot) => {
      const core = Core.createBwrapSandbox({ prlimitPath: "/nonexistent/prlimit" })
      const v = await core.validateConfig({ workspaceRoot })
      expect(v.ok).toBe(false)
      expect(v.errors).toEqual([expect.stringContaining("prlimit: no prlimit binary (/nonexistent/prlimit); limits could not be enforced — fix: install util-linux")])
      // prlimit must be visible inside the sandbox too
      const v2 = await Core.createBwrapSandbox().validateConfig({ workspaceRoot, readOnlyPaths: ["/lib", "/lib64"] })
      expect(v2.errors).toEqual([expect.stringContaining("is not inside any readOnlyPaths entry")])
    }))

  it.live.skipIf(!bwrap.ok)("user namespaces disabled: the sysctl is named, with the fix", () =>
    withDir(async (dir, workspaceRoot) => {
      const sys = join(dir, "sys")
      mkdirSync(join(sys, "user"), { recursive: true })
      mkdirSync(join(sys, "kernel"), { recursive: true })
      writeFileSync(join(sys, "user", "max_user_namespaces"), "0\n")
      const v = await Core.createBwrapSandbox({ procSysRoot: sys }).validateConfig({ workspaceRoot })
      expect(v.ok).toBe(false)
      expect(v.errors).toEqual([expect.stringContaining("userns: user namespaces are disabled (user.max_user_namespaces = 0) — fix: sysctl -w user.max_user_namespaces=15000")])
      writeFileSync(join(sys, "user", "max_user_namespaces"), "15000\n")
      writeFileSync(join(sys, "kernel", "unprivileged_userns_clone"), "0\n")
      const p = await Core.createBwrapSandbox({ procSysRoot: sys, euid: 1000, egid: 1000 }).probe(base({ workspaceRoot }))
      expect(p.ok).toBe(false)
      expect(p.diagnostics).toContainEqual(expect.objectContaining({ check: "userns", message: expect.stringContaining("kernel.unprivileged_userns_clone = 0"), fix: expect.stringContaining("sysctl -w kernel.unprivileged_userns_clone=1") }))
    }))

  it.live("bwrap that cannot create its namespaces: the smoke run's message and the user-namespace fix", () =>
    withDir(async (dir, workspaceRoot) => {
      // a bwrap that behaves like one on a kernel without unprivileged user namespaces
      const bin = join(dir, "bin")
      mkdirSync(bin, { mode: 0o755 })
      chmodSync(bin, 0o755)
      const fake = join(bin, "bwrap")
      writeFileSync(fake, `#!/bin/sh\nif [ "$1" = "--version" ]; then echo "bubblewrap 0.8.0"; exit 0; fi\necho "bwrap: No permissions to create new namespace, likely because the kernel does not allow non-privileged user namespaces." >&2\nexit 1\n`)
      chmodSync(fake, 0o755)
      const p = await Core.createBwrapSandbox({ bwrapPath: fake }).probe(base({ workspaceRoot }))
      expect(p.ok).toBe(false)
      expect(p.diagnostics).toContainEqual(expect.objectContaining({
        level: "error", check: "userns",
        message: expect.stringContaining("No permissions to create new namespace"),
        fix: expect.stringContaining("user.max_user_namespaces")
      }))
      // no probe directory is left behind
      await expect(Core.listLeases(workspaceRoot)).resolves.toEqual([])
    }))

  it.live.skipIf(!bwrap.ok)("workspaceRoot not writable, or not reachable by the sandbox user: where and how to fix", () =>
    withDir(async (dir) => {
      const file = join(dir, "a-file")
      writeFileSync(file, "")
      const v = await Core.createBwrapSandbox().validateConfig({ workspaceRoot: join(file, "ws") })
      expect(v.ok).toBe(false)
      expect(v.errors).toEqual([expect.stringMatching(/^workspaceRoot: workspaceRoot .*a-file\/ws is not writable: ENOTDIR .* — fix: create it and make it writable/)])
      if (isRoot) {
        const closed = mkdtempSync(join(tmpdir(), "gantry-bwrap-closed-"))
        try {
          const v2 = await Core.createBwrapSandbox().validateConfig({ workspaceRoot: join(closed, "ws") })
          expect(v2.ok).toBe(false)
          expect(v2.errors).toEqual([expect.stringContaining(`is not reachable by the sandbox user (host uid 65534): ${closed} has mode 0700 — fix: chmod o+x ${closed}`)])
          // running sandboxes as host root is refused (an error, not a warning)
          const v3 = await Core.createBwrapSandbox().validateConfig({ workspaceRoot: join(closed, "ws"), runAsUid: 0, runAsGid: 0 })
          expect(v3.ok).toBe(false)
          expect(v3.errors).toEqual(expect.arrayContaining([expect.stringContaining("runAsUid: 0 (root) is refused"), expect.stringContaining("runAsGid: 0 (root) is refused")]))
        } finally {
          rmSync(closed, { recursive: true, force: true })
        }
      }
    }))

  it.live.skipIf(!bwrap.ok)("a usable machine: validateConfig ok, probe ready with the limit mechanism and cgroup facts", () =>
    withDir(async (_, workspaceRoot) => {
      const core = Core.createBwrapSandbox()
      const v = await core.validateConfig({ workspaceRoot, memoryMiB: 2048, pids: 256, cpuSeconds: 60 })
      expect(v).toMatchObject({ ok: true, errors: [] })
      const p = await core.probe(base({ workspaceRoot, memoryMiB: 2048, pids: 256, cpuSeconds: 60 }))
      expect(p.ok).toBe(true)
      expect(p.summary).toMatch(/^bwrap sandbox ready: bubblewrap \d+\.\d+\.\d+, network none, 0 live lease\(s\)/)
      expect(p.metadata).toMatchObject({
        workspaceRoot,
        liveLeases: 0,
        limits: { mechanism: "rlimits set by prlimit inside the sandbox", memory: expect.stringContaining("RLIMIT_AS 2048 MiB"), pids: expect.stringContaining("RLIMIT_NPROC 256"), cpu: "RLIMIT_CPU 60 s per process" },
        cgroups: expect.objectContaining({ used: false })
      })
      await expect(Core.listLeases(workspaceRoot)).resolves.toEqual([])
    }))
})
