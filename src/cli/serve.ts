// `gantry serve`: the server on SQLite (default) or PostgreSQL with the bundled plugins installed and
// enabled; prints the URL, the admin token (first start only) and next steps.
import { Console, Effect, Layer } from "effect"
import { existsSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { packageName } from "../host/packages.js"
import { PluginHost } from "../host/PluginHost.js"
import { PluginRecords } from "../host/PluginRecords.js"
import { ApiTokens } from "../server/Auth.js"
import * as Server from "../server/Server.js"
import { HttpServer } from "@effect/platform"

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..")

/** Plugins shipped in `plugins/` that `serve` installs and enables. */
export const bundledPlugins = (): Array<string> =>
  ["fake-sandbox", "bwrap-sandbox", "examples/hello-promise", "examples/hello-effect"]
    .map((p) => join(repoRoot, "plugins", p))
    .filter((p) => existsSync(join(p, "manifest.json")) && existsSync(join(p, "dist", "worker.js")))

export interface ServeOptions {
  readonly port: number
  readonly bindHost: string
  readonly dataDir: string
  readonly databaseUrl: string | undefined
  readonly publicUrl: string | undefined
  readonly quiet?: boolean
}

/** Install (first start) or restore the plugins, start those that should run. */
export const bootPlugins = Effect.gen(function* () {
  const host = yield* PluginHost
  yield* host.restore
  const known = new Set((yield* host.list).map((p) => p.pluginId))
  // a bundled plugin the operator uninstalled stays uninstalled
  const records = yield* Effect.serviceOption(PluginRecords)
  const uninstalled = new Set(records._tag === "Some"
    ? (yield* records.value.list).filter((r) => r.status === "uninstalled").map((r) => r.root)
    : [])
  for (const dir of bundledPlugins()) {
    if (uninstalled.has(dir)) continue
    const installed = yield* Effect.either(host.install(dir, { kind: "bundled", location: dir, sha512: null, packageName: packageName(dir), linked: false }))
    if (installed._tag === "Left" && installed.left._tag !== "PluginConflict") yield* Console.error(`plugin at ${dir}: ${installed.left.message}`)
  }
  for (const p of yield* host.list) {
    if (p.status === "disabled" || p.status === "error") continue
    const started = yield* Effect.either(host.start(p.pluginId))
    if (started._tag === "Left") yield* Console.error(`plugin ${p.pluginId} did not start: ${started.left.message}`)
  }
  return known
})

/** The serve program: runs until interrupted (SIGINT/SIGTERM close every scope: runs, leases, workers). */
export const serve = (o: ServeOptions) =>
  Layer.launch(
    Layer.effectDiscard(
      Effect.gen(function* () {
        yield* bootPlugins
        const server = yield* HttpServer.HttpServer
        const port = server.address._tag === "TcpAddress" ? server.address.port : o.port
        const url = `http://${o.bindHost.includes(":") ? `[${o.bindHost}]` : o.bindHost}:${port}`
        const token = yield* (yield* ApiTokens).ensureAdmin
        const lines = [
          `Gantry is serving on ${url}  (API docs: ${url}/api/docs, OpenAPI: ${url}/api/openapi.json)`,
          `data: ${resolve(o.dataDir)}  database: ${o.databaseUrl ? o.databaseUrl.replace(/:[^:@/]*@/, ":***@") : join(resolve(o.dataDir), "gantry.db")}`
        ]
        if (token._tag === "Some") {
          lines.push(
            ``,
            `Admin token (shown once, stored hashed; keep it): ${token.value}`,
            ``,
            `Next steps:`,
            `  export GANTRY_URL=${url} GANTRY_TOKEN=${token.value}`,
            `  curl -s -H "Authorization: Bearer $GANTRY_TOKEN" $GANTRY_URL/api/plugins`,
            `  node bin/gantry.mjs plugins list`,
            `  npm run demo`
          )
        } else {
          lines.push(``, `Next steps (the admin token was printed on the first start):`,
            `  export GANTRY_URL=${url} GANTRY_TOKEN=<your admin token>`,
            `  node bin/gantry.mjs plugins list`, `  npm run demo`)
        }
        if (!o.quiet) yield* Console.log(lines.join("\n"))
      })
    ).pipe(
      Layer.provide(Server.layer({
        bindHost: o.bindHost,
        port: o.port,
        publicUrl: o.publicUrl,
        dataDir: o.dataDir,
        databaseUrl: o.databaseUrl
      }))
    )
  )
