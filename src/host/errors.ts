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
/** An upgrade to a lower version without `allowDowngrade`. */
export class DowngradeRefused extends Schema.TaggedError<DowngradeRefused>()("DowngradeRefused", {
  pluginId: Schema.String,
  installed: Schema.String,
  offered: Schema.String,
  message: Schema.String
}) {
  get status() { return 409 }
}
/** Saved configs that the new version's instanceConfigSchema rejects (every problem listed). */
export class ConfigIncompatible extends Schema.TaggedError<ConfigIncompatible>()("ConfigIncompatible", {
  pluginId: Schema.String,
  problems: Schema.Array(Schema.String),
  message: Schema.String
}) {
  get status() { return 422 }
}
/** A package that installed but whose worker did not start or answer its first health check. */
export class PluginStartRefused extends Schema.TaggedError<PluginStartRefused>()("PluginStartRefused", {
  pluginId: Schema.String,
  message: Schema.String
}) {
  get status() { return 422 }
}
