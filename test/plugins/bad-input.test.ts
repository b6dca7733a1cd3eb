// Plugin distribution, bad input (SPEC §15, §14): every refusal is a typed error in the API's format
// and changes nothing: no file left in the data dir (not even the staging area), no plugin record,
// no log line, the installed plugins as they were. Against a real `gantry serve` process.
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import Sqlite from "better-sqlite3"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, relative } from "node:path"
import { childPids, isAlive } from "../helpers.js"
import { client, expectError, ok, startServer, stopServer, type Client, type ServerProcess } from "../server/support.js"
import { buildPackage, makeTgz, stopBuilds, tarItemsOf } from "./support.js"

const ID = "paperclip-provider"
const work = mkdtempSync(join(tmpdir(), "gantry-dist-bad-"))
const dataDir = join(work, "data")
let server: ServerProcess | undefined
let admin: Client
let company: Client
let companyId = ""
const pkgs: Record<string, string> = {}
const before = childPids()

/** Everything a refusal must not change. */
const snapshot = () => {
  const files: Array<string> = []
  const walk = (d: string) => {
    if (!existsSync(d)) return
    for (const n of readdirSync(d)) {
      const p = join(d, n)
      files.push(relative(dataDir, p))
      if (statSync(p, { throwIfNoEntry: false })?.isDirectory()) walk(p)
    }
  }
  walk(join(dataDir, "plugins"))
  const db = new Sqlite(join(dataDir, "gantry.db"), { readonly: true, fileMustExist: true })
  try {
    return {
      files: files.sort(),
      plugins: db.prepare("SELECT id, version, status, root, source FROM plugins ORDER BY id").all(),
      logs: db.prepare("SELECT plugin_id, COUNT(*) AS n FROM plugin_logs GROUP BY plugin_id ORDER BY plugin_id").all()
        .filter((r: any) => r.plugin_id === ID || !["fake-sandbox", "bwrap-sandbox", "hello-promise", "hello-effect"].includes(r.plugin_id)),
      configs: db.prepare("SELECT plugin_id, company_id, config FROM plugin_configs ORDER BY plugin_id").all()
    }
  } finally {
    db.close()
  }
}

/** `attempt` answers `status` with `code` and leaves everything as it was. */
const refused = async (attempt: () => Promise<any>, status: number, code: string, message?: RegExp) => {
  const was = snapshot()
  const r = await attempt()
  const e = expectError(r, status, code)
  if (message) expect(e.message).toMatch(message)
  expect(snapshot()).toEqual(was)
  return e
}

const folder = (name: string, files: Record<string, string>) => {
  const dir = join(work, name)
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, ".."), { recursive: true })
    writeFileSync(join(dir, f), text)
  }
  return dir
}
const tgz = (name: string, items: Parameters<typeof makeTgz>[0]) => {
  const p = join(work, `${name}.tgz`)
  writeFileSync(p, makeTgz(items))
  return p
}

beforeAll(async () => {
  pkgs.v1 = await buildPackage("paperclip-provider-v1")
  pkgs.v2 = await buildPackage("paperclip-provider-v2")
  pkgs.v3 = await buildPackage("paperclip-provider-v3", (m) => {
    m.id = "crasher"
  })
  // a v3.0.0 whose config schema rejects the config saved for v2
  pkgs.strict = await buildPackage("paperclip-provider-v2", (m) => {
    m.version = "3.0.0"
    m.instanceConfigSchema = { type: "object", properties: { label: { type: "number" }, size: { type: "integer" } }, required: ["size"] }
  })
  await stopBuilds()
  server = await startServer({ dataDir })
  admin = client(server.url, server.adminToken)
  companyId = ok(await admin.post("/api/companies", { name: "bad-input-co" }), 201).id
  company = client(server.url, ok(await admin.post(`/api/companies/${companyId}/tokens`, { name: "t" }), 201).token)
  // the one good install the refusals below must leave alone
  ok(await admin.post("/api/plugins", { source: pkgs.v2 }), 201)
  ok(await admin.put(`/api/plugins/${ID}/companies/${companyId}/config`, { label: "blue" }))
}, 120_000)

