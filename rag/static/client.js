// Dependency-free client for the book chat API (POST /chat, Server-Sent Events).
//
//   import { ask } from "https://<your-space>.hf.space/client.js";
//   const controller = new AbortController();
//   const { answer, metadata } = await ask({
//     question: "What is physical AI?",
//     onMetadata: (m) => showSources(m.sources),   // first: mode, sources, request_id
//     onContent: (text, soFar) => render(soFar),   // each streamed piece
//     onError: (e) => showError(e.message),        // {code, message[, status, retry_after]}
//     onDone: (r) => setIdle(),                    // always exactly once, also after abort
//     signal: controller.signal,                   // controller.abort() stops the stream
//   });
//
// Why not split each network read on "\n"? A read may end in the middle of a
// frame (or of a UTF-8 character), and one read may hold several frames; the
// SSEParser below buffers until a frame's blank line arrives.

/** Where the API lives when `baseUrl` is not given: wherever this module was served from. */
const DEFAULT_BASE_URL = new URL(".", import.meta.url).href;

/**
 * Incremental Server-Sent Events parser (the WHATWG event-stream format).
 * Feed it decoded text in pieces of any size; it returns each complete event once.
 * Comment lines (": ping") are dropped; events without data lines are dropped.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.skipLF = false; // the last piece ended in "\r": a "\n" starting the next one is the same line end
  }

  /** Add text; return the events completed by it: [{event, data, id}]. */
  push(text) {
    if (!text) return [];
    if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
    this.skipLF = text.endsWith("\r");
    this.buffer += text.replace(/\r\n?/g, "\n");
    const events = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) !== -1) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const event = parseBlock(block);
      if (event) events.push(event);
    }
    return events;
  }

  /** The stream ended: an unterminated last event is incomplete and is discarded (per spec). */
  flush() {
    this.buffer = "";
    this.skipLF = false;
    return [];
  }
}

function parseBlock(block) {
  const data = [];
  let event = "message";
  let id = null;
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
    else if (field === "id") id = value;
  }
  return data.length ? { event, data: data.join("\n"), id } : null;
}

/** Parse a whole event-stream text at once (tests, non-streaming use). */
export function parseSSE(text) {
  const parser = new SSEParser();
  return parser.push(text);
}

/**
 * Ask one question. Resolves to {answer, metadata, error, stopped}; never rejects
 * for network, HTTP or stream errors (they go to onError) nor for an abort.
 */
export async function ask({
  question,
  history,
  selected_text,
  session_id,
  top_k,
  baseUrl = DEFAULT_BASE_URL,
  onMetadata,
  onContent,
  onError,
  onDone,
  signal,
} = {}) {
  const result = { answer: "", metadata: null, error: null, stopped: false };
  const fail = (error) => {
    result.error = error;
    if (onError) onError(error);
  };
  try {
    const body = { question, stream: true };
    if (history && history.length) body.history = history;
    if (selected_text) body.selected_text = selected_text;
    if (session_id) body.session_id = session_id;
    if (top_k) body.top_k = top_k;
    const response = await fetch(new URL("chat", withSlash(baseUrl)), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
    if (!response.ok) {
      fail(await responseError(response));
      return result;
    }
    if (!response.body) {
      fail({ code: "no_stream", message: "this browser cannot read streamed responses" });
      return result;
    }
    const finished = await readStream(response.body, result, { onMetadata, onContent, fail });
    if (!finished && !result.error) {
      fail({ code: "stream_interrupted", message: "the connection closed before the answer was complete" });
    }
  } catch (exc) {
    if (isAbort(exc, signal)) {
      result.stopped = true;
    } else {
      fail({ code: "network_error", message: `could not reach the chat service (${exc.message || exc})` });
    }
  } finally {
    if (onDone) onDone(result);
  }
  return result;
}

/** Read frames until the done event; true when it arrived. */
async function readStream(body, result, { onMetadata, onContent, fail }) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const events = done ? parser.push(decoder.decode()) : parser.push(decoder.decode(value, { stream: true }));
      for (const event of events) {
        let payload;
        try {
          payload = JSON.parse(event.data);
        } catch {
          fail({ code: "bad_event", message: "the server sent an event that is not JSON" });
          continue;
        }
        if (payload.metadata) {
          result.metadata = payload.metadata;
          if (onMetadata) onMetadata(payload.metadata);
        }
        if (typeof payload.content === "string" && payload.content) {
          result.answer += payload.content;
          if (onContent) onContent(payload.content, result.answer);
        }
        if (payload.error) fail(payload.error);
        if (payload.done) return true;
      }
      if (done) return false;
    }
  } finally {
    reader.cancel().catch(() => {}); // release the connection (a no-op once the body has ended)
  }
}

/** The `{code, message}` of a JSON error response (429, 422, 413...), or a generic one. */
async function responseError(response) {
  let error = null;
  try {
    const data = await response.json();
    if (data && data.error && typeof data.error === "object") error = { ...data.error };
  } catch {
    // not JSON: fall through
  }
  if (!error) error = { code: `http_${response.status}`, message: response.statusText || `HTTP ${response.status}` };
  error.status = response.status;
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  if (Number.isFinite(retryAfter)) error.retry_after = retryAfter;
  return error;
}

function isAbort(exc, signal) {
  return (exc && exc.name === "AbortError") || Boolean(signal && signal.aborted);
}

function withSlash(url) {
  const absolute = new URL(url, globalThis.location ? globalThis.location.href : DEFAULT_BASE_URL).href;
  return absolute.endsWith("/") ? absolute : absolute + "/";
}
