// The same plugin (test/fixtures/interop-twin) on the Paperclip SDK and on Gantry's SDK, driven over
// bare NDJSON by a plain child_process with the same lines: both workers must answer alike (same
// results, same error codes; messages may differ) and make the same nested calls.
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { childPids, fixture } from "../helpers.js"
import { spawnDriver, type Answer, type Driver, type WireMessage } from "./ndjson.js"

const twin = (name: "paperclip-twin" | "interop-gantry-twin") => {
  const root = fixture(name)
  const manifest = JSON.parse(readFileSync(join(root, "manifest.json"), "utf8")) as { entrypoints: { worker: string } }
  return { root, entry: join(root, manifest.entrypoints.worker) }
}
// Both workers get the identical initialize params (the Paperclip twin's manifest).
const manifest = JSON.parse(readFileSync(join(fixture("paperclip-twin"), "manifest.json"), "utf8")) as unknown

const SCOPE_DENIED = { code: -32005, message: `Plugin may not act for company "globex" inside an invocation for company "acme"` }

/** The host side of nested calls, like Gantry's host would answer them for company "acme". */
const answer = (m: WireMessage): Answer => {
  const p = (m.params ?? {}) as Record<string, unknown>
  switch (m.method) {
    case "events.subscribe":
      return { result: null }
    case "state.get":
      return p.scopeId === "acme" ? { result: p.stateKey === "count" ? 41 : null } : { error: SCOPE_DENIED }
    case "state.set":
      return p.scopeId === "acme" ? { result: null } : { error: SCOPE_DENIED }
    case "config.get":
      return p.companyId === "acme" ? { result: { greeting: "Hi" } } : { result: {} }
    default:
      return { error: { code: -32601, message: `Method not found: ${m.method}` } }
  }
}

const invocation = (id: string, companyId = "acme") => ({ paperclipInvocation: { id, scope: { companyId } } })
const event = (eventId: string) => ({
  eventId,
  eventType: "company.created",
  occurredAt: "2026-01-01T00:00:00.000Z",
  actorId: null,
  actorType: "system",
  entityId: "acme",
  entityType: "company",
  companyId: "acme",
  payload: { name: "Acme" }
})

type Outcome = { readonly result: unknown } | { readonly code: number; readonly message: string }
const outcome = (m: WireMessage): Outcome =>
  m.error ? { code: m.error.code, message: m.error.message } : { result: m.result }
/** What must match across the two workers: the result, or the error code (messages may differ). */
const comparable = (o: Outcome) => ("code" in o ? { code: o.code } : o)

/** The scripted session: the same lines, in the same order, to either worker. */
const session = (d: Driver) =>
  Effect.gen(function* () {
    const out: Record<string, Outcome> = {}
    const step = (name: string, id: number, method: string, params: unknown, envelope?: Record<string, unknown>) =>
      Effect.map(d.request(id, method, params, envelope), (m) => {
        expect(m.jsonrpc).toBe("2.0")
        out[name] = outcome(m)
      })

    yield* step("initialize", 1, "initialize", {
      manifest,
      config: {},
      instanceInfo: { instanceId: "interop", hostVersion: "0.1.0" },
      apiVersion: 1
    })
    // setup subscribed through a nested request the driver answered
    yield* d.seen((m) => m.method === "events.subscribe", "events.subscribe from setup")
    yield* step("initializeAgain", 2, "initialize", { manifest, config: {}, apiVersion: 1 })
    yield* step("configChangedAcme", 3, "configChanged", { config: { greeting: "Hi" }, companyId: "acme" }, invocation("inv-cfg-acme"))
    yield* step("configChangedGlobex", 4, "configChanged", { config: { greeting: "Yo" }, companyId: "globex" }, invocation("inv-cfg-globex", "globex"))
    yield* step("getDataEcho", 5, "getData", { key: "echo", companyId: "acme", params: { x: 1, nested: { y: [1, 2] } } }, invocation("inv-echo"))
    yield* step("getDataCounter", 6, "getData", { key: "counter", companyId: "acme", params: {} }, invocation("inv-counter"))
    yield* step("getDataMissingKey", 7, "getData", { key: "nope", companyId: "acme", params: {} }, invocation("inv-missing"))
    yield* step("getDataThrows", 8, "getData", { key: "throws", companyId: "acme", params: {} }, invocation("inv-throws"))
    yield* step("getDataThrowsWithCode", 9, "getData", { key: "throws-with-code", companyId: "acme", params: {} }, invocation("inv-throws-code"))
    yield* step("getDataRefused", 10, "getData", { key: "refused", companyId: "acme", params: { other: "globex" } }, invocation("inv-refused"))
    yield* step("unknownMethod", 11, "frobnicate", {})
    yield* step("validateConfigOk", 12, "validateConfig", { config: { greeting: "Hi" } })
    yield* step("validateConfigBad", 13, "validateConfig", { config: { greeting: "x".repeat(41) } })
    yield* step("onEventRequest", 14, "onEvent", { event: event("evt-1") }, invocation("inv-event-1"))
    d.notify("onEvent", { event: event("evt-2") }, invocation("inv-event-2"))
    yield* d.seen((m) => m.method === "state.set" && m.paperclipInvocationId === "inv-event-2", "state.set from the onEvent notification")
    yield* step("health", 15, "health", {})
    d.writeLine("this is not json {")
    out.garbage = outcome(yield* d.response(null))
    yield* step("healthAfterGarbage", 16, "health", {})
    yield* step("shutdown", 17, "shutdown", {})
    const exit = yield* d.exited

    // Nested requests and notifications, grouped by the invocation id they echo.
    const nested: Record<string, Array<{ kind: string; method: string; params: unknown }>> = {}
    for (const m of d.messages) {
      if (typeof m.method !== "string") continue
      expect(m.jsonrpc).toBe("2.0")
      const key = m.paperclipInvocationId ?? "(no invocation)"
      ;(nested[key] ??= []).push({ kind: m.id === undefined ? "notification" : "request", method: m.method, params: m.params })
    }
    return { out, nested, exit, stray: d.strayLines, stderr: d.stderr() }
  })

