// Benchmark runner: `npm run bench` runs every benchmark, `npm run bench -- <name>` only that one.
// Each benchmark prints JSON lines to stdout; add one by adding an entry to `benches`.
import { rpc } from "./rpc.js"

const benches: Record<string, () => Promise<void>> = {
  rpc,
  capabilities: () => import("./capabilities.js").then((m) => m.capabilities()),
  leases: () => import("./leases.js").then((m) => m.leases()),
  http: () => import("./http.js").then((m) => m.http()),
  bwrap: () => import("./bwrap.js").then((m) => m.bwrap()),
  plugins: () => import("./plugins.js").then((m) => m.plugins()),
  apifuzz: () => import("./apifuzz.js").then((m) => m.apifuzz())
}

const main = async () => {
  const wanted = process.argv.slice(2).filter((a) => a !== "--")
  const unknown = wanted.filter((n) => !(n in benches))
  if (unknown.length > 0) {
    console.error(`unknown benchmark(s): ${unknown.join(", ")}; available: ${Object.keys(benches).join(", ")}`)
    process.exitCode = 2
    return
  }
  for (const name of wanted.length > 0 ? wanted : Object.keys(benches)) await benches[name]!()
}

main().catch((e: unknown) => {
  console.error(e)
  process.exitCode = 1
})
