// HTTP client subcommands of `gantry` (companies, plugins, secrets, env, agents, run, runs): each talks
// to a running server (--url / GANTRY_URL, --token / GANTRY_TOKEN), prints a table or lines for people
// and raw JSON with --json; API errors go to stderr with a non-zero exit code.
import { Args, Command as Cli, Options } from "@effect/cli"
import { NodeStream } from "@effect/platform-node"
import { Clock, Config, Console, Data, Duration, Effect, Fiber, Option, Redacted, Schedule, Schema, Stream } from "effect"
import { Agent, Company, Environment, Lease, LocalGrant, Plugin, ProviderPolicy, Run, Secret, Token, TokenWithValue } from "../server/Api.js"
import { homedir } from "node:os"
import { join, resolve } from "node:path"
import { type ClientError, describeError, GantryClient, layer as clientLayer, TransportError } from "./http.js"
import { initCommand } from "./init.js"

export type RunJson = typeof Run.Type
export type LeaseJson = typeof Lease.Type

// ---- output helpers ----

const write = (stream: "stdout" | "stderr", text: string) => Effect.sync(() => void process[stream].write(text))
const isTty = (stream: "stdout" | "stderr") => Boolean(process[stream].isTTY)

const iso = (s: string | null | undefined) => (s ? s.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-")
const clock = (ms: number | null | undefined) => (ms === null || ms === undefined ? "-" : new Date(ms).toISOString().slice(11, 23) + "Z")
const short = (id: string | null | undefined) => (id ? id.slice(0, 8) : "-")

/** Columns padded to the widest cell; the last column is not padded. */
export const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  if (rows.length === 0) return "(none)"
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()
  return [line(headers), ...rows.map(line)].join("\n")
}

const keyValues = (pairs: ReadonlyArray<readonly [string, string]>) => {
  const w = Math.max(...pairs.map(([k]) => k.length))
  return pairs.map(([k, v]) => `${(k + ":").padEnd(w + 1)} ${v}`).join("\n")
}

const decode = <A, I>(schema: Schema.Schema<A, I>) => (raw: unknown): Effect.Effect<A, TransportError> =>
  Schema.decodeUnknown(schema)(raw).pipe(
    Effect.mapError((e) => new TransportError({ url: "", message: `unexpected answer from the server: ${e.message}` }))
  )

/** Raw JSON with --json; otherwise the human rendering of the decoded value. */
const show = <A, I>(json: boolean, schema: Schema.Schema<A, I>, raw: unknown, human: (a: A) => string) =>
  json ? Console.log(JSON.stringify(raw, null, 2)) : Effect.flatMap(decode(schema)(raw), (a) => Console.log(human(a)))

const parseJsonOption = (name: string, text: string) =>
  Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: (e) => new TransportError({ url: "", message: `--${name} is not valid JSON: ${(e as Error).message}` })
  }).pipe(
    Effect.filterOrFail(
      (v): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v),
      () => new TransportError({ url: "", message: `--${name} must be a JSON object` })
    )
  )

/** `KEY=VALUE` pairs (repeated options) into a record. */
const pairs = (name: string, items: ReadonlyArray<string>) =>
  Effect.forEach(items, (item) => {
    const i = item.indexOf("=")
    return i <= 0
      ? Effect.fail(new TransportError({ url: "", message: `--${name} expects KEY=VALUE, got "${item}"` }))
      : Effect.succeed([item.slice(0, i), item.slice(i + 1)] as const)
  }).pipe(Effect.map((entries) => Object.fromEntries(entries) as Record<string, string>))

const readStdin = NodeStream.fromReadable<TransportError>(
  () => process.stdin,
  (e) => new TransportError({ url: "", message: `could not read stdin: ${String(e)}` })
).pipe(Stream.decodeText(), Stream.mkString, Effect.map((s) => s.replace(/\r?\n$/, "")))

// ---- progress on stderr ----

const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"]

