// `gantry demo`: a scripted tour on a fresh temporary instance (temp data dir, SQLite, the server on a
// free loopback port in this process), driven over real HTTP like any client; everything (workers,
// sandboxes, the temp dir) is gone when it returns.
import { Command as Proc, HttpServer } from "@effect/platform"
import { Clock, Console, Context, Effect, Layer, Logger, LogLevel, Option, Schema } from "effect"
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Agent, Company, Environment, Lease, Run, Secret } from "../server/Api.js"
import { ApiTokens } from "../server/Auth.js"
import * as Server from "../server/Server.js"
import { decodeProbe, exitCodeOf, followRun, probeLines, type LeaseJson } from "./client.js"
import { type ClientError, describeError, GantryClient, layer as clientLayer, TransportError } from "./http.js"
import { bootPlugins, repoRoot } from "./serve.js"

const AGENT_SCRIPT = `for i in 1 2 3; do echo "step $i of 3"; sleep 0.3; done
echo "the secret reached the sandbox as API_KEY (\${#API_KEY} characters)"
echo "workspace: $(pwd)"`

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s)
const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s)
const write = (text: string) => Effect.sync(() => void process.stdout.write(text))

const decode = <A, I>(schema: Schema.Schema<A, I>) => (raw: unknown) =>
  Schema.decodeUnknown(schema)(raw).pipe(Effect.mapError((e) => new TransportError({ url: "", message: `unexpected answer: ${e.message}` })))

/** The fake-sandbox worker must be bundled (`npm run build`); do it on a fresh checkout. */
const ensureBuilt = Effect.gen(function* () {
  const plugin = join(repoRoot, "plugins", "fake-sandbox")
  const worker = join(plugin, "dist", "worker.js")
  const stale = !existsSync(worker) || statSync(join(plugin, "src")).mtimeMs > statSync(worker).mtimeMs
  if (!stale) return
  yield* Console.log(dim("building the bundled plugin workers (npm run build)…"))
  const code = yield* Proc.exitCode(Proc.make(process.execPath, join(repoRoot, "scripts", "build.mjs")).pipe(
    Proc.workingDirectory(repoRoot), Proc.stdout("inherit"), Proc.stderr("inherit")))
  if (code !== 0) return yield* new TransportError({ url: "", message: `npm run build failed (exit ${code})` })
})

const lifecycle = (l: LeaseJson): string => {
  const ttl = (l.policy as { ttlMs?: unknown } | null)?.ttlMs
  const at = (ms: number | null) => (ms === null ? "-".padEnd(13) : new Date(ms).toISOString().slice(11, 23) + "Z")
  const written = typeof ttl === "number" ? l.deadlineAt - ttl : null
  const rows: Array<string> = [`  lease ${l.id} on ${l.provider}, sandbox ${l.providerLeaseId ?? "-"}`]
  rows.push(`    acquiring  ${at(written)}             lease row written before the provider was asked`)
  if (l.acquiredAt !== null) {
    rows.push(`    active     ${at(l.acquiredAt)}  ${`+${written === null ? "?" : l.acquiredAt - written} ms`.padEnd(10)} the provider returned the sandbox`)
  }
  if (l.releasedAt !== null) {
    const why = l.status === "released" ? "the run's scope closed with success → releaseLease" : l.failureReason ?? ""
    rows.push(`    ${l.status.padEnd(10)} ${at(l.releasedAt)}  ${`+${l.releasedAt - (l.acquiredAt ?? l.releasedAt)} ms`.padEnd(10)} ${why}`)
  } else {
    rows.push(`    ${l.status}`)
  }
  return rows.join("\n")
}

/** Indent streamed output ("  │ ") across chunk boundaries. */
const prefixer = () => {
  const state = { atStart: true }
  const indent = (chunk: string) => {
    let out = ""
    for (const piece of chunk.split(/(?<=\n)/)) {
      if (piece === "") continue
      out += (state.atStart ? "  │ " : "") + piece
      state.atStart = piece.endsWith("\n")
    }
    return out
  }
  return { indent, state }
}

