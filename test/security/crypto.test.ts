// AES-GCM at rest (SPEC §5.5): decryption pins the tag length to 16 bytes. A ciphertext carrying a
// 4-byte tag (what `setAuthTag` accepts unless pinned, and what makes forgery a 2^32 guess) is refused.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { randomBytes } from "node:crypto"
import { decrypt, encrypt } from "../../src/host/capabilities/SecretStore.js"

describe("secret encryption", () => {
  it.effect("round trip; a truncated tag (4, 8, 12 bytes) or a flipped bit is refused", () =>
    Effect.gen(function* () {
      const key = randomBytes(32)
      const stored = encrypt(key, "", "acme", "s1", 1)
      expect(yield* decrypt(key, stored, "acme", "s1", 1)).toBe("")
      const raw = Buffer.from(stored.slice(3), "base64")
      expect(raw.length).toBe(12 + 16)
      for (const tagBytes of [4, 8, 12]) {
        const short = `v1.${raw.subarray(0, 12 + tagBytes).toString("base64")}`
        const exit = yield* Effect.exit(decrypt(key, short, "acme", "s1", 1))
        expect(Exit.isFailure(exit), `${tagBytes}-byte tag`).toBe(true)
      }
      const flipped = Buffer.from(raw)
      flipped[20]! ^= 1
      expect(Exit.isFailure(yield* Effect.exit(decrypt(key, `v1.${flipped.toString("base64")}`, "acme", "s1", 1)))).toBe(true)
      const other = encrypt(key, "value", "acme", "s1", 1)
      expect(yield* decrypt(key, other, "acme", "s1", 1)).toBe("value")
      // bound to its row
      expect(Exit.isFailure(yield* Effect.exit(decrypt(key, other, "globex", "s1", 1)))).toBe(true)
    }))
})