/** A spinner (TTY) or a "still …" line every 5 s (pipes) on stderr while `self` runs. */
export const withProgress = <A, E, R>(label: string, self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.gen(function* () {
    const start = yield* Clock.currentTimeMillis
    const tty = isTty("stderr")
    const tick = Effect.gen(function* () {
      const secs = ((yield* Clock.currentTimeMillis) - start) / 1000
      if (tty) yield* write("stderr", `\r\x1b[K${SPINNER[Math.floor(secs * 10) % SPINNER.length]} ${label} ${secs.toFixed(1)}s`)
      else if (secs >= 5) yield* write("stderr", `… still ${label} (${Math.round(secs)}s)\n`)
    })
    if (!tty) yield* write("stderr", `${label}…\n`)
    const fiber = yield* Effect.fork(Effect.repeat(tick, Schedule.spaced(tty ? "100 millis" : "5 seconds")).pipe(Effect.delay(tty ? "100 millis" : "5 seconds")))
    return yield* self.pipe(Effect.ensuring(Effect.zipRight(Fiber.interrupt(fiber), tty ? write("stderr", "\r\x1b[K") : Effect.void)))
  })

// ---- runs: follow the output, the lease lifecycle, the exit code ----

/** The exit code `gantry run` ends with: the command's own, else 124 timed out, 130 cancelled, 1 failed. */
export const exitCodeOf = (run: RunJson): number => {
  switch (run.status) {
    case "succeeded":
      return run.exitCode ?? 0
    case "timed_out":
      return 124
    case "cancelled":
      return 130
    default:
      return run.exitCode !== null && run.exitCode > 0 ? run.exitCode : 1
  }
}

/** A run's lease as one line: `acquiring → active → released` with times (acquiring is when the row
 * was written: deadline − ttl). */
export const leaseLifecycle = (l: LeaseJson): string => {
  const ttl = (l.policy as { ttlMs?: unknown } | null)?.ttlMs
  const writtenAt = typeof ttl === "number" ? l.deadlineAt - ttl : null
  const ms = (from: number | null, to: number | null) => (from !== null && to !== null ? ` (+${to - from}ms)` : "")
  const steps = [`acquiring ${clock(writtenAt)}`]
  if (l.acquiredAt !== null) steps.push(`active ${clock(l.acquiredAt)}${ms(writtenAt, l.acquiredAt)}`)
  if (l.status !== "acquiring" && l.status !== "active") {
    steps.push(`${l.status} ${clock(l.releasedAt)}${ms(l.acquiredAt ?? writtenAt, l.releasedAt)}`)
  }
  const why = l.failureReason ? `: ${l.failureReason}` : ""
  return `lease ${short(l.id)} ${l.provider} (${l.providerLeaseId ?? "no sandbox"}): ${steps.join(" → ")}${why}`
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"])

/** The stream ended while the run was still going (a replica that does not run it answers the log so
 * far and the run as it is now): look again shortly. */
class NotFinished extends Data.TaggedError("NotFinished")<{}> {}

const reconnect = Schedule.exponential("200 millis").pipe(Schedule.either(Schedule.spaced("5 seconds")), Schedule.intersect(Schedule.recurs(20)))

/** Follow a run's output (SSE) until its `end` event; `onChunk` gets each chunk as it arrives. A dropped
 * connection is resumed after the last seen event id. */
export const followRun = <E, R>(runId: string, onChunk: (c: { readonly stream: string; readonly chunk: string }) => Effect.Effect<void, E, R>) =>
  Effect.gen(function* () {
    const client = yield* GantryClient
    const state: { last: string | undefined } = { last: undefined }
    const once = Effect.suspend(() =>
      client.events(`/api/runs/${encodeURIComponent(runId)}/output`, state.last ? { lastEventId: state.last } : {}).pipe(
        Stream.takeUntil((ev) => ev.event === "end"),
        Stream.runFoldEffect(undefined as RunJson | undefined, (end, ev) =>
          Effect.gen(function* () {
            const data = yield* Effect.try({
              try: () => JSON.parse(ev.data) as unknown,
              catch: () => new TransportError({ url: client.baseUrl, message: `unreadable ${ev.event} event: ${ev.data.slice(0, 200)}` })
            })
            if (ev.event === "end") return yield* decode(Run)(data)
            // the server's stream failed: reconnect after the last event seen
            if (ev.event === "error") return yield* new TransportError({ url: client.baseUrl, message: `the output stream of run ${runId} failed: ${ev.data.slice(0, 200)}` })
            yield* onChunk({ stream: ev.event, chunk: String((data as { chunk?: unknown }).chunk ?? "") })
            if (ev.id !== undefined) state.last = ev.id
            return end
          })),
        Effect.flatMap((end): Effect.Effect<RunJson, TransportError | NotFinished> =>
          end === undefined
            ? Effect.fail(new TransportError({ url: client.baseUrl, message: `the output stream of run ${runId} ended before the run did` }))
            : TERMINAL.has(end.status) ? Effect.succeed(end) : Effect.fail(new NotFinished()))
      ))
    const tagOf = (e: unknown) => (e as { readonly _tag?: unknown } | null)?._tag
    return yield* once.pipe(
      Effect.retry({ while: (e) => tagOf(e) === "NotFinished", schedule: Schedule.spaced("1 second") }),
      Effect.retry({ while: (e) => tagOf(e) === "TransportError", schedule: reconnect }),
      Effect.catchIf((e): e is NotFinished => e instanceof NotFinished, () => Effect.dieMessage("unreachable: NotFinished is retried"))
    )
  })

const getLeases = (runId: string) =>
  Effect.flatMap(GantryClient, (c) => c.get(`/api/runs/${encodeURIComponent(runId)}/leases`)).pipe(Effect.flatMap(decode(Schema.Array(Lease))))

/** Stream a run to stdout/stderr (with a "waiting" spinner while it is silent), then its lease lifecycle. */
export const attach = (runId: string, o: { readonly quietLeases?: boolean } = {}) =>
  Effect.gen(function* () {
    const tty = isTty("stderr")
    const t0 = yield* Clock.currentTimeMillis
    const p = { lastOutput: t0, spinning: false, atLineStart: true, lastNote: t0 }
    const clear = Effect.suspend(() => (p.spinning ? Effect.zipRight(write("stderr", "\r\x1b[K"), Effect.sync(() => void (p.spinning = false))) : Effect.void))
    const tick = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const silent = now - p.lastOutput
      if (tty && silent >= 700 && p.atLineStart) {
        p.spinning = true
        yield* write("stderr", `\r\x1b[K${SPINNER[Math.floor(now / 100) % SPINNER.length]} waiting for output of run ${short(runId)}… ${((now - t0) / 1000).toFixed(1)}s`)
      } else if (!tty && silent >= 10_000 && now - p.lastNote >= 10_000) {
        p.lastNote = now
        yield* write("stderr", `${p.atLineStart ? "" : "\n"}… run ${short(runId)} still running (${Math.round((now - t0) / 1000)}s)\n`)
        p.atLineStart = true
      }
    })
    const spinner = yield* Effect.fork(Effect.repeat(tick, Schedule.spaced(tty ? "100 millis" : "1 second")))
    const run = yield* followRun(runId, (c) =>
      Effect.gen(function* () {
        yield* clear
        p.lastOutput = yield* Clock.currentTimeMillis
        if (c.chunk.length > 0) p.atLineStart = c.chunk.endsWith("\n")
        yield* write(c.stream === "stderr" ? "stderr" : "stdout", c.stream === "system" ? `[gantry] ${c.chunk}${c.chunk.endsWith("\n") ? "" : "\n"}` : c.chunk)
      })).pipe(Effect.ensuring(Effect.zipRight(Fiber.interrupt(spinner), clear)))
    if (!p.atLineStart) yield* write("stdout", "\n")
    const took = run.startedAt && run.finishedAt ? ` in ${Duration.format(Duration.millis(Date.parse(run.finishedAt) - Date.parse(run.startedAt)))}` : ""
    const exit = run.exitCode !== null ? `exit code ${run.exitCode}` : run.signal ? `signal ${run.signal}` : "no exit code"
    yield* write("stderr", `run ${run.id} ${run.status} (${exit})${took}${run.error && run.status !== "succeeded" ? `: ${run.error}` : ""}\n`)
    if (!o.quietLeases) {
      const leases = yield* getLeases(runId)
      if (leases.length === 0) yield* write("stderr", `no lease (the run did not use a sandbox)\n`)
      for (const l of leases) yield* write("stderr", `${leaseLifecycle(l)}\n`)
    }
    return run
  })

// ---- common options and the command wrapper ----

const common = {
  url: Options.text("url").pipe(
    Options.withFallbackConfig(Config.string("GANTRY_URL")),
    Options.withDefault("http://127.0.0.1:3100"),
    Options.withDescription("Server URL (GANTRY_URL; default http://127.0.0.1:3100)")
  ),
  token: Options.redacted("token").pipe(
    Options.withFallbackConfig(Config.redacted("GANTRY_TOKEN")),
    Options.optional,
    Options.withDescription("Bearer token: the admin token or a company token (GANTRY_TOKEN)")
  ),
  json: Options.boolean("json").pipe(Options.withDescription("Print the raw JSON answer on stdout"))
}
interface Common {
  readonly url: string
  readonly token: Option.Option<Redacted.Redacted<string>>
  readonly json: boolean
}

