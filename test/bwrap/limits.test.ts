// bwrap-sandbox acceptance 2 (limits), through the real worker: pids contains a fork flood and a real
// fork bomb, memoryMiB stops a memory hog, timeoutMs and cpuSeconds stop busy loops. After each, no
// process of the lease is left on the host. Each limit has a control run showing the same workload
// goes past the point where the limit stops it.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { readdirSync } from "node:fs"
import { join } from "node:path"
import { eventually } from "../helpers.js"
import { acquire, bwrap, destroy, processesWith, sh, uniqueMarker, withWorker, type Call } from "./helpers.js"

/** Sandboxes journaled as running for a lease (none when the journal directory is gone). */
const journaled = (workspaceRoot: string, leaseId: string): Array<string> => {
  try {
    return readdirSync(join(workspaceRoot, leaseId, "procs"))
  } catch {
    return []
  }
}

/** No host process of this test's sandbox is left (and none is journaled as running). */
const noneLeft = (marker: string, workspaceRoot: string, leaseId: string) =>
  Effect.gen(function* () {
    yield* eventually(Effect.filterOrFail(Effect.sync(() => processesWith(marker)), (l) => l.length === 0), 5_000)
    expect(journaled(workspaceRoot, leaseId)).toEqual([])
  })

/** Run `script` while sampling how many host processes carry `marker`; returns the result and the peak. */
const sampled = (call: Call, config: Record<string, unknown>, leaseId: string, script: string, marker: string, timeoutMs?: number) =>
  Effect.gen(function* () {
    let peak = 0
    const sampler = yield* Effect.fork(Effect.forever(Effect.zipRight(
      Effect.sync(() => {
        peak = Math.max(peak, processesWith(marker).length)
      }),
      Effect.sleep("20 millis")
    )))
    const r = yield* sh(call, config, leaseId, `${script} # ${marker}`, { env: { GANTRY_TEST_MARKER: marker }, ...(timeoutMs !== undefined ? { timeoutMs } : {}) })
    yield* Fiber.interrupt(sampler)
    return { r, peak }
  })

