// React binding of @appkit-rs/client: `useTask` runs one task stream at a time and keeps
// its state in React state. React is a peer dependency; this entry is `@appkit-rs/client/react`.
import { useCallback, useEffect, useRef, useState } from "react";
import {
  attachTask,
  executeTask,
  storageTaskStore,
  taskRoutes,
  type TaskHandlers,
  type TaskOutcome,
  type TaskStatus,
  type TaskStore,
  type TaskStreamOptions,
  type TaskStreamStatus,
} from "./index.js";

export interface UseTaskOptions {
  /** The task's POST route (`/api/demo/count`). */
  url: string;
  /** The plugin's task routes (`/api/demo/tasks`): re-attach and the actions use them. */
  tasksUrl: string;
  /** Keep `{key, lastSeq}` in localStorage under this name, re-attaching on mount. */
  storageKey?: string;
  /** Or a store of your own. */
  store?: TaskStore;
  /** Named events to keep in `events` (default: every non-lifecycle event). */
  progressEvents?: string[];
  /** Keep at most this many events (default 1000; the oldest are dropped). */
  maxEvents?: number;
  /** Passed to the stream (headers, backoff, fetch). */
  streamOptions?: Omit<TaskStreamOptions, "signal" | "store" | "tasksUrl" | "lastEventId">;
}

export interface TaskEvent {
  event: string;
  data: unknown;
  seq: number | null;
}

export interface UseTaskResult {
  /** `idle` before a start, then the stream's statuses (`running` after any event). */
  status: TaskStreamStatus | "idle" | "running";
  key: string | null;
  lastSeq: number;
  events: TaskEvent[];
  result: unknown;
  error: string | null;
  start(body: unknown): Promise<TaskOutcome>;
  attach(key: string, lastSeq?: number): Promise<TaskOutcome>;
  stop(): Promise<TaskStatus | null>;
  resume(): Promise<TaskStatus | null>;
  cancel(): Promise<TaskStatus | null>;
  /** Closes the stream and forgets the task (the task itself keeps its state on the server). */
  reset(): void;
}

const LIFECYCLE = new Set(["started", "retrying", "resumed", "suspended"]);

export function useTask(options: UseTaskOptions): UseTaskResult {
  const { url, tasksUrl, storageKey, progressEvents, maxEvents = 1000, streamOptions } = options;
  const [status, setStatus] = useState<UseTaskResult["status"]>("idle");
  const [key, setKey] = useState<string | null>(null);
  const [lastSeq, setLastSeq] = useState(0);
  const [events, setEvents] = useState<TaskEvent[]>([]);
  const [result, setResult] = useState<unknown>(undefined);
  const [error, setError] = useState<string | null>(null);
  const controller = useRef<AbortController | null>(null);
  const keyRef = useRef<string | null>(null);
  const storeRef = useRef<TaskStore | undefined>(options.store ?? (storageKey ? storageTaskStore(storageKey) : undefined));

  const handlers = useCallback((): TaskHandlers => ({
    onReady(k) {
      keyRef.current = k;
      setKey(k);
    },
    onStatus(s) {
      setStatus(s);
    },
    onCompleted(r) {
      setResult(r);
    },
    onFailed(message) {
      setError(message);
    },
    onOtherEvent(event, data, seq) {
      if (LIFECYCLE.has(event) || (progressEvents && !progressEvents.includes(event))) return;
      setStatus("running");
      setEvents((list) => [...list.slice(Math.max(0, list.length - maxEvents + 1)), { event, data, seq }]);
    },
    onSeq(seq) {
      setLastSeq(seq);
    },
  }), [progressEvents, maxEvents]);

  const begin = useCallback((): AbortSignal => {
    controller.current?.abort();
    const c = new AbortController();
    controller.current = c;
    setError(null);
    setResult(undefined);
    return c.signal;
  }, []);

  const start = useCallback((body: unknown) => {
    const signal = begin();
    setEvents([]);
    setKey(null);
    keyRef.current = null;
    setLastSeq(0);
    return executeTask(url, body, handlers(), { ...streamOptions, signal, tasksUrl, store: storeRef.current });
  }, [url, tasksUrl, streamOptions, handlers, begin]);

  const attach = useCallback((k: string, seq = 0) => {
    const signal = begin();
    keyRef.current = k;
    setKey(k);
    setLastSeq(seq);
    return attachTask(taskRoutes(tasksUrl).eventsUrl(k), handlers(), {
      ...streamOptions, signal, tasksUrl, store: storeRef.current, lastEventId: seq || null,
    });
  }, [tasksUrl, streamOptions, handlers, begin]);

  const action = useCallback(async (name: "stop" | "resume" | "cancel") => {
    const k = keyRef.current;
    if (!k) return null;
    const routes = taskRoutes(tasksUrl, { headers: streamOptions?.headers, fetch: streamOptions?.fetch });
    try {
      return await routes[name](k);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
      return null;
    }
  }, [tasksUrl, streamOptions]);

  const reset = useCallback(() => {
    controller.current?.abort();
    controller.current = null;
    storeRef.current?.clear();
    keyRef.current = null;
    setKey(null);
    setStatus("idle");
    setEvents([]);
    setResult(undefined);
    setError(null);
    setLastSeq(0);
  }, []);

  // On mount: re-attach to a stored task. On unmount: close the stream (the task runs on).
  useEffect(() => {
    const stored = storeRef.current?.load();
    if (stored) void attach(stored.key, stored.lastSeq);
    return () => controller.current?.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  return {
    status, key, lastSeq, events, result, error, start, attach, reset,
    stop: () => action("stop"),
    resume: () => action("resume"),
    cancel: () => action("cancel"),
  };
}
