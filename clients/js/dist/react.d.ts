import { type TaskOutcome, type TaskStatus, type TaskStore, type TaskStreamOptions, type TaskStreamStatus } from "./index.js";
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
export declare function useTask(options: UseTaskOptions): UseTaskResult;
