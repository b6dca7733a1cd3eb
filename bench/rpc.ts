// RPC benchmark, side by side in one run: Gantry's two plugin styles (`definePlugin`, `Plugin.make`),
// Paperclip's published SDK worker bundled (esbuild, the same options as ours) and unbundled (as
// Paperclip plugins ship), and raw Node; each worker driven by a bare NDJSON driver (neither side's
// host) and by Gantry's PluginHost. Prints one `rpc` line per worker × driver, then one `rpc-ratio`
// line per Gantry style against BUNDLED Paperclip under the bare driver, and one `rpc-ratio-host`
// line per style under Gantry's host. See bench/README.md for the knobs (GANTRY_BENCH_RPC_*).
import { Effect, ManagedRuntime } from "effect"
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import { setTimeout as sleep } from "node:timers/promises"
import { PluginHost } from "../src/host/PluginHost.js"
import { hostLayer } from "../test/helpers.js"

export const fixtures = resolve(import.meta.dirname, "fixtures")

const envNumber = (name: string, fallback: number, min: number): number => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min) throw new Error(`${name}=${raw}: expected a number ≥ ${min}`)
  return n
}
const envList = <A extends string>(name: string, all: ReadonlyArray<A>): ReadonlyArray<A> => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return all
  const wanted = raw.split(",").map((x) => x.trim()).filter(Boolean)
  const unknown = wanted.filter((w) => !all.includes(w as A))
  if (unknown.length > 0) throw new Error(`${name}: unknown ${unknown.join(", ")}; known: ${all.join(", ")}`)
  return all.filter((a) => wanted.includes(a))
}

/** GANTRY_BENCH_RPC_SCALE multiplies every call count (0.1 for a quick look, 1 for the report). */
const SCALE = envNumber("GANTRY_BENCH_RPC_SCALE", 1, 0.01)
const COLD_STARTS = Math.round(envNumber("GANTRY_BENCH_RPC_COLD_STARTS", 5, 1))
const RSS_SAMPLES = Math.min(COLD_STARTS, 3)
const IDLE_MS = 1_000
const RUNS = Math.round(envNumber("GANTRY_BENCH_RPC_RUNS", 3, 1))
/** Slices per run of a figure, interleaved across variants (see `collect`). Slices of a few thousand
 * calls: with slices of a few hundred, per-slice wake-up costs of idle processes dominated and the
 * figures swung by ±40 % between runs. */
const CHUNKS = 4
const INFLIGHT_WIDTH = 64
const calls = (n: number, unit: number) => Math.max(unit * CHUNKS, Math.round((n * SCALE) / (unit * CHUNKS)) * unit * CHUNKS)
const SEQ_CALLS = calls(20_000, 1)
const INFLIGHT_CALLS = calls(INFLIGHT_WIDTH * 320, INFLIGHT_WIDTH)
const NESTED_CALLS = calls(8_000, 1)
const PAYLOAD = { n: 42, text: "hello, bench" }

/** The workers: the same echo plugin written five ways (bench/fixtures). */
const WORKERS = ["definePlugin", "Plugin.make", "paperclip-bundled", "paperclip", "raw"] as const
export type WorkerName = (typeof WORKERS)[number]
const DRIVERS = ["bare", "host"] as const
export type DriverName = (typeof DRIVERS)[number]
export type VariantName = `${WorkerName}/${DriverName}`
export type Key = "echo" | "nested"

interface WorkerFixture {
  readonly folder: string
  /** worker file under `folder` */
  readonly entry: string
  readonly id: string
}
const paperclipManifest = join(fixtures, "paperclip-echo", "manifest.json")
const workerFixtures: Record<WorkerName, WorkerFixture> = {
  "definePlugin": { folder: join(fixtures, "gantry-echo-promise"), entry: "dist/worker.js", id: "bench-echo-promise" },
  "Plugin.make": { folder: join(fixtures, "gantry-echo"), entry: "dist/worker.js", id: "bench-echo" },
  "paperclip-bundled": { folder: join(fixtures, "paperclip-echo-bundled"), entry: "dist/worker.js", id: "bench-echo-paperclip-bundled" },
  "paperclip": { folder: join(fixtures, "paperclip-echo"), entry: "worker.mjs", id: "bench-echo-paperclip" },
  "raw": { folder: join(fixtures, "raw-echo"), entry: "worker.mjs", id: "bench-echo-raw" }
}

