// Behaviour shared by every page, kept out of inline handlers.
// A form with data-confirm asks before it is sent (deleting, revoking, stopping).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// A link to "#back" (a form's Cancel, where it has no page of its own to go to) goes back a page: a
// `javascript:` link would be refused by the Content-Security-Policy.
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest('a[href="#back"]');
  if (link) {
    event.preventDefault();
    window.history.back();
  }
});

// A select with data-autosubmit sends its form when it changes (the form still has a button without JavaScript).
document.addEventListener("change", (event) => {
  if (event.target.matches && event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});

// A pane with data-follow (the server log) shows its newest line and keeps showing it as
// htmx replaces it, unless the reader scrolled up: then it stays where they are.
const followed = new Map();
const followPanes = () => document.querySelectorAll("[data-follow]");
followPanes().forEach((pane) => { pane.scrollTop = pane.scrollHeight; });
document.addEventListener("htmx:beforeSwap", () => {
  followPanes().forEach((pane) => {
    const atEnd = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 8;
    followed.set(pane.id, atEnd ? null : pane.scrollTop);
  });
});
document.addEventListener("htmx:afterSettle", () => {
  followPanes().forEach((pane) => {
    const kept = followed.get(pane.id);
    pane.scrollTop = kept == null ? pane.scrollHeight : kept;
  });
});

// The deploy wizard's resources step shows only the fields that apply where the deployment would go:
// the node and GPU pickers under manual placement, GPU fields on a GPU node, CPU fields on a CPU node.
// The container's data-node-kinds maps node ids (and "auto", automatic placement) to "gpu" or "cpu".
const showApplicableResources = () => {
  const box = document.getElementById("resources-fields");
  if (!box) return;
  const kinds = JSON.parse(box.dataset.nodeKinds || "{}");
  const placement = box.querySelector('input[name="placement"]:checked');
  const manual = placement && placement.value === "manual";
  const node = box.querySelector('select[name="node"]');
  const kind = manual && node && node.value ? kinds[node.value] : kinds.auto;
  const show = (name, visible) => {
    const field = document.getElementById(`field-${name}`);
    if (field) field.hidden = !visible;
  };
  show("node", manual);
  show("gpus", manual && kind === "gpu");
  show("gpu_memory_utilization", kind === "gpu");
  show("kv_cache_gib", kind === "cpu");
  show("cpu_threads", kind === "cpu");
};
showApplicableResources();
document.addEventListener("change", (event) => {
  if (event.target.closest && event.target.closest("#resources-fields")) showApplicableResources();
});
