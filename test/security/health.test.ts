// Health (SPEC §16): `/api/health` runs `SELECT 1` against the database. A real `gantry serve` on a
// fresh PostgreSQL database; the database then refuses connections (its sessions terminated): health
// answers 503 `degraded` with a reason that tells an anonymous caller nothing about the set-up, and
// `ok` again once the database is back. PostgreSQL only (a SQLite file cannot be taken away from an
// open connection); skipped with the usual notice without GANTRY_TEST_PG_URL.
import { afterAll, describe, expect, it } from "@effect/vitest"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import { PG_URL, testDbs } from "../db.js"
import { childPids } from "../helpers.js"
import { client, ok, request, startServer, stopServer, waitFor } from "../server/support.js"

const pgDb = testDbs.find((d) => d.kind === "pg")
const before = childPids()
const work = mkdtempSync(join(tmpdir(), "gantry-health-"))

afterAll(() => {
  expect(childPids().filter((p) => !before.includes(p))).toEqual([])
  rmSync(work, { recursive: true, force: true })
})

const onMaintenance = async (sql: string) => {
  const c = new pg.Client({ connectionString: PG_URL })
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

describe.skipIf(!pgDb)("health against a database that goes away [pg]", () => {
  it("ok → degraded (503, reason, nothing about the instance) → ok", async () => {
    const db = await pgDb!.create()
    const name = new URL(db.url).pathname.slice(1)
    const server = await startServer({ dataDir: join(work, "data"), databaseUrl: db.url, startTimeoutMs: 120_000 })
    try {
      expect(ok(await request(server.url, "GET", "/api/health"))).toEqual({ ok: true, status: "ok" })
      expect(ok(await client(server.url, server.adminToken).get("/api/health"))).toMatchObject({ ok: true, status: "ok", database: "pg" })

      await onMaintenance(`ALTER DATABASE ${name} WITH ALLOW_CONNECTIONS false`)
      await onMaintenance(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}' AND pid <> pg_backend_pid()`)
      const degraded = await waitFor("health to say degraded", async () => {
        const r = await request(server.url, "GET", "/api/health")
        return r.status === 503 ? r : undefined
      }, 30_000)
      expect(degraded.body).toEqual({ ok: false, status: "degraded", reason: "database unavailable" })
      expect(degraded.text).not.toContain(name)

      await onMaintenance(`ALTER DATABASE ${name} WITH ALLOW_CONNECTIONS true`)
      await waitFor("health to recover", async () => (await request(server.url, "GET", "/api/health")).status === 200, 30_000)
      expect(ok(await request(server.url, "GET", "/api/health"))).toEqual({ ok: true, status: "ok" })
    } finally {
      await onMaintenance(`ALTER DATABASE ${name} WITH ALLOW_CONNECTIONS true`).catch(() => undefined)
      await stopServer(server)
      await db.drop()
    }
  }, 120_000)
})