const setExitCode = (code: number) => Effect.sync(() => void (process.exitCode = code))

const report = (e: ClientError) =>
  Effect.zipRight(write("stderr", `gantry: error: ${describeError(e)}\n`), setExitCode(1))

/** A leaf command: the common options, a client for the chosen server, errors reported on stderr. */
const leaf = <const Name extends string, const C extends Cli.Command.Config>(
  name: Name,
  description: string,
  config: C,
  handler: (o: Cli.Command.ParseConfig<C> & Common) => Effect.Effect<void, ClientError, GantryClient>
) =>
  Cli.make(name, { ...config, ...common }, (parsed) => {
    const o = parsed as unknown as Cli.Command.ParseConfig<C> & Common
    return handler(o).pipe(
      Effect.provide(clientLayer({ baseUrl: o.url, token: Option.getOrUndefined(o.token) })),
      Effect.catchAll(report)
    )
  }).pipe(Cli.withDescription(description))

const group = <const Name extends string>(name: Name, description: string, usage: string) =>
  Cli.make(name, {}, () => Effect.zipRight(write("stderr", `usage: gantry ${name} ${usage}\n(see gantry ${name} --help)\n`), setExitCode(2))).pipe(
    Cli.withDescription(description))

const arg = (name: string, description: string) => Args.text({ name }).pipe(Args.withDescription(description))
const path = (...parts: ReadonlyArray<string>) => parts.map((p) => (p.startsWith("/") ? p : encodeURIComponent(p))).join("/")

const withClient = <A>(f: (c: GantryClient["Type"]) => Effect.Effect<A, ClientError>) => Effect.flatMap(GantryClient, f)

// ---- companies ----

const companyRows = (cs: ReadonlyArray<typeof Company.Type>) =>
  table(["ID", "NAME", "DEFAULT ENV", "CREATED"], cs.map((c) => [c.id, c.name, c.defaultEnvironmentId ?? "-", iso(c.createdAt)]))

const companies = group("companies", "Companies (tenants)", "list | create --name <name>").pipe(
  Cli.withSubcommands([
    leaf("list", "List companies", {}, (o) =>
      withClient((c) => c.get("/api/companies")).pipe(Effect.flatMap((raw) => show(o.json, Schema.Array(Company), raw, companyRows)))),
    leaf("create", "Create a company (admin token)", {
      name: Options.text("name").pipe(Options.withDescription("Company name")),
      id: Options.text("id").pipe(Options.optional, Options.withDescription("Choose the id (default: a UUID)"))
    }, (o) =>
      withClient((c) => c.post("/api/companies", { name: o.name, ...(Option.isSome(o.id) ? { id: o.id.value } : {}) })).pipe(
        Effect.flatMap((raw) => show(o.json, Company, raw, (co) => `company ${co.name} created: ${co.id}`))
      ))
  ])
)

// ---- plugins ----

/** A company token sees identity and status only; the operator (admin token) sees everything. */
const pluginDetails = (p: typeof Plugin.Type) =>
  keyValues([
    ["plugin", `${p.pluginId} ${p.version} (${p.displayName})`],
    ["status", p.workerStatus === undefined ? p.status : `${p.status}, worker ${p.workerStatus}${p.pid ? ` (pid ${p.pid})` : ""}, mode ${p.mode}`],
    ...(p.restarts !== undefined ? [["restarts", `${p.restarts} (crashes in window: ${p.crashesInWindow ?? 0})`] as const] : []),
    ...(p.isolation !== undefined ? [["isolation", p.isolation === "unsandboxed" ? "unsandboxed (WARNING: the worker has the host's files and network)" : p.isolation ?? "-"] as const] : []),
    ...(p.health !== undefined ? [["health", p.health === null ? "-" : JSON.stringify(p.health)] as const] : []),
    ...(p.lastError !== undefined ? [["last error", p.lastError ?? "-"] as const] : []),
    ["capabilities", p.capabilities.join(", ") || "-"],
    ...(p.inactiveCapabilities?.length ? [["inactive", p.inactiveCapabilities.join(", ")] as const] : []),
    ...(p.supportedMethods !== undefined ? [["methods", p.supportedMethods.join(", ") || "-"] as const] : []),
    ...(p.source ? [["source", `${p.source.kind} ${p.source.location}${p.source.linked ? " (linked)" : ""}${p.source.sha512 ? ` ${p.source.sha512}` : ""}`] as const] : []),
    ...(p.ignoredFields?.length ? [["ignored fields", p.ignoredFields.join(", ")] as const] : [])
  ])

const pluginId = arg("pluginId", "Plugin id (see `gantry plugins list`)")

/** A local path (./x, ../x, /x, ~/x, x.tgz, dir/x) becomes absolute for the server; anything else is an npm spec. */
export const sourceArg = (source: string): string => {
  const s = source.trim()
  if (s.startsWith("~/")) return join(homedir(), s.slice(2))
  const looksLikePath = s.startsWith(".") || s.startsWith("/") || /\.(tgz|tar\.gz)$/.test(s) || (s.includes("/") && !s.startsWith("@"))
  return looksLikePath ? resolve(s) : s
}
const sourceOption = arg("source", "A plugin folder, a .tgz file, or an npm package spec (name, @scope/name, name@version)")
const allowDowngrade = Options.boolean("allow-downgrade").pipe(Options.withDescription("Accept a version lower than the installed one"))
const drain = Options.boolean("drain").pipe(Options.withDescription("Wait (bounded) for the provider's live leases to end instead of refusing; uninstall also archives its environments"))
const pluginLine = (verb: string) => (p: typeof Plugin.Type) =>
  `plugin ${p.pluginId} ${p.version} ${verb}: ${p.status}, worker ${p.workerStatus}${p.source ? ` (from ${p.source.location}${p.source.sha512 ? `, ${p.source.sha512.slice(0, 23)}…` : ""}${p.source.linked ? ", linked" : ""})` : ""}`

