// Behaviour shared by every page, kept out of inline handlers.
// A form with data-confirm asks before it is sent (deleting, revoking, stopping).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
