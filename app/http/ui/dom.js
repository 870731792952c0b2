// Building the page from data without innerHTML: every value goes in as text.

/**
 * An element: `h("a", { href: "#/jobs", class: "x", onclick: fn }, "text", child)`.
 * Attributes that are null, undefined or false are left out; true sets an empty one.
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat(Infinity).filter((child) => child != null && child !== false));
  return element;
}

/** A table with a caption, headings and rows of cells, scrollable on narrow screens. */
export function table(caption, headings, rows) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
    ),
  );
}

/** A status shown as a coloured badge. */
export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

/** An alert box for an error message (announced by screen readers). */
export function alertBox(message) {
  return h("p", { class: "alert", role: "alert" }, message);
}

/** A term/description list from [term, value] pairs, leaving out empty values. */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs
      .filter(([, value]) => value != null && value !== "")
      .map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}
