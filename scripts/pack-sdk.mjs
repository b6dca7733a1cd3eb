// `npm run pack:sdk`: the publishable plugin SDK as dist/gantry-sdk-<version>.tgz. The package is
// named `gantry` with the entry points `gantry/sdk`, `gantry/testing` (the in-memory plugin test kit)
// and `gantry/protocol`: ESM bundled by esbuild (chunks shared between the entry points, `effect`
// left external: it is the package's only dependency) and `.d.ts` emitted by tsc from the same sources.
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync, readdirSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const quiet = process.argv.includes("--quiet")
// --out <dir>: where the tarball (and its staging folder) go; default dist/ (tests pack into their own)
const outAt = process.argv.indexOf("--out")
const out = outAt > 0 && process.argv[outAt + 1] ? resolve(process.argv[outAt + 1]) : join(root, "dist")
const repo = JSON.parse(readFileSync(join(root, "package.json"), "utf8"))
const version = repo.version
const effectVersion = repo.dependencies.effect
const stage = join(out, "sdk-package")
rmSync(stage, { recursive: true, force: true })
mkdirSync(stage, { recursive: true })

const entries = {
  "sdk/index": join(root, "src/sdk/index.ts"),
  "testing/index": join(root, "src/testing/harness.ts"),
  "protocol/index": join(root, "src/protocol/index.ts")
}
// The test kit runs the real PluginHost, whose module also defines the SQL layer of its records
// (PluginRecords.layerSql, a static field esbuild cannot drop). The kit uses the in-memory records;
// @effect/sql is replaced by a Tag no layer provides, so the SQL layer stays out of the package.
const noSql = {
  name: "gantry-no-sql",
  setup(b) {
    b.onResolve({ filter: /^@effect\/sql$/ }, () => ({ path: "@effect/sql", namespace: "gantry-no-sql" }))
    b.onLoad({ filter: /.*/, namespace: "gantry-no-sql" }, () => ({
      contents: `import { Context } from "effect"\nexport const SqlClient = { SqlClient: Context.GenericTag("@effect/sql/SqlClient") }\n`,
      resolveDir: root,
      loader: "js"
    }))
  }
}
const result = await build({
  plugins: [noSql],
  entryPoints: entries,
  outdir: join(stage, "dist"),
  chunkNames: "chunks/[name]-[hash]",
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  treeShaking: true,
  legalComments: "none",
  logLevel: "warning",
  metafile: true,
  external: ["effect", "effect/*"]
})
// the package may reach nothing but node's built-ins and effect: no database driver, no native build
const foreign = new Set()
for (const [file, out] of Object.entries(result.metafile.outputs)) {
  for (const i of out.imports) if (i.external && !i.path.startsWith("node:") && i.path !== "effect" && !i.path.startsWith("effect/")) foreign.add(`${i.path} (from ${file})`)
}
for (const out of Object.values(result.metafile.outputs)) {
  for (const [input, { bytesInOutput }] of Object.entries(out.inputs)) {
    if (bytesInOutput > 0 && input.includes("node_modules/") && !input.includes("node_modules/effect/")) foreign.add(`${input} (bundled)`)
  }
}
if (foreign.size > 0) {
  console.error(`pack:sdk: the SDK would depend on more than effect:\n  ${[...foreign].join("\n  ")}`)
  process.exit(1)
}

// declarations
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc")
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.sdk.json"), "--outDir", join(stage, "types")], { cwd: root, stdio: "inherit" })

// ship only the declarations the entry points reach (the host's own modules stay out)
const typesDir = join(stage, "types")
const reached = new Set()
const visit = (file) => {
  if (reached.has(file) || !existsSync(file)) return
  reached.add(file)
  for (const m of readFileSync(file, "utf8").matchAll(/(?:from\s+|import\()"(\.{1,2}\/[^"]+)\.js"/g)) visit(join(dirname(file), `${m[1]}.d.ts`))
}
for (const e of ["sdk/index", "testing/harness", "protocol/index"]) visit(join(typesDir, `${e}.d.ts`))
const prune = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    if (entry.isDirectory()) {
      prune(p)
      if (readdirSync(p).length === 0) rmSync(p, { recursive: true })
    } else if (!reached.has(p)) rmSync(p)
  }
}
prune(typesDir)
for (const f of reached) {
  const text = readFileSync(f, "utf8")
  const bare = [...text.matchAll(/(?:from\s+|import\()"([^".][^"]*)"/g)].map((m) => m[1]).filter((m) => m !== "effect" && !m.startsWith("effect/") && !m.startsWith("node:"))
  if (bare.length > 0) {
    console.error(`pack:sdk: ${f} refers to ${bare.join(", ")}`)
    process.exit(1)
  }
}

const types = (p) => `./types/${p}.d.ts`
const pkg = {
  name: "gantry",
  version,
  description: "Gantry plugin SDK: write plugins (Promise or Effect) for the Gantry plugin host, and test them in memory",
  type: "module",
  license: repo.license,
  engines: { node: ">=20" },
  sideEffects: false,
  exports: {
    "./sdk": { types: types("sdk/index"), default: "./dist/sdk/index.js" },
    "./testing": { types: types("testing/harness"), default: "./dist/testing/index.js" },
    "./protocol": { types: types("protocol/index"), default: "./dist/protocol/index.js" },
    "./package.json": "./package.json"
  },
  files: ["dist", "types", "README.md"],
  dependencies: { effect: `^${effectVersion}` }
}
writeFileSync(join(stage, "package.json"), JSON.stringify(pkg, null, 2) + "\n")
writeFileSync(join(stage, "README.md"), `# gantry (plugin SDK) ${version}

The plugin SDK of Gantry, a plugin host for AI-agent control planes.

- \`gantry/sdk\`: \`definePlugin\` (Promise plugins, Paperclip's shape), \`Plugin.make\` and the capability
  services (Effect plugins), \`runWorker\` (the worker main), the protocol errors.
- \`gantry/testing\`: \`createTestHarness\` (Promise) and \`makeHarness\` (Effect, scoped) run a plugin in
  memory through the host's capability and company-scope gates.
- \`gantry/protocol\`: the wire contract (manifest validation, method schemas, capability table).

ESM only, Node 20 or a bundler. \`effect\` is the only dependency. Start from a scaffold:
\`gantry plugins init my-plugin\` (see the Gantry README, "Writing a plugin from the scaffold").
`)

// npm pack (no lifecycle scripts: the package has none)
const packed = execFileSync("npm", ["pack", "--json", "--pack-destination", out], { cwd: stage, encoding: "utf8" })
const filename = JSON.parse(packed)[0].filename
const target = join(out, `gantry-sdk-${version}.tgz`)
renameSync(join(out, filename), target)
if (!quiet) console.error(`packed the SDK: ${target}`)
process.stdout.write(`${target}\n`)
