// The plugin manifest (SPEC §1): its type and a validator that reports every problem with its path.
import { Cron, Either } from "effect"
import { isCapability, isKnownCapability, type Capability } from "./capabilities.js"

export interface ManifestJob {
  readonly jobKey: string
  readonly displayName: string
  readonly description?: string
  readonly schedule?: string
}
export interface ManifestWebhook {
  readonly endpointKey: string
  readonly displayName: string
  readonly description?: string
}
export interface ManifestEnvironmentDriver {
  readonly driverKey: string
  readonly kind: "sandbox_provider"
  readonly displayName: string
  readonly description?: string
  readonly configSchema: Record<string, unknown>
  readonly supportsReusableLeases?: boolean
}
/** A JSON API route the plugin serves under `/api/plugins/<id>/api<path>` (Paperclip's declaration). */
export interface ManifestApiRoute {
  readonly routeKey: string
  readonly method: "GET" | "POST" | "PATCH" | "DELETE"
  /** Plugin-local path, literal or `:param` segments, e.g. `/items/:itemId`. */
  readonly path: string
  readonly auth: "board" | "agent" | "board-or-agent" | "webhook"
  readonly capability: "api.routes.register"
  readonly checkoutPolicy?: "none" | "required-for-agent-in-progress" | "always-for-agent"
  readonly companyResolution?: { readonly from: "body" | "query"; readonly key: string } | { readonly from: "issue"; readonly param: string }
}
export const API_ROUTE_METHODS = ["GET", "POST", "PATCH", "DELETE"] as const
const API_ROUTE_AUTH = ["board", "agent", "board-or-agent", "webhook"]
const API_ROUTE_CHECKOUT = ["none", "required-for-agent-in-progress", "always-for-agent"]
const ROUTE_KEY_RE = /^[a-z0-9][a-z0-9._:-]*$/
const ROUTE_PATH_RE = /^\/[a-zA-Z0-9:_./-]*$/

export interface Manifest {
  readonly id: string
  readonly apiVersion: 1
  readonly version: string
  readonly displayName: string
  readonly description: string
  readonly author: string
  readonly categories: ReadonlyArray<"connector" | "workspace" | "automation" | "ui">
  readonly minimumHostVersion?: string
  readonly capabilities: ReadonlyArray<string>
  readonly entrypoints: { readonly worker: string; readonly [k: string]: unknown }
  readonly instanceConfigSchema?: Record<string, unknown>
  readonly jobs?: ReadonlyArray<ManifestJob>
  readonly webhooks?: ReadonlyArray<ManifestWebhook>
  readonly environmentDrivers?: ReadonlyArray<ManifestEnvironmentDriver>
  readonly apiRoutes?: ReadonlyArray<ManifestApiRoute>
  readonly shutdownTimeoutMs?: number
  readonly [ignored: string]: unknown
}

/** A validated manifest plus what the host noticed but did not refuse. */
export interface ManifestInfo {
  readonly manifest: Manifest
  readonly activeCapabilities: ReadonlyArray<Capability>
  readonly inactiveCapabilities: ReadonlyArray<string>
  readonly ignoredFields: ReadonlyArray<string>
}

export const IGNORED_FIELDS = [
  "ui", "launchers", "tools", "database", "agents", "projects", "routines", "skills",
  "localFolders", "objectReferences"
] as const
const KNOWN_FIELDS = new Set([
  "id", "apiVersion", "version", "displayName", "description", "author", "categories", "minimumHostVersion",
  "capabilities", "entrypoints", "instanceConfigSchema", "jobs", "webhooks", "environmentDrivers", "apiRoutes",
  "shutdownTimeoutMs", "$schema"
])
const CATEGORIES = new Set(["connector", "workspace", "automation", "ui"])
const ID_RE = /^[a-z0-9][a-z0-9._-]*$/
const SEMVER_RE = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const parseSemver = (v: string): [number, number, number] | undefined => {
  const m = SEMVER_RE.exec(v)
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined
}
export const semverLess = (a: string, b: string): boolean => {
  const x = parseSemver(a), y = parseSemver(b)
  if (!x || !y) return false
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i]! < y[i]!
  // same core version: a pre-release sorts before the release
  return a.split("+")[0]!.includes("-") && !b.split("+")[0]!.includes("-")
}

/** 5-field cron check (SPEC §14: a 6-field cron is refused). Field syntax is checked by `Cron.parse` in the scheduler. */
export const cronFieldCount = (s: string): number => s.trim().split(/\s+/).filter((x) => x.length > 0).length

