// `gantry demo` (filled in below).
import { Effect } from "effect"
export const demo = Effect.void
