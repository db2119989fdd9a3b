// The Emu3 page: plain JavaScript calling only the public /v1 endpoints (no build step).
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(el, text, isError) {
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

// POST a JSON body with stream: true and call onEvent(object) for every server-sent event until [DONE].
async function postStream(url, body, onEvent) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new Error(parsed.error.message);
        onEvent(parsed);
      }
    }
  }
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models");
    const models = (await response.json()).data.map((m) => m.id);
    setStatus($("models"), `models: ${models.join(", ")}`);
  } catch (e) {
    setStatus($("models"), `cannot reach the server: ${e.message}`, true);
  }
}

$("image-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { prompt: $("prompt").value, size: $("ratio").value, n: 1, response_format: "b64_json", stream: true };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("greedy").checked) body.top_k = 1;
  $("generate").disabled = true;
  $("image-progress").value = 0;
  $("result-image").removeAttribute("src");
  setStatus($("image-status"), "queued…");
  try {
    await postStream("/v1/images/generations", body, (e) => {
      if (e.type === "image_generation.progress") {
        $("image-progress").max = e.total;
        $("image-progress").value = e.completed;
        setStatus($("image-status"), `generating: ${e.completed} / ${e.total} tokens`);
      } else if (e.type === "image_generation.completed") {
        $("result-image").src = `data:image/png;base64,${e.b64_json}`;
        setStatus($("image-status"), "done");
      }
    });
  } catch (e) {
    setStatus($("image-status"), e.message, true);
  } finally {
    $("generate").disabled = false;
  }
});

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

$("chat-image").addEventListener("change", async () => {
  const file = $("chat-image").files[0];
  if (file) $("chat-preview").src = await readAsDataURL(file);
  else $("chat-preview").removeAttribute("src");
});

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = [];
  const file = $("chat-image").files[0];
  if (file) content.push({ type: "image_url", image_url: { url: await readAsDataURL(file) } });
  content.push({ type: "text", text: $("question").value });
  const body = {
    messages: [{ role: "user", content }],
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    stream: true,
  };
  $("ask").disabled = true;
  $("answer").textContent = "";
  setStatus($("chat-status"), "thinking…");
  try {
    await postStream("/v1/chat/completions", body, (chunk) => {
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) $("answer").textContent += choice.delta.content;
        if (choice.finish_reason) setStatus($("chat-status"), `done (${choice.finish_reason})`);
      }
    });
  } catch (e) {
    setStatus($("chat-status"), e.message, true);
  } finally {
    $("ask").disabled = false;
  }
});

loadModels();
