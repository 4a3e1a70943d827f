/** One server-sent event frame. `id` is null when the frame had no `id:` line. */
export interface SseFrame {
    id: string | null;
    event: string;
    data: string;
}
/** Options of {@link SseParser}. */
export interface SseParserOptions {
    /**
     * Largest frame (sum of its field lines, in UTF-16 code units) accepted before the
     * parser throws. Default 64 MiB: far above the ~1 MiB JSON payload the server may send.
     */
    maxFrameChars?: number;
}
/** Thrown by {@link SseParser} when a frame exceeds `maxFrameChars`. */
export declare class SseFrameTooLarge extends Error {
    constructor(limit: number);
}
/**
 * Incremental `text/event-stream` parser (the WHATWG rules: LF, CR or CRLF line ends,
 * `:` comments ignored, one optional space after the colon, multi-line `data` joined
 * with `\n`, a frame dispatched on a blank line when it has data or an id). Chunks may
 * split lines and even CRLF pairs anywhere. Work is linear in the input: each character
 * is scanned once, so a 1 MiB frame arriving in small chunks costs no quadratic rescans.
 */
export declare class SseParser {
    private pending;
    private skipLf;
    private id;
    private event;
    private data;
    private hasData;
    private size;
    private comment;
    private readonly limit;
    private readonly decoder;
    constructor(options?: SseParserOptions);
    /** Feeds bytes (decoded as UTF-8, split code points allowed) or text; returns the frames completed. */
    push(chunk: Uint8Array | string): SseFrame[];
    private line;
    /** Whether a comment line was read since the last call. */
    takeComment(): boolean;
    /** True when the parser holds part of a frame (the stream ended mid-frame). */
    get midFrame(): boolean;
}
/** What a task stream ended with. */
export type TaskOutcome = {
    state: "completed";
    key: string | null;
    lastSeq: number;
    result: unknown;
} | {
    state: "failed";
    key: string | null;
    lastSeq: number;
    message: string;
    payload: unknown;
} | {
    state: "cancelled";
    key: string | null;
    lastSeq: number;
    payload: unknown;
} | {
    state: "aborted";
    key: string | null;
    lastSeq: number;
};
/** Task lifecycle states a stream reports (`status` of {@link TaskHandlers.onStatus}). */
export type TaskStreamStatus = "connecting" | "ready" | "started" | "retrying" | "resumed" | "suspended" | "reconnecting" | "connected" | "completed" | "failed" | "cancelled";
type Awaitable = void | Promise<void>;
/** Callbacks of a task stream. Each is awaited before the next frame is dispatched. */
export interface TaskHandlers {
    /** The idempotency key is known (response header, else the `ready` frame). Called once per task. */
    onReady?(key: string): Awaitable;
    /** `completed`: the task's result. Terminal. */
    onCompleted?(result: unknown, payload: unknown): Awaitable;
    /**
     * `failed` (terminal), an in-band `error` frame other than `server_shutting_down`, a 4xx,
     * or reconnecting given up: `message` is the top-level `message`, else `error.message`.
     */
    onFailed?(message: string, payload: unknown): Awaitable;
    /** `cancelled`. Terminal. */
    onCancelled?(payload: unknown): Awaitable;
    /** `suspended`: the task was stopped; the stream stays open, `resume` continues it. */
    onSuspended?(payload: unknown): Awaitable;
    /**
     * Every lifecycle change, and the connection's: `connecting` (first request),
     * `reconnecting` (payload `{attempt, delayMs, reason}`), `connected` (any 2xx answer,
     * payload `{reconnected}`).
     */
    onStatus?(status: TaskStreamStatus, payload: unknown): Awaitable;
    /** Named (user) events, and lifecycle ones too if a handler has their name. */
    onEvent?: Record<string, (data: unknown, frame: {
        seq: number | null;
        event: string;
    }) => Awaitable>;
    /** Events without a handler in `onEvent`. */
    onOtherEvent?(event: string, data: unknown, seq: number | null): Awaitable;
    /** After each event with an id was handled: the seq to resume after. */
    onSeq?(seq: number): Awaitable;
}
/** Where `{key, lastSeq}` (and app data) of a running task are kept across page loads. */
export interface TaskStore {
    load(): StoredTask | null;
    save(task: StoredTask): void;
    clear(): void;
}
export interface StoredTask {
    key: string;
    lastSeq: number;
    /** The app's own data (what the task was started with, say). */
    meta?: unknown;
}
/** A {@link TaskStore} in `localStorage` (or another Storage) under `name`. */
export declare function storageTaskStore(name: string, storage?: Storage): TaskStore;
export interface BackoffOptions {
    /** First delay. Default 250 ms. */
    baseMs?: number;
    /** Largest delay. Default 4000 ms: below the server's default 5 s disconnect grace. */
    capMs?: number;
    /** Reconnect attempts in a row without a frame before giving up. Default 30. */
    maxAttempts?: number;
    /** Source of jitter in [0, 1). Default Math.random. */
    random?: () => number;
}
export interface TaskStreamOptions {
    signal?: AbortSignal;
    /** Resume after this seq (first request's `Last-Event-ID`). */
    lastEventId?: number | string | null;
    /** Extra request headers (auth, say). */
    headers?: Record<string, string>;
    /**
     * The plugin's task routes (`/api/demo/tasks`). With it, reconnects re-attach with
     * `GET {tasksUrl}/{key}/events`; without, a POST is re-sent with the same body (the
     * server attaches to the task with the same idempotency key).
     */
    tasksUrl?: string;
    /** Keeps `{key, lastSeq, meta}` while the task runs; cleared when it ends. */
    store?: TaskStore;
    /** Saved with the key in `store`. */
    meta?: unknown;
    backoff?: BackoffOptions;
    /** fetch to use (tests, or a wrapped fetch). Default globalThis.fetch. */
    fetch?: typeof fetch;
    /** Passed to {@link SseParser}. */
    maxFrameChars?: number;
}
/** Thrown by the route helpers on a non-2xx answer (`{"error","code"}` bodies). */
export declare class TaskHttpError extends Error {
    readonly status: number;
    readonly code: string | null;
    readonly body: unknown;
    constructor(status: number, message: string, code: string | null, body: unknown);
}
/** The message of a `failed` / `error` payload: top-level `message`, else `error.message`. */
export declare function failureMessage(payload: unknown, fallback?: string): string;
/**
 * POSTs `body` (JSON-encoded unless a string) to `url` and follows the task's events until
 * it ends, reconnecting as needed. Resolves with the outcome (also for `aborted`); handlers
 * are called along the way. Never rejects for HTTP or network errors (they reach
 * `onFailed`); a handler that throws rejects it.
 */