/** One running worker, driven by its host. Each measurement returns elapsed milliseconds. */
export interface Driver {
  readonly pid: number
  readonly seq: (n: number, key: Key) => Promise<number>
  readonly inflight: (n: number, width: number) => Promise<number>
  readonly stop: () => Promise<void>
}

export interface Variant {
  readonly name: VariantName
  /** Spawn a worker and initialize it; `ms` = spawn → `initialize` result received. */
  readonly start: () => Promise<{ readonly driver: Driver; readonly ms: number }>
  readonly dispose: () => Promise<void>
}

type Figure = "seq" | "inflight" | "nested"
interface Figures {
  coldStartMs: number
  idleRssMiB: number
  seqCallsPerS: number
  inflightCallsPerS: number
  nestedCallsPerS: number
  /** CPU time per call (user + system), of the worker process and of this process (the driver; for
   * `host` variants, Gantry's host): on a loaded machine a steadier comparison than calls/s. */
  workerCpuUs: Record<Figure, number>
  driverCpuUs: Record<Figure, number>
}

/** CPU milliseconds used so far by process `pid` (utime + stime from /proc; USER_HZ = 100). */
const cpuMs = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(f[11]) + Number(f[12])) * 10
}
const selfCpuMs = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits

const rssMiB = (pid: number): number => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"))
  if (!line) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(line.split(/\s+/)[1]) / 1024
}

// ---- the bare NDJSON host (Paperclip-style and raw variants) ----

const workerEnv = () => ({ PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin", NODE_ENV: "production", TZ: "UTC" })

interface Reply {
  readonly result?: unknown
  readonly error?: { readonly code: number; readonly message: string }
}

export const bareVariant = (
  name: VariantName,
  folder: string,
  entry: string,
  manifestFile: string,
  execArgv: ReadonlyArray<string> = []
): Variant => {
  // every worker gets the identical initialize params (the Paperclip fixture's manifest)
  const manifest = JSON.parse(readFileSync(manifestFile, "utf8")) as unknown
  const live = new Set<Driver>()
  const start = () =>
    new Promise<{ driver: Driver; ms: number }>((resolveStart, rejectStart) => {
      const t0 = performance.now()
      const child = spawn(process.execPath, [...execArgv, join(folder, entry)], { cwd: folder, env: workerEnv(), stdio: ["pipe", "pipe", "pipe"] })
      const pending = new Map<number, (reply: Reply) => void>()
      let nextId = 1
      let stderr = ""
      const exited = new Promise<void>((r) => child.once("exit", () => r()))
      const write = (msg: object) => child.stdin.write(JSON.stringify(msg) + "\n")
      const call = (method: string, params: unknown) =>
        new Promise<unknown>((res, rej) => {
          const id = nextId++
          pending.set(id, (reply) => (reply.error ? rej(new Error(`${method}: ${reply.error.message}`)) : res(reply.result)))
          write({ jsonrpc: "2.0", id, method, params })
        })
      const onLine = (line: string) => {
        if (line.length === 0) return
        const msg = JSON.parse(line) as { id?: number | string | null; method?: string } & Reply
        if (typeof msg.method === "string") {
          if (msg.id === undefined || msg.id === null) return // log notifications
          if (msg.method === "state.get") write({ jsonrpc: "2.0", id: msg.id, result: null })
          else write({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: `Method not found: ${msg.method}` } })
          return
        }
        const resume = pending.get(msg.id as number)
        if (resume) {
          pending.delete(msg.id as number)
          resume(msg)
        }
      }
      let rest = ""
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (chunk: string) => {
        const text = rest + chunk
        let from = 0
        let nl = text.indexOf("\n", from)
        while (nl !== -1) {
          onLine(text.slice(from, nl))
          from = nl + 1
          nl = text.indexOf("\n", from)
        }
        rest = text.slice(from)
      })
      child.stderr.setEncoding("utf8")
      child.stderr.on("data", (c: string) => {
        stderr = (stderr + c).slice(-4000)
      })
      child.stdin.on("error", () => {})
      child.once("exit", (code, signal) => {
        for (const [, resume] of pending) resume({ error: { code: -32003, message: `worker exited (${signal ?? code}): ${stderr}` } })
        pending.clear()
      })

      const getData = (key: Key) => call("getData", { key, params: PAYLOAD })
      const driver: Driver = {
        pid: child.pid!,
        seq: async (n, key) => {
          const t = performance.now()
          for (let i = 0; i < n; i++) await getData(key)
          return performance.now() - t
        },
        inflight: async (n, width) => {
          const lane = async (calls: number) => {
            for (let i = 0; i < calls; i++) await getData("echo")
          }
          const t = performance.now()
          await Promise.all(Array.from({ length: width }, () => lane(n / width)))
          return performance.now() - t
        },
        stop: async () => {
          live.delete(driver)
          if (child.exitCode !== null || child.signalCode !== null) return
          child.stdin.end()
          const gone = await Promise.race([exited.then(() => true), sleep(3_000).then(() => false)])
          if (!gone) {
            child.kill("SIGKILL")
            await exited
          }
        }
      }
      live.add(driver)
      call("initialize", { manifest, config: {}, instanceInfo: { instanceId: "bench", hostVersion: "0.1.0" }, apiVersion: 1 }).then(
        () => resolveStart({ driver, ms: performance.now() - t0 }),
        (e: unknown) => {
          void driver.stop()
          rejectStart(e)
        }
      )
    })
  return {
    name,
    start,
    dispose: async () => {
      await Promise.all([...live].map((d) => d.stop()))
    }
  }
}