const tour = (dir: string, started: number) =>
  Effect.gen(function* () {
    const api = yield* GantryClient
    let n = 0
    const step = (title: string, detail: string) => Console.log(`\n${bold(`[${++n}/7] ${title}`)}  ${dim(detail)}`)

    yield* step("company", "POST /api/companies")
    const company = yield* Effect.flatMap(api.post("/api/companies", { name: "Acme (demo)" }), decode(Company))
    yield* Console.log(`  ${company.name}: ${company.id}`)

    yield* step("secret", `POST /api/companies/${company.id.slice(0, 8)}…/secrets (stored encrypted; the API only ever shows metadata)`)
    const secret = yield* Effect.flatMap(api.post(`/api/companies/${company.id}/secrets`, { name: "api-key", value: "demo-s3cret-value" }), decode(Secret))
    yield* Console.log(`  ${secret.name}: ${secret.id} (version ${secret.version})`)

    const inventoryFile = join(dir, "fake-sandbox", "inventory.json")
    const config = { provider: "fake-sandbox/fake", inventoryFile, workspaceRoot: join(dir, "fake-sandbox", "workspaces") }
    yield* step("sandbox environment", "POST /api/companies/:id/environments, driver sandbox on the fake-sandbox plugin")
    const env = yield* Effect.flatMap(api.post(`/api/companies/${company.id}/environments`, { name: "fake-sandbox", driver: "sandbox", config }), decode(Environment))
    yield* Console.log(`  ${env.name}: ${env.id}\n  config: ${JSON.stringify(env.config)}`)

    yield* step("probe", "POST /api/environments/:id/probe: acquire → execute `true` → release with a fresh lease")
    const probe = yield* Effect.flatMap(api.post(`/api/environments/${env.id}/probe`), decodeProbe)
    yield* Console.log(probeLines(probe))
    if (!probe.ok) return yield* new TransportError({ url: "", message: `the probe failed: ${probe.summary}` })

    yield* step("agent", "POST /api/companies/:id/agents: a command, its env (the secret by reference), a default environment")
    const agent = yield* Effect.flatMap(api.post(`/api/companies/${company.id}/agents`, {
      name: "stepper", command: "sh", args: ["-c", AGENT_SCRIPT],
      env: { API_KEY: { type: "secret_ref", secretId: secret.id } }, defaultEnvironmentId: env.id, timeoutMs: 30_000
    }), decode(Agent))
    yield* Console.log(`  ${agent.name}: ${agent.id}\n  command: sh -c '${AGENT_SCRIPT.replace(/\n/g, "; ")}'`)

    yield* step("run", "POST /api/agents/:id/runs, then GET /api/runs/:id/output (Server-Sent Events) as it happens")
    const run0 = yield* Effect.flatMap(api.post(`/api/agents/${agent.id}/runs`, {}), decode(Run))
    yield* Console.log(`  run ${run0.id}: ${run0.status}`)
    const out = prefixer()
    const run = yield* followRun(run0.id, (c) => Effect.suspend(() => write(out.indent(c.stream === "system" ? `[gantry] ${c.chunk}` : c.chunk))))
    if (!out.state.atStart) yield* write("\n")
    const took = run.startedAt && run.finishedAt ? Date.parse(run.finishedAt) - Date.parse(run.startedAt) : 0
    yield* Console.log(`  run ${run.status}, exit code ${run.exitCode ?? "-"}, ${took} ms`)

    yield* step("lease lifecycle", `GET /api/runs/:id/leases`)
    const leases = yield* Effect.flatMap(api.get(`/api/runs/${run.id}/leases`), decode(Schema.Array(Lease)))
    for (const l of leases) yield* Console.log(lifecycle(l))
    const live = yield* Effect.try({
      try: () => existsSync(inventoryFile) ? (JSON.parse(readFileSync(inventoryFile, "utf8")) as { sandboxes?: Array<unknown> }).sandboxes?.length ?? 0 : 0,
      catch: (e) => new TransportError({ url: "", message: `could not read the fake-sandbox inventory: ${String(e)}` })
    })
    yield* Console.log(`  sandboxes still live in the fake-sandbox inventory: ${live}`)

    if (exitCodeOf(run) !== 0) return yield* new TransportError({ url: "", message: `the demo run ended ${run.status}: ${run.error ?? ""}` })
    const now = yield* Clock.currentTimeMillis
    yield* Console.log(dim(`\ntour done in ${((now - started) / 1000).toFixed(1)} s; shutting the instance down…`))
  })

/** Client errors in their own words; start-up errors (config, database, listen) by their message. */
const messageOf = (e: ClientError | { readonly _tag: string; readonly message?: string }) =>
  e._tag === "ApiError" || e._tag === "TransportError" ? describeError(e as ClientError) : `${e._tag}: ${e.message ?? ""}`

export const demo = Effect.gen(function* () {
  const started = yield* Clock.currentTimeMillis
  yield* Console.log(bold("gantry demo") + dim(" — a fresh temporary instance, driven over its HTTP API"))
  yield* ensureBuilt
  const outcome = yield* Effect.scoped(
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "gantry-demo-"))),
        (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
      )
      const ctx = yield* Layer.build(Server.layer({ bindHost: "127.0.0.1", port: 0, dataDir: dir }))
      yield* Effect.provide(bootPlugins, ctx)
      const server = Context.get(ctx, HttpServer.HttpServer)
      const url = server.address._tag === "TcpAddress" ? `http://127.0.0.1:${server.address.port}` : ""
      const token = yield* Effect.flatMap(Effect.provide(ApiTokens, ctx), (t) => t.ensureAdmin)
      if (Option.isNone(token)) return yield* new TransportError({ url, message: "a fresh instance has no admin token" })
      const ready = yield* Clock.currentTimeMillis
      yield* Console.log(`  serving on ${url} (SQLite in ${dir}), plugins started, in ${ready - started} ms`)
      yield* Console.log(`  admin token from the first start: ${token.value.slice(0, 18)}…`)
      return yield* tour(dir, started).pipe(Effect.provide(clientLayer({ baseUrl: url, token: token.value })), Effect.either)
    })
  )
  const done = yield* Clock.currentTimeMillis
  if (outcome._tag === "Left") {
    yield* Console.error(`gantry demo: error: ${messageOf(outcome.left)}`)
    return yield* Effect.sync(() => void (process.exitCode = 1))
  }
  yield* Console.log(`instance stopped, workers and sandboxes gone, temp dir removed; ${((done - started) / 1000).toFixed(1)} s in all`)
}).pipe(
  Effect.catchAll((e) => Effect.zipRight(Console.error(`gantry demo: error: ${messageOf(e)}`), Effect.sync(() => void (process.exitCode = 1)))),
  // the instance's own info logs (run-token key, …) are noise here; warnings and errors still show
  Logger.withMinimumLogLevel(LogLevel.Warning)
)