const plugins = group("plugins", "Installed plugins", "list | get <id> | enable <id> | disable <id> | logs <id> | install <source> | upgrade <id> <source> | uninstall <id> | dev <dir> | init <dir>").pipe(
  Cli.withSubcommands([
    initCommand,
    leaf("install", "Install a plugin from a folder, a .tgz or npm, and start it (admin token)", { source: sourceOption }, (o) =>
      withProgress(`installing ${o.source}`, withClient((c) => c.post("/api/plugins", { source: sourceArg(o.source) }))).pipe(
        Effect.flatMap((raw) => show(o.json, Plugin, raw, pluginLine("installed"))))),
    leaf("upgrade", "Replace an installed plugin's package without dropping calls (admin token)", { pluginId, source: sourceOption, allowDowngrade, drain }, (o) =>
      withProgress(`upgrading ${o.pluginId}`, withClient((c) => c.post(path("/api/plugins", o.pluginId, "upgrade"), {
        source: sourceArg(o.source), allowDowngrade: o.allowDowngrade, drain: o.drain
      }))).pipe(Effect.flatMap((raw) => show(o.json, Plugin, raw, pluginLine("running"))))),
    leaf("uninstall", "Stop and remove a plugin; its config, state and logs stay unless --purge (admin token)", {
      pluginId,
      purge: Options.boolean("purge").pipe(Options.withDescription("Also delete the plugin's config, state, logs and job history")),
      drain
    }, (o) =>
      withProgress(`uninstalling ${o.pluginId}`, withClient((c) => c.del(`${path("/api/plugins", o.pluginId)}?purge=${o.purge}&drain=${o.drain}`))).pipe(
        Effect.flatMap((raw) => show(o.json, Schema.Struct({ pluginId: Schema.String, purged: Schema.Boolean }), raw, (r) =>
          `plugin ${r.pluginId} uninstalled${r.purged ? " and purged" : " (config, state and logs kept)"}`)))),
    leaf("dev", "Run a plugin folder linked: rebuild on change, restart the worker gracefully, stream its log (admin token; Ctrl-C stops)", {
      dir: arg("dir", "The plugin folder")
    }, (o) => Effect.flatMap(Effect.promise(() => import("./dev.js")), ({ dev }) => dev(resolve(o.dir)))),
    leaf("list", "List plugins with their status", {}, (o) =>
      withClient((c) => c.get("/api/plugins")).pipe(Effect.flatMap((raw) =>
        show(o.json, Schema.Array(Plugin), raw, (ps) =>
          table(["ID", "VERSION", "STATUS", "WORKER", "PID", "RESTARTS", "LAST ERROR"],
            ps.map((p) => [p.pluginId, p.version, p.status, p.workerStatus ?? "-", p.pid ? String(p.pid) : "-", p.restarts === undefined ? "-" : String(p.restarts), p.lastError ?? "-"])))))),
    leaf("get", "Show one plugin: status, health, last error, supported methods", { pluginId }, (o) =>
      withClient((c) => c.get(path("/api/plugins", o.pluginId))).pipe(Effect.flatMap((raw) => show(o.json, Plugin, raw, pluginDetails)))),
    leaf("enable", "Enable and start a plugin (admin token)", { pluginId }, (o) =>
      withProgress(`starting ${o.pluginId}`, withClient((c) => c.post(path("/api/plugins", o.pluginId, "enable")))).pipe(
        Effect.flatMap((raw) => show(o.json, Plugin, raw, (p) => `plugin ${p.pluginId}: ${p.status}, worker ${p.workerStatus}`)))),
    leaf("disable", "Stop and disable a plugin (admin token)", { pluginId }, (o) =>
      withProgress(`stopping ${o.pluginId}`, withClient((c) => c.post(path("/api/plugins", o.pluginId, "disable")))).pipe(
        Effect.flatMap((raw) => show(o.json, Plugin, raw, (p) => `plugin ${p.pluginId}: ${p.status}, worker ${p.workerStatus}`)))),
    leaf("logs", "A plugin's recent log lines (admin token)", {
      pluginId,
      limit: Options.integer("limit").pipe(Options.withDefault(200), Options.withDescription("How many lines (1–5000)"))
    }, (o) =>
      withClient((c) => c.get(path("/api/plugins", o.pluginId, "logs"), { limit: o.limit })).pipe(Effect.flatMap((raw) =>
        show(o.json, Schema.Array(Schema.Struct({ at: Schema.String, level: Schema.String, message: Schema.String, meta: Schema.optional(Schema.Unknown) })), raw, (lines) =>
          lines.length === 0
            ? "(no log lines)"
            : lines.map((l) => `${iso(l.at)} ${l.level.toUpperCase().padEnd(5)} ${l.message}${l.meta !== undefined && l.meta !== null ? ` ${JSON.stringify(l.meta)}` : ""}`).join("\n")))))
  ])
)

// ---- secrets ----

const companyId = arg("companyId", "Company id (see `gantry companies list`)")
const secretValue = Options.text("value").pipe(Options.withDescription("The secret value, or - to read it from stdin (one trailing newline is dropped)"))
const valueOf = (v: string) => (v === "-" ? readStdin : Effect.succeed(v))

const secrets = group("secrets", "Company secrets (values are write-only)", "list <companyId> | create <companyId> --name <n> --value <v|-> | rotate | delete").pipe(
  Cli.withSubcommands([
    leaf("list", "List a company's secrets (metadata only)", { companyId }, (o) =>
      withClient((c) => c.get(path("/api/companies", o.companyId, "secrets"))).pipe(Effect.flatMap((raw) =>
        show(o.json, Schema.Array(Secret), raw, (ss) =>
          table(["ID", "NAME", "VERSION", "UPDATED"], ss.map((s) => [s.id, s.name, String(s.version), iso(s.updatedAt)])))))),
    leaf("create", "Create a secret", { companyId, name: Options.text("name").pipe(Options.withDescription("Secret name")), value: secretValue }, (o) =>
      Effect.flatMap(valueOf(o.value), (value) => withClient((c) => c.post(path("/api/companies", o.companyId, "secrets"), { name: o.name, value }))).pipe(
        Effect.flatMap((raw) =>
          show(o.json, Secret, raw, (s) =>
            `secret ${s.name} created: ${s.id} (version ${s.version})\nuse it in an agent: gantry agents create ${o.companyId} ... --secret ${s.name.toUpperCase().replace(/[^A-Z0-9_]/g, "_")}=${s.id}`)))),
    leaf("rotate", "Store a new version of a secret", { companyId, secretId: arg("secretId", "Secret id"), value: secretValue }, (o) =>
      Effect.flatMap(valueOf(o.value), (value) => withClient((c) => c.post(path("/api/companies", o.companyId, "secrets", o.secretId, "rotate"), { value }))).pipe(
        Effect.flatMap((raw) => show(o.json, Secret, raw, (s) => `secret ${s.name} rotated: version ${s.version}`)))),
    leaf("delete", "Delete a secret", { companyId, secretId: arg("secretId", "Secret id") }, (o) =>
      withClient((c) => c.del(path("/api/companies", o.companyId, "secrets", o.secretId))).pipe(
        Effect.flatMap((raw) => (o.json ? Console.log(JSON.stringify(raw)) : Console.log(`secret ${o.secretId} deleted`)))))
  ])
)

