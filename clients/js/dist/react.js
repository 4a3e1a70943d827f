// React binding of @appkit-rs/client: `useTask` runs one task stream at a time and keeps
// its state in React state. React is a peer dependency; this entry is `@appkit-rs/client/react`.
import { useCallback, useEffect, useRef, useState } from "react";
import { attachTask, executeTask, storageTaskStore, taskRoutes, } from "./index.js";
const LIFECYCLE = new Set(["started", "retrying", "resumed", "suspended"]);
export function useTask(options) {
    const { url, tasksUrl, storageKey, progressEvents, maxEvents = 1000, streamOptions } = options;
    const [status, setStatus] = useState("idle");
    const [key, setKey] = useState(null);
    const [lastSeq, setLastSeq] = useState(0);
    const [events, setEvents] = useState([]);
    const [result, setResult] = useState(undefined);
    const [error, setError] = useState(null);
    const controller = useRef(null);
    const keyRef = useRef(null);
    const storeRef = useRef(options.store ?? (storageKey ? storageTaskStore(storageKey) : undefined));
    const handlers = useCallback(() => ({
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
            if (LIFECYCLE.has(event) || (progressEvents && !progressEvents.includes(event)))
                return;
            setStatus("running");
            setEvents((list) => [...list.slice(Math.max(0, list.length - maxEvents + 1)), { event, data, seq }]);
        },
        onSeq(seq) {
            setLastSeq(seq);
        },
    }), [progressEvents, maxEvents]);
    const begin = useCallback(() => {
        controller.current?.abort();
        const c = new AbortController();
        controller.current = c;
        setError(null);
        setResult(undefined);
        return c.signal;
    }, []);
    const start = useCallback((body) => {
        const signal = begin();
        setEvents([]);
        setKey(null);
        keyRef.current = null;
        setLastSeq(0);
        return executeTask(url, body, handlers(), { ...streamOptions, signal, tasksUrl, store: storeRef.current });
    }, [url, tasksUrl, streamOptions, handlers, begin]);
    const attach = useCallback((k, seq = 0) => {
        const signal = begin();
        keyRef.current = k;
        setKey(k);
        setLastSeq(seq);
        return attachTask(taskRoutes(tasksUrl).eventsUrl(k), handlers(), {
            ...streamOptions, signal, tasksUrl, store: storeRef.current, lastEventId: seq || null,
        });
    }, [tasksUrl, streamOptions, handlers, begin]);
    const action = useCallback(async (name) => {
        const k = keyRef.current;
        if (!k)
            return null;
        const routes = taskRoutes(tasksUrl, { headers: streamOptions?.headers, fetch: streamOptions?.fetch });
        try {
            return await routes[name](k);
        }
        catch (e) {
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
        if (stored)
            void attach(stored.key, stored.lastSeq);
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
