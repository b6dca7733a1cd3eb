// Secrets (SPEC §5.5): encrypted, versioned store; plugin resolution gated by config bindings, company
// and a rate limit; a canary value never reaches any sink (database, logs, errors, events, API records).
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Context, Effect, Exit, Layer, Redacted, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Capabilities from "../../src/host/capabilities/index.js"
import * as Redactor from "../../src/host/capabilities/Redactor.js"
import * as SecretStore from "../../src/host/capabilities/SecretStore.js"
import { HostOptions } from "../../src/host/HostOptions.js"
import * as PluginHost from "../../src/host/PluginHost.js"
import { PluginRecords } from "../../src/host/PluginRecords.js"
import { CapabilityStores } from "../../src/host/Stores.js"
import { Database } from "../../src/store/Database.js"
import { freshDatabase, testDbs, type TestDb } from "../db.js"
import { childPids, eventually, examples, fixture } from "../helpers.js"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "gantry-secrets-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** Durable host whose CapabilityStores use the SecretStore built here (key file in a temp data dir). */
const hostLayer = (db: TestDb, options: Omit<SecretStore.SecretStoreOptions, "dataDir"> = {}) =>
  Layer.unwrapScoped(Effect.map(tempDir, (dataDir) =>
    PluginHost.layer.pipe(
      Layer.provideMerge(Layer.merge(Capabilities.layerSql, PluginRecords.layerSql)),
      Layer.provideMerge(SecretStore.layer({ ...options, dataDir })),
      Layer.provideMerge(Layer.mergeAll(HostOptions.layer(), Redactor.layer, Layer.succeed(DataDir, dataDir))),
      Layer.provideMerge(freshDatabase(db))
    )))

/** Store alone over a fresh database. */
const storeLayer = (db: TestDb, options: SecretStore.SecretStoreOptions = {}) =>
  SecretStore.layer(options).pipe(Layer.provideMerge(Redactor.layer), Layer.provideMerge(freshDatabase(db)))

class DataDir extends Context.Tag("test/DataDir")<DataDir, string>() {}

const ref = (secretId: string, version?: number) => (version === undefined ? { type: "secret_ref", secretId } : { type: "secret_ref", secretId, version })

const failure = <A, E>(exit: Exit.Exit<A, E>) => {
  if (!Exit.isFailure(exit)) throw new Error(`expected a failure, got ${JSON.stringify(exit)}`)
  return Cause.squash(exit.cause) as { _tag: string; code?: number; message: string; data?: any; retryAfterMs?: number }
}

/** Every value of every column of every table, as text. */
const dumpDatabase = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const db = yield* Database
  const tables = db.dialect === "pg"
    ? (yield* sql<{ name: string }>`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`)
    : (yield* sql<{ name: string }>`SELECT name FROM sqlite_master WHERE type = 'table'`)
  const cells: Array<{ table: string; column: string; text: string }> = []
  for (const { name } of tables) {
    const rows = yield* sql.unsafe<Record<string, unknown>>(`SELECT * FROM "${name}"`)
    for (const row of rows) {
      for (const [column, v] of Object.entries(row)) {
        if (v === null || v === undefined) continue
        cells.push({ table: name, column, text: Buffer.isBuffer(v) ? `${v.toString("utf8")} ${v.toString("base64")}` : typeof v === "object" ? JSON.stringify(v) : String(v) })
      }
    }
  }
  return { tables: tables.map((t) => t.name), cells }
})

const leaks = (text: string, canary: string) =>
  [canary, Buffer.from(canary).toString("base64"), Buffer.from(canary).toString("hex")].some((form) => text.includes(form))

