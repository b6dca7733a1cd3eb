// Gantry host API: the plugin host, its options and capability stores.
export * as PluginHost from "./host/PluginHost.js"
export { HostOptions, type HostOptionsShape } from "./host/HostOptions.js"
export * as Stores from "./host/Stores.js"
export * from "./host/errors.js"
export { loadPluginFolder } from "./host/loader.js"
