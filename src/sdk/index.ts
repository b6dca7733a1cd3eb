// Public plugin SDK: capability services, the Effect and Promise plugin definitions, the worker main.
export * from "./capabilities.js"
export * as Plugin from "./Plugin.js"
export { definePlugin, type PluginContext, type PluginDefinition, type PaperclipPlugin } from "./definePlugin.js"
export { runWorker } from "./runWorker.js"
export * from "../protocol/errors.js"
export type { EventEnvelope, EventFilter, JobRun, SecretRef, HealthResult, ExecuteResult, ProviderLease } from "../protocol/methods.js"
