// The queue: depth per lane, live workers, and each upstream's calls in flight.
import { api, sleep } from "./api.js";
import { h, table } from "./dom.js";

const REFRESH_MS = 2000;

function lanes(snapshot) {
  const rows = snapshot.lanes.map((lane) => [
    lane.name,
    String(lane.depth),
    h(
      "span",
      { class: lane.worker_alive ? "ok" : "bad", title: lane.worker_report ?? "" },
      lane.worker_alive ? "alive" : "none",
    ),
  ]);
  return table("Lanes", ["Lane", "Runs queued or leased", "Workers"], rows);
}

function upstreams(snapshot) {
  const rows = snapshot.upstreams.map((upstream) => {
    const label = `${upstream.name}: ${upstream.in_flight} of ${upstream.max_concurrency}`;
    return [
      upstream.name,
      h(
        "span",
        { class: "slots" },
        h("meter", {
          min: 0,
          max: upstream.max_concurrency,
          value: upstream.in_flight,
          "aria-label": label,
        }),
        ` ${upstream.in_flight} / ${upstream.max_concurrency}`,
      ),
      String(upstream.waiting),
    ];
  });
  return table("Upstreams", ["Upstream", "In flight / cap", "Jobs waiting for a slot"], rows);
}

/** The queue page: `#/queue`, refreshed every two seconds. */
export async function queueView(root, { signal }) {
  const body = h("div", {});
  root.append(h("h1", {}, "Queue"), body);
  while (!signal.aborted) {
    const snapshot = await api("GET", "/v1/queue", { signal });
    body.replaceChildren(lanes(snapshot), upstreams(snapshot));
    await sleep(REFRESH_MS, signal);
  }
}
