// Event pattern and filter matching (SPEC §5.3).
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { filterMatches, patternMatches, validatePattern } from "../../src/protocol/events.js"
import type { EventEnvelope } from "../../src/protocol/methods.js"

const event = (over: Partial<EventEnvelope> = {}): EventEnvelope => ({
  eventId: "ev-1",
  eventType: "issue.created",
  occurredAt: "2025-01-01T00:00:00.000Z",
  companyId: "acme",
  entityType: "issue",
  entityId: "iss-1",
  payload: { agentId: "agent-7", projectId: "proj-3" },
  ...over
})

describe("patternMatches", () => {
  it.effect("an exact name matches only itself", () =>
    Effect.sync(() => {
      expect(patternMatches("issue.created", "issue.created")).toBe(true)
      expect(patternMatches("issue.created", "issue.updated")).toBe(false)
      expect(patternMatches("issue.created", "issue.created.v2")).toBe(false)
      expect(patternMatches("issue.created", "issue")).toBe(false)
      expect(patternMatches("issue", "issue.created")).toBe(false)
    }))

  it.effect("a trailing .* matches names under the prefix, not the prefix itself nor look-alikes", () =>
    Effect.sync(() => {
      expect(patternMatches("issue.*", "issue.created")).toBe(true)
      expect(patternMatches("issue.*", "issue.comment.added")).toBe(true)
      expect(patternMatches("plugin.acme.*", "plugin.acme.sync-done")).toBe(true)
      expect(patternMatches("issue.*", "issue")).toBe(false)
      expect(patternMatches("issue.*", "issues.created")).toBe(false)
      expect(patternMatches("issue.*", "agent.issue.created")).toBe(false)
      expect(patternMatches("plugin.acme.*", "plugin.acmex.done")).toBe(false)
    }))

  it.effect("* alone matches everything", () =>
    Effect.sync(() => {
      expect(patternMatches("*", "issue.created")).toBe(true)
      expect(patternMatches("*", "x")).toBe(true)
    }))
})

describe("filterMatches", () => {
  it.effect("no filter, or an empty one, matches every event", () =>
    Effect.sync(() => {
      expect(filterMatches(undefined, event())).toBe(true)
      expect(filterMatches(null, event())).toBe(true)
      expect(filterMatches({}, event())).toBe(true)
    }))

  it.effect("companyId must equal the event's company", () =>
    Effect.sync(() => {
      expect(filterMatches({ companyId: "acme" }, event())).toBe(true)
      expect(filterMatches({ companyId: "globex" }, event())).toBe(false)
    }))

  it.effect("agentId and projectId are read from the payload", () =>
    Effect.sync(() => {
      expect(filterMatches({ agentId: "agent-7" }, event())).toBe(true)
      expect(filterMatches({ agentId: "agent-8" }, event())).toBe(false)
      expect(filterMatches({ projectId: "proj-3" }, event())).toBe(true)
      expect(filterMatches({ projectId: "proj-4" }, event())).toBe(false)
      // absent in the payload: a filter on it does not match
      expect(filterMatches({ agentId: "agent-7" }, event({ payload: {} }))).toBe(false)
      expect(filterMatches({ projectId: "proj-3" }, event({ payload: null }))).toBe(false)
      expect(filterMatches({ agentId: "agent-7" }, event({ payload: "agent-7" }))).toBe(false)
      expect(filterMatches({ agentId: "agent-7" }, event({ payload: { agentId: 7 } }))).toBe(false)
    }))

  it.effect("an event about the entity itself uses entityId (entityType fallback)", () =>
    Effect.sync(() => {
      const agentEvent = event({ eventType: "agent.paused", entityType: "agent", entityId: "agent-1", payload: {} })
      expect(filterMatches({ agentId: "agent-1" }, agentEvent)).toBe(true)
      expect(filterMatches({ agentId: "agent-2" }, agentEvent)).toBe(false)
      // entityId is the agent for an agent event, so it wins over the payload
      expect(filterMatches({ agentId: "agent-1" }, { ...agentEvent, payload: { agentId: "agent-9" } })).toBe(true)
      const projectEvent = event({ eventType: "project.updated", entityType: "project", entityId: "proj-1", payload: {} })
      expect(filterMatches({ projectId: "proj-1" }, projectEvent)).toBe(true)
      expect(filterMatches({ projectId: "proj-2" }, projectEvent)).toBe(false)
      // entityId of another entity type is not an agent or project id
      expect(filterMatches({ agentId: "iss-1" }, event({ payload: {} }))).toBe(false)
      expect(filterMatches({ projectId: "agent-1" }, agentEvent)).toBe(false)
      // entityType matches but entityId missing: falls back to the payload
      expect(filterMatches({ agentId: "agent-5" }, event({ entityType: "agent", entityId: null, payload: { agentId: "agent-5" } }))).toBe(true)
    }))

  it.effect("the filter fields are ANDed", () =>
    Effect.sync(() => {
      const all = { companyId: "acme", agentId: "agent-7", projectId: "proj-3" }
      expect(filterMatches(all, event())).toBe(true)
      expect(filterMatches({ ...all, companyId: "globex" }, event())).toBe(false)
      expect(filterMatches({ ...all, agentId: "agent-0" }, event())).toBe(false)
      expect(filterMatches({ ...all, projectId: "proj-0" }, event())).toBe(false)
      expect(filterMatches({ companyId: "acme", agentId: "agent-7" }, event({ payload: { agentId: "agent-7" } }))).toBe(true)
      expect(filterMatches({ companyId: "acme", projectId: "proj-3" }, event({ payload: { agentId: "agent-7" } }))).toBe(false)
    }))
})

describe("validatePattern", () => {
  it.effect("accepts exact names, prefix.* and *", () =>
    Effect.sync(() => {
      for (const p of ["issue.created", "issue.*", "plugin.acme.*", "plugin.acme-x.sync_done", "*", "heartbeat"]) {
        expect(validatePattern(p)).toBeUndefined()
      }
    }))

  it.effect("refuses wildcards elsewhere, empty segments and odd characters", () =>
    Effect.sync(() => {
      for (const p of ["", "issue*", "*.created", "issue.*.x", "issue.**", "issue..created", ".*", "issue created", "issue/created", "issue.*.*"]) {
        expect(validatePattern(p)).toBe(`invalid event pattern "${p}"`)
      }
    }))
})