// ---- environments ----

const envRows = (es: ReadonlyArray<typeof Environment.Type>) =>
  table(["ID", "NAME", "DRIVER", "STATUS", "PROVIDER", "CREATED"],
    es.map((e) => [e.id, e.name, e.driver, e.status, typeof e.config.provider === "string" ? e.config.provider : "-", iso(e.createdAt)]))

const envDetails = (e: typeof Environment.Type) =>
  keyValues([
    ["environment", `${e.name} (${e.id})`],
    ["company", e.companyId],
    ["driver", e.driver],
    ["status", e.status],
    ...(e.description ? [["description", e.description] as const] : []),
    ["config", JSON.stringify(e.config)],
    ["created", iso(e.createdAt)],
    ["updated", iso(e.updatedAt)]
  ])

const leaseRows = (ls: ReadonlyArray<LeaseJson>) =>
  table(["ID", "RUN", "STATUS", "PROVIDER LEASE", "ACQUIRED", "RELEASED", "REASON"],
    ls.map((l) => [l.id, l.runId ?? "(probe)", l.status, l.providerLeaseId ?? "-", clock(l.acquiredAt), clock(l.releasedAt), l.failureReason ?? "-"]))

const ProbeReport = Schema.Struct({
  ok: Schema.Boolean,
  summary: Schema.String,
  steps: Schema.Array(Schema.Struct({ step: Schema.String, ok: Schema.Boolean, ms: Schema.Number, detail: Schema.optional(Schema.String) }))
})
export const probeLines = (r: typeof ProbeReport.Type) =>
  [...r.steps.map((s) => `  ${s.ok ? "✓" : "✗"} ${s.step.padEnd(14)} ${String(s.ms).padStart(5)} ms${s.detail ? `  ${s.detail}` : ""}`), `${r.ok ? "ok" : "FAILED"}: ${r.summary}`].join("\n")
export const decodeProbe = decode(ProbeReport)

const envId = arg("envId", "Environment id (see `gantry env list <companyId>`)")

const env = group("env", "Environments: local or sandbox (a provider plugin)", "list <companyId> | create <companyId> --name --driver sandbox|local --config '<json>' | get | probe | leases | archive | delete").pipe(
  Cli.withSubcommands([
    leaf("list", "List a company's environments", {
      companyId,
      all: Options.boolean("all").pipe(Options.withDescription("Include archived environments"))
    }, (o) =>
      withClient((c) => c.get(path("/api/companies", o.companyId, "environments"), o.all ? { includeArchived: "true" } : {})).pipe(
        Effect.flatMap((raw) => show(o.json, Schema.Array(Environment), raw, envRows)))),
    leaf("create", "Create an environment", {
      companyId,
      name: Options.text("name").pipe(Options.withDescription("Name (unique per company)")),
      driver: Options.choice("driver", ["sandbox", "local"]).pipe(Options.withDescription("sandbox (a provider plugin) or local")),
      config: Options.text("config").pipe(Options.withDefault("{}"),
        Options.withDescription(`JSON config; sandbox: {"provider":"<pluginId>/<driverKey>", "timeoutMs"?, "ttlMs"?, ...provider fields}`)),
      description: Options.text("description").pipe(Options.optional)
    }, (o) =>
      Effect.flatMap(parseJsonOption("config", o.config), (config) =>
        withClient((c) => c.post(path("/api/companies", o.companyId, "environments"), {
          name: o.name, driver: o.driver, config, ...(Option.isSome(o.description) ? { description: o.description.value } : {})
        }))).pipe(Effect.flatMap((raw) => show(o.json, Environment, raw, (e) => `environment ${e.name} (${e.driver}) created: ${e.id}`)))),
    leaf("get", "Show an environment", { envId }, (o) =>
      withClient((c) => c.get(path("/api/environments", o.envId))).pipe(Effect.flatMap((raw) => show(o.json, Environment, raw, envDetails)))),
    leaf("probe", "Probe an environment: sandbox = acquire → execute `true` → release with a fresh lease", { envId }, (o) =>
      withProgress("probing", withClient((c) => c.post(path("/api/environments", o.envId, "probe")))).pipe(
        Effect.tap((raw) => show(o.json, ProbeReport, raw, probeLines)),
        Effect.flatMap((raw) => Effect.flatMap(decodeProbe(raw), (r) => (r.ok ? Effect.void : setExitCode(1)))))),
    leaf("leases", "An environment's leases (newest first)", { envId }, (o) =>
      withClient((c) => c.get(path("/api/environments", o.envId, "leases"))).pipe(Effect.flatMap((raw) => show(o.json, Schema.Array(Lease), raw, leaseRows)))),
    leaf("archive", "Archive an environment (refused while leases are live)", { envId }, (o) =>
      withClient((c) => c.post(path("/api/environments", o.envId, "archive"))).pipe(
        Effect.flatMap((raw) => show(o.json, Environment, raw, (e) => `environment ${e.name} ${e.status}`)))),
    leaf("delete", "Delete an environment (refused while leases are live)", { envId }, (o) =>
      withClient((c) => c.del(path("/api/environments", o.envId))).pipe(
        Effect.flatMap((raw) => (o.json ? Console.log(JSON.stringify(raw)) : Console.log(`environment ${o.envId} deleted`)))))
  ])
)

// ---- agents ----

const agentRows = (as: ReadonlyArray<typeof Agent.Type>) =>
  table(["ID", "NAME", "DEFAULT ENV", "TIMEOUT", "COMMAND"],
    as.map((a) => [a.id, a.name, a.defaultEnvironmentId ?? "-", Duration.format(Duration.millis(a.timeoutMs)), [a.command, ...a.args].map(quote).join(" ")]))

