// `gantry plugins init <dir>`: scaffold a plugin package that builds against the published SDK
// (package.json, manifest.json, src/worker.ts, a vitest test on gantry/testing, an esbuild build
// script, a README). Promise style by default, Effect with --effect, a sandbox provider with --provider.
import { Args, Command as Cli, Options } from "@effect/cli"
import { FileSystem } from "@effect/platform"
import { Console, Data, Effect, Option } from "effect"
import { basename, dirname, isAbsolute, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { HOST_VERSION } from "../host/HostOptions.js"

export class ScaffoldError extends Data.TaggedError("ScaffoldError")<{ readonly message: string }> {}

export interface ScaffoldOptions {
  readonly dir: string
  readonly effect: boolean
  readonly provider: string | undefined
  /** How package.json depends on the SDK: an npm spec, or a path to its tarball or folder. */
  readonly sdk: string | undefined
}

const ID_RE = /^[a-z0-9][a-z0-9._-]*$/
// the versions this repository builds and tests with; a generated plugin pins the same
const VERSIONS = { effect: "3.22.4", esbuild: "0.25.11", vitest: "3.2.4", typescript: "5.9.3", typesNode: "20.19.25" }

/** This checkout's root (src/cli/init.ts and the bundle dist/cli/*.js are both two levels down). */
const repoRoot = () => resolve(dirname(fileURLToPath(import.meta.url)), "..", "..")
/** What `npm run pack:sdk` writes in this checkout. */
export const defaultSdkTarball = () => join(repoRoot(), "dist", `gantry-sdk-${HOST_VERSION}.tgz`)

const title = (id: string) => id.split(/[._-]+/).filter(Boolean).map((w) => w[0]!.toUpperCase() + w.slice(1)).join(" ")

const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n"

interface Files {
  readonly [path: string]: string
}

const workerPromise = (provider: string | undefined) => `// The plugin's worker: Promise style (Paperclip's definePlugin shape).
import { definePlugin, runWorker${provider ? ", type PluginContext" : ""} } from "gantry/sdk"
${provider ? `import * as Sandbox from "./sandbox.js"\n\n// output of a running command streams to the host through the context setup received
let context: PluginContext | undefined\n` : ""}
const plugin = definePlugin({
  async setup(ctx) {${provider ? "\n    context = ctx" : ""}
    // a data handler: POST /api/plugins/<id>/companies/<companyId>/data/hello
    ctx.data.register("hello", async (params) => {
      const key = { scopeKind: "company" as const, scopeId: String(params.companyId), stateKey: "greetings" }
      const count = ((await ctx.state.get(key)) as number | null) ?? 0
      await ctx.state.set(key, count + 1)
      ctx.logger.info("hello served", { count: count + 1 })
      return { message: \`Hello, \${String(params.name ?? "world")}!\`, count: count + 1 }
    })
  },
  async onHealth() {
    return { status: "ok" }
  }${provider ? `,
  // the sandbox provider "${provider}": each lease is a temp folder, commands run in it
  async onEnvironmentValidateConfig(params) {
    return Sandbox.validateConfig(params.config)
  },
  async onEnvironmentProbe() {
    return { ok: true, summary: "${provider} ready" }
  },
  async onEnvironmentAcquireLease(params) {
    return Sandbox.acquire(params.runId)
  },
  async onEnvironmentResumeLease(params) {
    return Sandbox.resume(params.providerLeaseId)
  },
  async onEnvironmentReleaseLease(params) {
    return Sandbox.destroy(params.providerLeaseId)
  },
  async onEnvironmentDestroyLease(params) {
    return Sandbox.destroy(params.providerLeaseId)
  },
  async onEnvironmentRealizeWorkspace(params) {
    return { cwd: Sandbox.dirOf(params.lease.providerLeaseId) }
  },
  async onEnvironmentExecute(params) {
    return Sandbox.execute(params, (stream, chunk) => context?.execution.log(stream, chunk))
  }` : ""}
})
export default plugin
runWorker(plugin, import.meta.url)
`

const workerEffect = (provider: string | undefined) => `// The plugin's worker: Effect style (the same capability services as Effects with typed errors).
import { Effect${provider ? ", Runtime" : ""} } from "effect"
import { Data, Logger, Plugin, runWorker, ${provider ? "SandboxProvider, " : ""}State, WorkerError } from "gantry/sdk"
${provider ? `import * as Sandbox from "./sandbox.js"\n\n/** A Promise of the sandbox core as an Effect; a rejection becomes a WorkerError (-32002). */
const attempt = <A>(f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (e) => new WorkerError({ message: e instanceof Error ? e.message : String(e) }) })
` : ""}
const plugin = Plugin.make({
  setup: Effect.gen(function* () {
    const state = yield* State
    const logger = yield* Logger
    // a data handler: POST /api/plugins/<id>/companies/<companyId>/data/hello
    yield* (yield* Data).register("hello", (params) =>
      Effect.gen(function* () {
        const key = { scopeKind: "company" as const, scopeId: String(params.companyId), stateKey: "greetings" }
        const count = ((yield* state.get(key)) as number | null) ?? 0
        yield* state.set(key, count + 1)
        yield* logger.log("info", "hello served", { count: count + 1 })
        return { message: \`Hello, \${String(params.name ?? "world")}!\`, count: count + 1 }
      }))
  }),
  health: Effect.succeed({ status: "ok" as const })${provider ? `,
  // the sandbox provider "${provider}": each lease is a temp folder, commands run in it
  environment: {
    validateConfig: (p) => Effect.sync(() => Sandbox.validateConfig(p.config)),
    probe: () => Effect.succeed({ ok: true, summary: "${provider} ready" }),
    acquireLease: (p) => attempt(() => Sandbox.acquire(p.runId)),
    resumeLease: (p) => attempt(() => Sandbox.resume(p.providerLeaseId)),
    releaseLease: (p) => attempt(() => Sandbox.destroy(p.providerLeaseId)),
    destroyLease: (p) => attempt(() => Sandbox.destroy(p.providerLeaseId)),
    realizeWorkspace: (p) => Effect.succeed({ cwd: Sandbox.dirOf(p.lease.providerLeaseId) }),
    execute: (p) =>
      Effect.gen(function* () {
        const out = yield* SandboxProvider
        // output streams to the host while the command runs
        const runtime = yield* Effect.runtime<never>()
        return yield* attempt(() => Sandbox.execute(p, (stream, chunk) => Runtime.runFork(runtime)(out.log(stream, chunk))))
      })
  }` : ""}
})

export default plugin
runWorker(plugin, import.meta.url)
`

