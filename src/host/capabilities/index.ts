// Durable host capability backends on the one SqlClient (SPEC §5): the SQL implementation of
// CapabilityStores, assembled from one module per capability.
import { Config, Effect, Layer } from "effect"
import { CapabilityStores } from "../Stores.js"
import * as ConfigStore from "./ConfigStore.js"
import * as EventBus from "./EventBus.js"
import * as HttpEgress from "./HttpEgress.js"
import * as PluginLog from "./PluginLog.js"
import { Redactor } from "./Redactor.js"
import * as SecretStore from "./SecretStore.js"
import * as StateStore from "./StateStore.js"

export const layerSql = Layer.scoped(
  CapabilityStores,
  Effect.gen(function* () {
    const redactor = yield* Redactor
    const retention = yield* Config.integer("GANTRY_LOG_RETENTION").pipe(Config.withDefault(5_000), Effect.orDie)
    const log = yield* PluginLog.make({ retention, redact: redactor.redact, redactValue: redactor.redactValue })
    return {
      config: yield* ConfigStore.make,
      state: yield* StateStore.make,
      log,
      events: yield* EventBus.make({ log: log.append }),
      secrets: SecretStore.capability(yield* SecretStore.fromContextOrConfig),
      http: HttpEgress.capability(yield* HttpEgress.fromContextOrConfig)
    }
  })
)
