// The caller's jobs: a table that keeps itself current, filterable by status.
import { api, follow, isAbort, sleep } from "./api.js";
import { badge, h, table } from "./dom.js";
import { age, duration, TERMINAL } from "./format.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const REFRESH_MS = 5000;

function pageHash(status, after) {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (after) query.set("after", after);
  return `#/jobs${query.size ? `?${query}` : ""}`;
}

function row(job) {
  const prompt = job.request.prompt || "(no prompt)";
  return [
    badge(job.status),
    h("a", { href: `#/jobs/${job.id}`, class: "wrap", title: job.id }, prompt),
    job.model,
    age(job.created_at),
    duration(job),
    String(job.attempts.length),
  ];
}

function render(target, page, status, after) {
  const headings = ["Status", "Prompt", "Model", "Age", "Duration", "Attempts"];
  const more = [];
  if (after) more.push(h("a", { href: pageHash(status, null) }, "Newest jobs"));
  if (page.has_more) more.push(h("a", { href: pageHash(status, page.last_id) }, "Older jobs"));
  const focused = target.contains(document.activeElement) && document.activeElement.hash;
  target.replaceChildren(
    page.data.length
      ? table("Your jobs, newest first", headings, page.data.map(row))
      : h("p", { class: "empty" }, status ? `No ${status} jobs.` : "No jobs yet."),
    h("nav", { class: "pager", "aria-label": "Pages" }, more),
  );
  if (focused) target.querySelector(`a[href="${focused}"]`)?.focus();
}

/**
 * Resolve when one of `jobs` probably changed, or after a while. The signal is the
 * event stream (or a long-poll) of the newest unfinished job; `seen` keeps each job's
 * last event id, so a stream resumes after it instead of replaying the job's past.
 */
async function nextChange(jobs, seen, signal) {
  const open = jobs.find((job) => !TERMINAL.includes(job.status));
  const round = new AbortController();
  const stop = () => round.abort();
  signal.addEventListener("abort", stop, { once: true });
  const timer = setTimeout(stop, REFRESH_MS);
  try {
    if (!open) {
      await sleep(REFRESH_MS, round.signal);
      return;
    }
    const last = seen.get(open.id);
    const onEvent = (event) => {
      seen.set(open.id, event.id);
      if (last) stop();
    };
    const path = `/v1/jobs/${open.id}/events${last ? `?last_event_id=${last}` : ""}`;
    const streamed = await follow(path, onEvent, round.signal);
    if (!streamed) await api("GET", `/v1/jobs/${open.id}?wait=5`, { signal: round.signal });
  } catch (error) {
    if (!isAbort(error)) throw error;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", stop);
  }
}

/** The jobs page: `#/jobs?status=&after=`. */
export async function jobsView(root, { params, signal }) {
  const status = params.get("status") ?? "";
  const after = params.get("after");
  const filter = h(
    "select",
    { id: "status-filter", onchange: () => (location.hash = pageHash(filter.value, null)) },
    h("option", { value: "" }, "all"),
    STATUSES.map((name) => h("option", { value: name, selected: name === status }, name)),
  );
  const body = h("div", {});
  root.append(
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" }, h("label", { for: "status-filter" }, "Status"), filter),
    body,
  );
  const query = new URLSearchParams({ limit: "20" });
  if (status) query.set("status", status);
  if (after) query.set("after", after);
  const seen = new Map();
  while (!signal.aborted) {
    const page = await api("GET", `/v1/jobs?${query}`, { signal });
    render(body, page, status, after);
    await nextChange(page.data, seen, signal);
  }
}
