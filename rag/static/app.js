// The chat page at "/": a question box, the streamed answer, its sources.
// Everything the model writes is HTML-escaped before the small Markdown pass,
// so an answer can never inject markup into the page.

import { ask } from "../client.js";

const MODE_LABELS = {
  rag: "Generated answer",
  selected_text: "From your selection",
  extractive: "Extractive: quoted from the book",
  no_answer: "Not in the book",
  error: "Error",
};
// The server refuses longer histories (MAX_HISTORY_MESSAGES / MAX_HISTORY_CHARS);
// stay well under its defaults by dropping the oldest turns.
const HISTORY_MAX_MESSAGES = 12;
const HISTORY_MAX_CHARS = 6000;

// ---------------------------------------------------------------- Markdown

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** An http(s) URL safe to put in href, or null. */
export function safeUrl(url) {
  try {
    const parsed = new URL(String(url), document.baseURI);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/**
 * Minimal, safe Markdown: paragraphs, headings, lists, blockquotes, fenced code,
 * inline code, bold/italic, and `[n]` citations linked to `sources[n]`.
 * Unfinished constructs (an open fence mid-stream) render as they are so far.
 */
export function renderMarkdown(text, sources = []) {
  const byNumber = new Map(sources.map((s) => [Number(s.n), s]));
  const lines = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/);
    if (fence) {
      const code = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) code.push(lines[i++]);
      i += 1; // the closing fence (or past the end while streaming)
      const lang = fence[2] ? ` data-lang="${escapeHtml(fence[2])}"` : "";
      out.push(`<pre${lang}><code>${escapeHtml(code.join("\n"))}</code></pre>`);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = line.match(/^\s*(#{1,6})\s+(.*)$/);
    if (heading) {
      const level = Math.min(6, heading[1].length + 2); // the page owns h1/h2
      out.push(`<h${level}>${inline(heading[2], byNumber)}</h${level}>`);
      i += 1;
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      out.push(`<blockquote>${renderMarkdown(quoted.join("\n"), sources)}</blockquote>`);
      continue;
    }
    const item = listItem(line);
    if (item) {
      const items = [];
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (next && next.ordered === item.ordered) {
          items.push(next.text);
        } else if (!next && items.length && /^\s{2,}\S/.test(lines[i])) {
          items[items.length - 1] += "\n" + lines[i].trim(); // continuation line
        } else {
          break;
        }
        i += 1;
      }
      const tag = item.ordered ? "ol" : "ul";
      const start = item.ordered && item.start !== 1 ? ` start="${item.start}"` : "";
      const lis = items.map((t) => `<li>${inline(t, byNumber)}</li>`).join("");
      out.push(`<${tag}${start}>${lis}</${tag}>`);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) para.push(lines[i++].trim());
    out.push(`<p>${inline(para.join("\n"), byNumber)}</p>`);
  }
  return out.join("");
}

function listItem(line) {
  const m = line.match(/^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/);
  if (!m) return null;
  return { ordered: !m[1], start: m[2] ? Number(m[2]) : 1, text: m[3] };
}

function startsBlock(line) {
  return /^\s*(`{3,}|~{3,}|#{1,6}\s|>)/.test(line) || listItem(line) !== null;
}

/** Inline Markdown on one block of raw text: escape first, then format. */
function inline(raw, byNumber) {
  const codes = [];
  let html = escapeHtml(raw).replace(/`([^`\n]+)`/g, (_, code) => {
    codes.push(`<code>${code}</code>`);
    return `\u0000${codes.length - 1}\u0000`;
  });
  html = html
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/\[(\d+(?:\s*,\s*\d+)*)\]/g, (whole, list) => citations(list, byNumber) ?? whole)
    .replace(/\n/g, "<br>");
  return html.replace(/\u0000(\d+)\u0000/g, (_, n) => codes[Number(n)]);
}

/** "[1, 3]" -> linked markers, or null when a number is not a source (left as text). */
function citations(list, byNumber) {
  const numbers = list.split(",").map((s) => Number(s.trim()));
  if (!numbers.every((n) => byNumber.has(n))) return null;
  return numbers
    .map((n) => {
      const source = byNumber.get(n);
      const href = safeUrl(source.url) ?? `#source-${n}`;
      const label = escapeHtml(`Source ${n}: ${source.section || source.title || ""}`);
      return `<a class="cite" href="${escapeHtml(href)}" target="_blank" rel="noopener" title="${label}" aria-label="${label}">[${n}]</a>`;
    })
    .join("");
}

// ---------------------------------------------------------------- Page

function element(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function renderSources(list, sources) {
  list.replaceChildren();
  for (const source of sources) {
    const li = element("li", { id: `source-${source.n}`, value: String(source.n) });
    const href = safeUrl(source.url);
    const title = source.title || source.section || source.doc_path || `Source ${source.n}`;
    li.append(href ? element("a", { href, target: "_blank", rel: "noopener" }, title) : element("span", {}, title));
    if (source.section) li.append(element("span", { class: "crumb" }, source.section));
    list.append(li);
  }
}

/** One question and its answer in the conversation log. */
class Turn {
  constructor(log, question, selected) {
    this.sources = [];
    this.root = element("article", { class: "turn", "aria-busy": "true" });
    const q = element("div", { class: "question" });
    q.append(element("h2", { class: "visually-hidden" }, "Question"), element("p", {}, question));
    if (selected) q.append(element("blockquote", { class: "selection", title: "Selected text" }, selected));
    this.mode = element("p", { class: "mode", hidden: "" });
    this.answer = element("div", { class: "answer", "aria-live": "polite" });
    this.status = element("p", { class: "turn-status", role: "status" }, "Searching the book…");
    this.error = element("p", { class: "error", role: "alert", hidden: "" });
    this.sourcesBox = element("section", { class: "sources", hidden: "" });
    this.sourcesBox.append(element("h3", {}, "Sources"));
    this.sourcesList = element("ol");
    this.sourcesBox.append(this.sourcesList);
    const a = element("div", { class: "reply" });
    a.append(this.mode, this.answer, this.error, this.status, this.sourcesBox);
    this.root.append(q, a);
    log.append(this.root);
  }

  metadata(meta) {
    this.sources = Array.isArray(meta.sources) ? meta.sources : [];
    const label = MODE_LABELS[meta.mode] || meta.mode || "";
    if (label) {
      this.mode.textContent = meta.fallback ? `${label} (daily limit reached: quoting the book)` : label;
      this.mode.dataset.mode = meta.mode;
      this.mode.hidden = false;
    }
    renderSources(this.sourcesList, this.sources);
    this.sourcesBox.hidden = this.sources.length === 0;
    this.status.textContent = "Writing…";
  }

  content(soFar) {
    this.answer.innerHTML = renderMarkdown(soFar, this.sources);
  }

  fail(error) {
    const retry = error.retry_after ? ` Try again in ${error.retry_after} s.` : "";
    this.error.textContent = `${error.message || "Something went wrong."}${retry}`;
    this.error.dataset.code = error.code || "";
    this.error.hidden = false;
  }

  done(result) {
    this.root.setAttribute("aria-busy", "false");
    this.status.textContent = result.stopped ? "Stopped." : "";
    this.status.hidden = !result.stopped;
    this.root.classList.toggle("stopped", result.stopped);
  }
}

function setup() {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const log = document.getElementById("log");
  const input = document.getElementById("question");
  const selected = document.getElementById("selected-text");
  const send = document.getElementById("send");
  const stop = document.getElementById("stop");
  const clear = document.getElementById("clear");
  const statusLine = document.getElementById("status");
  const history = [];
  const sessionId = crypto.randomUUID ? crypto.randomUUID() : String(Date.now());
  let controller = null;

  const busy = (on) => {
    send.disabled = on;
    stop.disabled = !on;
    stop.hidden = !on;
    form.setAttribute("aria-busy", String(on));
  };

  async function submit() {
    const question = input.value.trim();
    if (!question || controller) return;
    const selection = selected.value.trim();
    const turn = new Turn(log, question, selection);
    turn.root.scrollIntoView({ block: "start", behavior: "smooth" });
    input.value = "";
    controller = new AbortController();
    busy(true);
    const result = await ask({
      question,
      history: history.slice(),
      selected_text: selection || undefined,
      session_id: sessionId,
      signal: controller.signal,
      onMetadata: (meta) => turn.metadata(meta),
      onContent: (_, soFar) => turn.content(soFar),
      onError: (error) => turn.fail(error),
      onDone: (res) => turn.done(res),
    });
    controller = null;
    busy(false);
    if (result.answer && !result.error) remember(history, question, result.answer);
    input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) controller.abort();
  });
  clear.addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    log.replaceChildren();
    input.focus();
  });
  busy(false);
  showHealth(statusLine);
}

function remember(history, question, answer) {
  history.push({ role: "user", content: question }, { role: "assistant", content: answer });
  const size = () => history.reduce((n, m) => n + m.content.length, 0);
  while (history.length > HISTORY_MAX_MESSAGES || (history.length && size() > HISTORY_MAX_CHARS)) {
    history.splice(0, 2);
  }
}

/** The index size and answer mode under the title, from /health (`points`, `llm`). */
async function showHealth(line) {
  try {
    const response = await fetch(new URL("health", document.baseURI), { cache: "no-store" });
    const health = await response.json();
    const answers = health.llm && health.llm.enabled
      ? `answers generated by ${health.llm.model}`
      : "extractive answers (no language model configured)";
    line.textContent = `${health.points} passages indexed · ${answers}`;
  } catch {
    line.textContent = "";
  }
}

setup();
