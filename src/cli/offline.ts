// CLI commands that work on an instance's database directly, without a server: the operator's way
// back in (a lost or leaked admin token is replaced without touching any other data).
import { Effect, Layer } from "effect"
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { ApiTokens, layerTokens } from "../server/Auth.js"
import * as Database from "../store/Database.js"

/** Replace (or create) the admin token; returns the new value, which nothing else ever shows. */
export const rotateAdminToken = (o: { readonly dataDir: string; readonly databaseUrl: string | undefined }) =>
  Effect.gen(function* () {
    const isPg = o.databaseUrl !== undefined && /^postgres(ql)?:\/\//.test(o.databaseUrl)
    const file = o.databaseUrl && !isPg ? resolve(o.databaseUrl.replace(/^sqlite:(\/\/)?/, "")) : join(resolve(o.dataDir), "gantry.db")
    // a typo in --data-dir must not create a fresh instance next to the real one
    if (!isPg && !existsSync(file)) return yield* Effect.fail({ message: `no Gantry database at ${file} (give the instance's --data-dir or --database-url)` })
    return yield* Effect.flatMap(ApiTokens, (t) => t.rotateAdmin).pipe(
      Effect.provide(layerTokens.pipe(Layer.provideMerge(Database.layer({ url: o.databaseUrl, dataDir: o.dataDir })))),
      Effect.scoped,
      Effect.mapError((e) => ({ message: "message" in e && typeof e.message === "string" ? e.message : String(e) }))
    )
  })
