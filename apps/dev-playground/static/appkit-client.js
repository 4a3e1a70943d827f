// @appkit-rs/client: speaks appkit's task stream (docs/host.md) over fetch streaming.
//
// One POST (executeTask) or GET re-attach (attachTask) becomes a loop of HTTP requests:
// each one reads `text/event-stream` frames and dispatches them, awaiting every handler
// in order; a network error, a 5xx or a stream that ends without a terminal frame is
// followed by a reconnect (exponential backoff with jitter) that resends `Last-Event-ID`,
// so no event is lost or repeated. A terminal frame (`completed`, `failed`, `cancelled`),
// a 4xx or the caller's AbortSignal ends the loop. No runtime dependencies.
/** Thrown by {@link SseParser} when a frame exceeds `maxFrameChars`. */
export class SseFrameTooLarge extends Error {
    constructor(limit) {
        super(`server-sent event larger than ${limit} characters`);
        this.name = "SseFrameTooLarge";
    }
}
/**
 * Incremental `text/event-stream` parser (the WHATWG rules: LF, CR or CRLF line ends,
 * `:` comments ignored, one optional space after the colon, multi-line `data` joined
 * with `\n`, a frame dispatched on a blank line when it has data or an id). Chunks may
 * split lines and even CRLF pairs anywhere. Work is linear in the input: each character
 * is scanned once, so a 1 MiB frame arriving in small chunks costs no quadratic rescans.
 */
export class SseParser {
    constructor(options = {}) {
        this.pending = ""; // an unfinished line
        this.skipLf = false; // the last chunk ended with CR: a leading LF belongs to it
        this.id = null;
        this.event = "";
        this.data = [];
        this.hasData = false;
        this.size = 0;
        this.comment = false;
        this.decoder = new TextDecoder();
        this.limit = options.maxFrameChars ?? 64 * 1024 * 1024;
    }
    /** Feeds bytes (decoded as UTF-8, split code points allowed) or text; returns the frames completed. */
    push(chunk) {
        const text = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
        const frames = [];
        let start = 0;
        let i = 0;
        if (this.skipLf && text.length > 0) {
            this.skipLf = false;
            if (text.charCodeAt(0) === 10)
                start = i = 1;
        }
        for (; i < text.length; i++) {
            const c = text.charCodeAt(i);
            if (c !== 10 && c !== 13)
                continue;
            const line = this.pending.length ? this.pending + text.slice(start, i) : text.slice(start, i);
            this.pending = "";
            if (c === 13) {
                if (i + 1 < text.length) {
                    if (text.charCodeAt(i + 1) === 10)
                        i++;
                }
                else {
                    this.skipLf = true;
                }
            }
            start = i + 1;
            const frame = this.line(line);
            if (frame)
                frames.push(frame);
        }
        if (start < text.length) {
            this.pending += text.slice(start);
            if (this.size + this.pending.length > this.limit)
                throw new SseFrameTooLarge(this.limit);
        }
        return frames;
    }
    line(line) {
        if (line === "") {
            const frame = this.hasData || this.id !== null
                ? { id: this.id, event: this.event || "message", data: this.data.join("\n") }
                : null;
            this.id = null;
            this.event = "";
            this.data = [];
            this.hasData = false;
            this.size = 0;
            return frame;
        }
        if (line.charCodeAt(0) === 58) {
            this.comment = true; // `:` comment (keep-alive)
            return null;
        }
        this.size += line.length;
        if (this.size > this.limit)
            throw new SseFrameTooLarge(this.limit);
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.charCodeAt(0) === 32)
            value = value.slice(1);
        if (field === "data") {
            this.data.push(value);
            this.hasData = true;
        }
        else if (field === "event") {
            this.event = value;
        }
        else if (field === "id") {
            if (!value.includes("\0"))
                this.id = value;
        }
        return null;
    }
    /** Whether a comment line was read since the last call. */
    takeComment() {
        const c = this.comment;
        this.comment = false;
        return c;
    }
    /** True when the parser holds part of a frame (the stream ended mid-frame). */
    get midFrame() {
        return this.pending !== "" || this.hasData || this.id !== null || this.event !== "";
    }
}
/** A {@link TaskStore} in `localStorage` (or another Storage) under `name`. */
export function storageTaskStore(name, storage) {
    const s = () => storage ?? (typeof localStorage === "undefined" ? null : localStorage);
    return {
        load() {
            try {
                const raw = s()?.getItem(name);
                const v = raw ? JSON.parse(raw) : null;
                return v && typeof v.key === "string" ? { key: v.key, lastSeq: Number(v.lastSeq) || 0, meta: v.meta } : null;
            }
            catch {
                return null;
            }
        },
        save(task) {
            s()?.setItem(name, JSON.stringify(task));
        },
        clear() {
            s()?.removeItem(name);
        },
    };
}
/** Thrown by the route helpers on a non-2xx answer (`{"error","code"}` bodies). */
export class TaskHttpError extends Error {
    constructor(status, message, code, body) {
        super(message);
        this.status = status;
        this.code = code;
        this.body = body;
        this.name = "TaskHttpError";
    }
}
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const LIFECYCLE = new Set(["started", "retrying", "resumed", "suspended"]);
const RECONNECT = Symbol("reconnect");
const KEY_HEADER = "X-AppKit-Task-Idempotency-Key";
function parseData(data) {
    if (data === "")
        return null;
    try {
        return JSON.parse(data);
    }
    catch {
        return data;
    }
}
/** The message of a `failed` / `error` payload: top-level `message`, else `error.message`. */
export function failureMessage(payload, fallback = "Task failed") {
    const p = payload;
    if (p && typeof p.message === "string")
        return p.message;
    if (p && p.error && typeof p.error.message === "string")
        return p.error.message;
    if (typeof payload === "string" && payload)
        return payload;
    return fallback;
}
function sleep(ms, signal) {
    return new Promise((resolve) => {
        if (signal?.aborted)
            return resolve();
        const t = setTimeout(done, ms);
        function done() {
            clearTimeout(t);
            signal?.removeEventListener("abort", done);
            resolve();
        }
        signal?.addEventListener("abort", done);
    });
}
async function errorBody(response) {
    const text = await response.text().catch(() => "");
    const body = parseData(text);
    const b = body;
    const message = b && typeof b.error === "string" ? b.error : `${response.status} ${response.statusText}`.trim();
    return { message, code: b && typeof b.code === "string" ? b.code : null, body };
}
/**
 * POSTs `body` (JSON-encoded unless a string) to `url` and follows the task's events until
 * it ends, reconnecting as needed. Resolves with the outcome (also for `aborted`); handlers
 * are called along the way. Never rejects for HTTP or network errors (they reach
 * `onFailed`); a handler that throws rejects it.
 */