const sandboxCore = (provider: string) => `// The sandbox provider "${provider}" as plain async functions (the worker wires them as hooks): a
// lease is a folder under the temp dir named by a hash of the host's run id (so acquiring twice with
// the same id is one lease); execute runs the command there with exactly the given environment.
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const ROOT = join(tmpdir(), "${provider}-leases")
const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

export const dirOf = (leaseId: string) => join(ROOT, leaseId.replace(/[^a-zA-Z0-9_-]/g, "_"))

export const validateConfig = (config: Record<string, unknown>) => {
  const errors = Object.keys(config)
    .filter((k) => !["provider", "timeoutMs", "ttlMs", "reuseLease", "env", "onFailure"].includes(k))
    .map((k) => \`\${k}: unknown field\`)
  return errors.length > 0 ? { ok: false, errors } : { ok: true, normalizedConfig: config }
}

export const acquire = async (runId: string) => {
  const providerLeaseId = \`${provider}-\${createHash("sha256").update(runId).digest("hex").slice(0, 12)}\`
  mkdirSync(dirOf(providerLeaseId), { recursive: true })
  return { providerLeaseId, metadata: { dir: dirOf(providerLeaseId) } }
}

export const resume = async (providerLeaseId: string) =>
  existsSync(dirOf(providerLeaseId)) ? { providerLeaseId } : { providerLeaseId: null }

/** Idempotent: a lease that is already gone is destroyed. */
export const destroy = async (providerLeaseId: string) => {
  rmSync(dirOf(providerLeaseId), { recursive: true, force: true })
  return { providerLeaseId, state: "destroyed" as const }
}

export interface ExecuteParams {
  readonly lease: { readonly providerLeaseId: string }
  readonly command: string
  readonly args?: ReadonlyArray<string> | undefined
  readonly cwd?: string | undefined
  readonly env?: Readonly<Record<string, string>> | undefined
  readonly stdin?: string | undefined
  readonly timeoutMs?: number | undefined
}

export const execute = (p: ExecuteParams, log: (stream: "stdout" | "stderr", chunk: string) => void) =>
  new Promise<{ exitCode: number | null; signal: string | null; timedOut: boolean; stdout: string; stderr: string }>((resolve, reject) => {
    const dir = dirOf(p.lease.providerLeaseId)
    if (!existsSync(dir)) return reject(new Error(\`lease \${p.lease.providerLeaseId} is gone\`))
    const child = spawn(p.command, [...(p.args ?? [])], { cwd: p.cwd ?? dir, env: { PATH: DEFAULT_PATH, ...p.env }, stdio: ["pipe", "pipe", "pipe"] })
    let stdout = "", stderr = "", timedOut = false
    child.stdout.setEncoding("utf8").on("data", (c: string) => { stdout += c; log("stdout", c) })
    child.stderr.setEncoding("utf8").on("data", (c: string) => { stderr += c; log("stderr", c) })
    child.stdin.on("error", () => {})
    child.stdin.end(p.stdin ?? "")
    const timer = p.timeoutMs ? setTimeout(() => { timedOut = true; child.kill("SIGKILL") }, p.timeoutMs) : undefined
    child.on("error", (e) => { clearTimeout(timer); resolve({ exitCode: 127, signal: null, timedOut: false, stdout, stderr: stderr + e.message }) })
    child.on("close", (code, signal) => { clearTimeout(timer); resolve({ exitCode: timedOut ? null : code, signal, timedOut, stdout, stderr }) })
  })
`

