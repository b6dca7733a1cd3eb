// The limits the HTTP API enforces (SPEC §14), as numbers and as the constraint Schemas the API's
// payloads are built from: the handlers decode with them and the OpenAPI document is generated from
// them, so the document states exactly the rules the server applies.
import { Schema } from "effect"

/** Request bodies, announced (Content-Length) or chunked. */
export const MAX_BODY_BYTES = 1024 * 1024
/** Nesting of arrays and objects in a JSON body (`{"a":[1]}` is depth 2). */
export const MAX_JSON_DEPTH = 64
export const MAX_COMPANY_NAME = 200
export const MAX_NAME = 100
export const MAX_DESCRIPTION = 2_000
export const MAX_SECRET_VALUE_BYTES = 64 * 1024
export const MAX_AGENT_TIMEOUT_MS = 24 * 60 * 60_000
export const MAX_LIST_LIMIT = 5_000
export const MAX_ID = 200
export const MAX_COMMAND = 4_096

/** A display name: 1–`max` characters, not only whitespace (the server trims it). */
export const Name = (max: number) =>
  Schema.String.pipe(Schema.minLength(1), Schema.maxLength(max), Schema.pattern(/\S/, { description: "not only whitespace" }))

/** An id in a body (path ids are plain strings: an unknown id is a 404, not a 400). */
export const Id = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(MAX_ID))

/** `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, a company id chosen by the caller. */
export const CompanyId = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/))

/** A secret's name: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 128. */
export const SecretName = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/))

/** A secret's value: non-empty, at most 64 KiB once encoded as UTF-8. */
export const SecretValue = Schema.String.pipe(
  Schema.minLength(1),
  Schema.maxLength(MAX_SECRET_VALUE_BYTES),
  Schema.filter((s) => Buffer.byteLength(s) <= MAX_SECRET_VALUE_BYTES || `at most ${MAX_SECRET_VALUE_BYTES} bytes in UTF-8`, {
    description: `at most ${MAX_SECRET_VALUE_BYTES} bytes in UTF-8`,
    jsonSchema: {}
  })
)

/** An environment variable name. */
export const VarName = Schema.String.pipe(Schema.pattern(/^[A-Za-z_][A-Za-z0-9_]*$/))
/** A variable a caller may set: a variable name not starting `GANTRY_` (those are the host's). */
export const CallerVarName = VarName.pipe(Schema.filter((s) => !s.startsWith("GANTRY_") || "GANTRY_* variables are set by the host", {
  description: "a variable name; GANTRY_* are set by the host",
  jsonSchema: { not: { pattern: "^GANTRY_" } }
}))

/** A positive integer number of milliseconds. */
export const PositiveMs = Schema.Int.pipe(Schema.greaterThanOrEqualTo(1))

/** An agent's run timeout: 1 ms to 24 h. */
export const AgentTimeoutMs = Schema.Int.pipe(Schema.between(1, MAX_AGENT_TIMEOUT_MS))

/** A 5-field cron expression (minute hour day-of-month month day-of-week). */
export const Cron5 = Schema.String.pipe(Schema.pattern(/^\s*\S+(\s+\S+){4}\s*$/, { description: "a 5-field cron expression" }))

/** `?limit=`: 1–5000, digits only. */
export const LimitParam = Schema.compose(
  Schema.String.pipe(Schema.pattern(/^[1-9][0-9]{0,3}$/), Schema.filter((s) => Number(s) <= MAX_LIST_LIMIT || `at most ${MAX_LIST_LIMIT}`, { jsonSchema: {} })),
  Schema.NumberFromString
).annotations({ description: `an integer from 1 to ${MAX_LIST_LIMIT}` })
