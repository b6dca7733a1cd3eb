// Host errors (cross the HTTP boundary later, so Schema.TaggedError with a status).
import { Schema } from "effect"

export class PluginNotFound extends Schema.TaggedError<PluginNotFound>()("PluginNotFound", {
  pluginId: Schema.String,
  message: Schema.String
}) {
  get status() { return 404 }
}
export class ManifestInvalid extends Schema.TaggedError<ManifestInvalid>()("ManifestInvalid", {
  path: Schema.String,
  problems: Schema.Array(Schema.String),
  message: Schema.String
}) {
  get status() { return 422 }
}
export class PluginConflict extends Schema.TaggedError<PluginConflict>()("PluginConflict", {
  pluginId: Schema.String,
  message: Schema.String
}) {
  get status() { return 409 }
}
export class PluginStartFailed extends Schema.TaggedError<PluginStartFailed>()("PluginStartFailed", {
  pluginId: Schema.String,
  message: Schema.String
}) {
  get status() { return 503 }
}