export declare function executeTask(url: string, body: unknown, handlers?: TaskHandlers, options?: TaskStreamOptions): Promise<TaskOutcome>;
/**
 * Re-attaches to a task's events: `url` is `{tasksUrl}/{key}/events` (see
 * {@link taskRoutes}), `options.lastEventId` the seq to resume after.
 */
export declare function attachTask(url: string, handlers?: TaskHandlers, options?: TaskStreamOptions): Promise<TaskOutcome>;
/** Re-attaches to the task kept in `options.store`, if any; null when there is none. */
export declare function resumeStoredTask(tasksUrl: string, handlers: TaskHandlers | undefined, options: TaskStreamOptions & {
    store: TaskStore;
}): Promise<TaskOutcome> | null;
/** The task status JSON of `GET {tasksUrl}/{key}` (fields as the server sends them). */
export interface TaskStatus {
    status: string;
    [field: string]: unknown;
}
/** Helpers for a plugin's task routes (`/api/{plugin}/tasks`). */
export declare function taskRoutes(tasksUrl: string, init?: {
    headers?: Record<string, string>;
    fetch?: typeof fetch;
}): {
    eventsUrl: (key: string) => string;
    status: (key: string) => Promise<TaskStatus>;
    stop: (key: string) => Promise<TaskStatus>;
    resume: (key: string) => Promise<TaskStatus>;
    cancel: (key: string) => Promise<TaskStatus>;
};
export {};
