// Scrubs secret values the host has seen from text bound for logs, errors, events and API records.
import { Context, Effect, Layer } from "effect"

export class Redactor extends Context.Tag("gantry/Redactor")<Redactor, {
  /** Remember a secret value (resolved or created) so it is scrubbed everywhere afterwards. */
  readonly register: (value: string) => Effect.Effect<void>
  /** Replace every known secret value in `text` with `[REDACTED]`. Plain and synchronous: hot path. */
  readonly redact: (text: string) => string
  /** Length of the longest end of `text` that begins a known secret (a stream holds it back until
   * the next chunk shows whether the secret follows). */
  readonly partialSuffix: (text: string) => number
  /** Deep-redact a JSON-like value. */
  readonly redactValue: <A>(value: A) => A
}>() {}

export const MASK = "[REDACTED]"
const MIN_LENGTH = 4

export const make = Effect.sync(() => {
  const values = new Set<string>()
  let sorted: Array<string> = []
  const redact = (text: string): string => {
    if (sorted.length === 0 || typeof text !== "string") return text
    let out = text
    for (const v of sorted) if (out.includes(v)) out = out.split(v).join(MASK)
    return out
  }
  const redactValue = <A>(value: A): A => {
    if (sorted.length === 0) return value
    if (typeof value === "string") return redact(value) as A
    if (Array.isArray(value)) return value.map(redactValue) as A
    if (value && typeof value === "object") {
      const out: Record<string, unknown> = {}
      for (const [k, v] of Object.entries(value)) out[k] = redactValue(v)
      return out as A
    }
    return value
  }
  const partialSuffix = (text: string): number => {
    let best = 0
    for (const v of sorted) {
      // the earliest start (longest end) of text, shorter than v, that v begins with
      const from = text.length - Math.min(v.length - 1, text.length)
      for (let i = text.indexOf(v[0]!, from); i >= 0 && text.length - i > best; i = text.indexOf(v[0]!, i + 1)) {
        if (v.startsWith(text.slice(i))) {
          best = text.length - i
          break
        }
      }
    }
    return best
  }
  return Redactor.of({
    partialSuffix,
    register: (value) =>
      Effect.sync(() => {
        if (typeof value !== "string" || value.length < MIN_LENGTH || values.has(value)) return
        values.add(value)
        sorted = [...values].sort((a, b) => b.length - a.length)
      }),
    redact,
    redactValue
  })
})

export const layer = Layer.effect(Redactor, make)