for (const db of testDbs) {
  describe(`secrets [${db.kind}]`, () => {
    it.live("acceptance 4: a canary value resolved by a plugin never reaches the database, logs, errors, events or API records", () =>
      Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const secrets = yield* SecretStore.SecretStore
        const stores = yield* CapabilityStores
        const sql = yield* SqlClient.SqlClient
        const canary = `CANARY-${randomBytes(12).toString("hex")}`
        const id = "secrets-canary"

        const created = yield* secrets.create("acme", "canary", canary)
        const rotated = yield* secrets.rotate(created.id, `${canary}-v2`)
        yield* host.install(fixture(id))
        yield* host.start(id)
        yield* host.configChanged(id, "acme", { apiKey: ref(created.id, 1) })

        // the plugin resolves version 1 (the canary) and throws it in an error…
        const thrown = failure(yield* Effect.exit(host.call(id, "performAction", { key: "leak", companyId: "acme", params: {} }, { companyId: "acme" })))
        expect(thrown.code).toBe(-32002)
        expect(thrown.message).toContain(Redactor.MASK)
        // …and returns it in a result
        const returned = yield* host.call(id, "performAction", { key: "leak", companyId: "acme", params: { mode: "return" } }, { companyId: "acme" })
        expect(returned).toEqual({ value: Redactor.MASK, text: `value=${Redactor.MASK}` })

        // logs: the plugin logger, console and stderr lines all arrived, scrubbed
        const logs = yield* eventually(Effect.flatMap(stores.log.list(id, 1000), (l) =>
          l.some((e) => e.message.startsWith("stderr: stderr says")) && l.filter((e) => e.message.startsWith("resolved")).length >= 2 ? Effect.succeed(l) : Effect.fail("logs not in yet")))
        const logText = JSON.stringify(logs)
        expect(logText).toContain(Redactor.MASK)
        expect(leaks(logText, canary)).toBe(false)

        // state and event payloads were written, scrubbed
        expect(yield* stores.state.get(id, { scopeKind: "company", scopeId: "acme", stateKey: "leak" })).toEqual({ value: Redactor.MASK, text: `x${Redactor.MASK}y` })
        const events = yield* eventually(Effect.flatMap(
          sql<{ envelope: string }>`SELECT envelope FROM events WHERE event_type = ${`plugin.${id}.leaked`}`,
          (rows) => (rows.length >= 2 ? Effect.succeed(rows) : Effect.fail("events not in yet"))
        ))
        expect(JSON.parse(events[0]!.envelope).payload).toEqual({ value: Redactor.MASK, list: [Redactor.MASK] })

        // API-visible records: secret metadata and the plugin's status
        const api = JSON.stringify([created, rotated, yield* secrets.list("acme"), yield* secrets.get(created.id), yield* host.status(id), yield* host.list])
        expect(leaks(api, canary)).toBe(false)
        expect(Object.keys(created).sort()).toEqual(["companyId", "createdAt", "id", "name", "updatedAt", "version"])

        // every column of every table: the canary (plain, base64, hex) appears nowhere, not even in the ciphertext
        const dump = yield* dumpDatabase
        expect(dump.tables).toEqual(expect.arrayContaining(["secrets", "secret_versions", "plugin_logs", "plugin_state", "events", "plugin_configs"]))
        const hits = dump.cells.filter((c) => leaks(c.text, canary))
        expect(hits).toEqual([])
        // the scrubbed copies are there: the sinks were written, not skipped
        for (const table of ["plugin_state", "plugin_logs", "events"]) {
          expect(dump.cells.some((c) => c.table === table && c.text.includes(Redactor.MASK))).toBe(true)
        }
        const ciphertexts = dump.cells.filter((c) => c.table === "secret_versions" && c.column === "ciphertext")
        expect(ciphertexts).toHaveLength(2)
        // the key file was generated with 0600 in the data dir
        const keyFile = join(yield* DataDir, SecretStore.KEY_FILE)
        expect(statSync(keyFile).mode & 0o777).toBe(0o600)
        expect(leaks(readFileSync(keyFile, "utf8"), canary)).toBe(false)
      }).pipe(Effect.scoped, Effect.provide(hostLayer(db))))

    it.live("hello-promise resolves a bound secret through a real worker; rotation and explicit versions", () =>
      Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const secrets = yield* SecretStore.SecretStore
        const stores = yield* CapabilityStores
        const name = "hello-promise"
        const s = yield* secrets.create("acme", "api-key", "four")
        expect(s.version).toBe(1)
        yield* host.install(examples(name))
        yield* host.start(name)
        yield* host.configChanged(name, "acme", { apiKey: ref(s.id) })
        const length = (companyId = "acme") => host.call(name, "getData", { key: "secret-length", companyId, params: {} }, { companyId })
        expect(yield* length()).toEqual({ length: 4 })

        const r = yield* secrets.rotate(s.id, "eight888")
        expect(r).toMatchObject({ id: s.id, version: 2, name: "api-key", companyId: "acme" })
        expect(yield* length()).toEqual({ length: 8 })
        // an unpinned binding allows any version when asked explicitly; the current one otherwise
        expect(yield* stores.secrets.resolve(name, "acme", ref(s.id, 1) as never, "apiKey")).toBe("four")
        expect(yield* stores.secrets.resolve(name, "acme", ref(s.id) as never, null)).toBe("eight888")
        expect(yield* stores.secrets.resolve(name, "acme", s.id, "apiKey")).toBe("eight888")
        // a binding pinned at version 1 resolves version 1, and refuses another explicit version
        yield* host.configChanged(name, "acme", { apiKey: ref(s.id, 1) })
        expect(yield* length()).toEqual({ length: 4 })
        const pinned = failure(yield* Effect.exit(stores.secrets.resolve(name, "acme", ref(s.id, 2) as never, "apiKey")))
        expect(pinned.message).toMatch(/^secret binding missing: .*version 1, not 2/)
        // a version that does not exist
        yield* host.configChanged(name, "acme", { apiKey: ref(s.id) })
        const none = failure(yield* Effect.exit(stores.secrets.resolve(name, "acme", ref(s.id, 7) as never, "apiKey")))
        expect(none.message).toBe(`secret "${s.id}" has no version 7`)
        expect(none.data).toEqual({ reason: "secret_not_found", secretId: s.id })
        // bad version in a ref: invalid params
        const bad = failure(yield* Effect.exit(stores.secrets.resolve(name, "acme", ref(s.id, 1.5) as never, "apiKey")))
        expect(bad.code).toBe(-32602)
      }).pipe(Effect.scoped, Effect.provide(hostLayer(db))))

    it.live("unbound, mis-pathed and cross-company refs are refused through a real worker", () =>
      Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const secrets = yield* SecretStore.SecretStore
        const id = "secrets-canary"
        const a = yield* secrets.create("acme", "a", "acme-secret-a")
        const b = yield* secrets.create("acme", "b", "acme-secret-b")
        const g = yield* secrets.create("globex", "g", "globex-secret")
        yield* host.install(fixture(id))
        yield* host.start(id)
        yield* host.configChanged(id, "acme", { apiKey: ref(a.id), nested: { list: [{ token: ref(b.id) }] } })
        // globex's config points at acme's secret
        yield* host.configChanged(id, "globex", { apiKey: ref(a.id) })
        const resolve = (companyId: string, params: Record<string, unknown>) =>
          host.call(id, "getData", { key: "resolve", companyId, params }, { companyId })

        expect(yield* resolve("acme", {})).toEqual({ length: "acme-secret-a".length })
        expect(yield* resolve("acme", { configPath: "apiKey" })).toEqual({ length: "acme-secret-a".length })
        // a ref anywhere in the config binds; with configPath it must be exactly there (dot path)
        expect(yield* resolve("acme", { ref: ref(b.id) })).toEqual({ length: "acme-secret-b".length })
        expect(yield* resolve("acme", { ref: ref(b.id), configPath: "nested.list.0.token" })).toEqual({ length: "acme-secret-b".length })

        const wrongPath = failure(yield* Effect.exit(resolve("acme", { ref: ref(b.id), configPath: "apiKey" })))
        expect(wrongPath.code).toBe(-32002)
        expect(wrongPath.message).toBe(`secret binding missing: config of plugin "${id}" for company "acme" has no ref to secret "${b.id}" at "apiKey"`)
        // a secret of the same company that no config field holds
        const c = yield* secrets.create("acme", "c", "acme-secret-c")
        const unbound = failure(yield* Effect.exit(resolve("acme", { ref: c.id })))
        expect(unbound.code).toBe(-32002)
        expect(unbound.message).toMatch(/^secret binding missing: /)
        expect(unbound.data).toEqual({ reason: "secret_binding_missing", secretId: c.id })
        // another company's secret, bound by globex's config: refused
        const cross = failure(yield* Effect.exit(resolve("globex", {})))
        expect(cross.code).toBe(-32002)
        expect(cross.message).toBe(`secret "${a.id}" not found in company "globex"`)
        // globex's own secret is not bound by globex's config either
        const crossOwn = failure(yield* Effect.exit(resolve("globex", { ref: ref(g.id) })))
        expect(crossOwn.message).toMatch(/^secret binding missing: /)
        // naming another company than the invocation's: the company-scope gate
        const scope = failure(yield* Effect.exit(resolve("acme", { asCompany: "globex" })))
        expect(scope.code).toBe(-32005)
        // an unknown id
        const unknown = failure(yield* Effect.exit(resolve("acme", { ref: ref("no-such-secret") })))
        expect(unknown.message).toMatch(/^secret binding missing: /)
        // no error text carries a value
        for (const e of [wrongPath, unbound, cross, crossOwn, unknown]) expect(JSON.stringify(e)).not.toMatch(/acme-secret|globex-secret/)
      }).pipe(Effect.scoped, Effect.provide(hostLayer(db))))

    it.live("rate limit: 30 resolutions per minute per (plugin, company), then -32002 with retryAfterMs", () =>
      Effect.gen(function* () {
        const host = yield* PluginHost.PluginHost
        const secrets = yield* SecretStore.SecretStore
        const stores = yield* CapabilityStores
        const name = "hello-promise"
        const s = yield* secrets.create("acme", "k", "value-1")
        const t = yield* secrets.create("globex", "k", "value-2")
        yield* host.install(examples(name))
        yield* host.start(name)
        yield* host.configChanged(name, "acme", { apiKey: ref(s.id) })
        yield* host.configChanged(name, "globex", { apiKey: ref(t.id) })
        const length = (companyId: string) => host.call(name, "getData", { key: "secret-length", companyId, params: {} }, { companyId })
        for (let i = 0; i < 30; i++) expect(yield* length("acme")).toEqual({ length: 7 })
        const limited = failure(yield* Effect.exit(length("acme")))
        expect(limited.code).toBe(-32002)
        expect(limited.message).toMatch(/rate limited/)
        expect(limited.data.reason).toBe("rate_limited")
        expect(limited.data.retryAfterMs).toBeGreaterThan(0)
        expect(limited.data.retryAfterMs).toBeLessThanOrEqual(60_000)
        // other companies and other plugins have their own budget
        expect(yield* length("globex")).toEqual({ length: 7 })
        expect(yield* stores.secrets.resolve("another-plugin", "acme", s.id, null).pipe(Effect.flip, Effect.map((e) => e.message))).toMatch(/^secret binding missing/)
      }).pipe(Effect.scoped, Effect.provide(hostLayer(db))))

    it.effect("rate limit: a sliding window on the clock; refused attempts are not counted, unbound ones are", () =>
      Effect.gen(function* () {
        const secrets = yield* SecretStore.SecretStore
        const sql = yield* SqlClient.SqlClient
        const s = yield* secrets.create("acme", "k", "value-1")
        yield* sql`INSERT INTO plugin_configs (plugin_id, company_id, config, updated_at) VALUES ('p', 'acme', ${JSON.stringify({ k: ref(s.id) })}, 0)`
        const once = secrets.resolve("p", "acme", s.id, "k")
        for (let i = 0; i < 3; i++) expect(yield* once).toBe("value-1")
        const limited = yield* Effect.flip(once)
        expect(limited._tag).toBe("SecretRateLimited")
        expect((limited as SecretStore.SecretRateLimited).retryAfterMs).toBe(3_000)
        yield* TestClock.adjust("2999 millis")
        expect((yield* Effect.flip(once))._tag).toBe("SecretRateLimited")
        yield* TestClock.adjust("1 millis")
        expect(yield* once).toBe("value-1")
        // unbound attempts spend the budget too (no free probing)
        yield* TestClock.adjust("1 minute")
        for (let i = 0; i < 3; i++) expect((yield* Effect.flip(secrets.resolve("p", "acme", "nope", null)))._tag).toBe("SecretBindingMissing")
        expect((yield* Effect.flip(once))._tag).toBe("SecretRateLimited")
      }).pipe(Effect.scoped, Effect.provide(storeLayer(db, { key: Redacted.make("a".repeat(64)), rateLimit: { limit: 3, windowMs: 3_000 } }))))

    it.scoped("store: metadata only, names, conflicts, delete, encryption at rest bound to its row", () =>
      Effect.gen(function* () {
        const secrets = yield* SecretStore.SecretStore
        const redactor = yield* Redactor.Redactor
        const sql = yield* SqlClient.SqlClient
        const a = yield* secrets.create("acme", "OPENAI_API_KEY", "sk-value-aaaa")
        expect(a).toMatchObject({ companyId: "acme", name: "OPENAI_API_KEY", version: 1 })
        expect(a.createdAt).toBe(a.updatedAt)
        // created values are registered with the redactor at once
        expect(redactor.redact("x sk-value-aaaa y")).toBe(`x ${Redactor.MASK} y`)
        // names are unique per company; other companies may reuse them
        expect((yield* Effect.flip(secrets.create("acme", "OPENAI_API_KEY", "other"))).status).toBe(409)
        const g = yield* secrets.create("globex", "OPENAI_API_KEY", "sk-value-gggg")
        for (const bad of ["", "has space", "-lead", "x".repeat(129)]) {
          expect((yield* Effect.flip(secrets.create("acme", bad, "v"))).status).toBe(422)
        }
        expect((yield* Effect.flip(secrets.create("acme", "empty", ""))).status).toBe(422)
        expect((yield* Effect.flip(secrets.create("", "no-company", "v"))).status).toBe(422)
        expect((yield* secrets.list("acme")).map((m) => m.id)).toEqual([a.id])
        expect(yield* secrets.get(g.id)).toEqual(g)
        // company scoping of get/rotate/delete
        expect((yield* Effect.flip(secrets.get(g.id, { companyId: "acme" })))._tag).toBe("SecretNotFound")
        expect((yield* Effect.flip(secrets.rotate(g.id, "x-value", { companyId: "acme" })))._tag).toBe("SecretNotFound")
        expect((yield* secrets.get(g.id)).version).toBe(1)
        expect((yield* Effect.flip(secrets.delete(g.id, { companyId: "acme" })))._tag).toBe("SecretNotFound")
        expect((yield* Effect.flip(secrets.rotate("missing", "x-value")))._tag).toBe("SecretNotFound")

        // ciphertext: versioned prefix, not the value, different for equal values (random IV)
        const same = yield* secrets.create("acme", "same", "sk-value-aaaa")
        const rows = yield* sql<{ secret_id: string; ciphertext: string }>`SELECT secret_id, ciphertext FROM secret_versions ORDER BY secret_id`
        for (const r of rows) {
          expect(r.ciphertext.startsWith("v1.")).toBe(true)
          expect(r.ciphertext).not.toContain("sk-value")
        }
        const ca = rows.find((r) => r.secret_id === a.id)!.ciphertext
        expect(ca).not.toBe(rows.find((r) => r.secret_id === same.id)!.ciphertext)
        // a ciphertext moved onto another secret's row does not decrypt (AAD binds company, id, version)
        yield* sql`INSERT INTO plugin_configs (plugin_id, company_id, config, updated_at) VALUES ('p', 'acme', ${JSON.stringify({ s: ref(same.id) })}, 0)`
        yield* sql`UPDATE secret_versions SET ciphertext = ${ca} WHERE secret_id = ${same.id}`
        const moved = yield* Effect.flip(secrets.resolve("p", "acme", same.id, "s"))
        expect(moved._tag).toBe("SecretKeyError")
        expect(moved.message).toBe(`secret "${same.id}" version 1 does not decrypt: wrong secrets key or tampered data`)

        // delete removes the secret and its ciphertexts; the name is free again
        yield* secrets.rotate(a.id, "sk-value-bbbb")
        yield* secrets.delete(a.id)
        expect((yield* Effect.flip(secrets.get(a.id)))._tag).toBe("SecretNotFound")
        expect(yield* sql`SELECT * FROM secret_versions WHERE secret_id = ${a.id}`).toEqual([])
        expect((yield* Effect.flip(secrets.delete(a.id)))._tag).toBe("SecretNotFound")
        expect((yield* secrets.create("acme", "OPENAI_API_KEY", "sk-value-cccc")).version).toBe(1)
      }).pipe(Effect.provide(storeLayer(db, { key: Redacted.make(Buffer.alloc(32, 7).toString("base64")) }))))

    it.scoped("store: a different key cannot read values written with another", () =>
      Effect.gen(function* () {
        const dbLayer = freshDatabase(db)
        const ctx = yield* Layer.build(dbLayer)
        const keyA = Redacted.make(Buffer.alloc(32, 1).toString("hex"))
        const keyB = Redacted.make(Buffer.alloc(32, 2).toString("hex"))
        const storeWith = (key: Redacted.Redacted<string>) =>
          Effect.provide(Effect.provide(SecretStore.make({ key }), Redactor.layer), ctx)
        const a = yield* storeWith(keyA)
        const s = yield* a.create("acme", "k", "value-under-a")
        yield* Effect.provide(Effect.flatMap(SqlClient.SqlClient, (sql) =>
          sql`INSERT INTO plugin_configs (plugin_id, company_id, config, updated_at) VALUES ('p', 'acme', ${JSON.stringify({ k: ref(s.id) })}, 0)`), ctx)
        expect(yield* a.resolve("p", "acme", s.id, "k")).toBe("value-under-a")
        const b = yield* storeWith(keyB)
        expect((yield* Effect.flip(b.resolve("p", "acme", s.id, "k")))._tag).toBe("SecretKeyError")
      }))
  })
}

