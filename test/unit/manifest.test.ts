// Manifest validation (SPEC §1, §2, §14): every rule, with the path of each problem.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { validateManifest, type ManifestInfo } from "../../src/protocol/manifest.js"

const HOST = "1.4.2"

const valid = (): Record<string, unknown> => ({
  id: "acme.sandbox-provider_1",
  apiVersion: 1,
  version: "1.2.3-beta.1+build.5",
  displayName: "Acme sandbox",
  description: "Runs agent work in Acme sandboxes",
  author: "Acme Inc.",
  categories: ["workspace", "automation"],
  minimumHostVersion: "1.4.0",
  capabilities: ["environment.drivers.register", "jobs.schedule", "webhooks.receive", "plugin.state.read"],
  entrypoints: { worker: "./dist/worker.js" },
  instanceConfigSchema: { type: "object", properties: { apiKey: { type: "string", format: "secret-ref" } } },
  jobs: [{ jobKey: "sync", displayName: "Sync", description: "Nightly sync", schedule: "0 3 * * *" }],
  webhooks: [{ endpointKey: "push", displayName: "Push" }],
  environmentDrivers: [{
    driverKey: "acme",
    kind: "sandbox_provider",
    displayName: "Acme",
    configSchema: { type: "object" },
    supportsReusableLeases: true
  }],
  shutdownTimeoutMs: 15000
})

const ok = (input: unknown, hostVersion = HOST): ManifestInfo => {
  const r = validateManifest(input, { hostVersion })
  if (Either.isLeft(r)) throw new Error(`expected a valid manifest, got: ${r.left.join("; ")}`)
  return r.right
}
const problems = (input: unknown, hostVersion = HOST): ReadonlyArray<string> => {
  const r = validateManifest(input, { hostVersion })
  if (Either.isRight(r)) throw new Error("expected the manifest to be refused")
  return r.left
}
/** The manifest with `patch` applied (an `undefined` value deletes the field). */
const withFields = (patch: Record<string, unknown>) => {
  const m = valid()
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete m[k]
    else m[k] = v
  }
  return m
}

