// One job: its images, attempts, webhook deliveries, and cancel / retry / redeliver.
import { api, follow, isAbort, throttle } from "./api.js";
import { alertBox, badge, facts, h, table } from "./dom.js";
import { duration, outputSrc, span, TERMINAL, when } from "./format.js";

function figure(src, caption, alt) {
  return h(
    "figure",
    { class: "shot" },
    h("a", { href: src, target: "_blank", rel: "noopener" }, h("img", { src, alt })),
    h("figcaption", {}, caption),
  );
}

function images(job, inputs) {
  const shots = inputs.images.map((image, i) =>
    figure(image.url, `Input ${i + 1} · ${image.width}×${image.height}`, `Input image ${i + 1}`),
  );
  if (inputs.mask) shots.push(figure(inputs.mask.url, "Mask", "Mask"));
  (job.result?.data ?? []).forEach((_, i) => {
    shots.push(figure(outputSrc(job, i), `Output ${i + 1}`, `Output image ${i + 1}`));
  });
  return h("section", {}, h("h2", {}, "Images"), h("div", { class: "shots" }, shots));
}

// A call that has not ended has no status yet; a lost one never will.
const CALL_STATE = { in_flight: "in flight", lost: "lost with its worker" };

function attempts(job) {
  if (!job.attempts.length) return null;
  const rows = job.attempts.map((a, i) => [
    String(i + 1),
    String(a.run),
    a.upstream,
    a.model,
    CALL_STATE[a.outcome] ?? (a.status == null ? "no answer" : String(a.status)),
    a.error_code ?? "",
    a.duration_ms == null ? "" : span(a.duration_ms / 1000),
    a.next_action ?? "",
  ]);
  const headings = ["#", "Run", "Upstream", "Model", "HTTP", "Error", "Took", "Then"];
  return h("section", {}, h("h2", {}, "Attempts"), table("Upstream calls", headings, rows));
}

function deliveries(job, hooks, act) {
  if (!hooks.webhook_url) return null;
  const events = hooks.events.map((event) => [
    event.type,
    event.state,
    String(event.attempts),
    when(event.created_at),
    h(
      "button",
      { type: "button", onclick: () => act("redeliver", { event_id: event.id }) },
      "Redeliver",
    ),
  ]);
  const sent = hooks.data.map((d) => [
    d.type,
    String(d.attempt),
    when(d.at),
    d.status_code == null ? "" : String(d.status_code),
    span(d.duration_ms / 1000),
    d.outcome,
    h("span", { class: "wrap" }, d.error ?? ""),
  ]);
  return h(
    "section",
    {},
    h("h2", {}, "Webhook deliveries"),
    h("p", {}, "To ", h("code", {}, hooks.webhook_url)),
    table("Events", ["Event", "State", "Attempts", "Created", ""], events),
    table("Delivery attempts", ["Event", "#", "At", "HTTP", "Took", "Outcome", "Error"], sent),
  );
}

function actions(job, act) {
  const open = !TERMINAL.includes(job.status);
  return h(
    "div",
    { class: "actions" },
    open &&
      h("button", { type: "button", class: "danger", onclick: () => act("cancel") }, "Cancel job"),
    ["failed", "canceled"].includes(job.status) &&
      h("button", { type: "button", onclick: () => act("retry") }, "Retry job"),
  );
}

function render(root, job, inputs, hooks, act) {
  const parts = [
    h("h1", {}, "Job ", h("code", {}, job.id), " ", badge(job.status)),
    actions(job, act),
    h("div", { id: "job-message", "aria-live": "polite" }),
    facts([
      ["Prompt", job.request.prompt],
      ["Model", job.model],
      ["Batch", job.batch_id && h("a", { href: `#/batches/${job.batch_id}` }, job.batch_id)],
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Duration", duration(job)],
      ["Queue position", job.queue_position],
      ["From cache", job.cached ? "yes" : null],
    ]),
    job.error && alertBox(`${job.error.code}: ${job.error.message}`),
    images(job, inputs),
    attempts(job),
    deliveries(job, hooks, act),
  ];
  root.replaceChildren(...parts.filter(Boolean));
}

/** The job page: `#/jobs/{id}`, redrawn on each of the job's events. */
export async function jobView(root, { id, signal }) {
  const path = `/v1/jobs/${id}`;
  const inputs = await api("GET", `${path}/inputs`, { signal });
  const body = h("div", {});
  root.append(body);
  let job;
  let watching = false;
  let lastEvent = null;
  const report = (error) => {
    if (isAbort(error)) return;
    body.querySelector("#job-message")?.replaceChildren(alertBox(error.message));
  };

  async function refresh() {
    const [fresh, hooks] = await Promise.all([
      api("GET", path, { signal }),
      api("GET", `${path}/deliveries`, { signal }),
    ]);
    job = fresh;
    render(body, job, inputs, hooks, act);
  }
  const refreshSoon = throttle(refresh, report);

  async function watch() {
    if (watching) return;
    watching = true;
    try {
      while (!signal.aborted && !TERMINAL.includes(job.status)) {
        const resume = lastEvent ? `?last_event_id=${lastEvent}` : "";
        const onEvent = (event) => {
          lastEvent = event.id;
          refreshSoon();
        };
        const streamed = await follow(`${path}/events${resume}`, onEvent, signal);
        if (!streamed) await api("GET", `${path}?wait=3`, { signal });
        await refresh();
      }
    } finally {
      watching = false;
    }
  }

  async function act(action, payload) {
    const target = action === "redeliver" ? `${path}/deliveries/redeliver` : `${path}/${action}`;
    try {
      await api("POST", target, { body: payload, signal });
      await refresh();
      watch().catch(report);
    } catch (error) {
      report(error);
    }
  }

  await refresh();
  await watch();
}
