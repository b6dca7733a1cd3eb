// Bundle every plugin worker (plugins/**/src/worker.ts, test/fixtures/**/src/worker.ts) into
// <plugin>/dist/worker.js with esbuild: a bundled worker starts in ~1/3 of the time (notes/rpc-performance.md).
// And the CLI into dist/cli/ (see below).
import { build } from "esbuild"
import { readdirSync, statSync, existsSync, rmSync } from "node:fs"
import { join, dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const found = []
const walk = (dir) => {
  if (!existsSync(dir)) return
  for (const name of readdirSync(dir)) {
    if (name === "node_modules" || name === "dist") continue
    const p = join(dir, name)
    if (!statSync(p).isDirectory()) continue
    const entry = join(p, "src", "worker.ts")
    if (existsSync(entry)) found.push({ entry, out: join(p, "dist", "worker.js") })
    walk(p)
  }
}
walk(join(root, "plugins"))
walk(join(root, "test", "fixtures"))
walk(join(root, "bench", "fixtures"))

const alias = {
  "gantry/sdk": join(root, "src/sdk/index.ts"),
  "gantry/testing": join(root, "src/testing/index.ts"),
  "gantry/protocol": join(root, "src/protocol/index.ts"),
  "gantry": join(root, "src/index.ts")
}
// what every bundle here shares: Node ESM, with a `require` for the CommonJS packages inside
const common = {
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  logLevel: "warning",
  legalComments: "none",
  banner: { js: "import { createRequire as __gantryCreateRequire } from 'node:module'; const require = __gantryCreateRequire(import.meta.url);" }
}
await Promise.all(found.map(({ entry, out }) => build({ ...common, entryPoints: [entry], outfile: out, alias })))
// Paperclip's published SDK worker bundled the same way as ours, for the rpc benchmark's fair comparison
await build({
  ...common,
  entryPoints: [join(root, "bench/fixtures/paperclip-echo/worker.mjs")],
  outfile: join(root, "bench/fixtures/paperclip-echo-bundled/dist/worker.js")
})
// The CLI, bundled for bin/gantry.mjs: loading one file instead of effect's hundreds of modules
// through tsx makes a client command start in a fraction of the time. `serve` and `demo` stay on
// tsx (bin/gantry.mjs routes them there); native and optional-native packages stay external.
rmSync(join(root, "dist/cli"), { recursive: true, force: true })
await build({
  ...common,
  entryPoints: [join(root, "src/cli/main.ts")],
  outdir: join(root, "dist/cli"),
  splitting: true,
  external: ["better-sqlite3", "pg", "pg-native", "tsx"]
})
if (!process.argv.includes("--quiet")) console.error(`built ${found.length} worker bundles and the CLI bundle`)