const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`)

const agentDetails = (a: typeof Agent.Type) =>
  keyValues([
    ["agent", `${a.name} (${a.id})`],
    ["company", a.companyId],
    ["command", [a.command, ...a.args].map(quote).join(" ")],
    ["env", Object.keys(a.env).length ? JSON.stringify(a.env) : "-"],
    ["default env", a.defaultEnvironmentId ?? "- (company default, else local)"],
    ["timeout", Duration.format(Duration.millis(a.timeoutMs))],
    ["heartbeat", a.heartbeat === null ? "-" : JSON.stringify(a.heartbeat)],
    ["created", iso(a.createdAt)]
  ])

const agentId = arg("agentId", "Agent id (see `gantry agents list <companyId>`)")

const agents = group("agents", "Agents: a command run in an environment", "list <companyId> | create <companyId> --name --command [--arg …] [--env-id] [--timeout-ms] | get | delete").pipe(
  Cli.withSubcommands([
    leaf("list", "List a company's agents", { companyId }, (o) =>
      withClient((c) => c.get(path("/api/companies", o.companyId, "agents"))).pipe(Effect.flatMap((raw) => show(o.json, Schema.Array(Agent), raw, agentRows)))),
    leaf("create", "Create an agent", {
      companyId,
      name: Options.text("name").pipe(Options.withDescription("Agent name")),
      command: Options.text("command").pipe(Options.withDescription("Executable to run (no shell; use --command sh --arg -c --arg '…' for one)")),
      args: Options.text("arg").pipe(Options.repeated, Options.withDescription("One argument (repeat for more, in order): --arg -c --arg 'echo hi'")),
      envId: Options.text("env-id").pipe(Options.optional, Options.withDescription("Default environment id")),
      timeoutMs: Options.integer("timeout-ms").pipe(Options.optional, Options.withDescription("Run timeout in ms (default 600000)")),
      vars: Options.text("env").pipe(Options.repeated, Options.withDescription("KEY=VALUE in the command's environment (repeatable)")),
      secretVars: Options.text("secret").pipe(Options.repeated, Options.withDescription("KEY=<secretId>: the secret's value in the command's environment (repeatable)"))
    }, (o) =>
      Effect.gen(function* () {
        const plain = yield* pairs("env", o.vars)
        const refs = yield* pairs("secret", o.secretVars)
        const envVars: Record<string, unknown> = { ...plain }
        for (const [k, secretId] of Object.entries(refs)) envVars[k] = { type: "secret_ref", secretId }
        const raw = yield* withClient((c) => c.post(path("/api/companies", o.companyId, "agents"), {
          name: o.name,
          command: o.command,
          args: o.args,
          ...(Object.keys(envVars).length ? { env: envVars } : {}),
          ...(Option.isSome(o.envId) ? { defaultEnvironmentId: o.envId.value } : {}),
          ...(Option.isSome(o.timeoutMs) ? { timeoutMs: o.timeoutMs.value } : {})
        }))
        yield* show(o.json, Agent, raw, (a) => `agent ${a.name} created: ${a.id}\nrun it: gantry run ${a.id}`)
      })),
    leaf("get", "Show an agent", { agentId }, (o) =>
      withClient((c) => c.get(path("/api/agents", o.agentId))).pipe(Effect.flatMap((raw) => show(o.json, Agent, raw, agentDetails)))),
    leaf("delete", "Delete an agent", { agentId }, (o) =>
      withClient((c) => c.del(path("/api/agents", o.agentId))).pipe(
        Effect.flatMap((raw) => (o.json ? Console.log(JSON.stringify(raw)) : Console.log(`agent ${o.agentId} deleted`)))))
  ])
)

// ---- run / runs ----

const finish = (json: boolean, run: RunJson) =>
  Effect.zipRight(json ? Console.log(JSON.stringify(run, null, 2)) : Effect.void, setExitCode(exitCodeOf(run)))

/** Follow to the end; with --json only the final run is printed (after a progress line on stderr). */
const followAndFinish = (runId: string, json: boolean) =>
  json
    ? withProgress(`waiting for run ${short(runId)}`, followRun(runId, () => Effect.void)).pipe(Effect.flatMap((run) => finish(true, run)))
    : Effect.flatMap(attach(runId), (run) => finish(false, run))

/**
 * Ctrl-C while following a run cancels it (the lease scope on the server does the rest) and exits
 * with 130, the shell's code for "ended by SIGINT". The cancel answers the run as it ended: one that
 * finished first is reported as such and exits with its own code; a cancel that could not be
 * confirmed says so.
 */
const cancelOnInterrupt = (runId: string) => <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.onInterrupt(self, () =>
    Effect.zipRight(
      setExitCode(130),
      withClient((c) => c.post(path("/api/runs", runId, "cancel"))).pipe(
        Effect.flatMap(decode(Run)),
        Effect.timeout("10 seconds"),
        Effect.matchEffect({
          onFailure: (e) =>
            write("stderr", `\ncancel of run ${runId} not confirmed (${describeCancelError(e)}); see \`gantry runs get ${runId}\`\n`),
          onSuccess: (run) =>
            run.status === "cancelled"
              ? write("stderr", `\ncancelled run ${runId}\n`)
              : Effect.zipRight(
                write("stderr", `\nrun ${runId} was not cancelled: it had already ended ${run.status} (${run.exitCode !== null ? `exit code ${run.exitCode}` : run.error ?? "no exit code"})\n`),
                setExitCode(exitCodeOf(run)))
        }),
        Effect.ignore
      )
    ))

const describeCancelError = (e: unknown): string =>
  (e as { _tag?: string })?._tag === "TimeoutException" ? "no answer within 10 s" : describeError(e as ClientError)

const runCommand = leaf("run", "Start a run of an agent, stream its output, exit with the command's exit code", {
  agentId,
  envId: Options.text("env").pipe(Options.optional, Options.withDescription("Environment id for this run (default: the agent's, the company's, else local)")),
  vars: Options.text("var").pipe(Options.repeated, Options.withDescription("KEY=VALUE added to this run's environment (repeatable)"))
}, (o) =>
  Effect.gen(function* () {
    const vars = yield* pairs("var", o.vars)
    const started = yield* withClient((c) => c.post(path("/api/agents", o.agentId, "runs"), {
      ...(Option.isSome(o.envId) ? { environmentId: o.envId.value } : {}),
      ...(Object.keys(vars).length ? { env: vars } : {})
    })).pipe(Effect.flatMap(decode(Run)))
    yield* write("stderr", `run ${started.id} ${started.status} (agent ${o.agentId})\n`)
    yield* followAndFinish(started.id, o.json).pipe(cancelOnInterrupt(started.id))
  }))