export function executeTask(url, body, handlers = {}, options = {}) {
    const text = typeof body === "string" ? body : JSON.stringify(body ?? null);
    return run({ url, method: "POST", body: text }, null, handlers, options);
}
/**
 * Re-attaches to a task's events: `url` is `{tasksUrl}/{key}/events` (see
 * {@link taskRoutes}), `options.lastEventId` the seq to resume after.
 */
export function attachTask(url, handlers = {}, options = {}) {
    return run({ url, method: "GET" }, null, handlers, options);
}
/** Re-attaches to the task kept in `options.store`, if any; null when there is none. */
export function resumeStoredTask(tasksUrl, handlers = {}, options) {
    const stored = options.store.load();
    if (!stored)
        return null;
    return attachTask(taskRoutes(tasksUrl).eventsUrl(stored.key), handlers, {
        ...options,
        tasksUrl,
        lastEventId: stored.lastSeq || null,
        meta: options.meta ?? stored.meta,
    });
}
async function run(first, knownKey, handlers, o) {
    try {
        return await loop(first, knownKey, guard(handlers), o);
    }
    catch (e) {
        throw e instanceof HandlerError ? e.cause : e; // a handler's own error, as it threw it
    }
}
// Marks errors thrown by the app's handlers, so they are never taken for network errors
// (which would reconnect) and reach the caller unchanged.
function guard(h) {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const wrap = (f) => f &&
        (async (...a) => {
            try {
                await f(...a);
            }
            catch (e) {
                throw new HandlerError(e);
            }
        });
    const onEvent = {};
    for (const [name, f] of Object.entries(h.onEvent ?? {}))
        onEvent[name] = wrap(f.bind(h.onEvent));
    return {
        onReady: wrap(h.onReady?.bind(h)),
        onCompleted: wrap(h.onCompleted?.bind(h)),
        onFailed: wrap(h.onFailed?.bind(h)),
        onCancelled: wrap(h.onCancelled?.bind(h)),
        onSuspended: wrap(h.onSuspended?.bind(h)),
        onStatus: wrap(h.onStatus?.bind(h)),
        onOtherEvent: wrap(h.onOtherEvent?.bind(h)),
        onSeq: wrap(h.onSeq?.bind(h)),
        onEvent,
    };
}
async function loop(first, knownKey, h, o) {
    const doFetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    const signal = o.signal;
    const base = o.backoff?.baseMs ?? 250;
    const cap = o.backoff?.capMs ?? 4000;
    const maxAttempts = o.backoff?.maxAttempts ?? 30;
    const random = o.backoff?.random ?? Math.random;
    let key = knownKey;
    let readyCalled = false;
    let lastSeq = o.lastEventId != null && o.lastEventId !== "" ? Number(o.lastEventId) : 0;
    let lastEventId = o.lastEventId != null && o.lastEventId !== "" ? String(o.lastEventId) : null;
    let attempt = 0; // failed connections in a row since the last frame
    let request = first;
    const aborted = () => ({ state: "aborted", key, lastSeq });
    const persist = () => {
        if (o.store && key)
            o.store.save({ key, lastSeq, ...(o.meta === undefined ? {} : { meta: o.meta }) });
    };
    const learnKey = async (k) => {
        if (!k)
            return;
        key = k;
        persist();
        if (!readyCalled) {
            readyCalled = true;
            await h.onReady?.(k);
            await h.onStatus?.("ready", { key: k });
        }
    };
    const finish = async (outcome) => {
        o.store?.clear();
        return outcome;
    };
    const fail = async (message, payload) => {
        await h.onStatus?.("failed", payload);
        await h.onFailed?.(message, payload);
        return finish({ state: "failed", key, lastSeq, message, payload });
    };
    for (;;) {
        if (signal?.aborted)
            return aborted();
        let reason;
        try {
            const headers = { Accept: "text/event-stream", ...o.headers };
            if (request.method === "POST" && !Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
                headers["Content-Type"] = "application/json";
            }
            if (lastEventId !== null)
                headers["Last-Event-ID"] = lastEventId;
            if (attempt === 0 && !readyCalled)
                await h.onStatus?.("connecting", null);
            const response = await doFetch(request.url, { method: request.method, headers, body: request.body, signal, cache: "no-store" });
            if (response.status >= 400 && response.status < 500) {
                const e = await errorBody(response);
                return fail(e.message, { status: response.status, code: e.code, body: e.body });
            }
            if (!response.ok || !response.body) {
                await response.body?.cancel().catch(() => { });
                throw new Error(`HTTP ${response.status}`);
            }
            const type = response.headers.get("Content-Type") ?? "";
            if (!/^text\/event-stream\b/i.test(type)) {
                // A login page or a wrong route answering 200: reconnecting would not help.
                await response.body.cancel().catch(() => { });
                return fail(`expected text/event-stream, got ${type || "no content type"}`, { status: response.status, contentType: type });
            }
            await learnKey(response.headers.get(KEY_HEADER));
            await h.onStatus?.("connected", { reconnected: request !== first || attempt > 0 });
            const parser = new SseParser({ maxFrameChars: o.maxFrameChars });
            const reader = response.body.getReader();
            try {
                for (;;) {
                    const { value, done } = await reader.read();
                    if (done)
                        break;
                    for (const frame of parser.push(value)) {
                        attempt = 0; // a frame arrived: the connection works
                        const outcome = await dispatch(frame);
                        if (outcome === RECONNECT)
                            throw new Error("server_shutting_down");
                        if (outcome)
                            return await finish(outcome);
                        if (signal?.aborted)
                            return aborted();
                    }
                    // Comments (`: hb`) produce no frame but prove the connection works too.
                    if (parser.takeComment())
                        attempt = 0;
                }
            }
            finally {
                reader.cancel().catch(() => { });
            }
            reason = "stream ended";
        }
        catch (e) {
            if (signal?.aborted)
                return aborted();
            if (e instanceof SseFrameTooLarge)
                return fail(e.message, { error: { kind: "client", message: e.message } });
            if (e instanceof HandlerError)
                throw e;
            reason = e instanceof Error ? e.message : String(e);
        }
        // Reconnect: to the task's events when its key and routes are known, else the same request.
        attempt++;
        if (attempt > maxAttempts)
            return fail(`connection lost: ${reason}`, { error: { kind: "connection", message: reason } });
        const exp = Math.min(cap, base * 2 ** (attempt - 1));
        const delayMs = Math.round(exp / 2 + (random() * exp) / 2);
        await h.onStatus?.("reconnecting", { attempt, delayMs, reason });
        await sleep(delayMs, signal);
        if (key && o.tasksUrl)
            request = { url: taskRoutes(o.tasksUrl).eventsUrl(key), method: "GET" };
    }
    // Dispatches one frame; returns the outcome when it was terminal.
    async function dispatch(frame) {
        const data = parseData(frame.data);
        const seq = frame.id !== null && frame.id !== "" && Number.isFinite(Number(frame.id)) ? Number(frame.id) : null;
        const name = frame.event;
        let outcome = null;
        if (name === "ready" && frame.id === null) {
            const k = data?.idempotencyKey;
            await learnKey(key ?? (typeof k === "string" ? k : null));
            return null;
        }
        if (name === "error" && frame.id === null) {
            const message = failureMessage(data, "stream error");
            if (message === "server_shutting_down")
                return RECONNECT; // not the task's end: reconnect
            await h.onStatus?.("failed", data);
            await h.onFailed?.(message, data);
            return { state: "failed", key, lastSeq, message, payload: data };
        }
        if (frame.id !== null)
            lastEventId = frame.id;
        if (name === "completed") {
            const result = data?.result;
            if (seq !== null)
                lastSeq = seq;
            await h.onStatus?.("completed", data);
            await h.onCompleted?.(result, data);
            outcome = { state: "completed", key, lastSeq, result };
        }
        else if (name === "failed") {
            if (seq !== null)
                lastSeq = seq;
            const message = failureMessage(data);
            await h.onStatus?.("failed", data);
            await h.onFailed?.(message, data);
            outcome = { state: "failed", key, lastSeq, message, payload: data };
        }
        else if (name === "cancelled") {
            if (seq !== null)
                lastSeq = seq;
            await h.onStatus?.("cancelled", data);
            await h.onCancelled?.(data);
            outcome = { state: "cancelled", key, lastSeq, payload: data };
        }
        else {
            if (LIFECYCLE.has(name))
                await h.onStatus?.(name, data);
            if (name === "suspended")
                await h.onSuspended?.(data);
            const handler = h.onEvent?.[name];
            if (handler)
                await handler(data, { seq, event: name });
            else if (!LIFECYCLE.has(name))
                await h.onOtherEvent?.(name, data, seq);
            if (seq !== null) {
                lastSeq = seq;
                persist();
                await h.onSeq?.(seq);
            }
            return null;
        }
        if (seq !== null)
            await h.onSeq?.(seq);
        return TERMINAL.has(name) ? outcome : null;
    }
}
class HandlerError extends Error {
    constructor(cause) {
        super("handler failed");
        this.cause = cause;
    }
}
/** Helpers for a plugin's task routes (`/api/{plugin}/tasks`). */
export function taskRoutes(tasksUrl, init = {}) {
    const base = tasksUrl.replace(/\/+$/, "");
    const doFetch = init.fetch ?? ((...a) => globalThis.fetch(...a));
    const url = (key, tail = "") => `${base}/${encodeURIComponent(key)}${tail}`;
    async function call(method, u) {
        const response = await doFetch(u, { method, headers: { Accept: "application/json", ...init.headers }, cache: "no-store" });
        if (!response.ok) {
            const e = await errorBody(response);
            throw new TaskHttpError(response.status, e.message, e.code, e.body);
        }
        return (await response.json());
    }
    return {
        eventsUrl: (key) => url(key, "/events"),
        status: (key) => call("GET", url(key)),
        stop: (key) => call("POST", url(key, "/stop")),
        resume: (key) => call("POST", url(key, "/resume")),
        cancel: (key) => call("POST", url(key, "/cancel")),
    };
}