const testFile = (effect: boolean, provider: string | undefined) => effect
  ? `// Runs the plugin in memory through the host's capability and company-scope gates (gantry/testing).
import { Effect } from "effect"
import { makeHarness } from "gantry/testing"
import { describe, expect, it } from "vitest"
import { readFileSync } from "node:fs"
import plugin from "../src/worker.js"

const manifest: unknown = JSON.parse(readFileSync(new URL("../manifest.json", import.meta.url), "utf8"))

const withHarness = <A>(f: (h: Effect.Effect.Success<ReturnType<typeof makeHarness>>) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(makeHarness(plugin, { manifest }), f)))

describe("plugin", () => {
  it("hello counts per company", () =>
    withHarness((h) =>
      Effect.gen(function* () {
        expect(yield* h.getData("hello", { name: "Ada" }, { companyId: "acme" })).toEqual({ message: "Hello, Ada!", count: 1 })
        expect(yield* h.getData("hello", {}, { companyId: "acme" })).toEqual({ message: "Hello, world!", count: 2 })
        expect(yield* h.getData("hello", {}, { companyId: "globex" })).toEqual({ message: "Hello, world!", count: 1 })
        expect(yield* h.getState({ scopeKind: "company", scopeId: "acme", stateKey: "greetings" })).toBe(2)
      })))
${provider ? `
  it("the ${provider} sandbox: acquire, execute, release", () =>
    withHarness((h) =>
      Effect.gen(function* () {
        const base = { driverKey: "${provider}", companyId: "acme", environmentId: "env-1", config: {} }
        const lease = (yield* h.call("environmentAcquireLease", { ...base, runId: "run-1" }, { companyId: "acme" })) as { providerLeaseId: string }
        const r = yield* h.call("environmentExecute", { ...base, lease, command: "sh", args: ["-c", "echo hi from $PWD"] }, { companyId: "acme" })
        expect(r).toMatchObject({ exitCode: 0, timedOut: false, stdout: expect.stringContaining("hi from") })
        expect(yield* h.call("environmentReleaseLease", { ...base, providerLeaseId: lease.providerLeaseId }, { companyId: "acme" })).toMatchObject({ state: "destroyed" })
      })))
` : ""}})
`
  : `// Runs the plugin in memory through the host's capability and company-scope gates (gantry/testing).
import { createTestHarness } from "gantry/testing"
import { afterEach, describe, expect, it } from "vitest"
import { readFileSync } from "node:fs"
import plugin from "../src/worker.js"

const manifest: unknown = JSON.parse(readFileSync(new URL("../manifest.json", import.meta.url), "utf8"))

const open: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  for (const h of open.splice(0)) await h.close()
})
const harness = async () => {
  const h = await createTestHarness(plugin, { manifest })
  open.push(h)
  return h
}

describe("plugin", () => {
  it("hello counts per company", async () => {
    const h = await harness()
    expect(await h.getData("hello", { name: "Ada" }, { companyId: "acme" })).toEqual({ message: "Hello, Ada!", count: 1 })
    expect(await h.getData("hello", {}, { companyId: "acme" })).toEqual({ message: "Hello, world!", count: 2 })
    expect(await h.getData("hello", {}, { companyId: "globex" })).toEqual({ message: "Hello, world!", count: 1 })
    expect(await h.getState({ scopeKind: "company", scopeId: "acme", stateKey: "greetings" })).toBe(2)
  })
${provider ? `
  it("the ${provider} sandbox: acquire, execute, release", async () => {
    const h = await harness()
    const base = { driverKey: "${provider}", companyId: "acme", environmentId: "env-1", config: {} }
    const lease = (await h.call("environmentAcquireLease", { ...base, runId: "run-1" }, { companyId: "acme" })) as { providerLeaseId: string }
    const r = await h.call("environmentExecute", { ...base, lease, command: "sh", args: ["-c", "echo hi from $PWD"] }, { companyId: "acme" })
    expect(r).toMatchObject({ exitCode: 0, timedOut: false, stdout: expect.stringContaining("hi from") })
    expect(await h.call("environmentReleaseLease", { ...base, providerLeaseId: lease.providerLeaseId }, { companyId: "acme" })).toMatchObject({ state: "destroyed" })
  })
