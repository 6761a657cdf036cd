// The playground: every value from the caller or the server is inserted with textContent, never as HTML.
"use strict";

const EXAMPLE_REQUEST = {
  model: "meta-llama/Meta-Llama-3-8B-Instruct",
  messages: [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is the capital of France?" },
  ],
};
const EXAMPLE_RESPONSE = {
  choices: [
    { index: 0, message: { role: "assistant", content: "The capital of France is Paris." }, finish_reason: "stop" },
  ],
};
// The function key, when the page was opened with ?code=... (Azure, function auth level).
const CODE = new URLSearchParams(window.location.search).get("code");

function $(id) {
  return document.getElementById(id);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = String(text);
  row.appendChild(td);
}

function requestBody() {
  const model = $("model").value;
  let request = $("request").value;
  if (model) {
    try {
      const parsed = JSON.parse(request);
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
        parsed.model = model;
        request = JSON.stringify(parsed);
      }
    } catch (e) {
      // sent as typed: the service names what is wrong with it
    }
  }
  const envelope = { RequestBody: request };
  if ($("response").value.trim()) envelope.ResponseBody = $("response").value;
  return JSON.stringify(envelope);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  for (const id of ["prompt-tokens", "completion-tokens", "total-tokens"]) $(id).textContent = "–";
}

function show(answer) {
  $("error").hidden = true;
  $("prompt-tokens").textContent = String(answer.usage.prompt_tokens);
  $("completion-tokens").textContent = String(answer.usage.completion_tokens);
  $("total-tokens").textContent = String(answer.usage.total_tokens);
  const assumed = answer.tokenizer_assumed ? " (assumed: the model name names no family)" : "";
  $("about").textContent =
    "tokenizer " + answer.tokenizer + assumed + ", template " + answer.template + ", counts as " + answer.follows;

  const body = $("messages").tBodies[0];
  body.replaceChildren();
  for (const m of answer.messages) {
    const row = body.insertRow();
    cell(row, m.index);
    cell(row, m.role);
    cell(row, m.tokens);
  }
  const overhead = body.insertRow();
  overhead.className = "overhead";
  cell(overhead, "");
  cell(overhead, "template overhead");
  cell(overhead, answer.overhead_tokens);
  for (const c of answer.choices) {
    const row = body.insertRow();
    cell(row, "");
    cell(row, "completion " + c.index + (c.stop_token_counted ? " (+ stop token)" : ""));
    cell(row, c.completion_tokens);
  }

  const rendered = $("rendered");
  rendered.replaceChildren();
  answer.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = t.special ? "special" : i % 2 ? "tok-b" : "tok-a";
    span.textContent = t.text;
    span.title = "#" + i + " id " + t.id + (t.special ? " (special)" : "");
    rendered.appendChild(span);
  });
  $("token-note").textContent = answer.tokens_truncated
    ? "(the first " + answer.tokens.length + " of " + answer.usage.prompt_tokens + " tokens)"
    : "(" + answer.tokens.length + " tokens)";
}

async function count() {
  const url = "/api/tokencounter/explain" + (CODE ? "?code=" + encodeURIComponent(CODE) : "");
  $("count").disabled = true;
  try {
    const reply = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: requestBody() });
    const answer = await reply.json();
    if (!reply.ok) showError(reply.status + " " + answer.error.code + ": " + answer.error.message);
    else show(answer);
  } catch (e) {
    showError("the local host did not answer: " + e);
  } finally {
    $("count").disabled = false;
    document.body.dataset.answers = String(Number(document.body.dataset.answers || 0) + 1);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("request").value = JSON.stringify(EXAMPLE_REQUEST, null, 2);
  $("response").value = JSON.stringify(EXAMPLE_RESPONSE, null, 2);
  $("count").addEventListener("click", count);
  count();
});
