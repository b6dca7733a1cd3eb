import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

const src = (p: string) => fileURLToPath(new URL(`./src/${p}`, import.meta.url))

export default defineConfig({
  resolve: {
    alias: [
      { find: /^gantry\/sdk$/, replacement: src("sdk/index.ts") },
      { find: /^gantry\/testing$/, replacement: src("testing/index.ts") },
      { find: /^gantry\/protocol$/, replacement: src("protocol/index.ts") },
      { find: /^gantry$/, replacement: src("index.ts") }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    poolOptions: { forks: { singleFork: false, maxForks: 2, minForks: 1 } }
  }
})
