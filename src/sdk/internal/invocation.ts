// The invocation a worker fiber is serving; remote capability calls echo its id to the host.
import { FiberRef } from "effect"
import type { InvocationContext } from "../../protocol/envelope.js"

export const CurrentInvocation: FiberRef.FiberRef<InvocationContext | undefined> = FiberRef.unsafeMake<
  InvocationContext | undefined
>(undefined)