// ---- Gantry: the PluginHost service with a real child process ----

export const hostVariant = async (
  name: VariantName,
  fixture: WorkerFixture,
  overrides: Parameters<typeof hostLayer>[0] = {}
): Promise<Variant> => {
  const GANTRY_ID = fixture.id
  const runtime = ManagedRuntime.make(hostLayer(overrides))
  await runtime.runPromise(Effect.flatMap(PluginHost, (host) => host.install(fixture.folder)))

  const lane = (calls: number, key: Key) =>
    Effect.gen(function* () {
      const host = yield* PluginHost
      for (let i = 0; i < calls; i++) yield* host.call(GANTRY_ID, "getData", { key, params: PAYLOAD })
    })
  const timed = async <A, E>(program: Effect.Effect<A, E, PluginHost>) => {
    const t = performance.now()
    await runtime.runPromise(program)
    return performance.now() - t
  }

  const start = async () => {
    const t0 = performance.now()
    const snap = await runtime.runPromise(Effect.flatMap(PluginHost, (host) => host.start(GANTRY_ID)))
    const ms = performance.now() - t0
    const driver: Driver = {
      pid: snap.pid!,
      seq: (n, key) => timed(lane(n, key)),
      inflight: (n, width) =>
        timed(Effect.forEach(Array.from({ length: width }), () => lane(n / width, "echo"), { concurrency: "unbounded", discard: true })),
      stop: () => runtime.runPromise(Effect.flatMap(PluginHost, (host) => host.stop(GANTRY_ID)))
    }
    return { driver, ms }
  }
  return { name, start, dispose: () => runtime.dispose() }
}

// ---- the benchmark ----

