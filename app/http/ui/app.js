// The dashboard's shell: sign-in, navigation and a hash router over the views.
import { api, ApiError, isAbort, session } from "./api.js";
import { alertBox, h } from "./dom.js";
import { batchView, batchesView } from "./batch.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { queueView } from "./queue.js";
import { submitView } from "./submit.js";

// Each route: a pattern over the hash path and the view that draws it.
const ROUTES = [
  [/^\/jobs$/, jobsView],
  [/^\/jobs\/(job_[\w-]+)$/, jobView],
  [/^\/batches$/, batchesView],
  [/^\/batches\/(batch_[\w-]+)$/, batchView],
  [/^\/submit$/, submitView],
  [/^\/queue$/, queueView],
];

const main = document.getElementById("view");
let current = new AbortController();

function signInView(root) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    required: true,
  });
  const status = h("div", { "aria-live": "polite" });
  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    try {
      await api("GET", "/v1/models", { key });
    } catch (error) {
      const message = error instanceof ApiError && error.status === 401
        ? "That API key was not accepted."
        : error.message;
      status.replaceChildren(alertBox(message));
      return;
    }
    session.signIn(key);
    route();
  }
  root.append(
    h(
      "form",
      { class: "card sign-in", onsubmit: submit },
      h("h1", {}, "Sign in"),
      h("p", {}, "The key stays in this browser tab and goes only to this server's API."),
      h("label", { for: "api-key" }, "API key"),
      input,
      h("button", { type: "submit" }, "Sign in"),
      status,
    ),
  );
  input.focus();
}

function showNav(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
}

function markCurrent(path) {
  for (const link of document.querySelectorAll("#nav a")) {
    const section = link.getAttribute("href").slice(1);
    const here = path === section || path.startsWith(`${section}/`);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Go to `hash`, drawing its view even when it is the current one. */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

/** Draw the view of the current hash, ending the previous view's live updates. */
function route() {
  current.abort();
  current = new AbortController();
  const signal = current.signal;
  main.replaceChildren();
  if (!session.key) {
    showNav(false);
    signInView(main);
    return;
  }
  showNav(true);
  const [path, query = ""] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query);
  const found = ROUTES.map(([pattern, view]) => [path.match(pattern), view]).find(([m]) => m);
  if (!found) {
    location.replace("#/jobs");
    return;
  }
  const [match, view] = found;
  markCurrent(path);
  main.focus({ preventScroll: true });
  view(main, { id: match[1], params, signal }).catch((error) => {
    if (isAbort(error) || signal.aborted) return;
    main.append(alertBox(error.message));
  });
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  go("#/jobs");
});
window.addEventListener("editq:unauthorized", () => {
  session.signOut();
  route();
});
window.addEventListener("hashchange", route);
route();
