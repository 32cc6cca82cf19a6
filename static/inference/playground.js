// The Inference tab: chats with a deployment's base model or adapters through
// the console's gateway (/v1/chat/completions), signed in by the session
// cookie plus the CSRF cookie repeated in a header, so no key is in the page.
// Each target keeps its own thread, so Compare shows each model's own
// conversation side by side.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("playground-config").textContent);
  const $ = (id) => document.getElementById(id);
  const transcript = $("transcript");
  const prompt = $("prompt");
  const md = window.PlugboardMarkdown;

  let threads = {};      // model id -> [{role, content}]
  let columns = {};      // model id -> column element
  let running = [];      // AbortControllers of the requests in flight

  function csrfToken() {
    const match = document.cookie.split("; ").find((c) => c.startsWith(config.csrfCookie + "="));
    return match ? decodeURIComponent(match.split("=")[1]) : "";
  }

  function activeTargets() {
    if (!$("compare").checked) return [$("target").value].filter(Boolean);
    return [...document.querySelectorAll("#compare-targets input:checked")].map((i) => i.value);
  }

  function parameters() {
    const params = {};
    for (const input of document.querySelectorAll("#params [data-param]")) {
      const raw = input.value.trim();
      if (!raw) continue;
      const type = input.dataset.type;
      if (type === "list") params[input.dataset.param] = raw.split(",").map((s) => s.trim()).filter(Boolean);
      else {
        const value = type === "int" ? parseInt(raw, 10) : parseFloat(raw);
        if (!Number.isNaN(value)) params[input.dataset.param] = value;
      }
    }
    return params;
  }

  function requestBody(model, messages) {
    const system = $("system").value.trim();
    const all = system ? [{ role: "system", content: system }, ...messages] : messages;
    return { model, messages: all, ...parameters() };
  }

  function column(model) {
    if (columns[model]) return columns[model];
    const col = document.createElement("div");
    col.className = "col";
    col.dataset.model = model;
    col.innerHTML = '<div class="small fw-semibold mono mb-1"></div><div class="d-flex flex-column gap-2 messages"></div>';
    col.firstChild.textContent = model;
    transcript.appendChild(col);
    columns[model] = col;
    return col;
  }

  function bubble(model, role, text) {
    const div = document.createElement("div");
    div.className = "chat-message chat-" + role + " p-2 rounded border";
    div.dataset.role = role;
    const body = document.createElement("div");
    body.className = "chat-body";
    if (role === "user") body.textContent = text;
    else body.innerHTML = md.render(text || "");
    div.appendChild(body);
    column(model).querySelector(".messages").appendChild(div);
    return div;
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    $("regenerate").disabled = busy || !Object.values(threads).some((t) => t.length);
  }

  async function stream(model, answer) {
    const controller = new AbortController();
    running.push(controller);
    const body = answer.querySelector(".chat-body");
    const figures = document.createElement("div");
    figures.className = "chat-figures small text-muted mt-1";
    answer.appendChild(figures);
    const started = performance.now();
    let firstAt = null;
    let text = "";
    let usage = null;
    try {
      const response = await fetch(config.gatewayUrl + "/chat/completions", {
        method: "POST",
        credentials: "same-origin",
        signal: controller.signal,
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ ...requestBody(model, threads[model]), stream: true, stream_options: { include_usage: true } }),
      });
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const events = buffer.split("\n\n");
        buffer = events.pop();
        for (const event of events) {
          const data = event.replace(/^data: /, "");
          if (data === "[DONE]") continue;
          const message = JSON.parse(data);
          if (message.error) throw new Error(message.error.message);
          if (message.usage) usage = message.usage;
          const delta = message.choices && message.choices[0] && message.choices[0].delta;
          if (delta && delta.content) {
            if (firstAt === null) firstAt = performance.now();
            text += delta.content;
            body.innerHTML = md.render(text);
          }
        }
      }
      threads[model].push({ role: "assistant", content: text });
      const ended = performance.now();
      const parts = [];
      if (firstAt !== null) parts.push("time to first token " + Math.round(firstAt - started) + " ms");
      if (usage && firstAt !== null && ended > firstAt && usage.completion_tokens > 1) {
        parts.push(((usage.completion_tokens - 1) / ((ended - firstAt) / 1000)).toFixed(1) + " tokens/s");
      }
      if (usage) parts.push(usage.prompt_tokens + " prompt + " + usage.completion_tokens + " completion tokens");
      figures.textContent = parts.join(" · ");
      figures.dataset.ttftMs = firstAt === null ? "" : String(Math.round(firstAt - started));
    } catch (error) {
      const stopped = error.name === "AbortError";
      if (text) threads[model].push({ role: "assistant", content: text });
      else threads[model].pop(); // the question goes too, so Regenerate or a new question starts clean
      figures.textContent = stopped ? "Stopped." : "";
      if (!stopped) {
        const warning = document.createElement("div");
        warning.className = "text-danger small chat-error";
        warning.textContent = error.message;
        answer.appendChild(warning);
      }
    } finally {
      running = running.filter((c) => c !== controller);
    }
  }

  async function ask(question) {
    const targets = activeTargets();
    if (!targets.length) return;
    $("empty-hint").hidden = true;
    setBusy(true);
    const pending = targets.map((model) => {
      threads[model] = threads[model] || [];
      if (question !== null) {
        threads[model].push({ role: "user", content: question });
        bubble(model, "user", question);
      }
      return stream(model, bubble(model, "assistant", ""));
    });
    transcript.className = "row g-2 mb-2 row-cols-1 row-cols-md-" + Math.min(3, Object.keys(columns).length);
    await Promise.all(pending);
    setBusy(false);
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = prompt.value.trim();
    if (!question) return;
    prompt.value = "";
    ask(question);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => running.forEach((c) => c.abort()));
  $("regenerate").addEventListener("click", () => {
    // The last answer of each thread goes, and the question before it is asked again.
    for (const [model, thread] of Object.entries(threads)) {
      if (thread.length && thread[thread.length - 1].role === "assistant") {
        thread.pop();
        const answers = columns[model].querySelectorAll(".chat-assistant");
        if (answers.length) answers[answers.length - 1].remove();
      }
    }
    ask(null);
  });
  $("clear").addEventListener("click", () => {
    running.forEach((c) => c.abort());
    threads = {};
    columns = {};
    transcript.replaceChildren();
    $("empty-hint").hidden = false;
    setBusy(false);
  });
  $("compare").addEventListener("change", () => { $("compare-targets").hidden = !$("compare").checked; });

  // View code: the request the playground would send now, for an application with a key.
  let codeTab = "curl";
  function snippets() {
    const model = activeTargets()[0] || $("target").value;
    const thread = (threads[model] || []).slice();
    const question = prompt.value.trim() || "Hello!";
    const body = requestBody(model, [...thread, { role: "user", content: question }]);
    const json = JSON.stringify(body, null, 2);
    const pyArgs = Object.entries(body).map(([k, v]) => "    " + k + "=" + JSON.stringify(v, null, 4).replace(/\n/g, "\n    ").replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None") + ",").join("\n");
    return {
      curl: "curl " + config.gatewayUrl + "/chat/completions \\\n  -H \"Authorization: Bearer $PLUGBOARD_API_KEY\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '" + json.replace(/'/g, "'\\''") + "'",
      python: "import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=\"" + config.gatewayUrl + "\", api_key=os.environ[\"PLUGBOARD_API_KEY\"])\nresponse = client.chat.completions.create(\n" + pyArgs + "\n)\nprint(response.choices[0].message.content)",
      javascript: "import OpenAI from \"openai\";\n\nconst client = new OpenAI({ baseURL: \"" + config.gatewayUrl + "\", apiKey: process.env.PLUGBOARD_API_KEY });\nconst response = await client.chat.completions.create(" + json.replace(/\n/g, "\n") + ");\nconsole.log(response.choices[0].message.content);",
    };
  }
  function showCode() { $("code-text").textContent = snippets()[codeTab]; }
  $("view-code").addEventListener("click", () => { $("code").hidden = !$("code").hidden; showCode(); });
  for (const tab of document.querySelectorAll("[data-code-tab]")) {
    tab.addEventListener("click", () => {
      codeTab = tab.dataset.codeTab;
      document.querySelectorAll("[data-code-tab]").forEach((t) => t.classList.toggle("active", t === tab));
      showCode();
    });
  }
  setBusy(false);
})();