const runId = arg("runId", "Run id")

const runs = group("runs", "Runs: list, inspect, follow, cancel", "list <companyId> | get <runId> | output <runId> | cancel <runId> | leases <runId>").pipe(
  Cli.withSubcommands([
    leaf("list", "A company's recent runs", {
      companyId,
      agent: Options.text("agent").pipe(Options.optional, Options.withDescription("Only this agent's runs")),
      limit: Options.integer("limit").pipe(Options.withDefault(50))
    }, (o) =>
      withClient((c) => c.get(path("/api/companies", o.companyId, "runs"), { agentId: Option.getOrUndefined(o.agent), limit: o.limit })).pipe(
        Effect.flatMap((raw) => show(o.json, Schema.Array(Run), raw, (rs) =>
          table(["ID", "AGENT", "STATUS", "EXIT", "STARTED", "FINISHED"],
            rs.map((r) => [r.id, r.agentId, r.status, r.exitCode === null ? "-" : String(r.exitCode), iso(r.startedAt), iso(r.finishedAt)])))))),
    leaf("get", "Show a run (status, exit code, retained output)", { runId }, (o) =>
      withClient((c) => c.get(path("/api/runs", o.runId))).pipe(Effect.flatMap((raw) =>
        show(o.json, Run, raw, (r) =>
          keyValues([
            ["run", `${r.id} (agent ${r.agentId}, ${r.trigger})`],
            ["status", `${r.status}${r.exitCode !== null ? `, exit code ${r.exitCode}` : ""}${r.signal ? `, signal ${r.signal}` : ""}`],
            ["environment", r.environmentId ?? "-"],
            ["lease", r.leaseId ?? "-"],
            ["created", iso(r.createdAt)],
            ["started", iso(r.startedAt)],
            ["finished", iso(r.finishedAt)],
            ...(r.error ? [["error", r.error] as const] : []),
            ["stdout", r.stdout.length ? `\n${r.stdout.replace(/\n$/, "")}` : "-"],
            ["stderr", r.stderr.length ? `\n${r.stderr.replace(/\n$/, "")}` : "-"],
            ...(r.truncated ? [["truncated", "yes"] as const] : [])
          ]))))),
    leaf("output", "Follow a run's output (from the start) until it ends; exits with its exit code", { runId }, (o) =>
      followAndFinish(o.runId, o.json)),
    leaf("cancel", "Cancel a run", { runId }, (o) =>
      withClient((c) => c.post(path("/api/runs", o.runId, "cancel"))).pipe(
        Effect.flatMap((raw) => show(o.json, Run, raw, (r) => `run ${r.id}: ${r.status}`)))),
    leaf("leases", "A run's leases and their lifecycle", { runId }, (o) =>
      withClient((c) => c.get(path("/api/runs", o.runId, "leases"))).pipe(
        Effect.flatMap((raw) => show(o.json, Schema.Array(Lease), raw, (ls) => (ls.length ? ls.map(leaseLifecycle).join("\n") : "(no leases)")))))
  ])
)

// ---- tokens (admin token) ----

const tokenRows = (ts: ReadonlyArray<typeof Token.Type>) =>
  table(["ID", "ROLE", "COMPANY", "NAME", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
    ts.map((t) => [t.id, t.role, t.companyId ?? "-", t.name ?? "-", iso(t.createdAt), iso(t.lastUsedAt), iso(t.expiresAt), iso(t.revokedAt)]))

/** `30d`, `12h`, `45m`, `90s` → milliseconds. */
const parseDuration = (text: string): Effect.Effect<number, TransportError> => {
  const m = /^(\d+)\s*([smhdw])$/.exec(text.trim())
  const unit: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }
  return m ? Effect.succeed(Number(m[1]) * unit[m[2]!]!) : Effect.fail(new TransportError({ url: "", message: `--expires-in expects a number and a unit (s, m, h, d, w), got "${text}"` }))
}

const tokenId = arg("tokenId", "Token id (see `gantry tokens list`)")
const shownOnce = (t: typeof TokenWithValue.Type, what: string) =>
  `${what} ${t.id} (${t.role}${t.companyId ? ` for company ${t.companyId}` : ""}${t.expiresAt ? `, expires ${iso(t.expiresAt)}` : ""})\n` +
  `token (shown once, stored hashed; keep it): ${t.token}`

const rotateAdmin = Cli.make("rotate-admin", {
  dataDir: Options.text("data-dir").pipe(Options.withFallbackConfig(Config.string("GANTRY_DATA_DIR")), Options.withDefault(".gantry"),
    Options.withDescription("The instance's data dir (GANTRY_DATA_DIR; default .gantry)")),
  databaseUrl: Options.text("database-url").pipe(Options.withFallbackConfig(Config.string("GANTRY_DATABASE_URL")), Options.optional,
    Options.withDescription("postgres://… when the instance runs on PostgreSQL (GANTRY_DATABASE_URL)"))
}, (o) =>
  // works on the database directly (no server needed): the way back in when the admin token is lost
  Effect.flatMap(Effect.promise(() => import("./offline.js")), ({ rotateAdminToken }) =>
    rotateAdminToken({ dataDir: o.dataDir, databaseUrl: Option.getOrUndefined(o.databaseUrl) })).pipe(
    Effect.flatMap((token) => Console.log(`new admin token (shown once, stored hashed; the old one no longer works): ${token}`)),
    Effect.catchAll((e) => Effect.zipRight(write("stderr", `gantry: error: could not rotate the admin token: ${e.message}\n`), setExitCode(1)))
  )).pipe(Cli.withDescription("Replace the admin token, working on the data dir / database directly (no server, no admin token needed); prints the new token once"))

