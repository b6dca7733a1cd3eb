// What only the operator decides (SPEC §16): which companies may run on the host through the `local`
// driver (a grant per company, default off), and each sandbox provider's policy for the fields of its
// configSchema that pick host paths, users or host networking (marked `"x-gantry-operator"`).
import { SqlClient } from "@effect/sql"
import { Clock, Context, Effect, Layer } from "effect"

/**
 * An operator policy for one provider (`<pluginId>/<driverKey>`):
 * - `set`: values of operator fields, merged into every config the host sends to the provider
 *   (they win over anything saved in an environment);
 * - `allow`: for fields whose annotation restricts values (`{"values": [...]}`), the restricted
 *   values companies may nevertheless choose.
 */
export interface ProviderPolicy {
  readonly set: Readonly<Record<string, unknown>>
  readonly allow: Readonly<Record<string, ReadonlyArray<unknown>>>
}
export const emptyPolicy: ProviderPolicy = { set: {}, allow: {} }

/** How a configSchema property is marked: the whole field, or only some of its values. */
export type OperatorMark = { readonly _tag: "field" } | { readonly _tag: "values"; readonly values: ReadonlyArray<unknown> }

export const OPERATOR_KEYWORD = "x-gantry-operator"

/** The operator fields of a provider's configSchema (top-level properties carrying the keyword). */
export const operatorFields = (schema: Record<string, unknown>): ReadonlyMap<string, OperatorMark> => {
  const out = new Map<string, OperatorMark>()
  const props = schema.properties
  if (!props || typeof props !== "object") return out
  for (const [k, sub] of Object.entries(props as Record<string, unknown>)) {
    const mark = sub && typeof sub === "object" ? (sub as Record<string, unknown>)[OPERATOR_KEYWORD] : undefined
    if (mark === true) out.set(k, { _tag: "field" })
    else if (mark && typeof mark === "object" && Array.isArray((mark as { values?: unknown }).values)) {
      out.set(k, { _tag: "values", values: (mark as { values: ReadonlyArray<unknown> }).values })
    }
  }
  return out
}

export const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

export interface LocalGrant {
  readonly companyId: string
  readonly grantedAt: string
}

export class OperatorPolicy extends Context.Tag("gantry/OperatorPolicy")<OperatorPolicy, {
  readonly localGranted: (companyId: string) => Effect.Effect<boolean>
  readonly grantLocal: (companyId: string) => Effect.Effect<LocalGrant>
  /** Idempotent. */
  readonly revokeLocal: (companyId: string) => Effect.Effect<void>
  readonly localGrants: Effect.Effect<ReadonlyArray<LocalGrant>>
  /** The provider's policy (empty when none was set). */
  readonly policy: (provider: string) => Effect.Effect<ProviderPolicy>
  readonly policies: Effect.Effect<ReadonlyArray<{ readonly provider: string; readonly policy: ProviderPolicy; readonly updatedAt: string }>>
  /** Stores a policy already validated against the provider's schema (see Environments.setPolicy). */
  readonly storePolicy: (provider: string, policy: ProviderPolicy) => Effect.Effect<void>
  readonly clearPolicy: (provider: string) => Effect.Effect<void>
}>() {}

const decodePolicy = (text: string): ProviderPolicy => {
  const p = JSON.parse(text) as Partial<ProviderPolicy>
  return { set: p.set ?? {}, allow: p.allow ?? {} }
}

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const iso = (n: number) => new Date(Number(n)).toISOString()
  return OperatorPolicy.of({
    localGranted: (companyId) =>
      sql<{ n: number }>`SELECT COUNT(*) AS n FROM local_grants WHERE company_id = ${companyId}`.pipe(
        Effect.map((r) => Number(r[0]?.n ?? 0) > 0), Effect.orDie),
    grantLocal: (companyId) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        yield* sql`INSERT INTO local_grants (company_id, granted_at) VALUES (${companyId}, ${now}) ON CONFLICT (company_id) DO NOTHING`
        const rows = yield* sql<{ granted_at: number }>`SELECT granted_at FROM local_grants WHERE company_id = ${companyId}`
        return { companyId, grantedAt: iso(rows[0]?.granted_at ?? now) }
      }).pipe(Effect.orDie),
    revokeLocal: (companyId) => sql`DELETE FROM local_grants WHERE company_id = ${companyId}`.pipe(Effect.asVoid, Effect.orDie),
    localGrants: sql<{ company_id: string; granted_at: number }>`SELECT company_id, granted_at FROM local_grants ORDER BY granted_at, company_id`.pipe(
      Effect.map((rows) => rows.map((r) => ({ companyId: r.company_id, grantedAt: iso(r.granted_at) }))), Effect.orDie),
    policy: (provider) =>
      sql<{ policy: string }>`SELECT policy FROM provider_policies WHERE provider = ${provider}`.pipe(
        Effect.map((rows) => (rows.length === 0 ? emptyPolicy : decodePolicy(rows[0]!.policy))), Effect.orDie),
    policies: sql<{ provider: string; policy: string; updated_at: number }>`SELECT provider, policy, updated_at FROM provider_policies ORDER BY provider`.pipe(
      Effect.map((rows) => rows.map((r) => ({ provider: r.provider, policy: decodePolicy(r.policy), updatedAt: iso(r.updated_at) }))), Effect.orDie),
    storePolicy: (provider, policy) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        sql`INSERT INTO provider_policies (provider, policy, updated_at) VALUES (${provider}, ${JSON.stringify(policy)}, ${now})
          ON CONFLICT (provider) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at`).pipe(Effect.asVoid, Effect.orDie),
    clearPolicy: (provider) => sql`DELETE FROM provider_policies WHERE provider = ${provider}`.pipe(Effect.asVoid, Effect.orDie)
  })
})

export const layer = Layer.effect(OperatorPolicy, make)