describe("validateManifest", () => {
  it.effect("accepts a full valid manifest and reports what it noticed", () =>
    Effect.sync(() => {
      const info = ok(valid())
      expect(info.manifest.id).toBe("acme.sandbox-provider_1")
      expect(info.activeCapabilities).toEqual(["environment.drivers.register", "jobs.schedule", "webhooks.receive", "plugin.state.read"])
      expect(info.inactiveCapabilities).toEqual([])
      expect(info.ignoredFields).toEqual([])
    }))

  it.effect("accepts a minimal manifest (optional fields absent)", () =>
    Effect.sync(() => {
      const info = ok({
        id: "x",
        apiVersion: 1,
        version: "0.0.1",
        displayName: "X",
        description: "x",
        author: "me",
        categories: ["connector"],
        capabilities: ["events.subscribe"],
        entrypoints: { worker: "worker.js" }
      })
      expect(info.activeCapabilities).toEqual(["events.subscribe"])
    }))

  it.effect("refuses a value that is not an object", () =>
    Effect.sync(() => {
      expect(problems(null)).toEqual(["manifest: must be an object"])
      expect(problems([valid()])).toEqual(["manifest: must be an object"])
      expect(problems("{}")).toEqual(["manifest: must be an object"])
    }))

  describe("id", () => {
    it.effect("must match ^[a-z0-9][a-z0-9._-]*$", () =>
      Effect.sync(() => {
        for (const id of ["Acme", "-acme", ".acme", "acme plugin", "acme/x", "ACME", "_x"]) {
          expect(problems(withFields({ id }))).toEqual([`id: "${id}" must match ^[a-z0-9][a-z0-9._-]*$`])
        }
        for (const id of ["0", "a", "a.b-c_d", "9lives"]) ok(withFields({ id }))
      }))
    it.effect("is required and must be a string", () =>
      Effect.sync(() => {
        expect(problems(withFields({ id: undefined }))).toEqual(["id: required"])
        expect(problems(withFields({ id: 42 }))).toEqual(["id: must be a non-empty string"])
        expect(problems(withFields({ id: "" }))).toEqual(["id: must be a non-empty string"])
      }))
  })

  it.effect("apiVersion must be the literal 1", () =>
    Effect.sync(() => {
      expect(problems(withFields({ apiVersion: 2 }))).toEqual(["apiVersion: must be 1 (got 2)"])
      expect(problems(withFields({ apiVersion: "1" }))).toEqual(['apiVersion: must be 1 (got "1")'])
      expect(problems(withFields({ apiVersion: undefined }))).toEqual(["apiVersion: must be 1 (got undefined)"])
    }))

  it.effect("version must be semver", () =>
    Effect.sync(() => {
      for (const version of ["1.0", "v1.0.0", "1.0.0.0", "01.0.0", "latest"]) {
        expect(problems(withFields({ version }))).toEqual([`version: "${version}" is not semver`])
      }
      for (const version of ["0.0.0", "10.20.30", "1.0.0-rc.1", "1.0.0+sha.abc"]) ok(withFields({ version }))
      expect(problems(withFields({ version: undefined }))).toEqual(["version: required"])
    }))

  describe("text lengths", () => {
    const cases = [["displayName", 100], ["description", 500], ["author", 200]] as const
    for (const [field, max] of cases) {
      it.effect(`${field} is required and at most ${max} characters`, () =>
        Effect.sync(() => {
          ok(withFields({ [field]: "x".repeat(max) }))
          expect(problems(withFields({ [field]: "x".repeat(max + 1) })))
            .toEqual([`${field}: must be at most ${max} characters (got ${max + 1})`])
          expect(problems(withFields({ [field]: undefined }))).toEqual([`${field}: required`])
          expect(problems(withFields({ [field]: "" }))).toEqual([`${field}: must be a non-empty string`])
        }))
    }
  })

  it.effect("categories: at least one of connector, workspace, automation, ui", () =>
    Effect.sync(() => {
      for (const c of ["connector", "workspace", "automation", "ui"]) ok(withFields({ categories: [c] }))
      expect(problems(withFields({ categories: [] })))
        .toEqual(["categories: must list at least one of connector, workspace, automation, ui"])
      expect(problems(withFields({ categories: undefined })))
        .toEqual(["categories: must list at least one of connector, workspace, automation, ui"])
      expect(problems(withFields({ categories: "ui" })))
        .toEqual(["categories: must list at least one of connector, workspace, automation, ui"])
      expect(problems(withFields({ categories: ["ui", "storage", 3] })))
        .toEqual(['categories[1]: unknown category "storage"', "categories[2]: unknown category 3"])
    }))

  describe("minimumHostVersion", () => {
    it.effect("is refused when the host is older", () =>
      Effect.sync(() => {
        expect(problems(withFields({ minimumHostVersion: "1.5.0" })))
          .toEqual(["minimumHostVersion: plugin needs host 1.5.0, this host is 1.4.2"])
        expect(problems(withFields({ minimumHostVersion: "2.0.0" }), "1.99.99"))
          .toEqual(["minimumHostVersion: plugin needs host 2.0.0, this host is 1.99.99"])
        // numeric, not lexicographic, comparison
        expect(problems(withFields({ minimumHostVersion: "1.10.0" }), "1.9.0")).toHaveLength(1)
        expect(problems(withFields({ minimumHostVersion: "1.4.3" }))).toHaveLength(1)
      }))
    it.effect("is accepted when the host is the same or newer", () =>
      Effect.sync(() => {
        ok(withFields({ minimumHostVersion: "1.4.2" }))
        ok(withFields({ minimumHostVersion: "1.4.1" }))
        ok(withFields({ minimumHostVersion: "0.9.9" }))
        ok(withFields({ minimumHostVersion: "1.9.0" }), "1.10.0")
        ok(withFields({ minimumHostVersion: undefined }))
      }))
    it.effect("must be semver", () =>
      Effect.sync(() => {
        expect(problems(withFields({ minimumHostVersion: ">=1.0.0" }))).toEqual(["minimumHostVersion: must be semver"])
        expect(problems(withFields({ minimumHostVersion: 1 }))).toEqual(["minimumHostVersion: must be semver"])
      }))
  })

  describe("capabilities", () => {
    it.effect("an unknown capability is refused with its index", () =>
      Effect.sync(() => {
        expect(problems(withFields({ capabilities: ["environment.drivers.register", "jobs.schedule", "x", "webhooks.receive"] })))
          .toEqual(['capabilities[2]: unknown capability "x"'])
        expect(problems(withFields({ capabilities: ["environment.drivers.register", "jobs.schedule", "webhooks.receive", 7] })))
          .toEqual(["capabilities[3]: must be a string"])
      }))
    it.effect("at least one is required", () =>
      Effect.sync(() => {
        const base = withFields({ jobs: undefined, webhooks: undefined, environmentDrivers: undefined })
        expect(problems({ ...base, capabilities: [] })).toEqual(["capabilities: must list at least one capability"])
        const { capabilities: _, ...without } = base
        expect(problems(without)).toEqual(["capabilities: must list at least one capability"])
      }))
    it.effect("inactive Paperclip capabilities are accepted and listed apart from active ones", () =>
      Effect.sync(() => {
        const info = ok(withFields({
          capabilities: ["ui.page.register", "environment.drivers.register", "jobs.schedule", "issues.read", "webhooks.receive", "agent.tools.register"]
        }))
        expect(info.activeCapabilities).toEqual(["environment.drivers.register", "jobs.schedule", "webhooks.receive"])
        expect(info.inactiveCapabilities).toEqual(["ui.page.register", "issues.read", "agent.tools.register"])
      }))
    it.effect("an inactive capability alone is enough to install", () =>
      Effect.sync(() => {
        const info = ok(withFields({ capabilities: ["ui.sidebar.register"], jobs: undefined, webhooks: undefined, environmentDrivers: undefined }))
        expect(info.activeCapabilities).toEqual([])
        expect(info.inactiveCapabilities).toEqual(["ui.sidebar.register"])
      }))
  })

  describe("fields", () => {
    it.effect("ignored Paperclip fields are accepted and listed", () =>
      Effect.sync(() => {
        const all = ["ui", "launchers", "tools", "database", "agents", "projects", "routines", "skills", "localFolders", "objectReferences"]
        const m = valid()
        for (const f of all) m[f] = f === "ui" ? { slots: [] } : []
        const info = ok(m)
        expect([...info.ignoredFields].sort()).toEqual([...all].sort())
      }))
    it.effect("an unknown field is refused", () =>
      Effect.sync(() => {
        expect(problems(withFields({ colour: "blue" }))).toEqual(["colour: unknown field"])
        expect(problems(withFields({ Tools: [], hooks: {} }))).toEqual(["Tools: unknown field", "hooks: unknown field"])
      }))
    it.effect("$schema is allowed", () =>
      Effect.sync(() => {
        ok(withFields({ $schema: "https://example.com/manifest.schema.json" }))
      }))
  })

  describe("entrypoints", () => {
    it.effect("needs a worker path inside the plugin root", () =>
      Effect.sync(() => {
        expect(problems(withFields({ entrypoints: undefined }))).toEqual(["entrypoints: required object with a worker path"])
        expect(problems(withFields({ entrypoints: "worker.js" }))).toEqual(["entrypoints: required object with a worker path"])
        expect(problems(withFields({ entrypoints: {} }))).toEqual(["entrypoints.worker: required"])
        expect(problems(withFields({ entrypoints: { worker: "/abs/worker.js" } })))
          .toEqual(["entrypoints.worker: must be a path inside the plugin root"])
        expect(problems(withFields({ entrypoints: { worker: "../other/worker.js" } })))
          .toEqual(["entrypoints.worker: must be a path inside the plugin root"])
        expect(problems(withFields({ entrypoints: { worker: "dist/../../worker.js" } })))
          .toEqual(["entrypoints.worker: must be a path inside the plugin root"])
        ok(withFields({ entrypoints: { worker: "dist/worker.js", ui: "dist/ui" } }))
      }))
  })

  it.effect("instanceConfigSchema must be an object", () =>
    Effect.sync(() => {
      expect(problems(withFields({ instanceConfigSchema: "object" }))).toEqual(["instanceConfigSchema: must be a JSON Schema object"])
      expect(problems(withFields({ instanceConfigSchema: [] }))).toEqual(["instanceConfigSchema: must be a JSON Schema object"])
    }))

  describe("jobs, webhooks, environmentDrivers", () => {
    it.effect("duplicate keys are refused at the duplicate's index", () =>
      Effect.sync(() => {
        expect(problems(withFields({
          jobs: [
            { jobKey: "sync", displayName: "A" },
            { jobKey: "other", displayName: "B" },
            { jobKey: "sync", displayName: "C" }
          ]
        }))).toEqual(['jobs[2].jobKey: duplicate key "sync"'])
        expect(problems(withFields({
          webhooks: [{ endpointKey: "push", displayName: "A" }, { endpointKey: "push", displayName: "B" }]
        }))).toEqual(['webhooks[1].endpointKey: duplicate key "push"'])
        const driver = { kind: "sandbox_provider", displayName: "D", configSchema: {} }
        expect(problems(withFields({
          environmentDrivers: [{ ...driver, driverKey: "d" }, { ...driver, driverKey: "d" }]
        }))).toEqual(['environmentDrivers[1].driverKey: duplicate key "d"'])
      }))

    it.effect("each list needs its capability", () =>
      Effect.sync(() => {
        expect(problems(withFields({ capabilities: ["environment.drivers.register", "webhooks.receive"] })))
          .toEqual(['jobs: declaring jobs needs the "jobs.schedule" capability'])
        expect(problems(withFields({ capabilities: ["environment.drivers.register", "jobs.schedule"] })))
          .toEqual(['webhooks: declaring webhooks needs the "webhooks.receive" capability'])
        expect(problems(withFields({ capabilities: ["jobs.schedule", "webhooks.receive"] })))
          .toEqual(['environmentDrivers: declaring environmentDrivers needs the "environment.drivers.register" capability'])
        // an empty list declares nothing
        ok(withFields({ capabilities: ["events.subscribe"], jobs: [], webhooks: [], environmentDrivers: [] }))
      }))

    it.effect("a job schedule is a 5-field cron", () =>
      Effect.sync(() => {
        const job = (schedule: unknown) => withFields({ jobs: [{ jobKey: "j", displayName: "J", schedule }] })
        expect(problems(job("0 0 3 * * *")))
          .toEqual(["jobs[0].schedule: cron must have 5 fields (minute hour day month weekday), got 6"])
        expect(problems(job("* * * *")))
          .toEqual(["jobs[0].schedule: cron must have 5 fields (minute hour day month weekday), got 4"])
        expect(problems(job("0 3 * * ?"))).toEqual(['jobs[0].schedule: invalid cron field "?"'])
        expect(problems(job(300))).toEqual(["jobs[0].schedule: must be a 5-field cron string"])
        for (const s of ["*/5 * * * *", "0 9 * * MON-FRI", "0,30 8-18 1 1-6 1", "  15 2 * * sun  "]) ok(job(s))
        ok(withFields({ jobs: [{ jobKey: "manual-only", displayName: "Manual" }] }))
      }))

    it.effect("items are checked field by field", () =>
      Effect.sync(() => {
        expect(problems(withFields({ jobs: ["sync"] }))).toEqual(["jobs[0]: must be an object"])
        expect(problems(withFields({ jobs: {} }))).toEqual(["jobs: must be an array"])
        expect(problems(withFields({ jobs: [{ jobKey: "Sync Job" }] })))
          .toEqual(['jobs[0].jobKey: "Sync Job" must match ^[a-z0-9][a-z0-9._-]*$', "jobs[0].displayName: required"])
        expect(problems(withFields({ webhooks: [{ displayName: "W", description: "d".repeat(501) }] })))
          .toEqual(["webhooks[0].endpointKey: required", "webhooks[0].description: must be at most 500 characters (got 501)"])
        expect(problems(withFields({
          environmentDrivers: [{ driverKey: "d", kind: "vm", displayName: "D", supportsReusableLeases: "yes" }]
        }))).toEqual([
          'environmentDrivers[0].kind: must be "sandbox_provider"',
          "environmentDrivers[0].configSchema: required JSON Schema object",
          "environmentDrivers[0].supportsReusableLeases: must be a boolean"
        ])
      }))
  })

  it.effect("shutdownTimeoutMs is an integer in 1000..60000", () =>
    Effect.sync(() => {
      for (const t of [1000, 10000, 60000]) ok(withFields({ shutdownTimeoutMs: t }))
      ok(withFields({ shutdownTimeoutMs: undefined }))
      for (const t of [999, 60001, 0, -5, 1500.5, "5000", null]) {
        expect(problems(withFields({ shutdownTimeoutMs: t }))).toEqual(["shutdownTimeoutMs: must be an integer between 1000 and 60000"])
      }
    }))

  it.effect("a manifest with several problems lists every one of them", () =>
    Effect.sync(() => {
      const m = {
        ...valid(),
        id: "Bad Id",
        apiVersion: 2,
        version: "1.0",
        displayName: "d".repeat(101),
        categories: ["games"],
        minimumHostVersion: "9.0.0",
        capabilities: ["events.subscribe", "ui.page.register", "x"],
        jobs: [{ jobKey: "a", displayName: "A", schedule: "0 0 0 * * *" }, { jobKey: "a", displayName: "A2" }],
        shutdownTimeoutMs: 500,
        extra: true,
        tools: []
      }
      const p = problems(m)
      expect([...p].sort()).toEqual([
        'apiVersion: must be 1 (got 2)',
        'capabilities[2]: unknown capability "x"',
        'categories[0]: unknown category "games"',
        "displayName: must be at most 100 characters (got 101)",
        'environmentDrivers: declaring environmentDrivers needs the "environment.drivers.register" capability',
        "extra: unknown field",
        'id: "Bad Id" must match ^[a-z0-9][a-z0-9._-]*$',
        'jobs: declaring jobs needs the "jobs.schedule" capability',
        "jobs[0].schedule: cron must have 5 fields (minute hour day month weekday), got 6",
        'jobs[1].jobKey: duplicate key "a"',
        "minimumHostVersion: plugin needs host 9.0.0, this host is 1.4.2",
        "shutdownTimeoutMs: must be an integer between 1000 and 60000",
        'version: "1.0" is not semver',
        'webhooks: declaring webhooks needs the "webhooks.receive" capability'
      ].sort())
      // every problem names its path
      for (const line of p) expect(line).toMatch(/^[A-Za-z$][\w$]*(\[\d+\])?(\.\w+)?: /)
    }))

  describe("apiRoutes", () => {
    const route = (over: Record<string, unknown> = {}) => ({ routeKey: "items.get", method: "GET", path: "/items/:id", auth: "board", capability: "api.routes.register", ...over })
    const caps = ["plugin.state.read", "environment.drivers.register", "jobs.schedule", "webhooks.receive", "api.routes.register"]
    it.effect("Paperclip's declarations are hosted: accepted, not ignored; api.routes.register is active", () =>
      Effect.sync(() => {
        const info = ok(withFields({ capabilities: caps, apiRoutes: [route(), route({ routeKey: "items.add", method: "POST", path: "/items", companyResolution: { from: "body", key: "companyId" }, checkoutPolicy: "none" })] }))
        expect(info.ignoredFields).toEqual([])
        expect(info.activeCapabilities).toContain("api.routes.register")
        expect(info.manifest.apiRoutes).toHaveLength(2)
      }))
    it.effect("every bad field is named; duplicates and a missing capability are refused", () =>
      Effect.sync(() => {
        expect(problems(withFields({ apiRoutes: [route()] }))).toEqual(['apiRoutes: declaring apiRoutes needs the "api.routes.register" capability'])
        expect(problems(withFields({
          capabilities: caps,
          apiRoutes: [
            route({ routeKey: "Bad Key", method: "PUT", path: "items", auth: "anyone", capability: "x", checkoutPolicy: "often", companyResolution: { from: "header", key: "c" }, extra: 1 }),
            route(),
            route({ routeKey: "other", path: "/items/:itemId" }),
            route({ routeKey: "escape", path: "/api/companies" }),
            route({ routeKey: "dots", path: "/a/../b" }),
            "nope"
          ]
        }))).toEqual([
          "apiRoutes[0].extra: unknown field",
          'apiRoutes[0].routeKey: "Bad Key" must be lowercase letters, digits, dots, colons, underscores or hyphens',
          "apiRoutes[0].method: must be one of GET, POST, PATCH, DELETE",
          'apiRoutes[0].path: "items" must start with / and contain only path-safe literal or :param segments',
          "apiRoutes[0].auth: must be one of board, agent, board-or-agent, webhook",
          'apiRoutes[0].capability: must be "api.routes.register"',
          "apiRoutes[0].checkoutPolicy: must be one of none, required-for-agent-in-progress, always-for-agent",
          'apiRoutes[0].companyResolution: must be {from: "body"|"query", key} or {from: "issue", param}',
          "apiRoutes[2]: duplicate route GET /items/:itemId",
          'apiRoutes[3].path: "/api/companies" must stay inside the plugin api namespace',
          'apiRoutes[4].path: "/a/../b" must stay inside the plugin api namespace',
          "apiRoutes[5]: must be an object"
        ])
        expect(problems(withFields({ capabilities: caps, apiRoutes: [route(), route({ method: "POST" })] }))).toEqual(['apiRoutes[1].routeKey: duplicate key "items.get"'])
        expect(problems(withFields({ capabilities: caps, apiRoutes: {} }))).toEqual(["apiRoutes: must be an array"])
      }))
  })
})
