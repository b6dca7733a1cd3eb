// Capability strings (SPEC §2) and the worker→host method → capability table (SPEC §3.3).
export const Capabilities = [
  "events.subscribe",
  "events.emit",
  "jobs.schedule",
  "webhooks.receive",
  "plugin.state.read",
  "plugin.state.write",
  "secrets.read-ref",
  "http.outbound",
  "environment.drivers.register",
  "api.routes.register"
] as const
export type Capability = (typeof Capabilities)[number]

/** Paperclip capability strings Gantry accepts but does not host: listed as inactive on the plugin. */
export const InactiveCapabilities: ReadonlyArray<string> = [
  "companies.read", "projects.read", "project.workspaces.read", "execution.workspaces.read", "issues.read",
  "issue.relations.read", "issue.subtree.read", "issue.comments.read", "issue.interactions.read",
  "issue.attachments.read", "approvals.read", "issue.documents.read", "agents.read", "goals.read",
  "goals.create", "goals.update", "activity.read", "costs.read", "issues.orchestration.read",
  "access.members.read", "access.invites.read", "authorization.grants.read", "authorization.policies.read",
  "authorization.audit.read", "database.namespace.read", "issues.create", "issues.update",
  "issue.relations.write", "issues.checkout", "issues.wakeup", "issue.comments.create",
  "issue.comments.create_human_attributed", "issue.interactions.create", "issue.interactions.respond",
  "approvals.respond", "issue.documents.write", "projects.managed", "routines.managed", "skills.managed",
  "agents.pause", "agents.resume", "agents.invoke", "agents.managed", "access.members.write",
  "access.invites.write", "authorization.grants.write", "authorization.policies.write",
  "agent.sessions.create", "agent.sessions.list", "agent.sessions.send", "agent.sessions.close",
  "activity.log.write", "metrics.write", "telemetry.track", "database.namespace.migrate",
  "database.namespace.write", "external.objects.detect", "external.objects.read", "external.objects.write",
  "external.objects.refresh", "local.folders", "agent.tools.register",
  "instance.settings.register", "ui.sidebar.register", "ui.page.register", "ui.detailTab.register",
  "ui.dashboardWidget.register", "ui.commentAnnotation.register", "ui.action.register"
]

const active = new Set<string>(Capabilities)
const inactive = new Set<string>(InactiveCapabilities)
export const isCapability = (s: string): s is Capability => active.has(s)
export const isKnownCapability = (s: string): boolean => active.has(s) || inactive.has(s)

/** Worker→host methods Gantry serves, with the capability each needs (null = none). */
export const WorkerToHostMethods = {
  "config.get": null,
  "state.get": "plugin.state.read",
  "state.set": "plugin.state.write",
  "state.delete": "plugin.state.write",
  "events.subscribe": "events.subscribe",
  "events.emit": "events.emit",
  "secrets.resolve": "secrets.read-ref",
  "http.fetch": "http.outbound",
  "log": null,
  "execute.log": null
} as const satisfies Record<string, Capability | null>
export type WorkerToHostMethod = keyof typeof WorkerToHostMethods

export const capabilityFor = (method: string): Capability | null | undefined =>
  (WorkerToHostMethods as Record<string, Capability | null>)[method]