/** The Gantry twin runs from source through tsx (as SPEC §3.1 has TypeScript workers in tests), so no stale bundle is compared. */
const run = (name: "paperclip-twin" | "interop-gantry-twin") => {
  const { root, entry } = twin(name)
  return Effect.scoped(Effect.flatMap(spawnDriver({ entry, cwd: root, answer }), session))
}

/**
 * Steps where the two SDKs genuinely differ; asserted explicitly below instead of compared.
 * - configChangedGlobex: Paperclip's worker refuses a configChanged for a second company with a
 *   different config (-32006 CROSS_TENANT_CONFIG) unless the definition sets `multiCompanyConfig:
 *   true`; Gantry's SDK has no such guard and accepts it.
 */
const KNOWN_DIFFERENCES = ["configChangedGlobex"]
const comparableSteps = (out: Record<string, Outcome>) =>
  Object.fromEntries(Object.entries(out).filter(([k]) => !KNOWN_DIFFERENCES.includes(k)).map(([k, o]) => [k, comparable(o)]))

describe("bare NDJSON driver: Paperclip SDK worker vs Gantry SDK worker", () => {
  it.live("the same lines get the same answers and the same nested calls", () =>
    Effect.gen(function* () {
      const before = childPids()
      const [paperclip, gantry] = yield* Effect.all([run("paperclip-twin"), run("interop-gantry-twin")], { concurrency: 2 })
      expect(childPids().filter((p) => !before.includes(p))).toEqual([])

      // Same answers, step by step: results deep-equal, errors by code.
      expect(Object.keys(gantry.out)).toEqual(Object.keys(paperclip.out))
      expect(comparableSteps(gantry.out)).toEqual(comparableSteps(paperclip.out))
      // ... and they are the answers the protocol asks for, not merely equal ones.
      expect(comparableSteps(paperclip.out)).toEqual({
        initialize: { result: { ok: true, supportedMethods: ["validateConfig"] } },
        initializeAgain: { code: -32002 },
        configChangedAcme: { result: null },
        getDataEcho: { result: { params: { x: 1, nested: { y: [1, 2] }, companyId: "acme" } } },
        getDataCounter: { result: { count: 42, greeting: "Hi" } },
        getDataMissingKey: { code: -32002 },
        getDataThrows: { code: -32002 },
        getDataThrowsWithCode: { code: -32004 },
        // the host's -32005 reached plugin code as a rejection with that code and message
        getDataRefused: { result: { code: -32005, message: SCOPE_DENIED.message } },
        unknownMethod: { code: -32601 },
        validateConfigOk: { result: { ok: true, errors: [] } },
        validateConfigBad: { result: { ok: false, errors: ["greeting: at most 40 characters"] } },
        onEventRequest: { result: null },
        health: { result: { status: "ok" } },
        garbage: { code: -32700 },
        healthAfterGarbage: { result: { status: "ok" } },
        shutdown: { result: null }
      })

      // Same nested calls and notifications, each echoing the invocation it was made in.
      expect(gantry.nested).toEqual(paperclip.nested)
      const stateKey = { scopeKind: "company", scopeId: "acme" }
      expect(paperclip.nested).toEqual({
        "(no invocation)": [{ kind: "request", method: "events.subscribe", params: { eventPattern: "company.created", filter: null } }],
        "inv-counter": [
          { kind: "request", method: "state.get", params: { ...stateKey, stateKey: "count" } },
          { kind: "request", method: "state.set", params: { ...stateKey, stateKey: "count", value: 42 } },
          { kind: "request", method: "config.get", params: { companyId: "acme" } },
          { kind: "notification", method: "log", params: { level: "info", message: "counted", meta: { companyId: "acme", count: 42 } } }
        ],
        "inv-refused": [{ kind: "request", method: "state.get", params: { scopeKind: "company", scopeId: "globex", stateKey: "count" } }],
        "inv-event-1": [{ kind: "request", method: "state.set", params: { ...stateKey, stateKey: "welcomed", value: "evt-1" } }],
        "inv-event-2": [{ kind: "request", method: "state.set", params: { ...stateKey, stateKey: "welcomed", value: "evt-2" } }]
      })

      // Both exit cleanly after shutdown and never wrote anything but protocol lines.
      for (const r of [paperclip, gantry]) {
        expect(r.exit).toEqual({ code: 0, signal: null })
        expect(r.stray).toEqual([])
        expect(r.stderr).toBe("")
      }

      // KNOWN DIFFERENCE (see KNOWN_DIFFERENCES): Paperclip's single-tenant guard.
      expect(comparable(paperclip.out.configChangedGlobex!)).toEqual({ code: -32006 })
      expect(gantry.out.configChangedGlobex).toEqual({ result: null })
    }))
})
