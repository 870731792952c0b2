// How times, durations and progress read on the page (pure functions of the API's data).

export const TERMINAL = ["succeeded", "failed", "canceled"];

/** Seconds since the epoch, now. */
function now() {
  return Date.now() / 1000;
}

/** A span of seconds, short: "850 ms", "42 s", "3 min 5 s", "2 h 10 min". */
export function span(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** How long ago an epoch time was: "12 s ago". */
export function age(epochSeconds, at = now()) {
  return `${span(Math.max(0, at - epochSeconds))} ago`;
}

/** A job's run time: finished minus started, or so far when still running. */
export function duration(job, at = now()) {
  if (job.started_at == null) return "";
  return span((job.finished_at ?? at) - job.started_at);
}

/** A date and time in the reader's locale. */
export function when(epochSeconds) {
  return epochSeconds == null ? "" : new Date(epochSeconds * 1000).toLocaleString();
}

/** How many of a batch's variants are finished, one way or another. */
export function finished(batch) {
  const counts = batch.counts;
  return counts.succeeded + counts.failed + counts.canceled;
}

/** Seconds until a running batch finishes at the pace so far; null before any finish. */
export function eta(batch, at = now()) {
  const done = finished(batch);
  if (batch.status !== "running" || done === 0) return null;
  return ((at - batch.created_at) / done) * (batch.total - done);
}

/** The first output link of a job, or null (URLs, or base64 for b64_json requests). */
export function outputSrc(job, index = 0) {
  const item = job.result?.data?.[index];
  if (!item) return null;
  return item.url ?? `data:image/${job.result.output_format};base64,${item.b64_json}`;
}