` : ""}})
`

const buildScript = `// Bundle src/worker.ts into dist/worker.js (the manifest's entrypoints.worker): one file that plain
// Node runs, with the SDK and effect inside (a bundled worker starts several times faster).
import { build } from "esbuild"

await build({
  entryPoints: ["src/worker.ts"],
  outfile: "dist/worker.js",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  legalComments: "none",
  logLevel: "warning",
  // CommonJS packages inside an ESM bundle need a require
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" }
})
console.error("built dist/worker.js")
`

const readme = (id: string, o: ScaffoldOptions, sdkSpec: string) => `# ${title(id)}

A Gantry plugin (${o.effect ? "Effect" : "Promise"} style${o.provider ? `, sandbox provider \`${o.provider}\`` : ""}), made by
\`gantry plugins init\`.

| file | what |
|---|---|
| \`manifest.json\` | id, version, capabilities${o.provider ? ", the environment driver" : ""} (Gantry SPEC §1) |
| \`src/worker.ts\` | the worker: \`setup\` registers the handlers${o.provider ? `; \`src/sandbox.ts\` is the provider's core` : ""} |
| \`test/worker.test.ts\` | runs the plugin in memory with \`gantry/testing\` |
| \`build.mjs\` | bundles \`src/worker.ts\` into \`dist/worker.js\` with esbuild |

\`\`\`sh
npm install          # the SDK comes from ${sdkSpec}
npm test             # vitest, in memory, through the host's gates
npm run build        # dist/worker.js
npm run check        # TypeScript
\`\`\`

Install it into a running server (admin token), from this folder:

\`\`\`sh
npm run build && gantry plugins install "$PWD"
\`\`\`

Then \`gantry plugins get ${id}\` shows it \`ready\`, and the data handler answers
\`POST /api/plugins/${id}/companies/<companyId>/data/hello\` with \`{"params":{"name":"Ada"}}\`.${o.provider ? `
An environment uses the provider with \`{"driver":"sandbox","config":{"provider":"${id}/${o.provider}"}}\`.` : ""}
`

const files = (id: string, o: ScaffoldOptions, sdkSpec: string): Files => {
  const capabilities = ["plugin.state.read", "plugin.state.write", ...(o.provider ? ["environment.drivers.register"] : [])]
  const manifest = {
    id,
    apiVersion: 1,
    version: "0.1.0",
    displayName: title(id),
    description: `${title(id)}: a Gantry plugin`,
    author: "you",
    categories: [o.provider ? "workspace" : "automation"],
    capabilities,
    entrypoints: { worker: "dist/worker.js" },
    ...(o.provider
      ? {
          environmentDrivers: [{
            driverKey: o.provider,
            kind: "sandbox_provider",
            displayName: `${title(o.provider)} sandbox`,
            description: "Each lease is a temp folder on the plugin's machine; commands run in it",
            configSchema: { type: "object", properties: {}, additionalProperties: true }
          }]
        }
      : {})
  }
  const pkg = {
    name: id,
    version: "0.1.0",
    private: true,
    type: "module",
    description: manifest.description,
    gantryPlugin: { manifest: "manifest.json" },
    scripts: { build: "node build.mjs", test: "vitest run", check: "tsc --noEmit" },
    dependencies: { gantry: sdkSpec, ...(o.effect ? { effect: `^${VERSIONS.effect}` } : {}) },
    devDependencies: {
      "@types/node": VERSIONS.typesNode,
      esbuild: VERSIONS.esbuild,
      typescript: VERSIONS.typescript,
      vitest: VERSIONS.vitest
    }
  }
  const tsconfig = {
    compilerOptions: {
      target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2023", "DOM"], types: ["node"],
      strict: true, skipLibCheck: true, resolveJsonModule: true, noEmit: true
    },
    include: ["src", "test"]
  }
  return {
    "package.json": json(pkg),
    "manifest.json": json(manifest),
    "tsconfig.json": json(tsconfig),
    ".gitignore": "node_modules\ndist\n",
    "build.mjs": buildScript,
    "src/worker.ts": o.effect ? workerEffect(o.provider) : workerPromise(o.provider),
    ...(o.provider ? { "src/sandbox.ts": sandboxCore(o.provider) } : {}),
    "test/worker.test.ts": testFile(o.effect, o.provider),
    "README.md": readme(id, o, sdkSpec)
  }
}

/** Write the plugin package into `o.dir` (which must not exist or be empty). Returns what it wrote. */
export const scaffold = (o: ScaffoldOptions) =>
  Effect.gen(function* () {
    const fs = yield* FileSystem.FileSystem
    const fail = (message: string) => Effect.fail(new ScaffoldError({ message }))
    const dir = resolve(o.dir)
    const id = basename(dir).toLowerCase()
    if (!ID_RE.test(id)) return yield* fail(`cannot use "${basename(dir)}" as a plugin id: name the folder with a-z, 0-9, ".", "_" or "-" (starting with a letter or digit)`)
    if (o.provider !== undefined && !ID_RE.test(o.provider)) return yield* fail(`--provider "${o.provider}": a driver key is a-z, 0-9, ".", "_" or "-" (starting with a letter or digit)`)
    const platform = (what: string) => (e: { message: string }) => new ScaffoldError({ message: `${what}: ${e.message}` })
    if (yield* Effect.mapError(fs.exists(dir), platform(dir))) {
      const entries = yield* Effect.mapError(fs.readDirectory(dir), platform(dir))
      if (entries.length > 0) return yield* fail(`${dir} exists and is not empty: nothing was written`)
    }
    let sdkSpec: string
    if (o.sdk === undefined) sdkSpec = `file:${defaultSdkTarball()}`
    else if (o.sdk.startsWith("file:") || !(yield* Effect.orElseSucceed(fs.exists(resolve(o.sdk)), () => false))) sdkSpec = o.sdk
    else sdkSpec = `file:${isAbsolute(o.sdk) ? o.sdk : resolve(o.sdk)}`
    const written = files(id, o, sdkSpec)
    for (const [rel, text] of Object.entries(written)) {
      const path = join(dir, rel)
      yield* Effect.mapError(fs.makeDirectory(dirname(path), { recursive: true }), platform(dirname(path)))
      yield* Effect.mapError(fs.writeFileString(path, text), platform(path))
    }
    return { dir, id, sdkSpec, files: Object.keys(written) }
  })

export const initCommand = Cli.make(
  "init",
  {
    dir: Args.text({ name: "dir" }).pipe(Args.withDescription("Folder to create (its name is the plugin id)")),
    effect: Options.boolean("effect").pipe(Options.withDescription("Write the worker in Effect style (default: Promise, Paperclip's definePlugin shape)")),
    provider: Options.text("provider").pipe(Options.optional, Options.withDescription("Also make it a sandbox provider with this driver key")),
    sdk: Options.text("sdk").pipe(Options.optional, Options.withDescription(
      "The SDK dependency: a path to the tarball of `npm run pack:sdk` or an npm spec (default: this checkout's dist/gantry-sdk-<version>.tgz)"))
  },
  (o) =>
    scaffold({ dir: o.dir, effect: o.effect, provider: Option.getOrUndefined(o.provider), sdk: Option.getOrUndefined(o.sdk) }).pipe(
      Effect.flatMap((r) =>
        Effect.gen(function* () {
          const fs = yield* FileSystem.FileSystem
          yield* Console.log(`plugin ${r.id} written to ${r.dir}:\n  ${r.files.join("\n  ")}`)
          if (r.sdkSpec.startsWith("file:") && !(yield* Effect.orElseSucceed(fs.exists(r.sdkSpec.slice(5)), () => false))) {
            yield* Console.error(`note: the SDK tarball ${r.sdkSpec.slice(5)} does not exist yet: run \`npm run pack:sdk\` in the Gantry checkout first`)
          }
          yield* Console.log(`next: cd ${r.dir} && npm install && npm test && npm run build`)
        })),
      Effect.catchTag("ScaffoldError", (e) =>
        Effect.zipRight(Console.error(`gantry: error: ${e.message}`), Effect.sync(() => void (process.exitCode = 1))))
    )
).pipe(Cli.withDescription("Scaffold a plugin package (manifest, worker, a test on gantry/testing, an esbuild build, a README)"))
