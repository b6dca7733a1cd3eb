// Plugin packages for the distribution tests: the Paperclip-SDK provider fixtures built the way an
// author would publish them (manifest + package.json + a bundled dist/worker.js, so the package runs
// from anywhere with no node_modules), and a small tar writer to craft archives, good and hostile.
import { build, stop } from "esbuild"
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { fixture } from "../helpers.js"

/** Build `test/fixtures/<name>` into a fresh folder outside the repository; `edit` may change the manifest. */
export const buildPackage = async (name: string, edit?: (manifest: Record<string, any>) => void): Promise<string> => {
  const src = fixture(name)
  const out = mkdtempSync(join(tmpdir(), `gantry-pkg-${name}-`))
  const manifest = JSON.parse(readFileSync(join(src, "manifest.json"), "utf8")) as Record<string, any>
  edit?.(manifest)
  writeFileSync(join(out, "manifest.json"), JSON.stringify(manifest, null, 2))
  copyFileSync(join(src, "package.json"), join(out, "package.json"))
  mkdirSync(join(out, "dist"))
  await build({
    entryPoints: [join(src, "worker.mjs")], outfile: join(out, "dist", "worker.js"),
    bundle: true, platform: "node", format: "esm", target: "node20", logLevel: "error",
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" }
  })
  return out
}

/** esbuild keeps a service process; end it so the tests' process accounting stays exact. */
export const stopBuilds = async () => {
  await stop()
}

export interface TarItem {
  readonly name: string
  readonly type?: "file" | "dir" | "symlink" | "hardlink"
  readonly data?: string | Uint8Array
  readonly linkname?: string
}

const header = (item: TarItem, size: number) => {
  const h = Buffer.alloc(512)
  h.write(item.name.slice(0, 100), 0, "utf8")
  h.write("0000644\0", 100)
  h.write("0000000\0", 108)
  h.write("0000000\0", 116)
  h.write(size.toString(8).padStart(11, "0") + "\0", 124)
  h.write("00000000000\0", 136)
  h.write("        ", 148)
  h.write({ file: "0", dir: "5", symlink: "2", hardlink: "1" }[item.type ?? "file"], 156)
  if (item.linkname) h.write(item.linkname.slice(0, 100), 157, "utf8")
  h.write("ustar\0", 257)
  h.write("00", 263)
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148)
  return h
}

/** A gzipped tar of `items` (names as given: npm's `package/` prefix is the caller's). */
export const makeTgz = (items: ReadonlyArray<TarItem>): Buffer => {
  const parts: Array<Buffer> = []
  for (const item of items) {
    const data = item.type === undefined || item.type === "file" ? Buffer.from(item.data ?? "") : Buffer.alloc(0)
    parts.push(header(item, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512))
  }
  parts.push(Buffer.alloc(1024))
  return gzipSync(Buffer.concat(parts))
}

/** The files of a built package folder as tar items under `package/`. */
export const tarItemsOf = (folder: string): Array<TarItem> =>
  ["package.json", "manifest.json", "dist/worker.js"].map((f) => ({ name: `package/${f}`, data: readFileSync(join(folder, f)) }))
