// Which file `gantry` runs: the CLI bundle (dist/cli/main.js, built by `npm run build` and before
// `npm start`/`npm test`) when it is newer than every source file, else src/cli/main.ts through tsx.
// `serve` and `demo` always run from source (they locate the bundled plugins next to it; a server's
// start-up time is not worth a second path).
import { existsSync, readdirSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

export const root = fileURLToPath(new URL("..", import.meta.url))
export const bundle = join(root, "dist", "cli", "main.js")
export const source = join(root, "src", "cli", "main.ts")

const newestUnder = (dir) => {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestUnder(p) : statSync(p).mtimeMs)
  }
  return newest
}

/** Is the bundle there and built after the last change to src/ and to the installed packages? */
export const bundleFresh = () => {
  if (!existsSync(bundle)) return false
  const built = statSync(bundle).mtimeMs
  const lock = join(root, "package-lock.json")
  return built >= newestUnder(join(root, "src")) && (!existsSync(lock) || built >= statSync(lock).mtimeMs)
}

/** `{ kind, args }` for `node <args…> <cli arguments>`. */
export const entryFor = (argv) => {
  const command = argv.find((a) => !a.startsWith("-"))
  if (command !== "serve" && command !== "demo" && bundleFresh()) return { kind: "bundle", args: [bundle] }
  // tsx resolved from here, not from the caller's working directory
  return { kind: "source", args: ["--import", createRequire(import.meta.url).resolve("tsx"), source] }
}
