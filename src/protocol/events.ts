// Event pattern and filter matching (SPEC §5.3), shared by host delivery and worker dispatch.
import type { EventEnvelope, EventFilter } from "./methods.js"

/** Exact name, or a trailing `.*` prefix (`plugin.acme.*`); `*` alone matches everything. */
export const patternMatches = (pattern: string, eventType: string): boolean => {
  if (pattern === "*") return true
  if (pattern.endsWith(".*")) return eventType.startsWith(pattern.slice(0, -1))
  return pattern === eventType
}

const field = (event: EventEnvelope, key: "agentId" | "projectId", entityType: string): string | undefined => {
  if (event.entityType === entityType && typeof event.entityId === "string") return event.entityId
  const p = event.payload as Record<string, unknown> | null | undefined
  const v = p && typeof p === "object" ? p[key] : undefined
  return typeof v === "string" ? v : undefined
}

/** The agent and project an event is about, as the `agentId`/`projectId` filters see them. */
export const filterFields = (event: EventEnvelope): { agentId: string | null; projectId: string | null } => ({
  agentId: field(event, "agentId", "agent") ?? null,
  projectId: field(event, "projectId", "project") ?? null
})

/** Filters are ANDed: companyId, agentId, projectId. */
export const filterMatches = (filter: EventFilter | null | undefined, event: EventEnvelope): boolean => {
  if (!filter) return true
  if (filter.companyId !== undefined && filter.companyId !== event.companyId) return false
  if (filter.agentId !== undefined && filter.agentId !== field(event, "agentId", "agent")) return false
  if (filter.projectId !== undefined && filter.projectId !== field(event, "projectId", "project")) return false
  return true
}

/** Patterns a plugin may subscribe to: exact names or `prefix.*`. */
export const validatePattern = (pattern: string): string | undefined => {
  if (pattern === "*") return undefined
  if (!/^[A-Za-z0-9_.-]+(\.\*)?$/.test(pattern) || pattern.includes("..")) return `invalid event pattern "${pattern}"`
  if (pattern.indexOf("*") !== -1 && !pattern.endsWith(".*")) return `invalid event pattern "${pattern}"`
  return undefined
}
