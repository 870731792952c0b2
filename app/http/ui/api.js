// The editq API as the page uses it: every call carries the signed-in key, nothing else.
import { sseParser } from "./sse.js";

const KEY = "editq.apiKey";

/** The API key lives in sessionStorage: gone when the tab closes. */
export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

/** An error answer of the API: `status` and the message of its error body. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code ?? null;
  }
}

/**
 * The checked Response of `method path` (a JSON body for plain objects), sent with the
 * session's key or `key`. A 401 for the session's key signs the session out.
 */
export async function send(method, path, { body, signal, headers = {}, key = session.key } = {}) {
  const init = { method, signal, headers: { ...headers, Authorization: `Bearer ${key}` } };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = new ApiError(response.status, await response.json().catch(() => null));
    if (response.status === 401 && key === session.key) {
      window.dispatchEvent(new CustomEvent("editq:unauthorized"));
    }
    throw error;
  }
  return response;
}

/** The JSON answer of `method path`. */
export async function api(method, path, options) {
  return (await send(method, path, options)).json();
}

let eventsMissing = false;

/**
 * Follow a Server-Sent Events endpoint until the server ends it. EventSource cannot
 * send the Authorization header, so this reads the stream with fetch. Returns false
 * at once when the server has no such endpoint (404), so callers fall back to polling.
 */
export async function follow(path, onEvent, signal) {
  if (eventsMissing) return false;
  let response;
  try {
    response = await send("GET", path, { signal, headers: { Accept: "text/event-stream" } });
  } catch (error) {
    // The resource was just read, so a 404 here means this server has no such stream.
    if (error instanceof ApiError && error.status === 404) {
      eventsMissing = true;
      return false;
    }
    throw error;
  }
  // 204: a resume after the last event of a finished job; there is nothing to read.
  if (response.status === 204 || !response.body) return true;
  const feed = sseParser(onEvent);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    feed(value);
  }
}

/** Resolve after `ms`, or at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** True for the error an aborted fetch or read throws. */
export function isAbort(error) {
  return error?.name === "AbortError";
}

/**
 * `fn` (async) to run soon: calls within `ms` fold into one run after them, so a burst
 * of events costs one refresh (and the key's rate limit is spared). Errors other than
 * an abort go to `onError`.
 */
export function throttle(fn, onError, ms = 400) {
  let timer = null;
  return () => {
    timer ??= setTimeout(() => {
      timer = null;
      fn().catch((error) => isAbort(error) || onError(error));
    }, ms);
  };
}
