// `gantry plugins dev <dir>`: the plugin author's loop. Install the folder linked (run in place, not
// copied), then on every change: run the package's `build` script (if it has one) and restart the
// worker gracefully (an upgrade from the same folder: the new worker starts beside the old one,
// state is in the host's database and stays). The plugin's log streams to the terminal until Ctrl-C.
import { Console, Duration, Effect, Fiber, Schedule, Stream } from "effect"
import { spawn } from "node:child_process"
import { watch } from "node:fs"
import { relative, sep } from "node:path"
import { buildScript } from "../host/packages.js"
import { type ClientError, describeError, GantryClient } from "./http.js"

interface PluginJson { readonly pluginId: string; readonly version: string; readonly status: string; readonly workerStatus: string; readonly pid: number | null }
interface LogLine { readonly at: string; readonly level: string; readonly message: string; readonly meta?: unknown }

const IGNORED = ["node_modules", ".git"]
const BUILD_OUTPUTS = ["dist", "build", "out"]

const err = (text: string) => Effect.sync(() => void process.stderr.write(text.endsWith("\n") ? text : `${text}\n`))

/** `npm run build` in the folder, its output on stderr; true when it succeeded. */
const runBuild = (dir: string) =>
  Effect.async<boolean>((resume) => {
    const child = spawn("npm", ["run", "build", "--silent"], { cwd: dir, stdio: ["ignore", "inherit", "inherit"], env: process.env })
    child.on("error", () => resume(Effect.succeed(false)))
    child.on("exit", (code) => resume(Effect.succeed(code === 0)))
    return Effect.sync(() => void child.kill("SIGTERM"))
  })

/** Changes under `dir` (ignoring node_modules, .git and, when there is a build, its output folders), debounced. */
const changes = (dir: string, hasBuild: boolean) =>
  Stream.async<string>((emit) => {
    const watcher = watch(dir, { recursive: true }, (_event, name) => {
      const rel = name ? String(name) : ""
      const top = relative(".", rel).split(sep)[0] ?? ""
      if (IGNORED.includes(top) || (hasBuild && BUILD_OUTPUTS.includes(top))) return
      void emit.single(rel)
    })
    return Effect.sync(() => watcher.close())
  }).pipe(Stream.debounce(Duration.millis(300)))

export const dev = (dir: string): Effect.Effect<void, ClientError, GantryClient> =>
  Effect.gen(function* () {
    const client = yield* GantryClient
    const hasBuild = buildScript(dir) !== null
    if (hasBuild) {
      yield* err(`building ${dir} (npm run build)…`)
      if (!(yield* runBuild(dir))) yield* err(`build failed; installing what is there`)
    }
    const installed = yield* client.post("/api/plugins", { source: dir, linked: true }).pipe(
      // already installed (an earlier dev session, or another copy): switch it to this folder, linked
      Effect.catchIf((e) => e._tag === "ApiError" && e.status === 409 && e.code === "plugin_conflict", (conflict) => Effect.flatMap(
        Effect.promise(() => import("../host/loader.js")),
        ({ loadPluginFolder }) => Effect.flatMap(
          Effect.mapError(loadPluginFolder(dir, "999.0.0"), () => conflict),
          (l) => client.post(`/api/plugins/${encodeURIComponent(l.info.manifest.id)}/upgrade`, { source: dir, linked: true, allowDowngrade: true, drain: true })
        )
      ))
    ) as Effect.Effect<PluginJson, ClientError>
    const id = installed.pluginId
    yield* err(`plugin ${id} ${installed.version} running from ${dir} (linked, worker pid ${installed.pid ?? "-"}); watching for changes, Ctrl-C to stop`)

    // the log: print what is new since the last poll
    const seen = { last: undefined as string | undefined }
    const key = (l: LogLine) => `${l.at}|${l.level}|${l.message}`
    const pollLogs = Effect.gen(function* () {
      const lines = (yield* client.get(`/api/plugins/${encodeURIComponent(id)}/logs`, { limit: 500 })) as ReadonlyArray<LogLine>
      const from = seen.last === undefined ? Math.max(0, lines.length - 20) : lines.findIndex((l) => key(l) === seen.last) + 1
      for (const l of lines.slice(from)) {
        yield* Console.log(`${l.at.slice(11, 23)} ${l.level.toUpperCase().padEnd(5)} [${id}] ${l.message}${l.meta !== undefined && l.meta !== null ? ` ${JSON.stringify(l.meta)}` : ""}`)
      }
      if (lines.length > 0) seen.last = key(lines[lines.length - 1]!)
    }).pipe(Effect.catchAll(() => Effect.void))
    const logs = yield* Effect.fork(Effect.repeat(pollLogs, Schedule.spaced(Duration.millis(400))))

    const reload = (what: string) =>
      Effect.gen(function* () {
        yield* err(`changed: ${what}`)
        if (hasBuild && !(yield* runBuild(dir))) return yield* err(`build failed; the running worker keeps serving`)
        const r = yield* Effect.either(client.post(`/api/plugins/${encodeURIComponent(id)}/upgrade`, { source: dir, linked: true, allowDowngrade: true, drain: true }))
        if (r._tag === "Left") return yield* err(`restart refused: ${describeError(r.left)}`)
        const p = r.right as PluginJson
        yield* err(`restarted ${id} ${p.version} (worker pid ${p.pid ?? "-"})`)
      })
    yield* changes(dir, hasBuild).pipe(Stream.runForEach(reload), Effect.ensuring(Fiber.interrupt(logs)))
  })
