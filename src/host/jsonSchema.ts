// JSON Schema validation (Ajv) shared by plugin configs and sandbox environment configs;
// `format: "secret-ref"` fields must hold a secret reference, never a raw value.
import AjvModule from "ajv"

type Validate = ((data: unknown) => boolean) & {
  errors?: Array<{ instancePath: string; message?: string; keyword?: string; params?: { additionalProperty?: string } }> | null
}
const Ajv = ((AjvModule as unknown as { default?: unknown }).default ?? AjvModule) as unknown as new (o: object) => {
  addFormat: (name: string, f: unknown) => void
  compile: (schema: unknown) => Validate
}

export const isSecretRef = (u: unknown): boolean =>
  typeof u === "object" && u !== null && (u as { type?: unknown }).type === "secret_ref" && typeof (u as { secretId?: unknown }).secretId === "string"

const ajv = new Ajv({ allErrors: true, strict: false })
ajv.addFormat("secret-ref", { type: "object", validate: isSecretRef } as never)
const cache = new WeakMap<object, Validate>()

/** Walk the schema for `format: "secret-ref"` fields: their values must be secret refs. */
const secretRefProblems = (schema: unknown, value: unknown, path: string, out: Array<string>) => {
  if (!schema || typeof schema !== "object") return
  const s = schema as Record<string, unknown>
  if (s.format === "secret-ref" && value !== undefined && !isSecretRef(value)) {
    out.push(`${path || "/"}: must be a secret reference {type:"secret_ref", secretId}, not a value`)
    return
  }
  if (s.properties && typeof s.properties === "object" && value && typeof value === "object") {
    for (const [k, sub] of Object.entries(s.properties as Record<string, unknown>)) {
      secretRefProblems(sub, (value as Record<string, unknown>)[k], `${path}/${k}`, out)
    }
  }
}

/** Every problem of `value` against `schema`, as "/path: message". */
export const validateAgainst = (schema: Record<string, unknown>, value: unknown): Array<string> => {
  let validate = cache.get(schema)
  if (!validate) {
    try {
      validate = ajv.compile(schema)
    } catch (e) {
      return [`schema: cannot compile (${e instanceof Error ? e.message : String(e)})`]
    }
    cache.set(schema, validate)
  }
  const errors: Array<string> = []
  if (!validate(value)) {
    for (const e of validate.errors ?? []) {
      const extra = e.keyword === "additionalProperties" && e.params?.additionalProperty ? ` ("${e.params.additionalProperty}")` : ""
      errors.push(`${e.instancePath || "/"}: ${e.message ?? "invalid"}${extra}`)
    }
  }
  secretRefProblems(schema, value, "", errors)
  return errors
}

/** Paths (dot-separated) of every secret ref inside a value. */
export const secretRefPaths = (value: unknown, path = ""): Array<{ path: string; secretId: string }> => {
  if (isSecretRef(value)) return [{ path, secretId: (value as { secretId: string }).secretId }]
  if (Array.isArray(value)) return value.flatMap((v, i) => secretRefPaths(v, path ? `${path}.${i}` : String(i)))
  if (value && typeof value === "object") {
    return Object.entries(value).flatMap(([k, v]) => secretRefPaths(v, path ? `${path}.${k}` : k))
  }
  return []
}
