// HTTP client subcommands of `gantry` (plugins, env, agents, run, secrets, companies).
import type { Command } from "@effect/cli"
export const commands: Array<Command.Command<string, never, never, unknown>> = []