const collect = async (variants: ReadonlyArray<Variant>) => {
  const cold = new Map<VariantName, Array<number>>()
  const rss = new Map<VariantName, Array<number>>()
  const seq = new Map<VariantName, Array<number>>()
  const inflight = new Map<VariantName, Array<number>>()
  const nested = new Map<VariantName, Array<number>>()
  const drivers = new Map<VariantName, Driver>()
  for (const v of variants) {
    for (const m of [cold, rss, seq, inflight, nested]) m.set(v.name, [])
  }

  // cold start and idle RSS: a fresh worker each time, the variants' order rotating per round; the
  // round's workers idle together before their RSS is read; the last round's stay up for the calls
  for (let k = 0; k < COLD_STARTS; k++) {
    const round: Array<readonly [Variant, Driver]> = []
    for (let i = 0; i < variants.length; i++) {
      const v = variants[(i + k) % variants.length]!
      const { driver, ms } = await v.start()
      cold.get(v.name)!.push(ms)
      round.push([v, driver])
    }
    if (k < RSS_SAMPLES) {
      await sleep(IDLE_MS)
      for (const [v, driver] of round) rss.get(v.name)!.push(rssMiB(driver.pid))
    }
    for (const [v, driver] of round) {
      if (k < COLD_STARTS - 1) await driver.stop()
      else drivers.set(v.name, driver)
    }
  }

  for (const v of variants) {
    const d = drivers.get(v.name)!
    await d.seq(1_000, "echo")
    await d.inflight(INFLIGHT_WIDTH * 100, INFLIGHT_WIDTH)
    await d.seq(500, "nested")
  }
  // Each run of a figure is cut into CHUNKS slices taken round-robin across the variants (rotating who
  // goes first), and a variant's figure is its calls over its summed time: this machine switches
  // between a fast and a slow regime for seconds at a time (other load), and slicing makes every
  // variant see the same mix instead of one variant catching a slow stretch.
  const figures: ReadonlyArray<readonly [Map<VariantName, Array<number>>, number, (d: Driver) => Promise<number>]> = [
    [seq, SEQ_CALLS, (d) => d.seq(SEQ_CALLS / CHUNKS, "echo")],
    [inflight, INFLIGHT_CALLS, (d) => d.inflight(INFLIGHT_CALLS / CHUNKS, INFLIGHT_WIDTH)],
    [nested, NESTED_CALLS, (d) => d.seq(NESTED_CALLS / CHUNKS, "nested")]
  ]
  const names: ReadonlyArray<Figure> = ["seq", "inflight", "nested"]
  const cpu = new Map<VariantName, Record<Figure, { worker: number; driver: number; calls: number }>>(
    variants.map((v) => [v.name, { seq: { worker: 0, driver: 0, calls: 0 }, inflight: { worker: 0, driver: 0, calls: 0 }, nested: { worker: 0, driver: 0, calls: 0 } }])
  )
  for (let r = 0; r < RUNS; r++) {
    for (const [fi, [into, calls, measure]] of figures.entries()) {
      const ms = new Map<VariantName, number>(variants.map((v) => [v.name, 0]))
      for (let c = 0; c < CHUNKS; c++) {
        for (let i = 0; i < variants.length; i++) {
          const v = variants[(i + c + r) % variants.length]!
          const d = drivers.get(v.name)!
          const w0 = cpuMs(d.pid)
          const s0 = selfCpuMs()
          ms.set(v.name, ms.get(v.name)! + (await measure(d)))
          const acc = cpu.get(v.name)![names[fi]!]
          acc.worker += cpuMs(d.pid) - w0
          acc.driver += selfCpuMs() - s0
          acc.calls += calls / CHUNKS
        }
      }
      for (const v of variants) into.get(v.name)!.push(calls / (ms.get(v.name)! / 1000))
    }
  }
  for (const v of variants) await drivers.get(v.name)!.stop()

  const perCall = (c: Record<Figure, { worker: number; driver: number; calls: number }>, who: "worker" | "driver") =>
    Object.fromEntries(names.map((n) => [n, round((c[n][who] * 1000) / c[n].calls, 1)])) as Record<Figure, number>
  const out = new Map<VariantName, Figures>()
  for (const v of variants) {
    out.set(v.name, {
      coldStartMs: median(cold.get(v.name)!),
      idleRssMiB: median(rss.get(v.name)!),
      seqCallsPerS: median(seq.get(v.name)!),
      inflightCallsPerS: median(inflight.get(v.name)!),
      nestedCallsPerS: median(nested.get(v.name)!),
      workerCpuUs: perCall(cpu.get(v.name)!, "worker"),
      driverCpuUs: perCall(cpu.get(v.name)!, "driver")
    })
  }
  return out
}

