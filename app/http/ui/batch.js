// Batches: the list, and a page per batch whose grid fills in as variants finish.
import { api, follow, isAbort, send, sleep, throttle } from "./api.js";
import { alertBox, badge, h, table } from "./dom.js";
import { age, eta, finished, outputSrc, span, TERMINAL } from "./format.js";

const GRID_LIMIT = 300;
const SEGMENTS = ["succeeded", "failed", "canceled", "running"];

function progress(batch) {
  const counts = batch.counts;
  const bar = h("div", {
    class: "progress",
    role: "progressbar",
    "aria-label": "Variants finished",
    "aria-valuemin": 0,
    "aria-valuemax": batch.total,
    "aria-valuenow": finished(batch),
  });
  for (const status of SEGMENTS) {
    const segment = h("span", { class: `segment segment-${status}`, title: status });
    segment.style.width = `${(100 * counts[status]) / Math.max(1, batch.total)}%`;
    bar.append(segment);
  }
  const left = eta(batch);
  const parts = [`${finished(batch)} of ${batch.total} finished`];
  for (const status of ["succeeded", "failed", "canceled", "running", "queued"]) {
    if (counts[status]) parts.push(`${counts[status]} ${status}`);
  }
  if (batch.status === "running") {
    parts.push(left == null ? "ETA: estimating" : `ETA ${span(left)}`);
  } else if (batch.finished_at != null) {
    parts.push(`took ${span(batch.finished_at - batch.created_at)}`);
  }
  return h("div", { class: "progress-block" }, bar, h("p", { class: "muted" }, parts.join(" · ")));
}

function tile(job) {
  const number = job.variant_index + 1;
  const prompt = job.request.prompt ?? "";
  const src = job.status === "succeeded" ? outputSrc(job) : null;
  const picture = src
    ? h("img", { src, alt: `Variant ${number}: ${prompt}`, loading: "lazy" })
    : h("span", { class: "placeholder" }, job.status);
  return h(
    "li",
    { class: `tile tile-${job.status}`, "data-status": job.status },
    h(
      "a",
      { href: `#/jobs/${job.id}` },
      picture,
      h("span", { class: "tile-caption" }, `#${number} `, prompt),
      job.error && h("span", { class: "tile-error" }, job.error.message),
    ),
  );
}

/** Keeps the grid's tiles in variant order, redrawing only those whose status changed. */
class Grid {
  constructor() {
    this.jobs = [];
    this.tiles = [];
    this.element = h("ul", { class: "grid", "aria-label": "Variants" });
  }

  /** The id after which a page of variants may hold news (null: from the start). */
  get resumeAfter() {
    const open = this.jobs.findIndex((job) => !TERMINAL.includes(job.status));
    const settled = open < 0 ? this.jobs.length : open;
    return settled ? this.jobs[settled - 1].id : null;
  }

  update(job) {
    const index = job.variant_index;
    if (index >= GRID_LIMIT || this.jobs[index]?.status === job.status) return;
    const fresh = tile(job);
    if (this.tiles[index]) this.tiles[index].replaceWith(fresh);
    else this.element.append(fresh);
    this.jobs[index] = job;
    this.tiles[index] = fresh;
  }
}

async function loadVariants(batch, grid, signal) {
  let after = grid.resumeAfter;
  for (;;) {
    const query = new URLSearchParams({ limit: "100" });
    if (after) query.set("after", after);
    const page = await api("GET", `/v1/batches/${batch.id}/jobs?${query}`, { signal });
    page.data.forEach((job) => grid.update(job));
    after = page.last_id;
    if (!page.has_more || grid.jobs.length >= GRID_LIMIT) return;
  }
}

async function download(batch, button, signal) {
  button.disabled = true;
  button.textContent = "Preparing zip…";
  try {
    const response = await send("GET", `/v1/batches/${batch.id}/download`, { signal });
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `${batch.id}.zip`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } finally {
    button.disabled = false;
    button.textContent = "Download all (.zip)";
  }
}

/** The batch page: `#/batches/{id}`. */
export async function batchView(root, { id, signal }) {
  const grid = new Grid();
  const header = h("div", {});
  const summary = h("div", { "aria-live": "polite" });
  const message = h("div", { "aria-live": "polite" });
  const note = h("p", { class: "muted" });
  const report = (error) => isAbort(error) || message.replaceChildren(alertBox(error.message));
  let batch;

  const cancelBatch = () => api("POST", `/v1/batches/${id}/cancel`, { signal });
  const cancel = h(
    "button",
    { type: "button", class: "danger", onclick: () => act(cancelBatch) },
    "Cancel batch",
  );
  const zip = h(
    "button",
    { type: "button", onclick: () => act(() => download(batch, zip, signal)) },
    "Download all (.zip)",
  );

  async function act(action) {
    try {
      await action();
      await refresh();
    } catch (error) {
      report(error);
    }
  }

  async function refresh() {
    batch = await api("GET", `/v1/batches/${id}`, { signal });
    await loadVariants(batch, grid, signal);
    const title = h("h1", {}, "Batch ", h("code", {}, batch.id), " ", badge(batch.status));
    header.replaceChildren(title);
    summary.replaceChildren(progress(batch));
    cancel.hidden = batch.status !== "running";
    if (batch.total > GRID_LIMIT) {
      note.textContent = `The grid shows the first ${GRID_LIMIT} variants; the zip has them all.`;
    }
  }
  const refreshSoon = throttle(refresh, report);

  await refresh();
  const actions = h("div", { class: "actions" }, cancel, zip);
  root.append(header, summary, actions, message, note, grid.element);
  while (!signal.aborted && batch.status === "running") {
    const streamed = await follow(`/v1/batches/${id}/events`, refreshSoon, signal);
    if (!streamed) await sleep(1500, signal);
    await refresh();
  }
}

/** The batches page: `#/batches`, the caller's batches, newest first. */
export async function batchesView(root, { signal }) {
  const body = h("div", {});
  root.append(h("h1", {}, "Batches"), body);
  while (!signal.aborted) {
    const page = await api("GET", "/v1/batches?limit=50", { signal });
    const rows = page.data.map((batch) => [
      h("a", { href: `#/batches/${batch.id}` }, batch.id),
      badge(batch.status),
      `${finished(batch)} / ${batch.total}`,
      age(batch.created_at),
    ]);
    body.replaceChildren(
      rows.length
        ? table("Your batches, newest first", ["Batch", "Status", "Finished", "Age"], rows)
        : h("p", { class: "empty" }, "No batches yet."),
    );
    await sleep(page.data.some((batch) => batch.status === "running") ? 2000 : 10_000, signal);
  }
}
