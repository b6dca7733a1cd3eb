// The `gantry` command (one of the two places that run effects: the host entry point).
import { Command as Cli, Options } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Runtime } from "@effect/platform"
import { Cause, Effect, Exit, Option } from "effect"
import { commands as clientCommands } from "./client.js"

const env = (name: string) => process.env[name]

const serveCommand = Cli.make(
  "serve",
  {
    port: Options.integer("port").pipe(Options.withDefault(Number(env("GANTRY_PORT") ?? 3100))),
    host: Options.text("host").pipe(Options.withDefault(env("GANTRY_HOST") ?? "127.0.0.1")),
    dataDir: Options.text("data-dir").pipe(Options.withDefault(env("GANTRY_DATA_DIR") ?? ".gantry")),
    databaseUrl: Options.text("database-url").pipe(Options.optional)
  },
  (o) =>
    // the server is loaded only for `serve` (client commands start faster without it)
    Effect.flatMap(Effect.promise(() => import("./serve.js")), ({ serve }) => serve({
      port: o.port,
      bindHost: o.host,
      dataDir: o.dataDir,
      databaseUrl: Option.getOrUndefined(o.databaseUrl) ?? env("GANTRY_DATABASE_URL"),
      publicUrl: env("GANTRY_PUBLIC_URL")
    }))
).pipe(Cli.withDescription("Run the Gantry server (SQLite under --data-dir, or GANTRY_DATABASE_URL=postgres://…)"))

const demoCommand = Cli.make("demo", {}, () => Effect.flatMap(Effect.promise(() => import("./demo.js")), ({ demo }) => demo)).pipe(
  Cli.withDescription("A scripted tour on a fresh temporary instance: company, sandbox environment, agent, a streamed run, the lease lifecycle")
)

const gantry = Cli.make("gantry").pipe(Cli.withSubcommands([serveCommand, demoCommand, ...clientCommands]))

const run = Cli.run(gantry, { name: "gantry", version: "0.1.0" })

/**
 * Interrupted by a signal: exit with the code the command chose for that case (`gantry run` sets 130
 * after cancelling its run), else 0 (a server's graceful shutdown). Everything else as usual.
 */
const teardown: Runtime.Teardown = (exit, onExit) =>
  Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)
    ? onExit(typeof process.exitCode === "number" ? process.exitCode : 0)
    : Runtime.defaultTeardown(exit, onExit)

NodeRuntime.runMain(run(process.argv).pipe(Effect.provide(NodeContext.layer)), { teardown })
