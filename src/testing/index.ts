// Public test kit: the plugin harness (harness.ts, also the published SDK's `gantry/testing`) and,
// for server code in this repository, the fake sandbox provider layers.
export * from "./harness.js"
export * from "./fakeSandbox.js"
