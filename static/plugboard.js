// Behaviour shared by every page, kept out of inline handlers.
// A form with data-confirm asks before it is sent (deleting, revoking, stopping).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
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