describe("secrets key", () => {
  it.effect("GANTRY_SECRETS_KEY: 32 bytes as hex, base64 or base64url; anything else is refused without echoing it", () =>
    Effect.gen(function* () {
      const bytes = randomBytes(32)
      for (const text of [bytes.toString("hex"), bytes.toString("base64"), bytes.toString("base64url"), `  ${bytes.toString("hex").toUpperCase()}\n`]) {
        expect((yield* SecretStore.parseKey(text, "GANTRY_SECRETS_KEY")).equals(bytes)).toBe(true)
      }
      for (const text of ["short-key-material", randomBytes(16).toString("base64"), randomBytes(33).toString("hex"), "zz".repeat(32)]) {
        const e = yield* Effect.flip(SecretStore.parseKey(text, "GANTRY_SECRETS_KEY"))
        expect(e._tag).toBe("SecretKeyError")
        expect(e.message).not.toContain(text)
        expect(e.message).toMatch(/^GANTRY_SECRETS_KEY must be 32 bytes/)
      }
    }))

  it.scoped("the key file is created once with 0600, reused, and refused when others can read it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const dataDir = join(dir, "data")
      const ctx = yield* Layer.build(freshDatabase(testDbs[0]!))
      const store = Effect.provide(Effect.provide(SecretStore.make({ dataDir }), Redactor.layer), ctx)
      const s1 = yield* store
      expect(existsSync(join(dataDir, SecretStore.KEY_FILE))).toBe(false) // nothing until first use
      const m = yield* s1.create("acme", "k", "value-one")
      const file = join(dataDir, SecretStore.KEY_FILE)
      expect(statSync(file).mode & 0o777).toBe(0o600)
      const key = readFileSync(file, "utf8")
      expect(Buffer.from(key.trim(), "base64")).toHaveLength(32)
      // a second store on the same data dir reads the same key
      const s2 = yield* store
      yield* Effect.provide(Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql`INSERT INTO plugin_configs (plugin_id, company_id, config, updated_at) VALUES ('p', 'acme', ${JSON.stringify({ k: ref(m.id) })}, 0)`), ctx)
      expect(yield* s2.resolve("p", "acme", m.id, "k")).toBe("value-one")
      expect(readFileSync(file, "utf8")).toBe(key)
      // group/world-readable key file: refused with a clear message
      chmodSync(file, 0o644)
      const s3 = yield* store
      const e = yield* Effect.flip(s3.resolve("p", "acme", m.id, "k"))
      expect(e._tag).toBe("SecretKeyError")
      expect(e.message).toBe(`secrets key file ${file} has mode 0644; it must be 0600 (chmod 600 it)`)
      // a malformed key file
      writeFileSync(file, "nope\n", { mode: 0o600 })
      chmodSync(file, 0o600)
      const s4 = yield* store
      expect((yield* Effect.flip(s4.create("acme", "k2", "v-two"))).message).toMatch(/^secrets key file .* must be 32 bytes/)
      // an invalid GANTRY_SECRETS_KEY fails the store at construction
      const bad = yield* Effect.flip(Effect.provide(Effect.provide(SecretStore.make({ key: Redacted.make("abc") }), Redactor.layer), ctx))
      expect(bad.message).toMatch(/^GANTRY_SECRETS_KEY must be 32 bytes/)
    }))

  it.live("no child processes are left behind", () => Effect.sync(() => expect(childPids()).toEqual([])))
})
