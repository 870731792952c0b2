// A tiny reader of the text/event-stream format (the WHATWG event-stream rules).

/**
 * A function to feed decoded text, in chunks of any size; it calls
 * `onEvent({ event, data, id })` for every complete event.
 */
export function sseParser(onEvent) {
  let buffer = "";
  let data = [];
  let type = "";
  let id = null;

  function line(text) {
    if (text === "") {
      if (data.length) onEvent({ event: type || "message", data: data.join("\n"), id });
      data = [];
      type = "";
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") type = value;
    else if (field === "id") id = value;
  }

  return (chunk) => {
    buffer += chunk;
    // A CR at the end may be the first half of a CRLF: keep it for the next chunk.
    const held = buffer.endsWith("\r") ? 1 : 0;
    const lines = buffer.slice(0, buffer.length - held).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(buffer.length - held);
    lines.forEach(line);
  };
}
