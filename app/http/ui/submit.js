// The submit form: an image (and mask), a prompt, a model, then one job or a batch.
import { api, isAbort } from "./api.js";
import { alertBox, h } from "./dom.js";

function field(id, label, control, hint) {
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint && h("p", { class: "hint", id: `${id}-hint` }, hint),
  );
}

function choice(value, label, checked) {
  const id = `kind-${value}`;
  return h(
    "label",
    { class: "choice", for: id },
    h("input", { id, type: "radio", name: "kind", value, checked }),
    label,
  );
}

function lines(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

/** Where to POST the form and the multipart body, from its controls `c`. */
function request(c, kind) {
  const data = new FormData();
  data.append("image", c.image.files[0]);
  if (c.mask.files.length) data.append("mask", c.mask.files[0]);
  const prompt = c.prompt.value.trim();
  if (kind === "job") {
    data.append("model", c.model.value);
    data.append("prompt", prompt);
    data.append("n", c.n.value);
    return ["/v1/jobs", data];
  }
  const defaults = { model: c.model.value };
  if (prompt) defaults.prompt = prompt;
  data.append("defaults", JSON.stringify(defaults));
  const variants = lines(c.variants.value);
  if (variants.length) {
    data.append("variants", JSON.stringify(variants.map((text) => ({ prompt: text }))));
  } else {
    data.append("n", c.copies.value);
  }
  return ["/v1/batches", data];
}

/** The form's controls, by name. */
function controls(editors) {
  const accept = "image/png,image/jpeg,image/webp";
  return {
    image: h("input", { id: "image", name: "image", type: "file", accept, required: true }),
    mask: h("input", { id: "mask", name: "mask", type: "file", accept: "image/png" }),
    model: h(
      "select",
      { id: "model", name: "model", required: true },
      editors.map((model) => h("option", { value: model.id }, model.id)),
    ),
    prompt: h("textarea", { id: "prompt", name: "prompt", rows: 3, required: true }),
    n: h("input", { id: "n", name: "n", type: "number", min: 1, max: 10, value: 1 }),
    copies: h("input", { id: "copies", name: "copies", type: "number", min: 1, value: 4 }),
    variants: h("textarea", { id: "variants", name: "variants", rows: 6 }),
  };
}

/** The submit page: `#/submit`. */
export async function submitView(root, { signal }) {
  const models = await api("GET", "/v1/models", { signal });
  const c = controls(models.data.filter((model) => model.capabilities.includes("image_edit")));
  const status = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Submit");
  const jobFields = h("div", {}, field("n", "Images per job (n)", c.n));
  const batchFields = h(
    "div",
    { hidden: true },
    field("copies", "Copies (n)", c.copies, "That many variants, all with the prompt above."),
    field("variants", "Prompt variants", c.variants, "One prompt per line; replaces the copies."),
  );
  const form = h(
    "form",
    { class: "card submit-form" },
    h("h1", {}, "Submit an edit"),
    field("image", "Image", c.image, "PNG, JPEG or WebP."),
    field("mask", "Mask (optional)", c.mask, "A PNG the image's size; transparent means edit."),
    field("model", "Model", c.model),
    field("prompt", "Prompt", c.prompt),
    h(
      "fieldset",
      { class: "kind" },
      h("legend", {}, "Submit as"),
      choice("job", "One job", true),
      choice("batch", "A batch of variants", false),
    ),
    jobFields,
    batchFields,
    button,
    status,
  );

  function sync() {
    const batch = form.kind.value === "batch";
    jobFields.hidden = batch;
    batchFields.hidden = !batch;
    c.prompt.required = !(batch && lines(c.variants.value).length);
  }
  form.addEventListener("change", sync);
  c.variants.addEventListener("input", sync);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [path, body] = request(c, form.kind.value);
    button.disabled = true;
    status.replaceChildren(h("p", {}, "Submitting…"));
    try {
      const created = await api("POST", path, { body, signal });
      location.hash = path === "/v1/jobs" ? `#/jobs/${created.id}` : `#/batches/${created.id}`;
    } catch (error) {
      if (!isAbort(error)) status.replaceChildren(alertBox(error.message));
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
}