const CRON_FIELD_RE = /^(\*|\d+(-\d+)?)(\/\d+)?(,(\*|\d+(-\d+)?)(\/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?(,[A-Za-z]{3})*$/

export const validateCron = (s: string): string | undefined => {
  const n = cronFieldCount(s)
  if (n !== 5) return `cron must have 5 fields (minute hour day month weekday), got ${n}`
  const bad = s.trim().split(/\s+/).find((f) => !CRON_FIELD_RE.test(f))
  if (bad !== undefined) return `invalid cron field "${bad}"`
  const parsed = Cron.parse(s, "UTC")
  return Either.isLeft(parsed) ? `invalid cron "${s}": ${parsed.left.message}` : undefined
}

export interface ValidateOptions {
  readonly hostVersion: string
}

/** Validate an unknown value as a manifest. Left = every problem, each prefixed by its path. */
export const validateManifest = (
  input: unknown,
  options: ValidateOptions
): Either.Either<ManifestInfo, ReadonlyArray<string>> => {
  const problems: Array<string> = []
  if (!isObject(input)) return Either.left(["manifest: must be an object"])
  const m = input
  const ignoredFields: Array<string> = []
  for (const key of Object.keys(m)) {
    if ((IGNORED_FIELDS as ReadonlyArray<string>).includes(key)) ignoredFields.push(key)
    else if (!KNOWN_FIELDS.has(key)) problems.push(`${key}: unknown field`)
  }
  const str = (path: string, v: unknown, max?: number, required = true): v is string => {
    if (v === undefined) {
      if (required) problems.push(`${path}: required`)
      return false
    }
    if (typeof v !== "string" || v.length === 0) {
      problems.push(`${path}: must be a non-empty string`)
      return false
    }
    if (max !== undefined && v.length > max) {
      problems.push(`${path}: must be at most ${max} characters (got ${v.length})`)
      return false
    }
    return true
  }
  if (str("id", m.id) && !ID_RE.test(m.id)) problems.push(`id: "${m.id}" must match ^[a-z0-9][a-z0-9._-]*$`)
  if (m.apiVersion !== 1) problems.push(`apiVersion: must be 1 (got ${JSON.stringify(m.apiVersion)})`)
  if (str("version", m.version) && !SEMVER_RE.test(m.version)) problems.push(`version: "${m.version}" is not semver`)
  str("displayName", m.displayName, 100)
  str("description", m.description, 500)
  str("author", m.author, 200)
  if (!Array.isArray(m.categories) || m.categories.length === 0) problems.push("categories: must list at least one of connector, workspace, automation, ui")
  else m.categories.forEach((c, i) => {
    if (typeof c !== "string" || !CATEGORIES.has(c)) problems.push(`categories[${i}]: unknown category ${JSON.stringify(c)}`)
  })
  if (m.minimumHostVersion !== undefined) {
    if (typeof m.minimumHostVersion !== "string" || !SEMVER_RE.test(m.minimumHostVersion)) problems.push("minimumHostVersion: must be semver")
    else if (semverLess(options.hostVersion, m.minimumHostVersion)) problems.push(`minimumHostVersion: plugin needs host ${m.minimumHostVersion}, this host is ${options.hostVersion}`)
  }
  const active: Array<Capability> = []
  const inactive: Array<string> = []
  if (!Array.isArray(m.capabilities) || m.capabilities.length === 0) problems.push("capabilities: must list at least one capability")
  else m.capabilities.forEach((c, i) => {
    if (typeof c !== "string") problems.push(`capabilities[${i}]: must be a string`)
    else if (isCapability(c)) active.push(c)
    else if (isKnownCapability(c)) inactive.push(c)
    else problems.push(`capabilities[${i}]: unknown capability "${c}"`)
  })
  const has = (c: Capability) => active.includes(c)
  if (!isObject(m.entrypoints)) problems.push("entrypoints: required object with a worker path")
  else if (str("entrypoints.worker", m.entrypoints.worker)) {
    const w = m.entrypoints.worker
    if (w.startsWith("/") || w.split(/[\\/]/).includes("..")) problems.push("entrypoints.worker: must be a path inside the plugin root")
  }
  if (m.instanceConfigSchema !== undefined && !isObject(m.instanceConfigSchema)) problems.push("instanceConfigSchema: must be a JSON Schema object")
  const uniqueList = (
    field: string,
    keyField: string,
    check: (item: Record<string, unknown>, path: string) => void
  ) => {
    const v = m[field]
    if (v === undefined) return
    if (!Array.isArray(v)) {
      problems.push(`${field}: must be an array`)
      return
    }
    const seen = new Set<string>()
    v.forEach((item, i) => {
      const path = `${field}[${i}]`
      if (!isObject(item)) {
        problems.push(`${path}: must be an object`)
        return
      }
      if (str(`${path}.${keyField}`, item[keyField])) {
        const k = item[keyField] as string
        if (!ID_RE.test(k)) problems.push(`${path}.${keyField}: "${k}" must match ^[a-z0-9][a-z0-9._-]*$`)
        if (seen.has(k)) problems.push(`${path}.${keyField}: duplicate key "${k}"`)
        seen.add(k)
      }
      str(`${path}.displayName`, item.displayName, 100)
      if (item.description !== undefined) str(`${path}.description`, item.description, 500)
      check(item, path)
    })
    if (v.length > 0) {
      const need: Capability = field === "jobs" ? "jobs.schedule" : field === "webhooks" ? "webhooks.receive" : "environment.drivers.register"
      if (!has(need)) problems.push(`${field}: declaring ${field} needs the "${need}" capability`)
    }
  }
  uniqueList("jobs", "jobKey", (job, path) => {
    if (job.schedule !== undefined) {
      if (typeof job.schedule !== "string") problems.push(`${path}.schedule: must be a 5-field cron string`)
      else {
        const err = validateCron(job.schedule)
        if (err) problems.push(`${path}.schedule: ${err}`)
      }
    }
  })
  uniqueList("webhooks", "endpointKey", () => {})
  uniqueList("environmentDrivers", "driverKey", (d, path) => {
    if (d.kind !== "sandbox_provider") problems.push(`${path}.kind: must be "sandbox_provider"`)
    if (!isObject(d.configSchema)) problems.push(`${path}.configSchema: required JSON Schema object`)
    if (d.supportsReusableLeases !== undefined && typeof d.supportsReusableLeases !== "boolean") problems.push(`${path}.supportsReusableLeases: must be a boolean`)
  })
  if (m.apiRoutes !== undefined) {
    if (!Array.isArray(m.apiRoutes)) problems.push("apiRoutes: must be an array")
    else {
      const keys = new Set<string>()
      const signatures = new Set<string>()
      m.apiRoutes.forEach((r, i) => {
        const path = `apiRoutes[${i}]`
        if (!isObject(r)) {
          problems.push(`${path}: must be an object`)
          return
        }
        for (const k of Object.keys(r)) {
          if (!["routeKey", "method", "path", "auth", "capability", "checkoutPolicy", "companyResolution"].includes(k)) problems.push(`${path}.${k}: unknown field`)
        }
        if (str(`${path}.routeKey`, r.routeKey, 100)) {
          if (!ROUTE_KEY_RE.test(r.routeKey)) problems.push(`${path}.routeKey: "${r.routeKey}" must be lowercase letters, digits, dots, colons, underscores or hyphens`)
          else if (keys.has(r.routeKey)) problems.push(`${path}.routeKey: duplicate key "${r.routeKey}"`)
          keys.add(r.routeKey)
        }
        const methodOk = typeof r.method === "string" && (API_ROUTE_METHODS as ReadonlyArray<string>).includes(r.method)
        if (!methodOk) problems.push(`${path}.method: must be one of ${API_ROUTE_METHODS.join(", ")}`)
        if (str(`${path}.path`, r.path)) {
          const p = r.path
          if (!ROUTE_PATH_RE.test(p)) problems.push(`${path}.path: "${p}" must start with / and contain only path-safe literal or :param segments`)
          else if (p.includes("..") || p.includes("//") || p === "/api" || p.startsWith("/api/") || p === "/plugins" || p.startsWith("/plugins/")) {
            problems.push(`${path}.path: "${p}" must stay inside the plugin api namespace`)
          } else if (methodOk) {
            // one handler per method and path shape (`:a` and `:b` in the same place are the same route)
            const sig = `${r.method} ${p.replace(/:[^/]+/g, ":")}`
            if (signatures.has(sig)) problems.push(`${path}: duplicate route ${r.method} ${p}`)
            signatures.add(sig)
          }
        }
        if (typeof r.auth !== "string" || !API_ROUTE_AUTH.includes(r.auth)) problems.push(`${path}.auth: must be one of ${API_ROUTE_AUTH.join(", ")}`)
        if (r.capability !== "api.routes.register") problems.push(`${path}.capability: must be "api.routes.register"`)
        if (r.checkoutPolicy !== undefined && (typeof r.checkoutPolicy !== "string" || !API_ROUTE_CHECKOUT.includes(r.checkoutPolicy))) {
          problems.push(`${path}.checkoutPolicy: must be one of ${API_ROUTE_CHECKOUT.join(", ")}`)
        }
        const cr = r.companyResolution
        if (cr !== undefined) {
          const good = isObject(cr) && (
            ((cr.from === "body" || cr.from === "query") && typeof cr.key === "string" && cr.key.length > 0 && Object.keys(cr).length === 2) ||
            (cr.from === "issue" && typeof cr.param === "string" && cr.param.length > 0 && Object.keys(cr).length === 2))
          if (!good) problems.push(`${path}.companyResolution: must be {from: "body"|"query", key} or {from: "issue", param}`)
        }
      })
      if (m.apiRoutes.length > 0 && !has("api.routes.register")) problems.push(`apiRoutes: declaring apiRoutes needs the "api.routes.register" capability`)
    }
  }
  if (m.shutdownTimeoutMs !== undefined) {
    const t = m.shutdownTimeoutMs
    if (typeof t !== "number" || !Number.isInteger(t) || t < 1000 || t > 60000) problems.push("shutdownTimeoutMs: must be an integer between 1000 and 60000")
  }
  if (problems.length > 0) return Either.left(problems)
  return Either.right({
    manifest: m as unknown as Manifest,
    activeCapabilities: active,
    inactiveCapabilities: inactive,
    ignoredFields
  })
}