describe.skipIf(!bwrap.ok)("bwrap-sandbox limits (real worker)", () => {
  it.live("pids: a fork flood stops at the limit, then a real fork bomb is contained; nothing is left", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const pids = 40
        const cfg = config({ pids })
        const lease = yield* acquire(call, cfg, "run-pids")
        const id = lease.providerLeaseId!
        // a bounded flood: 150 sleepers, each numbered as it starts
        const flood = "i=0; while [ $i -lt 150 ]; do sleep 30 & i=$((i+1)); echo $i; done; echo all-started; sleep 1"
        const marker = uniqueMarker("flood")
        const { r, peak } = yield* sampled(call, cfg, id, flood, marker, 20_000)
        const started = Math.max(0, ...r.stdout.trim().split("\n").map(Number).filter(Number.isFinite))
        expect(r.stdout).not.toContain("all-started")
        expect(r.stderr).toMatch(/fork/i)
        expect(started).toBeLessThan(pids)
        expect(started).toBeGreaterThan(pids / 2)
        // the sandbox's tasks plus the outer bwrap on the host
        expect(peak).toBeLessThanOrEqual(pids + 1)
        yield* noneLeft(marker, workspaceRoot, id)

        // control: with room for them, all 150 start (so the limit above is what stopped the flood)
        const roomy = config({ pids: 400 })
        const lease2 = yield* acquire(call, roomy, "run-pids-control")
        const marker2 = uniqueMarker("flood-control")
        const control = yield* sampled(call, roomy, lease2.providerLeaseId!, flood, marker2, 20_000)
        expect(control.r.stdout).toContain("all-started")
        expect(control.peak).toBeGreaterThan(pids + 1)
        yield* noneLeft(marker2, workspaceRoot, lease2.providerLeaseId!)

        // the real thing, once the limit is proven: every process forks forever (a failed fork is retried),
        // so the sandbox sits at its limit until the timeout kills it
        const bombMarker = uniqueMarker("bomb")
        const bomb = yield* sampled(call, cfg, id, "perl -e 'fork while 1'", bombMarker, 2_500)
        expect(bomb.r.timedOut).toBe(true)
        expect(bomb.peak).toBeLessThanOrEqual(pids + 1)
        expect(bomb.peak).toBeGreaterThan(pids / 2)
        yield* noneLeft(bombMarker, workspaceRoot, id)
        yield* destroy(call, cfg, id)
        yield* destroy(call, roomy, lease2.providerLeaseId!)
      })), 120_000)

  it.live("memoryMiB: a memory hog is stopped at the limit; nothing is left", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        // 48 chunks of 8 MiB, each counted as it is held
        const hog = `perl -e '$| = 1; my @a; for my $i (1..48) { push @a, "x" x (8 * 1024 * 1024); print "$i\\n" } print "survived\\n"'`
        const cfg = config({ memoryMiB: 128 })
        const lease = yield* acquire(call, cfg, "run-mem")
        const marker = uniqueMarker("hog")
        const { r } = yield* sampled(call, cfg, lease.providerLeaseId!, hog, marker, 30_000)
        expect(r.exitCode).not.toBe(0)
        expect(r.stdout).not.toContain("survived")
        expect(r.stderr).toMatch(/out of memory/i)
        const held = Math.max(0, ...r.stdout.trim().split("\n").map(Number).filter(Number.isFinite))
        expect(held * 8).toBeLessThan(128)
        expect(held).toBeGreaterThan(0)
        yield* noneLeft(marker, workspaceRoot, lease.providerLeaseId!)

        // control: with 1 GiB the same hog holds all 384 MiB
        const roomy = config({ memoryMiB: 1024 })
        const lease2 = yield* acquire(call, roomy, "run-mem-control")
        const control = yield* sh(call, roomy, lease2.providerLeaseId!, hog, { timeoutMs: 30_000 })
        expect(control.exitCode).toBe(0)
        expect(control.stdout).toContain("survived")
        yield* destroy(call, cfg, lease.providerLeaseId!)
        yield* destroy(call, roomy, lease2.providerLeaseId!)
      })), 90_000)

  it.live("timeoutMs: a busy loop is stopped at the timeout (also one that ignores SIGTERM); nothing is left", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config()
        const lease = yield* acquire(call, cfg, "run-busy")
        const id = lease.providerLeaseId!
        const marker = uniqueMarker("busy")
        const started = Date.now()
        const { r } = yield* sampled(call, cfg, id, "echo spinning; while :; do :; done", marker, 1_000)
        const took = Date.now() - started
        expect(r).toMatchObject({ exitCode: null, timedOut: true, signal: "SIGTERM" })
        expect(r.stdout).toContain("spinning")
        expect(took).toBeGreaterThanOrEqual(1_000)
        expect(took).toBeLessThan(5_000)
        yield* noneLeft(marker, workspaceRoot, id)

        const stubborn = uniqueMarker("stubborn")
        const s = yield* sampled(call, cfg, id, "trap '' TERM; while :; do :; done", stubborn, 1_500)
        expect(s.r).toMatchObject({ exitCode: null, timedOut: true, signal: "SIGKILL" })
        yield* noneLeft(stubborn, workspaceRoot, id)

        // the config's timeoutMs caps a longer call timeout
        const capped = config({ timeoutMs: 700 })
        const cappedMarker = uniqueMarker("capped")
        const c = yield* sampled(call, capped, id, "while :; do :; done", cappedMarker, 60_000)
        expect(c.r.timedOut).toBe(true)
        yield* noneLeft(cappedMarker, workspaceRoot, id)

        // control: the same loop, bounded, runs to its end when the timeout is not reached
        const fine = yield* sh(call, cfg, id, "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); done; echo done", { timeoutMs: 10_000 })
        expect(fine).toMatchObject({ exitCode: 0, timedOut: false })
        yield* destroy(call, cfg, id)
      })))

  it.live("cpuSeconds: a busy loop is killed after its CPU time, long before the wall-clock timeout", () =>
    withWorker(({ call, config, workspaceRoot }) =>
      Effect.gen(function* () {
        const cfg = config({ cpuSeconds: 1 })
        const lease = yield* acquire(call, cfg, "run-cpu")
        const marker = uniqueMarker("cpu")
        const started = Date.now()
        const { r } = yield* sampled(call, cfg, lease.providerLeaseId!, "while :; do :; done", marker, 30_000)
        expect(r.timedOut).toBe(false)
        // killed by SIGXCPU (or SIGKILL at the hard limit): bwrap reports 128 + the signal
        expect([128 + 24, 128 + 9]).toContain(r.exitCode)
        expect(Date.now() - started).toBeLessThan(15_000)
        yield* noneLeft(marker, workspaceRoot, lease.providerLeaseId!)
        yield* destroy(call, cfg, lease.providerLeaseId!)
      })))
})