afterAll(async () => {
  if (server) await stopServer(server)
  rmSync(work, { recursive: true, force: true })
  for (const p of Object.values(pkgs)) rmSync(p, { recursive: true, force: true })
  expect(childPids().filter((p) => !before.includes(p) && isAlive(p))).toEqual([])
}, 60_000)

describe("plugin install/upgrade/uninstall refusals change nothing", () => {
  it("an archive entry with ../, an absolute entry, a hard link", async () => {
    const items = tarItemsOf(pkgs.v1!)
    const dotdot = tgz("dotdot", [...items, { name: "package/../../../../evil.js", data: "pwned" }])
    const e = await refused(() => admin.post("/api/plugins", { source: dotdot }), 422, "unsafe_package", /\.\." escapes the package/)
    expect(e.details).toEqual([`archive entry "package/../../../../evil.js": ".." escapes the package`])
    expect(existsSync(join(work, "evil.js"))).toBe(false)
    const absolute = tgz("absolute", [...items, { name: `/${work.slice(1)}/abs.js`, data: "pwned" }])
    await refused(() => admin.post("/api/plugins", { source: absolute }), 422, "unsafe_package", /absolute path/)
    expect(existsSync(join(work, "abs.js"))).toBe(false)
    const hard = tgz("hardlink", [...items, { name: "package/passwd", type: "hardlink", linkname: "/etc/passwd" }])
    await refused(() => admin.post("/api/plugins", { source: hard }), 422, "unsafe_package", /hard links are not allowed/)
  })

  it("a symlink escape, in an archive and in a folder", async () => {
    const items = tarItemsOf(pkgs.v1!).filter((i) => !i.name.endsWith("worker.js"))
    const link = tgz("symlink", [...items, { name: "package/dist/worker.js", type: "symlink", linkname: "../../../../../../etc/passwd" }])
    await refused(() => admin.post("/api/plugins", { source: link }), 422, "unsafe_package", /symlink points outside the package/)
    // a chain: each link inside on its own, the pair escaping
    const chain = tgz("chain", [...items, { name: "package/a", type: "symlink", linkname: "." }, { name: "package/b", type: "symlink", linkname: "a/../.." }])
    await refused(() => admin.post("/api/plugins", { source: chain }), 422, "unsafe_package", /outside the package/)
    const dir = folder("symlink-folder", {
      "manifest.json": readFileSync(join(pkgs.v1!, "manifest.json"), "utf8"),
      "package.json": readFileSync(join(pkgs.v1!, "package.json"), "utf8")
    })
    mkdirSync(join(dir, "dist"))
    symlinkSync(join(pkgs.v1!, "dist", "worker.js"), join(dir, "dist", "worker.js"))
    await refused(() => admin.post("/api/plugins", { source: dir }), 422, "unsafe_package", /symlink points outside the package/)
  })

  it("an entrypoint outside the package root", async () => {
    const manifest = JSON.parse(readFileSync(join(pkgs.v1!, "manifest.json"), "utf8"))
    const dir = folder("outside-entry", {
      "manifest.json": JSON.stringify({ ...manifest, entrypoints: { worker: "../outside-worker.js" } }),
      "package.json": JSON.stringify({ name: "outside-entry", version: "1.0.0", gantryPlugin: { manifest: "manifest.json" } })
    })
    writeFileSync(join(work, "outside-worker.js"), readFileSync(join(pkgs.v1!, "dist", "worker.js")))
    // in the manifest it is a manifest problem (SPEC §1); through package.json's pointer, the installer's check
    await refused(() => admin.post("/api/plugins", { source: dir }), 422, "manifest_invalid", /entrypoints\.worker: must be a path inside the plugin root/)
    const pointer = folder("outside-pointer", {
      "manifest.json": JSON.stringify(manifest),
      "package.json": JSON.stringify({ name: "outside-pointer", version: "1.0.0", paperclipPlugin: { manifest: "manifest.json", worker: "/etc/hostname" } })
    })
    await refused(() => admin.post("/api/plugins", { source: pointer }), 422, "unsafe_package", /outside the package root/)
  })

  it("a duplicate id: installing an installed id, and another package claiming it by upgrade", async () => {
    await refused(() => admin.post("/api/plugins", { source: pkgs.v1 }), 409, "plugin_conflict", /already installed.*use upgrade/)
    const manifest = JSON.parse(readFileSync(join(pkgs.v1!, "manifest.json"), "utf8"))
    const impostor = folder("impostor", {
      "manifest.json": JSON.stringify({ ...manifest, id: "fake-sandbox", version: "9.0.0" }),
      "package.json": JSON.stringify({ name: "@evil/fake-sandbox", version: "9.0.0", type: "module", paperclipPlugin: { manifest: "manifest.json" } }),
      "dist/worker.js": readFileSync(join(pkgs.v1!, "dist", "worker.js"), "utf8")
    })
    await refused(() => admin.post("/api/plugins", { source: impostor }), 409, "plugin_conflict", /"fake-sandbox" is already installed/)
    await refused(() => admin.post("/api/plugins/fake-sandbox/upgrade", { source: impostor }), 409, "plugin_conflict", /another package/)
    // an upgrade whose package is another plugin id
    await refused(() => admin.post("/api/plugins/fake-sandbox/upgrade", { source: pkgs.v1 }), 409, "plugin_conflict", /is plugin "paperclip-provider", not "fake-sandbox"/)
  })

  it("a downgrade without allowDowngrade", async () => {
    const e = await refused(() => admin.post(`/api/plugins/${ID}/upgrade`, { source: pkgs.v1 }), 409, "downgrade_refused", /2\.0\.0 is installed; 1\.0\.0 is lower/)
    expect(e.message).toContain("allowDowngrade")
    expect(ok(await admin.get(`/api/plugins/${ID}`)).version).toBe("2.0.0")
  })

  it("an upgrade whose config schema rejects a saved config: every problem listed", async () => {
    const e = await refused(() => admin.post(`/api/plugins/${ID}/upgrade`, { source: pkgs.strict }), 422, "config_incompatible")
    expect(e.details).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^company ${companyId}: .*size`)), expect.stringMatching(new RegExp(`^company ${companyId}: .*label`))]))
    expect((e.details as Array<string>).length).toBe(2)
    expect(ok(await admin.get(`/api/plugins/${ID}/companies/${companyId}/config`))).toEqual({ label: "blue" })
  })

  it("an unknown npm package, a bad spec, a relative path, a missing file", async () => {
    const name = `gantry-surely-missing-${Date.now().toString(36)}-zz9`
    await refused(() => admin.post("/api/plugins", { source: name }), 422, "source_unavailable", /no such package or version in the registry/)
    await refused(() => admin.post("/api/plugins", { source: "--registry=http://evil" }), 422, "source_unavailable", /not .*an npm package spec/)
    await refused(() => admin.post("/api/plugins", { source: "./plugins/x" }), 422, "source_unavailable", /not an absolute path/)
    await refused(() => admin.post("/api/plugins", { source: join(work, "nope.tgz") }), 422, "source_unavailable", /no such file or folder/)
    const notGzip = join(work, "garbage.tgz")
    writeFileSync(notGzip, "not a tarball")
    await refused(() => admin.post("/api/plugins", { source: notGzip }), 422, "unsafe_package")
  }, 120_000)

  it("a manifest with problems: every problem listed with its path", async () => {
    const dir = folder("bad-manifest", {
      "manifest.json": JSON.stringify({
        id: "Bad Id", apiVersion: 2, version: "one", displayName: "x", description: "y", author: "z", categories: [],
        capabilities: ["teleport"], entrypoints: { worker: "w.js" }, frobnicate: true
      }),
      "w.js": "",
      "package.json": JSON.stringify({ name: "bad-manifest", scripts: { preinstall: "touch PRE", install: "touch INSTALL", postinstall: "touch POST", prepare: "touch PREPARE" } })
    })
    const e = await refused(() => admin.post("/api/plugins", { source: dir }), 422, "manifest_invalid")
    const problems = e.details as Array<string>
    expect(problems.length).toBeGreaterThanOrEqual(5)
    for (const p of ["id", "apiVersion", "version", "categories", "capabilities[0]", "frobnicate"]) {
      expect(problems.some((x) => x.startsWith(p))).toBe(true)
    }
    for (const f of ["PRE", "INSTALL", "POST", "PREPARE"]) expect(existsSync(join(dir, f))).toBe(false)
    // a worker that is not there
    const noWorker = folder("no-worker", {
      "manifest.json": readFileSync(join(pkgs.v1!, "manifest.json"), "utf8").replace('"id": "paperclip-provider"', '"id": "no-worker"'),
      "package.json": JSON.stringify({ name: "no-worker" })
    })
    await refused(() => admin.post("/api/plugins", { source: noWorker }), 422, "manifest_invalid", /file not found/)
  })

  it("a package whose worker crashes at start: refused with its stderr, no record, no log, no files", async () => {
    const e = await refused(() => admin.post("/api/plugins", { source: pkgs.v3 }), 422, "plugin_start_refused", /v3 setup failed: sandbox backend missing/)
    expect(e.message).toContain("cannot find its sandbox backend")
    expect((await admin.get("/api/plugins/crasher")).status).toBe(404)
  }, 60_000)

  it("a company token on every install, upgrade and uninstall route", async () => {
    await refused(() => company.post("/api/plugins", { source: pkgs.v1 }), 403, "forbidden")
    await refused(() => company.post(`/api/plugins/${ID}/upgrade`, { source: pkgs.v2 }), 403, "forbidden")
    await refused(() => company.post(`/api/plugins/${ID}/upgrade`, { source: pkgs.v1, allowDowngrade: true }), 403, "forbidden")
    await refused(() => company.del(`/api/plugins/${ID}`), 403, "forbidden")
    await refused(() => company.del(`/api/plugins/${ID}?purge=true`), 403, "forbidden")
    await refused(() => company.del("/api/plugins/fake-sandbox?purge=true&drain=true"), 403, "forbidden")
    // no token at all
    await refused(() => client(server!.url).post("/api/plugins", { source: pkgs.v1 }), 401, "unauthorized")
    // unknown ids and unknown fields
    await refused(() => admin.post("/api/plugins/nope/upgrade", { source: pkgs.v1 }), 404, "plugin_not_found")
    await refused(() => admin.del("/api/plugins/nope"), 404, "plugin_not_found")
    await refused(() => admin.post("/api/plugins", { source: pkgs.v1, scripts: true }), 400, "invalid_request")
  })

  it("after all that, the installed plugin still serves and uninstall --purge removes everything", async () => {
    expect(ok(await admin.post(`/api/plugins/${ID}/companies/${companyId}/data/whoami`, { params: {} }))).toMatchObject({ variant: "v2" })
    expect(ok(await admin.del(`/api/plugins/${ID}?purge=true`))).toEqual({ pluginId: ID, uninstalled: true, purged: true })
    const after = snapshot()
    expect(after.files).toEqual([])
    expect(after.plugins.map((p: any) => p.id)).not.toContain(ID)
    expect(after.logs).toEqual([])
    expect(after.configs).toEqual([])
  })

  it("installs from a .tgz: the archive's sha512 recorded, unpacked under <dataDir>/plugins/<id>/<version>", async () => {
    const archive = tgz("good", [{ name: "package/", type: "dir" }, ...tarItemsOf(pkgs.v1!), { name: "package/dist/alias.js", type: "symlink", linkname: "worker.js" }])
    const p = ok(await admin.post("/api/plugins", { source: archive }), 201)
    const { createHash } = await import("node:crypto")
    expect(p.source).toEqual({
      kind: "tarball", location: archive, linked: false, packageName: "@gantry-tests/paperclip-provider",
      sha512: `sha512-${createHash("sha512").update(readFileSync(archive)).digest("base64")}`
    })
    expect(snapshot().files).toEqual(["plugins/paperclip-provider", "plugins/paperclip-provider/1.0.0", "plugins/paperclip-provider/1.0.0/dist",
      "plugins/paperclip-provider/1.0.0/dist/alias.js", "plugins/paperclip-provider/1.0.0/dist/worker.js", "plugins/paperclip-provider/1.0.0/manifest.json",
      "plugins/paperclip-provider/1.0.0/package.json"])
    expect(ok(await admin.post(`/api/plugins/${ID}/companies/${companyId}/data/whoami`, { params: {} }))).toMatchObject({ variant: "v1" })
    ok(await admin.del(`/api/plugins/${ID}`))
    expect(snapshot().files).toEqual([])
  }, 60_000)
})