const tokens = group("tokens", "API tokens: list, create, revoke, rotate (admin token)", "list [--company <id>] | create <companyId> [--role company|company-read] [--expires-in 30d] | get | revoke | rotate <tokenId> | rotate-admin --data-dir <dir>").pipe(
  Cli.withSubcommands([
    leaf("list", "List tokens (never their values): role, company, last use, expiry, revocation", {
      company: Options.text("company").pipe(Options.optional, Options.withDescription("Only this company's tokens"))
    }, (o) =>
      withClient((c) => c.get("/api/tokens", { companyId: Option.getOrUndefined(o.company) })).pipe(
        Effect.flatMap((raw) => show(o.json, Schema.Array(Token), raw, tokenRows)))),
    leaf("create", "Create a company token; prints it once", {
      companyId,
      name: Options.text("name").pipe(Options.optional, Options.withDescription("A label (who or what uses it)")),
      role: Options.choice("role", ["company", "company-read"]).pipe(Options.withDefault("company" as const),
        Options.withDescription("company (read-write, default) or company-read (GET only)")),
      expiresIn: Options.text("expires-in").pipe(Options.optional, Options.withDescription("Expire after this long: 90s, 45m, 12h, 30d, 2w"))
    }, (o) =>
      Effect.gen(function* () {
        const ms = Option.isSome(o.expiresIn) ? yield* parseDuration(o.expiresIn.value) : undefined
        const now = yield* Clock.currentTimeMillis
        const raw = yield* withClient((c) => c.post(path("/api/companies", o.companyId, "tokens"), {
          role: o.role,
          ...(Option.isSome(o.name) ? { name: o.name.value } : {}),
          ...(ms !== undefined ? { expiresAt: new Date(now + ms).toISOString() } : {})
        }))
        yield* show(o.json, TokenWithValue, raw, (t) => shownOnce(t, "token created:"))
      })),
    leaf("get", "Show one token (never its value)", { tokenId }, (o) =>
      withClient((c) => c.get(path("/api/tokens", o.tokenId))).pipe(Effect.flatMap((raw) => show(o.json, Token, raw, (t) => tokenRows([t]))))),
    leaf("revoke", "Revoke a token: it stops working at once (it stays listed)", { tokenId }, (o) =>
      withClient((c) => c.post(path("/api/tokens", o.tokenId, "revoke"))).pipe(
        Effect.flatMap((raw) => show(o.json, Token, raw, (t) => `token ${t.id} revoked at ${iso(t.revokedAt)}`)))),
    leaf("rotate", "A new value for a token (same id, role, company, expiry); the old value stops working; prints it once", { tokenId }, (o) =>
      withClient((c) => c.post(path("/api/tokens", o.tokenId, "rotate"))).pipe(
        Effect.flatMap((raw) => show(o.json, TokenWithValue, raw, (t) => shownOnce(t, "token rotated:"))))),
    rotateAdmin
  ])
)

// ---- operator: local-driver grants and provider policies (admin token) ----

const localGrants = group("local-grants", "Which companies may run in local environments (on the host); admin token", "list | grant <companyId> | revoke <companyId>").pipe(
  Cli.withSubcommands([
    leaf("list", "Companies granted the local driver", {}, (o) =>
      withClient((c) => c.get("/api/local-grants")).pipe(Effect.flatMap((raw) =>
        show(o.json, Schema.Array(LocalGrant), raw, (gs) => table(["COMPANY", "GRANTED"], gs.map((g) => [g.companyId, iso(g.grantedAt)])))))),
    leaf("grant", "Let a company run in local environments (its commands run on this host as the server's user)", { companyId }, (o) =>
      withClient((c) => c.put(path("/api/companies", o.companyId, "local-grant"))).pipe(
        Effect.flatMap((raw) => show(o.json, LocalGrant, raw, (g) => `company ${g.companyId} may run in local environments (granted ${iso(g.grantedAt)})`)))),
    leaf("revoke", "Take the local driver away from a company (its local runs are refused from now on)", { companyId }, (o) =>
      withClient((c) => c.del(path("/api/companies", o.companyId, "local-grant"))).pipe(
        Effect.flatMap((raw) => show(o.json, LocalGrant, raw, (g) => `company ${g.companyId} may not run in local environments`))))
  ])
)

const providerArg = arg("provider", "Sandbox provider as <pluginId>/<driverKey>, e.g. bwrap-sandbox/bwrap")
const providerPath = (provider: string, ...rest: ReadonlyArray<string>) => {
  const [pluginId, driverKey] = provider.split("/", 2)
  return !pluginId || !driverKey
    ? Effect.fail(new TransportError({ url: "", message: `provider must be <pluginId>/<driverKey>, got "${provider}"` }))
    : Effect.succeed(path("/api/plugins", pluginId, "drivers", driverKey, "policy", ...rest))
}
const policyText = (p: typeof ProviderPolicy.Type) =>
  keyValues([
    ["provider", p.provider],
    ["set", JSON.stringify(p.policy.set)],
    ["allow", JSON.stringify(p.policy.allow)],
    ["operator fields", p.operatorFields.map((f) => (f.kind === "field" ? f.field : `${f.field} (values ${JSON.stringify(f.values)})`)).join(", ") || "-"]
  ])

const policies = group("policies", "Operator policies of sandbox providers (host paths, users, host network); admin token", "list | get <provider> | set <provider> [--set '<json>'] [--allow '<json>'] | clear <provider>").pipe(
  Cli.withSubcommands([
    leaf("list", "Every stored provider policy", {}, (o) =>
      withClient((c) => c.get("/api/provider-policies")).pipe(Effect.flatMap((raw) =>
        show(o.json, Schema.Array(ProviderPolicy), raw, (ps) => (ps.length === 0 ? "(none)" : ps.map(policyText).join("\n\n")))))),
    leaf("get", "A provider's policy and its operator fields", { provider: providerArg }, (o) =>
      Effect.flatMap(providerPath(o.provider), (p) => withClient((c) => c.get(p))).pipe(Effect.flatMap((raw) => show(o.json, ProviderPolicy, raw, policyText)))),
    leaf("set", "Replace a provider's policy", {
      provider: providerArg,
      set: Options.text("set").pipe(Options.withDefault("{}"), Options.withDescription(`Operator field values merged into every config the provider gets, e.g. '{"workspaceRoot":"/srv/gantry-bwrap","runAsUid":1500}'`)),
      allow: Options.text("allow").pipe(Options.withDefault("{}"), Options.withDescription(`Operator-only values companies may choose, e.g. '{"network":["host"]}'`))
    }, (o) =>
      Effect.gen(function* () {
        const set = yield* parseJsonOption("set", o.set)
        const allow = yield* parseJsonOption("allow", o.allow)
        const p = yield* providerPath(o.provider)
        const raw = yield* withClient((c) => c.put(p, { set, allow }))
        yield* show(o.json, ProviderPolicy, raw, policyText)
      })),
    leaf("clear", "Remove a provider's policy", { provider: providerArg }, (o) =>
      Effect.flatMap(providerPath(o.provider), (p) => withClient((c) => c.del(p))).pipe(Effect.flatMap((raw) => show(o.json, ProviderPolicy, raw, policyText))))
  ])
)

export const commands = [companies, plugins, secrets, env, agents, runCommand, runs, tokens, localGrants, policies]