const line = (bench: string, extra: Record<string, unknown>, f: Figures) => JSON.stringify({
  bench,
  ...extra,
  coldStartMs: round(f.coldStartMs, 1),
  idleRssMiB: round(f.idleRssMiB, 1),
  seqCallsPerS: Math.round(f.seqCallsPerS),
  inflightCallsPerS: Math.round(f.inflightCallsPerS),
  nestedCallsPerS: Math.round(f.nestedCallsPerS),
  workerCpuUsPerCall: f.workerCpuUs,
  driverCpuUsPerCall: f.driverCpuUs
})
/** Lower is better for cold start and RSS, higher for the call rates; the keys are the issue's. */
const ratio = (bench: string, style: string, driver: DriverName, g: Figures, p: Figures) => JSON.stringify({
  bench,
  style,
  against: "paperclip-bundled",
  driver,
  coldStart: round(g.coldStartMs / p.coldStartMs, 2),
  idleRss: round(g.idleRssMiB / p.idleRssMiB, 2),
  seq: round(g.seqCallsPerS / p.seqCallsPerS, 2),
  inflight: round(g.inflightCallsPerS / p.inflightCallsPerS, 2),
  nested: round(g.nestedCallsPerS / p.nestedCallsPerS, 2),
  // worker CPU per call, Gantry ÷ Paperclip (lower is better; steadier than calls/s under load)
  workerCpu: {
    seq: round(g.workerCpuUs.seq / p.workerCpuUs.seq, 2),
    inflight: round(g.workerCpuUs.inflight / p.workerCpuUs.inflight, 2),
    nested: round(g.workerCpuUs.nested / p.workerCpuUs.nested, 2)
  }
})

export const rpc = async (): Promise<void> => {
  const workers = envList("GANTRY_BENCH_RPC_WORKERS", WORKERS)
  const drivers = envList("GANTRY_BENCH_RPC_DRIVERS", DRIVERS)
  console.error(`[bench rpc] workers ${workers.join(", ")}; drivers ${drivers.join(", ")}; ${SEQ_CALLS} seq / ${INFLIGHT_CALLS} in flight / ${NESTED_CALLS} nested calls × ${RUNS} runs; loadavg ${readFileSync("/proc/loadavg", "utf8").trim()}`)
  const variants: Array<Variant> = []
  try {
    for (const driver of drivers) {
      for (const w of workers) {
        const f = workerFixtures[w]
        if (driver === "bare") variants.push(bareVariant(`${w}/bare`, f.folder, f.entry, paperclipManifest))
        else if (w !== "raw") variants.push(await hostVariant(`${w}/host`, f)) // the raw worker speaks only the bench's subset
      }
    }
    const figures = await collect(variants)
    for (const [variant, f] of figures) {
      const [worker, driver] = variant.split("/")
      console.log(line("rpc", { worker, driver, variant }, f))
    }
    for (const driver of drivers) {
      const p = figures.get(`paperclip-bundled/${driver}`)
      if (!p) continue
      for (const style of ["definePlugin", "Plugin.make"] as const) {
        const g = figures.get(`${style}/${driver}`)
        if (g) console.log(ratio(driver === "bare" ? "rpc-ratio" : "rpc-ratio-host", style, driver, g, p))
      }
    }
    console.error(`[bench rpc] done; loadavg ${readFileSync("/proc/loadavg", "utf8").trim()}`)
  } finally {
    for (const v of variants) await v.dispose()
  }
}
